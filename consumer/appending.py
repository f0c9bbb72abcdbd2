"""Appending a partition's messages to the producer in one step: a list's send at a tenth of the cost.

kafka-python's ``KafkaProducer.send`` costs 8-18 us of the caller's time per record on this
machine (type checks, a size estimate, the accumulator's lock, the record's varints written
byte by byte in Python, and a ``FutureRecordMetadata`` with a lock and two callbacks), and
about 2 more on the producer's IO thread, which completes each record's future when the
brokers answer. Where every event's viewer is someone new, a worker publishes one list per
event, and that would be as much as its model's step (``bench/produce.py``).

:func:`append` takes all of one partition's messages at once. Under the accumulator's lock it
writes their records into the partition's open batch (kafka-python's own
``ProducerBatch`` and record builder, so the batch is closed, compressed, numbered for
idempotence or transactions, sent, retried and expired by kafka-python as any other) and
answers with one :class:`Appended` per batch it wrote to: the batch, the records' positions in
it. No per-record future exists: whether a record was acknowledged is read from its batch's
result (:meth:`Appended.failed`). The batches this module fills are its own subclass,
:class:`AppendedBatch`, which kafka-python's ``send`` never appends to (the records of a batch
are either all appended here or all sent by ``send``), and which makes the per-record futures
only if kafka-python needs them: when the brokers refuse a batch as too large, kafka-python
splits it and moves each record's future to the smaller batches; the outcome is then read from
those futures.

The bytes are kafka-python's: the same record encoding, the same rule for when a batch is
full (a record goes in while the batch stays within ``batch_size``, and always as a batch's
first), the same header and compression at close (the tests compare whole batches byte for
byte). Records with headers, without a key or a value, or larger than the producer's
``max_request_size`` are not for this path: the caller sends them with ``send``
(:func:`appendable`). Like the record reader (:mod:`consumer.records`), this relies on
kafka-python 3.0's producer internals; :func:`fits` says whether a producer has them, and the
caller falls back to ``send`` when it does not.

>>> from kafka.producer.record_accumulator import RecordAccumulator
>>> from kafka.structs import TopicPartition
>>> accumulator = RecordAccumulator(batch_size=1024)
>>> tp = TopicPartition("lists", 0)
>>> appended, wake = append_records(accumulator, tp, [(b"ann", b"[1,2]"), (b"bob", b"[3]")], 1000)
>>> [(a.first, a.count) for a in appended], wake, appended[0].batch.record_count
([(0, 2)], True, 2)
>>> appended[0].batch.done(base_offset=40, timestamp_ms=-1)
True
>>> appended[0].failed()
[]
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from kafka.errors import IllegalStateError
from kafka.producer.future import FutureRecordMetadata
from kafka.producer.producer_batch import ProducerBatch
from kafka.producer.record_accumulator import RecordAccumulator
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecordsBuilder
from kafka.record.util import encode_varint
from kafka.structs import TopicPartition

__all__ = ["Appended", "AppendedBatch", "append", "append_records", "appendable", "fits"]

#: Zigzag varints of 0 .. 8,191, as bytes: every length, offset delta and timestamp delta of a
#: list (a batch of 512 KiB holds under a thousand), looked up instead of encoded.
_SMALL = 8192


def _encode_varint(value: int) -> bytes:
    """Kafka's zigzag varint of ``value``, by kafka-python's own encoder."""
    out = bytearray()
    encode_varint(value, out.append)
    return bytes(out)


_VARINTS = [_encode_varint(i) for i in range(_SMALL)]


def _varint(value: int) -> bytes:
    return _VARINTS[value] if 0 <= value < _SMALL else _encode_varint(value)


class AppendedBatch(ProducerBatch):
    """A producer batch filled by :func:`append_records`: no future per record unless kafka-python
    splits the batch (then it asks for them, and moves them to the batches it splits into)."""

    def __init__(self, tp: TopicPartition, records: MemoryRecordsBuilder, now: float | None = None) -> None:
        self._split_futures: list[FutureRecordMetadata] | None = None
        super().__init__(tp, records, now=now)

    @property
    def _record_futures(self) -> list[FutureRecordMetadata]:
        # Only kafka-python's split reads this (RecordAccumulator.split_and_reenqueue): one
        # future per record, which it rebinds to the smaller batches.
        if self._split_futures is None:
            self._split_futures = [
                FutureRecordMetadata(self.produce_future, i, -1, None, -1, -1, -1)
                for i in range(self.record_count)
            ]
        return self._split_futures

    @_record_futures.setter
    def _record_futures(self, futures: list) -> None:
        pass  # ProducerBatch.__init__ sets an empty list; the futures are made when asked for

    def try_append(self, timestamp_ms, key, value, headers, now=None):  # noqa: ANN001, ANN201
        return None  # kafka-python's send starts a batch of its own: see the module's docstring


class Appended:
    """Records ``first`` to ``first + count - 1`` of ``batch``: what one :func:`append_records`
    wrote to one batch."""

    __slots__ = ("batch", "first", "count")

    def __init__(self, batch: AppendedBatch, first: int, count: int) -> None:
        self.batch, self.first, self.count = batch, first, count

    @property
    def done(self) -> bool:
        """Whether every record's outcome is known (the batch, or the ones it was split into, answered)."""
        if self.batch.produce_future.is_done:
            return True
        split = self.batch._split_futures
        return split is not None and all(split[i].is_done for i in self._positions())

    def failed(self) -> list[int]:
        """Positions (``0 .. count - 1``) of the records not acknowledged: failed, aborted,
        expired, or not answered yet."""
        future = self.batch.produce_future
        if future.is_done:
            record_error = future.value[2]
            if record_error is None:
                return []
            return [i for i in range(self.count) if record_error(self.first + i) is not None]
        split = self.batch._split_futures
        if split is None:
            return list(range(self.count))
        return [i for i, at in enumerate(self._positions()) if not split[at].succeeded()]

    def _positions(self) -> range:
        return range(self.first, self.first + self.count)


def _new_batch(accumulator: RecordAccumulator, tp: TopicPartition, now: float) -> AppendedBatch:
    config = accumulator.config
    records = MemoryRecordsBuilder(
        config["message_version"], config["compression_attrs"], config["batch_size"]
    )
    return AppendedBatch(tp, records, now=now)


def append_records(
    accumulator: RecordAccumulator,
    tp: TopicPartition,
    records: Sequence[tuple[bytes, bytes]],
    timestamp_ms: int,
    now: float | None = None,
) -> tuple[list[Appended], bool]:
    """Append ``records`` (key, value; no headers) to ``tp``'s batches, all stamped ``timestamp_ms``;
    the batches written to, and whether one was started or filled (the producer's sender should
    wake, as ``send`` wakes it).

    Fills the partition's last batch while it is one of ours and open, then new ones, each up to
    the accumulator's ``batch_size`` as kafka-python's record builder would.
    """
    now = time.monotonic() if now is None else now
    out: list[Appended] = []
    wake = False
    accumulator._appends_in_progress.increment()
    try:
        with accumulator._tp_lock(tp):
            if accumulator._closed:
                raise IllegalStateError("RecordAccumulator is closed")
            queue = accumulator._batches[tp]
            batch = queue[-1] if queue else None
            if not isinstance(batch, AppendedBatch) or batch.records._closed:
                batch = None
            at = 0
            while at < len(records):
                if batch is None:
                    batch = _new_batch(accumulator, tp, now)
                    queue.append(batch)
                    accumulator._incomplete.add(batch)
                    wake = True
                taken = _fill(batch, records, at, timestamp_ms, now)
                if taken:
                    out.append(Appended(batch, batch.record_count - taken, taken))
                    at += taken
                if at < len(records):
                    batch = None  # full: the rest go to a new one
            if batch is not None and batch.records.is_full():  # under the lock: not closed meanwhile
                wake = True
    finally:
        accumulator._appends_in_progress.decrement()
    return out, wake


def _fill(
    batch: AppendedBatch, records: Sequence[tuple[bytes, bytes]], at: int, timestamp_ms: int, now: float
) -> int:
    """Write records from ``at`` into ``batch`` while they fit; how many it took."""
    memory = batch.records
    builder: DefaultRecordBatchBuilder = memory._builder
    buffer = builder._buffer
    limit = builder._batch_size - len(buffer)
    first_in_batch = builder._num_records == 0
    first_timestamp = timestamp_ms if first_in_batch else builder._first_timestamp
    stamp = _varint(timestamp_ms - first_timestamp)
    offset = memory._next_offset
    parts: list[bytes] = []
    add = parts.extend
    written = largest = 0
    end = len(records)
    taken = 0
    while at + taken < end:
        key, value = records[at + taken]
        key_length, value_length = _varint(len(key)), _varint(len(value))
        offset_delta = _varint(offset + taken)
        body = (
            2 + len(stamp) + len(offset_delta) + len(key_length) + len(key) + len(value_length) + len(value)
        )
        length = _varint(body)
        size = len(length) + body
        if written + size > limit and not (first_in_batch and taken == 0):
            break
        add((length, b"\x00", stamp, offset_delta, key_length, key, value_length, value, b"\x00"))
        written += size
        largest = max(largest, size)
        taken += 1
    if taken:
        if first_in_batch:
            builder._first_timestamp = builder._max_timestamp = timestamp_ms
        elif builder._max_timestamp < timestamp_ms:
            builder._max_timestamp = timestamp_ms
        buffer += b"".join(parts)
        builder._num_records += taken
        builder._last_offset = offset + taken - 1
        memory._next_offset = offset + taken
        batch.max_record_size = max(batch.max_record_size, largest)
        batch.last_append = now
    return taken


#: The most kafka-python's size estimate of a record in a batch of its own adds to its key and
#: value (what ``send`` holds against ``max_request_size``): the batch header, the record's
#: fixed overhead, the key's and the value's length varints at their longest (5 bytes under
#: 2**35) and the header count.
_MOST_OVERHEAD = (
    DefaultRecordBatchBuilder.HEADER_STRUCT.size + DefaultRecordBatchBuilder.MAX_RECORD_OVERHEAD + 11
)


def appendable(key: bytes | None, value: bytes | None, headers: object, max_request_size: int) -> bool:
    """Whether a message can take this path: key and value bytes, no headers, and small enough
    that ``send`` would not refuse it (with every varint of its size estimate at its longest; a
    record near the limit goes through ``send``, which refuses it or not)."""
    return (
        type(key) is bytes
        and type(value) is bytes
        and not headers
        and len(key) + len(value) + _MOST_OVERHEAD <= max_request_size
    )


#: What :func:`_fill` writes of kafka-python's record builder.
_BUILDER_SLOTS = {
    "_buffer",
    "_batch_size",
    "_num_records",
    "_first_timestamp",
    "_max_timestamp",
    "_last_offset",
}


def fits(producer: object) -> bool:
    """Whether ``producer`` (a ``KafkaProducer``) is kafka-python 3.0's, whose internals
    :func:`append` writes to: an accumulator of v2 batches, without a custom serializer."""
    accumulator = getattr(producer, "_accumulator", None)
    config = getattr(producer, "config", {})
    return (
        type(accumulator) is RecordAccumulator
        and accumulator.config.get("message_version") == 2
        and hasattr(accumulator, "_appends_in_progress")
        and hasattr(accumulator, "_incomplete")
        and getattr(producer, "_sender", None) is not None
        and config.get("key_serializer") is None
        and config.get("value_serializer") is None
        and set(ProducerBatch.__init__.__code__.co_varnames[:4]) == {"self", "tp", "records", "now"}
        and set(DefaultRecordBatchBuilder.__slots__) >= _BUILDER_SLOTS
    )


def append(
    producer: object, topic: str, partition: int, records: Sequence[tuple[bytes, bytes]]
) -> list[Appended]:
    """Append ``records`` (key, value) to ``topic``'s ``partition`` through ``producer``, as
    ``send`` would each (the same checks of a closed producer and of the transaction, the
    sender woken when a batch is started), stamped now. ``producer`` must :func:`fits`; each
    record :func:`appendable`."""
    if producer._closed:
        raise IllegalStateError("KafkaProducer already closed!")
    tp = TopicPartition(topic, partition)
    manager = producer._transaction_manager
    if manager is not None and manager.is_transactional():
        manager.maybe_add_partition_to_transaction(tp)
    appended, ready = append_records(producer._accumulator, tp, records, int(time.time() * 1000))
    if ready:
        producer._sender.wakeup()
    return appended
