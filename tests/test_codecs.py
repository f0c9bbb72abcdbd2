"""Records compressed with every codec Kafka has are learned, not a crash loop.

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
