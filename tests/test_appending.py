"""Lists appended a partition's run at a time (consumer.appending) are kafka-python's records.

Held to kafka-python itself: the batches it fills are compared byte for byte with batches
kafka-python's record builder makes of the same records (every codec, batch boundaries
included); outcomes are read from kafka-python's own completion paths (success, failure,
abort, per-record errors, a batch split after the brokers refused it as too large); on the
real broker every record arrives, in order, under idempotence and in transactions.
"""

from __future__ import annotations

import random
import time

import orjson
import pytest
from kafka import KafkaProducer
from kafka.errors import KafkaError, MessageSizeTooLargeError
from kafka.producer.record_accumulator import RecordAccumulator
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecordsBuilder
from kafka.serializer import Serializer
from kafka.structs import TopicPartition

from consumer.appending import Appended, AppendedBatch, append, append_records, appendable, fits
from consumer.config import ServiceConfig
from consumer.publish import Publisher, Sent
from consumer.runner import build_service
from contract.schema import event_to_json
from tests.service_helpers import in_thread, produce, read_all, replay_events, topics, wait_for
from tests.test_faults import read_topic

TP = TopicPartition("lists", 0)
CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def random_records(rng: random.Random, n: int) -> list[tuple[bytes, bytes]]:
    sizes = [0, 1, 5, 63, 64, 300, 8191, 8192, 20_000]
    return [(rng.randbytes(rng.randrange(0, 70)), rng.randbytes(rng.choice(sizes))) for _ in range(n)]


def kafka_python_batches(chunks, codec: int, batch_size: int) -> list[bytes]:
    """The batches kafka-python's record builder makes of ``chunks`` ((records, timestamp) each)."""
    batches, builder = [], None
    for records, timestamp in chunks:
        for key, value in records:
            if builder is None or builder.append(timestamp, key, value, []) is None:
                builder = MemoryRecordsBuilder(2, codec, batch_size)
                batches.append(builder)
                assert builder.append(timestamp, key, value, []) is not None
    for builder in batches:
        builder.close()
    return [bytes(b.buffer()) for b in batches]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("batch_size", [100, 1024, 16_384, 512 * 1024])
def test_batches_are_byte_for_byte_kafka_pythons(codec, batch_size):
    rng = random.Random(f"{codec}-{batch_size}")
    records = random_records(rng, 400)
    chunks, at, timestamp = [], 0, 1_700_000_000_000
    while at < len(records):
        n = rng.randrange(1, 60)
        chunks.append((records[at : at + n], timestamp))
        at += n
        timestamp += rng.choice([0, 1, 5_000, 9_000, 200_000])  # deltas past one-byte and table varints
    accumulator = RecordAccumulator(batch_size=batch_size, compression_attrs=CODECS[codec])
    counts = []
    for run, stamp in chunks:
        appended, _ = append_records(accumulator, TP, run, stamp)
        counts.append(sum(a.count for a in appended))
    ours = list(accumulator._batches[TP])
    for batch in ours:
        batch.records.close()
    assert counts == [len(run) for run, _ in chunks]
    assert [bytes(b.records.buffer()) for b in ours] == kafka_python_batches(
        chunks, CODECS[codec], batch_size
    )


def test_a_record_larger_than_the_batch_gets_a_batch_of_its_own():
    accumulator = RecordAccumulator(batch_size=100)
    appended, started = append_records(
        accumulator, TP, [(b"a", b"x" * 10), (b"b", b"y" * 500), (b"c", b"z")], 1
    )
    assert started
    assert [(a.first, a.count) for a in appended] == [(0, 1), (0, 1), (0, 1)]
    assert [b.record_count for b in accumulator._batches[TP]] == [1, 1, 1]


def test_a_batch_is_continued_while_open_and_never_shared_with_send():
    accumulator = RecordAccumulator(batch_size=16_384)
    first, started = append_records(accumulator, TP, [(b"a", b"1")], 1)
    second, started_again = append_records(accumulator, TP, [(b"b", b"2"), (b"c", b"3")], 2)
    assert started and not started_again
    assert second[0].batch is first[0].batch and (second[0].first, second[0].count) == (1, 2)
    # kafka-python's send (accumulator.append) starts its own batch after ours ...
    future, _, new_batch, _ = accumulator.append(TP, 3, b"d", b"4", [])
    assert new_batch and future is not None
    queue = accumulator._batches[TP]
    assert [type(b) is AppendedBatch for b in queue] == [True, False]
    # ... and a run appended after it starts another of ours: a batch's records share one kind of outcome.
    third, started = append_records(accumulator, TP, [(b"e", b"5")], 4)
    assert started and len(queue) == 3 and queue[-1] is third[0].batch
    # A batch the sender has closed (drained) is not written to again.
    queue[-1].records.close()
    fourth, started = append_records(accumulator, TP, [(b"f", b"6")], 5)
    assert started and fourth[0].batch is not third[0].batch


def test_the_sender_is_woken_when_a_batch_is_started_or_filled_as_send_wakes_it():
    accumulator = RecordAccumulator(batch_size=300)
    assert append_records(accumulator, TP, [(b"a", b"x" * 100)], 1)[1]  # started
    assert not append_records(accumulator, TP, [(b"b", b"x" * 100)], 1)[1]  # room left: it lingers
    appended, wake = append_records(accumulator, TP, [(b"c", b"x" * 11)], 1)  # to exactly 300 bytes
    assert len(accumulator._batches[TP]) == 1 and appended[0].batch.records.is_full() and wake


def appended_batch(n: int) -> Appended:
    accumulator = RecordAccumulator(batch_size=1 << 20)
    [appended], _ = append_records(accumulator, TP, [(b"k%d" % i, b"v%d" % i) for i in range(n)], 1)
    return appended


def test_outcomes_follow_kafka_pythons_completion_of_the_batch():
    waiting = appended_batch(4)
    assert not waiting.done and waiting.failed() == [0, 1, 2, 3]  # not answered: not acknowledged

    acknowledged = appended_batch(4)
    acknowledged.batch.complete(base_offset=100, log_append_time=-1)
    assert acknowledged.done and acknowledged.failed() == []

    refused = appended_batch(4)
    refused.batch.complete_exceptionally(KafkaError("refused"), lambda _: KafkaError("refused"))
    assert refused.failed() == [0, 1, 2, 3]

    aborted = appended_batch(3)
    aborted.batch.abort(KafkaError("transaction aborted"))
    assert aborted.failed() == [0, 1, 2]

    # Record-level errors (KIP-467): only the records the brokers named fail.
    some = appended_batch(5)
    some.batch.complete_exceptionally(KafkaError("bad"), lambda i: KafkaError("bad") if i in (1, 3) else None)
    assert some.failed() == [1, 3]


def test_a_run_in_the_middle_of_a_batch_reads_only_its_own_records():
    accumulator = RecordAccumulator(batch_size=1 << 20)
    append_records(accumulator, TP, [(b"a", b"1"), (b"b", b"2")], 1)
    [later], _ = append_records(accumulator, TP, [(b"c", b"3"), (b"d", b"4")], 1)
    later.batch.complete_exceptionally(KafkaError("bad"), lambda i: KafkaError("bad") if i == 2 else None)
    assert (later.first, later.count) == (2, 2) and later.failed() == [0]


def test_a_batch_split_after_the_brokers_refused_it_reads_its_records_outcomes_from_the_splits():
    accumulator = RecordAccumulator(batch_size=1 << 20)
    [appended], _ = append_records(accumulator, TP, [(b"k%d" % i, b"v%d" % i) for i in range(6)], 1)
    queue = accumulator._batches[TP]
    queue.popleft().records.close()  # drained by the sender, then refused as too large:
    assert accumulator.split_and_reenqueue(appended.batch) == 2
    halves = list(queue)
    assert [b.record_count for b in halves] == [3, 3]
    assert not appended.done and appended.failed() == list(range(6))
    halves[0].records.close()
    halves[0].complete(base_offset=10, log_append_time=-1)
    assert not appended.done and appended.failed() == [3, 4, 5]
    halves[1].records.close()
    halves[1].complete_exceptionally(KafkaError("bad"), lambda _: KafkaError("bad"))
    assert appended.done and appended.failed() == [3, 4, 5]
    # The halves carry the records' bytes: the split read them back from the batch written here.
    assert [r.key for b in halves for batch in b.records.records() for r in batch] == [
        b"k%d" % i for i in range(6)
    ]


def test_sent_names_the_messages_not_acknowledged():
    appended = appended_batch(3)
    messages = [("lists", b"k%d" % i, b"v", None) for i in range(3)]
    appended.batch.complete_exceptionally(KafkaError("bad"), lambda i: KafkaError("bad") if i == 2 else None)
    assert Sent(messages, appended).failed() == [messages[2]]


def test_only_plain_keyed_records_within_the_request_limit_take_this_path():
    assert appendable(b"viewer", b"[]", None, 1_000_000)
    assert appendable(b"viewer", b"[]", [], 1_000_000)
    assert not appendable(None, b"[]", None, 1_000_000)  # no key: kafka-python picks the partition
    assert not appendable(b"viewer", None, None, 1_000_000)  # a tombstone
    assert not appendable(b"viewer", b"[]", [("reason", b"bad")], 1_000_000)  # dead letters carry headers
    assert not appendable(b"viewer", b"x" * 1_000_000, None, 1_000_000)  # send raises the right error
    # Near the limit: never one that send's own size estimate puts past it.
    for size in range(999_800, 1_000_000):
        value = b"x" * size
        if DefaultRecordBatchBuilder.estimate_size_in_bytes(b"viewer", value, []) > 1_000_000:
            assert not appendable(b"viewer", value, None, 1_000_000), size


# -- on the real broker ------------------------------------------------------------------------


def test_appended_records_arrive_whole_and_in_order_with_every_codec(kafka_bootstrap, new_topic):
    for codec in CODECS:
        topic = new_topic(f"appending-{codec}", partitions=2)
        producer = KafkaProducer(
            bootstrap_servers=kafka_bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=20,
            batch_size=4096,  # several batches a partition
            compression_type=None if codec == "none" else codec,
        )
        try:
            assert fits(producer)
            producer.partitions_for(topic)
            runs = {
                p: [(b"viewer-%d" % i, b"list %d of partition %d " % (i, p) * 20) for i in range(300)]
                for p in (0, 1)
            }
            before = int(time.time() * 1000)
            appended = [a for p, run in runs.items() for a in append(producer, topic, p, run)]
            producer.flush()
            assert len(appended) > 2 and all(a.done and a.failed() == [] for a in appended)
        finally:
            producer.close(timeout=5)
        records = read_topic(kafka_bootstrap, topic, "read_uncommitted")
        for p, run in runs.items():
            got = [(r.key, r.value) for r in records if r.partition == p]
            assert got == run, codec
        assert all(before <= r.timestamp <= time.time() * 1000 + 1 for r in records)


def test_a_batch_the_topic_refuses_as_too_large_is_split_by_kafka_python_and_delivered(
    kafka_bootstrap, new_topic
):
    topic = new_topic("appending-small-messages", config={"max.message.bytes": "3000"})
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=50, batch_size=64 * 1024
    )
    try:
        producer.partitions_for(topic)
        run = [(b"viewer-%d" % i, bytes([65 + i % 26]) * 400) for i in range(40)]  # 16 KB: too large
        [appended] = append(producer, topic, 0, run)
        # Not producer.flush(): kafka-python 3.0.12's flush raises "Future not done" when a batch
        # it waits for is split (it does so for records sent with send too); the sender delivers
        # the halves all the same.
        deadline = time.monotonic() + 60
        while not appended.done and time.monotonic() < deadline:
            time.sleep(0.05)
        assert appended.batch._split_futures is not None  # the brokers refused it whole
        assert appended.done and appended.failed() == []
    finally:
        producer.close(timeout=5)
    assert [(r.key, r.value) for r in read_topic(kafka_bootstrap, topic, "read_uncommitted")] == run


def test_appended_records_belong_to_the_transaction_they_were_appended_in(kafka_bootstrap, new_topic):
    topic = new_topic("appending-transactions")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"t-{topic}", acks="all")
    try:
        producer.init_transactions()
        producer.partitions_for(topic)
        producer.begin_transaction()
        append(producer, topic, 0, [(b"a", b"aborted")])
        producer.flush()
        producer.abort_transaction()
        producer.begin_transaction()
        kept = append(producer, topic, 0, [(b"b", b"committed"), (b"c", b"committed too")])
        producer.commit_transaction()
        assert kept[0].failed() == []
    finally:
        producer.close(timeout=5)
    committed = read_topic(kafka_bootstrap, topic, "read_committed")
    assert [(r.key, r.value) for r in committed] == [(b"b", b"committed"), (b"c", b"committed too")]


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "send"])
def test_the_publisher_delivers_every_kind_of_message_in_each_partitions_order(
    kafka_bootstrap, new_topic, batched
):
    lists = new_topic("appending-lists", partitions=3)
    dead = new_topic("appending-dead", partitions=1)
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True, linger_ms=20
    )
    try:
        publisher = Publisher(producer, consumer=None, exactly_once=False, batched_send=batched)
        assert publisher._appends is batched
        messages = []
        for i in range(600):
            messages.append((lists, b"viewer-%d" % (i % 50), b"list %d" % i, None))
            if i % 97 == 0:  # dead letters (headers) and a given partition, between the lists
                messages.append((dead, b"bad-%d" % i, b"{", [("streamrec.error", b"bad json")]))
                messages.append((lists, b"viewer-%d" % (i % 50), b"pinned %d" % i, None, 1))
        publisher.send(messages)
        publisher._until_acknowledged()
    finally:
        producer.close(timeout=5)
    got = read_topic(kafka_bootstrap, lists, "read_uncommitted")
    assert sorted(r.value for r in got) == sorted(m[2] for m in messages if m[0] == lists)
    # One viewer's lists are in one partition, in the order sent (pinned ones aside).
    for viewer in {m[1] for m in messages if m[0] == lists}:
        sent = [m[2] for m in messages if m[0] == lists and m[1] == viewer and len(m) == 4]
        assert [r.value for r in got if r.key == viewer and r.value.startswith(b"list")] == sent
        assert len({r.partition for r in got if r.key == viewer and r.value.startswith(b"list")}) == 1
    pinned = [r.value for r in got if r.value.startswith(b"pinned")]
    assert pinned == [m[2] for m in messages if len(m) == 5]
    assert all(r.partition == 1 for r in got if r.value.startswith(b"pinned"))
    letters = read_topic(kafka_bootstrap, dead, "read_uncommitted")
    assert [(r.key, r.headers) for r in letters] == [(m[1], m[3]) for m in messages if m[0] == dead]


class AsIs(Serializer):
    def serialize(self, topic, value):  # noqa: ANN001, ANN201
        return value


def test_a_producer_with_serializers_is_left_to_send(kafka_bootstrap):
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, value_serializer=AsIs())
    try:
        assert not fits(producer)
        assert not Publisher(producer, consumer=None, exactly_once=False)._appends
    finally:
        producer.close(timeout=5)


def test_a_closed_producer_refuses_as_send_does(kafka_bootstrap):
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    producer.close(timeout=5)
    with pytest.raises(KafkaError, match="closed"):
        append(producer, "anything", 0, [(b"k", b"v")])
    with pytest.raises(KafkaError, match="closed"):
        producer.send("anything", key=b"k", value=b"v")


def test_message_size_errors_stay_kafka_pythons(kafka_bootstrap, new_topic):
    topic = new_topic("appending-too-large")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=10_000)
    try:
        publisher = Publisher(producer, consumer=None, exactly_once=False)
        with pytest.raises(MessageSizeTooLargeError):
            publisher.send([(topic, b"viewer", b"x" * 20_000, None)])
    finally:
        producer.close(timeout=5)


def replayed_service(kafka_bootstrap: str, names: dict[str, str], n: int, **settings):  # noqa: ANN201
    """``n`` replay events produced to ``names``' input, and a service (not started) to learn them."""
    events, _ = replay_events(n)
    produce(kafka_bootstrap, names["input_topic"], [(e.viewer.encode(), event_to_json(e)) for e in events])
    config = ServiceConfig(
        bootstrap_servers=kafka_bootstrap,
        group_id=f"g-{names['input_topic']}",
        metrics_port=0,
        checkpoint_dir="none",
        **names,
        **settings,
    )
    return events, build_service(config, with_metrics=False)


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "send"])
def test_the_service_answers_every_viewer_either_way(kafka_bootstrap, new_topic, batched):
    names = topics(new_topic, partitions=2)
    events, service = replayed_service(kafka_bootstrap, names, 1500, batched_send=batched)
    with in_thread(service):
        assert wait_for(lambda: service.model_events >= len(events)), "the service did not learn every event"
        assert service._publisher._appends is batched
    inputs = read_all(kafka_bootstrap, names["input_topic"], expect=len(events))
    last_watch = {}
    for r in sorted(inputs, key=lambda r: (r.partition, r.offset)):
        last_watch[r.key.decode()] = (r.partition, r.offset)
    lists: dict[str, list] = {}
    for r in read_all(kafka_bootstrap, names["output_topic"], expect=len(last_watch)):
        body = orjson.loads(r.value)
        assert r.key.decode() == body["viewer"]
        lists.setdefault(body["viewer"], []).append((body["source"]["partition"], body["source"]["offset"]))
    assert set(lists) == set(last_watch)
    for viewer, sources in lists.items():
        assert sources == sorted(sources), f"{viewer}'s lists arrived out of order"
        assert sources[-1] == last_watch[viewer], f"{viewer}'s last watch got no list"


def test_a_service_whose_output_topic_takes_only_small_batches_publishes_every_list(
    kafka_bootstrap, new_topic
):
    """An output topic made with a small ``max.message.bytes``: the producer's batches are kept
    within it. Larger ones would be refused and split by kafka-python, whose flush then fails."""
    names = topics(new_topic, partitions=2)
    names["output_topic"] = new_topic("small-recs", config={"max.message.bytes": "5000"})
    # Uncompressed, a batch is as large as its lists.
    events, service = replayed_service(kafka_bootstrap, names, 3000, output_compression="none")
    with in_thread(service):
        assert wait_for(lambda: service.model_events >= len(events)), "the service did not learn every event"
        assert wait_for(lambda: service._publisher is not None and service._publisher.unconfirmed == 0, 30)
        assert service.batch_limit == 5_000
        assert service._producer.config["batch_size"] == 5_000
    viewers = {e.viewer for e in events}
    lists = read_all(kafka_bootstrap, names["output_topic"], expect=len(viewers))
    assert {r.key.decode() for r in lists} == viewers
