"""The experiment readout says what :mod:`consumer.experiment` says, read through a real Prometheus.

Two "workers" (a :class:`consumer.metrics.ServiceMetrics` each, on its own registry and HTTP
port, as two service processes would be) export a three-arm experiment's counters; Debian's
Prometheus scrapes both every second. The counts are fed in steps, from nothing to a decided
experiment, each viewer on one worker (as the service's partitioning by viewer does), with the
per-viewer sums made exactly as the service makes them. After each step:

* every query of the Grafana dashboard's readout (taken from the dashboard JSON) must equal
  :func:`consumer.experiment.rate_interval` and :func:`consumer.experiment.compare` on the
  same counts: the mSPRT p-value, the difference and its interval, each arm's hit rate and its
  interval;
* ``streamrec report``'s readout (:func:`streamrec.report.from_prometheus`) must give the same
  numbers, and the command prints them as a table.

No mock of Prometheus anywhere: the numbers go through its scrape, storage and PromQL engine.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from consumer.app import Online
from consumer.experiment import Counts, compare, rate_interval
from consumer.metrics import ServiceMetrics, start_http_server
from model.evaluate import BatchQuality
from streamrec.report import CONTROL, from_prometheus, readout_promql
from tests.prometheus import PrometheusServer, find_prometheus, free_port
from tests.test_dashboard_prometheus import _create_topics, _delete_topics, _replay, _wait_http, panel_queries

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "monitoring" / "grafana" / "dashboards" / "streamrec.json"

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.skipif(
        find_prometheus() is None, reason="no prometheus binary: run scripts/prometheus.sh (make test does)"
    ),
]

#: The experiment: (arm, model, share of viewers), the control first.
ARMS = (("control", "streamrec", 0.5), ("treatment", "most_popular", 0.3), ("slow", "isgd", 0.2))
#: Each arm's true hit rate: treatment is planted to be better, slow to be worse.
TRUE_RATE = {"control": 0.10, "treatment": 0.16, "slow": 0.07}
WORKERS = 2
VIEWERS = 300  # per arm
#: Events per arm added by each step: nothing at all, the control alone, a few (undecided), many.
STEPS = (
    {"control": 0, "treatment": 0, "slow": 0},
    {"control": 40, "treatment": 0, "slow": 0},
    {"control": 150, "treatment": 120, "slow": 60},
    {"control": 9000, "treatment": 6000, "slow": 6000},
)
REL = 1e-9  # PromQL's float64 arithmetic, term by term the same as consumer.experiment's


@dataclass
class ArmStream:
    """One arm's viewers on one worker: their shown events and hits, and the sums exported."""

    per_viewer: dict[str, list[int]] = field(default_factory=dict)
    #: shown, hits, sum of shown squared, sum of hits squared, sum of products, viewers.
    sums: list[int] = field(default_factory=lambda: [0] * 6)
    watch: list[float] = field(default_factory=lambda: [0.0, 0.0])  # shown, hit watch seconds

    def add(self, viewer: str, hit: bool, watched: float) -> Online:
        """One event of ``viewer``: the increments, as the service makes them (consumer.app)."""
        new = viewer not in self.per_viewer
        shown, hits = self.per_viewer.setdefault(viewer, [0, 0])
        # (s + 1)**2 - s**2 = 2 s + 1; likewise for hits and the product.
        online = Online(
            shown=1,
            hits=int(hit),
            shown_watch=watched,
            hit_watch=watched * hit,
            shown_squares=2 * shown + 1,
            hit_squares=(2 * hits + 1) * hit,
            products=hits + (shown + 1) * hit,
            viewers=int(new),
        )
        self.per_viewer[viewer] = [shown + 1, hits + hit]
        for i, d in enumerate(
            (1, online.hits, online.shown_squares, online.hit_squares, online.products, new)
        ):
            self.sums[i] += d
        self.watch[0] += watched
        self.watch[1] += watched * hit
        return online

    def check(self) -> None:
        """The running sums are the per-viewer sums (the increments are right)."""
        counts = list(self.per_viewer.values())
        assert self.sums == [
            sum(s for s, _ in counts),
            sum(h for _, h in counts),
            sum(s * s for s, _ in counts),
            sum(h * h for _, h in counts),
            sum(s * h for s, h in counts),
            len(counts),
        ]


@dataclass
class Experiment:
    prometheus: PrometheusServer
    workers: list[ServiceMetrics]
    streams: list[dict[str, ArmStream]]
    rng: random.Random

    def add(self, arm: str, events: int) -> None:
        """``events`` events of ``arm``'s viewers, each viewer on one worker, exported like the
        service does. A viewer's events are correlated: some viewers hit far more often than others."""
        for _ in range(events):
            v = self.rng.randrange(VIEWERS)
            viewer = f"{arm}-v{v}"
            worker = v % WORKERS
            taste = 0.5 + (v % 5) / 4  # 0.5 .. 1.5 times the arm's rate
            hit = self.rng.random() < TRUE_RATE[arm] * taste
            stream = self.streams[worker][arm]
            online = stream.add(viewer, hit, self.rng.uniform(10, 600))
            shown, hits, squares, hit_squares, products, viewers = stream.sums
            totals = Online(shown, hits, *stream.watch, squares, hit_squares, products, viewers)
            self.workers[worker].record_online(arm, online, totals)

    def counts(self) -> dict[str, Counts]:
        """Each arm's counts summed over the workers: what the readout should be computed from."""
        out = {}
        for arm, _, _ in ARMS:
            for s in self.streams:
                s[arm].check()
            totals = [sum(x) for x in zip(*(s[arm].sums for s in self.streams), strict=True)]
            out[arm] = Counts(*totals)
        return out

    def watch(self, arm: str) -> tuple[float, float]:
        return (sum(s[arm].watch[0] for s in self.streams), sum(s[arm].watch[1] for s in self.streams))

    def wait_scraped(self) -> None:
        """Until Prometheus holds the last state of every worker's online counters."""
        expected = self.counts()
        fields = (
            "shown_events",
            "hit_events",
            "shown_squares",
            "hit_squares",
            "shown_hit_products",
            "viewers",
        )
        for i, name in enumerate(fields):
            want = {arm: float(c[i]) for arm, c in expected.items()}
            self.prometheus.wait_for(
                f"sum by (arm) (streamrec_experiment_{name})",
                lambda got, want=want: {dict(k)["arm"]: v for k, v in got.items()} == want,
                timeout=30,
            )
        self.prometheus.wait_for(
            "sum(streamrec_experiment_fallback_lists_total)",
            lambda got: list(got.values()) == [7.0],
            timeout=30,
        )


@pytest.fixture(scope="module")
def experiment():
    workers, servers, targets = [], [], []
    for _ in range(WORKERS):
        metrics = ServiceMetrics(("streamrec", "recent_popular"), registry=CollectorRegistry(), arms=ARMS)
        server, port = start_http_server(0, addr="127.0.0.1", registry=metrics.registry)
        workers.append(metrics)
        servers.append(server)
        targets.append(f"127.0.0.1:{port}")
    # What the report shows beside the online hit rate: HR@10, coverage, bias, fallbacks.
    for i, metrics in enumerate(workers):
        for j, (arm, model, _) in enumerate(ARMS):
            metrics.record_quality(model, BatchQuality(100, 90, 10 + 5 * j + i, 5.0, 4.0), arm)
            rows = np.arange(20 * (j + 1)).reshape(-1, 10)
            metrics.record_recommended(
                model, rows, np.full(rows.shape, 0.2 * (j + 1)), catalogue=100, arm=arm
            )
    workers[0].record_fallback("slow", "exception", 5, healthy=False)
    workers[1].record_fallback("slow", "guard", 2, healthy=True)
    prometheus = PrometheusServer(targets)
    try:
        prometheus.start()
        prometheus.wait_for("sum(up)", lambda v: list(v.values()) == [float(WORKERS)], timeout=30)
        streams = [{arm: ArmStream() for arm, _, _ in ARMS} for _ in range(WORKERS)]
        yield Experiment(prometheus, workers, streams, random.Random(13))
    finally:
        prometheus.stop()
        for server in servers:
            server.shutdown()


def experiment_dashboard() -> dict:
    """The dashboard with only the panels of its Experiment row."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    start = next(
        i for i, p in enumerate(panels) if p["type"] == "row" and p["title"].startswith("Experiment")
    )
    end = next((i for i, p in enumerate(panels) if i > start and p["type"] == "row"), len(panels))
    return {**dashboard, "panels": panels[start + 1 : end]}


def dashboard_readout() -> dict[str, str]:
    """The dashboard's readout queries, by the key of :func:`streamrec.report.readout_promql`."""
    wanted = {promql: key for key, promql in readout_promql().items()}
    panels = json.loads(DASHBOARD.read_text())["panels"]
    found = {
        wanted[t["expr"]]: t["expr"] for p in panels for t in p.get("targets", []) if t["expr"] in wanted
    }
    missing = set(wanted.values()) - set(found)
    assert not missing, f"the dashboard lacks the readout's {sorted(missing)} (see readout_promql)"
    return found


def expected_readout(counts: dict[str, Counts]) -> dict[str, dict[str, float]]:
    """What :mod:`consumer.experiment` says, per query key and arm (the control against itself
    too, as the dashboard shows it: difference 0, p-value 1)."""
    out: dict[str, dict[str, float]] = {}
    for arm, c in counts.items():
        rate, versus = rate_interval(c), compare(counts[CONTROL], c)
        values = {
            "shown": c.shown,
            "hit rate": c.rate,
            "hit rate low": rate.low,
            "hit rate high": rate.high,
            "difference": versus.difference,
            "difference low": versus.low,
            "difference high": versus.high,
            "p-value": versus.p_value,
        }
        for key, value in values.items():
            out.setdefault(key, {})[arm] = value
    return out


def test_the_dashboard_and_the_report_read_out_what_consumer_experiment_says(experiment, tmp_path, capsys):
    queries = dashboard_readout()
    prom = experiment.prometheus
    p_values = []
    for step, events in enumerate(STEPS):
        for arm, n in events.items():
            experiment.add(arm, n)
        experiment.wait_scraped()
        counts = experiment.counts()
        expected = expected_readout(counts)

        # The dashboard: each query of its readout, as Grafana asks it.
        for key, promql in queries.items():
            got = {dict(labels)["arm"]: value for labels, value in prom.values(promql).items()}
            assert set(got) == set(counts), f"step {step}, {key}: arms {sorted(got)}"
            for arm, value in got.items():
                want = expected[key][arm]
                assert value == pytest.approx(want, rel=REL, abs=1e-12), f"step {step}, {key}, {arm}"
        p_values.append(expected["p-value"])

        # The report: the same numbers, from the counters' totals through consumer.experiment.
        report = from_prometheus(prom.url, since_s=120, window="30s")
        assert [a.arm for a in report.experiment] == ["control", "slow", "treatment"]  # the control first
        for a in report.experiment:
            assert a.online == counts[a.arm]  # exact: counters of whole numbers, summed
            assert a.hit_rate == rate_interval(counts[a.arm])
            if a.arm == CONTROL:
                assert a.versus_control is None
                continue
            assert a.versus_control == compare(counts[CONTROL], counts[a.arm])
            # ... which is what the dashboard shows for that arm.
            dashboard_p = {dict(k)["arm"]: v for k, v in prom.values(queries["p-value"]).items()}
            assert a.versus_control.p_value == pytest.approx(dashboard_p[a.arm], rel=REL, abs=1e-12)

    # The steps covered what matters: no data (p = 1), undecided, and decided both ways.
    assert p_values[0] == {"control": 1.0, "treatment": 1.0, "slow": 1.0}
    assert 0.05 < p_values[2]["treatment"] < 1.0
    assert p_values[-1]["treatment"] < 0.01 and p_values[-1]["slow"] < 0.05
    final = report.experiment
    treatment = next(a for a in final if a.arm == "treatment")
    assert treatment.versus_control.decided and treatment.versus_control.low > 0

    # The rest of each arm's line: what the two workers exported, summed or averaged.
    by_arm = {a.arm: a for a in final}
    for j, (arm, model, share) in enumerate(ARMS):
        a = by_arm[arm]
        assert (a.model, a.share) == (model, pytest.approx(share))
        assert a.hr_at_10 == pytest.approx((2 * (10 + 5 * j) + 1) / 180)
        assert a.coverage == pytest.approx(0.2 * (j + 1))
        assert a.popularity_bias == pytest.approx(0.2 * (j + 1))
        assert (a.shown_watch_s, a.hit_watch_s) == pytest.approx(experiment.watch(arm))
    assert (by_arm["slow"].fallbacks, by_arm["slow"].healthy) == (7, False)
    assert by_arm["treatment"].fallbacks == 0 and by_arm["treatment"].healthy

    # The command prints the readout as a table, and draws it in the PNG.
    pytest.importorskip("matplotlib", reason="streamrec report needs the [report] extra")
    from streamrec.cli import main

    out = tmp_path / "report.png"
    assert (
        main(["report", "--prometheus", prom.url, "--since", "2m", "--window", "30s", "--out", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert out.read_bytes()[:4] == b"\x89PNG" and printed.rstrip().endswith(str(out))
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("arm "))
    assert [line.split()[0] for line in lines[header + 1 : header + 4]] == ["control", "slow", "treatment"]
    assert "(falling back)" in lines[header + 2]
    versus = {line.split()[0]: line for line in lines if line.startswith(("slow ", "treatment "))}
    assert "yes: treatment is higher" in versus["treatment"]
    p = treatment.versus_control.p_value
    assert (f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}") in versus["treatment"]
    assert math.isfinite(p)


def test_a_service_without_an_experiment_has_no_readout_in_the_report(tmp_path):
    metrics = ServiceMetrics(registry=CollectorRegistry())  # one arm, "control"
    server, port = start_http_server(0, addr="127.0.0.1", registry=metrics.registry)
    try:
        with PrometheusServer([f"127.0.0.1:{port}"]) as prom:
            metrics.record_online("control", (50, 9, 0, 0, 50, 9, 9, 50), (50, 9, 0, 0, 50, 9, 9, 50))
            prom.wait_for("sum(streamrec_experiment_shown_events)", lambda v: list(v.values()) == [50.0])
            assert from_prometheus(prom.url, since_s=60).experiment == []
            # The dashboard's readout still shows the one arm: the control against itself.
            (p_value,) = prom.values(readout_promql()["p-value"]).items()
            assert p_value == ((("arm", "control"),), 1.0)
    finally:
        server.shutdown()


# -- live: the real service with two arms, the real broker, the real Prometheus ----------------


@pytest.mark.slow
def test_a_live_two_arm_service_fills_every_panel_of_the_experiment_row(kafka_bootstrap, tmp_path, capsys):
    """The service with ``--arms`` exports what the readout reads: every query of the dashboard's
    Experiment row returns a finite value for both arms, and the PromQL p-value is compare()'s on
    the counts the service exported."""

    run = uuid.uuid4().hex[:8]
    topics = {f"watch-{run}": 2, f"recs-{run}": 1, f"dlq-{run}": 1}
    watch, recs, dlq = topics
    _create_topics(kafka_bootstrap, topics)
    log, port = tmp_path / "service.log", free_port()
    command = [
        sys.executable, "-m", "consumer",
        "--bootstrap-servers", kafka_bootstrap,
        "--input-topic", watch, "--output-topic", recs, "--dlq-topic", dlq,
        "--group-id", f"readout-{run}", "--metrics-port", str(port),
        "--arms", "control=streamrec,treatment=most_popular", "--experiment-salt", run,
    ]  # fmt: skip
    with log.open("wb") as out:
        service = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    prom = PrometheusServer([f"127.0.0.1:{port}"])
    try:
        _wait_http(f"http://127.0.0.1:{port}/metrics", service, log)
        prom.start()
        prom.wait_for("up", lambda v: any(x == 1 for x in v.values()), timeout=30)
        time.sleep(1.5)  # the counters' zero scraped before events flow, so rate() sees them all
        sent = _replay(kafka_bootstrap, watch, "synthetic")
        prom.wait_for(
            "sum(streamrec_events_learned_total)", lambda v: list(v.values()) == [sent], timeout=240
        )
        time.sleep(3)  # a few more scrapes after the last batch

        experiment_row = [
            q for q in panel_queries(json.loads(DASHBOARD.read_text())) if q[0]["id"] in range(27, 33)
        ]
        assert len(experiment_row) >= 12
        problems = []
        for panel, target, promql in experiment_row:
            where = f"{panel['title']!r} [{target['refId']}]"
            got = {r["metric"].get("arm"): float(r["value"][1]) for r in prom.query(promql)}
            if set(got) != {"control", "treatment"}:
                problems.append(f"{where}: arms {sorted(got, key=str)}")
            defaults = panel["fieldConfig"]["defaults"]
            low, high = defaults.get("min", -math.inf), defaults.get("max", math.inf)
            problems += [f"{where}: {arm} = {v}" for arm, v in got.items() if not low <= v <= high]
        assert not problems, "\n".join(problems)

        # The numbers: compare() on the counts the service exported, in PromQL and in the report.
        report = from_prometheus(prom.url, since_s=300, window="30s")
        control, treatment = report.experiment
        assert (control.arm, treatment.arm) == ("control", "treatment")
        assert control.online.shown > 0 and treatment.online.shown > 0
        assert treatment.online.viewers > 1  # the per-viewer sums are exported
        versus = compare(control.online, treatment.online)
        assert treatment.versus_control == versus
        promql_p = {dict(k)["arm"]: v for k, v in prom.values(readout_promql()["p-value"]).items()}
        assert promql_p == {"control": 1.0, "treatment": pytest.approx(versus.p_value, rel=REL, abs=1e-12)}
        assert (control.model, treatment.model) == ("streamrec", "most_popular")
        assert control.share == treatment.share == pytest.approx(0.5)
        assert 0 < treatment.hr_at_10 < 1 and 0 < control.hr_at_10 < 1
    finally:
        prom.stop()
        if service.poll() is None:
            service.terminate()
            try:
                service.wait(timeout=30)
            except subprocess.TimeoutExpired:
                service.kill()
                service.wait()
        _delete_topics(kafka_bootstrap, list(topics))
