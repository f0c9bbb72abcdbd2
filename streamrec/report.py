"""A picture of how streamrec is doing, for people without Grafana: one PNG.

Two sources, one figure of four panels:

* **a running service**, through its Prometheus (:func:`from_prometheus`): HR@10 and NDCG@10
  over time for the learned model and the popularity baseline, throughput (events consumed and
  learned, lists published per second), latency (freshness p50/p99 and batch time p99), and
  the totals so far; when the service runs a live experiment (more than one arm), the
  **readout** too (:class:`ArmReadout`, :func:`readout_table`): per arm the online hit rate with
  its always-valid interval, and each arm against the control, from the totals since the start;
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from consumer.experiment import TAU, Comparison, Counts, Interval, compare, rate_interval

__all__ = [
    "Report",
    "ArmReadout",
    "from_prometheus",
    "from_eval_json",
    "load_eval_json",
    "render",
    "readout",
    "readout_table",
    "readout_promql",
    "PROMQL",
    "ARM_TOTALS",
    "CONTROL",
]

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

#: The arm the others are compared with, unless told otherwise: the service's first arm is its
#: control, and ``consumer.arms.CONTROL`` is the name of the only arm of a service without an
#: experiment. The metrics do not say which arm came first, so the readout goes by this name.
CONTROL = "control"

#: The readout's inputs per arm: cumulative totals since the service started (instant queries,
#: summed over workers; gauges taken once per arm). Key -> PromQL; each result has an ``arm`` label.
ARM_TOTALS: dict[str, str] = {
    "shown": "sum by (arm) (streamrec_experiment_shown_events)",
    "hits": "sum by (arm) (streamrec_experiment_hit_events)",
    # The per-viewer sums of the readout's variance (consumer.experiment.Counts).
    "shown_squares": "sum by (arm) (streamrec_experiment_shown_squares)",
    "hit_squares": "sum by (arm) (streamrec_experiment_hit_squares)",
    "products": "sum by (arm) (streamrec_experiment_shown_hit_products)",
    "viewers": "sum by (arm) (streamrec_experiment_viewers)",
    "shown_watch_s": "sum by (arm) (streamrec_experiment_shown_watch_seconds)",
    "hit_watch_s": "sum by (arm) (streamrec_experiment_hit_watch_seconds)",
    # Test-then-train HR@10 of each arm's model (the shadow baseline, arm="", is no arm).
    "evaluated": 'sum by (arm, model) (streamrec_quality_evaluated_total{arm!=""})',
    "hr_hits": 'sum by (arm, model) (streamrec_quality_hits_total{arm!=""})',
    # Each worker's recent window: their mean.
    "coverage": 'avg by (arm, model) (streamrec_coverage_ratio{arm!=""})',
    "popularity_bias": 'avg by (arm, model) (streamrec_popularity_bias_ratio{arm!=""})',
    "share": "max by (arm, model) (streamrec_experiment_arm_share_ratio)",
    "healthy": "min by (arm) (streamrec_experiment_arm_healthy)",
    "fallbacks": "sum by (arm) (streamrec_experiment_fallback_lists_total)",
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
    #: A live experiment's readout, the control first (empty when the service runs one arm), and
    #: the name of the arm the others are compared with.
    experiment: list[ArmReadout] = field(default_factory=list)
    control: str = CONTROL

    def is_empty(self) -> bool:
        return not (self.quality or self.throughput or self.latency or self.models or self.experiment)


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
    url: str,
    since_s: float = 3600.0,
    step_s: float | None = None,
    window: str = "1m",
    timeout: float = 10.0,
    control: str = CONTROL,
    alpha: float = 0.05,
) -> Report:
    """Query the last ``since_s`` seconds from the Prometheus at ``url`` (``http://host:9090``).

    With more than one arm, ``report.experiment`` is the readout of each arm against the arm
    named ``control``, at level ``alpha`` (:func:`readout`).
    """
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
    totals: dict[str, dict[str, float]] = {}
    models: dict[str, str] = {}
    for key, promql in ARM_TOTALS.items():
        for result in _get(url, "/api/v1/query", {"query": promql}, timeout)["result"]:
            labels = result["metric"]
            totals.setdefault(key, {})[labels.get("arm", "")] = float(result["value"][1])
            if labels.get("model"):
                models.setdefault(labels.get("arm", ""), labels["model"])
    arms = readout(totals, models, control=control, alpha=alpha)
    if len(arms) > 1:
        report.experiment, report.control = arms, control
    return report


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds >= 60:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


# -- a live experiment -------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmReadout:
    """One arm of a live experiment, from the service's totals since it started.

    ``hit_rate`` is the online hit rate (of the events whose viewer had been shown a list, the
    share watched from it) with its always-valid interval; ``versus_control`` the difference of
    hit rates from the control's, its interval and mSPRT p-value (``None`` for the control, and
    when no arm is the control). NaN where the service has not exported a figure yet.
    """

    arm: str
    model: str
    share: float
    healthy: bool
    online: Counts
    hit_rate: Interval
    shown_watch_s: float
    hit_watch_s: float
    hr_at_10: float
    coverage: float
    popularity_bias: float
    fallbacks: float
    versus_control: Comparison | None


def readout(
    totals: Mapping[str, Mapping[str, float]],
    models: Mapping[str, str] | None = None,
    control: str = CONTROL,
    alpha: float = 0.05,
) -> list[ArmReadout]:
    """Every arm's :class:`ArmReadout` from per-arm totals (``{key of ARM_TOTALS: {arm: value}}``),
    the control first, the others by name.

    The arms are those with online counters or a share; ``models`` names each arm's model. The
    per-viewer sums are optional: without them the variance counts events as units.

    >>> arms = readout({"shown": {"control": 20_000, "treatment": 20_000},
    ...                 "hits": {"control": 2_000, "treatment": 2_400}})
    >>> [a.arm for a in arms], round(arms[0].hit_rate.estimate, 3)
    (['control', 'treatment'], 0.1)
    >>> versus = arms[1].versus_control
    >>> round(versus.difference, 3), versus.p_value < 0.01, versus.decided
    (0.02, True, True)
    """
    models = models or {}

    def get(key: str, arm: str, default: float = math.nan) -> float:
        return totals.get(key, {}).get(arm, default)

    names = set(totals.get("shown", {})) | set(totals.get("share", {}))
    names.discard("")
    counts = {}
    for arm in names:
        sums = [get(key, arm, math.nan) for key in ("shown_squares", "hit_squares", "products", "viewers")]
        shown, hits = get("shown", arm, 0.0), get("hits", arm, 0.0)
        if all(math.isfinite(x) for x in sums):
            counts[arm] = Counts(shown, hits, *sums)
        else:  # a service that does not export the per-viewer sums: events are the units
            counts[arm] = Counts(shown, hits)
    out = []
    for arm in sorted(names, key=lambda name: (name != control, name)):
        evaluated = get("evaluated", arm, 0.0)
        versus = None
        if arm != control and control in counts:
            versus = compare(counts[control], counts[arm], alpha=alpha)
        out.append(
            ArmReadout(
                arm=arm,
                model=models.get(arm, ""),
                share=get("share", arm),
                healthy=get("healthy", arm, 1.0) >= 1.0,
                online=counts[arm],
                hit_rate=rate_interval(counts[arm], alpha=alpha),
                shown_watch_s=get("shown_watch_s", arm),
                hit_watch_s=get("hit_watch_s", arm),
                hr_at_10=get("hr_hits", arm) / evaluated if evaluated > 0 else math.nan,
                coverage=get("coverage", arm),
                popularity_bias=get("popularity_bias", arm),
                fallbacks=get("fallbacks", arm, 0.0),
                versus_control=versus,
            )
        )
    return out


def readout_table(arms: Sequence[ArmReadout], control: str = CONTROL, alpha: float = 0.05) -> str:
    """The readout as text for a terminal: one line per arm, then one per arm against the control.

    >>> arms = readout({"shown": {"control": 20_000, "treatment": 20_000},
    ...                 "hits": {"control": 2_000, "treatment": 2_400}})
    >>> print(readout_table(arms).splitlines()[-1])
    treatment   +2.00 pp [+1.01, +2.99]  1.4e-08  yes: treatment is higher
    """
    lines = [
        f"Live experiment: {len(arms)} arms, totals since the service started.",
        "Online hit rate: of the events whose viewer had been shown a list, the share watched from it.",
        f"Intervals and p-values are always valid (mSPRT, tau {TAU}, viewers as the units): look as "
        "often as you like.",
        "",
    ]
    rows = [
        ("arm", "model", "share", "shown", f"online hit rate [{1 - alpha:.0%}]", "watch s from lists",
         "HR@10", "coverage", "pop. bias", "fallbacks"),
    ]  # fmt: skip
    for a in arms:
        watch = _count(a.hit_watch_s)
        if a.shown_watch_s > 0:
            watch += f" ({a.hit_watch_s / a.shown_watch_s:.1%})"
        rows.append(_arm_cells(a, watch))
    lines += _columns(rows, right=(2, 3, 9))
    lines.append("")
    versus = [a for a in arms if a.versus_control is not None]
    if not versus:
        lines.append(
            f"No arm is named {control!r}: name the control (--control) to compare the arms with it."
        )
        return "\n".join(lines)
    rows = [(f"vs {control}", f"difference [{1 - alpha:.0%}]", "p-value", f"decided at alpha {alpha:g}")]
    for a in versus:
        c = a.versus_control
        # Not decided is the same as 0 inside the interval: both come from the one Lambda.
        verdict = f"yes: {a.arm} is {'higher' if c.difference > 0 else 'lower'}" if c.decided else "no"
        rows.append((a.arm, _difference(c), _p_value(c.p_value), verdict))
    lines += _columns(rows, right=(2,))
    return "\n".join(lines)


def _arm_cells(a: ArmReadout, watch: str) -> tuple[str, ...]:
    """One arm's cells of the readout tables (text and picture); ``watch``: its watch-time cell."""
    return (
        a.arm + ("" if a.healthy else " (falling back)"),
        a.model or "-",
        _maybe(a.share, "{:.0%}"),
        _count(a.online.shown),
        _interval(a.hit_rate),
        watch,
        _maybe(a.hr_at_10, "{:.4f}"),
        _maybe(a.coverage, "{:.3f}"),
        _maybe(a.popularity_bias, "{:.3f}"),
        _count(a.fallbacks),
    )


def _interval(rate: Interval) -> str:
    return f"{rate.estimate:.2%} [{rate.low:.2%}, {rate.high:.2%}]"


def _difference(c: Comparison) -> str:
    """In percentage points of hit rate."""
    return f"{100 * c.difference:+.2f} pp [{100 * c.low:+.2f}, {100 * c.high:+.2f}]"


def _maybe(value: float, fmt: str) -> str:
    return fmt.format(value) if math.isfinite(value) else "-"


def _count(value: float) -> str:
    return f"{value:,.0f}" if math.isfinite(value) else "-"


def _p_value(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def _columns(rows: Sequence[Sequence[str]], right: tuple[int, ...] = ()) -> list[str]:
    """Rows of cells as aligned text lines, two spaces apart (columns in ``right`` right-aligned)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def readout_promql(control: str = CONTROL, alpha: float = 0.05, tau: float = TAU) -> dict[str, str]:
    """The readout in PromQL, one query per figure, each by ``arm``: the dashboard's Experiment row.

    Keys: ``shown``, ``hit rate``, ``hit rate low``, ``hit rate high`` (as
    :func:`consumer.experiment.rate_interval`), ``difference``, ``difference low``,
    ``difference high``, ``p-value`` (as :func:`consumer.experiment.compare` against the arm
    named ``control``; the control's own row is 0 difference and p-value 1). The same formulas,
    term by term, on the counters summed over workers: the variance over viewers from the
    per-viewer sums, floored by the binomial one; ``p = min(1, 1/Lambda)``. PromQL has no
    variables, so each query spells its terms out in full.

    >>> q = readout_promql()
    >>> q["shown"]
    'sum by (arm) (streamrec_experiment_shown_events)'
    >>> 'arm="control"' in q["p-value"] and "clamp_max(exp(-" in q["p-value"]
    True
    """
    tau2 = repr(tau * tau)
    minus_two_ln_alpha = repr(-2 * math.log(alpha))
    arm, ctl = _online_promql(""), _online_promql(f'{{arm="{control}"}}')

    def width(v: str) -> str:
        return f"sqrt({v} * ({v} + {tau2}) / {tau2} * (ln(({v} + {tau2}) / {v}) + {minus_two_ln_alpha}))"

    rate = _rate_promql(arm)
    w_arm = width(_variance_promql(arm))
    theta = f"({rate} - scalar({_rate_promql(ctl)}))"
    v = f"({_variance_promql(arm)} + scalar({_variance_promql(ctl)}))"
    # 1 when both arms have shown events, else 0: compare() says 0 [-1, 1], p 1 then.
    ok = f"(({arm['shown']} > bool 0) * scalar({ctl['shown']} > bool 0))"
    log_lambda = f"(0.5 * ln({v} / ({v} + {tau2})) + {tau2} * {theta} * {theta} / (2 * {v} * ({v} + {tau2})))"
    return {
        "shown": arm["shown"],
        "hit rate": rate,
        "hit rate low": f"clamp_min({rate} - {w_arm}, 0)",
        "hit rate high": f"clamp_max({rate} + {w_arm}, 1)",
        "difference": f"{theta} * {ok}",
        "difference low": f"({theta} - {width(v)}) * {ok} - (1 - {ok})",
        "difference high": f"({theta} + {width(v)}) * {ok} + (1 - {ok})",
        "p-value": f"clamp_max(exp(-{log_lambda}) * {ok} + (1 - {ok}), 1)",
    }


def _online_promql(select: str) -> dict[str, str]:
    """The per-arm sums of the online counters (``select``: a label matcher, or nothing)."""
    names = {
        "shown": "shown_events",
        "hits": "hit_events",
        "shown_squares": "shown_squares",
        "hit_squares": "hit_squares",
        "products": "shown_hit_products",
        "viewers": "viewers",
    }
    return {key: f"sum by (arm) (streamrec_experiment_{name}{select})" for key, name in names.items()}


def _rate_promql(s: Mapping[str, str]) -> str:
    return f"({s['hits']} / clamp_min({s['shown']}, 1))"


def _variance_promql(s: Mapping[str, str]) -> str:
    """consumer.experiment._variance, term by term: max(clustered, binomial floor)."""
    r, shown = _rate_promql(s), f"clamp_min({s['shown']}, 1)"
    spread = (
        f"clamp_min({s['hit_squares']} - 2 * {r} * {s['products']} + {r} * {r} * {s['shown_squares']}, 0)"
    )
    clustered = f"{spread} / ({shown} * {shown}) * {s['viewers']} / clamp_min({s['viewers']} - 1, 1)"
    p = f"(({s['hits']} + 0.5) / ({s['shown']} + 1))"
    floor = f"{p} * (1 - {p}) / {shown}"
    return f"(({clustered}) > ({floor}) or ({floor}))"


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

    if report.source == "prometheus" and report.experiment:
        rows = 0.3 + 0.09 * len(report.experiment)  # the readout table: a line per arm
        fig = plt.figure(figsize=(14, 13.5 + 4 * rows), constrained_layout=True)
        grid = fig.add_gridspec(4, 2, height_ratios=(1, 1, 0.9, rows))
        axes = [[fig.add_subplot(grid[r, c]) for c in range(2)] for r in range(3)]
        _service_panels(axes, report)
        _arm_rates(axes[2][0], report.experiment)
        _arm_differences(axes[2][1], report.experiment, report.control)
        _readout_cells(fig.add_subplot(grid[3, :]), report.experiment)
    elif report.source == "prometheus":
        fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), constrained_layout=True)
        _service_panels(axes, report)
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


def _service_panels(axes, report: Report) -> None:
    _lines(axes[0][0], report.quality, "Quality, test-then-train (higher is better)", "share", ratio=True)
    _lines(axes[0][1], report.throughput, "Throughput", "per second")
    _lines(axes[1][0], report.latency, "Latency", "seconds", log=True)
    _totals(axes[1][1], report)


def _arm_rates(ax, arms: Sequence[ArmReadout]) -> None:
    ax.set_title("Online hit rate per arm, always-valid 95% interval")
    names = [a.arm for a in arms]
    rates = [a.hit_rate.estimate for a in arms]
    errors = [[r - a.hit_rate.low for r, a in zip(rates, arms, strict=True)],
              [a.hit_rate.high - r for r, a in zip(rates, arms, strict=True)]]  # fmt: skip
    ax.errorbar(names, rates, yerr=errors, fmt="o", capsize=8, markersize=8, linewidth=2)
    for i, a in enumerate(arms):
        ax.annotate(f"{a.hit_rate.estimate:.2%}\n{a.online.shown:,.0f} shown", (i, a.hit_rate.estimate),
                    xytext=(12, 0), textcoords="offset points", va="center", fontsize=9)  # fmt: skip
    ax.set_xlim(-0.5, len(arms) - 0.2)
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.set_ylabel("watched from the list shown")
    ax.grid(alpha=0.3, axis="y")


def _arm_differences(ax, arms: Sequence[ArmReadout], control: str) -> None:
    versus = [a for a in arms if a.versus_control is not None]
    ax.set_title(f"Each arm minus {control}: hit rate difference, 95% interval, mSPRT p")
    if not versus:
        ax.axis("off")
        ax.text(0.5, 0.5, f"no arm named {control!r}: pass --control", ha="center", va="center",
                transform=ax.transAxes)  # fmt: skip
        return
    for i, a in enumerate(versus):
        c = a.versus_control
        color = "tab:green" if c.decided and c.difference > 0 else "tab:red" if c.decided else "tab:gray"
        low, high = max(c.low, -1.0), min(c.high, 1.0)  # few events: wider than any difference can be
        ax.plot([low, high], [i, i], color=color, linewidth=3)
        ax.plot([c.difference], [i], "o", color=color, markersize=9)
        verdict = "decided" if c.decided else "not decided"
        ax.annotate(f"{100 * c.difference:+.2f} pp, p = {_p_value(c.p_value)} ({verdict})", (c.difference, i),
                    xytext=(0, 10), textcoords="offset points", ha="center", fontsize=9)  # fmt: skip
    ax.axvline(0, color="black", linewidth=1)
    ax.set_yticks(range(len(versus)), [a.arm for a in versus])
    ax.set_ylim(-0.6, len(versus) - 0.3)
    ax.xaxis.set_major_formatter(lambda v, _: f"{100 * v:+.1f} pp")
    ax.set_xlabel(f"online hit rate minus {control}'s (percentage points)")
    ax.grid(alpha=0.3, axis="x")


def _readout_cells(ax, arms: Sequence[ArmReadout]) -> None:
    ax.axis("off")
    ax.set_title("Live experiment readout (totals since the service started)")
    header = ("arm", "model", "share", "shown", "hit rate [95%]", "watch s from lists", "HR@10",
              "coverage", "pop. bias", "fallbacks", "vs control [95%]", "p-value")  # fmt: skip
    rows = []
    for a in arms:
        c = a.versus_control
        rows.append(
            (
                *_arm_cells(a, _count(a.hit_watch_s)),
                "-" if c is None else _difference(c),
                "-" if c is None else _p_value(c.p_value) + (" *" if c.decided else ""),
            )
        )
    table = ax.table(cellText=rows, colLabels=header, loc="upper center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.auto_set_column_width(list(range(len(header))))
    table.scale(1, 1.5)
    alpha = next((a.versus_control.alpha for a in arms if a.versus_control), 0.05)
    ax.text(0.5, 0.0, f"* decided at alpha {alpha:g}: the mSPRT p-value is valid however often it is looked "
            "at; intervals are always-valid, viewers are the units of the variance",
            ha="center", va="bottom", transform=ax.transAxes, fontsize=9)  # fmt: skip


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
    # The service's shadow baseline first: an experiment may serve a popularity model as an arm.
    base_name = "recent_popular" if "recent_popular" in hr else next((k for k in hr if "popular" in k), None)
    base = hr.get(base_name)
    for name, value in hr.items():
        if base and "popular" not in name:
            lines.append(f"HR@10 {name} / {base_name}: {value / base:.2f}x")
    ax.text(0.02, 0.95, "\n".join(lines) or "no totals", va="top", family="monospace", fontsize=11)
