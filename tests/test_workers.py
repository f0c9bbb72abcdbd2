"""``streamrec serve --workers N``: N worker processes in one group on one machine.

Against the real broker: the workers share the partitions and together learn every event
once, as one model unless told otherwise; each has its own checkpoint folder and /metrics
port; SIGTERM stops them all cleanly (each checkpoints); kill -9 of the supervisor leaves no
worker behind. A lone ``streamrec serve`` that finds others in its group while learning a model
of its own says so.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from consumer.config import ServiceConfig
from consumer.runner import worker_config
from tests.service_helpers import (
    ServiceProcess,
    on_machine,
    parse_metrics,
    produce,
    topics,
    update_topic,
    wait_for,
)
from tests.streams import synthetic
from tests.test_faults import keyed, tail_of
from tests.test_sync import (
    assert_replicas_are_the_update_topic,
    cli_config,
    committed_total,
    counted_in_updates,
)

ROOT = Path(__file__).resolve().parents[1]

#: What a worker learning a model of its own logs when it finds other workers in its group.
PRIVATE_IN_A_GROUP = "other workers share this group, and each learns a model of its own"


def worker_metrics(port: int) -> dict[str, float] | None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return parse_metrics(r.read().decode())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def members_with_partitions(bootstrap: str, group: str) -> int:
    """Members of ``group`` that hold at least one partition (the broker's view)."""
    from kafka import KafkaAdminClient
    from kafka.errors import CoordinatorNotAvailableError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        try:
            described = admin.describe_groups([group]).get(group, {})
        except CoordinatorNotAvailableError:  # a fresh broker still making its offsets topic
            return 0
        if described.get("group_state") != "Stable":
            return 0
        return sum(1 for m in described.get("members", []) if _partitions(m.get("member_assignment")))
    finally:
        admin.close()


def _partitions(assignment: dict | None) -> int:
    """Partitions in a member's decoded assignment (kafka-python's describe_groups)."""
    return sum(len(t["partitions"]) for t in (assignment or {}).get("assigned_partitions", []))


def told_private(worker: ServiceProcess) -> list[str]:
    """The lines of ``worker``'s log that warn of a model of its own in a shared group."""
    return [line for line in worker.log_path.read_text().splitlines() if PRIVATE_IN_A_GROUP in line]


def learned(port: int) -> int:
    found = worker_metrics(port)
    return int(found.get("streamrec_model_events", 0)) if found else 0


def test_each_worker_gets_its_own_port_and_name():
    config = ServiceConfig(workers=3, metrics_port=9100, worker_id="edge")
    assert [
        (c.metrics_port, c.worker_id, c.workers) for c in (worker_config(config, i) for i in range(3))
    ] == [
        (9100, "edge-1", 1),
        (9101, "edge-2", 1),
        (9102, "edge-3", 1),
    ]
    unnamed = worker_config(ServiceConfig(workers=2, metrics_port=0), 1)
    assert (unnamed.metrics_port, unnamed.worker_id) == (0, "")  # folders claim their own names
    # Partitions move between them: each keeps the viewer-state changelog, unless it was refused.
    assert unnamed.changelog_topic_name == "streamrec-watch-events-viewer-state"
    refused = worker_config(ServiceConfig(workers=2, changelog_topic="none"), 0)
    assert refused.changelog_topic_name is None


@pytest.mark.parametrize("workers", [1, 2])
def test_a_metrics_port_another_process_holds_stops_the_worker_with_one_clear_line(workers, tmp_path):
    """Two ``streamrec serve`` on one machine with the default port: the second stops at once
    with a line naming the port and the flag, exit status 2, no stack trace, before it joins
    any group (no broker is reached here). Under ``--workers N``, the worker that cannot have
    its port stops the whole set the same way."""
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        base = taken - (workers - 1)  # the last worker's port is the taken one
        done = subprocess.run(
            [
                *(sys.executable, "-m", "consumer", "--workers", str(workers)),
                *("--metrics-port", str(base), "--checkpoint-dir", str(tmp_path)),
                *("--bootstrap-servers", "127.0.0.1:9", "--input-topic", "nowhere"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2, done.stderr
    assert f"cannot serve /metrics on 0.0.0.0:{taken}" in done.stderr
    assert "--metrics-port" in done.stderr
    assert "Traceback" not in done.stderr


def test_two_workers_share_the_partitions_and_learn_every_event_once(kafka_bootstrap, new_topic, tmp_path):
    names = topics(new_topic, partitions=4)
    events = synthetic(3000, seed=71)
    group, checkpoints = f"g-{names['input_topic']}", tmp_path / "ckpt"
    service = ServiceProcess(
        kafka_bootstrap, names, group, checkpoints, tmp_path / "workers.log", extra=["--workers", "2"]
    )
    ports = (service.metrics_port, service.metrics_port + 1)
    assert wait_for(lambda: members_with_partitions(kafka_bootstrap, group) == 2, 120), tail_of(service)
    produce(kafka_bootstrap, names["input_topic"], keyed(events))
    assert wait_for(lambda: sum(learned(p) for p in ports) == len(events), 180), tail_of(service)
    assert all(learned(p) > 0 for p in ports), "one worker got no partition"
    assert service.stop(timeout=120) == 0, tail_of(service)
    folders = sorted(p.name for p in checkpoints.iterdir() if p.is_dir())
    assert folders == [group, f"{group}-2"]
    assert all(any((checkpoints / f).glob("ckpt-*")) for f in folders), (
        "a worker stopped without a checkpoint"
    )
    # One model by default (--sync-every auto): each worker holds the video state of the whole
    # stream, the update topic's records added up, not of its own half.
    assert_replicas_are_the_update_topic(cli_config(kafka_bootstrap, names, group, checkpoints), folders)
    assert not told_private(service)


def test_a_worker_with_a_model_of_its_own_in_a_shared_group_says_so(kafka_bootstrap, new_topic, tmp_path):
    """Two lone ``streamrec serve`` in one group, neither with --sync-every: both warn, once,
    naming the fix; alone in the group, the first said nothing."""
    names = topics(new_topic, partitions=4)
    group, checkpoints = f"g-{names['input_topic']}", tmp_path / "ckpt"
    first = ServiceProcess(kafka_bootstrap, names, group, checkpoints, tmp_path / "first.log")
    assert wait_for(lambda: members_with_partitions(kafka_bootstrap, group) == 1, 120), tail_of(first)
    produce(kafka_bootstrap, names["input_topic"], keyed(synthetic(200, seed=72)))
    assert wait_for(lambda: first.model_events() == 200, 60), tail_of(first)
    assert not told_private(first)
    second = ServiceProcess(kafka_bootstrap, names, group, checkpoints, tmp_path / "second.log")
    try:
        assert wait_for(lambda: members_with_partitions(kafka_bootstrap, group) == 2, 120), tail_of(second)
        for worker in (first, second):
            assert wait_for(lambda w=worker: told_private(w), 30), tail_of(worker)
            assert len(told_private(worker)) == 1 and "--sync-every" in told_private(worker)[0]
    finally:
        for worker in (second, first):
            assert worker.stop(timeout=120) == 0, tail_of(worker)


def test_two_live_workers_of_one_name_stop_with_the_fix_instead_of_mixing_their_learning(
    kafka_bootstrap, new_topic, tmp_path
):
    """Two machines' workers given one --worker-id (each folder its own, so no lock sees it),
    one model over the group: each would take the other's update records for its own. The
    first to read a record of the other after one of its own stops with exit status 2 and a
    line naming the fix; a worker restarted under its name (below, in test_sync and
    test_handover) is never taken for one."""
    names = topics(new_topic, partitions=4)
    group = f"g-{names['input_topic']}"
    options = ["--sync-every", "100", "--session-timeout-ms", "6000", "--no-shadow-baseline"]

    def machine(folder: str) -> ServiceProcess:
        return on_machine(kafka_bootstrap, names, group, tmp_path / folder, "edge", options)

    first = machine("a")
    assert wait_for(lambda: members_with_partitions(kafka_bootstrap, group) == 1, 120), tail_of(first)
    produce(kafka_bootstrap, names["input_topic"], keyed(synthetic(600, seed=73)))
    assert wait_for(lambda: first.model_events() == 600, 60), tail_of(first)
    second = machine("b")
    workers = (first, second)
    try:
        assert wait_for(lambda: members_with_partitions(kafka_bootstrap, group) == 2, 120), tail_of(second)
        for seed in range(74, 94):  # both learn and send, until one reads the other after itself
            produce(kafka_bootstrap, names["input_topic"], keyed(synthetic(300, seed=seed)))
            if wait_for(lambda: not all(w.alive for w in workers), 3):
                break
        stopped = [w for w in workers if not w.alive]
        assert stopped, "neither worker noticed the other"
        for worker in stopped:
            assert worker.proc.returncode == 2, tail_of(worker)
            assert "also calls itself 'edge'" in worker.log() and "--worker-id" in worker.log()
            assert "Traceback" not in worker.log()
    finally:
        for worker in workers:
            if worker.alive:
                status = worker.stop(timeout=120)
                # The other may have found the twin too, and be on its way out when told to stop.
                assert status == 0 or "also calls itself 'edge'" in worker.log(), tail_of(worker)


def test_workers_started_alike_on_two_machines_are_one_model_without_naming_them(
    kafka_bootstrap, new_topic, tmp_path
):
    """``streamrec serve`` with the same settings on two machines (each its own checkpoint
    folder, no --worker-id): each worker names itself at its first start, so the two are one
    model over the group, not two workers of one name that Kafka takes for one."""
    names = topics(new_topic, partitions=4)
    group = f"g-{names['input_topic']}"
    options = ["--sync-every", "100", "--no-shadow-baseline"]
    events = synthetic(2000, seed=95)

    workers = tuple(on_machine(kafka_bootstrap, names, group, tmp_path / m, "", options) for m in "ab")
    try:
        assert wait_for(lambda: members_with_partitions(kafka_bootstrap, group) == 2, 120), tail_of(
            workers[1]
        )
        produce(kafka_bootstrap, names["input_topic"], keyed(events))
        assert wait_for(
            lambda: committed_total(kafka_bootstrap, group, names["input_topic"]) == len(events), 120
        ), (
            tail_of(workers[0]),
            tail_of(workers[1]),
        )
        assert all(w.model_events() > 0 for w in workers), "one worker got no partition"
    finally:
        for worker in workers:
            assert worker.stop(timeout=120) == 0, tail_of(worker)
    kept = [(tmp_path / m / group / "worker-name").read_text().strip() for m in "ab"]
    assert kept[0] != kept[1] and all(name.startswith(f"{group}-") for name in kept)
    assert all(
        "msg=serving" in w.log() and f"worker={name}" in w.log()
        for w, name in zip(workers, kept, strict=True)
    )
    assert counted_in_updates(kafka_bootstrap, update_topic(names, group)) == len(events)
    for m in "ab":
        assert_replicas_are_the_update_topic(cli_config(kafka_bootstrap, names, group, tmp_path / m), [group])


def test_two_groups_reading_one_input_each_learn_it_once(kafka_bootstrap, new_topic, tmp_path):
    """A second group on the same input (a staging copy, a blue/green deployment) keeps to its
    own update topic: each group's topic carries every event's learning once, and each worker
    holds its own group's topic added up. (When the topics were named after the input alone,
    each group learned the other's events into its video vectors: twice the watches.)"""
    names = topics(new_topic, partitions=2)
    groups = [f"g{i}-{names['input_topic']}" for i in (1, 2)]
    options = ["--sync-every", "100", "--no-shadow-baseline"]
    events = synthetic(1500, seed=97)
    workers = [on_machine(kafka_bootstrap, names, g, tmp_path / g, "", options) for g in groups]
    try:
        produce(kafka_bootstrap, names["input_topic"], keyed(events))
        for group, worker in zip(groups, workers, strict=True):
            assert wait_for(
                lambda g=group: committed_total(kafka_bootstrap, g, names["input_topic"]) == len(events), 120
            ), tail_of(worker)
    finally:
        for worker in workers:
            assert worker.stop(timeout=120) == 0, tail_of(worker)
    assert update_topic(names, groups[0]) != update_topic(names, groups[1])
    for group in groups:
        assert counted_in_updates(kafka_bootstrap, update_topic(names, group)) == len(events)
        assert_replicas_are_the_update_topic(
            cli_config(kafka_bootstrap, names, group, tmp_path / group), [group]
        )


def test_a_group_that_exchanged_on_the_old_topic_names_keeps_them_and_a_new_group_does_not(
    kafka_bootstrap, new_topic
):
    """Before 2026-12-01 a group's own topics were named after the input alone. A group that
    used them (it has commits on the input, and the old update topic exists) keeps them, every
    worker of it, so an upgrade does not split it between two topics; a new group on the same
    input takes the names of its own; names given stay."""
    from kafka import KafkaAdminClient, KafkaConsumer
    from kafka.admin import NewTopic
    from kafka.structs import OffsetAndMetadata, TopicPartition

    from consumer.topics import keep_legacy_names

    names = topics(new_topic)
    legacy = f"{names['input_topic']}-video-updates"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(legacy, num_partitions=1, replication_factor=1)])
    old_group, new_group = f"old-{names['input_topic']}", f"new-{names['input_topic']}"
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=old_group, enable_auto_commit=False)
    consumer.commit({TopicPartition(names["input_topic"], 0): OffsetAndMetadata(5, "", -1)})
    consumer.close()

    def config(group: str, **extra) -> ServiceConfig:
        return ServiceConfig(
            bootstrap_servers=kafka_bootstrap, group_id=group, sync_every=1024, **names, **extra
        )

    try:
        kept = keep_legacy_names(config(old_group))
        assert kept.sync_topic_name == legacy
        assert kept.changelog_topic_name == f"{names['input_topic']}-viewer-state"
        fresh = keep_legacy_names(config(new_group))
        assert fresh.sync_topic_name == f"{new_group}-{names['input_topic']}-video-updates"
        assert keep_legacy_names(config(old_group, sync_topic="chosen")).sync_topic_name == "chosen"
        assert keep_legacy_names(config(old_group, changelog_topic="none")).changelog_topic_name is None
    finally:
        admin.delete_topics([legacy])
        admin.close()


class _Gate:
    """A TCP port that refuses connections until opened, then forwards them to ``target``: a
    broker address that is unreachable for a while (the broker's metadata then sends clients to
    the broker itself)."""

    def __init__(self, target: tuple[str, int]) -> None:
        import threading

        self.target, self.open = target, threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self.open.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()

    def close(self) -> None:
        self._server.close()


def test_a_worker_of_an_old_group_started_while_kafka_is_away_waits_and_keeps_the_old_names(
    kafka_bootstrap, new_topic
):
    """Deciding the names without Kafka gave an old group's worker the new names: it split the
    group between two update topics. It waits for Kafka, as the service's connection does."""
    from kafka import KafkaAdminClient, KafkaConsumer
    from kafka.admin import NewTopic
    from kafka.structs import OffsetAndMetadata, TopicPartition

    from consumer.topics import keep_legacy_names

    names = topics(new_topic)
    legacy = f"{names['input_topic']}-video-updates"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(legacy, num_partitions=1, replication_factor=1)])
    group = f"old-{names['input_topic']}"
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    consumer.commit({TopicPartition(names["input_topic"], 0): OffsetAndMetadata(5, "", -1)})
    consumer.close()
    host, port = kafka_bootstrap.split(",")[0].rsplit(":", 1)
    gate = _Gate((host, int(port)))
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        if len(waits) == 2:  # Kafka is back after two failed tries
            gate.open.set()
        return False

    try:
        config = ServiceConfig(bootstrap_servers=gate.address, group_id=group, sync_every=1024, **names)
        kept = keep_legacy_names(config, timeout_ms=1000, wait=wait)
        assert len(waits) >= 2
        assert kept.sync_topic_name == legacy
    finally:
        gate.close()
        admin.delete_topics([legacy])
        admin.close()


def test_killing_the_supervisor_leaves_no_worker_behind(kafka_bootstrap, new_topic, tmp_path):
    names = topics(new_topic, partitions=2)
    service = ServiceProcess(
        kafka_bootstrap,
        names,
        f"g-{names['input_topic']}",
        tmp_path / "ckpt",
        tmp_path / "w.log",
        extra=["--workers", "2"],
    )
    ports = (service.metrics_port, service.metrics_port + 1)
    assert wait_for(lambda: all(worker_metrics(p) is not None for p in ports), 120), tail_of(service)
    pid = service.proc.pid
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = [int(child) for child in f.read().split()]
    assert len(children) >= 2
    service.kill()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(_alive(pid) for pid in children):
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in children), "a worker outlived its supervisor"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited; only its parent has not read its status
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
