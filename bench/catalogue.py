"""Cost per event against catalogue size: the default model with and without its shortlist.

Usage::

    .venv/bin/python bench/catalogue.py [--videos 2000,10000,50000] [--events 60000] [--viewers 20000]

For each catalogue size, one seeded synthetic stream (``producer.synth``: taste topics, Zipf-like
popularity, sessions, arrivals) is evaluated test-then-train at batch 256 by the default model
(which ranks a shortlist of the videos being watched: at least 1,024, as many as hold a share of
recent watches that it steers by the hits the shortlist costs, ``shortlist_budget``), by the same
model with the share fixed at 0.95 (``shortlist_budget=None``, the default before) and by the
same model ranking the whole catalogue (``shortlist=None``), in the same run. Columns: videos the
model learned, how many the last batch ranked (steered, fixed), HR@10 and events/s of each, the
speed ratios to the whole catalogue. Prints a table and writes ``bench/results/catalogue.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import contract  # noqa: E402, F401  (first: it makes BLAS single-threaded before numpy loads)

# isort: split

from bench.results import write_results  # noqa: E402
from model.embedding import EmbeddingRanker  # noqa: E402
from producer.synth import synth_events  # noqa: E402
from streamrec.commands.evaluate import evaluate_model  # noqa: E402


def _ranked(model: EmbeddingRanker) -> int:
    """How many videos the model ranks for its next batch."""
    shortlist = model._shortlist(len(model.videos))
    return model.n_videos if shortlist is None else int(shortlist.size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", default="2000,10000,50000", help="catalogue sizes, comma-separated")
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--viewers", type=int, default=20_000)
    parser.add_argument("--json", type=Path, default=REPO / "bench/results/catalogue.json")
    args = parser.parse_args(argv)

    rows = []
    for videos in (int(v) for v in args.videos.split(",") if v):
        events = list(synth_events(viewers=args.viewers, videos=videos, events=args.events, seed=1))
        result = {}
        models = (("steered", {}), ("fixed", {"shortlist_budget": None}), ("whole", {"shortlist": None}))
        for label, settings in models:
            model = EmbeddingRanker(**settings)
            report = evaluate_model(model, events, batch_size=256)
            result[label] = (model, report)
        row = {"catalogue": videos, "videos_learned": result["steered"][0].n_videos}
        for label, (model, report) in result.items():
            row[f"ranked_videos_{label}"] = _ranked(model)
            row[f"hr_at_10_{label}"] = report["hr_at_10"]
            row[f"events_per_s_{label}"] = report["events_per_s"]
        row["share_steered"] = result["steered"][0].shortlist_share_now
        row["speedup_steered"] = row["events_per_s_steered"] / row["events_per_s_whole"]
        row["speedup_fixed"] = row["events_per_s_fixed"] / row["events_per_s_whole"]
        rows.append(row)
        print(row, flush=True)

    header = ("videos", "ranked", "HR steered", "HR fixed", "HR whole", "speed steered", "speed fixed")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (8, 13, 10, 9, 9, 14, 12), strict=True)))
    for r in rows:
        ranked = f"{r['ranked_videos_steered']:,}/{r['ranked_videos_fixed']:,}"
        print(
            f"{r['videos_learned']:>8,} {ranked:>13} {r['hr_at_10_steered']:>10.4f} "
            f"{r['hr_at_10_fixed']:>9.4f} {r['hr_at_10_whole']:>9.4f} "
            f"{r['speedup_steered']:>13.1f}x {r['speedup_fixed']:>11.1f}x"
        )
    write_results(args.json, {"args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
