"""``streamrec evaluate`` as a user runs it: every file format, the report, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.baselines import MostPopular
from model.registry import DEFAULT_MODEL, MODELS, names
from streamrec.cli import main

REPO = Path(__file__).resolve().parents[1]
BASELINES = [n for n in names() if n != "streamrec"]


def ratings(n: int = 400, seed: int = 0) -> list[tuple[int, int, int, int]]:
    """(user, item, rating, timestamp) rows with some structure, timestamps increasing."""
    rng = np.random.default_rng(seed)
    users = rng.integers(1, 30, n)
    items = (users % 5) * 8 + rng.integers(1, 9, n)
    return [
        (int(u), int(i), int(rng.integers(1, 6)), 880_000_000 + t)
        for t, (u, i) in enumerate(zip(users, items, strict=True))
    ]


def write(path: Path, fmt: str, rows) -> Path:
    if fmt == "u.data":
        text = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows)
    elif fmt == "ratings.dat":
        text = "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows)
    elif fmt == "ratings.csv":
        text = "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r}.0,{t}\n" for u, i, r, t in rows)
    else:
        text = "".join(
            json.dumps({"timestamp": t, "viewer": f"u{u}", "video": f"v{i}", "watch_time": 60 * r}) + "\n"
            for u, i, r, t in rows
        )
    path.write_text(text)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["evaluate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("fmt", ["u.data", "ratings.dat", "ratings.csv", "events.jsonl"])
def test_every_format_gives_the_same_figures(tmp_path, capsys, fmt):
    rows = ratings()
    path = write(tmp_path / fmt, fmt, rows)
    out_json = tmp_path / "out.json"
    code, out, err = run(capsys, str(path), "--model", "cooccurrence", "--json", str(out_json))
    assert code == 0, err
    report = json.loads(out_json.read_text())
    assert report["model"] == "cooccurrence" and report["events"] == len(rows)
    # The same stream in another layout must evaluate identically.
    reference = tmp_path / "ref" / "u.data"
    reference.parent.mkdir()
    write(reference, "u.data", rows)
    run(capsys, str(reference), "--model", "cooccurrence", "--json", str(tmp_path / "ref.json"))
    expected = json.loads((tmp_path / "ref.json").read_text())
    for key in ("hr_at_10", "ndcg_at_10", "mrr", "evaluated", "events", "batch_size"):
        assert report[key] == expected[key]
    assert "cooccurrence" in out and "HR@10" in out
    assert err == ""  # no progress bar when stderr is not a terminal


def test_json_report_has_the_documented_fields(tmp_path, capsys):
    path = write(tmp_path / "u.data", "u.data", ratings())
    code, _, _ = run(
        capsys, str(path), "--model", "most_popular", "--batch-size", "32", "--json", str(tmp_path / "o")
    )
    assert code == 0
    report = json.loads((tmp_path / "o").read_text())
    for key in (
        "model",
        "hr_at_10",
        "ndcg_at_10",
        "mrr",
        "evaluated",
        "events",
        "events_per_s",
        "batch_size",
    ):
        assert key in report
    assert report["batch_size"] == 32 and "batches of 32" in report["protocol"]
    assert 0.0 <= report["tail"]["hr_at_10"] <= 1.0 and report["tail"]["from_event"] % 32 == 0


def test_several_models_give_a_list_in_order_without_duplicates(tmp_path, capsys):
    path = write(tmp_path / "u.data", "u.data", ratings())
    out_json = tmp_path / "o.json"
    code, out, _ = run(
        capsys,
        str(path),
        "--model",
        "isgd,most_popular",
        "--model",
        "funk_mf",
        "--model",
        "isgd",
        "--json",
        str(out_json),
    )
    assert code == 0
    assert [r["model"] for r in json.loads(out_json.read_text())] == ["isgd", "most_popular", "funk_mf"]
    assert all(name in out for name in ("isgd", "most_popular", "funk_mf"))


def test_limit_takes_the_first_events(tmp_path, capsys):
    path = write(tmp_path / "u.data", "u.data", ratings())
    code, _, _ = run(
        capsys, str(path), "--model", "most_popular", "--limit", "50", "--json", str(tmp_path / "o")
    )
    assert code == 0 and json.loads((tmp_path / "o").read_text())["events"] == 50


def test_no_model_means_the_default_model_alone(tmp_path, capsys):
    path = write(tmp_path / "u.data", "u.data", ratings())
    code, _, err = run(capsys, str(path), "--json", str(tmp_path / "o"))
    assert code == 0, err
    assert json.loads((tmp_path / "o").read_text())["model"] == DEFAULT_MODEL


def test_all_means_the_default_model_and_every_baseline(tmp_path, capsys):
    path = write(tmp_path / "u.data", "u.data", ratings(200))
    code, _, err = run(capsys, str(path), "--model", "all", "--json", str(tmp_path / "o"))
    assert code == 0, err
    assert [r["model"] for r in json.loads((tmp_path / "o").read_text())] == names()


# -- bad input: one line, non-zero exit, no traceback -----------------------------------------------


def one_line_error(code: int, err: str) -> str:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_missing_file(tmp_path, capsys):
    code, _, err = run(capsys, str(tmp_path / "nope.data"), "--model", "most_popular")
    assert "no such file" in one_line_error(code, err)


def test_malformed_row_names_the_line_and_skip_bad_rows_skips_it(tmp_path, capsys):
    path = tmp_path / "u.data"
    path.write_text("1\t10\t5\t100\n2\t10\t3\tyesterday\n2\t11\t4\t102\n1\t11\t4\t103\n")
    code, _, err = run(capsys, str(path), "--model", "most_popular")
    line = one_line_error(code, err)
    assert f"{path}:2" in line and "--skip-bad-rows" in line
    out_json = tmp_path / "o.json"
    code, _, err = run(
        capsys, str(path), "--model", "most_popular", "--skip-bad-rows", "--json", str(out_json)
    )
    assert code == 0 and "skipped 1 malformed row" in err
    report = json.loads(out_json.read_text())
    assert report["bad_rows_skipped"] == 1 and report["events"] == 3


def test_malformed_json_line(tmp_path, capsys):
    path = tmp_path / "events.jsonl"
    path.write_text('{"timestamp": 1, "viewer": "a", "video": "v"}\n{"viewer": "a"}\n')
    code, _, err = run(capsys, str(path), "--model", "most_popular")
    assert f"{path}:2" in one_line_error(code, err)


def test_empty_and_binary_files(tmp_path, capsys):
    empty = tmp_path / "u.data"
    empty.write_text("")
    code, _, err = run(capsys, str(empty), "--model", "most_popular")
    assert "no events" in one_line_error(code, err)
    binary = tmp_path / "ratings.dat"
    binary.write_bytes(b"\xff\xfe\x00garbage\n")
    code, _, err = run(capsys, str(binary), "--model", "most_popular")
    assert "UTF-8" in one_line_error(code, err)


def test_unknown_model(tmp_path, capsys):
    path = write(tmp_path / "u.data", "u.data", ratings(20))
    code, _, err = run(capsys, str(path), "--model", "most_popular,nonsense")
    assert "nonsense" in one_line_error(code, err)


def test_unknown_format_and_bad_numbers_are_refused(tmp_path, capsys):
    path = write(tmp_path / "u.data", "u.data", ratings(20))
    for argv in (["--format", "parquet"], ["--limit", "0"], ["--batch-size", "many"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["evaluate", str(path), *argv])
        assert exit_info.value.code == 2
        assert "Traceback" not in capsys.readouterr().err


def test_the_installed_command_prints_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "streamrec", "evaluate", str(tmp_path / "missing.data")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode != 0
    assert result.stderr.strip().startswith("streamrec evaluate: error:")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


class Greedy(MostPopular):
    """A model that runs out of memory on its first batch, as a too-large catalogue can."""

    name = "greedy"

    def learn_many(self, events):
        raise MemoryError("cannot allocate 9 TiB")


def test_a_model_out_of_memory_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(MODELS, "greedy", (f"{__name__}:Greedy", "test model"))
    path = write(tmp_path / "u.data", "u.data", ratings(50))
    code, _, err = run(capsys, str(path), "--model", "greedy")
    line = one_line_error(code, err)
    assert "greedy" in line and "out of memory" in line and "9 TiB" in line


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_progress_bar_only_on_a_terminal(tmp_path):
    path = write(tmp_path / "u.data", "u.data", ratings(300))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "streamrec", "evaluate", str(path), "--model", "most_popular"]
    master, slave = os.openpty()
    try:
        result = subprocess.run(command, stderr=slave, stdout=subprocess.PIPE, env=env, cwd=REPO, timeout=120)
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the terminal is closed once everything was read
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
    terminal = b"".join(chunks).decode()
    assert result.returncode == 0
    assert "most_popular" in terminal and "100%" in terminal and "300/300 events" in terminal
    # The table goes to stdout, untouched by the bar.
    assert b"\r" not in result.stdout and b"HR@10" in result.stdout


def run_bench(script: str, *argv) -> subprocess.CompletedProcess:
    """Run ``bench/<script>`` as a user does; it must succeed."""
    command = [sys.executable, str(REPO / "bench" / script), *map(str, argv)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def test_quality_bench_writes_a_table_and_json(tmp_path):
    path = write(tmp_path / "u.data", "u.data", ratings(300))
    out = tmp_path / "quality.json"
    models = ",".join(BASELINES)
    result = run_bench("quality.py", path, "--models", models, "--out", out)
    payload = json.loads(out.read_text())
    assert [r["model"] for r in payload["results"]] == ["isgd (plain loop)", *BASELINES]
    assert payload["results"][0]["vs_isgd"] == 1.0 and all(r["events"] == 300 for r in payload["results"])
    assert "vs ISGD" in result.stdout


def test_floor_bench_times_the_models_operations_at_its_shapes(tmp_path):
    rows = ratings(600)
    path = write(tmp_path / "u.data", "u.data", rows)
    out = tmp_path / "floor.json"
    result = run_bench("floor.py", path, "--batch-size", 64, "--repeats", 3, "--json", out)
    payload = json.loads(out.read_text())
    # The floor is measured at the shapes the model really had on this stream.
    assert payload["shapes"]["videos"] == len({item for _, item, _, _ in rows})
    assert 0 < payload["shapes"]["columns"] <= payload["shapes"]["videos"]
    floor = payload["floor_us_per_event"]
    assert len(floor) == 7 and all(us > 0 for us in floor.values())
    assert payload["budget_10x_isgd_us"] == pytest.approx(payload["isgd_us"] / 10)
    assert "the floor" in result.stdout and "budget of 10x ISGD" in result.stdout


def test_set_changes_the_models_that_have_the_setting(tmp_path, capsys):
    from model.registry import create
    from producer.readers import read_events
    from streamrec.commands.evaluate import evaluate_model

    path = write(tmp_path / "u.data", "u.data", ratings())
    out_json = tmp_path / "o.json"
    argv = [str(path), "--model", "recent_popular,most_popular", "--batch-size", "32"]
    code, out, err = run(capsys, *argv, "--set", "half_life=3", "--json", str(out_json))
    assert code == 0, err
    tuned, popular = json.loads(out_json.read_text())
    assert (tuned["settings"], popular["settings"]) == ({"half_life": 3}, {})
    assert "settings of recent_popular: half_life=3" in out
    # The figures are those of the model built with the setting, not of the default one.
    events = read_events(path)
    expected = evaluate_model(create("recent_popular", half_life=3), events, batch_size=32)
    default = evaluate_model(create("recent_popular"), events, batch_size=32)
    assert tuned["hr_at_10"] == expected["hr_at_10"] != default["hr_at_10"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "dimm=8"], "has no setting 'dimm'; its settings: dim, "),
        (["--set", "dim=8,history"], "expected key=value, got 'history'"),
        (["--set", "dim=1.5"], "setting 'dim' must be int, got 1.5"),
        (["--set", "recency=2"], "recency must be in (0, 1]"),
        (["--model", "most_popular,isgd", "--set", "dim=8"], "no evaluated model has a setting 'dim'"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, capsys, argv, message):
    path = write(tmp_path / "u.data", "u.data", ratings(20))
    code, _, err = run(capsys, str(path), *argv)
    assert message in one_line_error(code, err)


def test_a_setting_a_later_model_refuses_is_an_error_before_any_model_runs(tmp_path, capsys, monkeypatch):
    """``--model all --set k=0``: isgd refuses k=0. Said before the first model is evaluated,
    not after every model before isgd has run (hours, on a large data set)."""
    import streamrec.commands.evaluate as command

    evaluated = []
    monkeypatch.setattr(command, "evaluate_model", lambda model, *a, **k: evaluated.append(model.name))
    path = write(tmp_path / "u.data", "u.data", ratings())
    assert main(["evaluate", str(path), "--model", "all", "--set", "k=0"]) == 2
    assert "model 'isgd': k must be an integer >= 1, got 0" in capsys.readouterr().err
    assert evaluated == []
