"""Cost per event against catalogue size: the default model with and without its shortlist.

Usage::

    .venv/bin/python bench/catalogue.py [--videos 2000,10000,50000] [--events 60000] [--viewers 20000]

For each catalogue size, one seeded synthetic stream (``producer.synth``: taste topics, Zipf-like
popularity, sessions, arrivals) is evaluated test-then-train at batch 256 by the default model
(which ranks a shortlist of the videos being watched: at least 1,024, as many as hold 95% of
recent watches) and by the same model ranking the whole catalogue (``shortlist=None``), in the
same run. Columns: videos the model learned, HR@10, events/s of each, the speed ratio, and how
many videos the last batch ranked. Prints a table and writes ``bench/results/catalogue.json``.
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
        for label, settings in (("shortlist", {}), ("whole", {"shortlist": None})):
            model = EmbeddingRanker(**settings)
            report = evaluate_model(model, events, batch_size=256)
            result[label] = (model, report)
        (short, short_report), (_, whole_report) = result["shortlist"], result["whole"]
        rows.append(
            {
                "catalogue": videos,
                "videos_learned": short.n_videos,
                "ranked_videos": _ranked(short),
                "hr_at_10_shortlist": short_report["hr_at_10"],
                "hr_at_10_whole": whole_report["hr_at_10"],
                "events_per_s_shortlist": short_report["events_per_s"],
                "events_per_s_whole": whole_report["events_per_s"],
                "speedup": short_report["events_per_s"] / whole_report["events_per_s"],
            }
        )
        print(rows[-1], flush=True)

    header = ("videos", "ranked", "HR short", "HR whole", "ev/s short", "ev/s whole", "speed")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (8, 7, 9, 9, 11, 11, 6), strict=True)))
    for r in rows:
        print(
            f"{r['videos_learned']:>8,} {r['ranked_videos']:>7,} {r['hr_at_10_shortlist']:>9.4f} "
            f"{r['hr_at_10_whole']:>9.4f} {r['events_per_s_shortlist']:>11,.0f} "
            f"{r['events_per_s_whole']:>11,.0f} {r['speedup']:>5.1f}x"
        )
    write_results(args.json, {"args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
