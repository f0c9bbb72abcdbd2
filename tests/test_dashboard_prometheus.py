"""Every Grafana panel shows real data: the dashboard's PromQL against a real Prometheus.

The live tests run the whole path a user runs: the service (``python -m consumer``) as a
subprocess on the real broker, a few thousand events of the seeded synthetic stream (and of
MovieLens 100K too when the file is here, see ``tests/streams.py``) replayed into its input
topic with a handful of malformed ones among them, and Debian's Prometheus scraping the
service's ``/metrics`` every second. Then every query of every panel is taken from the
dashboard JSON itself and asked of that Prometheus: each must return data, within the range
the panel declares (``min``/``max`` in its field config: every ratio panel says 0..1).

The fast tests at the top need neither Kafka nor Prometheus: they check that the dashboard
only reads series the service's metrics module really exposes.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consumer.metrics import ServiceMetrics
from model.evaluate import BatchQuality
from model.registry import DEFAULT_MODEL
from tests.prometheus import PrometheusServer, find_prometheus, free_port
from tests.service_helpers import end_offsets
from tests.streams import SOURCES, stream

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "monitoring" / "grafana" / "dashboards" / "streamrec.json"

#: How many events the live test replays, and the malformed ones it mixes in.
N_EVENTS = 4000
MALFORMED = [b"this is not json"] * 3 + [b'{"viewer": "x", "video": "y"}'] * 2
#: Grafana's variables, as the test resolves them: one window that covers the whole run.
WINDOW = "5m"
VARIABLES = {"$__rate_interval": WINDOW, "$window": WINDOW}


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panel_queries(dashboard: dict) -> list[tuple[dict, dict, str]]:
    """``(panel, target, promql)`` for every query of every panel, Grafana variables resolved."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            promql = target["expr"]
            for name, value in VARIABLES.items():
                promql = promql.replace(name, value)
            out.append((panel, target, promql))
    return out


# -- fast: the dashboard and the metrics module agree ----------------------------------------


def shadow_label() -> str:
    """The ``model`` label of the service's shadow baseline: the dashboard's reference for lift."""
    _, shadow = ServiceMetrics(registry=CollectorRegistry()).models
    return shadow


def exposed_names() -> set[str]:
    """Sample names a service exposes once every kind of update has happened."""
    metrics = ServiceMetrics(registry=CollectorRegistry())
    metrics.record_batch(10, 9, 0.01)
    metrics.record_dead_letters(["not_json"])
    metrics.record_published(3)
    metrics.record_quality("streamrec", BatchQuality(10, 8, 2, 1.0, 1.5))
    metrics.record_online_hits(5, 1)
    metrics.record_freshness(np.array([0.01]))
    metrics.record_recommended("streamrec", np.array([[0, 1]]), np.array([[0.5, 0.7]]), 10)
    metrics.set_lag(0, 3)
    metrics.set_model_stats(10, 2, 3, 1000, 0.5)
    metrics.record_checkpoint(0.1, 100, ok=True)
    metrics.record_guard_trips(1)
    metrics.record_sync_applied("peer", 1000, 10, 0.001, 0.002, time.time())  # with --sync-every
    text = generate_latest(metrics.registry).decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def test_every_panel_explains_itself_and_has_a_query():
    for panel in load_dashboard()["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["title"] and len(panel["description"]) > 30, panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel["targets"], panel["title"]


def test_the_dashboard_reads_only_series_the_service_exposes():
    exposed = exposed_names()
    for panel, _, promql in panel_queries(load_dashboard()):
        assert "$" not in promql, f"unresolved variable in {panel['title']!r}"
        for name in re.findall(r"\bstreamrec_[a-z0-9_]+", promql):
            assert name in exposed, f"{panel['title']!r} reads {name}, which the service does not expose"


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool comes with Prometheus (scripts/prometheus.sh)"
)
def test_every_panel_query_is_valid_promql(tmp_path):
    # promtool parses recording rules offline: one rule per panel query checks them all.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"panel:{i}", "expr": promql}
                    for i, (_, _, promql) in enumerate(panel_queries(load_dashboard()))
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_covers_what_the_issue_asks_for():
    text = " ".join(promql for _, _, promql in panel_queries(load_dashboard()))
    for name in (
        "streamrec_quality_hits_total",
        "streamrec_quality_ndcg_total",
        "streamrec_quality_reciprocal_rank_total",
        "streamrec_quality_cold_total",
        "streamrec_online_hit_events_total",
        "streamrec_coverage_ratio",
        "streamrec_popularity_bias_ratio",
        "streamrec_events_consumed_total",
        "streamrec_events_learned_total",
        "streamrec_recommendations_published_total",
        "streamrec_batch_processing_seconds_bucket",
        "streamrec_freshness_seconds_bucket",
        "streamrec_consumer_lag_messages",
        "streamrec_model_viewers",
        "streamrec_model_videos",
        "streamrec_model_memory_bytes",
        "streamrec_model_loss",
        "streamrec_model_events",
        "streamrec_events_dead_lettered_total",
        "streamrec_checkpoint_last_success_timestamp_seconds",
    ):
        assert name in text, f"no panel shows {name}"
    assert f'model="{shadow_label()}"' in text, "quality is not compared with the popularity baseline"


# -- live: the real service, the real broker, the real Prometheus ----------------------------

needs_live = [
    pytest.mark.prometheus,
    pytest.mark.slow,
    pytest.mark.skipif(
        find_prometheus() is None, reason="no prometheus binary: run scripts/prometheus.sh (make test does)"
    ),
]


@dataclass
class Live:
    prometheus: PrometheusServer
    sent_valid: int
    sent_malformed: int
    service_log: Path
    source: str
    bootstrap: str
    recs_topic: str


def _create_topics(bootstrap: str, names_partitions: dict[str, int]) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        admin.create_topics(
            [NewTopic(n, num_partitions=p, replication_factor=1) for n, p in names_partitions.items()],
            wait_for_metadata=True,
        )
    finally:
        admin.close()


def _delete_topics(bootstrap: str, names: list[str]) -> None:
    from kafka import KafkaAdminClient

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
        try:
            admin.delete_topics(names, timeout_ms=5000, raise_errors=False)
        finally:
            admin.close()
    except Exception:  # best effort: a leftover topic with a random name harms nobody
        pass


def _replay(bootstrap: str, topic: str, source: str) -> int:
    """``N_EVENTS`` events of ``source`` in time order, keyed by viewer, malformed ones among them."""
    from kafka import KafkaProducer

    from contract.schema import event_to_json

    events = stream(source, N_EVENTS)
    bad_at = set(np.linspace(100, len(events) - 100, len(MALFORMED)).astype(int).tolist())
    malformed = iter(MALFORMED)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        for i, event in enumerate(events):
            if i in bad_at:
                producer.send(topic, key=b"broken", value=next(malformed))
            producer.send(topic, key=event.viewer.encode(), value=event_to_json(event))
        producer.flush()
    finally:
        producer.close()
    return len(events)


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the service exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"{url} did not answer in {timeout} s:\n{log.read_text()[-4000:]}")


def _total(prom: PrometheusServer, promql: str) -> float:
    values = list(prom.values(promql).values())
    return values[0] if values else 0.0


@pytest.fixture(scope="module", params=SOURCES)
def live(request: pytest.FixtureRequest, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory):
    run = uuid.uuid4().hex[:8]
    topics = {f"watch-{run}": 2, f"recs-{run}": 1, f"dlq-{run}": 1}
    watch, recs, dlq = topics
    _create_topics(kafka_bootstrap, topics)
    folder = tmp_path_factory.mktemp("dashboard")
    log = folder / "service.log"
    port = free_port()
    command = [
        sys.executable, "-m", "consumer",
        "--bootstrap-servers", kafka_bootstrap,
        "--input-topic", watch, "--output-topic", recs, "--dlq-topic", dlq,
        "--group-id", f"dashboard-{run}",
        "--metrics-port", str(port),
        # Checkpoints every second, so the checkpoint-age panel has something to show.
        "--checkpoint-dir", str(folder / "checkpoints"), "--checkpoint-interval-s", "1",
    ]  # fmt: skip
    with log.open("wb") as out:
        service = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    prometheus = PrometheusServer([f"127.0.0.1:{port}"])
    try:
        _wait_http(f"http://127.0.0.1:{port}/metrics", service, log)
        prometheus.start()
        # The counters' zero must be scraped before events flow, so rate() sees all of them.
        prometheus.wait_for("up", lambda v: any(x == 1 for x in v.values()), timeout=30)
        time.sleep(1.5)
        sent = _replay(kafka_bootstrap, watch, request.param)
        expected = sent + len(MALFORMED)
        for promql, at_least, timeout in (
            ("sum(streamrec_events_consumed_total)", expected, 240),
            ('sum(streamrec_checkpoints_total{result="ok"})', 1, 60),
        ):
            try:
                prometheus.wait_for(
                    promql, lambda v, n=at_least: bool(v) and next(iter(v.values())) >= n, timeout=timeout
                )
            except TimeoutError as err:
                state = "running" if service.poll() is None else f"exited with {service.returncode}"
                pytest.fail(f"{err}; the service is {state}; its log ends with:\n{log.read_text()[-4000:]}")
        time.sleep(3)  # a few more scrapes after the last batch: lag back to 0, last gauges in
        yield Live(prometheus, sent, len(MALFORMED), log, request.param, kafka_bootstrap, recs)
    finally:
        prometheus.stop()
        if service.poll() is None:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(timeout=30)
            except subprocess.TimeoutExpired:
                service.kill()
                service.wait()
        _delete_topics(kafka_bootstrap, list(topics))


def _check_panels(live: Live) -> list[str]:
    problems = []
    for panel, target, promql in panel_queries(load_dashboard()):
        where = f"{panel['title']!r} [{target['refId']}]"
        try:
            result = live.prometheus.query(promql)
        except ValueError as err:
            problems.append(f"{where}: Prometheus refused the query: {err}")
            continue
        if not result:
            problems.append(f"{where}: no data for {promql!r}")
            continue
        defaults = panel["fieldConfig"]["defaults"]
        low, high = defaults.get("min", -math.inf), defaults.get("max", math.inf)
        for series in result:
            value = float(series["value"][1])
            if not math.isfinite(value) or not low - 1e-9 <= value <= high + 1e-9:
                problems.append(f"{where}: {series['metric']} = {value}, outside [{low}, {high}]")
    return problems


class TestLive:
    """One service run, scraped by one Prometheus; each test reads a different part of it."""

    pytestmark = needs_live

    def test_every_panel_query_returns_data_in_its_declared_range(self, live):
        problems = _check_panels(live)
        assert not problems, "\n".join(problems)

    def test_the_learned_model_beats_the_popularity_baseline(self, live):
        prom = live.prometheus
        totals = {
            dict(labels)["model"]: value
            for labels, value in prom.values(
                "sum by (model) (streamrec_quality_hits_total)"
                " / sum by (model) (streamrec_quality_evaluated_total)"
            ).items()
        }
        shadow = shadow_label()
        assert set(totals) == {DEFAULT_MODEL, shadow}, totals
        assert totals[DEFAULT_MODEL] > totals[shadow], f"{live.source}: HR@10 since start: {totals}"
        # The dashboard's own panels say the same over their window.
        (_, _, lift_query), *_ = [
            q for q in panel_queries(load_dashboard()) if q[0]["title"].startswith("Lift")
        ]
        (lift,) = prom.values(lift_query).values()
        assert lift > 1.0

    def test_counts_match_what_was_sent(self, live):
        prom = live.prometheus
        assert _total(prom, "sum(streamrec_events_consumed_total)") == live.sent_valid + live.sent_malformed
        assert _total(prom, "sum(streamrec_events_learned_total)") == live.sent_valid
        assert _total(prom, "sum(streamrec_model_events)") == live.sent_valid
        # Every list the metric counts is on the output topic, and no more (no crash: none twice).
        published = _total(prom, "sum(streamrec_recommendations_published_total)")
        assert 0 < published == end_offsets(live.bootstrap, live.recs_topic)
        # Every valid event is scored once by each model, as evaluated or as cold.
        scored = prom.values(
            "sum by (model) (streamrec_quality_evaluated_total)"
            " + sum by (model) (streamrec_quality_cold_total)"
        )
        assert {dict(labels)["model"]: n for labels, n in scored.items()} == {
            DEFAULT_MODEL: live.sent_valid,
            shadow_label(): live.sent_valid,
        }

    def test_dead_letters_show_up_by_reason(self, live):
        by_reason = {
            dict(labels)["reason"]: value
            for labels, value in live.prometheus.values(
                "sum by (reason) (streamrec_events_dead_lettered_total)"
            ).items()
        }
        assert by_reason["not_json"] == MALFORMED.count(b"this is not json")
        assert by_reason["missing_field"] == len(MALFORMED) - by_reason["not_json"]
        assert sum(by_reason.values()) == live.sent_malformed

    def test_report_draws_the_live_series(self, live, tmp_path):
        from streamrec.cli import main
        from streamrec.report import from_prometheus

        # What the picture is drawn from: both models' quality, throughput, latency, and totals
        # that agree with what was sent.
        report = from_prometheus(live.prometheus.url, since_s=300, window="30s")
        models = (DEFAULT_MODEL, shadow_label())
        assert set(report.quality) == {f"{m}@10 {model}" for m in ("HR", "NDCG") for model in models}
        assert {"events consumed", "events learned", "lists published"} == set(report.throughput)
        assert {"freshness p50", "freshness p99", "batch time p99"} == set(report.latency)
        assert report.totals["events learned"] == live.sent_valid
        assert report.totals["dead-lettered"] == live.sent_malformed
        pytest.importorskip("matplotlib", reason="streamrec report needs the [report] extra")

        out = Path(os.environ.get("STREAMREC_REPORT_PNG") or tmp_path / "report.png")
        assert main(["report", "--prometheus", live.prometheus.url, "--since", "5m", "--window", "30s",
                     "--out", str(out)]) == 0  # fmt: skip
        assert out.read_bytes()[:4] == b"\x89PNG"
