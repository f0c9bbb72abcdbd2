"""Publishing under exactly-once when the worker stalls or leaves the group (on the broker).

A transaction left open past the producer's transaction timeout (the process stalled: a long
pause, a frozen VM) is aborted by the brokers, which fence the producer with the error a second
process of the worker's name gets too: :class:`consumer.publish.TransactionTimedOut` tells the
two apart, so the service renews its producer and rolls back instead of stopping with the wrong
cause. And a worker expelled from the group (its generation gone) must not commit offsets in a
transaction: the brokers take offsets sent without a generation unchecked, over the new owner's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

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
