"""Publishing under exactly-once when the worker stalls or leaves the group (on the broker).

A transaction left open past the producer's transaction timeout (the process stalled: a long
pause, a frozen VM) is aborted by the brokers, which fence the producer with the error a second
process of the worker's name gets too: :class:`consumer.publish.TransactionTimedOut` tells the
two apart, so the service renews its producer and rolls back instead of stopping with the wrong
cause; a second process that takes the name mid-transaction is told apart after kafka-python's
own epoch bump is answered. And a worker expelled from the group (its generation gone) must not
commit offsets in a transaction: the brokers take offsets sent without a generation unchecked,
over the new owner's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from consumer.clients import consumer_options
from consumer.config import ServiceConfig
from consumer.publish import Publisher, TransactionTimedOut, fenced
from tests.service_helpers import wait_for
from tests.test_faults import read_topic


def transactional(bootstrap: str, name: str, timeout_ms: int = 60_000) -> KafkaProducer:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=name, transaction_timeout_ms=timeout_ms, acks="all"
    )
    producer.init_transactions()
    return producer


@contextmanager
def publisher_for(bootstrap: str, topic: str, timeout_ms: int = 60_000) -> Iterator[Publisher]:
    """An exactly-once publisher with a transactional producer and a consumer that never joins
    its group (its generation is -1, as an expelled worker's after kafka-python resets it)."""
    producer = transactional(bootstrap, f"t-{topic}", timeout_ms)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=f"g-{topic}")
    try:
        yield Publisher(producer, consumer, exactly_once=True)
    finally:
        producer.close(timeout=5)
        consumer.close()


def stable_end(bootstrap: str, topic: str) -> int:
    """Where a read_committed reader's view of ``topic`` ends (its last stable offset)."""
    reader = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    try:
        tp = TopicPartition(topic, 0)
        return reader.end_offsets([tp])[tp]
    finally:
        reader.close()


def test_a_transaction_aborted_for_its_age_is_told_apart_from_another_process(kafka_bootstrap, new_topic):
    topic = new_topic("out")
    with publisher_for(kafka_bootstrap, topic, timeout_ms=1000) as publisher:
        publisher.send([(topic, b"viewer", b"a list", None)])
        # The brokers abort it (their check runs every transaction.abort.timed.out.transaction.
        # cleanup.interval.ms): the abort marker moves the stable end past the record.
        assert wait_for(lambda: stable_end(kafka_bootstrap, topic) > 1, 60)
        with pytest.raises(TransactionTimedOut, match="transaction timeout"):
            publisher.flush_unattached()
        # The producer is fenced for good: every later call says so, and nothing was committed.
        with pytest.raises(TransactionTimedOut):
            publisher.send([(topic, b"viewer", b"another list", None)])
        assert read_topic(kafka_bootstrap, topic) == []


def test_a_second_process_of_the_same_name_is_not_taken_for_a_stall(kafka_bootstrap, new_topic):
    topic = new_topic("out")
    with publisher_for(kafka_bootstrap, topic) as publisher:
        publisher.send([(topic, b"viewer", b"a list", None)])
        transactional(kafka_bootstrap, f"t-{topic}").close(timeout=5)  # the other process
        with pytest.raises(KafkaError) as raised:
            publisher.flush_unattached()
        assert not isinstance(raised.value, TransactionTimedOut)
        assert fenced(raised.value) == "transactional id"


def test_a_second_process_taking_the_name_mid_transaction_is_told_apart_after_the_epoch_bump(
    kafka_bootstrap, new_topic
):
    """The other process takes the name after this transaction's first records were written: the
    brokers refuse the next records' epoch, kafka-python bumps the epoch itself (KIP-360) and its
    calls then say only that no transaction is active. The bump's answer, waited for, names the
    cause: the worker stops with the fencing, not a traceback about an invalid state."""
    topic = new_topic("out")
    with publisher_for(kafka_bootstrap, topic) as publisher:
        publisher.send([(topic, b"viewer", b"a list", None)])
        publisher.producer.flush()  # written under this transaction's epoch
        transactional(kafka_bootstrap, f"t-{topic}").close(timeout=5)  # the other process
        with pytest.raises(KafkaError) as raised:
            publisher.send([(topic, b"viewer", b"another list", None)])
            publisher.flush_unattached()
        assert not isinstance(raised.value, TransactionTimedOut)
        assert fenced(raised.value) == "transactional id", repr(raised.value)
        assert read_topic(kafka_bootstrap, topic) == []


def test_a_worker_outside_the_group_commits_no_offsets_in_a_transaction(kafka_bootstrap, new_topic):
    topic = new_topic("in")
    tp = TopicPartition(topic, 0)
    with publisher_for(kafka_bootstrap, topic) as publisher:
        publisher.send([(topic, b"viewer", b"a list", None)])
        with pytest.raises(CommitFailedError, match="not in the group"):
            publisher.deliver({tp: OffsetAndMetadata(5, "", -1)})
        assert publisher.consumer.committed(tp) is None
        assert read_topic(kafka_bootstrap, topic) == []  # the transaction was aborted
        # The producer goes on: the next transaction, with no offsets, commits.
        publisher.send([(topic, b"viewer", b"a list", None)])
        publisher.flush_unattached()
        assert len(read_topic(kafka_bootstrap, topic)) == 1


class ExpelledOnce(KafkaConsumer):
    """A real group member whose first membership snapshot is stale (another member id), as an
    expelled worker's is before a poll tells it so: the brokers refuse offsets sent with it."""

    def __init__(self, **configs) -> None:
        super().__init__(**configs)
        self.stale = True

    def group_metadata(self):
        current = super().group_metadata()
        if not self.stale:
            return current
        self.stale = False
        return current._replace(member_id=f"{current.member_id}-expelled")


def test_offsets_the_group_refused_are_never_committed_by_a_later_transaction(kafka_bootstrap, new_topic):
    """A worker expelled while busy has its transaction's offsets refused; once it rejoins, its
    next transaction commits its new poll's offsets only, not the refused ones too (kafka-python
    keeps refused offsets and sends them with the next transaction's: they overwrote the new
    owner's commits, and the group never finished its stream)."""
    topic = new_topic("in", partitions=2)
    first, second = TopicPartition(topic, 0), TopicPartition(topic, 1)
    producer = transactional(kafka_bootstrap, f"t-{topic}")
    group = {"bootstrap_servers": kafka_bootstrap, "group_id": f"g-{topic}", "enable_auto_commit": False}
    consumer = ExpelledOnce(**group)
    try:
        consumer.subscribe([topic])

        def joined() -> bool:
            consumer.poll(timeout_ms=200)
            return len(consumer.assignment()) == 2

        assert wait_for(joined, 30)
        publisher = Publisher(producer, consumer, exactly_once=True)
        publisher.send([(topic, b"viewer", b"a list", None)])
        with pytest.raises(CommitFailedError, match="UnknownMemberId"):
            publisher.deliver({first: OffsetAndMetadata(5, "", -1), second: OffsetAndMetadata(7, "", -1)})
        publisher.send([(topic, b"viewer", b"another list", None)])
        assert publisher.deliver({first: OffsetAndMetadata(9, "", -1)})
        reader = KafkaConsumer(**group)
        try:
            assert reader.committed(first) == 9
            assert reader.committed(second) is None, "a refused offset was committed by the next transaction"
        finally:
            reader.close(autocommit=False)
    finally:
        producer.close(timeout=5)
        consumer.close(autocommit=False)


class CountingConsumer(KafkaConsumer):
    """A real consumer that counts its commits: asynchronous ones, how many were unanswered
    when the next was sent, and synchronous ones (a failed commit made again)."""

    def __init__(self, **configs) -> None:
        super().__init__(**configs)
        self.in_flight: list = []
        self.most_in_flight = self.synchronous = self.sent = 0

    def commit_async(self, offsets=None, callback=None):
        self.sent += 1
        self.in_flight = [f for f in self.in_flight if not f.is_done]
        future = super().commit_async(offsets, callback)
        self.in_flight.append(future)
        self.most_in_flight = max(self.most_in_flight, len(self.in_flight))
        return future

    def commit(self, offsets=None, timeout_ms=None):
        self.synchronous += 1
        return super().commit(offsets, timeout_ms)


def test_polls_delivered_faster_than_commits_are_answered_are_all_committed_without_a_stall(
    kafka_bootstrap, new_topic
):
    """At thousands of events a second a worker delivers a poll, and sends its commit, every few
    milliseconds. kafka-python fails a request past the connection's in-flight limit at once
    ("Node paused"; passed about twice a second at 5,000 events/s), and the service made each
    failed commit again synchronously, behind a 100 ms back-off: the freshness p99. One commit
    is in flight at a time, and each poll's still goes out before the next poll."""
    topic = new_topic("commits")
    tp = TopicPartition(topic, 0)
    config = ServiceConfig(bootstrap_servers=kafka_bootstrap, group_id=f"g-{topic}", checkpoint_dir="none")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    consumer = CountingConsumer(**consumer_options(config))  # the service's settings
    consumer.assign([tp])
    publisher = Publisher(producer, consumer, exactly_once=False)
    try:
        # The group's coordinator found first, as a worker's is once it has joined its group.
        assert consumer.committed(tp) is None
        confirmed = 0
        for offset in range(1, 301):  # as the service: deliver a poll, then settle what was answered
            time.sleep(0.001)  # a poll's work: five times less than at 5,000 events/s
            publisher.send([(topic, b"viewer", b"{}", None)])
            assert publisher.deliver({tp: OffsetAndMetadata(offset, "", -1)}) is False
            assert consumer.sent == offset  # each poll's commit goes out before the next poll
            confirmed += publisher.settle()
        confirmed += publisher.settle(wait=True)
        assert confirmed == 300 and publisher.unconfirmed == 0
        assert consumer.committed(tp) == 300
        assert consumer.synchronous == 0, "a commit failed and was made again, waiting"
        assert consumer.most_in_flight == 1
    finally:
        producer.close(timeout=5)
        consumer.close()
