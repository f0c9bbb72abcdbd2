"""Snapshots of the group's video state (issue 12): what a late worker starts from.

In one process: a snapshot of a replica's agreed state, applied to a fresh replica, must hold
exactly what the update records before the snapshot's offsets add up to, also while the worker
has learned events it has not sent, and a snapshot taken while its own records are still ahead
of its reader must be deferred (:class:`consumer.snapshot.OwnRecords`). The encoding survives
chunking, and a torn snapshot is never installed; a worker whose updates the topic's retention
deleted says so (on the broker). The late joiner on the broker is in ``tests/test_sync.py``.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.structs import TopicPartition

from consumer.config import ConfigError, ServiceConfig
from consumer.snapshot import Manifest, OwnRecords, newest_complete, snapshot_messages
from consumer.sync import UPDATE_HEADER, UpdateExchange
from model.replica import SHARED_TABLES, ReplicatedRanker, VideoReplica, VideoUpdates
from tests.streams import stream
from tests.test_replica import worker_of


def state(replica: VideoReplica) -> dict:
    """The video state by id: shared tables, co-occurrence counts and pairs, the feature weight."""
    m = replica.model
    ids = sorted(v for v in m.videos.ids if v)
    rows = m.videos.get_many(ids)
    parts = m.state_parts()
    out = {"ids": ids, "alpha": np.array([m._alpha[0], m._alpha_acc[0]])}
    out |= {name: parts[name].array[rows] for name in SHARED_TABLES}
    out["cooc"] = m._cooc.array[np.ix_(rows, rows)] if m._cooc.rows else np.zeros((0, 0))
    out["own"] = m._cooc.counts[rows] if m._cooc.rows else np.zeros(0)
    return out


def same(a: dict, b: dict, atol: float = 1e-5) -> bool:
    if a["ids"] != b["ids"]:
        return False
    return all(np.allclose(a[k], b[k], rtol=1e-5, atol=atol) for k in a if k != "ids")


def fresh_with(updates: list[VideoUpdates]) -> dict:
    replica = VideoReplica(ReplicatedRanker())
    for u in updates:
        replica.apply(VideoUpdates.from_bytes(u.to_bytes()))
    return state(replica)


class Worker:
    """A replica with its reader's position in a shared list of update records (the topic)."""

    def __init__(self, name: str, topic: list) -> None:
        self.name, self.topic = name, topic
        self.replica = VideoReplica(ReplicatedRanker())
        self.own = OwnRecords({0: len(topic)})
        self.position = 0

    def send(self) -> None:
        self.topic.append((self.name, dict(self.own.stamp()), self.replica.take()))

    def read(self, upto: int | None = None) -> None:
        for sender, headers, updates in self.topic[self.position : upto]:
            if sender == self.name:
                self.own.seen(headers)
            else:
                self.replica.apply(VideoUpdates.from_bytes(updates.to_bytes()))
        self.position = len(self.topic) if upto is None else upto


def test_a_snapshot_is_the_records_before_its_offsets_and_waits_for_its_own():
    events = stream("synthetic", 6000)
    parts = [[e for e in events if worker_of(e.viewer, 2) == w] for w in range(2)]
    topic: list = []
    a, b = Worker("a", topic), Worker("b", topic)
    for step in range(3):
        for w, worker in enumerate((a, b)):
            worker.replica.model.learn_many(parts[w][step * 600 : (step + 1) * 600])
            worker.send()
        a.read()
        b.read()
    # a sends again; the record is in the topic, but a's reader has not passed it.
    a.replica.model.learn_many(parts[0][1800:2200])
    a.send()
    b.replica.model.learn_many(parts[1][1800:2200])
    b.send()
    a.read(upto=len(topic) - 2)
    assert not a.own.settled({0: a.position})
    # Taken now, the snapshot holds a's last send, which is past its offsets: the rule is broken.
    before = fresh_with([u for _, _, u in topic[: a.position]])
    assert not same(fresh_with([a.replica.snapshot()]), before)
    # Once the reader passes it (and b's after it), the snapshot is the records before its
    # offsets, though a has learned more since that it has not sent.
    a.read()
    a.replica.model.learn_many(parts[0][2200:2600])
    assert len(parts[0]) > 2600 and a.own.settled({0: a.position})
    snapshot = a.replica.snapshot()
    assert same(fresh_with([snapshot]), fresh_with([u for _, _, u in topic[: a.position]]))
    # ... and a replica started from it and the records after agrees with the others.
    b.read()
    a.send()
    b.read()
    late = VideoReplica(ReplicatedRanker())
    late.apply(snapshot)
    for _, _, u in topic[a.position :]:
        late.apply(u)
    assert same(state(late), state(b.replica))


def test_a_worker_that_restarted_waits_until_its_reader_reaches_the_end_it_found():
    own = OwnRecords(end_at_connect={0: 40, 1: 3})
    assert not own.settled({0: 39, 1: 3})  # an earlier incarnation's records may be before 40
    assert own.settled({0: 40, 1: 3})
    own.seen(OwnRecords().stamp())  # another incarnation's record does not count as its own
    own.stamp()
    assert not own.settled({0: 41, 1: 3})


def test_the_snapshot_encoding_round_trip_in_chunks():
    events = stream("synthetic", 3000)
    replica = VideoReplica(ReplicatedRanker())
    replica.model.learn_many(events)
    replica.take()
    snapshot = replica.snapshot()
    chunks, manifest_message, manifest = snapshot_messages("snaps", "w", 0, snapshot, {0: 17}, budget=40_000)
    assert len(chunks) > 3 and all(len(value) <= 40_000 for _, _, value, _ in chunks)
    latest = {key: (value, dict(headers)["streamrec.snapshot"].decode()) for _, key, value, headers in chunks}
    latest[manifest_message[1]] = (manifest_message[2], manifest.id)
    found, values, torn = newest_complete(latest)
    assert found == Manifest.from_bytes(manifest_message[2]) and found.offsets == {0: 17} and not torn
    rebuilt = VideoReplica(ReplicatedRanker())
    for value in values:
        rebuilt.apply(VideoUpdates.from_bytes(value))
    assert same(state(rebuilt), state(replica))
    assert len(rebuilt.take()) == 0  # installed as agreed: nothing of it is sent on


def test_a_torn_snapshot_is_skipped_for_the_previous_complete_one():
    events = stream("synthetic", 2000)
    replica = VideoReplica(ReplicatedRanker())
    latest = {}
    ids = []
    for slot, chunk in enumerate((events[:1000], events[1000:])):
        replica.model.learn_many(chunk)
        replica.take()
        chunks, (_, key, value, _), manifest = snapshot_messages(
            "snaps", "w", slot, replica.snapshot(), {0: slot}, budget=30_000
        )
        for _, k, v, headers in chunks:
            latest[k] = (v, dict(headers)["streamrec.snapshot"].decode())
        latest[key] = (value, manifest.id)
        ids.append(manifest.id)
    assert newest_complete(latest)[0].id == ids[1]
    # The newest loses a chunk (compacted away, never written): the previous one is taken.
    latest.pop(b"chunk/w/1/1")
    found, _, torn = newest_complete(latest)
    assert found.id == ids[0] and [m.id for m, _ in torn] == [ids[1]]
    # A chunk overwritten by a later snapshot in the same slot is not taken for this one's.
    value, _ = latest[b"chunk/w/0/0"]
    latest[b"chunk/w/0/0"] = (value, "another")
    assert newest_complete(latest) is None


def test_the_update_topic_keeps_everything_unless_snapshots_hold_it():
    assert ServiceConfig(sync_every=1024, snapshot_every_s=0).sync_retention_ms == -1
    assert ServiceConfig(sync_every=1024).sync_retention_ms == 86_400_000  # a day, snapshots every 60 s
    assert ServiceConfig(sync_every=1024, sync_retention_s=-1).sync_retention_ms == -1
    # A new worker needs the updates since the newest snapshot, or the one before it.
    with pytest.raises(ConfigError, match="at least twice snapshot_every_s"):
        ServiceConfig(sync_every=1024, snapshot_every_s=600, sync_retention_s=900)
    config = ServiceConfig(input_topic="watch", group_id="recs", sync_every=1024)
    assert config.snapshot_topic_name == "recs-watch-video-updates-snapshots"


def test_a_worker_whose_updates_were_deleted_by_retention_says_so(kafka_bootstrap, new_topic, caplog):
    """A checkpoint older than the update topic's retention: the records it needs are gone, and
    the log says so (its video state misses them) rather than passing over it in silence."""
    topic = new_topic("updates")
    peer = VideoReplica(ReplicatedRanker())
    peer.model.learn_many(stream("synthetic", 300))
    records = peer.take().records(20_000)
    assert len(records) >= 3
    producer_headers = [(UPDATE_HEADER, b"peer")]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for value in records:
        producer.send(topic, key=b"peer", value=value, headers=producer_headers)
    producer.flush()
    producer.close()
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.delete_records({TopicPartition(topic, 0): 2})
    admin.close()
    config = ServiceConfig(
        bootstrap_servers=kafka_bootstrap, sync_every=1024, sync_topic=topic, worker_id="me"
    )
    exchange = UpdateExchange(config, VideoReplica(ReplicatedRanker()))
    exchange.restored, exchange.offsets = True, {0: 1}  # as loaded from an old checkpoint
    caplog.set_level(logging.WARNING)
    exchange.connect()
    try:
        assert "deleted by the topic's retention" in caplog.text
        # It reads on from the first record kept (to the topic's end, before learning anything).
        assert exchange.read == len(records) - 2
        assert exchange._reader.position(TopicPartition(topic, 0)) == len(records)
    finally:
        exchange.close()
