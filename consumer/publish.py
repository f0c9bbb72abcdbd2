"""Delivering one batch: its recommendation lists and dead letters out, its input offsets committed.

:meth:`Publisher.deliver` keeps the service's delivery guarantee, in one of two modes:

* **at least once** (the default): every message is sent and acknowledged by the brokers
  (``acks=all``), the unacknowledged ones sent again until none is left, and only then are the
  offsets committed. A crash in between republishes the batch's lists, each an overwrite of
  the same viewer's key;
* **exactly once** (``exactly_once``): messages and offsets commit in one Kafka transaction;
  readers with ``isolation_level=read_committed`` see each list once.

Brokers that cannot be reached are waited for (:func:`consumer.backoff.retry`). A commit the
group refuses (``CommitFailedError``: it moved on without this worker) is raised to the service,
which rolls its model back (see :mod:`consumer.ledger`).
"""

from __future__ import annotations

from collections.abc import Sequence

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from consumer.backoff import retry

__all__ = ["Message", "Publisher", "NotAcknowledged"]

#: One record to publish: topic, key, value, headers.
Message = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None]


class NotAcknowledged(KafkaError):
    """Some messages of a batch were not acknowledged by the brokers; they are sent again."""

    retriable = True


class Publisher:
    """Sends a batch's messages with ``producer`` and commits its offsets for ``consumer``'s group."""

    def __init__(self, producer: KafkaProducer, consumer: KafkaConsumer, exactly_once: bool) -> None:
        self.producer = producer
        self.consumer = consumer
        self.exactly_once = exactly_once

    def deliver(self, messages: Sequence[Message], offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        """Publish ``messages``, then commit ``offsets``: in one transaction, or acknowledged first."""
        if self.exactly_once:
            self._transaction(messages, offsets)
        else:
            self._send_until_acknowledged(messages)
            self._commit(offsets)

    def _transaction(self, messages: Sequence[Message], offsets: dict) -> None:
        producer = self.producer
        producer.begin_transaction()
        try:
            for topic, key, value, headers in messages:
                producer.send(topic, key=key, value=value, headers=headers)
            producer.send_offsets_to_transaction(offsets, self.consumer.group_metadata())
            producer.commit_transaction()
        except KafkaError:
            # Left open, the failed transaction puts the producer in an error state where every
            # later begin_transaction raises. Aborted, no read_committed reader sees its lists;
            # a CommitFailedError then rolls the model back (see consumer.ledger).
            producer.abort_transaction()
            raise

    def _send_until_acknowledged(self, messages: Sequence[Message]) -> None:
        pending = list(messages)

        def send_pending() -> None:
            nonlocal pending
            producer = self.producer
            futures = [(m, producer.send(m[0], key=m[1], value=m[2], headers=m[3])) for m in pending]
            producer.flush()
            pending = [m for m, f in futures if f.failed()]
            if pending:
                raise NotAcknowledged(f"{len(pending)} of {len(futures)} messages not acknowledged")

        if pending:
            retry(
                send_pending,
                message="publish failed; retrying",
                retriable=lambda err: isinstance(err, NotAcknowledged),
            )

    def _commit(self, offsets: dict) -> None:
        """Commit, waiting while the brokers cannot be reached.

        kafka-python raises a retriable error (``KafkaConnectionError``) when the brokers go
        away during a commit; a commit the group refuses (``CommitFailedError``) is not
        retriable and is raised.
        """
        retry(lambda: self.consumer.commit(offsets), message="commit failed; retrying")
