"""Handover on a real broker: kill -9 one of three workers mid-stream (issue 12's target).

Usage::

    .venv/bin/python bench/handover.py [--ml100k PATH] [--events N] [--partitions 6]
        [--runs changelog,none] [--bootstrap HOST:PORT]

The events (MovieLens 100K's first ``--events`` in time order with ``--ml100k``, which is the
default when the file is at ``../shared/data/ml-100k/u.data``; else the synthetic stream), keyed
by viewer, go into a fresh topic of ``--partitions`` partitions. Three ``python -m consumer``
processes join one group (6 s sessions, so the group gives up on a dead worker quickly; no
expiry, so that every viewer is remembered from their first watch to their last); half the
stream is produced; once the victim has learned a sixth of it, it is killed with SIGKILL; the
rest is produced, and the survivors go on until the group has committed every offset. Then:

* **restore**: from the survivors' ``/metrics``, the seconds their restores took
  (``streamrec_restore_seconds``: reading the changelog partitions to their end and installing
  every viewer), the records read and the viewers restored; and from the kill to the last event
  learned (the session timeout is most of it);
* **viewers violating exclusion**: viewers whose last published list shows a video they watched
  (issue 12's target: 0);
* **events learned vs produced**: the watched videos of every viewer in the state that survives
  (each viewer's latest changelog record: the state their owner holds), summed, against the
  events produced; and how many viewers' watched lists are not exactly their stream, in order.

A run named ``none`` does the same with ``--changelog-topic none`` (no handover: the survivors
start the victim's viewers afresh), for comparison. With ``--sync-every N`` the three workers are
one model (``--sync-every N``, snapshots off), and the table adds the update topic's watch
counts: the events whose learning reached the group, which must equal the events produced (the
victim's learning since its last send is relearned by the survivor that takes its partitions),
and per worker (the victim as it would restart) how far its video vectors are from the update
topic's records added up: a new worker's replica.
Prints a table and writes ``bench/results/handover.json``.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import contract  # noqa: E402, F401  (first: it makes BLAS single-threaded before numpy loads)

# isort: split

import numpy as np  # noqa: E402
import orjson  # noqa: E402
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from kafka.admin import NewTopic  # noqa: E402

from bench.brokers import (  # noqa: E402
    add_broker_arguments,
    connection_from,
    local_broker,
    members_with_partitions,
    remove_topics,
)
from bench.group import scrape  # noqa: E402  (a worker's /metrics, summed by name)
from bench.results import write_results  # noqa: E402
from consumer import changelog  # noqa: E402
from consumer.config import ServiceConfig  # noqa: E402
from consumer.sync import admitted  # noqa: E402
from contract.schema import event_to_json  # noqa: E402
from model import viewer_state  # noqa: E402
from model.replica import VideoUpdates  # noqa: E402
from producer.readers import read_events  # noqa: E402
from producer.synth import synth_events  # noqa: E402
from streamrec.kafka_local import free_port  # noqa: E402

ML100K = REPO.parent / "shared" / "data" / "ml-100k" / "u.data"
WORKERS = 3
VICTIM = 1


def produce(options: dict, topic: str, events: list) -> None:
    producer = KafkaProducer(**options, acks="all", linger_ms=20, batch_size=1 << 20)
    for e in events:
        producer.send(topic, key=e.viewer.encode(), value=event_to_json(e))
    producer.flush()
    producer.close()


def read_to_end(options: dict, topic: str) -> list:
    """Every record of ``topic`` a read_committed reader sees, up to its end now."""
    consumer = KafkaConsumer(
        **options, group_id=None, enable_auto_commit=False, isolation_level="read_committed"
    )
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        records: list = []
        deadline = time.monotonic() + 120
        while any(consumer.position(tp) < ends[tp] for tp in parts) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def committed_everything(options: dict, group: str, topic: str) -> bool:
    admin = KafkaAdminClient(**options)
    consumer = KafkaConsumer(**options, enable_auto_commit=False)
    try:
        committed = admin.list_group_offsets(group).get(group, {})
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = consumer.end_offsets(parts)
        # A partition nothing was produced to has nothing to commit.
        return all(ends[tp] == 0 or (tp in committed and committed[tp].offset >= ends[tp]) for tp in parts)
    finally:
        admin.close()
        consumer.close()


def run(connection, events: list, partitions: int, with_changelog: bool, sync_every: int = 0) -> dict:
    """One handover run on a fresh topic; its topics are deleted however it ends."""
    topic = f"handover-bench-{uuid.uuid4().hex[:8]}"
    try:
        return _run(connection, topic, events, partitions, with_changelog, sync_every)
    finally:
        remove_topics(connection, topic)


def _run(
    connection, topic: str, events: list, partitions: int, with_changelog: bool, sync_every: int
) -> dict:
    options = connection.client_options()
    admin = KafkaAdminClient(**options)
    admin.create_topics([NewTopic(topic, partitions, 1)])
    admin.close()
    group, folder = f"g-{topic}", tempfile.mkdtemp(prefix="streamrec-handover-bench-")
    base_port = free_port(count=WORKERS)  # /metrics of each worker
    procs, ports = [], []
    for i in range(WORKERS):
        port = base_port + i
        args = [
            sys.executable, "-m", "consumer",
            "--bootstrap-servers", connection.bootstrap_servers,
            "--input-topic", topic,
            "--output-topic", f"{topic}-recs",
            "--dlq-topic", f"{topic}-dlq",
            "--group-id", group,
            "--worker-id", f"w{i}",
            "--metrics-port", str(port),
            "--checkpoint-dir", folder,
            "--session-timeout-ms", "6000",
            "--no-shadow-baseline",
            # No expiry: ML-100K spans more than its 180 days, and a viewer forgotten by their
            # TTL (not by the handover) would start afresh and fail the exactly-once count.
            "--model-settings", "viewer_ttl=null,video_ttl=null",
            "--changelog-topic", "on" if with_changelog else "none",
            *(["--sync-every", str(sync_every), "--snapshot-every-s", "0"] if sync_every else []),
        ]  # fmt: skip
        log = open(Path(folder) / f"w{i}.log", "wb")  # noqa: SIM115 - closed with the process below
        procs.append((subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT), log))
        ports.append(port)
    victim = VICTIM
    try:
        started = time.monotonic()
        while members_with_partitions(options, group) < WORKERS:
            if time.monotonic() - started > 180:
                raise RuntimeError(f"the workers did not all join in 180 s (logs in {folder})")
            time.sleep(0.2)
        half = len(events) // 2
        produce(options, topic, events[:half])
        # Killed once it has learned half its share of the first half; or, where its
        # partitions hold less than that (a small --events), once the group has learned it all.
        produced = checked = time.monotonic()
        while scrape(ports[victim]).get("streamrec_model_events", 0) < len(events) / (2 * WORKERS) / 2:
            now = time.monotonic()
            if now - checked > 1.0:  # two Kafka clients a check: once a second, not every poll
                if committed_everything(options, group, topic):
                    break
                checked = now
            if now - produced > 180:
                raise RuntimeError(f"the first half was not learned in 180 s (logs in {folder})")
            time.sleep(0.05)
        learned_at_kill = int(scrape(ports[victim]).get("streamrec_model_events", 0))
        procs[victim][0].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        produce(options, topic, events[half:])
        while not committed_everything(options, group, topic):
            if time.monotonic() - killed > 600:
                raise RuntimeError(f"the survivors did not finish in 600 s (logs in {folder})")
            time.sleep(0.2)
        done = time.monotonic()
        survivors = [scrape(p) for i, p in enumerate(ports) if i != victim]
    finally:
        for i, (proc, _log) in enumerate(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM if i != victim else signal.SIGKILL)
        for proc, log in procs:
            proc.wait(120)
            log.close()
    watched: dict[str, list[str]] = defaultdict(list)
    for e in events:
        watched[e.viewer].append(e.video)
    lists = {}
    for record in read_to_end(options, f"{topic}-recs"):
        body = orjson.loads(record.value)
        lists[body["viewer"]] = {item["video"] for item in body["items"]}
    violating = sum(1 for v, seen in watched.items() if lists.get(v, set()) & set(seen))
    row = {
        "changelog": with_changelog,
        "events": len(events),
        "partitions": partitions,
        "victim_learned_at_kill": learned_at_kill,
        "kill_to_all_learned_s": done - killed,
        "restores": sum(s.get("streamrec_restore_seconds_count", 0) for s in survivors),
        "restore_seconds": sum(s.get("streamrec_restore_seconds_sum", 0) for s in survivors),
        "records_read": sum(s.get("streamrec_restore_records_total", 0) for s in survivors),
        "viewers_restored": sum(s.get("streamrec_restored_viewers_total", 0) for s in survivors),
        "viewers": len(watched),
        "viewers_with_lists": len(lists),
        "viewers_violating_exclusion": violating,
    }
    # The group's own topics, named as the workers name them (after the group and the input).
    names = ServiceConfig(group_id=group, input_topic=topic, changelog_topic="on", sync_every=sync_every or 1)
    if with_changelog:
        states = {}
        for record in read_to_end(options, names.changelog_topic_name):
            found = changelog.decode(record.value).models.get("control")
            if found is not None:
                states[record.key.decode()] = viewer_state.decode(found).seen
        row["events_learned"] = sum(len(seen) for seen in states.values())
        row["viewers_not_exactly_once"] = sum(1 for v, seen in watched.items() if states.get(v) != seen)
    if sync_every:
        updates = read_to_end(options, names.sync_topic_name)
        row["update_watches"] = int(sum(VideoUpdates.from_bytes(r.value).watches for r in admitted(updates)))
        row["replica_gaps"] = replica_gaps(connection, topic, group, folder, sync_every)
    restores = [
        line for i in range(WORKERS) for line in (Path(folder) / f"w{i}.log").read_text().splitlines()
    ]
    row["restore_log"] = [
        line.split("msg=", 1)[1]
        for line in restores
        if "viewers restored from" in line or "relearning" in line
    ]
    shutil.rmtree(folder, ignore_errors=True)
    return row


def replica_gaps(connection, topic: str, group: str, folder: str, sync_every: int) -> dict[str, dict]:
    """Per worker, how far the video state it holds (its last checkpoint and the update records
    after it: what it starts with next, the victim included) is from the update topic's records
    added up (what a new worker reading the topic from its start holds): the largest difference
    of a video vector's element, and the watch counts each holds."""
    from consumer.runner import held_by

    base = ServiceConfig(
        security=connection,
        input_topic=topic,
        output_topic=f"{topic}-recs",
        dlq_topic=f"{topic}-dlq",
        group_id=group,
        checkpoint_dir=folder,
        sync_every=sync_every,
        snapshot_every_s=0.0,
        shadow_baseline=False,
        metrics_port=0,
        model_settings="viewer_ttl=null,video_ttl=null",
    )

    def state(worker: str, checkpoints: str) -> tuple[dict[str, np.ndarray], float]:
        with held_by(replace(base, worker_id=worker, checkpoint_dir=checkpoints)) as service:
            model = service.model
            ids = [v for v in model.videos.ids if v]
            rows = model.videos.get_many(ids)
            vectors = dict(zip(ids, model._E.array[rows], strict=True))
            return vectors, float(model._counts.array[rows].sum())

    topic_vectors, topic_watches = state("reader", "none")
    gaps = {}
    for i in range(WORKERS):
        vectors, watches = state(f"w{i}", folder)
        ids = sorted(topic_vectors)
        if sorted(vectors) != ids:
            gaps[f"w{i}"] = {"videos": len(vectors), "topic_videos": len(ids)}
            continue
        difference = np.abs(np.array([vectors[v] for v in ids]) - np.array([topic_vectors[v] for v in ids]))
        gaps[f"w{i}"] = {"max_abs": float(difference.max()), "watches": watches, "topic": topic_watches}
    return gaps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_broker_arguments(parser)
    parser.add_argument(
        "--ml100k", type=Path, default=ML100K if ML100K.exists() else None, help="MovieLens 100K u.data"
    )
    parser.add_argument(
        "--synthetic", action="store_true", help="the synthetic stream even if ML-100K is here"
    )
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--runs", default="changelog,none", help="changelog (the handover), none, or both")
    parser.add_argument(
        "--videos", type=int, default=3000, help="the synthetic catalogue (past 4,096: no co-occurrence)"
    )
    parser.add_argument(
        "--sync-every", type=int, default=0, help="the workers as one model (0: each its own)"
    )
    parser.add_argument("--json", type=Path, default=REPO / "bench/results/handover.json")
    args = parser.parse_args(argv)
    connection = connection_from(args)
    broker = None
    if connection is None:
        broker, connection = local_broker()
    try:
        if args.ml100k and not args.synthetic:
            events, source = read_events(args.ml100k)[: args.events], f"ML-100K, first {args.events:,} events"
        else:
            events = list(synth_events(viewers=2000, videos=args.videos, events=args.events, seed=1))
            source = f"synthetic, {args.events:,} events"
        rows = [
            run(connection, events, args.partitions, run_name == "changelog", args.sync_every)
            for run_name in args.runs.split(",")
        ]
        one_model = f", one model (--sync-every {args.sync_every})" if args.sync_every else ""
        print(
            f"\nkill -9 of one of {WORKERS} workers mid-stream: {source}, "
            f"{args.partitions} partitions{one_model}"
        )
        head = (
            f"{'handover':<11}{'restores':>9}{'restore s':>10}{'records':>9}{'viewers':>9}"
            f"{'kill->done s':>13}{'violating':>10}{'learned':>9}{'produced':>9}{'not once':>9}"
            + (f"{'updates':>9}" if args.sync_every else "")
        )
        print(head)
        for r in rows:
            learned = r.get("events_learned")
            name = "changelog" if r["changelog"] else "none"
            print(
                f"{name:<11}{r['restores']:>9.0f}{r['restore_seconds']:>10.3f}{r['records_read']:>9,.0f}"
                f"{r['viewers_restored']:>9,.0f}{r['kill_to_all_learned_s']:>13.1f}"
                f"{r['viewers_violating_exclusion']:>7}/{r['viewers']:<3}"
                f"{learned if learned is not None else '-':>8}{r['events']:>9,}"
                f"{r.get('viewers_not_exactly_once', '-'):>9}"
                + (f"{r['update_watches']:>9,}" if args.sync_every else "")
            )
        for r in rows:
            for line in r["restore_log"]:
                print(f"  {line}")
            for worker, gap in r.get("replica_gaps", {}).items():
                role = "killed" if worker == f"w{VICTIM}" else "survivor"
                print(f"  {worker} ({role}) against the update topic's records added up: {gap}")
        write_results(
            args.json, {"args": {k: str(v) for k, v in vars(args).items()}, "source": source, "rows": rows}
        )
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
