"""What the Prometheus metrics cost the service: throughput with metrics on vs off, same run.

Usage::

    .venv/bin/python bench/metrics_overhead.py [--events 30000] [--videos 10000] [--rounds 1]
        [--bootstrap-servers HOST:PORT] [--security-protocol SASL_SSL --sasl-mechanism M
        --sasl-username U --sasl-password-file F --ssl-cafile CA.pem ...]

One synthetic stream (10k videos, seeded) is produced once into a fresh 3-partition topic on a
real broker (``--bootstrap-servers`` or its older name ``--bootstrap``, with the project's
connection flags for TLS and SASL, see :mod:`bench.brokers`; ``$KAFKA_BOOTSTRAP``; or a local
broker started for the run).
Then the service (the real :class:`consumer.app.StreamrecService`, in this process) learns the
whole topic from the start under a new consumer group, once with metrics off and once with
metrics on, alternating for ``--rounds`` rounds. With metrics on, a thread scrapes ``/metrics``
every second the way Prometheus does in the tests (the compose stack scrapes every 5 s).

Throughput is timed from the end of the first batch to the end of the last one (connecting
and the group's first rebalance are not the service's per-event cost). Two figures:

* ``on / off``: the throughput ratio; the issue's budget is a cost of at most 5 %;
* ``in metrics calls``: the share of batch processing time spent inside ``ServiceMetrics``
  calls (each call timed), a direct measure that is not at the mercy of run-to-run noise.

The table goes to stdout and the JSON to ``bench/results/metrics_overhead.json``.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import contract  # noqa: E402, F401  (first: it makes BLAS single-threaded before numpy loads)

# isort: split

from prometheus_client import CollectorRegistry  # noqa: E402

from bench.brokers import add_broker_arguments, kafka_for, remove_topics  # noqa: E402
from bench.e2e import service_config  # noqa: E402
from bench.results import write_results  # noqa: E402
from consumer.metrics import ServiceMetrics, start_http_server  # noqa: E402
from consumer.runner import build_service  # noqa: E402
from contract.connection import KafkaConnection  # noqa: E402
from producer.sink import KafkaSink  # noqa: E402
from producer.synth import synth_events  # noqa: E402

RESULTS = REPO / "bench" / "results" / "metrics_overhead.json"


class TimedMetrics:
    """Wraps a :class:`ServiceMetrics` and adds up the wall time spent in its calls."""

    def __init__(self, inner: ServiceMetrics) -> None:
        self._inner = inner
        self.seconds = 0.0

    def __getattr__(self, name: str):
        # Every call the service makes (record_*, set_*) is timed; whatever it is named.
        method = getattr(self._inner, name)
        if not callable(method) or name.startswith("_"):
            return method

        def call(*args, **kwargs):
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return call


def scrape_every(url: str, period: float, stop: threading.Event) -> None:
    while not stop.wait(period):
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()
        except OSError:
            pass


def run_once(where: KafkaConnection, topic: str, events: int, with_metrics: bool) -> dict:
    config = service_config(where, topic)
    service = build_service(config, with_metrics=False)
    timed = stop_scraping = server = None
    if with_metrics:
        timed = TimedMetrics(ServiceMetrics(models=service.model_names, registry=CollectorRegistry()))
        service.metrics = timed
        server, port = start_http_server(0, "127.0.0.1", timed._inner.registry)
        stop_scraping = threading.Event()
        threading.Thread(
            target=scrape_every, args=(f"http://127.0.0.1:{port}/metrics", 1.0, stop_scraping), daemon=True
        ).start()

    # (end of batch, process CPU seconds then, events learned so far, batch seconds)
    stamps: list[tuple[float, float, int, float]] = []
    process = service.process

    def process_and_stamp(polled):
        started = time.perf_counter()
        process(polled)
        now = time.perf_counter()
        stamps.append((now, time.process_time(), service.model_events, now - started))
        if service.model_events >= events:
            service.stop()

    service.process = process_and_stamp
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    thread.join(timeout=900)
    if stop_scraping is not None:
        stop_scraping.set()
        server.shutdown()
    if thread.is_alive() or not stamps or stamps[-1][2] < events:
        raise RuntimeError(f"the service learned {stamps[-1][2] if stamps else 0} of {events} events")
    (t0, c0, n0, _), (t1, c1, n1, _) = stamps[0], stamps[-1]
    batch_seconds = sum(s for *_, s in stamps)
    return {
        "metrics": "on" if with_metrics else "off",
        "events": n1 - n0,
        "batches": len(stamps) - 1,
        "seconds": t1 - t0,
        "events_per_s": (n1 - n0) / (t1 - t0),
        # CPU time of this whole process (service, Kafka client threads, /metrics server) per
        # event: unlike wall time, it does not move when other processes load the machine.
        "cpu_us_per_event": 1e6 * (c1 - c0) / (n1 - n0),
        "metrics_call_seconds": timed.seconds if timed else 0.0,
        "batch_seconds": batch_seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--viewers", type=int, default=2000)
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=1, help="off/on pairs, alternating (default 1)")
    add_broker_arguments(parser)
    args = parser.parse_args(argv)
    topic = f"bench-watch-{uuid.uuid4().hex[:8]}"
    with kafka_for(parser, args) as connection:
        try:
            with KafkaSink(connection, topic, partitions=3) as sink:
                sink.send_many(synth_events(args.viewers, args.videos, args.events, seed=0))
            runs = []
            for _ in range(args.rounds):
                for with_metrics in (False, True):
                    runs.append(run_once(connection, topic, args.events, with_metrics))
                    print(
                        f"  metrics {runs[-1]['metrics']:>3}: {runs[-1]['events_per_s']:,.0f} events/s",
                        flush=True,
                    )
        finally:
            remove_topics(connection, topic)

    def mean(key: str, mode: str) -> float:
        values = [r[key] for r in runs if r["metrics"] == mode]
        return sum(values) / len(values)

    off, on = mean("events_per_s", "off"), mean("events_per_s", "on")
    cpu_off, cpu_on = mean("cpu_us_per_event", "off"), mean("cpu_us_per_event", "on")
    in_calls = sum(r["metrics_call_seconds"] for r in runs) / sum(
        r["batch_seconds"] for r in runs if r["metrics"] == "on"
    )
    summary = {
        "events_per_s_off": off,
        "events_per_s_on": on,
        "ratio_on_off": on / off,
        "cost_pct_wall": 100 * (1 - on / off),
        "cpu_us_per_event_off": cpu_off,
        "cpu_us_per_event_on": cpu_on,
        "cost_pct_cpu": 100 * (cpu_on / cpu_off - 1),
        "share_of_batch_time_in_metrics_calls": in_calls,
    }
    print()
    print(f"{'metrics':<10}{'events':>10}{'seconds':>10}{'events/s':>12}{'CPU us/event':>14}")
    for r in runs:
        print(
            f"{r['metrics']:<10}{r['events']:>10,}{r['seconds']:>10.2f}{r['events_per_s']:>12,.0f}"
            f"{r['cpu_us_per_event']:>14.1f}"
        )
    wall_cost = summary["cost_pct_wall"]
    print(f"\nthroughput on / off: {on / off:.3f}  (wall-clock cost {wall_cost:.1f} %, budget 5 %)")
    print(f"CPU per event on / off: {cpu_on / cpu_off:.3f}  (CPU cost {summary['cost_pct_cpu']:.1f} %)")
    print(f"time inside metrics calls: {100 * in_calls:.2f} % of batch processing time")
    write_results(
        RESULTS,
        {"args": vars(args), "kafka": connection.describe(), "runs": runs, "summary": summary},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
