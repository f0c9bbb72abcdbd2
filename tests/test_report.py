"""``streamrec report`` draws a PNG a person can read, and says what is wrong when it cannot.

The Prometheus source is exercised against a real Prometheus in test_dashboard_prometheus.py.
"""

from __future__ import annotations

import json

import pytest

from streamrec.cli import main
from streamrec.report import from_eval_json, load_eval_json

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


def test_an_unreachable_prometheus_is_a_one_line_error(tmp_path, capsys):
    from tests.prometheus import free_port

    url = f"http://127.0.0.1:{free_port()}"
    assert main(["report", "--prometheus", url, "--out", str(tmp_path / "r.png")]) == 2
    err = capsys.readouterr().err
    assert "does not answer" in err and len(err.strip().splitlines()) == 1
