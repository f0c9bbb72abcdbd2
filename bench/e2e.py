"""End to end on a real broker: service throughput against raw consumption, and freshness latency.

Usage::

    .venv/bin/python bench/e2e.py [--events 60000] [--viewers 5000] [--videos 10000]
        [--rates 1000,5000] [--seconds 15] [--profile] [--model NAME] [--keep-topics]
        [--set NAME=VALUE ...]   # any service setting, e.g. --set output_compression=zstd
        [--bootstrap-servers HOST:PORT --security-protocol SASL_SSL --sasl-mechanism SCRAM-SHA-512
         --sasl-username U --sasl-password-file F --ssl-cafile CA.pem]   # the service's flags
    .venv/bin/python bench/e2e.py --compare-security [--events 60000] [--rounds 2]
    .venv/bin/python bench/e2e.py --ml100k ../shared/data/ml-100k/u.data [--partitions 4]
    .venv/bin/python bench/e2e.py --quality [PATH]

Everything runs on this machine: the broker (``--bootstrap-servers`` or its older name
``--bootstrap``, with the project's connection flags for TLS and SASL, see
:mod:`bench.brokers`; ``$KAFKA_BOOTSTRAP``; or a local plaintext broker started for the run),
the producer and the service (the real :class:`consumer.app.StreamrecService` with its default
settings, metrics on, checkpoints to a temporary folder) in this process. Every Kafka client of
the run, the service's included, connects with the same settings.

1. **Throughput.** A seeded synthetic stream (10k videos) is produced into a fresh 3-partition
   topic. The *baseline* is raw kafka-python consumption of that topic (poll, nothing else;
   same ``max_poll_records`` as the service), measured in the same run: the median of three
   reads of the whole topic that did not stall at a partition's end (:func:`raw_baseline`).
   Then the service learns the whole topic from the start: decode, score, learn, recommend,
   publish with ``acks=all``, commit. Both are timed from the end of the first poll to the end of the last,
   so connecting and the group's first rebalance are left out. Target: service >= 25 % of the
   raw rate (issue 9; raw kafka-python consumption alone is the ceiling of one worker). The
   same ratio by CPU per event of this process (``summary.service_vs_raw_cpu``) moves far less
   with other processes' load than the ratio of rates. Beside it, as a diagnostic and not the
   target, the same ratios over the second half of the stream alone
   (``summary.second_half_vs_raw``, ``second_half_vs_raw_cpu``): the model warm and its
   shortlist settled, as in a service that has run for a while.
2. **Freshness.** With the service caught up, the stream continues, paced at each ``--rates``
   value for ``--seconds`` seconds, by a producer in a process of its own. A reader, in another
   process, follows the output topic (the service runs alone in its process, as it would in
   production, not taking turns with them for the interpreter lock); an event's latency is
   from just before its ``send`` to the moment the reader holds a list for its viewer whose
   source is that event or a later one of the same partition (a list reflects every event of
   its batch). The first second of each phase is left out (warm-up). Targets: p99 <= 100 ms at
   5k events/s, p50 <= 20 ms at 1k events/s.

Other measures, one per run:

* ``--compare-security``: the cost of TLS and SASL. The throughput phase (producing, raw
  consumption, the service) on a plaintext broker and on a SASL_SSL one (TLS, SCRAM-SHA-512),
  both started locally, or the secured cluster of the connection flags and
  ``--plaintext-bootstrap``; ``--rounds`` rounds, the order alternating; ratios secured /
  plaintext inside each round, their median in ``bench/results/e2e_security.json``.
* ``--ml100k PATH``: issue 11's measure, a MovieLens replay through one worker (a topic of
  ``--partitions`` partitions keyed by viewer) against raw consumption of the same topic, with
  the live HR@10 (``bench/results/e2e_ml100k.json``; target: service >= 0.30 of raw).
* ``--quality [PATH]``: the live HR@10 of a replay through a one-partition topic against
  ``streamrec evaluate``'s (``bench/results/e2e_quality.json``).

Where the service's time goes is read from its own per-stage counters
(``StreamrecService.stage_seconds``, exported as ``streamrec_stage_seconds_total``) for each
phase: seconds, share of the phase, and microseconds per event (``stages`` in the JSON).
``--profile`` also runs the throughput phase under cProfile (the service's thread only) and
prints the functions that take the time. The table goes to stdout, the JSON to
``bench/results/e2e.json``. The run's topics (the inputs, the services' outputs and internal
topics) and checkpoint folders are deleted when it ends, unless ``--keep-topics``.
"""

from __future__ import annotations

import argparse
import bisect
import cProfile
import io
import itertools
import multiprocessing
import pstats
import shutil
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
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from kafka.errors import KafkaError  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from bench.brokers import add_broker_arguments, connection_from, local_broker, remove_topics  # noqa: E402
from bench.results import write_results  # noqa: E402
from consumer.config import ServiceConfig  # noqa: E402
from consumer.metrics import ServiceMetrics  # noqa: E402
from consumer.partitioner import partitions  # noqa: E402
from consumer.runner import build_service  # noqa: E402
from contract import group_join  # noqa: E402
from contract.connection import KafkaConnection  # noqa: E402
from contract.errors import UserError  # noqa: E402
from contract.schema import event_to_json  # noqa: E402
from producer.pacing import paced  # noqa: E402
from producer.sink import KafkaSink, ensure_topic  # noqa: E402
from producer.synth import synth_events  # noqa: E402

RESULTS = REPO / "bench" / "results" / "e2e.json"
PARTITIONS = 3


class ReadFailed(RuntimeError):
    """A raw read did not get the whole topic in time."""


class TooFewEvents(UserError):
    """The topic is read in one poll: no rate can be timed from the end of the first poll."""


def raw_consume(
    where: KafkaConnection | str, topic: str, events: int, max_poll_records: int, timeout_s: float = 120
) -> dict:
    """kafka-python alone: poll the whole topic, touch nothing. The baseline."""
    group_join.install()  # as the service's consumer: a lost join would stall the baseline
    consumer = KafkaConsumer(
        topic,
        **KafkaConnection.of(where).client_options(),
        group_id=f"bench-raw-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=max_poll_records,
    )
    seen, first, last, gap = 0, None, None, 0.0
    deadline = time.monotonic() + timeout_s
    while seen < events and time.monotonic() < deadline:
        polled = consumer.poll(timeout_ms=100, max_records=max_poll_records)
        n = sum(len(r) for r in polled.values())
        if n:
            now, cpu = time.perf_counter(), time.process_time()
            if first is None:
                first, counted_from, cpu_first = now, seen + n, cpu
            else:
                gap = max(gap, now - last)
            last, cpu_last = now, cpu
            seen += n
    wait_s = consumer.config["fetch_max_wait_ms"] / 1000
    consumer.close()
    if seen < events or last is None:
        raise ReadFailed(f"raw consumption read {seen} of {events} records in {timeout_s:.0f} s")
    if last == first:
        raise TooFewEvents(
            f"raw consumption read all {events:,} records in one poll (max_poll_records "
            f"{max_poll_records:,}): a rate needs more polls; give more --events"
        )
    return {
        "events": seen - counted_from,
        "seconds": last - first,
        "events_per_s": (seen - counted_from) / (last - first),
        "cpu_us_per_event": 1e6 * (cpu_last - cpu_first) / (seen - counted_from),
        "longest_gap_s": gap,
        "stalled": gap >= STALL_SHARE * wait_s,
    }


#: A read whose longest wait between two polls with records is at least this share of
#: ``fetch_max_wait_ms`` has stalled at the end of a partition (:func:`raw_baseline`). Not the
#: whole wait: the consumer drains the records it holds while the stalled fetch is out. Reads
#: that did not stall waited at most 0.1 s between two polls here.
STALL_SHARE = 0.4


def raw_baseline(
    where: KafkaConnection | str,
    topic: str,
    events: int,
    max_poll_records: int,
    clean: int = 3,
    most: int = 8,
) -> dict:
    """Raw consumption of the whole topic, read by new groups until ``clean`` reads did not stall
    (at most ``most`` reads); the baseline is the median of the clean reads (of all, if none).

    Why reads stall: kafka-python keeps one fetch in flight per broker, and a fetch for a
    partition that has nothing left waits ``fetch_max_wait_ms`` (500 ms by default) before the
    broker answers. Once one partition of the backlog is read to its end before the others, the
    next fetch may hold that partition alone, and the whole consumer waits half a second: a
    fixed cost that halved about half of the reads of 60,000 events here (60k against 130k
    events/s, for plaintext and TLS alike), so a median of three reads was either figure.
    """
    reads: list[dict] = []
    failed: list[str] = []
    while len(reads) + len(failed) < most and sum(not r["stalled"] for r in reads) < clean:
        try:
            reads.append(raw_consume(where, topic, events, max_poll_records))
        except ReadFailed as err:
            # Seen once with kafka-python 3.0.12: a consumer that had its partitions never found
            # its group coordinator again, and polled nothing more. Another group reads afresh.
            print(f"  a raw read failed ({err}); reading again with a new group", flush=True)
            failed.append(str(err))
    if not reads:
        raise RuntimeError(f"every raw read failed: {failed[-1]}")
    kept = [r for r in reads if not r["stalled"]] or reads
    middle = sorted(kept, key=lambda r: r["events_per_s"])[(len(kept) - 1) // 2]
    return middle | {
        "runs_events_per_s": [r["events_per_s"] for r in reads],
        "runs_stalled": [r["stalled"] for r in reads],
        "runs_longest_gap_s": [r["longest_gap_s"] for r in reads],
        "failed_reads": failed,
        # CPU per event does not stall: the median over every read.
        "cpu_us_per_event": float(np.median([r["cpu_us_per_event"] for r in reads])),
        "clean_reads": sum(not r["stalled"] for r in reads),
    }


def service_config(where: KafkaConnection | str, topic: str, **settings) -> ServiceConfig:
    """The service's defaults on ``topic`` (outputs beside it), a new group, no metrics port;
    connected as ``where`` says (a :class:`KafkaConnection` or a plain bootstrap address)."""
    connection = KafkaConnection.of(where)
    return ServiceConfig(
        bootstrap_servers=connection.bootstrap_servers,
        security=connection,
        input_topic=topic,
        output_topic=f"{topic}-recs",
        dlq_topic=f"{topic}-dlq",
        group_id=f"bench-{uuid.uuid4().hex[:8]}",
        metrics_port=0,
        **settings,
    )


class Bench:
    """The service in a thread, with a stamp at the end of every poll."""

    def __init__(
        self, where: KafkaConnection | str, topic: str, checkpoints: str, model: str, **settings
    ) -> None:
        # --set checkpoint_dir=none (or another folder) wins over the run's own folder
        config = service_config(where, topic, model=model, **({"checkpoint_dir": checkpoints} | settings))
        self.config = config
        self.service = build_service(config, with_metrics=False)
        # As consumer.runner builds them, in a registry of the bench's own.
        arms = {"arms": self.service.arm_labels} if hasattr(self.service, "arm_labels") else {}
        self.service.metrics = ServiceMetrics(
            models=self.service.model_names, registry=CollectorRegistry(), **arms
        )
        #: (end of poll, events learned so far, the service's seconds per stage so far)
        #: (end of poll, events learned so far, the service's seconds per stage so far, CPU
        #: seconds of this process so far: the service and its Kafka clients' threads)
        self.stamps: list[tuple[float, int, dict[str, float], float]] = []
        self.profiler: cProfile.Profile | None = None
        self.profile_until: int | None = None
        process = self.service.process

        def process_and_stamp(polled):
            process(polled)
            service = self.service
            stages = dict(getattr(service, "stage_seconds", {}))  # (older services count none)
            self.stamps.append((time.perf_counter(), service.model_events, stages, time.process_time()))
            if self.profiler is not None and self.service.model_events >= (self.profile_until or 0):
                self.profiler.disable()

        self.service.process = process_and_stamp
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if self.profiler is not None:
            self.profiler.enable()
        self.service.run()

    def stage_table(self, first: int, last: int) -> dict:
        """Per stage between two stamps: seconds, share of the time between them, us per event."""
        (t0, n0, before), (t1, n1, after) = self.stamps[first][:3], self.stamps[last][:3]
        return {
            stage: {
                "seconds": after[stage] - before[stage],
                "share": (after[stage] - before[stage]) / (t1 - t0),
                "us_per_event": 1e6 * (after[stage] - before[stage]) / max(1, n1 - n0),
            }
            for stage in after
        }

    def slowest_polls(self, first: int, last: int, count: int = 5) -> list[dict]:
        """The ``count`` longest polls between two stamps (their end to end, poll included), each
        with its events and its stages' milliseconds, largest first: what a latency tail is
        made of (a stage that stalls shows here, not in a phase's average)."""
        polls = []
        for (t0, n0, before, _), (t1, n1, after, _) in itertools.pairwise(self.stamps[first : last + 1]):
            spent = {stage: round(1000 * (after[stage] - before.get(stage, 0.0)), 1) for stage in after}
            top = dict(sorted(((k, v) for k, v in spent.items() if v >= 0.05), key=lambda kv: -kv[1])[:4])
            polls.append({"ms": round(1000 * (t1 - t0), 1), "events": n1 - n0, "stages_ms": top})
        return sorted(polls, key=lambda p: -p["ms"])[:count]

    def wait_learned(self, events: int, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while self.service.model_events < events:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the service learned {self.service.model_events} of {events} events")
            time.sleep(0.05)


def follow(where: KafkaConnection | str, topic: str, stop, out: list, ready=None) -> None:
    """Read the output topic as it grows: (receive time, viewer, partition, offset, made at) per list."""
    consumer = KafkaConsumer(
        topic,
        **KafkaConnection.of(where).client_options(),
        auto_offset_reset="latest",
        enable_auto_commit=False,
        fetch_max_wait_ms=5,
        group_id=None,
    )
    while not consumer.assignment():
        consumer.poll(timeout_ms=50)
    consumer.seek_to_end()
    consumer.poll(timeout_ms=0)  # the position is fetched before the producer starts
    if ready is not None:
        ready.set()
    while not stop.is_set():
        polled = consumer.poll(timeout_ms=20)
        now = time.time()
        for records in polled.values():
            for r in records:
                body = orjson.loads(r.value)
                source = body["source"]
                out.append((now, body["viewer"], source["partition"], source["offset"], body["generated_at"]))
    consumer.close()


#: One event sent: viewer, send time, partition, offset, the broker's append time.
Sent = tuple[str, float, int, int, float]


def paced_phase(where: KafkaConnection | str, topic: str, events: list, rate: float) -> list[Sent]:
    """Send ``events`` at ``rate`` per second; (viewer, send time, partition, offset, broker
    append time) per event. Each partition is Kafka's default one for the viewer, computed
    ahead (:mod:`consumer.partitioner`), so the producer spends its time sending."""
    producer = KafkaProducer(
        **KafkaConnection.of(where).client_options(), acks="all", linger_ms=1, enable_idempotence=True
    )
    keys = [e.viewer.encode() for e in events]
    where = partitions(keys, len(producer.partitions_for(topic))).tolist()
    values = [event_to_json(e) for e in events]
    sent = []
    for i in paced(range(len(events)), rate=rate):
        t = time.time()
        sent.append((t, producer.send(topic, key=keys[i], value=values[i], partition=where[i])))
    producer.flush()
    producer.close()
    out = []
    for e, (t, future) in zip(events, sent, strict=True):
        meta = future.get(timeout=30)  # the input topic stamps records when the broker appends them
        out.append((e.viewer, t, meta.partition, meta.offset, meta.timestamp / 1000.0))
    return out


def _follow_process(where: KafkaConnection, topic: str, ready, stop, conn) -> None:
    received: list = []
    follow(where, topic, stop, received, ready)
    conn.send(received)
    conn.close()


def _paced_process(where: KafkaConnection, topic: str, events: list, rate: float, conn) -> None:
    conn.send(paced_phase(where, topic, events, rate))
    conn.close()


class LoadProcesses:
    """The paced producer and the output reader of one phase, each in its own process.

    In the service's process their threads would take turns with it for the interpreter lock
    and add their own work to every latency; the service runs alone in production.
    """

    def __init__(self, where: KafkaConnection, topic: str) -> None:
        self.context = multiprocessing.get_context("spawn")
        self.where = where
        self.topic = topic
        self.ready, self.stop = self.context.Event(), self.context.Event()
        self.received, child = self.context.Pipe(duplex=False)
        self.reader = self.context.Process(
            target=_follow_process,
            args=(where, f"{topic}-recs", self.ready, self.stop, child),
            daemon=True,
        )
        self.reader.start()
        if not self.ready.wait(60):
            raise RuntimeError("the output reader did not start")

    def send(self, events: list, rate: float) -> list[Sent]:
        results, child = self.context.Pipe(duplex=False)
        producer = self.context.Process(
            target=_paced_process, args=(self.where, self.topic, events, rate, child), daemon=True
        )
        producer.start()
        sent = results.recv()
        producer.join(30)
        return sent

    def read(self) -> list:
        self.stop.set()
        received = self.received.recv()
        self.reader.join(30)
        return received


def topic_bytes(where: KafkaConnection | str, topic: str) -> tuple[int, int]:
    """Bytes ``topic`` takes on the brokers' disks, and the records in it."""
    options = KafkaConnection.of(where).client_options()
    admin = KafkaAdminClient(**options)
    try:
        size = sum(
            partition["partition_size"]
            for broker in admin.describe_log_dirs([topic])
            for log_dir in broker["log_dirs"]
            for t in log_dir["topics"]
            if t["name"] == topic
            for partition in t["partitions"]
        )
    finally:
        admin.close()
    consumer = KafkaConsumer(**options, enable_auto_commit=False)
    try:
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)])
    finally:
        consumer.close()
    return size, sum(ends.values())


def latencies(sent: list, received: list, skip_s: float) -> np.ndarray:
    """Per event, seconds from its send to the first list that reflects it: in all, until the
    service made that list, from then until the reader had it, and from the send until the
    broker appended the event (rows; NaN: never seen)."""
    lists: dict[tuple[str, int], list] = defaultdict(list)
    for t, viewer, partition, offset, made in received:
        lists[(viewer, partition)].append((offset, t, made))
    index = {}
    for key, found in lists.items():  # the first arrival of a list at or after each offset
        found.sort()
        offsets = [f[0] for f in found]
        best, j = [0] * len(found), len(found) - 1  # the suffix's earliest arrival, by position
        for i in range(len(found) - 1, -1, -1):
            if found[i][1] <= found[j][1]:
                j = i
            best[i] = j
        index[key] = (offsets, [found[b] for b in best])
    start = sent[0][1] + skip_s
    out = []
    for viewer, t_send, partition, offset, appended in sent:
        if t_send < start:
            continue
        offsets, firsts = index.get((viewer, partition), ([], []))
        i = bisect.bisect_left(offsets, offset)
        if i < len(offsets):
            _, t, made = firsts[i]
            out.append((t - t_send, made - t_send, t - made, appended - t_send))
        else:
            out.append((np.nan, np.nan, np.nan, appended - t_send))
    return np.asarray(out).reshape(-1, 4)


#: The service's stages, as the functions that carry them (matched against ``file:line(function)``).
STAGES = {
    "poll (kafka-python fetch + unpack)": "kafka/consumer/group.py:.*\\(poll\\)",
    "decode + validate": "consumer/intake.py:.*\\(decode\\)",
    "test + learn (rank_and_learn, incl. shadow)": "consumer/app.py:.*\\(_test_and_learn\\)",
    "recommend (recommend_many + messages)": "consumer/app.py:.*\\(_recommend\\)",
    "publish (send)": "consumer/publish.py:.*\\(send\\)",
    "acknowledge + commit": "consumer/publish.py:.*\\(deliver\\)",
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


def print_stages(phases: dict[str, dict]) -> None:
    names = list(phases)
    if not next(iter(phases.values())):
        return
    print(f"{'stage (service thread)':<24}" + "".join(f"{n:>22}" for n in names))
    print(f"{'':<24}" + "".join(f"{'share':>10}{'us/event':>12}" for _ in names))
    for stage in next(iter(phases.values())):
        row = "".join(
            f"{phases[n][stage]['share']:>10.0%}{phases[n][stage]['us_per_event']:>12.1f}" for n in names
        )
        print(f"{stage:<24}{row}")


def parse_settings(pairs: list[str]) -> dict:
    """``NAME=VALUE`` service settings, each value typed as the setting's default."""
    fields = ServiceConfig.__dataclass_fields__
    out = {}
    for pair in pairs:
        name, _, raw = pair.partition("=")
        if name not in fields:
            raise SystemExit(f"unknown service setting {name!r}")
        kind = type(fields[name].default)
        out[name] = raw.lower() in ("1", "true", "yes", "on") if kind is bool else kind(raw)
    return out


def measure_throughput(
    where: KafkaConnection,
    events: list,
    model: str,
    settings: dict,
    *,
    partitions: int = PARTITIONS,
    profile: bool = False,
    indent: str = "",
) -> tuple[dict, Bench]:
    """The throughput phase: ``events`` into a fresh topic of ``partitions`` partitions (keyed by
    viewer), raw consumption of it (median of three reads), then the service learning it all.

    Returns the figures (``topic``, ``produce_seconds``, ``raw``, ``service``, ``stages``) and
    the :class:`Bench`, whose service still runs: the caller stops it (or goes on with it).
    """
    topic, checkpoints = fresh_run(where, "bench-e2e")
    for name in (topic, f"{topic}-recs", f"{topic}-dlq"):
        # The input topic is stamped by the broker (LogAppendTime), so the bench can tell
        # the producer's delay from the service's.
        configs = {"message.timestamp.type": "LogAppendTime"} if name == topic else {}
        ensure_topic(where, name, partitions if name == topic else 1, **configs)
    started = time.perf_counter()
    with KafkaSink(where, topic, partitions=None) as sink:
        sink.send_many(events)
    produce_s = time.perf_counter() - started
    if sink.stats.acked != len(events):
        raise RuntimeError(
            f"{sink.stats.acked} of {len(events)} events acknowledged: {sink.stats.first_error}"
        )
    print(f"{indent}produced {len(events):,} events in {produce_s:.1f} s", flush=True)

    bench = Bench(where, topic, checkpoints, model, **settings)
    # Reads of the whole topic, each by a new group, until three did not stall at a partition's
    # end; their median is the baseline (raw_baseline says why reads stall).
    raw = raw_baseline(where, topic, len(events), bench.config.max_poll_records)
    reads = ", ".join(
        f"{r:,.0f}{' (stalled)' if stalled else ''}"
        for r, stalled in zip(raw["runs_events_per_s"], raw["runs_stalled"], strict=True)
    )
    print(
        f"{indent}raw kafka-python consumption: {raw['events_per_s']:,.0f} events/s (median of {reads})",
        flush=True,
    )

    if profile:
        bench.profiler = cProfile.Profile()
        bench.profile_until = len(events)
    bench.thread.start()
    bench.wait_learned(len(events))
    (t0, n0, _, c0), (t1, n1, _, c1) = bench.stamps[0], bench.stamps[-1]
    service = {
        "events": n1 - n0,
        "seconds": t1 - t0,
        "events_per_s": (n1 - n0) / (t1 - t0),
        # CPU time of this process per event: unlike wall time, it hardly moves when other
        # processes load the machine (the brokers' own CPU is not in it).
        "cpu_us_per_event": 1e6 * (c1 - c0) / max(1, n1 - n0),
    }
    # The second half alone: the model warm and its shortlist settled, as in a service that has
    # run for a while (the first half pays for a cold start). A diagnostic beside the target's figure.
    mid = next(i for i, stamp in enumerate(bench.stamps) if stamp[1] >= n0 + (n1 - n0) / 2)
    tm, nm, _, cm = bench.stamps[mid]
    if nm < n1:
        service["second_half"] = {
            "events": n1 - nm,
            "events_per_s": (n1 - nm) / (t1 - tm),
            "cpu_us_per_event": 1e6 * (c1 - cm) / (n1 - nm),
        }
    # The service's consumer can stall at a partition's end as the raw reads do (raw_baseline).
    service["longest_gap_s"] = max((b[0] - a[0] for a, b in itertools.pairwise(bench.stamps)), default=0.0)
    print(
        f"{indent}service end to end: {service['events_per_s']:,.0f} events/s "
        f"(longest wait between two polls {service['longest_gap_s']:.2f} s)",
        flush=True,
    )
    stages = {"throughput": bench.stage_table(0, len(bench.stamps) - 1)}
    size, lists = topic_bytes(where, f"{topic}-recs")
    service["output_bytes_per_list"] = size / max(1, lists)
    codec = getattr(bench.config, "output_compression", "none")
    service["output_compression"] = codec
    print(
        f"{indent}output topic: {lists:,} lists, {size / max(1, lists):.0f} bytes a list on disk ({codec})",
        flush=True,
    )
    figures = {"topic": topic, "produce_seconds": produce_s, "raw": raw, "service": service, "stages": stages}
    return figures, bench


def stop(bench: Bench) -> None:
    bench.service.stop()
    bench.thread.join(60)


#: What this run made on the broker and on disk, removed when it ends (``--keep-topics`` keeps
#: them): ``(where, input topic, checkpoint folder)``. A run against a shared cluster must not
#: leave a dozen topics behind each time.
_MADE: list[tuple[KafkaConnection | str, str, str]] = []


def fresh_run(where: KafkaConnection | str, prefix: str) -> tuple[str, str]:
    """A new input topic name and checkpoint folder for one service run, to be cleaned up."""
    topic = f"{prefix}-{uuid.uuid4().hex[:8]}"
    folder = tempfile.mkdtemp(prefix="streamrec-bench-ckpt-")
    _MADE.append((where, topic, folder))
    return topic, folder


def clean_up() -> None:
    """Delete the topics of this run's services (:func:`bench.brokers.remove_topics`) and their
    checkpoint folders."""
    while _MADE:
        where, topic, folder = _MADE.pop()
        shutil.rmtree(folder, ignore_errors=True)
        try:
            remove_topics(where, topic)
        except KafkaError as err:
            print(f"topics of {topic} left on the broker: {err}", flush=True)


def quality_counters(bench: Bench, model: str) -> tuple[float, int]:
    """The service's live HR@10 of ``model`` and the events it evaluated, from its metrics
    (summed over the series whose ``model`` label is ``model``, whatever their other labels)."""
    families = list(bench.service.metrics.registry.collect())

    def counter(name: str) -> float:
        return sum(
            sample.value
            for family in families
            for sample in family.samples
            if sample.name == f"streamrec_quality_{name}_total" and sample.labels.get("model") == model
        )

    return counter("hits") / max(1.0, counter("evaluated")), int(counter("evaluated"))


def quality_replay(where: KafkaConnection, path: str | None, model: str, settings: dict) -> dict:
    """The service's live HR@10 on a replay against ``streamrec evaluate``'s on the same events.

    The events (``path``, as ``streamrec evaluate`` reads it, or the seeded synthetic stream)
    go in time order into a one-partition topic; the service learns the topic from its start
    (a backlog: full batches of ``max_batch_events``), and its quality counters give HR@10.
    The offline figure is :func:`model.evaluate.evaluate` at batch 256 on the same list.
    """
    from model import registry
    from model.evaluate import evaluate

    if path:
        from producer.readers import read_events

        events, source = read_events(Path(path)), path
    else:
        events, source = list(synth_events(2000, 5000, 60_000, seed=1)), "synthetic (2k viewers, 5k videos)"
    topic, checkpoints = fresh_run(where, "bench-quality")
    for name in (topic, f"{topic}-recs", f"{topic}-dlq"):
        ensure_topic(where, name, 1)
    with KafkaSink(where, topic, partitions=None) as sink:
        sink.send_many(events)
    bench = Bench(where, topic, checkpoints, model, **settings)
    bench.thread.start()
    bench.wait_learned(len(events))
    stop(bench)
    live, evaluated = quality_counters(bench, model)
    offline = evaluate(registry.create(model), events, n=10, batch_size=256)
    return {
        "source": source,
        "events": len(events),
        "model": model,
        "service_hr_at_10": live,
        "service_evaluated": evaluated,
        "offline_hr_at_10": offline.hr,
        "offline_evaluated": offline.evaluated,
        "offline_batch_size": 256,
        "difference": live - offline.hr,
    }


#: Issue 11's target for a MovieLens replay through one worker.
ML100K_TARGET = 0.30


def ml100k_replay(where: KafkaConnection, path: str, model: str, settings: dict, partitions: int) -> dict:
    """Issue 11's measure: a MovieLens file replayed through one worker against raw consumption.

    The file's events (ML-100K: 100,000) go in time order into a fresh topic of ``partitions``
    partitions keyed by viewer; raw kafka-python consumption of that topic (median of three
    reads) is the baseline; then the service learns the whole topic from its start. Both rates
    are from the end of the first poll to the end of the last (:func:`measure_throughput`).
    Also: the service's live HR@10 on that replay (the partitions interleave the viewers, so
    the order differs a little from the file's) and ``streamrec evaluate``'s at batch 256.
    """
    from model import registry
    from model.evaluate import evaluate
    from producer.readers import read_events

    events = read_events(Path(path))
    figures, bench = measure_throughput(where, events, model, settings, partitions=partitions)
    stop(bench)
    live, evaluated = quality_counters(bench, model)
    offline = evaluate(registry.create(model), events, n=10, batch_size=256)
    ratio = figures["service"]["events_per_s"] / figures["raw"]["events_per_s"]
    return {
        "source": path,
        "events": len(events),
        "partitions": partitions,
        "model": model,
        **{k: figures[k] for k in ("produce_seconds", "raw", "service", "stages")},
        "service_hr_at_10": live,
        "service_evaluated": evaluated,
        "offline_hr_at_10": offline.hr,
        "offline_batch_size": 256,
        "summary": {
            "service_vs_raw": ratio,
            "target": ML100K_TARGET,
            "target_met": ratio >= ML100K_TARGET,
            "service_events_per_s": figures["service"]["events_per_s"],
            "raw_events_per_s": figures["raw"]["events_per_s"],
            "service_hr_at_10": live,
            "service_vs_raw_cpu": cpu_ratio(figures),
        },
    }


def cpu_ratio(figures: dict) -> float:
    """Raw consumption's CPU per event over the service's: the ratio of rates the two would
    reach on a core of their own. Other processes on the machine move it far less than the
    ratio of wall-clock rates (raw reads last a second; a load spike in it moves their rate)."""
    return figures["raw"]["cpu_us_per_event"] / figures["service"]["cpu_us_per_event"]


def print_cpu(figures: dict) -> None:
    raw, service = figures["raw"]["cpu_us_per_event"], figures["service"]["cpu_us_per_event"]
    second = figures["service"].get("second_half")
    warm = "" if second is None else f" (second half {raw / second['cpu_us_per_event']:.3f})"
    print(
        f"CPU per event (this process): raw {raw:.2f} us, service {service:.2f} us; "
        f"service / raw by CPU {raw / service:.3f}{warm}"
    )


def print_ml100k(result: dict) -> None:
    s = result["summary"]
    print()
    print(
        f"{result['source']}: {result['events']:,} events, {result['partitions']} partitions keyed by "
        f"viewer, model {result['model']}"
    )
    print(f"{'throughput':<34}{'events/s':>12}{'vs raw':>10}{'target':>10}")
    print(f"{'raw kafka-python consume-only':<34}{s['raw_events_per_s']:>12,.0f}{1.0:>10.2f}")
    print(
        f"{'streamrec service end to end':<34}{s['service_events_per_s']:>12,.0f}"
        f"{s['service_vs_raw']:>10.2f}{'>= ' + format(ML100K_TARGET, '.2f'):>10}"
    )
    print_cpu(result)
    print(
        f"live HR@10 of the service {result['service_hr_at_10']:.4f} ({result['service_evaluated']:,} "
        f"evaluated); streamrec evaluate at batch 256 {result['offline_hr_at_10']:.4f}"
    )
    print()
    print_stages(result["stages"])


def median(values: list[float]) -> float:
    return float(np.median(values))


def compare_security(plain: KafkaConnection, secured: KafkaConnection, events: list, args, settings) -> dict:
    """The throughput phase on a plaintext and on a secured broker, ``args.rounds`` times.

    Each round measures both (a fresh topic on each, the same events), the order alternating
    from one round to the next so that neither side always runs on a warmer machine. The
    ratios secured / plaintext (service, raw consumption, producing) are taken inside each
    round; the summary is their median over the rounds.
    """
    sides = {"plaintext": plain, "secured": secured}
    rounds = []
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        measured = {}
        for name in order:
            where = sides[name]
            print(
                f"round {r + 1}, {name} ({where.security_protocol} at {where.bootstrap_servers}):", flush=True
            )
            figures, bench = measure_throughput(where, events, args.model, settings, indent="  ")
            stop(bench)
            measured[name] = {k: figures[k] for k in ("produce_seconds", "raw", "service", "stages")}
            measured[name]["service_vs_raw"] = (
                figures["service"]["events_per_s"] / figures["raw"]["events_per_s"]
            )
        p, s = measured["plaintext"], measured["secured"]
        ratios = {
            # events/s, secured / plaintext: below 1, TLS and SASL cost throughput
            "service": s["service"]["events_per_s"] / p["service"]["events_per_s"],
            "raw": s["raw"]["events_per_s"] / p["raw"]["events_per_s"],
            "produce": p["produce_seconds"] / s["produce_seconds"],
            # CPU of this process per event, secured / plaintext: above 1, they cost CPU
            "service_cpu": s["service"]["cpu_us_per_event"] / p["service"]["cpu_us_per_event"],
            "raw_cpu": s["raw"]["cpu_us_per_event"] / p["raw"]["cpu_us_per_event"],
        }
        rounds.append({"order": order, **measured, "secured_vs_plaintext": ratios})
    summary = {
        "secured_vs_plaintext_service": median([r["secured_vs_plaintext"]["service"] for r in rounds]),
        "secured_vs_plaintext_raw": median([r["secured_vs_plaintext"]["raw"] for r in rounds]),
        "secured_vs_plaintext_produce": median([r["secured_vs_plaintext"]["produce"] for r in rounds]),
        "cpu_secured_vs_plaintext_service": median(
            [r["secured_vs_plaintext"]["service_cpu"] for r in rounds]
        ),
        "cpu_secured_vs_plaintext_raw": median([r["secured_vs_plaintext"]["raw_cpu"] for r in rounds]),
        "service_vs_raw_plaintext": median([r["plaintext"]["service_vs_raw"] for r in rounds]),
        "service_vs_raw_secured": median([r["secured"]["service_vs_raw"] for r in rounds]),
    }
    return {
        "events": len(events),
        "plaintext": plain.describe(),
        "secured": secured.describe(),
        "rounds": rounds,
        "summary": summary,
    }


def print_security(result: dict) -> None:
    secured = result["secured"]
    mechanism = f" ({secured['sasl_mechanism']})" if secured.get("sasl_mechanism") else ""
    print()
    print(
        f"cost of {secured['security_protocol']}{mechanism} against PLAINTEXT: throughput phase, "
        f"{result['events']:,} events; ratios secured / plaintext inside each round"
    )
    head = ["first", "raw plain", "raw secured", "ratio", "svc plain", "svc secured", "ratio", "produce"]
    print(f"{'round':<7}{head[0]:<11}" + "".join(f"{h:>12}" for h in head[1:]))
    for i, r in enumerate(result["rounds"], 1):
        p, s, q = r["plaintext"], r["secured"], r["secured_vs_plaintext"]
        print(
            f"{i:<7}{r['order'][0]:<11}{p['raw']['events_per_s']:>12,.0f}{s['raw']['events_per_s']:>12,.0f}"
            f"{q['raw']:>12.2f}{p['service']['events_per_s']:>12,.0f}{s['service']['events_per_s']:>12,.0f}"
            f"{q['service']:>12.2f}{q['produce']:>12.2f}"
        )
    m = result["summary"]
    print(
        f"{'median':<18}{'':>36}{m['secured_vs_plaintext_raw']:>12.2f}{'':>24}"
        f"{m['secured_vs_plaintext_service']:>12.2f}{m['secured_vs_plaintext_produce']:>12.2f}"
    )
    print(
        f"service / raw (median): plaintext {m['service_vs_raw_plaintext']:.2f}, "
        f"secured {m['service_vs_raw_secured']:.2f}"
    )
    print(
        f"\n{'CPU us per event (this process)':<32}{'raw plain':>12}{'raw secured':>12}{'ratio':>8}", end=""
    )
    print(f"{'svc plain':>12}{'svc secured':>12}{'ratio':>8}")
    for i, r in enumerate(result["rounds"], 1):
        p, s, q = r["plaintext"], r["secured"], r["secured_vs_plaintext"]
        print(
            f"{'round ' + str(i):<32}{p['raw']['cpu_us_per_event']:>12.2f}"
            f"{s['raw']['cpu_us_per_event']:>12.2f}{q['raw_cpu']:>8.2f}{p['service']['cpu_us_per_event']:>12.1f}"
            f"{s['service']['cpu_us_per_event']:>12.1f}{q['service_cpu']:>8.2f}"
        )
    print(
        f"{'median':<32}{'':>24}{m['cpu_secured_vs_plaintext_raw']:>8.2f}{'':>24}"
        f"{m['cpu_secured_vs_plaintext_service']:>8.2f}"
    )
    # Where the secured side's extra time goes: the service's stages, us per event, mean of rounds.
    stages = list(result["rounds"][0]["plaintext"]["stages"]["throughput"])
    print(f"\n{'stage, us per event':<24}{'plaintext':>12}{'secured':>12}")
    for stage in stages:
        row = [
            np.mean([r[side]["stages"]["throughput"][stage]["us_per_event"] for r in result["rounds"]])
            for side in ("plaintext", "secured")
        ]
        print(f"{stage:<24}{row[0]:>12.1f}{row[1]:>12.1f}")


def run_security(args, connection: KafkaConnection | None, settings: dict, started: list) -> int:
    """``--compare-security``: two local brokers, or the given secured one and ``--plaintext-bootstrap``."""
    if connection is None:
        print("starting a plaintext and a SASL_SSL local broker...", flush=True)
        for security in ("plaintext", "sasl_ssl"):
            broker, where = local_broker(security)
            started.append(broker)
            if security == "plaintext":
                plain = where
            else:
                secured = where
    else:
        if not (connection.uses_tls or connection.uses_sasl):
            raise UserError(
                "--compare-security with --bootstrap-servers needs the secured cluster's settings"
            )
        if not args.plaintext_bootstrap:
            raise UserError(
                "--compare-security with a cluster given needs --plaintext-bootstrap to compare with"
            )
        plain, secured = KafkaConnection(args.plaintext_bootstrap), connection
    events = list(synth_events(args.viewers, args.videos, args.events, seed=0))
    result = compare_security(plain, secured, events, args, settings)
    print_security(result)
    write_results(
        RESULTS.with_name("e2e_security.json"), {"args": vars(args), "settings": settings, **result}
    )
    return 0


def compare_changelog(where: KafkaConnection, events: list, args, settings: dict) -> dict:
    """The throughput phase with the viewer-state changelog on (``changelog_topic=on``, as the
    workers that hand partitions over keep it) and off (``none``, a lone worker's default),
    ``args.rounds`` times, the order alternating; the ratios on / off are taken inside each
    round, the summary is their median."""
    sides = {"on": settings | {"changelog_topic": "on"}, "off": settings | {"changelog_topic": "none"}}
    rounds = []
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        measured = {}
        for name in order:
            print(f"round {r + 1}, changelog {name}:", flush=True)
            figures, bench = measure_throughput(where, events, args.model, sides[name], indent="  ")
            stop(bench)
            measured[name] = {k: figures[k] for k in ("raw", "service", "stages")}
            measured[name]["service_vs_raw"] = (
                figures["service"]["events_per_s"] / figures["raw"]["events_per_s"]
            )
            measured[name]["service_vs_raw_cpu"] = cpu_ratio(figures)
            measured[name]["changelog_records"] = (
                bench.service.changelog.written if bench.service.changelog else 0
            )
        on, off = measured["on"], measured["off"]
        ratios = {
            # below 1: the changelog costs throughput
            "service_vs_raw": on["service_vs_raw"] / off["service_vs_raw"],
            "service_vs_raw_cpu": on["service_vs_raw_cpu"] / off["service_vs_raw_cpu"],
        }
        rounds.append({"order": order, **measured, "on_vs_off": ratios})
    summary = {
        "service_vs_raw_on": median([r["on"]["service_vs_raw"] for r in rounds]),
        "service_vs_raw_off": median([r["off"]["service_vs_raw"] for r in rounds]),
        "on_vs_off": median([r["on_vs_off"]["service_vs_raw"] for r in rounds]),
        "on_vs_off_cpu": median([r["on_vs_off"]["service_vs_raw_cpu"] for r in rounds]),
        "changelog_us_per_event": median(
            [r["on"]["stages"]["throughput"]["changelog"]["us_per_event"] for r in rounds]
        ),
        "changelog_records_per_event": median([r["on"]["changelog_records"] / len(events) for r in rounds]),
    }
    return {"events": len(events), "rounds": rounds, "summary": summary}


def print_changelog(result: dict, source: str) -> None:
    print()
    print(
        f"cost of the viewer-state changelog: throughput phase, {source}, {result['events']:,} events; "
        "service / raw inside each round"
    )
    head = ["first", "svc/raw on", "svc/raw off", "on/off", "cpu on", "cpu off", "on/off", "us/event"]
    print(f"{'round':<7}{head[0]:<7}" + "".join(f"{h:>12}" for h in head[1:]))
    for i, r in enumerate(result["rounds"], 1):
        on, off, q = r["on"], r["off"], r["on_vs_off"]
        print(
            f"{i:<7}{r['order'][0]:<7}{on['service_vs_raw']:>12.3f}{off['service_vs_raw']:>12.3f}"
            f"{q['service_vs_raw']:>12.3f}{on['service_vs_raw_cpu']:>12.3f}{off['service_vs_raw_cpu']:>12.3f}"
            f"{q['service_vs_raw_cpu']:>12.3f}{on['stages']['throughput']['changelog']['us_per_event']:>12.1f}"
        )
    m = result["summary"]
    print(
        f"{'median':<14}{m['service_vs_raw_on']:>12.3f}{m['service_vs_raw_off']:>12.3f}{m['on_vs_off']:>12.3f}"
        f"{'':>24}{m['on_vs_off_cpu']:>12.3f}{m['changelog_us_per_event']:>12.1f}"
    )
    print(f"changelog records per event: {m['changelog_records_per_event']:.3f}")


def run_changelog(args, connection: KafkaConnection, settings: dict) -> int:
    """``--compare-changelog``: on the synthetic throughput stream, or the MovieLens file of ``--ml100k``."""
    if args.ml100k is not None:
        from producer.readers import read_events

        events, source = read_events(Path(args.ml100k)), args.ml100k
    else:
        events = list(synth_events(args.viewers, args.videos, args.events, seed=0))
        source = f"synthetic ({args.viewers:,} viewers, {args.videos:,} videos)"
    result = compare_changelog(connection, events, args, settings)
    print_changelog(result, source)
    name = "e2e_changelog_ml100k.json" if args.ml100k is not None else "e2e_changelog.json"
    write_results(
        RESULTS.with_name(name), {"args": vars(args), "source": source, "settings": settings, **result}
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=60_000, help="events for the throughput phase")
    parser.add_argument("--viewers", type=int, default=5000)
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--rates", default="1000,5000", help="paced rates for freshness, events/s")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each paced phase")
    parser.add_argument("--profile", action="store_true", help="cProfile the service's throughput phase")
    parser.add_argument(
        "--keep-topics",
        action="store_true",
        help="keep the run's topics and checkpoints (removed by default)",
    )
    parser.add_argument(
        "--model",
        default="streamrec",
        help="model to serve (a cheap one, e.g. most_popular, shows the Kafka side)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a service setting other than its default (consumer.config.ServiceConfig field)",
    )
    modes = parser.add_argument_group("other measures (one at a time, instead of the default)")
    modes.add_argument(
        "--quality",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="the service's live HR@10 on a replay of PATH (or the synthetic stream) "
        "against streamrec evaluate's figure at batch 256",
    )
    modes.add_argument(
        "--compare-security",
        action="store_true",
        help="the throughput phase on a plaintext and on a SASL_SSL broker (both started locally, "
        "or the cluster of the connection flags and --plaintext-bootstrap), --rounds times",
    )
    modes.add_argument(
        "--plaintext-bootstrap",
        metavar="HOST:PORT",
        help="with --compare-security and a secured cluster given: the plaintext side",
    )
    modes.add_argument(
        "--compare-changelog",
        action="store_true",
        help="the throughput phase with the viewer-state changelog on and off, --rounds times (on the "
        "synthetic stream, or on the file of --ml100k)",
    )
    modes.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="with --compare-security or --compare-changelog: rounds, the order alternating",
    )
    modes.add_argument(
        "--ml100k",
        metavar="PATH",
        help="issue 11's measure: replay PATH (MovieLens) through one worker against raw consumption "
        "of the same topic, with the live HR@10",
    )
    modes.add_argument(
        "--partitions", type=int, default=4, help="with --ml100k: partitions of the topic (default 4)"
    )
    add_broker_arguments(parser)
    args = parser.parse_args(argv)
    replay = args.ml100k is not None and not args.compare_changelog  # else: the stream compared on
    if sum([args.quality is not None, args.compare_security, replay, args.compare_changelog]) > 1:
        parser.error(
            "--quality, --compare-security, --compare-changelog and --ml100k are separate runs: give one"
        )
    if args.plaintext_bootstrap and not args.compare_security:
        parser.error("--plaintext-bootstrap goes with --compare-security")
    settings = parse_settings(args.set)
    rates = [float(r) for r in args.rates.split(",") if r]
    try:
        connection = connection_from(args)
    except UserError as err:
        parser.error(str(err))

    started: list = []  # the local brokers this run started, stopped at the end
    try:
        if args.compare_security:
            return run_security(args, connection, settings, started)
        if connection is None:
            broker, connection = local_broker()
            started.append(broker)
        if args.compare_changelog:
            return run_changelog(args, connection, settings)
        if args.quality is not None:
            quality = quality_replay(connection, args.quality or None, args.model, settings)
            print(
                f"{quality['source']}, {quality['events']:,} events, {quality['model']}: live HR@10 of the "
                f"service {quality['service_hr_at_10']:.4f} ({quality['service_evaluated']:,} evaluated), "
                f"streamrec evaluate at batch 256 {quality['offline_hr_at_10']:.4f} "
                f"({quality['offline_evaluated']:,}); difference {quality['difference']:+.4f}"
            )
            write_results(RESULTS.with_name("e2e_quality.json"), {"args": vars(args), **quality})
            return 0
        if args.ml100k is not None:
            result = ml100k_replay(connection, args.ml100k, args.model, settings, args.partitions)
            print_ml100k(result)
            write_results(
                RESULTS.with_name("e2e_ml100k.json"),
                {"args": vars(args), "kafka": connection.describe(), "settings": settings, **result},
            )
            return 0
        return run_e2e(args, connection, settings, rates)
    except UserError as err:
        print(f"e2e.py: error: {err}", file=sys.stderr)
        return 2
    finally:
        if not args.keep_topics:
            clean_up()
        for broker in started:
            broker.stop()


def run_e2e(args, connection: KafkaConnection, settings: dict, rates: list[float]) -> int:
    """The default run: the throughput phase, then freshness at each paced rate."""
    paced_total = int(sum(rates) * args.seconds)
    stream = list(synth_events(args.viewers, args.videos, args.events + paced_total, seed=0))
    figures, bench = measure_throughput(
        connection, stream[: args.events], args.model, settings, profile=args.profile
    )
    topic, stages = figures["topic"], figures["stages"]

    phases = []
    offset = args.events
    for rate in rates:
        n = int(rate * args.seconds)
        batch_before = len(bench.stamps)
        load = LoadProcesses(connection, topic)
        sent = load.send(stream[offset : offset + n], rate)
        achieved = n / (sent[-1][1] - sent[0][1]) if n > 1 else float(n)
        offset += n
        bench.wait_learned(offset, timeout=300)
        time.sleep(1.0)  # the last lists reach the reader
        parts = latencies(sent, load.read(), skip_s=1.0)
        lat, made, delivered, appended = parts[:, 0], parts[:, 1], parts[:, 2], parts[:, 3]
        seen = lat[~np.isnan(lat)]
        polls = bench.stamps[batch_before - 1 :]
        stages[f"{rate:.0f}/s"] = bench.stage_table(batch_before - 1, len(bench.stamps) - 1)
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
            # The same latency in two parts: until the service made the list (the
            # producer, the broker, the service's wait and work), and its delivery to the
            # reader (the service's producer, the broker, the reader's fetch).
            "made_p50_ms": 1000 * float(np.nanpercentile(made, 50)),
            "made_p99_ms": 1000 * float(np.nanpercentile(made, 99)),
            "delivered_p50_ms": 1000 * float(np.nanpercentile(delivered, 50)),
            "delivered_p99_ms": 1000 * float(np.nanpercentile(delivered, 99)),
            "appended_p50_ms": 1000 * float(np.nanpercentile(appended, 50)),
            "appended_p99_ms": 1000 * float(np.nanpercentile(appended, 99)),
            "mean_poll_events": (polls[-1][1] - polls[0][1]) / max(1, len(polls) - 1),
            # From the phase's first poll on: the one before it waited for the phase to begin.
            "slowest_polls": bench.slowest_polls(batch_before, len(bench.stamps) - 1),
        }
        phases.append(phase)
        print(
            f"paced {rate:,.0f}/s: p50 {phase['p50_ms']:.1f} ms, p99 {phase['p99_ms']:.1f} ms "
            f"(list made: p50 {phase['made_p50_ms']:.1f}, p99 {phase['made_p99_ms']:.1f}; delivered: "
            f"p50 {phase['delivered_p50_ms']:.1f}, p99 {phase['delivered_p99_ms']:.1f}; of the list "
            f"made, the event reached the broker: p50 {phase['appended_p50_ms']:.1f}, "
            f"p99 {phase['appended_p99_ms']:.1f})",
            flush=True,
        )
        print(
            "  slowest polls: "
            + "; ".join(
                f"{p['ms']:.0f} ms, {p['events']} events ("
                + ", ".join(f"{k} {v:g}" for k, v in p["stages_ms"].items())
                + ")"
                for p in phase["slowest_polls"][:3]
            ),
            flush=True,
        )
    stop(bench)
    result = {
        "raw": figures["raw"],
        "service": figures["service"],
        "freshness": phases,
        "stages": stages,
        "settings": settings,
        "produce_seconds": figures["produce_seconds"],
    }
    if bench.profiler is not None:
        result["profile_stages"], result["profile"] = profile_tables(bench.profiler)

    ratio = result["service"]["events_per_s"] / result["raw"]["events_per_s"]
    print()
    print(f"{'throughput':<34}{'events/s':>12}{'vs raw':>10}{'target':>10}")
    print(f"{'raw kafka-python consume-only':<34}{result['raw']['events_per_s']:>12,.0f}{1.0:>10.2f}")
    service_rate = result["service"]["events_per_s"]
    print(f"{'streamrec service end to end':<34}{service_rate:>12,.0f}{ratio:>10.2f}{'>= 0.25':>10}")
    second = result["service"].get("second_half")
    if second is not None:
        second_ratio = second["events_per_s"] / result["raw"]["events_per_s"]
        print(f"{'  its second half (warm)':<34}{second['events_per_s']:>12,.0f}{second_ratio:>10.2f}")
    print_cpu(result)
    print()
    head = ["achieved/s", "p50 ms", "p90 ms", "p99 ms", "max ms"]
    print(
        f"{'freshness at':<16}"
        + "".join(f"{h:>12}" if i == 0 else f"{h:>10}" for i, h in enumerate(head))
        + f"{'poll':>8}"
    )
    for p in result["freshness"]:
        print(
            f"{p['rate']:<16,.0f}{p['achieved_rate']:>12,.0f}{p['p50_ms']:>10.1f}{p['p90_ms']:>10.1f}"
            f"{p['p99_ms']:>10.1f}{p['max_ms']:>10.1f}{p['mean_poll_events']:>8.0f}"
        )
    print()
    print_stages(result["stages"])
    top = max(result["freshness"], key=lambda p: p["rate"])
    low = min(result["freshness"], key=lambda p: p["rate"])
    summary = {
        "service_vs_raw": ratio,
        "service_vs_raw_cpu": cpu_ratio(result),
        "throughput_target_met": ratio >= 0.25,
        # Diagnostics, not the target: the second half of the stream alone (the model warm).
        **(
            {
                "second_half_vs_raw": second["events_per_s"] / result["raw"]["events_per_s"],
                "second_half_vs_raw_cpu": result["raw"]["cpu_us_per_event"] / second["cpu_us_per_event"],
            }
            if second is not None
            else {}
        ),
        "p99_ms_at_top_rate": top["p99_ms"],
        "top_rate": top["rate"],
        "freshness_target_met": top["rate"] >= 5000 and top["p99_ms"] <= 100,
        "p50_ms_at_low_rate": low["p50_ms"],
        "low_rate": low["rate"],
        "low_rate_target_met": low["rate"] <= 1000 and low["p50_ms"] <= 20,
    }
    result["summary"] = summary
    print(f"\nservice / raw = {ratio:.2f} (target 0.25); ", end="")
    print(f"p99 at {top['rate']:,.0f}/s = {top['p99_ms']:.0f} ms (target 100); ", end="")
    print(f"p50 at {low['rate']:,.0f}/s = {low['p50_ms']:.0f} ms (target 20)")
    if "profile" in result:
        print("\nWhere the service's time goes (cProfile, its thread, throughput phase, by own time):")
        print(result["profile"])
    payload = {
        "args": vars(args) | {"bootstrap": connection.bootstrap_servers},
        "kafka": connection.describe(),
    }
    write_results(RESULTS, payload | result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
