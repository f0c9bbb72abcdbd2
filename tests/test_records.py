"""The compiled record reader gives exactly kafka-python's records, errors and positions.

Its reference is kafka-python's own reader: both read the same fetched bytes (batches built by
kafka-python's builder, compressed with every codec, with and without keys, values and
headers, a fetch that starts inside a batch, transactional and control batches, corrupted
bytes) and must yield the same ``ConsumerRecord`` s, raise at the same record and leave the
same next fetch offset and counters. Then both read real topics of a real broker.
"""

from __future__ import annotations

import random
import struct
import uuid
from collections import namedtuple

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import Fetcher, IsolationLevel
from kafka.errors import CorruptRecordError
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords
from kafka.record.util import calc_crc32c
from kafka.structs import TopicPartition

from consumer import records
from consumer.config import ServiceConfig
from consumer.records import CompiledPartitionRecords

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
TP = TopicPartition("t", 0)
Aborted = namedtuple("Aborted", "producer_id first_offset")


def _random_bytes(rng: random.Random, most: int) -> bytes | None:
    roll = rng.random()
    if roll < 0.15:
        return None
    if roll < 0.25:
        return b""
    return rng.randbytes(rng.randint(1, most))


def _batch(rng, base, count, codec=0, transactional=False, producer_id=-1, headers=True) -> bytearray:
    builder = DefaultRecordBatchBuilder(
        2,
        codec,
        transactional,
        producer_id,
        0 if producer_id >= 0 else -1,
        0 if producer_id >= 0 else -1,
        1 << 20,
    )
    for i in range(count):
        record_headers = []
        if headers and rng.random() < 0.3:
            record_headers = [
                (rng.choice(["a", "trace", "é"]), _random_bytes(rng, 20)) for _ in range(rng.randint(1, 3))
            ]
        value = _random_bytes(rng, 300)
        key = _random_bytes(rng, 30)
        if key is None and value is None:
            value = b"v"
        builder.append(
            i * rng.randint(1, 3), 1_700_000_000_000 + rng.randint(-5000, 5000), key, value, record_headers
        )
    buf = bytearray(builder.build())
    struct.pack_into(">q", buf, 0, base)  # the base offset, as the broker assigns it
    return buf


def _marker(base: int, producer_id: int, commit: bool) -> bytearray:
    """A transaction's control batch, as the broker writes it: one record, key (version, type)."""
    builder = DefaultRecordBatchBuilder(2, 0, True, producer_id, 0, 0, 1 << 10)
    builder.append(0, 1_700_000_000_000, struct.pack(">hh", 0, int(commit)), struct.pack(">hi", 0, 0), [])
    buf = bytearray(builder.build())
    struct.pack_into(">q", buf, 0, base)
    return _set_attributes(buf, 0x20)


def _set_attributes(buf: bytearray, set_bits: int) -> bytearray:
    """Batch attributes as the broker writes them (log-append time, a control batch), with
    the CRC made again, so the batch passes the CRC check."""
    (attributes,) = struct.unpack_from(">h", buf, DefaultRecordBatch.ATTRIBUTES_OFFSET)
    struct.pack_into(">h", buf, DefaultRecordBatch.ATTRIBUTES_OFFSET, attributes | set_bits)
    return _with_crc(buf)


def _with_crc(buf: bytearray) -> bytearray:
    crc = calc_crc32c(memoryview(buf)[DefaultRecordBatch.ATTRIBUTES_OFFSET :])
    struct.pack_into(">I", buf, DefaultRecordBatch.CRC_OFFSET, crc)
    return buf


def _read(reader: type, data: bytes, fetch_offset: int = 0, **options) -> tuple[list, str | None, tuple]:
    """Every record ``reader`` yields from ``data``, the error that stopped it, its positions."""
    part = reader(fetch_offset, TP, MemoryRecords(bytes(data)), **options)
    got, error = [], None
    try:
        for record in part.record_iterator:
            got.append(record)
    except CorruptRecordError:
        error = "corrupt"
    return got, error, (part.next_fetch_offset, part.records_read, part.bytes_read, part.leader_epoch)


def _same(data: bytes, fetch_offset: int = 0, **options) -> list:
    stock = _read(Fetcher.PartitionRecords, data, fetch_offset, **options)
    compiled = _read(CompiledPartitionRecords, data, fetch_offset, **options)
    assert compiled == stock
    return stock[0]


@pytest.mark.parametrize("codec", list(CODECS))
def test_batches_of_every_codec_give_kafka_pythons_records(codec):
    rng = random.Random(CODECS[codec])
    data, base = bytearray(), 0
    for count in (1, 7, 200, 33):
        data += _batch(rng, base, count, CODECS[codec])
        base += 3 * count
    got = _same(data)
    assert len(got) == 241
    assert (
        any(r.headers for r in got) and any(r.key is None for r in got) and any(r.value is None for r in got)
    )


def test_a_fetch_from_inside_a_batch_starts_at_its_offset():
    rng = random.Random(1)
    data = _batch(rng, 100, 50, CODECS["lz4"]) + _batch(rng, 400, 10)
    got = _same(data, fetch_offset=130)
    assert got[0].offset >= 130 and got[-1].offset >= 400


def test_log_append_time_gives_every_record_the_batch_time():
    rng = random.Random(2)
    data = _set_attributes(_batch(rng, 0, 20), DefaultRecordBatch.TIMESTAMP_TYPE_MASK)
    got = _same(data)
    assert {r.timestamp_type for r in got} == {1} and len({r.timestamp for r in got}) == 1


@pytest.mark.parametrize("isolation", ["read_committed", "read_uncommitted"])
def test_control_batches_are_skipped_and_aborted_transactions_too_when_reading_committed(isolation):
    rng = random.Random(3)
    aborted = _batch(rng, 0, 5, transactional=True, producer_id=7)
    marker = _marker(15, producer_id=7, commit=False)
    committed = _batch(rng, 16, 4, transactional=True, producer_id=8)
    plain = _batch(rng, 30, 3)
    data = aborted + marker + committed + plain
    got = _same(
        data,
        isolation_level=IsolationLevel.build_from(isolation),
        aborted_transactions=[Aborted(producer_id=7, first_offset=0)],
    )
    assert len(got) == (7 if isolation == "read_committed" else 12)


def test_corrupt_bytes_stop_both_readers_at_the_same_record():
    """Bytes changed at random inside the records (the CRC made to match, so the records
    themselves are read): the same records come out before the same error, or the same
    records without one where the change still parses."""
    rng = random.Random(4)
    corrupt = 0
    for trial in range(300):
        buf = _batch(rng, 0, rng.randint(1, 30), headers=trial % 2 == 0)
        start = DefaultRecordBatch.HEADER_STRUCT.size
        for _ in range(rng.randint(1, 3)):
            buf[rng.randrange(start, len(buf))] = rng.randrange(256)
        if rng.random() < 0.2:
            del buf[rng.randrange(start, len(buf)) :]
            struct.pack_into(">i", buf, 8, len(buf) - 12)
        data = bytes(_with_crc(buf))
        stock = _read(Fetcher.PartitionRecords, data)
        assert _read(CompiledPartitionRecords, data) == stock, f"trial {trial}"
        corrupt += stock[1] == "corrupt"
    assert corrupt > 50  # many changes break a record: the errors were compared, not only records


def _hand_made(body: bytes) -> bytes:
    """A one-record batch whose record is ``body`` (after its length varint), CRC made."""
    builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1 << 10)
    builder.append(0, 1000, b"k", b"v", [])
    buf = bytearray(builder.build())[: DefaultRecordBatch.HEADER_STRUCT.size]
    buf += bytes([len(body) * 2]) + body
    struct.pack_into(">i", buf, 8, len(buf) - 12)
    return bytes(_with_crc(buf))


@pytest.mark.parametrize("delta", [2**62, -(2**62) - 1, 2**63 - 1001])
def test_numbers_that_need_all_64_bits_or_more_read_as_kafka_python_reads_them(delta):
    """Valid 10-byte varints (kafka-python's builder writes them) and sums past 64 bits: held in
    int64 they came out with the wrong sign; kafka-python's integers have no limit."""
    builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1 << 10)
    builder.append(0, 1000, b"k", b"v", [])
    builder.append(1, 1000 + delta, b"k", b"v", [])
    got = _same(builder.build())
    assert got[1].timestamp == 1000 + delta
    base_at_limit = bytearray(builder.build())
    struct.pack_into(">q", base_at_limit, 0, 2**63 - 1)  # the base offset (outside the CRC)
    assert _same(base_at_limit)[1].offset == 2**63
    first_at_limit = bytearray(builder.build())
    struct.pack_into(">q", first_at_limit, 27, 2**63 - 3)  # the first timestamp
    _same(_with_crc(first_at_limit))


@pytest.mark.parametrize(
    "body",
    [
        # a key length in ten bytes (2**63 - 1): it runs past the end
        bytes([0, 0, 0]) + bytes([0xFE] + [0xFF] * 8 + [0x01]) + bytes([2]) + b"v" + bytes([0]),
        # a header key length past 64 bits
        bytes([0, 0, 0, 2])
        + b"k"
        + bytes([2])
        + b"v"
        + bytes([2])
        + bytes([0x8A] + [0x80] * 8 + [0x02])
        + b"hi\0",
    ],
)
def test_lengths_past_64_bits_are_corrupt_records_as_in_kafka_python(body):
    assert _read(CompiledPartitionRecords, _hand_made(body))[1] == "corrupt"
    _same(_hand_made(body))


@pytest.mark.parametrize("count", [-1, 0, 2, 2**31 - 1, 200_000_000])
def test_a_record_count_the_bytes_cannot_hold_is_a_corrupt_batch_not_a_crash(count):
    """A damaged count (CRC made to match) raised numpy's ValueError or MemoryError (144 GiB
    asked for), which the service does not expect from a poll."""
    builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1 << 10)
    for i in range(3):
        builder.append(i, 1000 + i, b"k", b"v", [])
    buf = bytearray(builder.build())
    struct.pack_into(">i", buf, 57, count)
    _same(_with_crc(buf))


def test_warm_up_compiles_the_kernel_the_reader_calls():
    """A batch body is a bytearray: warmed up with bytes, the kernel compiled a second time,
    inside the first poll."""
    records.warm_up()
    rng = random.Random(7)
    _read(CompiledPartitionRecords, _batch(rng, 0, 5))
    assert len(records.record_layout.signatures) == 1


def test_the_kernel_agrees_with_kafka_pythons_record_parser_on_every_field():
    """:func:`consumer.records.record_layout` against kafka-python's ``DefaultRecord`` s."""
    rng = random.Random(5)
    buf = _batch(rng, 0, 120)
    batch = DefaultRecordBatch(bytes(buf))
    (good, end), layout = records.lay_out(buf, 120, DefaultRecordBatch.HEADER_STRUCT.size)
    assert (good, end) == (120, len(buf))
    for row, record in zip(layout.tolist(), batch, strict=True):
        assert row[records.OFFSET_DELTA] == record.offset
        assert row[records.TIMESTAMP_DELTA] == record.timestamp - batch.first_timestamp
        key_at, key_length = row[records.KEY_START], row[records.KEY_LENGTH]
        assert (bytes(buf[key_at : key_at + key_length]) if key_length >= 0 else None) == record.key
        value_at, value_length = row[records.VALUE_START], row[records.VALUE_LENGTH]
        assert (bytes(buf[value_at : value_at + value_length]) if value_length >= 0 else None) == record.value
        assert row[records.HEADER_COUNT] == len(record.headers)
        assert row[records.SIZE] == record.size_in_bytes


def test_install_changes_only_the_consumer_it_is_given():
    mine = KafkaConsumer(bootstrap_servers="127.0.0.1:1", api_version=(3, 0))
    other = KafkaConsumer(bootstrap_servers="127.0.0.1:1", api_version=(3, 0))
    try:
        assert records.install(mine) and records.installed(mine)
        assert not records.installed(other)
        assert other._fetcher.PartitionRecords is Fetcher.PartitionRecords
    finally:
        mine.close()
        other.close()


@pytest.mark.kafka
@pytest.mark.parametrize("compiled", [True, False])
def test_the_services_consumers_read_with_the_compiled_reader_unless_told_not_to(
    kafka_bootstrap, new_topic, compiled
):
    from kafka import ConsumerRebalanceListener

    from consumer.clients import make_consumer, make_reader

    class Quiet(ConsumerRebalanceListener):
        def on_partitions_assigned(self, assigned):
            pass

        def on_partitions_revoked(self, revoked):
            pass

    config = ServiceConfig(
        bootstrap_servers=kafka_bootstrap,
        input_topic=new_topic("in"),
        metrics_port=0,
        compiled_records=compiled,
    )
    consumer = make_consumer(config, Quiet())
    reader = make_reader(config, "changelog")  # what restores the service's own topics
    try:
        assert records.installed(consumer) is compiled
        assert records.installed(reader) is compiled
    finally:
        consumer.close()
        reader.close()


# -- a real broker ------------------------------------------------------------------------------


def _consume_all(bootstrap: str, topic: str, expect: int, compiled: bool, **options) -> list:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"records-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **options,
    )
    if compiled:
        assert records.install(consumer)
    got: list = []
    try:
        for _ in range(100):
            for batch in consumer.poll(timeout_ms=500).values():
                got.extend(batch)
            if len(got) >= expect and not consumer.poll(timeout_ms=300):
                break
    finally:
        consumer.close()
    return sorted(got, key=lambda r: (r.partition, r.offset))


@pytest.mark.kafka
@pytest.mark.parametrize("codec", ["none", "lz4", "zstd"])
def test_a_real_topic_reads_the_same_with_both_readers(kafka_bootstrap, new_topic, codec):
    topic = new_topic("records", 2)
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap, compression_type=None if codec == "none" else codec, linger_ms=5
    )
    rng = random.Random(6)
    for i in range(3000):
        headers = [("h", str(i).encode())] if i % 10 == 0 else []
        producer.send(
            topic, key=str(i % 37).encode(), value=rng.randbytes(rng.randint(0, 80)), headers=headers
        )
    producer.flush()
    producer.close()
    stock = _consume_all(kafka_bootstrap, topic, 3000, compiled=False)
    assert len(stock) == 3000
    assert _consume_all(kafka_bootstrap, topic, 3000, compiled=True) == stock


@pytest.mark.kafka
def test_a_transaction_aborted_on_a_real_broker_is_skipped_by_read_committed(kafka_bootstrap, new_topic):
    topic = new_topic("records-tx", 1)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"tx-{uuid.uuid4().hex}")
    producer.init_transactions()
    for commit, values in ((False, [b"a1", b"a2"]), (True, [b"c1", b"c2", b"c3"]), (False, [b"a3"])):
        producer.begin_transaction()
        for value in values:
            producer.send(topic, value=value)
        producer.flush()
        producer.commit_transaction() if commit else producer.abort_transaction()
    producer.close()
    stock = _consume_all(kafka_bootstrap, topic, 3, compiled=False, isolation_level="read_committed")
    compiled = _consume_all(kafka_bootstrap, topic, 3, compiled=True, isolation_level="read_committed")
    assert [r.value for r in compiled] == [b"c1", b"c2", b"c3"]
    assert compiled == stock
