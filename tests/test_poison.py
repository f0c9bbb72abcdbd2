"""An error that would come back on the same offset at every restart is never a crash loop.

A record whose value cannot be used is dead-lettered (tests/test_service_kafka.py, and
tests/test_schema.py for a record that breaks the decoder itself). A record batch that
kafka-python cannot read never reaches the service as records, so it cannot be dead-lettered:
the service stops with one message that names the partition, the offset and what to do, commits
nothing past it, and after the fix resumes exactly there.

The batch here is lz4-compressed and the service runs with the lz4 library hidden from it (an
import blocker in its own interpreter), as on a machine where the codec was never installed.
"""

from __future__ import annotations

import subprocess
import sys
import time

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from tests.service_helpers import REPO, ServiceProcess, latest_manifest, topics, wait_for

#: ``python -c`` code: hide the lz4 libraries, then run the service as ``python -m consumer``.
WITHOUT_LZ4 = """
import importlib.abc, runpy, sys

class NoLz4(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("lz4", "lz4f", "lz4framed"):
            raise ImportError(f"{name} is hidden by the test")
        return None

sys.meta_path.insert(0, NoLz4())
sys.argv[0] = "consumer"
runpy.run_module("consumer", run_name="__main__")
"""


def event(i: int) -> tuple[bytes, bytes]:
    viewer = f"u{i % 17}"
    return viewer.encode(), orjson.dumps({"timestamp": 1000 + i, "viewer": viewer, "video": f"v{i % 29}"})


def send(bootstrap: str, topic: str, partition: int, values, **options) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", **options)
    futures = [producer.send(topic, key=k, value=v, partition=partition) for k, v in values]
    producer.flush()
    producer.close()
    for f in futures:
        f.get(timeout=0)


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in (0, 1)}
    finally:
        consumer.close()


def test_a_batch_the_client_cannot_decompress_stops_the_service_once_saying_where_and_what_to_do(
    kafka_bootstrap, new_topic, tmp_path
):
    names = topics(new_topic, partitions=2)
    group = f"g-{names['input_topic']}"
    checkpoints = tmp_path / "checkpoints"
    topic = names["input_topic"]
    send(kafka_bootstrap, topic, 0, [event(i) for i in range(150)])
    send(kafka_bootstrap, topic, 1, [event(i) for i in range(150, 250)])
    # One lz4 batch from offset 100 (lingering, so its first record does not go alone: a
    # batch of one small record is sent uncompressed).
    lz4 = {"compression_type": "lz4", "linger_ms": 200, "batch_size": 1 << 20}
    send(kafka_bootstrap, topic, 1, [event(i) for i in range(250, 400)], **lz4)

    args = [
        "--bootstrap-servers", kafka_bootstrap,
        "--input-topic", names["input_topic"],
        "--output-topic", names["output_topic"],
        "--dlq-topic", names["dlq_topic"],
        "--group-id", group,
        "--metrics-port", "0",
        "--checkpoint-dir", str(checkpoints),
        "--output-compression", "none",  # the outputs need no codec; the input batch does
    ]  # fmt: skip
    blocked = subprocess.run(
        [sys.executable, "-c", WITHOUT_LZ4, *args], cwd=REPO, capture_output=True, text=True, timeout=180
    )
    # One clear stop, not a crash: exit 2, one error line, no traceback.
    assert blocked.returncode == 2, blocked.stderr[-3000:]
    assert "Traceback" not in blocked.stderr
    last = blocked.stderr.strip().splitlines()[-1]
    where = f"cannot read the records at {topic} partition 1 offset 100: UnsupportedCodecError"
    assert last.startswith(f"streamrec serve: error: {where}")
    assert "install the codec library" in last and "resumes at this offset" in last

    # Nothing past the unreadable batch is committed; what was learned before it is committed
    # and saved (partition 0 may or may not have been read before the service stopped).
    offsets = committed(kafka_bootstrap, group, topic)
    assert offsets[1] == 100 and offsets[0] in (None, 150), offsets
    assert latest_manifest(checkpoints)["events_learned"] == 100 + (offsets[0] or 0)

    # With the codec back, the service resumes at that offset and learns the rest, once.
    fixed = ServiceProcess(kafka_bootstrap, names, group, checkpoints, tmp_path / "fixed.log")
    assert wait_for(lambda: fixed.model_events() == 400, 90), fixed.log()
    assert fixed.stop() == 0, fixed.log()
    assert latest_manifest(checkpoints)["events_learned"] == 400


def test_a_dead_letter_larger_than_the_dead_letter_topic_takes_is_cut_to_fit_not_a_stall(
    kafka_bootstrap, new_topic, tmp_path
):
    """A dead-letter topic made with a smaller ``max.message.bytes`` than the producer's limit
    refused a large dead letter: the poll could never be acknowledged, the service retried it
    for good (and ignored SIGTERM while it did). The dead letter is now cut to the topic's
    limit, marked as altered, and everything after it is learned."""
    names = topics(new_topic)
    names["dlq_topic"] = new_topic("dlq-small", config={"max.message.bytes": "100000"})
    group = f"g-{names['input_topic']}"
    topic = names["input_topic"]
    garbage = bytes(range(256)) * 800  # 200 KB: over the 64 KiB an event may have
    send(
        kafka_bootstrap,
        topic,
        0,
        [*(event(i) for i in range(50)), (b"junk", garbage), *(event(i) for i in range(50, 100))],
    )
    service = ServiceProcess(
        kafka_bootstrap, names, group, tmp_path / "checkpoints", tmp_path / "service.log"
    )
    try:
        assert wait_for(lambda: service.model_events() == 100, 90), service.log()[-3000:]
        dead = read_records(kafka_bootstrap, names["dlq_topic"], 1)
    finally:
        assert service.stop() == 0, service.log()[-3000:]
    (letter,) = dead
    headers = dict(letter.headers)
    assert headers["streamrec.error.reason"] == b"too_large"
    assert headers["streamrec.error.altered"] == f"truncated:4,{len(garbage)}".encode()
    assert letter.key == b"junk" and garbage.startswith(letter.value) and len(letter.value) < 100_000


def read_records(bootstrap: str, topic: str, expect: int, timeout_s: float = 30.0) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        records, deadline = [], time.monotonic() + timeout_s
        while len(records) < expect and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()
