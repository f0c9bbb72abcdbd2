"""The end-to-end demo: broker, service, a stream of watch events, recommendations coming out.

``streamrec demo`` (and ``make demo``) runs the whole pipeline on one machine:

1. a Kafka broker: the local one from :mod:`streamrec.kafka_local` (started if needed; with
   ``--secure``, a SASL_SSL one with a fresh user and password), or any broker given with
   ``--bootstrap-servers`` and the connection flags of :mod:`contract.connection`;
2. the service (:class:`consumer.app.StreamrecService`) in this process, with its ``/metrics``
   endpoint, on demo topics that are recreated empty on every run;
3. a producer sending the synthetic stream (or a MovieLens/JSON-lines file) at a steady rate,
   with a few malformed events mixed in to show the dead-letter topic;
4. a live table of what the service learned, then sample recommendation lists read back from
   the output topic.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import orjson

from contract.connection import KafkaConnection
from contract.events import WatchEvent

TOPICS = {
    "input_topic": "streamrec-demo.watch-events",
    "output_topic": "streamrec-demo.recommendations",
    "dlq_topic": "streamrec-demo.watch-events-dlq",
}
MALFORMED = [
    b"this is not JSON",
    b'{"viewer": "someone", "video": "something"}',
    b'{"timestamp": 1700000000, "viewer": "v1", "video": "x", "watch_time": -20}',
    b'{"timestamp": 1700000000, "viewer": true, "video": "x"}',
]


@dataclass
class DemoOptions:
    events: int = 30_000
    rate: float = 3000.0
    viewers: int = 2000
    videos: int = 2000
    seed: int = 0
    data: str | None = None
    #: A broker to use instead of the local one (with its TLS/SASL settings).
    connection: KafkaConnection | None = None
    #: Start the local broker with SASL_SSL only (a fresh user and password, a self-signed CA).
    secure: bool = False
    metrics_port: int = 8000
    partitions: int = 3
    malformed_every: int = 1000


def _say(text: str) -> None:
    print(text, flush=True)


def _broker(options: DemoOptions) -> tuple[KafkaConnection, object | None]:
    """How to connect, and the local broker when this demo started it (to stop it after)."""
    if options.connection is not None:
        _say(f"[1/4] Kafka: using {options.connection.bootstrap_servers}")
        return options.connection, None
    from streamrec import kafka_local

    if options.secure:
        # A throwaway user for a throwaway broker: its folder is new on every run.
        folder = tempfile.mkdtemp(prefix="streamrec-demo-kafka-")
        user, password = "streamrec-demo", secrets.token_urlsafe(18)
        broker = kafka_local.LocalBroker(
            folder, port=kafka_local.free_port(count=2), security="sasl_ssl", user=user, password=password
        )
        _say("[1/4] Kafka: starting a local SASL_SSL broker (TLS, SCRAM-SHA-512, no plain listener)...")
    else:
        broker = kafka_local.LocalBroker(kafka_local.default_data_dir())
        status = broker.status()
        if status.ready:
            _say(f"[1/4] Kafka: local broker already running at {status.bootstrap}")
            return KafkaConnection(status.bootstrap), None
        _say("[1/4] Kafka: starting a local broker (the first run fetches its jars with Maven)...")
    started = time.monotonic()
    bootstrap = broker.start()
    _say(f"      up at {bootstrap} in {time.monotonic() - started:.1f} s (data in {broker.data_dir})")
    if not options.secure:
        return KafkaConnection(bootstrap), broker
    _say(f"      ca: {broker.ca_path}; every client below connects over SASL_SSL as {broker.user!r}")
    connection = KafkaConnection(
        bootstrap, "SASL_SSL", "SCRAM-SHA-512", broker.user, broker.password, ssl_cafile=str(broker.ca_path)
    )
    return connection, broker


def _fresh_topics(connection: KafkaConnection, partitions: int) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(**connection.client_options(), client_id="streamrec-demo")
    try:
        existing = set(admin.list_topics()) & set(TOPICS.values())
        if existing:
            admin.delete_topics(sorted(existing), timeout_ms=10_000)
            deadline = time.monotonic() + 30
            while set(admin.list_topics()) & existing and time.monotonic() < deadline:
                time.sleep(0.2)
        admin.create_topics(
            [
                NewTopic(TOPICS["input_topic"], partitions, 1),
                NewTopic(TOPICS["output_topic"], 1, 1, topic_configs={"cleanup.policy": "compact"}),
                NewTopic(TOPICS["dlq_topic"], 1, 1),
            ]
        )
        admin.wait_for_topics(list(TOPICS.values()), timeout_ms=30_000)
    finally:
        admin.close()


def _events(options: DemoOptions) -> tuple[Iterator[WatchEvent], str]:
    if options.data:
        from producer.readers import read_events

        events = read_events(options.data)[: options.events]
        return iter(events), f"{len(events):,} events replayed from {options.data}"
    from producer.synth import SyntheticStream

    stream = SyntheticStream(options.viewers, options.videos, options.events, options.seed)
    return iter(stream), (
        f"{options.events:,} synthetic watch events ({options.viewers:,} viewers, {options.videos:,} videos)"
    )


def _produce(
    connection: KafkaConnection, events: Iterator[WatchEvent], options: DemoOptions, sent: list[int]
) -> None:
    from producer.pacing import paced
    from producer.sink import KafkaSink

    with KafkaSink(connection, TOPICS["input_topic"], partitions=None) as sink:
        for i, event in enumerate(paced(events, rate=options.rate)):
            sink.send(event)
            if options.malformed_every and i % options.malformed_every == options.malformed_every - 1:
                sink.send_raw(b"demo", MALFORMED[(i // options.malformed_every) % len(MALFORMED)])
            sent[0] = i + 1


def _sample_lists(connection: KafkaConnection, how_many: int = 3) -> list[dict]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        TOPICS["output_topic"],
        **connection.client_options(),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=2000,
    )
    latest: dict[str, dict] = {}
    for record in consumer:
        body = orjson.loads(record.value)
        latest[body["viewer"]] = body
    consumer.close()
    return list(latest.values())[-how_many:]


def run_demo(options: DemoOptions) -> int:
    from prometheus_client import CollectorRegistry

    from consumer.config import ServiceConfig
    from consumer.logs import configure
    from consumer.metrics import start_http_server
    from consumer.runner import build_service

    configure(os.environ.get("STREAMREC_LOG_LEVEL", "WARNING"))
    # kafka-python warns when its network thread waited on a batch's compute (the GIL) over
    # 100 ms: telemetry for an operator's log, noise between the demo's table rows.
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
    connection, started_broker = _broker(options)
    server = None
    try:
        _fresh_topics(connection, options.partitions)
        config = ServiceConfig(
            bootstrap_servers=connection.bootstrap_servers,
            security=connection,
            group_id=f"streamrec-demo-{int(time.time())}",
            metrics_port=options.metrics_port,
            checkpoint_dir=tempfile.mkdtemp(prefix="streamrec-demo-"),
            **TOPICS,
        )
        # A registry of its own: a second demo in one process must not meet the first's metrics.
        registry = CollectorRegistry()
        service = build_service(config, with_metrics=True, registry=registry)
        metrics_note = "metrics off"
        if options.metrics_port:
            try:
                server, port = start_http_server(options.metrics_port, registry=registry)
                metrics_note = f"metrics on http://127.0.0.1:{port}/metrics"
            except OSError:
                server, port = start_http_server(0, registry=registry)
                metrics_note = f"port {options.metrics_port} busy; metrics on http://127.0.0.1:{port}/metrics"
        worker = threading.Thread(target=service.run, name="streamrec-service", daemon=True)
        worker.start()
        _say(f"[2/4] Service: learning from {TOPICS['input_topic']}, publishing to {TOPICS['output_topic']}")
        shadow = service.shadow.name if service.shadow else None
        beside = f"beside the {shadow!r} baseline" if shadow else "alone"
        _say(f"      model {service.model.name!r} {beside}; {metrics_note}")

        events, what = _events(options)
        _say(
            f"[3/4] Producing {what} at {options.rate:,.0f}/s, "
            f"one malformed event in {options.malformed_every}"
        )
        sent = [0]
        producer = threading.Thread(target=_produce, args=(connection, events, options, sent), daemon=True)
        started = time.monotonic()
        producer.start()
        baseline = f"HR@10 {shadow or 'baseline'}"
        _say(f"{'time':>6} {'sent':>8} {'learned':>8} {'HR@10 model':>12} {baseline:>21} {'dead':>5}")
        last_print = 0.0
        while True:
            done = not producer.is_alive() and service.model_events >= sent[0]
            now = time.monotonic() - started
            if now - last_print >= 2.0 or done:
                last_print = now
                model_hr = service.evaluator.report.window_hr
                shadow_hr = service.shadow_evaluator.report.window_hr if service.shadow_evaluator else 0.0
                _say(
                    f"{now:5.0f}s {sent[0]:8,} {service.model_events:8,} {model_hr:12.3f} "
                    f"{shadow_hr:21.3f} {service.dead_lettered:5}"
                )
            if done or now > 600:
                break
            if not worker.is_alive():
                _say("      the service stopped unexpectedly; see the error above")
                return 1
            time.sleep(0.2)
        service.stop()
        worker.join(30)
        report = service.evaluator.report
        baseline_report = service.shadow_evaluator.report if service.shadow_evaluator else None
        _say(f"[4/4] Learned {service.model_events:,} events in {time.monotonic() - started:.1f} s.")
        _say(
            f"      test-then-train HR@10: {report.hr:.3f} for {service.model.name!r}"
            + (
                f" vs {baseline_report.hr:.3f} for {shadow!r} ({report.hr / baseline_report.hr:.1f}x)"
                if baseline_report and baseline_report.hr
                else ""
            )
            + f", over {report.evaluated:,} evaluated events"
        )
        for body in _sample_lists(connection):
            videos = ", ".join(item["video"] for item in body["items"][:5])
            _say(f"      viewer {body['viewer']}: {videos}, ...")
        recs = f"streamrec recs --topic {TOPICS['output_topic']}"
        recs += f" --bootstrap-servers {connection.bootstrap_servers}"
        if started_broker is None:
            _say(f"      read them yourself: {recs}")
        elif not options.secure:  # the broker this demo started stops now; its topics stay on disk
            _say(f"      read them yourself: streamrec kafka up && {recs}  (the demo's broker stops now)")
        return 0
    finally:
        if server is not None:
            server.shutdown()
        if started_broker is not None:
            started_broker.stop()
            if options.secure:
                import shutil

                shutil.rmtree(started_broker.data_dir, ignore_errors=True)
