"""Quality and throughput of every registered model on one stream, in one run.

Usage::

    .venv/bin/python bench/quality.py [DATA] [--limit N] [--models a,b] [--batch-size NAME=B ...]

``DATA`` defaults to ``$STREAMREC_ML100K`` or ``../shared/data/ml-100k/u.data`` next to the
repository. Each model runs through the same progressive evaluator (``streamrec evaluate``'s
code) with its batch size (``model.registry.DEFAULT_BATCH_SIZE`` unless overridden). The
throughput reference is a plain per-event ISGD loop (:func:`model.baselines.isgd.plain_test_then_train`:
k=10, lr 0.05, reg 0.01, watched videos excluded), measured in the same run; the ``vs ISGD``
column is each model's events/s divided by it. Models with ``memory_bytes()`` also report
bytes per viewer and per video. The table goes to stdout and the JSON to
``bench/results/quality.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import contract  # noqa: E402, F401  (first: it makes BLAS single-threaded before numpy loads)

# isort: split

from bench.data import ml100k  # noqa: E402
from bench.results import write_results  # noqa: E402
from model.baselines.isgd import ISGD, plain_test_then_train  # noqa: E402
from model.registry import DEFAULT_BATCH_SIZE, create, resolve  # noqa: E402
from producer.readers import read_events  # noqa: E402
from streamrec.commands.evaluate import evaluate_model, format_table  # noqa: E402

PLAIN_ISGD = "isgd (plain loop)"


def parse_batch_sizes(values: list[str]) -> dict[str, int]:
    sizes = {}
    for value in values:
        name, _, size = value.partition("=")
        if not size.isdigit() or int(size) < 1:
            raise SystemExit(f"--batch-size expects NAME=B with B a positive integer, got {value!r}")
        sizes[name] = int(size)
    return sizes


def plain_isgd(events, tail: float) -> dict:
    """The reference: per-event ISGD in a plain loop; tail from a second pass over the prefix."""
    out = plain_test_then_train(ISGD(), events)
    cut = int((1.0 - tail) * len(events))
    head = plain_test_then_train(ISGD(), events[:cut])
    tail_evaluated = out["evaluated"] - head["evaluated"]
    ev = out["evaluated"] or 1
    return {
        "model": PLAIN_ISGD,
        "hr_at_10": out["hits"] / ev,
        "ndcg_at_10": out["ndcg_sum"] / ev,
        "mrr": out["rr_sum"] / ev,
        "coverage": out["coverage"],
        "evaluated": out["evaluated"],
        "events": out["events"],
        "events_per_s": out["events"] / out["elapsed_s"],
        "batch_size": 1,
        "protocol": "per event, plain loop (score one viewer, mask, top-10, rank, learn)",
        "tail": {
            "fraction": tail,
            "from_event": cut,
            "evaluated": tail_evaluated,
            "hr_at_10": (out["hits"] - head["hits"]) / max(1, tail_evaluated),
            "ndcg_at_10": (out["ndcg_sum"] - head["ndcg_sum"]) / max(1, tail_evaluated),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", type=Path, default=ml100k())
    parser.add_argument("--limit", type=int, help="only the first N events")
    parser.add_argument("--models", default="all", help="comma-separated names (default: all)")
    parser.add_argument(
        "--batch-size", action="append", default=[], metavar="NAME=B", help="per-model batch size"
    )
    parser.add_argument("--tail", type=float, default=0.2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "quality.json")
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"{args.data}: not found (pass a path or set STREAMREC_ML100K)", file=sys.stderr)
        return 2
    sizes = parse_batch_sizes(args.batch_size)
    events = read_events(args.data)
    if args.limit:
        events = events[: args.limit]

    results = [plain_isgd(events, args.tail)]
    reference = results[0]["events_per_s"]
    print(f"{PLAIN_ISGD}: {reference:,.0f} events/s", file=sys.stderr)
    for name in resolve(args.models.split(",")):
        batch = sizes.get(name, DEFAULT_BATCH_SIZE)
        start = time.perf_counter()
        result = evaluate_model(create(name), events, batch_size=batch, tail=args.tail)
        print(f"{name}: done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        results.append(result)
    for r in results:
        r["vs_isgd"] = r["events_per_s"] / reference
        memory = r.get("memory_bytes") or {}
        r["bytes_per_viewer"], r["bytes_per_video"] = memory.get("per_viewer"), memory.get("per_video")

    print(f"{args.data} ({len(events):,} events)")
    extra = [
        ("vs ISGD", "vs_isgd", "{:.1f}x"),
        ("B/viewer", "bytes_per_viewer", "{:,}"),
        ("B/video", "bytes_per_video", "{:,}"),
    ]
    print(format_table(results, extra=extra))
    print(
        f"vs ISGD = events/s / the plain per-event ISGD loop's ({reference:,.0f} events/s) in this run; "
        f"tail = last {args.tail:.0%} of events."
    )
    write_results(
        args.out,
        {
            "data": str(args.data),
            "events": len(events),
            "reference": PLAIN_ISGD,
            "reference_events_per_s": reference,
            "results": results,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
