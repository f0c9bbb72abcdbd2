"""``streamrec report`` draws a PNG a person can read, and says what is wrong when it cannot.

The Prometheus source is exercised against a real Prometheus in test_dashboard_prometheus.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from streamrec.cli import main
from streamrec.report import (
    CONTROL,
    Report,
    from_eval_json,
    load_eval_json,
    readout,
    readout_promql,
    readout_table,
    render,
)

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("matplotlib", reason="streamrec report needs the [report] extra (matplotlib)")

REPORTS = [
    {"model": "streamrec", "hr_at_10": 0.21, "ndcg_at_10": 0.11, "mrr": 0.09, "coverage": 0.45,
     "events": 5000, "evaluated": 4700, "cold": 300, "events_per_s": 21000.0, "batch_size": 1},
    {"model": "recent_popular", "hr_at_10": 0.12, "ndcg_at_10": 0.06, "mrr": 0.05, "coverage": 0.05,
     "events": 5000, "evaluated": 4700, "cold": 300, "events_per_s": 90000.0, "batch_size": 1},
]  # fmt: skip


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.parametrize(
    "shape",
    [
        lambda r: r,  # a list of reports
        lambda r: {"models": r},  # wrapped
        lambda r: "\n".join(json.dumps(x) for x in r),  # JSON lines
    ],
)
def test_evaluation_json_in_every_accepted_shape_gives_the_same_figures(tmp_path, shape):
    path = tmp_path / "eval.json"
    data = shape(REPORTS)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    report = from_eval_json(load_eval_json(path))
    assert report.models["streamrec"]["HR@10"] == 0.21
    assert report.models["recent_popular"]["NDCG@10"] == 0.06
    assert report.totals["events"] == 5000


def test_report_from_an_evaluation_writes_a_png(tmp_path, capsys):
    src, out = tmp_path / "eval.json", tmp_path / "pics" / "report.png"
    src.write_text(json.dumps(REPORTS))
    assert main(["report", "--from-json", str(src), "--out", str(out)]) == 0
    width, height = png_size(out)
    assert width >= 1000 and height >= 400
    assert capsys.readouterr().out.strip() == str(out)


def test_a_file_that_is_not_an_evaluation_is_a_one_line_error(tmp_path, capsys):
    src = tmp_path / "eval.json"
    src.write_text(json.dumps({"hello": 1}))
    assert main(["report", "--from-json", str(src), "--out", str(tmp_path / "r.png")]) == 2
    err = capsys.readouterr().err
    assert "streamrec evaluate --json" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.png").exists()


@pytest.mark.parametrize(
    ("out", "message"),
    [("report.xyz", "name a file matplotlib writes"), ("a-file/report.png", "cannot write")],
)
def test_an_output_path_that_cannot_be_written_is_a_one_line_error(tmp_path, capsys, out, message):
    src = tmp_path / "eval.json"
    src.write_text(json.dumps(REPORTS))
    (tmp_path / "a-file").write_text("not a folder")
    assert main(["report", "--from-json", str(src), "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_an_unreachable_prometheus_is_a_one_line_error(tmp_path, capsys):
    from tests.prometheus import free_port

    url = f"http://127.0.0.1:{free_port()}"
    assert main(["report", "--prometheus", url, "--out", str(tmp_path / "r.png")]) == 2
    err = capsys.readouterr().err
    assert "does not answer" in err and len(err.strip().splitlines()) == 1


# -- the readout of a live experiment ------------------------------------------------------------

#: Per-arm totals as from_prometheus reads them (ARM_TOTALS' keys): a decided three-arm experiment.
TOTALS = {
    "shown": {"control": 20_000, "treatment": 20_000, "cold": 900},
    "hits": {"control": 2_000, "treatment": 2_400, "cold": 99},
    "shown_squares": {"control": 2_100_000, "treatment": 2_050_000, "cold": 9_000},
    "hit_squares": {"control": 22_000, "treatment": 30_000, "cold": 130},
    "products": {"control": 210_000, "treatment": 250_000, "cold": 1_000},
    "viewers": {"control": 200, "treatment": 200, "cold": 90},
    "shown_watch_s": {"control": 4e5, "treatment": 4e5},
    "hit_watch_s": {"control": 5e4, "treatment": 7e4},
    "evaluated": {"control": 19_000, "treatment": 19_000},
    "hr_hits": {"control": 3_800, "treatment": 2_000},
    "coverage": {"control": 0.4, "treatment": 0.05},
    "share": {"control": 0.45, "treatment": 0.45, "cold": 0.1},
    "healthy": {"control": 1, "treatment": 1, "cold": 0},
    "fallbacks": {"control": 0, "treatment": 0, "cold": 12},
}
MODELS = {"control": "streamrec", "treatment": "most_popular", "cold": "isgd"}


def test_the_readout_compares_every_arm_with_the_control_on_its_per_viewer_counts():
    from consumer.experiment import Counts, compare, rate_interval

    arms = readout(TOTALS, MODELS)
    assert [a.arm for a in arms] == ["control", "cold", "treatment"]  # the control first, then by name
    by_arm = {a.arm: a for a in arms}
    control = Counts(20_000, 2_000, 2_100_000, 22_000, 210_000, 200)
    treatment = Counts(20_000, 2_400, 2_050_000, 30_000, 250_000, 200)
    assert by_arm["control"].online == control and by_arm["control"].versus_control is None
    assert by_arm["treatment"].hit_rate == rate_interval(treatment)
    assert by_arm["treatment"].versus_control == compare(control, treatment)
    assert by_arm["treatment"].hr_at_10 == pytest.approx(2_000 / 19_000)
    cold = by_arm["cold"]
    assert (cold.model, cold.healthy, cold.fallbacks, cold.share) == ("isgd", False, 12, 0.1)
    assert math.isnan(cold.hr_at_10) and math.isnan(cold.coverage) and math.isnan(cold.popularity_bias)


def test_without_the_per_viewer_sums_the_readout_counts_events_as_units():
    # A service from before the sums were exported: the binomial variance, not a crash.
    from consumer.experiment import Counts, compare

    totals = {"shown": {"control": 500, "b": 500}, "hits": {"control": 50, "b": 80}}
    _, b = readout(totals)
    assert b.online == Counts(500, 80)
    assert b.versus_control == compare(Counts(500, 50), Counts(500, 80))


def test_the_readout_table_reads_in_a_terminal():
    text = readout_table(readout(TOTALS, MODELS))
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("arm "))
    arms = lines[header + 1 : header + 4]
    assert [line.split()[0] for line in arms] == ["control", "cold", "treatment"]
    assert "(falling back)" in arms[1] and "isgd" in arms[1]
    assert "10.00% [" in arms[0] and "12.00% [" in arms[2]
    assert "50,000 (12.5%)" in arms[0]  # watch seconds from lists, and their share of the watch time
    versus = {line.split()[0]: line for line in lines if line.startswith(("cold ", "treatment "))}
    assert "+2.00 pp [" in versus["treatment"] and "yes: treatment is higher" in versus["treatment"]
    assert "+1.00 pp [" in versus["cold"] and versus["cold"].rstrip().endswith(" no")
    assert max(map(len, lines)) <= 160


def test_without_an_arm_named_control_the_table_says_how_to_compare():
    totals = {"shown": {"a": 100, "b": 100}, "hits": {"a": 10, "b": 12}}
    assert all(a.versus_control is None for a in readout(totals))
    assert "--control" in readout_table(readout(totals))
    # Naming the control compares the other arm with it.
    arms = readout(totals, control="b")
    assert [a.arm for a in arms] == ["b", "a"] and arms[1].versus_control is not None
    assert "vs b" in readout_table(arms, control="b")


def test_a_report_with_an_experiment_draws_the_readout(tmp_path):
    report = Report(source="prometheus", title="streamrec, an experiment", experiment=readout(TOTALS, MODELS))
    width, height = png_size(render(report, tmp_path / "r.png"))
    assert width >= 1300 and height >= 1500  # the service's four panels, then the readout below
    # Without the control among the arms the picture still draws, and says what is missing.
    report.experiment, report.control = readout(TOTALS, MODELS, control="other"), "other"
    assert png_size(render(report, tmp_path / "other.png"))[1] >= 1500


def test_the_dashboard_carries_the_readout_promql_verbatim():
    # The Experiment row's queries are readout_promql()'s: rebuild them there, not by hand.
    dashboard = json.loads((REPO / "monitoring/grafana/dashboards/streamrec.json").read_text())
    exprs = {t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])}
    missing = [key for key, promql in readout_promql().items() if promql not in exprs]
    assert not missing, f"the dashboard's readout is not readout_promql()'s: {missing}"
    assert CONTROL == "control"  # consumer.arms.CONTROL, the arm the PromQL compares with


def test_report_names_the_control_with_a_flag():
    from streamrec.cli import build_parser

    args = build_parser().parse_args(["report", "--prometheus", "http://x:9090"])
    assert args.control == CONTROL
    args = build_parser().parse_args(["report", "--prometheus", "http://x:9090", "--control", "baseline"])
    assert args.control == "baseline"
