"""Quality vs batch size and throughput of the main model, against a plain per-event ISGD.

Usage::

    .venv/bin/python bench/model_probe.py [DATA] [--batch-sizes 64,256,1024] [--with-batch-1]
                                          [--set key=value ...] [--variant JSON ...] [--synthetic]

For each batch size it runs ``streamrec``'s default model (plus any ``--set`` overrides)
through the shared progressive evaluator and reports HR@10 / NDCG@10 over the whole stream,
over the first 80% (where defaults were tuned) and the last 20%, events/s, the ratio to the
plain per-event ISGD loop (k=10, lr 0.05, reg 0.01, watched excluded) measured in the same
run, and bytes per viewer / per video. ``--synthetic`` adds a sanity check on a generated
stream (``producer.synth``), where defaults were never tuned, against the co-occurrence and
most-popular baselines; each ``--variant`` adds a run at batch 256 with other settings (the
quality/speed frontier). Prints a table and writes ``bench/results/model_probe.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import contract  # noqa: E402, F401  (first: it makes BLAS single-threaded before numpy loads)

# isort: split

from bench.data import ml100k  # noqa: E402
from bench.results import write_results  # noqa: E402
from model.baselines.isgd import ISGD, plain_test_then_train  # noqa: E402
from model.embedding import EmbeddingRanker  # noqa: E402
from model.registry import create, parse_settings  # noqa: E402
from producer.readers import read_events  # noqa: E402
from streamrec.commands.evaluate import evaluate_model  # noqa: E402


def _row(label: str, result: dict, reference: float, model=None) -> dict:
    tail = result.get("tail", {})
    evaluated, hits = result["evaluated"], result["hr_at_10"] * result["evaluated"]
    t_eval, t_hits = tail.get("evaluated", 0), tail.get("hr_at_10", 0.0) * tail.get("evaluated", 0)
    head = (hits - t_hits) / max(1, evaluated - t_eval)
    row = {
        "run": label,
        "batch_size": result["batch_size"],
        "hr_at_10": result["hr_at_10"],
        "ndcg_at_10": result["ndcg_at_10"],
        "hr_at_10_first_80": head,
        "hr_at_10_last_20": tail.get("hr_at_10"),
        "ndcg_at_10_last_20": tail.get("ndcg_at_10"),
        "evaluated": evaluated,
        "events_per_s": result["events_per_s"],
        "vs_isgd": result["events_per_s"] / reference,
    }
    if model is not None and hasattr(model, "memory_bytes"):
        row |= {f"bytes_{k}": v for k, v in model.memory_bytes().items()}
        row["guard_trips"] = model.guard_trips
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=ml100k())
    parser.add_argument("--batch-sizes", default="64,256,1024")
    parser.add_argument("--with-batch-1", action="store_true", help="also batch 1 (slow: minutes)")
    parser.add_argument("--set", action="append", default=[], help="model setting key=value")
    parser.add_argument("--synthetic", action="store_true", help="also a generated stream")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="JSON settings of an extra run at batch 256 (the quality/speed frontier)",
    )
    parser.add_argument("--json", type=Path, default=REPO / "bench/results/model_probe.json")
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"{args.data}: no such file (set STREAMREC_ML100K)", file=sys.stderr)
        return 2
    settings = parse_settings(args.set)
    sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    if args.with_batch_1:
        sizes = [1, *sizes]

    events = read_events(args.data)
    reference = plain_test_then_train(ISGD(k=10, lr=0.05, reg=0.01, seed=0), events)
    ref_eps = reference["events"] / reference["elapsed_s"]
    rows = [
        {
            "run": "isgd plain per-event loop (reference)",
            "batch_size": 1,
            "hr_at_10": reference["hits"] / reference["evaluated"],
            "events_per_s": ref_eps,
            "vs_isgd": 1.0,
        }
    ]
    for size in sizes:
        model = EmbeddingRanker(**settings)
        result = evaluate_model(model, events, batch_size=size)
        rows.append(_row(f"streamrec {settings or 'defaults'}", result, ref_eps, model))
        print(json.dumps(rows[-1]), flush=True)

    for variant in args.variant:
        extra = settings | json.loads(variant)
        model = EmbeddingRanker(**extra)
        result = evaluate_model(model, events, batch_size=256)
        rows.append(_row(f"streamrec {extra}", result, ref_eps, model))
        print(json.dumps(rows[-1]), flush=True)

    if args.synthetic:
        from producer.synth import synth_events

        synthetic = list(synth_events(viewers=2000, videos=3000, events=60_000, seed=7))
        for name in ("streamrec", "cooccurrence", "most_popular"):
            model = EmbeddingRanker(**settings) if name == "streamrec" else create(name)
            result = evaluate_model(model, synthetic, batch_size=256)
            rows.append(_row(f"synthetic: {name}", result, ref_eps, model))
            print(json.dumps(rows[-1]), flush=True)

    print(
        f"{'run':48} {'B':>5} {'HR@10':>7} {'NDCG':>7} {'HR 80%':>7} {'HR 20%':>7} {'ev/s':>8} {'xISGD':>6}"
    )
    for r in rows:
        cells = [
            format(r[key], ".4f") if r.get(key) is not None else "-"
            for key in ("hr_at_10", "ndcg_at_10", "hr_at_10_first_80", "hr_at_10_last_20")
        ]
        print(
            f"{r['run'][:48]:48} {r['batch_size']:>5} "
            + " ".join(f"{c:>7}" for c in cells)
            + f" {r['events_per_s']:>8.0f} {r['vs_isgd']:>6.2f}"
        )
    write_results(
        args.json,
        {"data": str(args.data), "settings": settings, "reference_events_per_s": ref_eps, "results": rows},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
