"""Kafka record batches read in one compiled pass: a consumer's records at half the cost.

kafka-python reads a batch of the v2 message format record by record in Python: a dozen calls
per record (varints, properties, a ``DefaultRecord``, then the ``ConsumerRecord``), 3.5-4.5 us a
record on this machine, which is all of what raw consumption costs and a fifth of a worker's
time per event. :func:`install` gives one consumer a reader that lays out each whole batch in
one numba kernel (:func:`record_layout`: where each record's key, value and headers are, its
offset and timestamp deltas) and then makes the ``ConsumerRecord`` s in one loop, about half the
time of kafka-python's per record (``bench/e2e.py``'s poll stage).

The records are kafka-python's, exactly: the same fields, order and errors, the batch-level
rules left to kafka-python's own code (CRC checks, decompression with any codec, control
batches, aborted transactions under ``read_committed``, a fetch that starts inside a batch).
Batches of the old message formats (v0, v1), and the rare v2 batch holding a number past 64
bits (kafka-python's integers have no limit), go through kafka-python's reader unchanged. The
tests compare both readers field by field on batches of every codec, with and without keys,
values and headers, corrupt ones included, and on a real broker.

>>> from kafka.record.default_records import DefaultRecordBatchBuilder
>>> builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, batch_size=1024)
>>> for i, value in enumerate([b"one", None, b"three"]):
...     _ = builder.append(i, timestamp=1000 + i, key=b"k", value=value, headers=[])
>>> batch = bytes(builder.build())
>>> (good, end), layout = lay_out(batch, records=3, start=DefaultRecordBatch.HEADER_STRUCT.size)
>>> good, end == len(batch), layout[:, VALUE_LENGTH].tolist(), layout[:, OFFSET_DELTA].tolist()
(3, True, [3, -1, 5], [0, 1, 2])
"""

from __future__ import annotations

import logging

import numpy as np
from kafka.consumer.fetcher import ConsumerRecord, Fetcher, IsolationLevel
from kafka.errors import CorruptRecordError
from kafka.record.default_records import DefaultRecordBatch
from numba import njit

from model.compiled import JIT_OPTIONS

__all__ = ["CompiledPartitionRecords", "install", "installed", "lay_out", "record_layout", "warm_up"]

log = logging.getLogger(__name__)

#: Columns of a batch's layout, one row per record: the record's size (its length varint), its
#: timestamp and offset deltas, where its key, value and headers start and their lengths (``-1``:
#: null key or value) and header count.
SIZE, TIMESTAMP_DELTA, OFFSET_DELTA, KEY_START, KEY_LENGTH, VALUE_START, VALUE_LENGTH = range(7)
HEADERS_START, HEADER_COUNT = 7, 8
_COLUMNS = 9
#: Seven one-byte varints: the least a record takes.
_SMALLEST_RECORD = 7


#: The position a kernel returns for a field it cannot hold in 64 bits (a valid varint past
#: them, or a length that would carry a position past them): kafka-python, whose integers have
#: no limit, reads that batch instead.
PAST_64_BITS = -2
_SEVEN_BITS = np.uint64(0x7F)
_ONE = np.uint64(1)


@njit(**JIT_OPTIONS)
def _varint(buf: np.ndarray, pos: int) -> tuple[int, int]:
    """The zigzag varint at ``pos`` and the position after it, as kafka-python's
    ``decode_varint`` reads it; position ``-1`` where that raises (past the end of the buffer,
    or more than ten bytes), :data:`PAST_64_BITS` for a value of more than 64 bits."""
    shift = 0
    value = np.uint64(0)
    while True:
        if pos >= buf.shape[0]:
            return 0, -1
        byte = np.uint64(buf[pos])
        pos += 1
        if shift == 63 and byte & _SEVEN_BITS > _ONE:
            return 0, PAST_64_BITS
        value |= (byte & _SEVEN_BITS) << np.uint64(shift)
        if byte < 0x80:  # unsigned to here, so the zigzag's halving does not copy a sign bit
            return np.int64(value >> _ONE) ^ -np.int64(value & _ONE), pos
        shift += 7
        if shift > 63:
            return 0, -1


@njit(**JIT_OPTIONS)
def _nullable_bytes(buf: np.ndarray, pos: int) -> tuple[int, int, int]:
    """The bytes field at ``pos`` (a varint length, then the bytes): ``(start, length, after)``,
    length ``-1`` for null; ``after`` is ``-1`` when the length cannot be read and
    :data:`PAST_64_BITS` when it is so large that the position after it would not fit."""
    length, pos = _varint(buf, pos)
    if pos < 0:
        return 0, -1, pos
    if length > 1 << 62:
        return 0, -1, PAST_64_BITS
    return pos, max(length, -1), pos + max(length, 0)


@njit(**JIT_OPTIONS)
def record_layout(buf: np.ndarray, pos: int, records: int, layout: np.ndarray) -> tuple[int, int]:
    """Lay out ``records`` v2 records of the uncompressed batch body ``buf`` from ``pos`` into
    the rows of ``layout`` (the columns above). Returns ``(good, end)``: how many records were
    read whole, and the position after the last; ``good < records`` where record ``good`` is
    corrupt (kafka-python raises ``CorruptRecordError`` there, after the records before it).

    The fields are read as kafka-python reads them (the attributes byte as a varint, like it);
    a record is corrupt where kafka-python's reader would raise: a varint past the end of the
    buffer or 64 bits, a negative header count or header key length, or a size that is not
    what its fields took.
    """
    for i in range(records):
        length, pos = _varint(buf, pos)
        if pos < 0:
            return i, pos
        start = pos
        _, pos = _varint(buf, pos)  # attributes: unused, as in kafka-python
        if pos < 0:
            return i, pos
        layout[i, SIZE] = length
        layout[i, TIMESTAMP_DELTA], pos = _varint(buf, pos)
        if pos < 0:
            return i, pos
        layout[i, OFFSET_DELTA], pos = _varint(buf, pos)
        if pos < 0:
            return i, pos
        layout[i, KEY_START], layout[i, KEY_LENGTH], pos = _nullable_bytes(buf, pos)
        if pos < 0:
            return i, pos
        layout[i, VALUE_START], layout[i, VALUE_LENGTH], pos = _nullable_bytes(buf, pos)
        if pos < 0:
            return i, pos
        headers, pos = _varint(buf, pos)
        if pos < 0 or headers < 0:
            return i, pos
        layout[i, HEADERS_START] = pos
        layout[i, HEADER_COUNT] = headers
        for _ in range(headers):
            _, key_length, pos = _nullable_bytes(buf, pos)
            if pos < 0 or key_length < 0:  # a header key cannot be null
                return i, pos
            _, _, pos = _nullable_bytes(buf, pos)
            if pos < 0:
                return i, pos
        if pos - start != length:  # (a last header value may run past the end: kafka-python
            return i, pos  # reads it short and raises after the record, and so does the caller)
    return records, pos


def lay_out(body: bytes | bytearray, records: int, start: int = 0) -> tuple[tuple[int, int], np.ndarray]:
    """:func:`record_layout` of ``records`` records of ``body`` from ``start``: ``((good, end),
    layout)``. A count the bytes cannot hold (a damaged header: negative, or 2**31) lays out
    no more records than fit, so the first that does not is the corrupt one, as kafka-python
    finds it."""
    records = max(0, min(records, (len(body) - start) // _SMALLEST_RECORD + 1))
    layout = np.empty((records, _COLUMNS), dtype=np.int64)
    # Read-only whatever the buffer (a batch is a bytearray): one compiled signature.
    buf = np.frombuffer(memoryview(body).toreadonly(), dtype=np.uint8)
    return record_layout(buf, start, records, layout), layout


def _plus(base: int, deltas: np.ndarray) -> list[int]:
    """``base`` plus each delta, as Python integers (as kafka-python adds them): in numpy where
    no sum can pass 64 bits, which is every batch a broker writes."""
    safe = 1 << 62
    if -safe <= base <= safe and (deltas.size == 0 or (-safe <= deltas.min() and deltas.max() <= safe)):
        return (base + deltas).tolist()
    return [base + delta for delta in deltas.tolist()]


def _headers(data: bytes, pos: int, count: int) -> list[tuple[str, bytes | None]]:
    """The ``count`` headers from ``pos`` of a record the kernel read whole."""
    headers = []
    for _ in range(count):
        pos, key_length = _read_varint(data, pos)
        key = data[pos : pos + key_length].decode("utf-8")
        pos, value_length = _read_varint(data, pos + key_length)
        value = data[pos : pos + value_length] if value_length >= 0 else None
        pos += max(value_length, 0)
        headers.append((key, value))
    return headers


def _header_size(headers: list[tuple[str, bytes | None]]) -> int:
    """``serialized_header_size`` as kafka-python counts it: keys' UTF-8 and values' bytes,
    ``-1`` without headers."""
    if not headers:
        return -1
    return sum(len(k.encode("utf-8")) + (len(v) if v is not None else 0) for k, v in headers)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return pos, (value >> 1) ^ -(value & 1)
        shift += 7


class CompiledPartitionRecords(Fetcher.PartitionRecords):
    """kafka-python's records of one fetched partition, with v2 batches read by the kernel."""

    def _unpack_records(self, tp, records, key_deserializer, value_deserializer):  # noqa: C901
        # kafka-python's own loop over batches (fetcher.py, 3.0), but for the records of a v2
        # batch: they are laid out in one call, then made in one loop.
        try:
            batch = records.next_batch()
            last_batch = None
            while batch is not None:
                last_batch = batch
                if self.check_crcs and not batch.validate_crc():
                    raise CorruptRecordError(
                        f"Record batch for partition {self.topic_partition} at offset "
                        f"{batch.base_offset} failed crc check"
                    )
                if batch.magic != 2:
                    yield from self._records_by_kafka_python(tp, batch, key_deserializer, value_deserializer)
                    batch = records.next_batch()
                    continue
                self.leader_epoch = batch.leader_epoch
                if self.isolation_level == IsolationLevel.READ_COMMITTED and batch.has_producer_id():
                    self._consume_aborted_transactions_up_to(batch.last_offset)
                    if self._contains_abort_marker(batch):
                        self.aborted_producer_ids.discard(batch.producer_id)
                    elif self._is_batch_aborted(batch):
                        self.next_fetch_offset = batch.next_offset
                        batch = records.next_batch()
                        continue
                if batch.is_control_batch:
                    self.next_fetch_offset = batch.next_offset
                    batch = records.next_batch()
                    continue
                yield from self._records_of(tp, batch, key_deserializer, value_deserializer)
                batch = records.next_batch()
            if last_batch is not None and last_batch.magic == 2:
                self.next_fetch_offset = last_batch.next_offset
            self.drain()
        except StopIteration:  # as kafka-python: a generator must not end by StopIteration
            log.exception("StopIteration raised unpacking messageset")
            raise RuntimeError("StopIteration raised unpacking messageset") from None

    def _records_of(self, tp, batch: DefaultRecordBatch, key_deserializer, value_deserializer):
        batch._maybe_uncompress()
        body = batch._buffer
        (good, end), layout = lay_out(body, batch._num_records, batch._pos)
        if end == PAST_64_BITS:  # numbers only Python's integers hold: kafka-python reads it all
            yield from self._records_by_kafka_python(tp, batch, key_deserializer, value_deserializer)
            return
        data = bytes(body)  # slices of bytes are the keys and values: one copy, not two per record
        topic, partition, epoch = tp.topic, tp.partition, self.leader_epoch
        base, kind = batch.base_offset, batch.timestamp_type
        rows = layout[:good]
        if kind == DefaultRecordBatch.LOG_APPEND_TIME:
            stamps = [batch.max_timestamp] * good
        else:
            stamps = _plus(batch.first_timestamp, rows[:, TIMESTAMP_DELTA])
        key_at, key_length = rows[:, KEY_START], rows[:, KEY_LENGTH]
        value_at, value_length = rows[:, VALUE_START], rows[:, VALUE_LENGTH]
        columns = zip(
            _plus(base, rows[:, OFFSET_DELTA]), stamps,
            key_at.tolist(), (key_at + np.maximum(key_length, 0)).tolist(), key_length.tolist(),
            value_at.tolist(), (value_at + np.maximum(value_length, 0)).tolist(), value_length.tolist(),
            rows[:, HEADERS_START].tolist(), rows[:, HEADER_COUNT].tolist(), rows[:, SIZE].tolist(),
            strict=True,
        )  # fmt: skip
        deserialize = key_deserializer is not None or value_deserializer is not None
        for offset, stamp, k, k_end, k_len, v, v_end, v_len, headers_at, headers, size in columns:
            key = data[k:k_end] if k_len >= 0 else None
            value = data[v:v_end] if v_len >= 0 else None
            try:
                found = _headers(data, headers_at, headers) if headers else []
            except UnicodeDecodeError as err:  # a header key must be UTF-8 (kafka-python: corrupt)
                raise CorruptRecordError(f"Found invalid record structure: {err!r}") from None
            if deserialize:
                key = self._deserialize(key_deserializer, topic, found, key)
                value = self._deserialize(value_deserializer, topic, found, value)
            self.records_read += 1
            self.bytes_read += size
            self.next_fetch_offset = offset + 1
            yield ConsumerRecord(
                topic,
                partition,
                epoch,
                offset,
                stamp,
                kind,
                key,
                value,
                found,
                None,
                k_len,
                v_len,
                _header_size(found),
            )
        if good < batch._num_records:
            raise CorruptRecordError(
                f"Found invalid record structure in partition {self.topic_partition}: record "
                f"{good} of the batch at offset {base} cannot be read"
            )
        if end != len(body):
            raise CorruptRecordError(f"{len(body) - end} unconsumed bytes after all records consumed")

    def _records_by_kafka_python(self, tp, batch, key_deserializer, value_deserializer):
        """A batch's records read by kafka-python (its loop, unchanged): message formats v0
        and v1, and v2 batches holding a number past 64 bits."""
        for record in batch:
            if self.check_crcs and not record.validate_crc():
                raise CorruptRecordError(
                    f"Record for partition {self.topic_partition} at offset {record.offset} failed crc check"
                )
            headers = record.headers
            key = self._deserialize(key_deserializer, tp.topic, headers, record.key)
            value = self._deserialize(value_deserializer, tp.topic, headers, record.value)
            self.records_read += 1
            self.bytes_read += record.size_in_bytes
            self.next_fetch_offset = record.offset + 1
            yield ConsumerRecord(
                tp.topic, tp.partition, self.leader_epoch, record.offset, record.timestamp,
                record.timestamp_type, key, value, headers, record.checksum,
                len(record.key) if record.key is not None else -1,
                len(record.value) if record.value is not None else -1,
                _header_size(headers),
            )  # fmt: skip


def _fits(kafka_fetcher: object) -> bool:
    """Whether this kafka-python reads records the way this reader replaces (3.0's fetcher: a
    ``PartitionRecords`` class the fetcher makes through ``self``, batches with these slots)."""
    records = getattr(type(kafka_fetcher), "PartitionRecords", None)
    return (
        records is Fetcher.PartitionRecords
        and callable(getattr(records, "_unpack_records", None))
        and {"_buffer", "_pos", "_num_records"} <= set(DefaultRecordBatch.__slots__)
        and callable(getattr(DefaultRecordBatch, "_maybe_uncompress", None))
    )


def install(consumer: object) -> bool:
    """Make ``consumer`` (a ``KafkaConsumer``) read record batches with the compiled reader;
    whether it does. Only this consumer changes; with a kafka-python whose fetcher is not the
    one this reader knows, nothing changes and the reason is logged."""
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None or not _fits(fetcher):
        log.info(
            "kafka-python's record reader kept: the compiled reader does not know this version's fetcher"
        )
        return False
    warm_up()
    fetcher.PartitionRecords = CompiledPartitionRecords
    return True


def installed(consumer: object) -> bool:
    """Whether ``consumer`` reads with the compiled reader."""
    return getattr(getattr(consumer, "_fetcher", None), "PartitionRecords", None) is CompiledPartitionRecords


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernel at start-up, not in the first poll."""
    lay_out(bytearray(b"\x00"), records=0)
