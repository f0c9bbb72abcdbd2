"""The service against a real Kafka broker: watch events in, recommendations and dead letters out.

No part of Kafka is faked here: events are produced to a real topic, the service consumes them
as a consumer-group member, and the test reads what it published.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict

import orjson
import pytest
from kafka import KafkaProducer

from consumer.config import ServiceConfig
from consumer.runner import build_service
from contract.schema import event_from_json, event_to_json
from tests.service_helpers import ServiceProcess, latest_manifest, produce, read_all, topics, wait_for
from tests.streams import SOURCES, stream


@pytest.fixture(scope="module", params=SOURCES)
def replay(request):
    """1,500 events in time order: the seeded synthetic stream (about 140 viewers), and the first
    1,500 of ML-100K (about 60 viewers, many with bursts) when the file is here."""
    return stream(request.param, 1500)


SMALL_BATCHES = ("--max-poll-records", "50")
#: The broker's minimum: a service restarted after ``kill -9`` gets its partition back once the
#: group gives up on the dead member, 6 s later instead of the default 45 s.
SHORT_SESSION = ("--session-timeout-ms", "6000")


def run_in_thread(service):
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    return thread


def test_every_watch_gets_a_fresh_list_that_reflects_it(kafka_bootstrap, new_topic, replay):
    names = topics(new_topic, partitions=2)
    produce(kafka_bootstrap, names["input_topic"], [(e.viewer.encode(), event_to_json(e)) for e in replay])
    config = ServiceConfig(
        bootstrap_servers=kafka_bootstrap, group_id=f"g-{names['input_topic']}", metrics_port=0, **names
    )
    service = build_service(config, with_metrics=False)
    thread = run_in_thread(service)
    assert wait_for(lambda: service.model_events >= len(replay)), "the service did not learn every event"
    service.stop()
    thread.join(30)
    assert service.model_events == len(replay)

    # Where each event landed (the producer partitions by viewer), to check each list's source.
    inputs = read_all(kafka_bootstrap, names["input_topic"], expect=len(replay))
    assert len(inputs) == len(replay)
    at = {(r.partition, r.offset): event_from_json(r.value) for r in inputs}

    recs = read_all(kafka_bootstrap, names["output_topic"], expect=1)
    by_viewer = defaultdict(list)
    answered = Counter()
    for r in recs:
        body = orjson.loads(r.value)
        assert r.key.decode() == body["viewer"]
        where = body["source"]["partition"], body["source"]["offset"]
        answered[where] += 1
        # A list answers the watch it names: same viewer, that watch's time.
        assert (at[where].viewer, at[where].timestamp) == (body["viewer"], body["event_timestamp"])
        by_viewer[body["viewer"]].append(body)
    assert max(answered.values()) == 1, "a watch got two lists"

    watched = defaultdict(set)
    last_offset = {}
    for (partition, offset), e in sorted(at.items()):
        watched[e.viewer].add(e.video)
        last_offset[e.viewer] = (partition, offset)
    # Every viewer who watched something got lists; the last one answers their last watch.
    assert set(by_viewer) == set(watched)
    for viewer, lists in by_viewer.items():
        sources = [(b["source"]["partition"], b["source"]["offset"]) for b in lists]
        assert sources == sorted(sources), f"lists for {viewer} are out of order"
        final = lists[-1]
        assert sources[-1] == last_offset[viewer], f"{viewer}'s last watch got no list"
        assert len(final["items"]) == config.top_n
        recommended = [item["video"] for item in final["items"]]
        assert len(set(recommended)) == len(recommended), "a list names a video twice"
        assert not set(recommended) & watched[viewer], "a list recommends a video its viewer already watched"
        scores = [item["score"] for item in final["items"]]
        assert scores == sorted(scores, reverse=True)


def test_malformed_events_go_to_the_dead_letter_topic_and_valid_ones_are_all_learned(
    kafka_bootstrap, new_topic
):
    names = topics(new_topic)
    bad = [
        b"not json at all",
        b'{"viewer": "a", "video": "v"}',  # no timestamp
        b'{"timestamp": 5, "viewer": "", "video": "v"}',  # empty id
        b'{"timestamp": 5, "viewer": "a", "video": "v", "watch_time": -3}',
        b'{"timestamp": 5, "viewer": "a", "video": "v", "watch_time": 1e400}',  # overflows to inf
        b"[1, 2, 3]",
        b"\xff\xfe not utf-8",
        b"",
    ]
    values = []
    valid = 0
    for i in range(200):
        viewer, video = f"u{i % 17}", f"v{(i * 7) % 23}"
        values.append(
            (viewer.encode(), orjson.dumps({"timestamp": 1000 + i, "viewer": viewer, "video": video}))
        )
        valid += 1
        if i % 25 == 0:
            values.append((b"junk", bad[(i // 25) % len(bad)]))
    produce(kafka_bootstrap, names["input_topic"], values)
    config = ServiceConfig(
        bootstrap_servers=kafka_bootstrap, group_id=f"g-{names['input_topic']}", metrics_port=0, **names
    )
    service = build_service(config, with_metrics=False)
    thread = run_in_thread(service)
    assert wait_for(lambda: service.model_events >= valid)
    service.stop()
    thread.join(30)
    assert service.model_events == valid

    dead = read_all(kafka_bootstrap, names["dlq_topic"], expect=len(values) - valid)
    assert len(dead) == len(values) - valid
    sent_bad = [v for k, v in values if k == b"junk"]
    assert [d.value for d in dead] == sent_bad, "dead letters must carry the original value unchanged"
    for d in dead:
        headers = dict(d.headers)
        assert headers["streamrec.error.reason"].decode() in {
            "not_json",
            "not_object",
            "missing_field",
            "bad_type",
            "bad_value",
            "too_large",
        }
        assert headers["streamrec.error.detail"]
        assert headers["streamrec.source"].decode().startswith(names["input_topic"] + "/0/")


def test_sigterm_mid_stream_then_restart_loses_nothing_and_learns_nothing_twice(
    kafka_bootstrap, new_topic, replay, tmp_path
):
    names = topics(new_topic)
    group = f"g-{names['input_topic']}"
    checkpoints = tmp_path / "checkpoints"
    values = [(e.viewer.encode(), event_to_json(e)) for e in replay]

    first_stopping = threading.Event()

    def send() -> None:  # half now; the rest trickles in while the service stops and restarts
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        half = len(values) // 2
        for i, (key, value) in enumerate(values):
            if i == half:
                producer.flush()
                first_stopping.wait(120)
            producer.send(names["input_topic"], key=key, value=value)
            if i > half and i % 50 == 0:
                producer.flush()
                time.sleep(0.3)
        producer.flush()
        producer.close()

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    first = ServiceProcess(
        kafka_bootstrap, names, group, checkpoints, tmp_path / "first.log", extra=SMALL_BATCHES
    )
    assert wait_for(lambda: len(read_all(kafka_bootstrap, names["output_topic"], expect=1, timeout=2)) > 0)
    first_stopping.set()
    assert first.stop() == 0, first.log()
    stopped_at = latest_manifest(checkpoints)["events_learned"]
    assert 0 < stopped_at < len(replay), "the first run should have stopped mid-stream"

    second = ServiceProcess(
        kafka_bootstrap, names, group, checkpoints, tmp_path / "second.log", extra=SMALL_BATCHES
    )
    sender.join(60)

    def published_last_event() -> bool:
        recs = read_all(kafka_bootstrap, names["output_topic"], expect=10**9, timeout=2)
        return any(orjson.loads(r.value)["source"]["offset"] == len(replay) - 1 for r in recs)

    assert wait_for(published_last_event)
    assert second.stop() == 0, second.log()
    assert "restored checkpoint" in second.log()
    # The final checkpoint counts every event exactly once: none lost, none learned twice.
    assert latest_manifest(checkpoints)["events_learned"] == len(replay)

    # What viewers saw: a graceful stop republishes nothing, every watch is answered by a list
    # at or after it, and a list made after the restart still leaves out what its viewer
    # watched before it (the exclusions came back with the checkpoint).
    recs = read_all(kafka_bootstrap, names["output_topic"], expect=10**9, timeout=3)
    lists = [orjson.loads(r.value) for r in recs]
    offsets = [body["source"]["offset"] for body in lists]
    assert len(offsets) == len(set(offsets)), "a graceful stop and restart published a list twice"
    by_viewer = defaultdict(list)
    for body in lists:
        by_viewer[body["viewer"]].append(body)
    watched_before = defaultdict(set)
    after_restart = 0
    for offset, e in enumerate(replay):
        mine = [b["source"]["offset"] for b in by_viewer[e.viewer]]
        assert any(o >= offset for o in mine), f"watch {offset} of {e.viewer} was never answered"
        for body in by_viewer[e.viewer]:
            if body["source"]["offset"] == offset and offset >= stopped_at:
                after_restart += 1
                recommended = {item["video"] for item in body["items"]}
                assert not recommended & watched_before[e.viewer], (
                    f"after the restart, {e.viewer} was recommended a video they had watched"
                )
        watched_before[e.viewer].add(e.video)
    assert after_restart > 0


def test_a_crash_before_the_first_checkpoint_relearns_from_the_log(kafka_bootstrap, new_topic, tmp_path):
    names = topics(new_topic)
    group = f"g-{names['input_topic']}"
    checkpoints = tmp_path / "checkpoints"
    values = [
        (
            f"u{i % 13}".encode(),
            orjson.dumps({"timestamp": 1000 + i, "viewer": f"u{i % 13}", "video": f"v{i % 31}"}),
        )
        for i in range(400)
    ]
    produce(kafka_bootstrap, names["input_topic"], values)
    never = ("--checkpoint-interval-s", "3600", "--checkpoint-every-events", "1000000")

    def published_last_event() -> bool:
        recs = read_all(kafka_bootstrap, names["output_topic"], expect=10**9, timeout=2)
        return any(orjson.loads(r.value)["source"]["offset"] == len(values) - 1 for r in recs)

    first = ServiceProcess(
        kafka_bootstrap, names, group, checkpoints, tmp_path / "first.log", extra=(*never, *SHORT_SESSION)
    )
    assert wait_for(published_last_event), "the first run did not get through the stream"
    first.kill()  # SIGKILL: no final checkpoint, but its offsets are committed
    assert not list(checkpoints.glob("*/ckpt-*"))

    second = ServiceProcess(
        kafka_bootstrap, names, group, checkpoints, tmp_path / "second.log", extra=(*never, *SHORT_SESSION)
    )
    # Everything the first run learned is learned again from the log, once.
    assert wait_for(lambda: second.model_events() == len(values), 60), second.log()
    assert second.stop() == 0, second.log()
    assert latest_manifest(checkpoints)["events_learned"] == len(values)


def test_missing_output_topics_are_created_and_the_recommendations_topic_is_compacted(
    kafka_bootstrap, new_topic
):
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    suffix = new_topic("watch").rsplit("-", 1)[1]
    names = {
        "input_topic": f"watch-{suffix}",
        "output_topic": f"fresh-recs-{suffix}",
        "dlq_topic": f"fresh-dlq-{suffix}",
    }
    produce(kafka_bootstrap, names["input_topic"], [(b"a", b'{"timestamp": 1, "viewer": "a", "video": "v"}')])
    config = ServiceConfig(
        bootstrap_servers=kafka_bootstrap,
        group_id=f"g-{suffix}",
        metrics_port=0,
        checkpoint_dir="none",
        **names,
    )
    service = build_service(config, with_metrics=False)
    thread = run_in_thread(service)
    assert wait_for(lambda: service.model_events == 1)
    service.stop()
    thread.join(30)

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        assert {names["output_topic"], names["dlq_topic"]} <= set(admin.list_topics())
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, names["output_topic"])])
        (configs,) = next(iter(described.values())).values()
        cleanup = configs["cleanup.policy"]
        assert (cleanup["value"] if isinstance(cleanup, dict) else cleanup) == "compact"
        (rec,) = read_all(kafka_bootstrap, names["output_topic"], expect=1, timeout=30)
        assert rec.key == b"a"
        admin.delete_topics([names["output_topic"], names["dlq_topic"]])
    finally:
        admin.close()


def test_topics_made_by_someone_else_with_other_settings_are_named_not_changed(
    kafka_bootstrap, new_topic, caplog
):
    """Kafka Streams checks its internal topics; the service too: lists in a topic that is not
    compacted grow for ever, updates deleted after a week leave late workers short."""
    from consumer.topics import ensure_output_topics

    names = topics(new_topic)  # made by the test: the broker's defaults, delete policy
    updates = new_topic("updates", config={"retention.ms": "3600000"})
    config = ServiceConfig(
        bootstrap_servers=kafka_bootstrap, sync_every=1024, sync_topic=updates, snapshot_every_s=0, **names
    )
    for _ in range(2):  # the second time too: the topics were not changed
        caplog.clear()
        with caplog.at_level("WARNING", logger="consumer.topics"):
            ensure_output_topics(config)
        named = {
            (r.fields["topic"], r.fields["setting"], r.fields["found"], r.fields["wanted"])
            for r in caplog.records
            if "another setting" in r.getMessage()
        }
        assert named == {
            (names["output_topic"], "cleanup.policy", "delete", "compact"),
            (updates, "retention.ms", "3600000", "-1"),
        }
    # Topics the service made itself pass the check.
    caplog.clear()
    fresh = dict(names, output_topic=f"recs-made-{time.time_ns()}", dlq_topic=f"dlq-made-{time.time_ns()}")
    made = ServiceConfig(bootstrap_servers=kafka_bootstrap, **fresh)
    with caplog.at_level("WARNING", logger="consumer.topics"):
        ensure_output_topics(made)
        ensure_output_topics(made)
    assert not [r for r in caplog.records if "another setting" in r.getMessage()]


def test_lag_reaches_zero_on_an_input_written_in_transactions(kafka_bootstrap, new_topic, tmp_path):
    """A transactional producer leaves markers (and aborted records) that a read_committed
    consumer never returns: the service is caught up when it has read past them, not when it
    has learned up to the partition's end (it reported 32 behind for good here)."""
    names = topics(new_topic)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"tx-{names['input_topic']}")
    producer.init_transactions()
    for commit, count in ((True, 100), (False, 30)):
        producer.begin_transaction()
        for i in range(count):
            value = orjson.dumps(
                {"timestamp": 1_700_000_000 + i, "viewer": f"u{i % 9}", "video": f"v{i % 13}"}
            )
            producer.send(names["input_topic"], key=f"u{i % 9}".encode(), value=value, partition=0)
        producer.commit_transaction() if commit else producer.abort_transaction()
    producer.close()
    service = ServiceProcess(
        kafka_bootstrap, names, f"g-{names['input_topic']}", tmp_path / "ckpt", tmp_path / "s.log"
    )
    try:
        assert wait_for(lambda: service.model_events() == 100, 60), service.log()[-3000:]
        lag = 'streamrec_consumer_lag_messages{partition="0"}'
        assert wait_for(lambda: service.gauge(lag) == 0.0, 30), (service.gauge(lag), service.log()[-2000:])
    finally:
        assert service.stop() == 0
