"""The update topic's generation fence (issue 12): a worker expelled alive sends no learning twice.

A worker frozen past the session timeout is expelled, and its partitions' new owner relearns
what the update topic lacks of them. Thawed, the expelled worker may still send updates (the
poll it was in, a send in flight). Every update record names the group generation its sender
held, a new owner sends a fence naming its newer generation before it decides, and every reader
drops what came after the fence under an older generation. Here: the rule, the reader on the
broker, and the fence kept by checkpoints and snapshots. The frozen worker itself, on the
broker, is in ``tests/test_sync.py``.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
from kafka import KafkaProducer

from consumer.config import ServiceConfig
from consumer.snapshot import ChunkRef, Manifest
from consumer.sync import (
    GENERATION_HEADER,
    THROUGH_HEADER,
    UPDATE_HEADER,
    GenerationFence,
    Through,
    UpdateExchange,
    admitted,
)
from model.replica import ReplicatedRanker, VideoReplica
from tests.streams import stream
from tests.test_snapshots import state


def update(generation: int, offset: int) -> SimpleNamespace:
    return SimpleNamespace(offset=offset, headers=[(GENERATION_HEADER, str(generation).encode())])


def fence(generation: int, offset: int) -> SimpleNamespace:
    return SimpleNamespace(offset=offset, headers=GenerationFence.fence_headers("new-owner", generation))


def test_what_counts_depends_on_the_fence_before_it_in_the_topic():
    records = [
        update(1, 0),  # before any fence
        fence(2, 1),  # a new owner took partitions over in generation 2
        update(1, 2),  # the expelled worker, thawed: dropped
        update(2, 3),
        fence(-1, 4),  # sent by a worker out of the group: fences nothing
        update(1, 5),  # still dropped
        fence(1, 6),  # the group was deleted and made again: generations start over
        update(1, 7),
        SimpleNamespace(offset=8, headers=[]),  # a version that did not say
    ]
    assert [r.offset for r in admitted(records)] == [0, 3, 7, 8]


def test_a_reader_drops_the_updates_sent_after_a_fence_under_an_older_generation(kafka_bootstrap, new_topic):
    """The reader applies what came before the fence and what its generation sent after; the
    expelled worker's late record changes neither the video state nor how far the group's
    learning of its partition goes (the new owner relearns from there)."""
    topic = new_topic("updates")
    peer = VideoReplica(ReplicatedRanker())
    events = stream("synthetic", 600)
    peer.model.learn_many(events[:300])
    sent_in_time = peer.take()
    peer.model.learn_many(events[300:])
    sent_late = peer.take()

    def headers(generation: int, through: int) -> list[tuple[str, bytes]]:
        return [
            (UPDATE_HEADER, b"expelled"),
            (GENERATION_HEADER, str(generation).encode()),
            (THROUGH_HEADER, Through({0: through}).encode()),
        ]

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    producer.send(topic, key=b"expelled", value=sent_in_time.to_bytes(), headers=headers(4, 300))
    producer.send(topic, key=b"new-owner", value=b"", headers=GenerationFence.fence_headers("new-owner", 5))
    producer.send(topic, key=b"expelled", value=sent_late.to_bytes(), headers=headers(4, 600))
    producer.flush()
    producer.close()

    config = ServiceConfig(
        bootstrap_servers=kafka_bootstrap, sync_every=1024, sync_topic=topic, worker_id="me"
    )
    exchange = UpdateExchange(config, VideoReplica(ReplicatedRanker()))
    exchange.snapshot_every_s = 0
    exchange.connect()
    try:
        assert (exchange.applied, exchange.fence.generation, exchange.fence.dropped) == (1, 5, 1)
        assert exchange.sent_through == {0: 300}
        expected = VideoReplica(ReplicatedRanker())
        expected.apply(sent_in_time)
        got, want = state(exchange.replica), state(expected)
        assert got["ids"] == want["ids"]
        for name in want:
            if name != "ids":
                np.testing.assert_array_equal(got[name], want[name], err_msg=name)

        # A checkpoint keeps the fence with the offsets it goes with: a restarted reader reading
        # on from them drops what its peers drop.
        restored = UpdateExchange(config, VideoReplica(ReplicatedRanker()))
        restored.load_arrays(exchange.to_arrays())
        assert (restored.offsets, restored.fence.generation) == ({0: 3}, 5)
    finally:
        exchange.close()


def test_a_checkpoint_or_snapshot_from_before_the_fence_starts_without_one():
    exchange = UpdateExchange(ServiceConfig(sync_every=1024), VideoReplica(ReplicatedRanker()))
    arrays = exchange.to_arrays()
    del arrays["update_fence"]
    exchange.load_arrays(arrays)
    assert exchange.fence.generation == -1

    manifest = Manifest("s1", "w", 1.0, {0: 12}, [ChunkRef("chunk/w/0/0", 3, 0)], 1, fence=9)
    assert Manifest.from_bytes(manifest.to_bytes()) == manifest
    old = json.loads(manifest.to_bytes())
    del old["fence"]
    assert Manifest.from_bytes(json.dumps(old).encode()).fence == -1


def test_every_record_sent_names_the_generation_its_sender_holds():
    exchange = UpdateExchange(ServiceConfig(sync_every=100, worker_id="w"), VideoReplica(ReplicatedRanker()))
    exchange.generation = lambda: 7
    events = stream("synthetic", 200)
    exchange.replica.model.learn_many(events)
    exchange.learned(len(events))
    messages = exchange.outgoing()
    assert messages
    for _topic, key, _value, headers in messages:
        assert key == b"w" and dict(headers)[GENERATION_HEADER] == b"7"
    topic, key, value, headers = exchange.fence_message()
    assert (key, value, dict(headers)[GENERATION_HEADER]) == (b"w", b"", b"7")
    assert not GenerationFence().admits(dict(headers))  # a fence carries nothing to apply


def test_a_checkpoint_of_another_update_topic_starts_the_exchange_anew(caplog):
    """The update topic is named after the group since 2026-12-01 (before: after the input
    alone), and --sync-topic can rename it: offsets saved for one topic mean nothing on another.
    The worker then takes its restored video state as agreed and reads the new topic from its
    start; given the old name, it carries on where it was."""
    old = UpdateExchange(
        ServiceConfig(sync_every=1024, sync_topic="watch-events-video-updates"),
        VideoReplica(ReplicatedRanker()),
    )
    old.offsets, old.sent_through, old.reach_known = {0: 40, 1: 7}, {0: 900}, True
    saved = old.to_arrays()
    legacy = {name: values for name, values in saved.items() if name != "update_topic"}  # an older version's

    for arrays in (saved, legacy):
        renamed = UpdateExchange(ServiceConfig(sync_every=1024), VideoReplica(ReplicatedRanker()))
        assert renamed.topic == "streamrec-watch-events-video-updates"
        renamed.load_arrays(arrays)
        assert (renamed.offsets, renamed.sent_through, renamed.reach_known) == ({}, {}, True)
        assert renamed.restored  # still no snapshot: the restored model is its state
    assert "exchanging updates on another topic" in caplog.text

    kept = UpdateExchange(
        ServiceConfig(sync_every=1024, sync_topic="watch-events-video-updates"),
        VideoReplica(ReplicatedRanker()),
    )
    kept.load_arrays(legacy)
    assert (kept.offsets, kept.sent_through) == ({0: 40, 1: 7}, {0: 900})


def test_a_checkpoint_older_than_the_record_of_its_topic_was_on_the_topic_given_then():
    """``--sync-topic`` given before and after the upgrade: the checkpoint, which does not say
    its topic, was on that one; starting anew there read every update twice."""
    old = UpdateExchange(
        ServiceConfig(sync_every=1024, sync_topic="orders-sync"), VideoReplica(ReplicatedRanker())
    )
    old.offsets, old.sent_through, old.reach_known = {0: 12}, {0: 300}, True
    legacy = {name: values for name, values in old.to_arrays().items() if name != "update_topic"}
    same = UpdateExchange(
        ServiceConfig(sync_every=1024, sync_topic="orders-sync"), VideoReplica(ReplicatedRanker())
    )
    same.load_arrays(legacy)
    assert (same.offsets, same.sent_through) == ({0: 12}, {0: 300})
