"""Send watch events to a Kafka topic: the producer side of the wire contract.

Each event becomes one message: key = the viewer id (UTF-8), so one viewer's events stay in one
partition and in order; value = :func:`contract.schema.event_to_json`. The record timestamp is
left to the producer (the send time): replayed files carry timestamps from years ago, and a
broker would delete records that old at once under time-based retention.

Settings favour not losing or duplicating events over latency: ``acks=all`` with the idempotent
producer (retries cannot duplicate or reorder), and a few milliseconds of ``linger`` so messages
travel in batches (one request per batch, not per event). Delivery failures are counted, not
raised one by one; :meth:`KafkaSink.flush` waits for every pending acknowledgement.

Sources stay Kafka-free (:mod:`producer.synth`, :mod:`producer.readers`); this module is the only
one in ``producer/`` that imports kafka-python.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError
from kafka.partitioner.default import DefaultPartitioner
from kafka.producer.future import FutureRecordMetadata

from contract.connection import FailureWatch, KafkaConnection
from contract.defaults import INPUT_TOPIC
from contract.errors import UserError
from contract.events import WatchEvent
from contract.schema import event_to_json

__all__ = ["KafkaSink", "BrokerUnavailable", "DeliveryStats", "TopicRefused", "ensure_topic"]

log = logging.getLogger(__name__)


class _MemoPartitioner(DefaultPartitioner):
    """Kafka's default key partitioning (murmur2, as the Java client), remembered per key.

    kafka-python hashes every key in pure Python; a stream has far fewer viewers than events,
    so remembering the partition of each (topic, key, partition count) saves that work on all
    but the first event of each viewer, and the result is the same as without the memo.
    """

    def __init__(self, max_keys: int = 1_000_000) -> None:
        self._memo: dict[tuple[str, bytes, int], int] = {}
        self._max_keys = max_keys

    def partition(self, topic, key, serialized_key, value, serialized_value, cluster):
        if serialized_key is None:
            return super().partition(topic, key, serialized_key, value, serialized_value, cluster)
        memo_key = (topic, bytes(serialized_key), len(cluster.partitions_for_topic(topic) or ()))
        partition = self._memo.get(memo_key)
        if partition is None:
            partition = super().partition(topic, key, serialized_key, value, serialized_value, cluster)
            if len(self._memo) < self._max_keys:
                self._memo[memo_key] = partition
        return partition


class BrokerUnavailable(ConnectionError):
    """No broker answered at the bootstrap address within the timeout."""


class TopicRefused(UserError):
    """The broker refused to create the topic (an invalid name, a quota, an ACL): its reason."""


@dataclass
class DeliveryStats:
    """Counts of messages handed to the producer, acknowledged and failed."""

    queued: int = 0
    acked: int = 0
    failed: int = 0
    first_error: str | None = None
    errors: list[str] = field(default_factory=list, repr=False)


def ensure_topic(
    where: KafkaConnection | str, topic: str, partitions: int = 3, *, timeout_s: float = 10.0, **configs
) -> bool:
    """Create ``topic`` with ``partitions`` partitions unless it exists; True when created.

    ``where`` is a :class:`~contract.connection.KafkaConnection` or a plain bootstrap address.
    The replication factor is the broker's default (a single local broker has one copy).
    """
    connection = KafkaConnection.of(where)
    FailureWatch.fresh()
    try:
        admin = KafkaAdminClient(
            **connection.client_options(),
            bootstrap_timeout_ms=int(timeout_s * 1000),
            client_id="streamrec-producer-admin",
        )
    except KafkaTimeoutError as err:
        raise BrokerUnavailable(connection.unreachable(err)) from None
    try:
        if topic in admin.list_topics():
            return False
        try:
            admin.create_topics(
                {topic: {"num_partitions": partitions, "replication_factor": -1, "configs": configs}},
                timeout_ms=int(timeout_s * 1000),
            )
        except TopicAlreadyExistsError:
            return False  # someone else created it in between: same outcome
        except KafkaError as err:  # the broker's own words say what to change
            reason = _broker_reason(err)
            raise TopicRefused(f"the broker refused to create topic {topic!r}: {reason}") from None
        admin.wait_for_topics([topic], timeout_ms=int(timeout_s * 1000))
        log.info("created topic %s with %d partitions", topic, partitions)
        return True
    finally:
        admin.close()


def _broker_reason(err: KafkaError) -> str:
    """The broker's own message in a refused request (kafka-python puts it inside the whole
    response's text), else the error's general description.

    >>> from kafka.errors import InvalidTopicError
    >>> _broker_reason(InvalidTopicError("... error_code=17, error_message='Topic name is invalid', ..."))
    'Topic name is invalid'
    """
    found = re.search(r"error_message=(['\"])(.+?)\1", str(err))
    if found:
        return found.group(2)
    return getattr(err, "description", None) or str(err)


class KafkaSink:
    """A Kafka producer for watch events, with delivery accounting.

    Parameters
    ----------
    where
        A :class:`~contract.connection.KafkaConnection`, or just ``host:port[,host:port...]``.
    topic
        The input topic of the service.
    partitions
        Partitions to create the topic with when it does not exist (``None``: never create;
        the broker may still auto-create it with its defaults).
    connect_timeout_s
        How long to wait for a broker to answer before :class:`BrokerUnavailable`.
    linger_ms, batch_size
        Batching: how long a message may wait for companions, and the batch size in bytes.

    Use as a context manager, or call :meth:`close` (which flushes).
    """

    def __init__(
        self,
        where: KafkaConnection | str,
        topic: str = INPUT_TOPIC,
        *,
        partitions: int | None = 3,
        connect_timeout_s: float = 10.0,
        linger_ms: int = 5,
        batch_size: int = 64 * 1024,
        delivery_timeout_s: float = 30.0,
        client_id: str = "streamrec-producer",
    ) -> None:
        self.connection = connection = KafkaConnection.of(where)
        self.bootstrap_servers = connection.bootstrap_servers
        self.topic = topic
        self.stats = DeliveryStats()
        if partitions is not None:
            self.created_topic = ensure_topic(connection, topic, partitions, timeout_s=connect_timeout_s)
        request_ms = 15_000
        FailureWatch.fresh()
        try:
            self._producer = KafkaProducer(
                **connection.client_options(),
                client_id=client_id,
                partitioner=_MemoPartitioner(),
                acks="all",
                enable_idempotence=True,
                linger_ms=linger_ms,
                batch_size=batch_size,
                # kafka-python insists on delivery >= linger + request timeout.
                request_timeout_ms=request_ms,
                delivery_timeout_ms=max(int(delivery_timeout_s * 1000), linger_ms + request_ms),
                bootstrap_timeout_ms=int(connect_timeout_s * 1000),
            )
        except KafkaTimeoutError as err:
            raise BrokerUnavailable(connection.unreachable(err)) from None

    def _on_ack(self, _metadata) -> None:
        self.stats.acked += 1

    def _on_error(self, err: BaseException, messages: int = 1) -> None:
        self.stats.failed += messages
        if self.stats.first_error is None:
            self.stats.first_error = f"{type(err).__name__}: {err}"
            log.error("delivery to %s failed: %s", self.topic, self.stats.first_error)

    def send(self, event: WatchEvent) -> FutureRecordMetadata | None:
        """Queue one event (non-blocking unless the producer's buffer is full).

        Returns the delivery future (``None`` when the producer refused the message at once,
        which is counted as failed).
        """
        return self.send_raw(event.viewer.encode(), event_to_json(event))

    def send_raw(self, key: bytes | None, value: bytes | None) -> FutureRecordMetadata | None:
        """Queue one message as given (for malformed-event tests and tools)."""
        self.stats.queued += 1
        try:
            future = self._producer.send(self.topic, key=key, value=value)
        except KafkaError as err:
            self._on_error(err)
            return None
        future.add_callback(self._on_ack)
        future.add_errback(self._on_error)
        return future

    def send_many(self, events: Iterable[WatchEvent]) -> int:
        """Queue every event of ``events``; returns how many were queued."""
        before = self.stats.queued
        send = self.send
        for event in events:
            send(event)
        return self.stats.queued - before

    def flush(self, timeout_s: float | None = None) -> DeliveryStats:
        """Wait until every queued message is acknowledged or failed (or ``timeout_s`` passed);
        returns the counts.

        kafka-python's own ``flush`` can raise while batches are still in flight (after the
        broker refused a batch as too large, it splits and resends it and ``flush`` fails with
        "Future not done"): those messages are still being delivered, so it is asked again
        until nothing is pending, instead of giving up on them.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.pending > 0:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                log.error("flush timed out with %d messages pending", self.pending)
                break
            try:
                self._producer.flush(timeout=left)
            except KafkaTimeoutError as err:
                log.error("flush timed out with %d messages pending: %s", self.pending, err)
                break
            except KafkaError as err:  # still delivering: wait for the rest
                log.debug("flush interrupted (%s); %d messages still pending", err, self.pending)
                time.sleep(0.05)
        return self.stats

    @property
    def pending(self) -> int:
        """Messages queued but neither acknowledged nor failed yet."""
        return self.stats.queued - self.stats.acked - self.stats.failed

    def close(self, timeout_s: float | None = 30.0) -> DeliveryStats:
        """Flush, then close the producer; returns the final counts, in which a message still
        unacknowledged when the producer closed counts as failed (it may or may not have
        landed: the counts never claim a delivery the broker did not confirm)."""
        try:
            self.flush(timeout_s)
        finally:
            self._producer.close(timeout=timeout_s)
        unacknowledged = self.pending
        if unacknowledged > 0:
            lost = KafkaTimeoutError(f"{unacknowledged} messages unacknowledged when the producer closed")
            self._on_error(lost, unacknowledged)
        return self.stats

    def __enter__(self) -> KafkaSink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
