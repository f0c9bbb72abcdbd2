"""What a live experiment costs: the service with two arms against each arm's model served alone.

Usage::

    .venv/bin/python bench/arms.py [--control streamrec] [--treatment most_popular]
        [--events 40000] [--videos 10000] [--viewers 20000] [--repeats 3]

The service's own batch path without Kafka (:meth:`consumer.app.StreamrecService.answer`:
decode, test then learn, recommend, the lists' messages) and its metrics are timed on one seeded
synthetic stream for three services: the control's model alone, the treatment's alone, and both
as two arms of one experiment (every arm learning every event, the default, so each model does
the same work as alone). The issue's target: two arms cost no more than the two models alone
plus 10%, ``arms / (control + treatment) <= 1.10``. Each service runs ``--repeats`` times, in
turn, and the fastest run of each counts (the machine is shared; the fastest is the least
disturbed). Prints a table and writes ``bench/results/arms.json``.

It also prints the experiment's readout at the end (each arm's online hit rate, the difference,
its always-valid interval and p-value) and after how many events p first fell below 0.01: the
two arms serve different halves of the viewers, so this is the live comparison of the two
models, on the synthetic stream or on MovieLens 100K (``--ml100k PATH``).
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

from kafka.consumer.fetcher import ConsumerRecord  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from bench.results import write_results  # noqa: E402
from consumer.app import Measured  # noqa: E402
from consumer.config import ServiceConfig  # noqa: E402
from consumer.experiment import Counts, compare  # noqa: E402
from consumer.metrics import ServiceMetrics  # noqa: E402
from consumer.runner import build_service  # noqa: E402
from contract.schema import event_to_json  # noqa: E402
from producer.readers import read_events  # noqa: E402
from producer.synth import synth_events  # noqa: E402


def records(events: list) -> list[ConsumerRecord]:
    """The events as the service's consumer hands them over (one partition, in order)."""
    return [
        ConsumerRecord(
            topic="watch-events",
            partition=0,
            leader_epoch=0,
            offset=i,
            timestamp=int(e.timestamp * 1000),
            timestamp_type=0,
            key=e.viewer.encode(),
            value=event_to_json(e),
            headers=[],
            checksum=None,
            serialized_key_size=-1,
            serialized_value_size=-1,
            serialized_header_size=-1,
        )
        for i, e in enumerate(events)
    ]


def run(
    config: ServiceConfig, batches: list[list[ConsumerRecord]], watch: list | None = None
) -> tuple[float, object]:
    """Seconds the service takes to answer every batch and record its metrics; the service.
    With ``watch``, the readout after every batch is appended to it (outside the timing)."""
    service = build_service(config, with_metrics=False)
    service.metrics = ServiceMetrics(
        models=service.model_names, registry=CollectorRegistry(), arms=service.arm_labels
    )
    seconds, events = 0.0, 0
    for batch in batches:
        started = time.perf_counter()
        answer = service.answer(batch)
        service._record([Measured(len(batch), answer.intake, answer.tested, answer.recommended, 0.0)])
        seconds += time.perf_counter() - started
        events += len(batch)
        if watch is not None and len(service.arms) > 1:
            watch.append((events, readout(service)))
    return seconds, service


def readout(service) -> dict[str, object]:
    """The experiment's readout from the service's totals: each arm's counts, and the
    treatment against the control (consumer.experiment.compare)."""
    counts = {}
    for name, t in service.tallies.items():
        shown, hits, _, _, squares, hit_squares, products, viewers = t
        counts[name] = Counts(int(shown), int(hits), squares, hit_squares, products, int(viewers))
    return {"counts": counts, "versus": compare(counts["control"], counts["treatment"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--control", default="streamrec")
    parser.add_argument("--treatment", default="most_popular")
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--viewers", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--ml100k", type=Path, help="replay this MovieLens u.data instead (its licence: never commit it)"
    )
    parser.add_argument("--json", type=Path, default=REPO / "bench/results/arms.json")
    args = parser.parse_args(argv)

    if args.ml100k:
        events = read_events(args.ml100k)[: args.events]
    else:
        events = list(synth_events(viewers=args.viewers, videos=args.videos, events=args.events, seed=1))
    stream = records(events)
    batches = [stream[i : i + 256] for i in range(0, len(stream), 256)]
    base = {"checkpoint_dir": "none", "metrics_port": 0, "shadow_baseline": False}
    services = {
        "control": ServiceConfig(model=args.control, **base),
        "treatment": ServiceConfig(model=args.treatment, **base),
        "arms": ServiceConfig(arms=f"control={args.control},treatment={args.treatment}", **base),
    }
    best = dict.fromkeys(services, float("inf"))
    hit_rates: dict[str, dict[str, float]] = {}
    watched: list = []
    for repeat in range(args.repeats):
        for label, config in services.items():
            watch = watched if label == "arms" and repeat == 0 else None
            seconds, service = run(config, batches, watch)
            best[label] = min(best[label], seconds)
            hit_rates[label] = {arm.name: arm.evaluator.report.hr for arm in service.arms}
    ratio = best["arms"] / (best["control"] + best["treatment"])
    rows = [
        {"service": label, "seconds": best[label], "events_per_s": len(events) / best[label]}
        for label in services
    ]
    print(f"{'service':<28} {'seconds':>8} {'events/s':>9}")
    names = (args.control, args.treatment, f"arms {args.control}+{args.treatment}")
    for row, label in zip(rows, names, strict=True):
        print(f"{label:<28} {row['seconds']:>8.2f} {row['events_per_s']:>9,.0f}")
    print(f"arms / (control + treatment) = {ratio:.3f}  (target <= 1.10)")
    alone = {args.control: hit_rates["control"]["control"], args.treatment: hit_rates["treatment"]["control"]}
    print(f"test-then-train HR@10 alone {alone}, as arms {hit_rates['arms']}")
    events_read, final = watched[-1]
    decided = next((n for n, r in watched if r["versus"].p_value < 0.01), None)
    versus = final["versus"]
    for name, c in final["counts"].items():
        print(f"online hit rate {name:<10} {c.rate:.4f} of {c.shown:,} shown events ({c.viewers:,} viewers)")
    print(
        f"treatment - control {versus.difference:+.4f} [{versus.low:+.4f}, {versus.high:+.4f}] "
        f"p={versus.p_value:.2g}; p < 0.01 first after {decided or 'never'} of {events_read:,} events"
    )
    summary = {
        "arms_vs_sum": ratio,
        "online_hit_rate": {name: c.rate for name, c in final["counts"].items()},
        "difference": versus.difference,
        "p_value": versus.p_value,
        "events_to_p_below_0_01": decided,
    }
    write_results(args.json, {"args": vars(args), "rows": rows, "summary": summary, "hr_at_10": hit_rates})
    return 0


if __name__ == "__main__":
    sys.exit(main())
