"""The service's Kafka clients: one producer and one group consumer, made from the config.

:func:`connect` makes both (and the output topics, if missing), waiting with
:func:`consumer.backoff.retry` while the brokers cannot be reached.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from consumer import records
from consumer.backoff import retry
from consumer.config import ServiceConfig
from consumer.logs import fields
from consumer.topics import OutputTopics, ensure_output_topics
from contract import group_fencing, group_join
from contract.connection import FailureWatch, explain_failure

__all__ = [
    "connect",
    "make_producer",
    "make_producer_options",
    "make_consumer",
    "make_reader",
    "read_between",
    "close_quietly",
    "BOOTSTRAP_TIMEOUT_MS",
]

log = logging.getLogger(__name__)


class BrokerRefused(KafkaError):
    """The brokers answered but refused this client (credentials, certificate, protocol)."""

    retriable = True  # a password rotated or an ACL granted fixes it without a restart


#: How long one connection attempt waits before the service logs and backs off.
BOOTSTRAP_TIMEOUT_MS = 5000
#: kafka-python backs off up to 30 s between reconnects; after a broker outage that delays
#: recovery and lets the group session expire. Java's client caps it at 1 s.
RECONNECT_BACKOFF_MAX_MS = 1000
#: How often the consumer refreshes the topics' metadata (new topics, new partitions).
METADATA_MAX_AGE_MS = 5000
#: The first wait before connecting again; later ones double (see :mod:`consumer.backoff`).
CONNECT_FIRST_DELAY_S = 0.5
#: The longest the brokers hold a fetch that finds no new records. kafka-python keeps one fetch
#: in flight per broker, for every partition it has no records of at hand: once one partition is
#: read to its end (a caught-up service, or the last partition of a backlog), a fetch for it
#: alone waits this long while the records of the others wait behind it. kafka-python's 500 ms
#: was a 0.2-0.5 s stall of the whole consumer at such moments; a fetch that finds records
#: returns at once whatever this is. Each idle round costs the broker one small request.
FETCH_MAX_WAIT_MS = 50
#: Heartbeats of a group member (at most a third of the session timeout): one small request
#: a second per worker.
HEARTBEAT_INTERVAL_MS = 1000
#: How long the output producer lets a partition's records gather before it sends them, and
#: the most bytes it sends as one batch. The service flushes at the end of every poll, so a
#: caught-up service never waits this out; a busy one sends fewer, larger requests. Measured
#: here with 590-byte lists, partition given, in one run: 59k lists/s with 20 ms and 512 KiB
#: or 1 MiB, 47k/s with 256 KiB; in another, 44k/s with 5 ms and 256 KiB, and the defaults
#: before (2 ms, kafka-python's 16 KiB, partition computed by kafka-python) 10k/s. 512 KiB
#: stays well under the brokers' default limit of a batch (``message.max.bytes``, 1 MiB + 12).
OUTPUT_LINGER_MS = 20
OUTPUT_BATCH_BYTES = 512 * 1024

#: How long the brokers keep a transaction open without word from its producer before they
#: abort it. A worker killed inside one holds every ``read_committed`` reader of its partitions
#: (the lists' readers, a moved partition's changelog restore) until then: 10 s, as Kafka
#: Streams sets it under exactly-once, not the client default of a minute. A transaction here
#: spans one poll's batches, milliseconds to a second.
TRANSACTION_TIMEOUT_MS = 10_000


def make_producer_options(config: ServiceConfig, batch_limit: int | None = None) -> dict[str, object]:
    """kafka-python settings of the output producer: ``acks=all``; idempotent, or transactional
    with ``exactly_once`` (:data:`TRANSACTION_TIMEOUT_MS`); ``output_compression``; batched by
    :data:`OUTPUT_LINGER_MS` and :data:`OUTPUT_BATCH_BYTES`, or ``batch_limit`` when smaller: the
    largest batch the topics it writes take (:attr:`consumer.topics.OutputTopics.batch_limit`).
    A larger batch is refused by the brokers and split by kafka-python, whose ``flush`` then
    fails ("Future not done") or never returns: publishing would stop at the first full batch."""
    options = {
        **config.kafka.client_options(),
        "client_id": f"streamrec-{config.worker}",
        "acks": "all",
        "linger_ms": OUTPUT_LINGER_MS,
        "batch_size": min(OUTPUT_BATCH_BYTES, batch_limit or OUTPUT_BATCH_BYTES),
        "compression_type": None if config.output_compression == "none" else config.output_compression,
        "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
    }
    if config.exactly_once:
        options["transactional_id"] = f"streamrec-{config.worker}"
        options["transaction_timeout_ms"] = TRANSACTION_TIMEOUT_MS
    else:
        options["enable_idempotence"] = True
    return options


def make_producer(config: ServiceConfig, batch_limit: int | None = None) -> KafkaProducer:
    """The output producer (:func:`make_producer_options`), transactions initialised under exactly-once."""
    producer = KafkaProducer(**make_producer_options(config, batch_limit))
    if config.exactly_once:
        producer.init_transactions()
    return producer


def consumer_options(config: ServiceConfig) -> dict:
    """kafka-python settings of the service's group member (:func:`make_consumer`)."""
    return dict(
        **config.kafka.client_options(),
        group_id=config.group_id,
        client_id=f"streamrec-{config.worker}",
        enable_auto_commit=False,
        auto_offset_reset=config.auto_offset_reset,
        max_poll_records=config.max_poll_records,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        session_timeout_ms=config.session_timeout_ms,
        # A member learns of a rebalance at its next heartbeat: every second, not kafka-python's
        # 3 s, so workers started together hold partitions sooner (bench/group.py: the second of
        # two joined 1.8-2.7 s after start, against 4.8-5.0 s in most runs at 3 s).
        heartbeat_interval_ms=min(HEARTBEAT_INTERVAL_MS, config.session_timeout_ms // 3),
        group_instance_id=f"streamrec-{config.worker}" if config.static_membership else None,
        isolation_level="read_committed",
        bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
        reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
        # A group member learns of a topic's partitions from its metadata: kafka-python refreshes
        # it every 5 minutes by default, so a service started before its input topic existed (or
        # whose first metadata missed a just-created topic) sat idle that long. Now seconds.
        metadata_max_age_ms=METADATA_MAX_AGE_MS,
        # Waiting for a missing input topic must not create it: a broker that allows it would
        # make it with its default partitions, and the producer meant to create it finds it made.
        allow_auto_create_topics=False,
    )


def make_consumer(config: ServiceConfig, listener: ConsumerRebalanceListener) -> KafkaConsumer:
    """A group member subscribed to the input topic: manual commits, ``read_committed``; with
    kafka-python's lost group joins (:mod:`contract.group_join`) and unnoticed fencing
    (:mod:`contract.group_fencing`) fixed."""
    group_join.install()
    group_fencing.install()
    consumer = KafkaConsumer(**consumer_options(config))
    no_auto_create(consumer)
    if config.compiled_records:
        records.install(consumer)
    # The topic's partitions known before the first join: a group leader whose metadata lacks
    # them assigns nothing and rejoins when they arrive. Under --static-membership, a
    # same-named process replacing that leader in between would inherit the empty assignment
    # and, not being told it leads (JoinGroup before v9), never rejoin: no partitions, ever.
    consumer.partitions_for_topic(config.input_topic)
    consumer.subscribe([config.input_topic], listener=listener)
    return consumer


def no_auto_create(client: KafkaConsumer) -> None:
    """Make ``allow_auto_create_topics=False`` hold: kafka-python 3.0 builds its cluster
    metadata without that option, so its metadata requests still let the broker create any
    topic they name. Set where the requests read it, before the client names a topic."""
    cluster = getattr(client, "_cluster", None)
    if cluster is not None and "allow_auto_create_topics" in getattr(cluster, "config", {}):
        cluster.config["allow_auto_create_topics"] = False


def make_reader(config: ServiceConfig, role: str, isolation_level: str = "read_committed") -> KafkaConsumer:
    """A consumer of no group, for the service's own topics it reads whole partitions of (the
    update topic, the changelog, the snapshots): assigned by the caller, nothing committed, and
    fetches large enough for records near the 1 MB limit."""
    reader = KafkaConsumer(
        **config.kafka.client_options(),
        client_id=f"streamrec-{config.worker}-{role}",
        group_id=None,
        enable_auto_commit=False,
        isolation_level=isolation_level,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        allow_auto_create_topics=False,
    )
    no_auto_create(reader)
    if config.compiled_records:  # a changelog restored after a handover is many small records
        records.install(reader)
    return reader


def read_between(
    reader: KafkaConsumer,
    starts: Mapping[TopicPartition, int | None],
    ends: Mapping[TopicPartition, int],
    timeout_s: float,
    max_records: int | None = None,
) -> Iterator[tuple[TopicPartition, list]]:
    """Assign ``reader`` the partitions of ``ends``, each from ``starts[tp]`` (``None``: its
    beginning), and yield ``(partition, records)`` batch by batch until every one's position
    has reached ``ends[tp]`` (a batch may run past it: the caller decides); ``TimeoutError``
    after ``timeout_s``."""
    partitions = list(ends)
    reader.assign(partitions)
    for tp in partitions:
        first = starts.get(tp)
        if first is None:
            reader.seek_to_beginning(tp)
        else:
            reader.seek(tp, first)
    deadline = time.monotonic() + timeout_s
    remaining = [tp for tp in partitions if reader.position(tp) < ends[tp]]
    while remaining:
        if time.monotonic() > deadline:
            topics = sorted({tp.topic for tp in partitions})
            raise TimeoutError(f"{', '.join(topics)}: not read up to {dict(ends)} in {timeout_s} s")
        yield from reader.poll(timeout_ms=200, max_records=max_records).items()
        remaining = [tp for tp in remaining if reader.position(tp) < ends[tp]]


def close_quietly(*clients: KafkaProducer | KafkaConsumer | None) -> None:
    """Close each client that exists; closing is best effort on the way out."""
    for client in clients:
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - a client that fails to close is gone anyway
                log.debug("close failed", exc_info=True)


def close_abandoned(producer: KafkaProducer, timeout_s: float = 5.0) -> None:
    """Close a producer whose transaction the brokers aborted, batches and all, and make sure its
    IO thread stops: left running, it bumps the epoch of the transactional id the new producer
    shares (fencing it, again and again). kafka-python 3.0's ``close`` raises from its first
    step, a flush, when batches cannot complete, and never stops the thread then."""
    try:
        producer.close(timeout=timeout_s)
    except Exception:  # noqa: BLE001 - any failure here leaves the same thread to stop
        log.debug("close failed; forcing the producer's IO thread to stop", exc_info=True)
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()
            sender.join(timeout_s)


def fetched_to(consumer: KafkaConsumer, partition: TopicPartition) -> int | None:
    """The offset ``consumer`` returns records of ``partition`` from next (past transaction
    markers and aborted records, which a poll never returns), ``None`` when not known. Read from
    kafka-python's subscription state: ``KafkaConsumer.position`` may first ask the group
    coordinator for committed offsets, a round trip this worker's loop cannot wait for."""
    subscription = getattr(consumer, "_subscription", None)
    state = subscription.assignment.get(partition) if subscription is not None else None
    return getattr(getattr(state, "position", None), "offset", None)


def connect(
    config: ServiceConfig, listener: ConsumerRebalanceListener, wait: Callable[[float], bool]
) -> tuple[KafkaProducer, KafkaConsumer, OutputTopics]:
    """The output topics, then the producer and the consumer, retried while Kafka is unreachable.

    ``wait(seconds)`` waits between attempts and returns true to give up (the service is
    stopping): :class:`consumer.backoff.Interrupted` is raised then.
    """

    watch = FailureWatch.install()

    def attempt() -> tuple[KafkaProducer, KafkaConsumer, OutputTopics]:
        watch.take()  # a reason from an earlier attempt is not this one's
        try:
            outputs = ensure_output_topics(config, timeout_ms=BOOTSTRAP_TIMEOUT_MS)
            producer = make_producer(config, outputs.batch_limit)
            try:
                return producer, make_consumer(config, listener), outputs
            except KafkaError:
                close_quietly(producer)
                raise
        except KafkaError as err:
            # kafka-python only logged why (a refused login, an untrusted certificate) and
            # raised a time-out: say the reason in the service's own warning.
            reason = explain_failure(config.kafka, watch.take())
            if reason is None:
                raise
            raise BrokerRefused(reason) from err

    log.info("connecting to Kafka", extra=fields(**config.kafka.describe()))
    return retry(
        attempt,
        message="Kafka unreachable; retrying",
        retriable=lambda err: True,
        first=CONNECT_FIRST_DELAY_S,
        wait=wait,
        bootstrap=config.bootstrap_servers,
    )
