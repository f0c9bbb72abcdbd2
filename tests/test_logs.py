"""The service's logs as an operator reads them: kafka-python's floods and close races held back."""

from __future__ import annotations

import logging
import time
import uuid

import pytest
from kafka import KafkaAdminClient

from consumer.logs import KafkaNoiseFilter
from contract.schema import event_to_json
from producer.sink import ensure_topic
from tests.service_helpers import ServiceProcess, produce, wait_for
from tests.streams import stream


def existing_topics(bootstrap: str) -> set[str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def _record(name: str, message: str, error: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error is not None else None
    return logging.LogRecord(name, logging.ERROR, "", 0, message, None, exc_info)


def test_a_reader_finding_its_connection_closed_is_not_reported_as_an_error() -> None:
    """kafka-python 3.0 logs these tracebacks when a client closes while its network thread
    reads: the socket and protocol are None only on a closed connection."""
    noise = KafkaNoiseFilter()
    gone = AttributeError("'NoneType' object has no attribute 'data_received'")
    assert not noise.filter(_record("kafka.net.selector", "Unhandled exception in task", gone))
    socket_gone = AttributeError("'NoneType' object has no attribute 'recv'")
    assert not noise.filter(_record("kafka.net.transport", "Error receiving network data", socket_gone))
    # Anything else still gets through: another error, another library, kafka's other failures.
    assert noise.filter(_record("kafka.net.selector", "Unhandled exception in task", AttributeError("x")))
    assert noise.filter(_record("consumer.app", "Unhandled exception in task", gone))
    assert noise.filter(_record("kafka.net.selector", "Unhandled exception in task", ValueError("boom")))


def test_a_repeated_kafka_line_is_written_once_per_window_then_counted() -> None:
    now = [0.0]
    noise = KafkaNoiseFilter(window=30.0, clock=lambda: now[0])
    written = []
    for second in range(65):
        now[0] = float(second)
        for message in ("Topic a not found in cluster metadata", "Topic b not found in cluster metadata"):
            record = _record("kafka.cluster", message)
            if noise.filter(record):
                written.append((second, message[6], getattr(record, "fields", {}).get("repeated", 0)))
    # Each topic's line at 0 s, 30 s and 60 s; the later ones say how many were held back.
    assert written == [(0, "a", 0), (0, "b", 0), (30, "a", 29), (30, "b", 29), (60, "a", 29), (60, "b", 29)]
    assert noise.filter(_record("consumer.app", "Topic a not found in cluster metadata"))


def test_a_topic_not_made_yet_is_a_warning_not_an_error() -> None:
    record = _record("kafka.cluster", "Topic watch-events not found in cluster metadata")
    assert KafkaNoiseFilter().filter(record)
    assert (record.levelno, record.levelname) == (logging.WARNING, "WARNING")
    other = _record("kafka.cluster", "Unable to connect")
    assert KafkaNoiseFilter().filter(other) and other.levelname == "ERROR"


def test_an_assignment_before_a_new_topics_metadata_is_not_reported() -> None:
    """The group rejoins when the metadata comes; a missing topic is the service's own warning."""
    noise = KafkaNoiseFilter()
    assert not noise.filter(_record("kafka.coordinator.assignors.range", "No partition metadata for topic t"))
    assert noise.filter(_record("kafka.coordinator", "No partition metadata for topic t"))


@pytest.mark.kafka
@pytest.mark.slow
def test_a_service_started_before_its_topic_exists_logs_the_wait_once(kafka_bootstrap, new_topic, tmp_path):
    """Until its input topic exists kafka-python would log an error every 100 ms; the service
    says once that it waits, and kafka-python's line appears at most once per 30 s. Waiting
    does not create the topic (a broker that allows it would, with its default partitions):
    the topic is made by its producer, here with 3 partitions, and the service reads them all."""
    names = {
        "input_topic": f"later-{uuid.uuid4().hex[:8]}",  # not created: the service waits for it
        "output_topic": new_topic("recs"),
        "dlq_topic": new_topic("dlq"),
    }
    log = tmp_path / "service.log"
    service = ServiceProcess(kafka_bootstrap, names, f"g-{names['input_topic']}", tmp_path / "ckpt", log)
    try:
        assert wait_for(lambda: "waiting for it" in service.log(), 60), service.log()[-3000:]
        time.sleep(4)  # kafka-python would write about 40 lines by now
        assert names["input_topic"] not in existing_topics(kafka_bootstrap)
        ensure_topic(kafka_bootstrap, names["input_topic"], partitions=3)
        events = stream("synthetic", 200)
        keyed = [(e.viewer.encode(), event_to_json(e)) for e in events]
        produce(kafka_bootstrap, names["input_topic"], keyed)
        assert wait_for(lambda: (service.model_events() or 0) == len(events), 120), service.log()[-3000:]
    finally:
        assert service.stop() == 0
    lines = service.log().splitlines()
    assert sum("waiting for it" in line for line in lines) == 1
    waited = [line for line in lines if "not found in cluster metadata" in line]
    assert len(waited) <= 1 and all("level=warning" in line for line in waited)
    assert sum("NotCoordinatorError" in line for line in lines) <= 1
    assert not [line for line in lines if "Traceback" in line], "a traceback in a clean run"
