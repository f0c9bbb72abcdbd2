"""Records compressed with every codec Kafka has are learned, not a crash loop; outputs are
written with the configured codec.

Production producers commonly compress with lz4 or zstd (Java's ``compression.type``); before
the codec libraries became dependencies the service stopped with ``UnsupportedCodecError`` on
such a batch, and again at every restart on the same offset. Each codec here is produced by
kafka-python into a real topic and the real service must learn every event and answer every
viewer.
"""

from __future__ import annotations

import threading

import orjson
import pytest
from service_helpers import produce, read_all, topics, wait_for

from consumer.config import ServiceConfig
from consumer.runner import build_service
from contract.schema import event_to_json
from producer.synth import synth_events

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_a_stream_compressed_with_each_codec_is_learned_whole(kafka_bootstrap, new_topic, codec):
    events = list(synth_events(viewers=60, videos=200, events=600, seed=7))
    names = topics(new_topic, partitions=2)
    values = [(e.viewer.encode(), event_to_json(e)) for e in events]
    produce(kafka_bootstrap, names["input_topic"], values, compression_type=codec)
    config = ServiceConfig(
        bootstrap_servers=kafka_bootstrap, group_id=f"g-{names['input_topic']}", metrics_port=0, **names
    )
    service = build_service(config, with_metrics=False)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: service.model_events >= len(events)), f"{codec}: not every event was learned"
    finally:
        service.stop()
        thread.join(30)
    assert service.model_events == len(events)
    viewers = {e.viewer for e in events}
    lists = read_all(kafka_bootstrap, names["output_topic"], expect=len(viewers))
    assert {orjson.loads(r.value)["viewer"] for r in lists} == viewers
    assert read_all(kafka_bootstrap, names["dlq_topic"], expect=0, timeout=2) == []


def _bytes_on_disk(bootstrap: str, topic: str) -> int:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return sum(
            partition["partition_size"]
            for broker in admin.describe_log_dirs([topic])
            for log_dir in broker["log_dirs"]
            for t in log_dir["topics"]
            if t["name"] == topic
            for partition in t["partitions"]
        )
    finally:
        admin.close()


def test_the_outputs_are_written_with_the_chosen_codec_and_read_back_whole(kafka_bootstrap, new_topic):
    """``--output-compression``: zstd (the default) keeps the same lists in a fraction of the bytes."""
    events = list(synth_events(viewers=80, videos=300, events=800, seed=9))
    names = topics(new_topic, partitions=1)
    produce(kafka_bootstrap, names["input_topic"], [(e.viewer.encode(), event_to_json(e)) for e in events])
    assert ServiceConfig().output_compression == "zstd"
    written = {}
    for codec in ("none", "zstd"):
        output = new_topic(f"recs-{codec}")
        config = ServiceConfig(
            bootstrap_servers=kafka_bootstrap,
            group_id=f"g-{output}",
            metrics_port=0,
            checkpoint_dir="none",
            output_compression=codec,
            # Polls sized by count, not by the measured time: the two runs must cut the same
            # batches (a poll budget makes the cut depend on how busy the machine was).
            poll_budget_ms=600_000.0,
            **(names | {"output_topic": output}),
        )
        service = build_service(config, with_metrics=False)
        thread = threading.Thread(target=service.run, daemon=True)
        thread.start()
        try:
            assert wait_for(lambda s=service: s.model_events >= len(events)), codec
        finally:
            service.stop()
            thread.join(30)
        lists = read_all(kafka_bootstrap, output, expect=1)
        sources = [orjson.loads(r.value)["source"] for r in lists]
        written[codec] = (sources, _bytes_on_disk(kafka_bootstrap, output))
    assert written["zstd"][0] == written["none"][0], "the same lists, in the same order"
    assert written["zstd"][1] < 0.5 * written["none"][1], written
