"""A worker joining a syncing group late: ready from a snapshot, against from the whole update topic.

Usage::

    KAFKA_BOOTSTRAP=127.0.0.1:19092 .venv/bin/python bench/late_join.py \\
        [--ml100k PATH] [--events N] [--videos 10000] [--passes 1] [--snapshot-every-s 5] [--rounds 3]

Two workers (``--sync-every 1024``, snapshots every ``--snapshot-every-s``) learn the stream
(MovieLens 100K with ``--ml100k``, else the synthetic stream of ``--videos`` videos) from a
fresh 4-partition topic, in threads of this process, and stop as soon as every event is learned
(so the newest snapshot is up to one interval old, as for a worker joining at a random time).
Then a late worker's video state is built ``--rounds`` times each way, alternating: **from the
snapshot** (read the snapshot topic, install the newest complete snapshot, read the update
topic from its offsets to the end) and **from the topic** (snapshots off: read and apply the
whole update topic). Timed from a fresh model to caught up with the update topic's end; joining
the consumer group is the same either way and left out. The two late states are compared (they
must agree) and the table gives each way's seconds (median), records read and bytes, and the
snapshot's size.

Prints a table and writes ``bench/results/late_join.json``; the time is a ratio to the
from-the-topic run of the same invocation (the machine is shared).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import contract  # noqa: E402, F401  (first: it makes BLAS single-threaded before numpy loads)

# isort: split

import numpy as np  # noqa: E402
from kafka import KafkaAdminClient, KafkaProducer  # noqa: E402
from kafka.admin import NewTopic  # noqa: E402

from bench.brokers import add_broker_arguments, connection_from, local_broker, remove_topics  # noqa: E402
from bench.results import write_results  # noqa: E402
from consumer.config import ServiceConfig  # noqa: E402
from consumer.runner import build_service  # noqa: E402
from consumer.sync import UpdateExchange  # noqa: E402
from contract.schema import event_to_json  # noqa: E402
from model.replica import SHARED_TABLES, ReplicatedRanker, VideoReplica  # noqa: E402
from producer.readers import read_events  # noqa: E402
from producer.synth import synth_events  # noqa: E402


def fill_group(base: ServiceConfig, events: list) -> dict:
    """Two syncing workers learn ``events``; they stop when every event is learned."""
    admin = KafkaAdminClient(**base.kafka.client_options())
    admin.create_topics([NewTopic(base.input_topic, num_partitions=4, replication_factor=1)])
    admin.close()
    services = [build_service(dataclasses.replace(base, worker_id=w), with_metrics=False) for w in "ab"]
    threads = [threading.Thread(target=s.run, daemon=True) for s in services]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while not all(s._consumer and s._consumer.assignment() for s in services):
        if time.monotonic() > deadline:
            raise RuntimeError("the two workers did not join")
        time.sleep(0.2)
    producer = KafkaProducer(**base.kafka.client_options(), linger_ms=20)
    started = time.perf_counter()
    for e in events:
        producer.send(base.input_topic, key=e.viewer.encode(), value=event_to_json(e))
    producer.flush()
    producer.close()
    while sum(s.model_events for s in services) < len(events):
        time.sleep(0.2)
    learned_s = time.perf_counter() - started
    snapshots = sum(s.exchange.snapshots for s in services)
    for s in services:
        s.stop()
    for t in threads:
        t.join(60)
    return {"learned_seconds": learned_s, "snapshots_published": snapshots}


def late_state(config: ServiceConfig, from_snapshot: bool) -> tuple[dict, VideoReplica]:
    """A fresh replica caught up with the update topic, from the snapshot or from the start."""
    config = dataclasses.replace(config, worker_id=f"late-{uuid.uuid4().hex[:6]}")
    if not from_snapshot:
        config = dataclasses.replace(config, snapshot_every_s=0.0)
    replica = VideoReplica(ReplicatedRanker(**config.model_params), config.sync_precision)
    exchange = UpdateExchange(config, replica)
    started = time.perf_counter()
    exchange.connect()
    reader = exchange._reader
    end = reader.end_offsets(list(reader.assignment()))
    while any(reader.position(tp) < o for tp, o in end.items()):
        exchange._read(timeout_ms=200)  # not receive(): this late worker must not snapshot itself
    seconds = time.perf_counter() - started
    exchange.close()
    snap = exchange.started_from
    return {
        "seconds": seconds,
        "snapshot_seconds": snap.seconds if snap else 0.0,
        "snapshot_records": snap.records_read if snap else 0,
        "snapshot_bytes": snap.bytes_read if snap else 0,
        "snapshot_videos": snap.manifest.videos if snap else 0,
        "update_records": exchange.read,
        "update_records_in_topic": sum(end.values()),
        "videos": len(replica.model.videos),
    }, replica


def max_difference(a: VideoReplica, b: VideoReplica) -> float:
    ids = sorted(v for v in a.model.videos.ids if v)
    assert ids == sorted(v for v in b.model.videos.ids if v), "the two late workers know other videos"
    ra, rb = a.model.videos.get_many(ids), b.model.videos.get_many(ids)
    pa, pb = a.model.state_parts(), b.model.state_parts()

    def relative(x: np.ndarray, y: np.ndarray) -> float:
        return float((np.abs(x - y) / np.maximum(1.0, np.abs(x))).max())

    return max(relative(pa[n].array[ra], pb[n].array[rb]) for n in SHARED_TABLES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_broker_arguments(parser)
    parser.add_argument("--ml100k", type=Path, help="MovieLens 100K u.data (default: the synthetic stream)")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--videos", type=int, default=10_000, help="the synthetic stream's catalogue")
    parser.add_argument("--viewers", type=int, default=4_000)
    parser.add_argument("--snapshot-every-s", type=float, default=5.0)
    parser.add_argument(
        "--passes", type=int, default=1, help="replay the stream this many times (a group that ran longer)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=REPO / "bench/results/late_join.json")
    args = parser.parse_args(argv)
    connection, broker = connection_from(args), None
    if connection is None:  # no address: a broker of its own, stopped at the end
        broker, connection = local_broker()
    run = uuid.uuid4().hex[:8]  # names the run's topics: late-<run>, and its group's
    try:
        return _run(args, connection, run)
    finally:
        remove_topics(connection, f"late-{run}")
        if broker is not None:
            broker.stop()


def _run(args: argparse.Namespace, connection, run: str) -> int:  # noqa: ANN001 - a KafkaConnection
    if args.ml100k:
        events, source = read_events(args.ml100k)[: args.events], "ml-100k"
    else:
        events = list(synth_events(viewers=args.viewers, videos=args.videos, events=args.events, seed=1))
        source = f"synthetic {args.videos} videos"
    span = events[-1].timestamp - events[0].timestamp + 1.0
    events = [e._replace(timestamp=e.timestamp + k * span) for k in range(args.passes) for e in events]
    with tempfile.TemporaryDirectory() as folder:
        base = ServiceConfig(
            bootstrap_servers=connection.bootstrap_servers,
            security=connection,
            input_topic=f"late-{run}",
            output_topic=f"late-{run}-recs",
            dlq_topic=f"late-{run}-dlq",
            group_id=f"late-{run}",
            metrics_port=0,
            checkpoint_dir=folder,
            sync_every=1024,
            snapshot_every_s=args.snapshot_every_s,
            shadow_baseline=False,
            # Expiry off: the late states are compared video by video (a video the snapshotting
            # worker expired is not in its snapshot, but is in the update topic).
            model_settings="viewer_ttl=null,video_ttl=null",
        )
        group = fill_group(base, events)
    rows: dict[str, list[dict]] = {"snapshot": [], "topic": []}
    replicas = {}
    for _ in range(args.rounds):
        for way in ("topic", "snapshot"):
            row, replicas[way] = late_state(base, from_snapshot=way == "snapshot")
            rows[way].append(row)
    difference = max_difference(replicas["snapshot"], replicas["topic"])
    # What publishing costs the snapshotting worker: the agreed state as chunks.
    started = time.perf_counter()
    chunks = replicas["topic"].snapshot().records(900_000)
    publish = {"take_encode_seconds": time.perf_counter() - started, "chunks": len(chunks)}
    publish["bytes"] = sum(len(c) for c in chunks)
    summary = {}
    for way, runs in rows.items():
        summary[way] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    base_s = summary["topic"]["seconds"]
    print(f"{source} x {args.passes}, {len(events):,} events, 2 workers, ", end="")
    print(f"snapshots every {args.snapshot_every_s:g} s")
    print(f"({group['snapshots_published']} published while learning); median of {args.rounds} rounds\n")
    print("| late worker | ready in | vs topic | snapshot records | snapshot bytes | update records read |")
    print("|---|---|---|---|---|---|")
    for way in ("topic", "snapshot"):
        s = summary[way]
        print(
            f"| from the {way} | {s['seconds']:.3f} s | {s['seconds'] / base_s:.2f} | "
            f"{s['snapshot_records']:.0f} | {s['snapshot_bytes'] / 1e6:.2f} MB | "
            f"{s['update_records']:,.0f} of {s['update_records_in_topic']:,.0f} |"
        )
    videos = summary["snapshot"]["videos"]
    print(f"\nvideos {videos:,.0f}; the two late states differ by at most {difference:.2g} (relative)")
    print(
        f"a snapshot of the whole state: {publish['bytes'] / 1e6:.2f} MB in {publish['chunks']} chunks, "
        f"{publish['take_encode_seconds'] * 1000:.0f} ms to take and encode"
    )
    write_results(
        args.json,
        {
            "source": source,
            "events": len(events),
            "passes": args.passes,
            "snapshot_every_s": args.snapshot_every_s,
            "group": group,
            "rounds": rows,
            "median": summary,
            "max_difference": difference,
            "publish": publish,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
