"""A picture of how streamrec is doing, for people without Grafana: one PNG.

Two sources, one figure of four panels:

* **a running service**, through its Prometheus (:func:`from_prometheus`): HR@10 and NDCG@10
  over time for the learned model and the popularity baseline, throughput (events consumed and
  learned, lists published per second), latency (freshness p50/p99 and batch time p99), and
  the totals so far;
* **an evaluation run** (:func:`from_eval_json`, the output of ``streamrec evaluate --json``):
  HR@10, NDCG@10, MRR and coverage per model, events per second, and the totals.

Both produce a :class:`Report` (plain data, testable without matplotlib); :func:`render` draws
it. matplotlib is an optional extra: ``pip install 'streamrec[report]'``.

>>> report = from_eval_json([{"model": "streamrec", "hr_at_10": 0.2, "ndcg_at_10": 0.1, "mrr": 0.08,
...                           "coverage": 0.4, "events": 1000, "evaluated": 900, "events_per_s": 5e4}])
>>> report.source, report.models["streamrec"]["HR@10"]
('evaluation', 0.2)

"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Report", "from_prometheus", "from_eval_json", "load_eval_json", "render", "PROMQL"]

Series = dict[str, list[tuple[float, float]]]  # legend -> [(unix time, value), ...]

#: What the report asks Prometheus, per panel: legend template -> PromQL. ``{w}`` is the window.
PROMQL: dict[str, dict[str, str]] = {
    "quality": {
        "HR@10 {model}": "sum by (model) (rate(streamrec_quality_hits_total[{w}]))"
        " / sum by (model) (rate(streamrec_quality_evaluated_total[{w}]))",
        "NDCG@10 {model}": "sum by (model) (rate(streamrec_quality_ndcg_total[{w}]))"
        " / sum by (model) (rate(streamrec_quality_evaluated_total[{w}]))",
    },
    "throughput": {
        "events consumed": "sum(rate(streamrec_events_consumed_total[{w}]))",
        "events learned": "sum(rate(streamrec_events_learned_total[{w}]))",
        "lists published": "sum(rate(streamrec_recommendations_published_total[{w}]))",
    },
    "latency": {
        "freshness p50": "histogram_quantile(0.5, sum by (le) "
        "(rate(streamrec_freshness_seconds_bucket[{w}])))",
        "freshness p99": "histogram_quantile(0.99, sum by (le) "
        "(rate(streamrec_freshness_seconds_bucket[{w}])))",
        "batch time p99": "histogram_quantile(0.99, sum by (le) "
        "(rate(streamrec_batch_processing_seconds_bucket[{w}])))",
    },
}
#: Totals since the service started: label -> PromQL (instant queries).
TOTALS: dict[str, str] = {
    "HR@10 {model}": "sum by (model) (streamrec_quality_hits_total)"
    " / sum by (model) (streamrec_quality_evaluated_total)",
    "events learned": "sum(streamrec_events_learned_total)",
    "lists published": "sum(streamrec_recommendations_published_total)",
    "dead-lettered": "sum(streamrec_events_dead_lettered_total)",
}


@dataclass
class Report:
    """What the picture shows: time series (from Prometheus) or per-model figures (evaluation)."""

    source: str  # "prometheus" or "evaluation"
    title: str
    quality: Series = field(default_factory=dict)
    throughput: Series = field(default_factory=dict)
    latency: Series = field(default_factory=dict)
    #: evaluation: model -> {"HR@10": ..., "NDCG@10": ..., "MRR": ..., "coverage": ..., "events/s": ...}
    models: dict[str, dict[str, float]] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not (self.quality or self.throughput or self.latency or self.models)


# -- from Prometheus ---------------------------------------------------------------------------


def _get(base: str, path: str, params: Mapping[str, str], timeout: float) -> dict:
    url = f"{base.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = json.load(response)
    except urllib.error.HTTPError as err:
        body = json.load(err)
    except (urllib.error.URLError, OSError) as err:
        raise ConnectionError(f"Prometheus at {base} does not answer: {err}") from None
    if body.get("status") != "success":
        raise ValueError(f"Prometheus refused {params.get('query')!r}: {body.get('error')}")
    return body["data"]


def _legend(template: str, labels: Mapping[str, str]) -> str:
    return template.format_map({"model": labels.get("model", "")}).strip()


def from_prometheus(
    url: str, since_s: float = 3600.0, step_s: float | None = None, window: str = "1m", timeout: float = 10.0
) -> Report:
    """Query the last ``since_s`` seconds from the Prometheus at ``url`` (``http://host:9090``)."""
    end = time.time()
    start = end - since_s
    step = step_s or max(1.0, since_s / 300)
    report = Report(source="prometheus", title=f"streamrec, last {_duration(since_s)} (Prometheus {url})")
    for panel, queries in PROMQL.items():
        series: Series = getattr(report, panel)
        for legend, promql in queries.items():
            params = {
                "query": promql.format(w=window),
                "start": str(start),
                "end": str(end),
                "step": str(step),
            }
            for result in _get(url, "/api/v1/query_range", params, timeout)["result"]:
                points = [(float(t), float(v)) for t, v in result["values"] if math.isfinite(float(v))]
                if points:
                    series[_legend(legend, result["metric"])] = points
    for legend, promql in TOTALS.items():
        for result in _get(url, "/api/v1/query", {"query": promql}, timeout)["result"]:
            value = float(result["value"][1])
            if math.isfinite(value):
                report.totals[_legend(legend, result["metric"])] = value
    return report


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds >= 60:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


# -- from an evaluation ------------------------------------------------------------------------


def load_eval_json(path: str | Path) -> list[dict]:
    """The model reports in a ``streamrec evaluate --json`` file.

    Accepts one report object, a list of them, an object holding such a list under ``models``,
    ``reports`` or ``results``, or JSON lines of reports (the last line per model wins, so a
    file of progress snapshots gives the final figures).
    """
    text = Path(path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(data, dict):
        for key in ("models", "reports", "results"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
        else:
            data = [data]
    if not isinstance(data, list) or not all(isinstance(d, dict) and "model" in d for d in data):
        raise ValueError(f"{path}: expected model reports with a 'model' field (streamrec evaluate --json)")
    return list({d["model"]: d for d in data}.values())


def from_eval_json(reports: list[dict], title: str = "streamrec evaluation") -> Report:
    """A :class:`Report` of per-model figures from evaluation reports (see :func:`load_eval_json`)."""
    report = Report(source="evaluation", title=title)
    for r in reports:
        n = next((k.removeprefix("hr_at_") for k in r if k.startswith("hr_at_")), "10")
        report.models[r["model"]] = {
            f"HR@{n}": float(r.get(f"hr_at_{n}", math.nan)),
            f"NDCG@{n}": float(r.get(f"ndcg_at_{n}", math.nan)),
            "MRR": float(r.get("mrr", math.nan)),
            # The last part of the stream (``--tail``): quality once the models have warmed up.
            f"tail HR@{n}": float((r.get("tail") or {}).get(f"hr_at_{n}", math.nan)),
            "coverage": float(r.get("coverage", math.nan)),
            "events/s": float(r.get("events_per_s", math.nan)),
        }
    first = reports[0] if reports else {}
    for key in ("events", "evaluated", "cold", "batch_size"):
        if key in first:
            report.totals[key] = float(first[key])
    return report


# -- drawing -----------------------------------------------------------------------------------


def render(report: Report, out: str | Path) -> Path:
    """Draw ``report`` to the PNG ``out`` and return its path (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    if report.source == "prometheus":
        fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), constrained_layout=True)
        _lines(axes[0, 0], report.quality, "Quality, test-then-train (higher is better)", "share", ratio=True)
        _lines(axes[0, 1], report.throughput, "Throughput", "per second")
        _lines(axes[1, 0], report.latency, "Latency", "seconds", log=True)
        _totals(axes[1, 1], report)
    else:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), constrained_layout=True, width_ratios=(5, 4, 3))
        _model_bars(axes[0], report.models, ("HR@10", "tail HR@10", "NDCG@10", "MRR", "coverage"))
        _speed_bars(axes[1], report.models)
        _totals(axes[2], report)
    fig.suptitle(report.title, fontsize=14)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _lines(ax, series: Series, title: str, ylabel: str, ratio: bool = False, log: bool = False) -> None:
    from datetime import datetime

    import matplotlib.dates as mdates

    ax.set_title(title)
    if not series:
        ax.text(0.5, 0.5, "no data in this time range", ha="center", va="center", transform=ax.transAxes)
        return
    for legend, points in sorted(series.items()):
        times = [datetime.fromtimestamp(t) for t, _ in points]
        style = "--" if legend.startswith("NDCG") else "-"
        ax.plot(times, [v for _, v in points], style, label=legend, linewidth=2)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    if ratio:
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    if log:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_minor_formatter(lambda v, _: "")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)


def _model_bars(ax, models: dict[str, dict[str, float]], metrics: tuple[str, ...]) -> None:
    ax.set_title("Quality per model, test-then-train (higher is better)")
    names = list(models)
    width = 0.8 / max(1, len(names))
    keys = [k for k in metrics if any(math.isfinite(m.get(k, math.nan)) for m in models.values())]
    for i, name in enumerate(names):
        values = [models[name].get(k, math.nan) for k in keys]
        bars = ax.bar([j + i * width for j in range(len(keys))], values, width, label=name)
        ax.bar_label(bars, fmt="%.3f" if len(names) < 3 else "%.2f", fontsize=8 if len(names) < 3 else 6.5)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(keys))], keys)
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3, axis="y")


def _speed_bars(ax, models: dict[str, dict[str, float]]) -> None:
    ax.set_title("Events per second (score + learn, one core)")
    names = list(models)
    values = [models[n].get("events/s", math.nan) for n in names]
    bars = ax.barh(names, values, color="tab:gray")
    ax.bar_label(bars, fmt="{:,.0f}", fontsize=8, padding=3)
    finite = [v for v in values if math.isfinite(v)]
    if finite:
        ax.set_xlim(0, max(finite) * 1.2)  # room for the labels
    ax.set_xlabel("events / s")
    ax.grid(alpha=0.3, axis="x")


def _totals(ax, report: Report) -> None:
    ax.axis("off")
    ax.set_title("Totals")
    lines = []
    for key, value in report.totals.items():
        text = f"{value:.3f}" if key.startswith(("HR", "NDCG")) else f"{value:,.0f}"
        lines.append(f"{key}: {text}")
    hr = {k.split(" ", 1)[1]: v for k, v in report.totals.items() if k.startswith("HR@10 ")}
    if report.source == "evaluation":
        hr = {name: m.get("HR@10", math.nan) for name, m in report.models.items()}
    base_name = next((k for k in hr if "popular" in k), None)
    base = hr.get(base_name)
    for name, value in hr.items():
        if base and "popular" not in name:
            lines.append(f"HR@10 {name} / {base_name}: {value / base:.2f}x")
    ax.text(0.02, 0.95, "\n".join(lines) or "no totals", va="top", family="monospace", fontsize=11)
