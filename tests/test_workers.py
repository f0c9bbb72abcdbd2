"""``streamrec serve --workers N``: N worker processes in one group on one machine.

Against the real broker: the workers share the partitions and together learn every event
once; each has its own checkpoint folder and /metrics port; SIGTERM stops them all cleanly
(each checkpoints); kill -9 of the supervisor leaves no worker behind.
"""

from __future__ import annotations

import os
import time

from consumer.config import ServiceConfig
from consumer.runner import worker_config
from tests.service_helpers import ServiceProcess, parse_metrics, produce, topics, wait_for
from tests.streams import synthetic
from tests.test_faults import keyed, tail_of


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

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        described = admin.describe_groups([group]).get(group, {})
        if described.get("group_state") != "Stable":
            return 0
        return sum(1 for m in described.get("members", []) if _partitions(m.get("member_assignment")))
    finally:
        admin.close()


def _partitions(assignment: dict | None) -> int:
    """Partitions in a member's decoded assignment (kafka-python's describe_groups)."""
    return sum(len(t["partitions"]) for t in (assignment or {}).get("assigned_partitions", []))


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
    assert unnamed.changelog_topic_name == "watch-events-viewer-state"
    refused = worker_config(ServiceConfig(workers=2, changelog_topic="none"), 0)
    assert refused.changelog_topic_name is None


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
