"""End to end on a real broker: service throughput against raw consumption, and freshness latency.

Usage::

    .venv/bin/python bench/e2e.py [--events 60000] [--viewers 5000] [--videos 10000]
        [--rates 1000,5000] [--seconds 15] [--profile] [--model NAME] [--bootstrap HOST:PORT]

Everything runs on this machine: the broker (``--bootstrap``, ``$KAFKA_BOOTSTRAP``, or a local
broker started for the run), the producer and the service (the real
:class:`consumer.app.StreamrecService` with its default settings, metrics on, checkpoints to a
temporary folder) in this process.

1. **Throughput.** A seeded synthetic stream (10k videos) is produced into a fresh 3-partition
   topic. The *baseline* is raw kafka-python consumption of that topic (poll, nothing else;
   same ``max_poll_records`` as the service), measured in the same run. Then the service
   learns the whole topic from the start: decode, score, learn, recommend, publish with
   ``acks=all``, commit. Both are timed from the end of the first poll (or batch) to the end of
   the last, so connecting and the group's first rebalance are left out. Target: service
   >= 60 % of the raw rate.
2. **Freshness.** With the service caught up, the stream continues, paced at each ``--rates``
   value for ``--seconds`` seconds. A reader follows the output topic; an event's latency is
   from just before its ``send`` to the moment the reader holds a list for its viewer whose
   source is that event or a later one of the same partition (a list reflects every event of
   its batch). The first second of each phase is left out (warm-up). Target: p99 <= 100 ms at
   5k events/s.

``--profile`` runs the throughput phase under cProfile (the service's thread only) and prints
where the time goes. The table goes to stdout, the JSON to ``bench/results/e2e.json``.
"""

from __future__ import annotations

import argparse
import bisect
import cProfile
import io
import os
import pstats
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import contract  # noqa: E402, F401  (first: it makes BLAS single-threaded before numpy loads)

# isort: split

import numpy as np  # noqa: E402
import orjson  # noqa: E402
from kafka import KafkaConsumer, KafkaProducer  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from bench.results import write_results  # noqa: E402
from consumer.config import ServiceConfig  # noqa: E402
from consumer.metrics import ServiceMetrics  # noqa: E402
from consumer.runner import build_service  # noqa: E402
from contract.schema import event_to_json  # noqa: E402
from producer.pacing import paced  # noqa: E402
from producer.sink import KafkaSink, ensure_topic  # noqa: E402
from producer.synth import synth_events  # noqa: E402

RESULTS = REPO / "bench" / "results" / "e2e.json"
PARTITIONS = 3


def raw_consume(bootstrap: str, topic: str, events: int, max_poll_records: int) -> dict:
    """kafka-python alone: poll the whole topic, touch nothing. The baseline."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-raw-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=max_poll_records,
    )
    seen, first, last = 0, None, None
    deadline = time.monotonic() + 300
    while seen < events and time.monotonic() < deadline:
        polled = consumer.poll(timeout_ms=100, max_records=max_poll_records)
        n = sum(len(r) for r in polled.values())
        if n:
            now = time.perf_counter()
            if first is None:
                first, counted_from = now, seen + n
            last = now
            seen += n
    consumer.close()
    if seen < events or last is None or last == first:
        raise RuntimeError(f"raw consumption read {seen} of {events} records")
    return {
        "events": seen - counted_from,
        "seconds": last - first,
        "events_per_s": (seen - counted_from) / (last - first),
    }


def service_config(bootstrap: str, topic: str, **settings) -> ServiceConfig:
    """The service's defaults on ``topic`` (outputs beside it), a new group, no metrics port."""
    return ServiceConfig(
        bootstrap_servers=bootstrap,
        input_topic=topic,
        output_topic=f"{topic}-recs",
        dlq_topic=f"{topic}-dlq",
        group_id=f"bench-{uuid.uuid4().hex[:8]}",
        metrics_port=0,
        **settings,
    )


class Bench:
    """The service in a thread, with a stamp at the end of every batch."""

    def __init__(self, bootstrap: str, topic: str, checkpoints: str, model: str) -> None:
        config = service_config(bootstrap, topic, model=model, checkpoint_dir=checkpoints)
        self.config = config
        self.service = build_service(config, with_metrics=False)
        self.service.metrics = ServiceMetrics(models=self.service.model_names, registry=CollectorRegistry())
        self.stamps: list[tuple[float, int]] = []  # (end of batch, events learned so far)
        self.profiler: cProfile.Profile | None = None
        self.profile_until: int | None = None
        process = self.service.process

        def process_and_stamp(polled):
            process(polled)
            self.stamps.append((time.perf_counter(), self.service.model_events))
            if self.profiler is not None and self.service.model_events >= (self.profile_until or 0):
                self.profiler.disable()

        self.service.process = process_and_stamp
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if self.profiler is not None:
            self.profiler.enable()
        self.service.run()

    def wait_learned(self, events: int, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while self.service.model_events < events:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the service learned {self.service.model_events} of {events} events")
            time.sleep(0.05)


def follow(bootstrap: str, topic: str, stop: threading.Event, out: list) -> None:
    """Read the output topic as it grows: (receive time, viewer, partition, offset) per list."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="latest",
        enable_auto_commit=False,
        fetch_max_wait_ms=5,
        group_id=None,
    )
    while not consumer.assignment():
        consumer.poll(timeout_ms=50)
    consumer.seek_to_end()
    out.append(None)  # ready
    while not stop.is_set():
        polled = consumer.poll(timeout_ms=20)
        now = time.time()
        for records in polled.values():
            for r in records:
                body = orjson.loads(r.value)
                out.append((now, body["viewer"], body["source"]["partition"], body["source"]["offset"]))
    consumer.close()


def paced_phase(bootstrap: str, topic: str, events: list, rate: float) -> list[tuple[str, float, object]]:
    """Send ``events`` at ``rate`` per second; (viewer, send time, future) per event."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1, enable_idempotence=True)
    sent = []
    for e in paced(events, rate=rate):
        t = time.time()
        sent.append((e.viewer, t, producer.send(topic, key=e.viewer.encode(), value=event_to_json(e))))
    producer.flush()
    producer.close()
    return sent


def latencies(sent: list, received: list, skip_s: float) -> np.ndarray:
    """Per event: seconds from its send to the first list that reflects it (NaN: never seen)."""
    lists: dict[tuple[str, int], tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for item in received:
        if item is None:
            continue
        t, viewer, partition, offset = item
        offsets, times = lists[(viewer, partition)]
        offsets.append(offset)
        times.append(t)
    for offsets, times in lists.values():  # first arrival of a list at or after each offset
        order = np.argsort(offsets, kind="stable")
        offsets[:] = np.asarray(offsets)[order].tolist()
        times[:] = np.minimum.accumulate(np.asarray(times)[order][::-1])[::-1].tolist()
    start = sent[0][1] + skip_s
    out = []
    for viewer, t_send, future in sent:
        if t_send < start:
            continue
        meta = future.get(timeout=30)
        offsets, times = lists.get((viewer, meta.partition), ([], []))
        i = bisect.bisect_left(offsets, meta.offset)
        out.append(times[i] - t_send if i < len(offsets) else np.nan)
    return np.asarray(out)


#: The service's stages, as the functions that carry them (matched against ``file:line(function)``).
STAGES = {
    "poll (kafka-python fetch + unpack)": "kafka/consumer/group.py:.*\\(poll\\)",
    "decode + validate": "consumer/intake.py:.*\\(decode\\)",
    "test + learn (rank_and_learn, incl. shadow)": "consumer/app.py:.*\\(_test_and_learn\\)",
    "recommend (recommend_many + messages)": "consumer/app.py:.*\\(_recommend\\)",
    "publish + commit": "consumer/app.py:.*\\(_publish_and_commit\\)",
    "  of which producer.flush (acks=all)": "kafka/producer/kafka.py:.*\\(flush\\)",
    "  of which consumer.commit": "kafka/consumer/group.py:.*\\(commit\\)",
    "live metrics (evaluator, ServiceMetrics)": (
        "model/evaluate.py:.*\\(observe\\)|consumer/metrics.py:.*\\(record_"
    ),
    "checkpoint": "consumer/app.py:.*\\(checkpoint\\)",
}


def profile_tables(profiler: cProfile.Profile, top: int = 20) -> tuple[dict, str]:
    """Seconds per service stage (cumulative) and the top functions by their own time."""
    import re

    stats = pstats.Stats(profiler)
    total = stats.total_tt
    stages = {}
    for stage, pattern in STAGES.items():
        regex = re.compile(pattern)
        seconds = 0.0
        for (filename, line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
            if regex.search(f"{filename}:{line}({name})"):
                seconds += ct
        stages[stage] = seconds
    buffer = io.StringIO()
    buffer.write(f"{'stage (cumulative seconds in the service thread)':<48}{'s':>8}{'share':>8}\n")
    buffer.write(f"{'whole thread':<48}{total:>8.2f}{1.0:>8.0%}\n")
    for stage, seconds in stages.items():
        buffer.write(f"{stage:<48}{seconds:>8.2f}{seconds / total:>8.0%}\n")
    buffer.write("\n")
    pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(top)
    return {"total_seconds": total, **stages}, buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=60_000, help="events for the throughput phase")
    parser.add_argument("--viewers", type=int, default=5000)
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--rates", default="1000,5000", help="paced rates for freshness, events/s")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each paced phase")
    parser.add_argument("--profile", action="store_true", help="cProfile the service's throughput phase")
    parser.add_argument(
        "--model",
        default="streamrec",
        help="model to serve (a cheap one, e.g. most_popular, shows the Kafka side)",
    )
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP"))
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r]

    broker = None
    bootstrap = args.bootstrap
    if not bootstrap:
        from streamrec import kafka_local

        broker = kafka_local.LocalBroker(
            tempfile.mkdtemp(prefix="streamrec-bench-kafka-"), port=kafka_local.free_port(pair=True)
        )
        bootstrap = broker.start()
    paced_total = int(sum(rates) * args.seconds)
    stream = list(synth_events(args.viewers, args.videos, args.events + paced_total, seed=0))
    result: dict = {}
    try:
        topic = f"bench-e2e-{uuid.uuid4().hex[:8]}"
        for name in (topic, f"{topic}-recs", f"{topic}-dlq"):
            ensure_topic(bootstrap, name, PARTITIONS if name == topic else 1)
        started = time.perf_counter()
        with KafkaSink(bootstrap, topic, partitions=None) as sink:
            sink.send_many(stream[: args.events])
        produce_s = time.perf_counter() - started
        print(f"produced {args.events:,} events in {produce_s:.1f} s", flush=True)

        bench = Bench(bootstrap, topic, tempfile.mkdtemp(prefix="streamrec-bench-ckpt-"), args.model)
        raw = raw_consume(bootstrap, topic, args.events, bench.config.max_poll_records)
        print(f"raw kafka-python consumption: {raw['events_per_s']:,.0f} events/s", flush=True)

        if args.profile:
            bench.profiler = cProfile.Profile()
            bench.profile_until = args.events
        bench.thread.start()
        bench.wait_learned(args.events)
        (t0, n0), (t1, n1) = bench.stamps[0], bench.stamps[-1]
        service = {"events": n1 - n0, "seconds": t1 - t0, "events_per_s": (n1 - n0) / (t1 - t0)}
        print(f"service end to end: {service['events_per_s']:,.0f} events/s", flush=True)

        received: list = []
        stop_reader = threading.Event()
        reader = threading.Thread(
            target=follow, args=(bootstrap, f"{topic}-recs", stop_reader, received), daemon=True
        )
        reader.start()
        while not received:
            time.sleep(0.05)
        phases = []
        offset = args.events
        for rate in rates:
            n = int(rate * args.seconds)
            batch_before = len(bench.stamps)
            t_start = time.perf_counter()
            sent = paced_phase(bootstrap, topic, stream[offset : offset + n], rate)
            achieved = n / (time.perf_counter() - t_start)
            offset += n
            bench.wait_learned(offset, timeout=300)
            time.sleep(1.0)  # the last lists reach the reader
            lat = latencies(sent, received, skip_s=1.0)
            seen = lat[~np.isnan(lat)]
            batches = bench.stamps[batch_before:]
            phase = {
                "rate": rate,
                "achieved_rate": achieved,
                "events": n,
                "measured": int(seen.size),
                "unmatched": int(np.isnan(lat).sum()),
                "p50_ms": 1000 * float(np.percentile(seen, 50)),
                "p90_ms": 1000 * float(np.percentile(seen, 90)),
                "p99_ms": 1000 * float(np.percentile(seen, 99)),
                "max_ms": 1000 * float(seen.max()),
                "mean_batch_events": (batches[-1][1] - batches[0][1]) / max(1, len(batches) - 1),
            }
            phases.append(phase)
            print(
                f"paced {rate:,.0f}/s: p50 {phase['p50_ms']:.1f} ms, p99 {phase['p99_ms']:.1f} ms",
                flush=True,
            )
        stop_reader.set()
        bench.service.stop()
        bench.thread.join(60)
        reader.join(10)
        result = {"raw": raw, "service": service, "freshness": phases, "produce_seconds": produce_s}
        if bench.profiler is not None:
            result["profile_stages"], result["profile"] = profile_tables(bench.profiler)
    finally:
        if broker is not None:
            broker.stop()

    ratio = result["service"]["events_per_s"] / result["raw"]["events_per_s"]
    print()
    print(f"{'throughput':<34}{'events/s':>12}{'vs raw':>10}{'target':>10}")
    print(f"{'raw kafka-python consume-only':<34}{result['raw']['events_per_s']:>12,.0f}{1.0:>10.2f}")
    service_rate = result["service"]["events_per_s"]
    print(f"{'streamrec service end to end':<34}{service_rate:>12,.0f}{ratio:>10.2f}{'>= 0.60':>10}")
    print()
    head = ["achieved/s", "p50 ms", "p90 ms", "p99 ms", "max ms"]
    print(
        f"{'freshness at':<16}"
        + "".join(f"{h:>12}" if i == 0 else f"{h:>10}" for i, h in enumerate(head))
        + f"{'batch':>8}"
    )
    for p in result["freshness"]:
        print(
            f"{p['rate']:<16,.0f}{p['achieved_rate']:>12,.0f}{p['p50_ms']:>10.1f}{p['p90_ms']:>10.1f}"
            f"{p['p99_ms']:>10.1f}{p['max_ms']:>10.1f}{p['mean_batch_events']:>8.0f}"
        )
    top = max(result["freshness"], key=lambda p: p["rate"])
    summary = {
        "service_vs_raw": ratio,
        "throughput_target_met": ratio >= 0.6,
        "p99_ms_at_top_rate": top["p99_ms"],
        "top_rate": top["rate"],
        "freshness_target_met": top["rate"] >= 5000 and top["p99_ms"] <= 100,
    }
    result["summary"] = summary
    print(f"\nservice / raw = {ratio:.2f} (target 0.60); ", end="")
    print(f"p99 at {top['rate']:,.0f}/s = {top['p99_ms']:.0f} ms (target 100)")
    if "profile" in result:
        print("\nWhere the service's time goes (cProfile, its thread, throughput phase, by own time):")
        print(result["profile"])
    write_results(RESULTS, {"args": vars(args) | {"bootstrap": bootstrap}, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
