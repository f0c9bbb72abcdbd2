"""The producer and the recommendation reader against a real Kafka broker.

Everything goes through the command line a user types (``streamrec produce ...``,
``streamrec recs ...``), then the topic is read back with a plain kafka-python consumer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.partitioner.default import murmur2

from contract.events import WatchEvent
from contract.schema import event_from_json, event_to_json
from producer.synth import SyntheticStream
from streamrec.cli import main
from tests.streams import ML100K, SOURCES, stream

REPO = Path(__file__).resolve().parents[1]


def read_topic(bootstrap: str, topic: str, expect: int, timeout: float = 60.0) -> list:
    """All records of ``topic``, partition by partition, once ``expect`` of them are there."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    records: list = []
    deadline = time.monotonic() + timeout
    while len(records) < expect and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    # A moment more, to catch anything beyond what was expected.
    for batch in consumer.poll(timeout_ms=500).values():
        records.extend(batch)
    consumer.close()
    return records


def produce_cli(capsys, *args: str) -> tuple[int, dict]:
    code = main(["produce", *args, "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1]) if out else {}


def write_jsonl(path: Path, events: list[WatchEvent]) -> Path:
    path.write_bytes(b"".join(event_to_json(e) + b"\n" for e in events))
    return path


def shuffled_events() -> list[WatchEvent]:
    """Made-up events written out of time order (files are not always sorted)."""
    events = [
        WatchEvent(
            1_700_000_000.0 + 7 * ((n * 37) % 50), f"viewer-{n % 6}", f"video-{n % 11}", float(n), 600.0
        )
        for n in range(50)
    ]
    return events


def test_replay_sends_every_event_keyed_by_viewer_in_time_order(kafka_bootstrap, new_topic, tmp_path, capsys):
    topic = new_topic("replay")
    events = shuffled_events()
    path = write_jsonl(tmp_path / "events.jsonl", events)
    code, summary = produce_cli(
        capsys, "replay", str(path), "--bootstrap-servers", kafka_bootstrap, "--topic", topic
    )
    assert code == 0
    assert summary["sent"] == 50 and summary["failed"] == 0

    records = read_topic(kafka_bootstrap, topic, 50)
    decoded = [event_from_json(r.value) for r in records]
    assert decoded == sorted(events, key=lambda e: e.timestamp)  # all of them, once, in time order
    assert all(r.key == e.viewer.encode() for r, e in zip(records, decoded, strict=True))


def test_replay_of_a_movielens_file_with_limit_and_loop(kafka_bootstrap, new_topic, tmp_path, capsys):
    topic = new_topic("replay-ml")
    path = tmp_path / "u.data"
    path.write_text(
        "".join(
            f"{u}\t{i}\t4\t{881250000 + 10 * n}\n"
            for n, (u, i) in enumerate([(1, 5), (2, 5), (1, 7), (3, 9)])
        )
    )
    code, summary = produce_cli(
        capsys,
        "replay",
        str(path),
        "--limit",
        "3",
        "--loop",
        "2",
        "--bootstrap-servers",
        kafka_bootstrap,
        "--topic",
        topic,
    )
    assert code == 0 and summary["sent"] == 6
    decoded = [event_from_json(r.value) for r in read_topic(kafka_bootstrap, topic, 6)]
    assert [(e.viewer, e.video) for e in decoded] == [("1", "5"), ("2", "5"), ("1", "7")] * 2
    times = [e.timestamp for e in decoded]
    assert times == sorted(times) and times[3] > times[2]  # the second pass comes after the first
    assert all(e.watch_time is None for e in decoded)  # a rating is a watch of unknown length


def test_replay_creates_a_missing_topic_and_keeps_each_viewer_in_one_ordered_partition(
    kafka_bootstrap, tmp_path, capsys
):
    topic = f"replay-new-{os.getpid()}-{time.monotonic_ns()}"
    events = shuffled_events()
    path = write_jsonl(tmp_path / "events.jsonl", events)
    code, _ = produce_cli(
        capsys,
        "replay",
        str(path),
        "--partitions",
        "3",
        "--bootstrap-servers",
        kafka_bootstrap,
        "--topic",
        topic,
    )
    try:
        assert code == 0
        records = read_topic(kafka_bootstrap, topic, 50)
        assert {r.partition for r in records} <= {0, 1, 2}
        partitions_of: dict[bytes, set[int]] = {}
        for r in records:
            partitions_of.setdefault(r.key, set()).add(r.partition)
        assert all(len(p) == 1 for p in partitions_of.values())  # a viewer never spans partitions
        # ...and it is the partition Kafka's Java client would pick (murmur2 of the key).
        assert all(r.partition == (murmur2(r.key) & 0x7FFFFFFF) % 3 for r in records)
        for key in partitions_of:
            mine = [event_from_json(r.value).timestamp for r in records if r.key == key]
            assert mine == sorted(mine)
        assert len(records) == 50
    finally:
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        admin.delete_topics([topic], raise_errors=False)
        admin.close()


@pytest.mark.parametrize("source", SOURCES)
def test_replay_of_the_first_2000_events_of_a_long_file(kafka_bootstrap, new_topic, tmp_path, capsys, source):
    """The synthetic stream written to a file (and ML-100K's own u.data when it is here)."""
    events = stream(source, 5000)
    path = ML100K if source == "ml-100k" else write_jsonl(tmp_path / "synth.jsonl", events)
    expected = events[:2000]
    topic = new_topic("replay-long")
    where = ["--bootstrap-servers", kafka_bootstrap, "--topic", topic]
    code, summary = produce_cli(capsys, "replay", str(path), "--limit", "2000", *where)
    assert code == 0 and summary["sent"] == 2000
    records = read_topic(kafka_bootstrap, topic, 2000)
    assert [event_from_json(r.value) for r in records] == expected
    assert [r.key.decode() for r in records] == [e.viewer for e in expected]


def test_send_one_event(kafka_bootstrap, new_topic, capsys):
    topic = new_topic("send")
    code = main(
        [
            "produce",
            "send",
            "--viewer",
            "UC2nEn",
            "--video",
            "WK_Nr4",
            "--watch-time",
            "600",
            "--duration",
            "1200",
            "--timestamp",
            "1616963421",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--topic",
            topic,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "sent 1 event " in out and "offset 0" in out
    [record] = read_topic(kafka_bootstrap, topic, 1)
    assert record.key == b"UC2nEn"
    assert event_from_json(record.value) == WatchEvent(1616963421.0, "UC2nEn", "WK_Nr4", 600.0, 1200.0)


def test_synth_to_kafka_is_the_seeded_stream(kafka_bootstrap, new_topic, capsys):
    topic = new_topic("synth")
    code, summary = produce_cli(
        capsys,
        "synth",
        "--viewers",
        "40",
        "--videos",
        "120",
        "--events",
        "800",
        "--seed",
        "5",
        "--bootstrap-servers",
        kafka_bootstrap,
        "--topic",
        topic,
    )
    assert code == 0 and summary["sent"] == 800
    expected = list(SyntheticStream(viewers=40, videos=120, events=800, seed=5))
    records = read_topic(kafka_bootstrap, topic, 800)
    assert [event_from_json(r.value) for r in records] == expected
    assert [r.key.decode() for r in records] == [e.viewer for e in expected]


def test_paced_synth_sends_the_same_stream_no_faster_than_asked(kafka_bootstrap, new_topic, capsys):
    topic = new_topic("synth-rate")
    started = time.monotonic()
    code, summary = produce_cli(
        capsys,
        "synth",
        "--events",
        "200",
        "--viewers",
        "20",
        "--videos",
        "50",
        "--rate",
        "2000",
        "--bootstrap-servers",
        kafka_bootstrap,
        "--topic",
        topic,
    )
    took = time.monotonic() - started
    assert code == 0 and summary["sent"] == 200
    # 200 events at 2,000 a second: the last is due 199 / 2000 s after the first.
    assert took >= 199 / 2000
    expected = list(SyntheticStream(viewers=20, videos=50, events=200, seed=0))
    assert [event_from_json(r.value) for r in read_topic(kafka_bootstrap, topic, 200)] == expected


#: ``send`` one event to a port where no broker listens, giving up after a second.
SEND_TO_NO_BROKER = ["send", "--viewer", "a", "--video", "b"]
SEND_TO_NO_BROKER += ["--bootstrap-servers", "127.0.0.1:1", "--connect-timeout", "1"]


def test_an_unreachable_broker_is_one_clear_line(capsys):
    code = main(["produce", *SEND_TO_NO_BROKER])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "no Kafka broker answered at 127.0.0.1:1" in err and "Traceback" not in err


def publish_lists(bootstrap: str, topic: str, lists: list[dict]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for message in lists:
        producer.send(topic, key=message["viewer"].encode(), value=orjson.dumps(message))
    producer.flush()
    producer.close()


def rec_list(viewer: str, videos: list[str], offset: int) -> dict:
    return {
        "viewer": viewer,
        "items": [{"video": v, "score": 1.0 / (n + 1)} for n, v in enumerate(videos)],
        "model": "streamrec",
        "generated_at": time.time(),
        "event_timestamp": 1704067200.0 + offset,
        "source": {"partition": 0, "offset": offset},
    }


def test_recs_prints_lists_from_the_topic(kafka_bootstrap, new_topic, capsys):
    topic = new_topic("recs")
    publish_lists(
        kafka_bootstrap,
        topic,
        [rec_list("alice", ["v1", "v2"], 0), rec_list("bob", ["v3"], 1), rec_list("alice", ["v4", "v5"], 2)],
    )
    base = ["recs", "--bootstrap-servers", kafka_bootstrap, "--topic", topic]

    assert main(base) == 0
    out = capsys.readouterr().out
    assert out.count("model streamrec") == 3
    assert out.index("v1") < out.index("v3") < out.index("v4")

    assert main([*base, "--viewer", "alice", "--latest"]) == 0
    out = capsys.readouterr().out
    assert "alice" in out and "v4" in out and "v1" not in out and "bob" not in out

    assert main([*base, "--json", "--max", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [json.loads(line)["viewer"] for line in lines] == ["alice", "bob"]


def test_recs_on_a_missing_topic_says_so(kafka_bootstrap, capsys):
    code = main(["recs", "--bootstrap-servers", kafka_bootstrap, "--topic", f"nothing-here-{os.getpid()}"])
    assert code == 2
    assert "does not exist yet" in capsys.readouterr().err


def test_recs_follow_starts_at_the_end_and_sees_new_lists(kafka_bootstrap, new_topic):
    from streamrec.commands.recs import ListReader

    topic = new_topic("recs-follow")
    publish_lists(kafka_bootstrap, topic, [rec_list("old", ["v0"], 0)])
    with ListReader(kafka_bootstrap, topic, follow=True) as reader:
        publish_lists(kafka_bootstrap, topic, [rec_list("new", ["v1"], 1)])
        key, value = next(iter(reader))
    assert key == b"new" and orjson.loads(value)["items"][0]["video"] == "v1"

    with ListReader(kafka_bootstrap, topic, follow=True, from_beginning=True) as reader:
        lists = iter(reader)
        assert [next(lists)[0], next(lists)[0]] == [b"old", b"new"]
        publish_lists(kafka_bootstrap, topic, [rec_list("newer", ["v2"], 2)])
        assert next(lists)[0] == b"newer"  # following: it waits for what comes next


def test_python_dash_m_producer_is_the_same_command():
    result = subprocess.run(
        [sys.executable, "-m", "producer", *SEND_TO_NO_BROKER],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("python -m producer: error: no Kafka broker answered at 127.0.0.1:1")


def test_recs_on_a_topic_of_watch_events_says_it_is_the_wrong_topic(kafka_bootstrap, new_topic, capsys):
    topic = new_topic("recs-wrong")
    publish_lists(kafka_bootstrap, topic, [rec_list("alice", ["v1"], 0)])
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    producer.send(topic, key=b"bob", value=event_to_json(WatchEvent(1.0, "bob", "v9", 30.0)))
    producer.flush()
    producer.close()
    assert main(["recs", "--bootstrap-servers", kafka_bootstrap, "--topic", topic]) == 0
    out, err = capsys.readouterr()
    assert "alice" in out and "bob" not in out
    assert "not recommendation lists" in err and "skipped 1 messages" in err


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["recs", "--connect-timeout", "-5"], "--connect-timeout"),
        (["produce", "send", "--viewer", "a", "--video", "b", "--connect-timeout", "0"], "--connect-timeout"),
        (["produce", "synth", "--events", "0"], "--events"),
        (["produce", "synth", "--rate", "nan"], "--rate"),
    ],
)
def test_timeouts_counts_and_rates_must_be_positive(argv, flag, capsys):
    # Refused before any broker is contacted, with one line naming the flag.
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: expected a positive" in err and "Traceback" not in err


def test_a_topic_the_broker_refuses_to_create_is_one_line_with_its_reason(kafka_bootstrap, capsys):
    argv = ["produce", "send", "--viewer", "a", "--video", "b", "--topic", "no spaces!"]
    assert main([*argv, "--bootstrap-servers", kafka_bootstrap]) == 2
    err = capsys.readouterr().err
    assert "the broker refused to create topic 'no spaces!': Topic name is invalid" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_batch_the_broker_splits_as_too_large_is_still_delivered_and_counted(
    kafka_bootstrap, new_topic, capsys
):
    """A topic whose records may be only 300 bytes: the producer's batches are refused as too
    large, and kafka-python splits and resends them while its flush raises "Future not done".
    Every event still lands once, and the summary says so (it used to crash with a traceback,
    the queued events lost)."""
    topic = new_topic("small-records", config={"max.message.bytes": "300"})
    code, summary = produce_cli(
        capsys, "synth", "--events", "50", "--viewers", "5", "--videos", "5", "--topic", topic,
        "--bootstrap-servers", kafka_bootstrap,
    )  # fmt: skip
    records = read_topic(kafka_bootstrap, topic, expect=summary.get("sent", 0))
    assert (code, summary["sent"], summary["failed"]) == (0, 50, 0)
    assert sorted(r.value for r in records) == sorted(event_to_json(e) for e in SyntheticStream(5, 5, 50, 0))
