"""One model over a group's workers, on the real broker (issue 12, ``--sync-every``).

Two workers of one group split a four-partition topic; each sends its video updates to the
update topic and applies the other's. When the stream is learned they must hold the same video
state, the group must have learned every event once, and a worker stopped and started again
must pick up where it was without applying anything twice.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from consumer import changelog
from consumer.clients import close_quietly
from consumer.config import ServiceConfig
from consumer.runner import build_service, held_by
from consumer.snapshot import INCARNATION_HEADER, ChunkRef, Manifest, read_snapshot
from consumer.sync import UpdateExchange, admitted
from model import viewer_state
from model.replica import SHARED_TABLES, ReplicatedRanker, VideoReplica, VideoUpdates
from tests.service_helpers import (
    ServiceProcess,
    changelog_topic,
    end_offsets,
    in_thread,
    produce,
    topics,
    update_topic,
    wait_for,
)
from tests.streams import synthetic
from tests.test_faults import keyed, read_topic, stable, tail_of
from tests.test_handover import group_committed


def running(config: ServiceConfig):
    """The service of ``config`` in a thread for a ``with`` block."""
    return in_thread(build_service(config, with_metrics=False))


def video_state(service) -> dict[str, dict[str, np.ndarray]]:
    model = service.model
    ids = [v for v in model.videos.ids if v]
    rows = model.videos.get_many(ids)
    parts = model.state_parts()
    return {name: dict(zip(ids, parts[name].array[rows], strict=True)) for name in SHARED_TABLES}


def assert_agree(a, b) -> None:
    left, right = video_state(a), video_state(b)
    assert left["video_vectors"].keys() == right["video_vectors"].keys()
    for name in SHARED_TABLES:
        ids = sorted(left[name])
        np.testing.assert_allclose(
            np.array([left[name][v] for v in ids]),
            np.array([right[name][v] for v in ids]),
            rtol=1e-4,
            atol=1e-5,
            err_msg=name,
        )


def assert_replicas_are_the_update_topic(base: ServiceConfig, workers: str) -> None:
    """Each of ``workers`` holds the video state a new worker reading the update topic from its
    start holds (the topic's records added up): nothing of its own learning missing, nothing
    held twice, whatever it went through (killed, restarted, expelled, rolled back)."""
    fresh = dataclasses.replace(base, worker_id="reader", checkpoint_dir="none", snapshot_every_s=0.0)
    with held_by(fresh) as reader:
        assert reader.exchange.applied > 0
        for worker in workers:
            with held_by(dataclasses.replace(base, worker_id=worker)) as held:
                try:
                    assert_agree(held, reader)
                except AssertionError as err:
                    raise AssertionError(f"worker {worker} holds other video state than the topic") from err


def cli_config(bootstrap: str, names: dict[str, str], group: str, checkpoints, mode=()) -> ServiceConfig:
    """The settings of the ``ServiceProcess`` workers these tests start, for reading their state."""
    return ServiceConfig(
        bootstrap_servers=bootstrap,
        group_id=group,
        checkpoint_dir=str(checkpoints),
        sync_every=1000,
        snapshot_every_s=0.0,
        shadow_baseline=False,
        metrics_port=0,
        exactly_once="--exactly-once" in mode,
        **names,
    )


def test_a_restored_worker_applies_its_own_records_its_checkpoint_does_not_hold():
    """A checkpoint names the last own record its state holds. Restored from it, the worker's
    reader skips that record and those before it (and its own new ones), and applies its own
    later ones like a peer's: sent after the checkpoint, their learning is gone from the state.
    A checkpoint from before this rule takes every own record as held, as before."""
    config = ServiceConfig(sync_every=100, worker_id="w")
    sender = UpdateExchange(config, VideoReplica(ReplicatedRanker()))
    events = synthetic(300, seed=5)
    sent = []
    for i in range(3):
        sender.replica.model.learn_many(events[i * 100 : (i + 1) * 100])
        sender.learned(100)
        sent.append(dict(sender.outgoing()[0][3]))
        if i == 1:
            saved = sender.to_arrays()  # checkpointed after the second send

    restored = UpdateExchange(config, VideoReplica(ReplicatedRanker()))
    restored.load_arrays(saved)
    assert [restored._holds(h) for h in sent] == [True, True, False]
    assert restored._holds(dict(restored.own.stamp()))  # its own, sent since the restore
    assert not restored._holds({**sent[0], INCARNATION_HEADER: b"another-process"})
    assert restored._holds({k: v for k, v in sent[2].items() if k != INCARNATION_HEADER})  # an old sender

    legacy = UpdateExchange(config, VideoReplica(ReplicatedRanker()))
    legacy.load_arrays({k: v for k, v in saved.items() if not k.startswith("own_")})
    assert legacy.legacy_own and all(legacy._holds(h) for h in sent)


def test_a_worker_whose_own_updates_were_dropped_writes_no_checkpoint(tmp_path, caplog):
    """Learning whose updates every reader dropped (sent after the worker was expelled) is in
    no other replica: a checkpoint of it would keep it here for good, so none is written and
    the worker's rollback goes back to the last one."""
    config = ServiceConfig(sync_every=100, worker_id="w", checkpoint_dir=str(tmp_path), metrics_port=0)
    service = build_service(config, with_metrics=False)
    try:
        assert service.checkpoint() is not None
        exchange = service.exchange
        record = dict(exchange.own.stamp())  # one of this incarnation's records, seen dropped
        exchange._fenced_off("w", {**record, "streamrec.generation": b"1"}, 0, 7)
        assert exchange.fenced_own == 1
        caplog.set_level(logging.WARNING)
        assert service.checkpoint() is None
        assert "not checkpointing" in caplog.text
        assert len(list(tmp_path.glob("w/ckpt-*"))) == 1
    finally:
        service.claim.release()


def test_how_far_the_topics_learning_reaches_goes_into_checkpoints_and_snapshots():
    """What a checkpoint or a snapshot starts a worker from carries the reach of the records
    before it, so the worker can tell "nothing of this partition was sent" from "not known"."""
    config = ServiceConfig(sync_every=100, worker_id="w")
    exchange = UpdateExchange(config, VideoReplica(ReplicatedRanker()))
    exchange.sent_through = {0: 120, 3: 75}
    assert "through_partitions" not in exchange.to_arrays()  # not known: nothing claimed
    exchange.reach_known = True
    restored = UpdateExchange(config, VideoReplica(ReplicatedRanker()))
    restored.load_arrays(exchange.to_arrays())
    assert (restored.sent_through, restored.reach_known) == ({0: 120, 3: 75}, True)

    manifest = Manifest("s1", "w", 1.0, {0: 12}, [ChunkRef("chunk/w/0/0", 3, 0)], 1, 4, {0: 120, 3: 75})
    assert Manifest.from_bytes(manifest.to_bytes()) == manifest
    older = Manifest("s0", "w", 1.0, {0: 12}, [ChunkRef("chunk/w/0/0", 3, 0)], 1, 4)
    assert Manifest.from_bytes(older.to_bytes()).through is None


@pytest.fixture
def group(kafka_bootstrap, new_topic, tmp_path):
    names = topics(new_topic, partitions=4)
    base = ServiceConfig(
        bootstrap_servers=kafka_bootstrap,
        group_id=f"g-{names['input_topic']}",
        metrics_port=0,
        checkpoint_dir=str(tmp_path / "ckpt"),
        sync_every=512,
        sync_interval_s=0.5,
        shadow_baseline=False,
        **names,
    )
    return base, names


def test_two_workers_learn_one_model(kafka_bootstrap, group):
    base, names = group
    first, second = synthetic(3000, seed=81), synthetic(2000, seed=82)
    a_config = dataclasses.replace(base, worker_id="a")
    b_config = dataclasses.replace(base, worker_id="b")
    with running(a_config) as a, running(b_config) as b:
        _each_holds_two_partitions(a, b)
        produce(kafka_bootstrap, names["input_topic"], keyed(first))
        assert wait_for(lambda: a.model_events + b.model_events == len(first), 120)
        assert a.model_events and b.model_events
        _sent_and_applied(a, b)
        assert_agree(a, b)
        assert a.exchange.applied and b.exchange.applied
        # Each knows every video of the stream, though it learned only its viewers' events.
        assert {e.video for e in first} <= set(a.model.videos.ids)
        a_learned, b_learned = a.model_events, b.model_events

    # b stops; a learns on alone, then b comes back from its checkpoint and catches up.
    with running(a_config) as a:
        produce(kafka_bootstrap, names["input_topic"], keyed(second))
        assert wait_for(lambda: a.model_events == a_learned + len(second), 120)  # all four partitions
        with running(b_config) as b:
            assert wait_for(lambda: b.model_events == b_learned and b.exchange is not None, 60)
            _sent_and_applied(a, b)
            assert_agree(a, b)


def _each_holds_two_partitions(*services) -> None:
    for s in services:
        assert wait_for(lambda s=s: len(s._consumer.assignment() if s._consumer else ()) == 2, 90), s.failed


def _sent_and_applied(a, b) -> None:
    """Idle, each sends what is left within sync_interval_s; then both hold the same videos."""
    assert wait_for(lambda: a.exchange.unsent == b.exchange.unsent == 0, 30)
    assert wait_for(lambda: _caught_up(a, b), 30)


def _caught_up(a, b) -> bool:
    """Both have applied everything the other sent (their idle loops read the update topic)."""
    try:
        assert_agree(a, b)
    except AssertionError:
        return False
    return True


def test_a_large_poll_sends_every_sync_every_events_not_once_at_its_end(kafka_bootstrap, group):
    """A worker behind on a backlog takes polls of thousands of events; it still sends its
    updates every ``--sync-every`` events within the poll (before the poll's commit), so the
    group's video state is no staler than that setting however large the polls grow."""
    base, names = group
    events = synthetic(4000, seed=84)
    produce(kafka_bootstrap, names["input_topic"], keyed(events))
    config = dataclasses.replace(base, worker_id="a", poll_budget_ms=5000.0, max_poll_records=4000)
    service = build_service(config, with_metrics=False)
    polls: list[tuple[int, int]] = []  # (events, sends) of each poll
    process = service.process

    def counted(polled):
        before = service.exchange.sends
        process(polled)
        polls.append((sum(len(r) for r in polled.values()), service.exchange.sends - before))

    service.process = counted
    with in_thread(service) as a:
        assert wait_for(lambda: a.model_events == len(events), 120), a.failed
    large = [(n, sends) for n, sends in polls if n >= 3 * base.sync_every]
    assert large, polls
    for n, sends in large:
        assert sends >= n // base.sync_every, (n, sends, polls)


@pytest.mark.parametrize("when", ["periodic", "revoked"])
def test_a_checkpoint_holds_no_unsent_updates(kafka_bootstrap, group, when):
    """A restart from a checkpoint sends what the checkpoint holds unsent; the process that
    wrote it may have sent that since, so a checkpoint sends it first, periodic or taken when
    partitions are revoked (a second worker joins): in the saved state the model's video tables
    are the agreed ones, though neither --sync-every nor --sync-interval-s was reached."""
    base, names = group
    every = 500 if when == "periodic" else 10_000_000  # "revoked": no periodic checkpoint at all
    config = dataclasses.replace(
        base, worker_id="a", sync_every=1_000_000, sync_interval_s=3600.0, checkpoint_every_events=every
    )
    events = synthetic(1500, seed=85)
    with running(config) as a:  # read while it runs: stopping sends everything and checkpoints
        produce(kafka_bootstrap, names["input_topic"], keyed(events))
        assert wait_for(lambda: a.model_events == len(events), 120), a.failed
        if when == "revoked":
            assert a.store.latest() is None
            with running(dataclasses.replace(config, worker_id="b")):
                assert wait_for(lambda: a.store.latest() is not None, 60), a.failed
                assert_nothing_unsent(a.store.latest())
        else:
            assert_nothing_unsent(a.store.latest())
        assert a.exchange.sends >= 1  # the checkpoint sent it


def assert_nothing_unsent(saved) -> None:
    """In checkpoint ``saved``, the model's video tables are the agreed ones, nothing is noted."""
    from consumer.app import REPLICA_FILE
    from model.replica import ReplicatedRanker

    assert saved is not None and sum(saved.offsets.values()) >= 500, saved
    model = ReplicatedRanker.load(saved.path / "model.npz")
    with np.load(saved.path / REPLICA_FILE) as replica:
        assert not replica["changes.dirty"].size
        n = len(model.videos)
        for name in SHARED_TABLES:
            held, agreed = model.state_parts()[name].array[:n], replica[f"table.{name}"][:n]
            np.testing.assert_array_equal(held, agreed, err_msg=name)


def test_the_sync_series_show_what_two_workers_exchange(kafka_bootstrap, group):
    """With metrics (each worker its own registry, as each process has), two syncing workers
    export what they sent and applied: records, bytes and videos that agree between sender and
    receiver, seconds per step, and the lag of each peer's newest update."""
    base, names = group
    events = synthetic(3000, seed=83)
    services = {}
    for worker in ("a", "b"):
        services[worker] = build_service(
            dataclasses.replace(base, worker_id=worker), with_metrics=True, registry=CollectorRegistry()
        )
    with in_thread(services["a"]) as a, in_thread(services["b"]) as b:
        _each_holds_two_partitions(a, b)
        produce(kafka_bootstrap, names["input_topic"], keyed(events))
        assert wait_for(lambda: a.model_events + b.model_events == len(events), 120)
        _sent_and_applied(a, b)

        def sample(service, name: str, **labels) -> float:
            return service.metrics.registry.get_sample_value(name, labels) or 0.0

        for me, peer, peer_name in ((a, b, "b"), (b, a, "a")):
            sent = sample(me, "streamrec_sync_records_total", direction="sent")
            assert sent == me.exchange.sent > 0
            # What one sends, the other applies: records, bytes and videos alike.
            for name in (
                "streamrec_sync_records_total",
                "streamrec_sync_bytes_total",
                "streamrec_sync_videos_total",
            ):
                assert sample(peer, name, direction="applied") == sample(me, name, direction="sent") > 0, name
            assert sample(me, "streamrec_sync_bytes_total", direction="sent") > 1000 * sent  # rows of vectors
            for step in ("take", "encode", "decode", "apply"):
                assert sample(me, "streamrec_sync_seconds_total", step=step) > 0, step
            # Each counts the other in the group's size: its steps weigh a half.
            assert set(peer.exchange.peers) == {"a" if me is a else "b"}
            lag = sample(peer, "streamrec_sync_lag_seconds", peer="a" if me is a else "b")
            assert 0 <= lag < 30
            sent_at = sample(me, "streamrec_sync_peer_update_timestamp_seconds", peer=peer_name)
            assert time.time() - 120 < sent_at <= time.time()


def test_a_late_worker_starts_from_the_snapshot_and_agrees(kafka_bootstrap, group, caplog):
    """Two workers learn a stream and snapshot their video state every second; a third with
    an empty checkpoint folder joins late. It installs the newest complete snapshot (skipping a
    torn one that claims to be newer), reads only the update records after it, and ends with
    the others' video state once more events are learned by all three."""
    base, names = group
    base = dataclasses.replace(base, snapshot_every_s=1.0)
    first, second = synthetic(4000, seed=84), synthetic(1500, seed=85)
    a_config, b_config, c_config = (dataclasses.replace(base, worker_id=w) for w in "abc")
    with running(a_config) as a, running(b_config) as b:
        _each_holds_two_partitions(a, b)
        produce(kafka_bootstrap, names["input_topic"], keyed(first))
        assert wait_for(lambda: a.model_events + b.model_events == len(first), 120)
        _sent_and_applied(a, b)
        # One of them (the first by its name's hash, once they have heard from each other)
        # snapshots everything sent.
        assert wait_for(lambda: any(w.exchange.snapshot_offsets == w.exchange.offsets for w in (a, b)), 30)
        snapshotter = next(w for w in (a, b) if w.exchange.snapshot_offsets == w.exchange.offsets)
        in_topic = sum(snapshotter.exchange.offsets.values())
        assert in_topic > 10
        # A manifest claiming to cover more whose chunk is missing: a torn snapshot.
        torn = Manifest("torn", "x", time.time(), {0: in_topic + 100}, [ChunkRef("chunk/x/0/0", 10, 0)], 1)
        produce(kafka_bootstrap, base.snapshot_topic_name, [(b"manifest/x/0", torn.to_bytes())])

        caplog.set_level(logging.INFO)
        with running(c_config) as c:
            assert wait_for(lambda: c.exchange is not None and c.exchange._reader is not None, 90), c.failed
            started = c.exchange.started_from
            assert started is not None and started.manifest.worker == snapshotter.config.worker
            assert [m.id for m, _ in started.torn] == ["torn"]
            assert "torn snapshot skipped" in caplog.text and "started from snapshot" in caplog.text
            assert wait_for(lambda: _caught_up(c, a), 30)
            # It read the snapshot and a handful of update records, not the topic's history.
            assert c.exchange.read <= in_topic // 10
            assert c.exchange.applied <= in_topic // 10
            # All three learn more; the late one ends with the same video state.
            assert wait_for(lambda: all(w._consumer and w._consumer.assignment() for w in (a, b, c)), 90)
            learned = a.model_events + b.model_events + c.model_events
            produce(kafka_bootstrap, names["input_topic"], keyed(second))
            assert wait_for(
                lambda: a.model_events + b.model_events + c.model_events == learned + len(second), 120
            )
            assert wait_for(lambda: a.exchange.unsent == b.exchange.unsent == c.exchange.unsent == 0, 30)
            assert wait_for(lambda: _caught_up(a, c) and _caught_up(b, c), 30)
            assert_agree(a, c)
            assert_agree(b, c)


# -- kill -9 between sends ------------------------------------------------------------------------


def committed_total(bootstrap: str, group: str, topic: str) -> int:
    """The offsets the group has committed on ``topic``, summed (0 before the group exists)."""
    try:
        return sum(group_committed(bootstrap, group, topic).values())
    except KafkaError:
        return 0


def counted_in_updates(bootstrap: str, topic: str) -> float:
    """The watches the update topic carries, summed over every record a peer would apply
    (``watch_counts`` adds one per event learned): the events whose learning reached the peers.
    Records the generation fence drops are not applied by any worker, so not counted."""
    return sum(VideoUpdates.from_bytes(r.value).watches for r in admitted(read_topic(bootstrap, topic)))


@pytest.mark.parametrize(
    ("sync_every", "checkpoint_every", "mode", "next_owner"),
    # Sends at 1,000 and 2,000, no checkpoint; or sends at 600 and 1,200, a checkpoint (which
    # sends first) at 1,500 to 1,800, a send 600 later: either way a send after the last
    # checkpoint, and events after the last send.
    [
        (1000, 10_000_000, [], "a"),
        (600, 1_500, ["--exactly-once"], "a"),
        (1000, 10_000_000, [], "b"),
        (5000, 10_000_000, [], "b"),  # nothing sent at all: the partitions no update names
    ],
    ids=[
        "no_checkpoint-at_least_once",
        "checkpointed-exactly_once",
        "another_worker",
        "nothing_sent-another_worker",
    ],
)
def test_a_worker_killed_between_sends_gets_its_last_learning_to_the_peers(
    kafka_bootstrap, new_topic, tmp_path, sync_every, checkpoint_every, mode, next_owner
):
    """Updates go out every --sync-every events, so a worker killed with -9 has committed polls
    whose learning no peer has. Restarted, it replays them: what it had sent before is taken as
    agreed, the rest is sent now. Another worker taking its partitions instead relearns them
    from where the update topic's learning ends, its viewers taken back to there. The update
    topic then carries every event's learning exactly once: its watch counts add up to the
    events produced, neither fewer (learning taken as sent) nor more (sent twice); and each
    viewer's watched list, as the changelog hands it on, is their stream, each watch once."""
    names = topics(new_topic, partitions=4)
    group, checkpoints = f"g-{names['input_topic']}", tmp_path / "ckpt"
    updates_topic = update_topic(names, group)
    options = [
        *("--sync-every", str(sync_every), "--sync-interval-s", "3600", "--snapshot-every-s", "0"),
        *("--checkpoint-every-events", str(checkpoint_every), "--checkpoint-interval-s", "3600"),
        *("--max-poll-records", "300", "--session-timeout-ms", "6000", "--no-shadow-baseline"),
        *mode,
    ]
    first, second = synthetic(2600, seed=86), synthetic(400, seed=87)

    def worker(log: str, name: str = "a") -> ServiceProcess:
        return ServiceProcess(kafka_bootstrap, names, group, checkpoints, tmp_path / log, name, options)

    produce(kafka_bootstrap, names["input_topic"], keyed(first))
    victim = worker("a1.log")
    try:
        assert wait_for(
            lambda: committed_total(kafka_bootstrap, group, names["input_topic"]) == len(first),
            120,
        ), tail_of(victim)
        victim.kill()
        assert wait_for(lambda: stable(kafka_bootstrap, updates_topic), 120)
        before = counted_in_updates(kafka_bootstrap, updates_topic)
        assert before < len(first), f"the kill found nothing unsent ({before}): the test proves nothing"
        assert before > 0 or sync_every > len(first)

        restarted = worker(f"{next_owner}2.log", next_owner)
        assert wait_for(lambda: "partition assigned" in restarted.log(), 120), tail_of(restarted)
        produce(kafka_bootstrap, names["input_topic"], keyed(second))
        total = len(first) + len(second)
        assert wait_for(
            lambda: committed_total(kafka_bootstrap, group, names["input_topic"]) == total, 120
        ), tail_of(restarted)
        # Restarted, it relearns all (a fresh model); another relearns what was not sent.
        assert restarted.model_events() == (total if next_owner == "a" else total - before)
        assert restarted.stop() == 0, tail_of(restarted)  # sends what is unsent
    finally:
        for service in (victim, locals().get("restarted")):
            if service is not None and service.alive:
                service.kill()
    assert counted_in_updates(kafka_bootstrap, updates_topic) == total
    if next_owner == "a":
        assert "peers_have_until" in restarted.log()  # some of the replay was taken as sent
    else:
        assert "relearning what the previous owner learned and never sent" in restarted.log()
        assert "viewers_not_rewound=0" in restarted.log()
    assert watched_as_handed_on(kafka_bootstrap, changelog_topic(names, group)) == streams_of(first + second)
    assert_replicas_are_the_update_topic(
        cli_config(kafka_bootstrap, names, group, checkpoints, mode), next_owner
    )


def test_a_worker_restarted_without_its_folder_learns_again_what_it_never_sent_after_the_snapshot(
    kafka_bootstrap, new_topic, tmp_path
):
    """A worker killed with -9 holds committed polls whose learning it never sent. Restarted
    without its checkpoint folder (a container without a volume), it starts from the group's
    newest snapshot and replays its partitions from their start. The snapshot's manifest says
    how far the learning of the records before it reaches, so the replay takes back what the
    topic has and sends the rest: the update topic's watch counts come to the events produced.
    (Before, a worker started from a snapshot took its whole replay as sent, and that learning
    was lost to the group.)"""
    names = topics(new_topic, partitions=4)
    group, checkpoints = f"g-{names['input_topic']}", tmp_path / "ckpt"
    updates_topic = update_topic(names, group)
    options = [
        *("--sync-every", "1000", "--sync-interval-s", "3600", "--snapshot-every-s", "1"),
        *("--checkpoint-every-events", "10000000", "--checkpoint-interval-s", "3600"),
        *("--max-poll-records", "300", "--session-timeout-ms", "6000", "--no-shadow-baseline"),
    ]
    first, second = synthetic(2600, seed=89), synthetic(400, seed=90)
    config = cli_config(kafka_bootstrap, names, group, checkpoints)

    def worker(log: str) -> ServiceProcess:
        return ServiceProcess(kafka_bootstrap, names, group, checkpoints, tmp_path / log, "a", options)

    produce(kafka_bootstrap, names["input_topic"], keyed(first))
    with reaped([]) as services:
        victim = worker("a1.log")
        services.append(victim)
        assert wait_for(
            lambda: committed_total(kafka_bootstrap, group, names["input_topic"]) == len(first), 120
        ), tail_of(victim)
        # Every poll's updates are acknowledged before its commit, so the topic is whole by now:
        # wait for a snapshot covering all of it (on a fast machine the first one already may).
        sent = end_offsets(kafka_bootstrap, updates_topic)
        assert wait_for(lambda: snapshot_covers(config, sent), 60), tail_of(victim)
        victim.kill()
        assert wait_for(lambda: stable(kafka_bootstrap, updates_topic), 60)
        before = counted_in_updates(kafka_bootstrap, updates_topic)
        assert 0 < before < len(first), f"nothing unsent at the kill ({before}): the test proves nothing"
        shutil.rmtree(checkpoints)

        restarted = worker("a2.log")
        services.append(restarted)
        assert wait_for(lambda: "partition assigned" in restarted.log(), 120), tail_of(restarted)
        assert "started from snapshot" in restarted.log()
        produce(kafka_bootstrap, names["input_topic"], keyed(second))
        total = len(first) + len(second)
        assert wait_for(
            lambda: committed_total(kafka_bootstrap, group, names["input_topic"]) == total, 120
        ), tail_of(restarted)
        assert restarted.stop() == 0, tail_of(restarted)
    assert counted_in_updates(kafka_bootstrap, updates_topic) == total
    assert_replicas_are_the_update_topic(cli_config(kafka_bootstrap, names, group, checkpoints), "a")


def snapshot_covers(config: ServiceConfig, updates: int) -> bool:
    """Whether the group's newest snapshot covers the first ``updates`` records of the update
    topic (summed over its partitions)."""
    snapshot = read_snapshot(config)
    return snapshot is not None and sum(snapshot.manifest.offsets.values()) == updates


def streams_of(events) -> dict[str, list[str]]:
    """Each viewer's videos, in stream order."""
    streams: dict[str, list[str]] = {}
    for e in events:
        streams.setdefault(e.viewer, []).append(e.video)
    return streams


def watched_as_handed_on(bootstrap: str, changelog_topic: str) -> dict[str, list[str]]:
    """Each viewer's watched list in their latest changelog record (the one model's state)."""
    latest = {
        record.key.decode(): changelog.decode(record.value)
        for record in read_topic(bootstrap, changelog_topic)
    }
    watched = {}
    for viewer, record in latest.items():
        [state] = record.models.values()
        watched[viewer] = viewer_state.decode(state).seen
    return watched


class Killed(BaseException):
    """The end of a process killed with -9, raised inside the service's loop."""


@pytest.mark.parametrize("next_owner", ["restarted", "another_worker"])
def test_a_worker_killed_after_a_send_before_its_commit_sends_nothing_twice(
    kafka_bootstrap, group, next_owner
):
    """At least once, a poll's updates are acknowledged before its offsets are committed. A
    worker killed in between has sent the learning of events no commit covers. Whoever takes
    its partitions next (itself restarted, or another worker of the group) serves them again
    (their lists are published again) but takes their learning as agreed, so the update
    topic's watch counts add up to the events produced, not more."""
    base, names = group
    config = dataclasses.replace(
        base,
        worker_id="a",
        sync_every=1000,
        sync_interval_s=3600.0,
        checkpoint_every_events=10_000_000,
        checkpoint_interval_s=3600.0,
        max_poll_records=300,
    )
    events = synthetic(2600, seed=88)
    produce(kafka_bootstrap, names["input_topic"], keyed(events))
    victim = build_service(config, with_metrics=False)
    deliver, sends_before = victim._deliver, [0]

    def killed_once_a_poll_sent(poll) -> bool:
        sends = victim.exchange.sends
        if sends >= 2 and sends > sends_before[0]:  # this poll sent updates: acknowledged, then -9
            victim._producer.flush()
            raise Killed
        sends_before[0] = sends
        return deliver(poll)

    def nothing_flushed_or_saved() -> None:  # kill -9 runs no shutdown: only the OS lets go
        victim.exchange.close()
        close_quietly(victim._consumer, victim._producer)
        victim.claim.release()

    victim._deliver, victim._shutdown = killed_once_a_poll_sent, nothing_flushed_or_saved
    with pytest.raises(Killed):
        victim.run()
    updates_topic = config.sync_topic_name
    assert counted_in_updates(kafka_bootstrap, updates_topic) > committed_total(
        kafka_bootstrap, config.group_id, names["input_topic"]
    ), "the kill came after a commit: the test proves nothing"

    owner = config if next_owner == "restarted" else dataclasses.replace(config, worker_id="b")
    with running(owner) as successor:
        assert wait_for(
            lambda: committed_total(kafka_bootstrap, config.group_id, names["input_topic"]) == len(events),
            120,
        ), successor.failed
        assert successor.model_events >= len(events) - victim.model_events
    assert counted_in_updates(kafka_bootstrap, updates_topic) == len(events)
    # What the successor holds is what the group holds: the update topic's records added up (a
    # new worker's replica, read from the topic's start). Another worker had the victim's sends
    # applied before it served their events again: learned again and kept, they counted twice.
    reader = build_service(
        dataclasses.replace(config, worker_id="reader", checkpoint_dir="none", snapshot_every_s=0.0),
        with_metrics=False,
    )
    try:
        reader.exchange.connect()
        assert reader.exchange.applied > 0
        assert_agree(successor, reader)
    finally:
        reader.exchange.close()


def test_partitions_handed_over_in_a_rebalance_take_their_learning_along_once(kafka_bootstrap, group):
    """A worker that gives partitions up in a rebalance sends what it learned of them before they
    move, with through offsets that say so: their new owner, which relearns what the update
    topic lacks of a partition (a killed worker's unsent learning), finds nothing lacking. The
    update topic's watch counts add up to the events produced, not more."""
    base, names = group
    config = dataclasses.replace(
        base,
        sync_every=1000,
        sync_interval_s=3600.0,
        max_poll_records=300,
        checkpoint_every_events=10_000_000,
        checkpoint_interval_s=3600.0,
    )
    first, second = synthetic(2600, seed=94), synthetic(400, seed=95)
    produce(kafka_bootstrap, names["input_topic"], keyed(first))
    with running(dataclasses.replace(config, worker_id="a")) as a:
        assert wait_for(lambda: a.model_events == len(first), 120), a.failed
        assert a.exchange.unsent > 0, "nothing held back: the test proves nothing"
        with running(dataclasses.replace(config, worker_id="b")) as b:
            _each_holds_two_partitions(a, b)
            assert a.exchange.unsent == 0, "sent when its partitions were revoked"
            produce(kafka_bootstrap, names["input_topic"], keyed(second))
            assert wait_for(lambda: a.model_events + b.model_events == len(first) + len(second), 120)
    assert counted_in_updates(kafka_bootstrap, config.sync_topic_name) == len(first) + len(second)


@contextmanager
def reaped(services: list[ServiceProcess]) -> Iterator[list[ServiceProcess]]:
    """Whatever of ``services`` (appended as they start) still runs when the block ends, on a
    failed assertion, is thawed (a stopped process cannot act on SIGTERM) and killed."""
    try:
        yield services
    finally:
        for service in services:
            if service.alive:
                service.proc.send_signal(signal.SIGCONT)
                service.kill()


@pytest.mark.parametrize("checkpoint_every", [500, 10_000_000], ids=["checkpointed", "no_checkpoint_yet"])
def test_a_worker_expelled_while_frozen_sends_nothing_its_partitions_new_owner_relearned(
    kafka_bootstrap, new_topic, tmp_path, checkpoint_every
):
    """A worker frozen past the session timeout (a stopped process, a paused VM) is expelled; its
    partitions' new owner relearns what the update topic lacks of them. Thawed, the expelled
    worker finds its partitions lost and drops its unsent learning (back to its last
    checkpoint) instead of sending it: the update topic's watch counts add up to the events
    produced, not more."""
    names = topics(new_topic, partitions=4)
    group, checkpoints = f"g-{names['input_topic']}", tmp_path / "ckpt"
    updates_topic = update_topic(names, group)
    options = [
        *("--sync-every", "1000", "--sync-interval-s", "3600", "--snapshot-every-s", "0"),
        *("--checkpoint-every-events", str(checkpoint_every), "--checkpoint-interval-s", "3600"),
        *("--max-poll-records", "300", "--session-timeout-ms", "6000", "--no-shadow-baseline"),
    ]
    first, second = synthetic(2600, seed=96), synthetic(400, seed=97)
    produce(kafka_bootstrap, names["input_topic"], keyed(first))
    with reaped([]) as services:
        frozen = ServiceProcess(kafka_bootstrap, names, group, checkpoints, tmp_path / "a.log", "a", options)
        services.append(frozen)
        assert wait_for(
            lambda: committed_total(kafka_bootstrap, group, names["input_topic"]) == len(first), 120
        ), tail_of(frozen)
        assert wait_for(lambda: stable(kafka_bootstrap, updates_topic), 60)
        assert counted_in_updates(kafka_bootstrap, updates_topic) < len(first), (
            "nothing unsent: proves nothing"
        )
        frozen.proc.send_signal(signal.SIGSTOP)
        other = ServiceProcess(kafka_bootstrap, names, group, checkpoints, tmp_path / "b.log", "b", options)
        services.append(other)
        assert wait_for(lambda: "relearning what the previous owner" in other.log(), 120), tail_of(other)
        frozen.proc.send_signal(signal.SIGCONT)
        assert wait_for(
            lambda: "partitions lost" in frozen.log() or "partitions revoked" in frozen.log(), 120
        ), tail_of(frozen)
        produce(kafka_bootstrap, names["input_topic"], keyed(second))
        total = len(first) + len(second)
        assert wait_for(
            lambda: committed_total(kafka_bootstrap, group, names["input_topic"]) == total, 120
        ), (
            tail_of(frozen),
            tail_of(other),
        )
        assert frozen.stop() == 0, tail_of(frozen)
        assert other.stop() == 0, tail_of(other)
    assert counted_in_updates(kafka_bootstrap, updates_topic) == total
    # Its rollback took the frozen worker back to its checkpoint: what it had sent since, its
    # reader applies again, like a peer's.
    assert_replicas_are_the_update_topic(cli_config(kafka_bootstrap, names, group, checkpoints), "ab")


@pytest.mark.parametrize("mode", [[], ["--exactly-once"]], ids=["at_least_once", "exactly_once"])
def test_a_worker_expelled_while_busy_has_what_it_sends_after_the_takeover_dropped_by_every_reader(
    kafka_bootstrap, new_topic, tmp_path, mode
):
    """A worker frozen in the middle of a backlog, past the session timeout, is expelled while
    busy: thawed, it finishes the poll it was in and sends its updates before any poll tells it
    that its partitions are gone, and a send in flight when it froze lands late. Those records
    name the group generation it held; the partitions' new owner sent a fence naming a newer
    one before deciding what to relearn, so every reader drops them. The update topic's watch
    counts, read as a worker reads them, add up to the events produced, not more."""
    names = topics(new_topic, partitions=4)
    group, checkpoints = f"g-{names['input_topic']}", tmp_path / "ckpt"
    updates_topic = update_topic(names, group)
    options = [
        *("--sync-every", "1000", "--sync-interval-s", "3600", "--snapshot-every-s", "0"),
        *("--checkpoint-every-events", "5000", "--checkpoint-interval-s", "3600"),
        *("--session-timeout-ms", "6000", "--no-shadow-baseline", *mode),
    ]
    events = synthetic(30_000, seed=98)
    produce(kafka_bootstrap, names["input_topic"], keyed(events))
    with reaped([]) as services:
        busy = ServiceProcess(kafka_bootstrap, names, group, checkpoints, tmp_path / "a.log", "a", options)
        services.append(busy)
        assert wait_for(lambda: committed_total(kafka_bootstrap, group, names["input_topic"]) >= 3000, 120), (
            tail_of(busy)
        )
        busy.proc.send_signal(signal.SIGSTOP)
        frozen_at = committed_total(kafka_bootstrap, group, names["input_topic"])
        assert frozen_at < len(events) - 5000, "the backlog was learned before the freeze: proves nothing"
        other = ServiceProcess(kafka_bootstrap, names, group, checkpoints, tmp_path / "b.log", "b", options)
        services.append(other)
        assert wait_for(lambda: "partition assigned" in other.log(), 120), tail_of(other)
        busy.proc.send_signal(signal.SIGCONT)
        assert wait_for(lambda: "partitions lost" in busy.log(), 120), tail_of(busy)
        assert wait_for(
            lambda: committed_total(kafka_bootstrap, group, names["input_topic"]) == len(events), 180
        ), (tail_of(busy), tail_of(other))
        assert busy.stop() == 0, tail_of(busy)
        assert other.stop() == 0, tail_of(other)
    assert counted_in_updates(kafka_bootstrap, updates_topic) == len(events)
    assert_replicas_are_the_update_topic(cli_config(kafka_bootstrap, names, group, checkpoints, mode), "ab")
