"""Candidate default models against today's default, each stream in one run (issue 14).

Usage::

    .venv/bin/python bench/model_search.py [DATA] [--models streamrec,streamrec_profile]
                                           [--set streamrec_profile:profile_weight=2] [--repeats 2]

For each model (``model/registry.py`` names; ``--set NAME:key=value`` overrides a setting) it
runs the progressive evaluator (``streamrec evaluate``: test then train, batch 256, watched
videos excluded) on

* ML-100K's first 80% alone (where settings may be tuned: nothing after it is seen),
* all of ML-100K, with its last 20% reported apart (the held-out part),
* the synthetic stream of the demo's defaults (``streamrec demo``: 2,000 viewers, 2,000
  videos, 30,000 events, seed 0) and that of the quality floors (``tests/test_quality_floor.py``),

and prints HR@10 / NDCG@10 with the difference to the first model, and events/s (test and
train, file reading excluded) as a ratio to the first model's in the same run: the models
take turns, ``--repeats`` times, and the best time of each counts. Writes
``bench/results/model_search.json``. ML-100K is read where it lies (``$STREAMREC_ML100K`` or
``../shared/data``), never copied.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import contract  # noqa: E402, F401  (first: it makes BLAS single-threaded before numpy loads)

# isort: split

from bench.data import ml100k  # noqa: E402
from bench.results import write_results  # noqa: E402
from model.registry import create, parse_settings  # noqa: E402
from producer.readers import read_events  # noqa: E402
from producer.synth import SyntheticStream  # noqa: E402
from streamrec.commands.evaluate import evaluate_model  # noqa: E402

#: ``streamrec demo``'s defaults, and the stream of the quality floors.
DEMO = {"viewers": 2000, "videos": 2000, "events": 30_000, "seed": 0}
FLOORS = {"viewers": 500, "videos": 1500, "events": 20_000, "seed": 1}


def streams(data: Path, synthetic: dict[str, dict]) -> dict[str, list]:
    """The streams a candidate is measured on: ML-100K's first 80% (where settings are tuned)
    and the whole of it, when ``data`` exists; then each synthetic stream of ``synthetic``
    (name: :class:`~producer.synth.SyntheticStream` settings)."""
    out: dict[str, list] = {}
    if data.exists():
        events = read_events(data)
        out["ml100k first 80%"] = events[: int(0.8 * len(events))]
        out["ml100k whole"] = events
    else:
        print(f"{data}: no such file; synthetic streams only", file=sys.stderr)
    for name, settings in synthetic.items():
        out[name] = list(SyntheticStream(**settings))
    return out


def _settings(items: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for item in items:
        name, _, rest = item.partition(":")
        out.setdefault(name, {}).update(parse_settings([rest]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=ml100k())
    parser.add_argument("--models", default="streamrec,streamrec_profile")
    parser.add_argument("--set", action="append", default=[], help="NAME:key=value")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per model and stream")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json", type=Path, default=REPO / "bench/results/model_search.json")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    settings = _settings(args.set)

    rows = []
    for stream, events in streams(args.data, {"synthetic demo": DEMO, "synthetic floors": FLOORS}).items():
        results: dict[str, dict] = {}
        for _ in range(args.repeats):
            for name in models:  # taking turns: the machine's load hits every model alike
                result = evaluate_model(
                    create(name, **settings.get(name, {})), events, batch_size=args.batch_size
                )
                best = results.get(name)
                if best is None or result["events_per_s"] > best["events_per_s"]:
                    results[name] = result
        first = results[models[0]]
        for name in models:
            r, tail = results[name], results[name].get("tail", {})
            row = {
                "stream": stream,
                "model": name,
                "settings": settings.get(name, {}),
                "hr_at_10": r["hr_at_10"],
                "ndcg_at_10": r["ndcg_at_10"],
                "evaluated": r["evaluated"],
                "hr_at_10_last_20": tail.get("hr_at_10"),
                "ndcg_at_10_last_20": tail.get("ndcg_at_10"),
                "events_per_s": r["events_per_s"],
                "speed_vs_first": r["events_per_s"] / first["events_per_s"],
            }
            rows.append(row)
            gain = row["hr_at_10"] - first["hr_at_10"]
            print(
                f"{stream:18} {name:18} HR@10 {row['hr_at_10']:.4f} ({gain:+.4f}) "
                f"NDCG@10 {row['ndcg_at_10']:.4f}"
                + (
                    f"  last 20%: {row['hr_at_10_last_20']:.4f} / {row['ndcg_at_10_last_20']:.4f}"
                    if stream == "ml100k whole"
                    else ""
                )
                + f"  {row['events_per_s']:,.0f} events/s ({row['speed_vs_first']:.2f}x)",
                flush=True,
            )
    write_results(args.json, {"data": str(args.data), "models": models, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
