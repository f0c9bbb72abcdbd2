"""A partition that moves takes its viewers' state with it (issue 12's handover), on the real broker.

Viewers' histories and watched sets live in the worker that owns their partition. When a
partition moves to another worker (a worker joins; a worker is killed), the new owner restores
them from the viewer-state changelog before it processes the partition (:mod:`consumer.changelog`).
What a user sees, and what is checked: every viewer's **last published list excludes every
video that viewer watched**, before and after the move, and the surviving state learned **every
event exactly once** (defined here: each viewer's watched list, as the group's surviving state
holds it, is exactly the viewer's produced videos in order, no event missing and none twice;
read from each viewer's latest changelog record, which is the state their owner holds).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections import defaultdict

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from consumer import changelog
from consumer.config import ServiceConfig
from consumer.runner import build_service
from contract.events import WatchEvent
from model import viewer_state
from tests.service_helpers import (
    ServiceProcess,
    changelog_topic,
    in_thread,
    on_machine,
    produce,
    topics,
    wait_for,
)
from tests.streams import SOURCES, stream, synthetic
from tests.test_faults import FAST, keyed, read_topic, stable, tail_of

pytestmark = pytest.mark.kafka


def watched_by(events: list[WatchEvent]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for e in events:
        out[e.viewer].append(e.video)
    return dict(out)


def last_lists(bootstrap: str, topic: str) -> dict[str, list[str]]:
    """Each viewer's latest published list (what a reader of the compacted topic ends with)."""
    import orjson

    lists = {}
    for record in read_topic(bootstrap, topic):
        body = orjson.loads(record.value)
        lists[body["viewer"]] = [item["video"] for item in body["items"]]
    return lists


def latest_states(bootstrap: str, topic: str, model: str = "control") -> dict[str, viewer_state.ViewerState]:
    """Each viewer's latest changelog record's state in ``model`` (the state their owner holds)."""
    states = {}
    for record in read_topic(bootstrap, topic):
        found = changelog.decode(record.value).models.get(model)
        if found is not None:
            states[record.key.decode()] = viewer_state.decode(found)
    return states


def partition_of_viewers(bootstrap: str, topic: str) -> dict[str, int]:
    return {r.key.decode(): r.partition for r in read_topic(bootstrap, topic)}


def violations(lists: dict[str, list[str]], watched: dict[str, list[str]]) -> dict[str, set[str]]:
    """Viewers whose last list shows videos they watched, with those videos."""
    return {v: set(lists[v]) & set(w) for v, w in watched.items() if v in lists and set(lists[v]) & set(w)}


def delete_topic(bootstrap: str, name: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_topics([name], timeout_ms=5000, raise_errors=False)
    finally:
        admin.close()


def assigned(service) -> int:
    return len(service._consumer.assignment()) if service._consumer is not None else 0


def handover_between_two_workers(bootstrap: str, names: dict[str, str], tmp_path, source: str, restore: bool):
    """Worker a learns a stream alone; worker b joins and takes half the partitions; then more of
    the same viewers' events. Returns (lists, watched, viewers that moved, b's control model)."""
    events = stream(source, 4000)
    before, after = events[:2500], events[2500:]
    base = ServiceConfig(
        bootstrap_servers=bootstrap,
        group_id=f"g-{names['input_topic']}",
        metrics_port=0,
        checkpoint_dir=str(tmp_path / "ckpt"),
        shadow_baseline=False,
        max_poll_records=200,
        changelog_topic="on",  # two workers without --sync-every: auto would leave it off
        **names,
    )
    a_config = dataclasses.replace(base, worker_id="a")
    # Without the restore, b reads no changelog (a still writes it).
    b_config = dataclasses.replace(
        base, worker_id="b", changelog_topic=base.changelog_topic if restore else "none"
    )
    with in_thread(build_service(a_config, with_metrics=False)) as a:
        assert wait_for(lambda: assigned(a) == 4, 90), a.failed
        produce(bootstrap, names["input_topic"], keyed(before))
        assert wait_for(lambda: a.model_events == len(before), 120), a.failed
        with in_thread(build_service(b_config, with_metrics=False)) as b:
            assert wait_for(lambda: assigned(a) == assigned(b) == 2, 90), (a.failed, b.failed)
            produce(bootstrap, names["input_topic"], keyed(after))
            assert wait_for(lambda: a.model_events + b.model_events == len(events), 120), (a.failed, b.failed)
            moved = {tp.partition for tp in b._consumer.assignment()}
            b_model = b.model
    partition_of = partition_of_viewers(bootstrap, names["input_topic"])
    moved_viewers = {v for v in watched_by(before) if partition_of[v] in moved}
    return last_lists(bootstrap, names["output_topic"]), watched_by(events), moved_viewers, b_model


@pytest.mark.parametrize("source", SOURCES)
def test_a_worker_that_joins_takes_over_its_partitions_viewers_with_what_they_watched(
    kafka_bootstrap, new_topic, tmp_path, source
):
    names = topics(new_topic, partitions=4)
    try:
        lists, watched, moved, b_model = handover_between_two_workers(
            kafka_bootstrap, names, tmp_path, source, restore=True
        )
    finally:
        delete_topic(kafka_bootstrap, changelog_topic(names, f"g-{names['input_topic']}"))
    assert len(moved) >= 10, "too few viewers moved for the test to say anything"
    assert not violations(lists, watched), "lists show videos their viewers watched"
    # The new owner holds each moved viewer's whole history: every event once, in order.
    ids = b_model.videos.ids
    for viewer in moved:
        assert [ids[r] for r in b_model.seen.of(b_model.viewers.get(viewer))] == watched[viewer], viewer


def test_a_restore_takes_each_viewers_latest_committed_state_and_skips_polls_never_committed(
    kafka_bootstrap, new_topic
):
    """The changelog's own promise, on the broker: created compacted with the input's partitions;
    read back, a viewer's state is the latest one whose poll was committed (``through`` not past
    the offset the new owner starts from), never a later one whose commit did not happen."""
    from kafka import KafkaProducer

    from consumer.changelog import ViewerChangelog
    from model.embedding import EmbeddingRanker

    names = topics(new_topic, partitions=3)
    config = ServiceConfig(bootstrap_servers=kafka_bootstrap, changelog_topic="on", **names)
    log = ViewerChangelog(config)
    log.ensure_topic(3)
    model = EmbeddingRanker()
    polls = [[("ann", "x"), ("ann", "y"), ("bob", "x")], [("ann", "z")], [("ann", "w"), ("bob", "v")]]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        for through, poll in zip((10, 20, 30), polls, strict=True):  # the third is never committed
            model.learn_many([WatchEvent(float(through), viewer, video) for viewer, video in poll])
            touched = {viewer: 2 for viewer, _ in poll}
            for topic, key, value, _, partition in log.messages(touched, {2: through}, {"control": model}):
                producer.send(topic, key=key, value=value, partition=partition)
        producer.flush()
    finally:
        producer.close()
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        [described] = admin.describe_topics([log.topic])
    finally:
        admin.close()
    try:
        assert len(described["partitions"]) == 3

        restored = log.read({2: 20})  # the new owner starts at offset 20: polls 1 and 2 committed

        assert (restored.records, restored.skipped) == (5, 2)
        seen = {v: viewer_state.decode(r.models["control"]).seen for v, r in restored.viewers.items()}
        assert seen == {"ann": ["x", "y", "z"], "bob": ["x"]}
        assert log.read({0: 0, 1: 0}).viewers == {}  # the other partitions hold nobody
    finally:
        delete_topic(kafka_bootstrap, log.topic)


# -- kill -9 of one of three workers -------------------------------------------------------------

#: (source, delivery mode) of the kill runs: the synthetic stream at least once; ML-100K, when it
#: is here, with --exactly-once (the stricter mode; a killed transaction holds the changelog's
#: last stable offset until it times out, which the restore and the reader must wait out).
KILL_RUNS = [("synthetic", [])] + ([("ml-100k", ["--exactly-once"])] if "ml-100k" in SOURCES else [])
N_KILL = 6000


def group_committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return {tp.partition: o.offset for tp, o in offsets.items() if tp.topic == topic}


def input_ends(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return {tp.partition: o for tp, o in consumer.end_offsets(parts).items()}
    finally:
        consumer.close()


@pytest.mark.parametrize(("source", "mode"), KILL_RUNS, ids=[s for s, _ in KILL_RUNS])
def test_kill_9_of_one_of_three_workers_hands_its_viewers_to_the_survivors(
    kafka_bootstrap, new_topic, tmp_path, source, mode
):
    names = topics(new_topic, partitions=6)
    events = stream(source, N_KILL)
    group, checkpoints = f"g-{names['input_topic']}", tmp_path / "ckpt"
    # Three separate workers without --sync-every: the changelog is asked for (auto: off).
    options = [*FAST, "--no-shadow-baseline", "--changelog-topic", "on", *mode]
    workers = [
        ServiceProcess(kafka_bootstrap, names, group, checkpoints, tmp_path / f"w{i}.log", f"w{i}", options)
        for i in range(3)
    ]
    try:
        assert wait_for(lambda: all(w.log().count("partition assigned") >= 2 for w in workers), 120), [
            tail_of(w) for w in workers
        ]
        produce(kafka_bootstrap, names["input_topic"], keyed(events[: N_KILL // 2]))
        victim = workers[1]
        # Mid-stream: the victim has learned some of its share, not all of it.
        assert wait_for(lambda: (victim.model_events() or 0) >= N_KILL // 12, 120), tail_of(victim)
        victim.kill()
        produce(kafka_bootstrap, names["input_topic"], keyed(events[N_KILL // 2 :]))
        ends = input_ends(kafka_bootstrap, names["input_topic"])
        survivors = [workers[0], workers[2]]
        assert wait_for(lambda: group_committed(kafka_bootstrap, group, names["input_topic"]) == ends, 180), [
            tail_of(w) for w in survivors
        ]
        restores = [
            m for w in survivors for m in re.findall(r"viewers restored from the changelog.*", w.log())
        ]
        assert restores, "no survivor restored the victim's viewers"
        metrics = [w.metrics() or {} for w in survivors]
        assert sum(m.get("streamrec_restore_seconds_count", 0) for m in metrics) >= 1
        assert sum(m.get("streamrec_restored_viewers_total", 0) for m in metrics) > 0
        for w in survivors:
            assert w.stop(timeout=120) == 0, tail_of(w)

        for topic in (names["output_topic"], changelog_topic(names, f"g-{names['input_topic']}")):
            assert wait_for(lambda topic=topic: stable(kafka_bootstrap, topic), 120), (
                f"{topic}: a transaction stays open"
            )
        watched = watched_by(events)
        lists = last_lists(kafka_bootstrap, names["output_topic"])
        assert set(lists) == set(watched), "every viewer's last watch is answered"
        assert not violations(lists, watched), "lists show videos their viewers watched"
        # Every event learned exactly once by the state that survives: each viewer's watched
        # list is the viewer's stream, in order, and the total is the events produced.
        states = latest_states(kafka_bootstrap, changelog_topic(names, f"g-{names['input_topic']}"))
        assert {v: s.seen for v, s in states.items()} == watched
        assert sum(len(s.seen) for s in states.values()) == len(events)
    finally:
        delete_topic(kafka_bootstrap, changelog_topic(names, f"g-{names['input_topic']}"))


def test_a_worker_built_as_the_command_builds_it_counts_its_changelog_records(kafka_bootstrap, new_topic):
    """The worker's metrics are made after the service (they are labelled by its models): the
    changelog must still count into them, one record per viewer a poll touched."""
    from prometheus_client import CollectorRegistry

    names = topics(new_topic, partitions=2)
    config = ServiceConfig(
        bootstrap_servers=kafka_bootstrap,
        group_id=f"g-{names['input_topic']}",
        metrics_port=0,
        checkpoint_dir="none",
        changelog_topic="on",
        **names,
    )
    events = stream("synthetic", 500)
    service = build_service(config, with_metrics=True, registry=CollectorRegistry())
    with in_thread(service):
        produce(kafka_bootstrap, names["input_topic"], keyed(events))
        assert wait_for(lambda: service.model_events == len(events), 90), service.failed
        assert wait_for(lambda: service.changelog.written > 0 and service.batches > 0, 30)
        counted = service.metrics.registry.get_sample_value("streamrec_changelog_records_total")
        assert counted == service.changelog.written >= len({e.viewer for e in events})


def test_the_changelog_forgets_viewers_the_models_forget(kafka_bootstrap, new_topic, caplog):
    """A viewer the models have forgotten (``viewer_ttl``) needs no record: the changelog is
    created to delete records older than that as well as compacted, so it holds the live
    audience, not everyone ever seen; a model that never forgets keeps it compacted only. A
    changelog that exists with other settings is named in a warning, not changed."""
    from consumer.changelog import ViewerChangelog
    from consumer.topics import settings_that_differ

    names = topics(new_topic, partitions=2)
    config = ServiceConfig(
        bootstrap_servers=kafka_bootstrap, changelog_topic="on", checkpoint_dir="none", **names
    )
    served = build_service(config, with_metrics=False)
    assert served.changelog.viewer_ttl == served.model.viewer_ttl == 180 * 86_400  # the default model's
    forever = build_service(dataclasses.replace(config, model_settings="viewer_ttl=null"), with_metrics=False)
    assert forever.changelog.viewer_ttl is None
    assert forever.changelog.topic_configs == {"cleanup.policy": "compact"}

    served.changelog.ensure_topic(2)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        topic = served.changelog.topic
        wanted = {topic: {"cleanup.policy": "compact,delete", "retention.ms": str(180 * 86_400_000)}}
        assert settings_that_differ(admin, wanted, {topic}) == []  # created as wanted
        other = ViewerChangelog(served.config, viewer_ttl=3600.0)
        with caplog.at_level("WARNING", logger="consumer.topics"):
            other.ensure_topic(2)
        named = [
            (r.fields["setting"], r.fields["found"], r.fields["wanted"])
            for r in caplog.records
            if "another setting" in r.getMessage()
        ]
        assert named == [("retention.ms", str(180 * 86_400_000), "3600000")]
    finally:
        admin.close()


# -- two worker processes, one killed ---------------------------------------------------------------


def assigned_partitions(log: str) -> set[int]:
    """The partitions a worker's log says it holds now: assigned, and not revoked since."""
    held: set[int] = set()
    for line in log.splitlines():
        if 'msg="partition assigned"' in line:
            held.add(int(re.search(r"partition=(\d+)", line).group(1)))
        elif 'msg="partitions revoked"' in line:
            held -= {
                int(p) for p in re.findall(r"\d+", re.search(r'partitions="?\[([^]]*)\]', line).group(1))
            }
    return held


class WorkerPair:
    """Worker processes ``a`` and ``b`` of one group on a fresh four-partition topic, each
    holding two partitions once started; :meth:`start` starts more (a restart), :meth:`learn`
    produces events and waits until the group has committed them; all are killed at the end."""

    def __init__(self, bootstrap: str, new_topic, tmp_path, options: list[str]) -> None:  # noqa: ANN001
        self.bootstrap, self.tmp_path, self.options = bootstrap, tmp_path, options
        self.names = topics(new_topic, partitions=4)
        self.group = f"g-{self.names['input_topic']}"
        self.workers: list[ServiceProcess] = []
        self.a, self.b = self.start("a", "a.log"), self.start("b", "b.log")
        assert wait_for(
            lambda: len(assigned_partitions(self.a.log())) == len(assigned_partitions(self.b.log())) == 2, 120
        ), [tail_of(w) for w in (self.a, self.b)]

    def start(self, name: str, log: str) -> ServiceProcess:
        worker = ServiceProcess(
            self.bootstrap,
            self.names,
            self.group,
            self.tmp_path / "ckpt",
            self.tmp_path / log,
            name,
            self.options,
        )
        self.workers.append(worker)
        return worker

    def learn(self, events: list) -> dict[int, int]:
        """Produce ``events``; once the group has committed every input offset, the ends."""
        topic = self.names["input_topic"]
        produce(self.bootstrap, topic, keyed(events))
        ends = input_ends(self.bootstrap, topic)
        assert wait_for(lambda: group_committed(self.bootstrap, self.group, topic) == ends, 120), [
            tail_of(w) for w in self.workers if w.alive
        ]
        return ends

    def __enter__(self) -> WorkerPair:
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self.workers:
            if worker.alive:
                worker.kill()


def test_a_static_member_restarted_after_kill_9_gets_its_own_partitions_back_at_once(
    kafka_bootstrap, new_topic, tmp_path
):
    """With --static-membership a worker killed with -9 and started again rejoins as the same
    member: it holds its own partitions again long before the session timeout (a new member
    waits that long for the dead one), its peer keeps its partitions throughout, and the group
    learns every event once."""
    options = [
        *("--session-timeout-ms", "60000", "--poll-timeout-ms", "50", "--no-shadow-baseline"),
        "--static-membership",
    ]
    with WorkerPair(kafka_bootstrap, new_topic, tmp_path, options) as pair:
        pair.learn(synthetic(2000, seed=89))
        before, peer_log = assigned_partitions(pair.a.log()), pair.b.log()
        pair.a.kill()
        started = time.monotonic()
        restarted = pair.start("a", "a2.log")
        assert wait_for(lambda: assigned_partitions(restarted.log()) == before, 30), tail_of(restarted)
        assert time.monotonic() - started < 30  # a dynamic member would wait out the 60 s
        ends = pair.learn(synthetic(1000, seed=90))
        assert "partitions revoked" not in pair.b.log()[len(peer_log) :], "the peer's partitions moved"
        assert (restarted.model_events() or 0) + (pair.b.model_events() or 0) == sum(ends.values())


def test_a_worker_killed_soon_after_taking_partitions_over_relearns_none_of_their_past(
    kafka_bootstrap, new_topic, tmp_path
):
    """A worker that takes partitions over from another, commits them and is killed before
    its next periodic checkpoint restarts from a checkpoint older than the takeover: it must
    replay them from where it took them over, not from the start of the log (which holds the
    other worker's events, learned by the other worker)."""
    options = [
        *("--checkpoint-interval-s", "3600", "--checkpoint-every-events", "1000000"),
        *("--session-timeout-ms", "6000", "--poll-timeout-ms", "50", "--no-shadow-baseline"),
    ]
    with WorkerPair(kafka_bootstrap, new_topic, tmp_path, options) as pair:
        pair.learn(synthetic(2000, seed=91))
        a_learned = pair.a.model_events()
        assert pair.a.stop() == 0, tail_of(pair.a)
        assert wait_for(lambda: "source=committed" in pair.b.log(), 60), tail_of(pair.b)  # b took a's over
        ends = pair.learn(synthetic(1000, seed=92))
        pair.b.kill()
        restarted = pair.start("b", "b2.log")
        total = sum(ends.values())
        # b's state: its own share of the first 2,000 and all of the last 1,000, nothing of a's.
        assert wait_for(lambda: restarted.model_events() == total - a_learned, 60), (
            restarted.model_events(),
            total,
            a_learned,
            tail_of(restarted),
        )


@pytest.mark.parametrize(
    ("option", "taken"),
    [("--exactly-once", "transactional id"), ("--static-membership", "group.instance.id")],
    ids=["exactly_once", "static_membership"],
)
def test_two_workers_of_one_name_on_two_machines_stop_with_a_clear_error_not_a_fencing_loop(
    kafka_bootstrap, new_topic, tmp_path, option, taken
):
    """Two processes given one --worker-id with separate checkpoint folders (two machines)
    share a transactional id under --exactly-once, a group.instance.id under
    --static-membership: the one fenced stops with one line naming the cause and the fix, exit
    code 2 (a supervisor does not restart it into fencing the other), and the other goes on to
    learn every event."""
    names = topics(new_topic, partitions=4)
    group = f"g-{names['input_topic']}"
    options = [option, "--poll-timeout-ms", "50", "--no-shadow-baseline", "--session-timeout-ms", "6000"]
    machines = [on_machine(kafka_bootstrap, names, group, tmp_path / m, "edge", options) for m in "12"]
    try:
        produce(kafka_bootstrap, names["input_topic"], keyed(synthetic(3000, seed=93)))
        assert wait_for(lambda: not all(m.alive for m in machines), 120), [tail_of(m) for m in machines]
        fenced = next(m for m in machines if not m.alive)
        survivor = next(m for m in machines if m.alive)
        assert fenced.proc.returncode == 2, tail_of(fenced)
        assert f"took over this worker's {taken}" in fenced.log()
        assert "Traceback" not in fenced.log()
        ends = input_ends(kafka_bootstrap, names["input_topic"])
        assert wait_for(lambda: group_committed(kafka_bootstrap, group, names["input_topic"]) == ends, 120), (
            tail_of(survivor)
        )
        assert survivor.alive
    finally:
        for m in machines:
            if m.alive:
                m.kill()
