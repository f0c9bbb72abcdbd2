"""Does forgetting cost quality? The streamrec model on ML-100K with expiry and admission on vs off.

Usage::

    .venv/bin/python bench/expiry_quality.py [DATA] [--limit N] [--grid default|full]

Each setting runs the default model through the same progressive evaluator as
``streamrec evaluate`` (batch 256, top-10, watched videos excluded; ids that the model forgot
are still "seen before" for the evaluator, so a forgotten viewer or video that returns is an
evaluated event the model can miss: forgetting is charged in full). Times are seconds of the
data's own timestamps (ML-100K spans 215 days). Reports HR@10 overall, on the first 80%
(where settings are chosen) and on the last 20%, the rows the tables hold at the end, and how
many ids expired. The table goes to stdout and JSON to ``bench/results/expiry_quality.json``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import contract  # noqa: E402, F401  (single-threaded BLAS, set before numpy loads)
from bench.data import ml100k  # noqa: E402
from bench.results import write_results  # noqa: E402
from model.embedding import EmbeddingRanker  # noqa: E402
from model.registry import DEFAULT_BATCH_SIZE  # noqa: E402
from producer.readers import read_events  # noqa: E402
from streamrec.commands.evaluate import evaluate_model  # noqa: E402

DAY = 86_400.0

#: Expiry off on both sides; every setting below starts from it.
OFF = {"viewer_ttl": None, "video_ttl": None}

GRIDS = {
    # (label, settings over OFF; None: the model's own defaults). "off" first: the reference.
    "default": [
        ("off", {}),
        ("model defaults", None),
        ("both 7 d", {"viewer_ttl": 7 * DAY, "video_ttl": 7 * DAY}),
        ("both 30 d", {"viewer_ttl": 30 * DAY, "video_ttl": 30 * DAY}),
        ("both 90 d", {"viewer_ttl": 90 * DAY, "video_ttl": 90 * DAY}),
        ("both 180 d", {"viewer_ttl": 180 * DAY, "video_ttl": 180 * DAY}),
        ("viewers 30 d", {"viewer_ttl": 30 * DAY}),
        ("videos 30 d", {"video_ttl": 30 * DAY}),
        ("min_events 2", {"min_events": 2}),
        ("min_events 3", {"min_events": 3}),
    ],
}
GRIDS["full"] = GRIDS["default"] + [
    ("viewers 7 d", {"viewer_ttl": 7 * DAY}),
    ("viewers 90 d", {"viewer_ttl": 90 * DAY}),
    ("videos 7 d", {"video_ttl": 7 * DAY}),
    ("videos 90 d", {"video_ttl": 90 * DAY}),
    ("both 60 d", {"viewer_ttl": 60 * DAY, "video_ttl": 60 * DAY}),
    ("both 120 d", {"viewer_ttl": 120 * DAY, "video_ttl": 120 * DAY}),
]


def head_hr(result: dict) -> float:
    """HR@10 on the events before the tail (the part settings are chosen on)."""
    tail = result["tail"]
    head_evaluated = result["evaluated"] - tail["evaluated"]
    hits = result["hr_at_10"] * result["evaluated"] - tail["hr_at_10"] * tail["evaluated"]
    return hits / head_evaluated if head_evaluated else math.nan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=ml100k())
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--grid", choices=sorted(GRIDS), default="default")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "expiry_quality.json")
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"data not found: {args.data} (set STREAMREC_ML100K)", file=sys.stderr)
        return 2
    events = read_events(args.data)[: args.limit]
    span = (events[-1].timestamp - events[0].timestamp) / DAY
    rows = []
    header = (
        f"{'setting':<14} {'HR@10':>7} {'first 80%':>9} {'last 20%':>8} {'vs off':>7} {'viewers':>8} "
        f"{'videos':>7} {'expired v/i':>12} {'filtered':>8} {'ev/s':>7}"
    )
    print(f"{args.data.name}: {len(events):,} events over {span:.0f} days, batch {DEFAULT_BATCH_SIZE}")
    print(header)
    reference = None
    for label, settings in GRIDS[args.grid]:
        model = EmbeddingRanker() if settings is None else EmbeddingRanker(**(OFF | settings))
        start = time.perf_counter()
        result = evaluate_model(model, events, batch_size=DEFAULT_BATCH_SIZE, tail=0.2)
        wall = time.perf_counter() - start
        reference = reference or result
        row = {
            "setting": label,
            "params": "model defaults" if settings is None else OFF | settings,
            "hr_at_10": result["hr_at_10"],
            "ndcg_at_10": result["ndcg_at_10"],
            "hr_first_80": head_hr(result),
            "hr_last_20": result["tail"]["hr_at_10"],
            "hr_vs_off": result["hr_at_10"] / reference["hr_at_10"],
            "evaluated": result["evaluated"],
            "viewer_rows": len(model.viewers),
            "video_rows": len(model.videos),
            "live_viewers": model.n_viewers,
            "live_videos": model.n_videos,
            "expired_viewers": model.expired[0],
            "expired_videos": model.expired[1],
            "events_filtered": model.events_filtered,
            "events_per_s": result["events_per_s"],
            "wall_s": wall,
        }
        rows.append(row)
        print(
            f"{label:<14} {row['hr_at_10']:>7.4f} {row['hr_first_80']:>9.4f} {row['hr_last_20']:>8.4f} "
            f"{row['hr_vs_off']:>7.3f} {row['viewer_rows']:>8,} {row['video_rows']:>7,} "
            f"{row['expired_viewers']:>5,}/{row['expired_videos']:<6,} {row['events_filtered']:>8,} "
            f"{row['events_per_s']:>7,.0f}",
            flush=True,
        )
    write_results(
        args.json,
        {
            "data": args.data.name,
            "events": len(events),
            "span_days": span,
            "batch_size": DEFAULT_BATCH_SIZE,
            "results": rows,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
