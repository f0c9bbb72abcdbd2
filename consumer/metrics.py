"""Every Prometheus metric the service exposes, defined once, and the calls that update them.

The service owns one :class:`ServiceMetrics` and calls it once per poll batch (never per event):
the per-event work (freshness of every published list, coverage of every recommended video) is
done with numpy on whole arrays. All names share the ``streamrec_`` prefix, use base units
(seconds, bytes, ratios in ``[0, 1]``), and counters end in ``_total``. Labels are of low
cardinality only (``model``, ``arm``, ``reason``, ``partition``, ``result``); never a viewer or
video id.

Every quality series carries the ``arm`` of a live experiment (:mod:`consumer.arms`) beside the
``model``: ``control`` when there is no experiment, the empty string for a shadow baseline
(which serves no one). The experiment's readout reads the online counters by arm.

Quality is exported as counters, not ratios, so PromQL computes it over any window, e.g.
HR@10 of the last five minutes::

    sum by (model) (rate(streamrec_quality_hits_total[5m]))
      / sum by (model) (rate(streamrec_quality_evaluated_total[5m]))

>>> from prometheus_client import CollectorRegistry, generate_latest
>>> registry = CollectorRegistry()
>>> metrics = ServiceMetrics(registry=registry)
>>> metrics.record_batch(consumed=3, learned=2, seconds=0.004)
>>> metrics.record_dead_letters(["not_json"])
>>> text = generate_latest(registry).decode()
>>> "streamrec_events_learned_total 2.0" in text
True
>>> 'streamrec_events_dead_lettered_total{reason="not_json"} 1.0' in text
True
>>> 'streamrec_events_dead_lettered_total{reason="bad_type"} 0.0' in text  # exists at zero
True

"""

from __future__ import annotations

import contextlib
import errno
import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import HistogramMetricFamily

from contract import __version__
from contract.errors import UserError
from contract.schema import REASONS

if TYPE_CHECKING:
    from model.evaluate import BatchQuality

__all__ = [
    "ServiceMetrics",
    "ArrayHistogram",
    "DEAD_LETTER_REASONS",
    "FRESHNESS_BUCKETS",
    "STAGES",
    "CONTROL",
    "SHADOW_ARM",
    "FALLBACK_REASONS",
    "EXPERIMENT_TOTALS",
    "popularity_percentiles",
    "start_http_server",
    "SYNC_DIRECTIONS",
    "SYNC_STEPS",
]

#: The ``arm`` label of a service without an experiment (its one arm), and of shadow baselines.
CONTROL = "control"
SHADOW_ARM = ""
#: Reasons an arm's viewers get the control's lists (``streamrec_experiment_fallback_lists_total``).
FALLBACK_REASONS = ("exception", "guard")

#: The gauges ``streamrec_experiment_<name>{arm}`` of the experiment's readout, in the order of
#: :class:`consumer.app.Online`: the arm's totals since the experiment began (across restarts).
EXPERIMENT_TOTALS = {
    "shown_events": "Events whose viewer had been shown a list, since the experiment began.",
    "hit_events": "Of those, events whose video was in the viewer's last list.",
    "shown_watch_seconds": "Watch time of the shown events (0 when unknown).",
    "hit_watch_seconds": "Watch time of the hit events: watch time that came from shown lists.",
    "shown_squares": "Sum over viewers of their shown events squared (the readout's variance).",
    "hit_squares": "Sum over viewers of their hit events squared (the readout's variance).",
    "shown_hit_products": "Sum over viewers of shown times hit events (the readout's variance).",
    "viewers": "Viewers with at least one shown event.",
}

#: Reason label values of ``streamrec_events_dead_lettered_total``, created at zero. The schema's
#: reasons, plus ``decode_error`` for anything that fails before validation (a bad key, say).
DEAD_LETTER_REASONS: tuple[str, ...] = (*REASONS, "decode_error")

#: Where a worker's time goes, the ``stage`` label values of ``streamrec_stage_seconds_total``:
#: ``poll`` (kafka-python fetching and unpacking records, and waiting for them when a poll
#: returns some), ``decode`` (validation, dead letters), ``test_learn`` (the model's test then
#: train step, the shadow's too, and replay after a restart), ``recommend`` (fresh lists and
#: their messages), ``publish`` (handing messages to the producer), ``acknowledge`` (waiting at
#: the end of a poll for the brokers to acknowledge what is still in flight), ``commit``
#: (offsets, or the transaction), ``metrics`` (the live quality and these metrics),
#: ``checkpoint``, ``idle`` (polls that found nothing), ``changelog`` (the poll's viewers'
#: state, encoded for the viewer-state changelog and handed to the producer) and ``sync``
#: (with ``--sync-every``: taking and sending this worker's video updates, reading and applying
#: its peers').
STAGES = (
    "poll",
    "decode",
    "test_learn",
    "recommend",
    "publish",
    "acknowledge",
    "commit",
    "metrics",
    "checkpoint",
    "idle",
    "changelog",
    "sync",
)

#: Freshness (event time -> its viewer's list published): 1 ms to a minute.
FRESHNESS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Processing time of one poll batch (decode, score, learn, recommend, publish).
BATCH_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Events per poll batch.
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
#: Restoring the viewers of the partitions one assignment brought (reading the changelog).
RESTORE_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: ``direction`` label values of the sync counters (:mod:`consumer.sync`), created at zero.
SYNC_DIRECTIONS = ("sent", "applied")
#: ``step`` label values of ``streamrec_sync_seconds_total``: ``take`` (what this worker added
#: since its last send), ``encode`` (into records), ``decode`` and ``apply`` (a peer's records).
SYNC_STEPS = ("take", "encode", "decode", "apply")
#: ``outcome`` label values of ``streamrec_sync_snapshots_total`` (:mod:`consumer.snapshot`).
SNAPSHOT_OUTCOMES = ("published", "deferred", "failed")
#: Writing one checkpoint.
CHECKPOINT_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ArrayHistogram:
    """A Prometheus histogram fed whole numpy arrays at once.

    ``prometheus_client.Histogram.observe`` takes one value (and a lock) per call; at thousands
    of events per second that is measurable, so this collector bins a batch with one
    ``searchsorted`` and adds the bucket counts. It exposes the standard ``_bucket``, ``_sum``
    and ``_count`` series, so ``histogram_quantile`` works on it as on any histogram.

    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> registry = CollectorRegistry()
    >>> h = ArrayHistogram("demo_seconds", "Demo.", buckets=(0.1, 1.0), registry=registry)
    >>> h.observe_many(np.array([0.05, 0.1, 0.5, 7.0]))
    >>> for line in generate_latest(registry).decode().splitlines():
    ...     if "bucket" in line:
    ...         print(line)
    demo_seconds_bucket{le="0.1"} 2.0
    demo_seconds_bucket{le="1.0"} 3.0
    demo_seconds_bucket{le="+Inf"} 4.0
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry | None
    ) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = np.asarray(sorted(buckets), dtype=np.float64)
        # One slot per finite bucket plus +Inf; counts are per slot, cumulated on collect.
        self._counts = np.zeros(self._bounds.size + 1, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        """Add every value of ``values`` (NaNs are ignored)."""
        values = np.asarray(values, dtype=np.float64).ravel()
        values = values[~np.isnan(values)]
        if values.size == 0:
            return
        # side="left": slot i holds bounds[i-1] < v <= bounds[i], Prometheus's inclusive ``le``.
        slots = np.searchsorted(self._bounds, values, side="left")
        counts = np.bincount(slots, minlength=self._counts.size)
        total = float(values.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterable[HistogramMetricFamily]:
        with self._lock:
            cumulative = np.cumsum(self._counts)
            total = self._sum
        bounds = [*(repr(float(b)) for b in self._bounds), "+Inf"]
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], list(zip(bounds, cumulative.tolist(), strict=True)), sum_value=total)
        yield family


class _RecentWindow:
    """Distinct videos and mean popularity percentile over the last ``size`` recommended slots.

    Bounded: arrays older than the window are evicted; a per-row count keeps ``distinct``
    exact without re-scanning the window.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._batches: deque[tuple[np.ndarray, float, int]] = deque()
        self._slots = 0
        self._counts = np.zeros(0, dtype=np.int64)
        self._distinct = 0
        self._pct_sum = 0.0
        self._pct_n = 0

    def add(self, rows: np.ndarray, pct_sum: float, pct_n: int) -> None:
        if rows.size:
            top = int(rows.max()) + 1
            if top > self._counts.size:
                grown = np.zeros(max(top, 2 * self._counts.size), dtype=np.int64)
                grown[: self._counts.size] = self._counts
                self._counts = grown
            before = self._counts[rows] == 0
            np.add.at(self._counts, rows, 1)
            self._distinct += int(np.unique(rows[before]).size)
        self._batches.append((rows, pct_sum, pct_n))
        self._slots += rows.size
        self._pct_sum += pct_sum
        self._pct_n += pct_n
        while self._slots > self.size and len(self._batches) > 1:
            old, old_sum, old_n = self._batches.popleft()
            np.subtract.at(self._counts, old, 1)
            self._distinct -= int(np.unique(old[self._counts[old] == 0]).size)
            self._slots -= old.size
            self._pct_sum -= old_sum
            self._pct_n -= old_n

    @property
    def distinct(self) -> int:
        return self._distinct

    @property
    def popularity(self) -> float:
        return self._pct_sum / self._pct_n if self._pct_n else float("nan")


class ServiceMetrics:
    """The service's metrics on one registry, and the per-batch calls that update them.

    Parameters
    ----------
    models
        Model names, the ``model`` label values of the quality series: the served model first,
        then shadow baselines, each by its own ``name`` (the dashboard's reference for lift is
        ``"recent_popular"``, the service's shadow).
    arms
        The arms that serve viewers, ``(arm, model, share of viewers)``, the control first;
        by default one, ``control``, serving ``models[0]``.
    registry
        Where the metrics are registered; the process-wide default registry when ``None``.
        Tests pass a fresh :class:`~prometheus_client.CollectorRegistry`.
    n
        The list length quality is measured at (HR@n, NDCG@n); it only appears in help texts.
    coverage_window
        How many recently recommended slots (videos in published lists) coverage and popularity
        bias are computed over.
    loss_half_life
        Updates after which a batch's loss weighs half in the moving average of
        :meth:`record_loss_total`.
    """

    def __init__(
        self,
        models: Sequence[str] = ("streamrec", "recent_popular"),
        registry: CollectorRegistry | None = None,
        *,
        arms: Sequence[tuple[str, str, float]] | None = None,
        n: int = 10,
        coverage_window: int = 10_000,
        loss_half_life: float = 5_000.0,
    ) -> None:
        registry = REGISTRY if registry is None else registry
        self.models = tuple(models)
        self.arms = tuple(arms) if arms else ((CONTROL, self.models[0] if self.models else "", 1.0),)
        #: ``(model, arm)`` label pairs of the quality series: every arm's, then the shadows'.
        self.series = (*((m, a) for a, m, _ in self.arms), *((m, SHADOW_ARM) for m in self.models[1:]))
        self.registry = registry
        kw = {"registry": registry}

        # -- throughput ----------------------------------------------------------------------
        self.consumed = Counter("streamrec_events_consumed", "Watch events read from the input topic.", **kw)
        self.learned = Counter(
            "streamrec_events_learned", "Watch events learned by the model (valid events).", **kw
        )
        self.dead_lettered = Counter(
            "streamrec_events_dead_lettered",
            "Events sent to the dead-letter topic, by reason (see contract.schema).",
            ["reason"],
            **kw,
        )
        self.published = Counter(
            "streamrec_recommendations_published",
            "Recommendation lists published to the output topic (one per viewer per batch).",
            **kw,
        )
        self.batch_size = Histogram(
            "streamrec_batch_events", "Events per poll batch.", buckets=BATCH_SIZE_BUCKETS, **kw
        )
        self.batch_seconds = Histogram(
            "streamrec_batch_processing_seconds",
            "Time to process one poll batch: decode, score, learn, recommend, publish.",
            buckets=BATCH_SECONDS_BUCKETS,
            **kw,
        )
        self.freshness = ArrayHistogram(
            "streamrec_freshness_seconds",
            "Per event: from its Kafka timestamp to its viewer's fresh recommendations being published.",
            FRESHNESS_BUCKETS,
            registry,
        )
        self.stage_seconds = Counter(
            "streamrec_stage_seconds",
            "Seconds the worker spent in each stage of its loop (see consumer.metrics.STAGES).",
            ["stage"],
            **kw,
        )
        self.lag = Gauge(
            "streamrec_consumer_lag_messages",
            "Messages in the input partition not yet consumed by this service.",
            ["partition"],
            **kw,
        )

        # -- quality (test-then-train on the live stream) --------------------------------------
        def quality(name: str, doc: str) -> Counter:
            return Counter(f"streamrec_quality_{name}", doc, ["model", "arm"], **kw)

        self.q_evaluated = quality(
            "evaluated", "Events evaluated: viewer and video seen before, so the model was asked first."
        )
        self.q_cold = quality("cold", "Events skipped by evaluation because the viewer or video was new.")
        self.q_hits = quality("hits", f"Evaluated events whose video was in the model's top {n} (HR@{n}).")
        self.q_ndcg = quality(
            "ndcg", f"Sum of NDCG@{n} gains of evaluated events (divide by evaluated for NDCG@{n})."
        )
        self.q_rr = quality(
            "reciprocal_rank", "Sum of reciprocal ranks of evaluated events (divide by evaluated for MRR)."
        )
        self.online_shown = Counter(
            "streamrec_online_shown_events",
            "Watch events whose viewer had a recommendation list published before the event, by "
            "the viewer's arm.",
            ["arm"],
            **kw,
        )
        self.online_hits = Counter(
            "streamrec_online_hit_events",
            "Of those, events whose video was in the viewer's last published list.",
            ["arm"],
            **kw,
        )
        self.online_shown_watch = Counter(
            "streamrec_online_shown_watch_seconds",
            "Watch time of the events counted by streamrec_online_shown_events (0 when unknown).",
            ["arm"],
            **kw,
        )
        self.online_hit_watch = Counter(
            "streamrec_online_hit_watch_seconds",
            "Watch time that came from shown lists: of the events counted by streamrec_online_hit_events.",
            ["arm"],
            **kw,
        )
        # The experiment's readout (consumer.experiment): each arm's totals since the experiment
        # began, restored from checkpoints across restarts (counters would start again at 0,
        # and the readout with them), with the per-viewer sums of its variance.
        self.experiment = {
            name: Gauge(f"streamrec_experiment_{name}", doc, ["arm"], **kw)
            for name, doc in EXPERIMENT_TOTALS.items()
        }
        self.arm_share = Gauge(
            "streamrec_experiment_arm_share_ratio",
            "Each arm's share of the viewers, by its model (one arm, control, without an experiment).",
            ["arm", "model"],
            **kw,
        )
        self.arm_healthy = Gauge(
            "streamrec_experiment_arm_healthy",
            "1 while the arm's model serves its viewers, 0 once it raised (the control's lists serve them).",
            ["arm"],
            **kw,
        )
        self.arm_fallbacks = Counter(
            "streamrec_experiment_fallback_lists",
            "Lists for an arm's viewers made by the control's model because the arm's model failed, "
            "by reason (exception: it raised, and serves no one until a restart; guard: it refused "
            "non-finite updates in the batch).",
            ["arm", "reason"],
            **kw,
        )
        self.coverage = Gauge(
            "streamrec_coverage_ratio",
            f"Distinct videos in the last {coverage_window} recommended slots, as a share of the catalogue.",
            ["model", "arm"],
            **kw,
        )
        self.popularity_bias = Gauge(
            "streamrec_popularity_bias_ratio",
            "Mean popularity percentile of recently recommended videos (1 = only the most watched).",
            ["model", "arm"],
            **kw,
        )

        # -- the model -------------------------------------------------------------------------
        self.model_events = Gauge(
            "streamrec_model_events",
            "Events learned into the current model state since it was created.",
            **kw,
        )
        self.model_viewers = Gauge("streamrec_model_viewers", "Viewers the model knows.", **kw)
        self.model_videos = Gauge("streamrec_model_videos", "Videos the model knows.", **kw)
        self.model_memory = Gauge("streamrec_model_memory_bytes", "Memory held by the model's arrays.", **kw)
        self.model_loss = Gauge(
            "streamrec_model_loss", "Training loss, moving average (NaN when the model has none).", **kw
        )
        self.guard_trips = Counter(
            "streamrec_model_guard_trips",
            "Updates the model refused because they would have made its parameters non-finite.",
            **kw,
        )
        self.checkpoint_seconds = Histogram(
            "streamrec_checkpoint_duration_seconds",
            "Time to write one checkpoint.",
            buckets=CHECKPOINT_SECONDS_BUCKETS,
            **kw,
        )
        self.checkpoints = Counter(
            "streamrec_checkpoints", "Checkpoints attempted, by result.", ["result"], **kw
        )
        self.checkpoint_size = Gauge(
            "streamrec_checkpoint_size_bytes", "Size of the last successful checkpoint.", **kw
        )
        self.checkpoint_time = Gauge(
            "streamrec_checkpoint_last_success_timestamp_seconds",
            "Unix time of the last successful checkpoint (0 before the first).",
            **kw,
        )
        self.build = Info("streamrec_build", "Version of streamrec and the model it serves.", **kw)
        self.build.info({"version": __version__, "model": self.models[0] if self.models else ""})

        # Pre-create every known label value of the counters, so each series exists (at zero)
        # from the start and rate() over a fresh service is 0, not "no data". Coverage and
        # popularity bias appear with the first published lists: a 0 before them would be false.
        for reason in DEAD_LETTER_REASONS:
            self.dead_lettered.labels(reason)
        for model, arm in self.series:
            for counter in (self.q_evaluated, self.q_cold, self.q_hits, self.q_ndcg, self.q_rr):
                counter.labels(model, arm)
        for arm, model, share in self.arms:
            for online in (self.online_shown, self.online_hits):
                online.labels(arm)
            for watch in (self.online_shown_watch, self.online_hit_watch):
                watch.labels(arm)
            for gauge in self.experiment.values():
                gauge.labels(arm).set(0)
            for reason in FALLBACK_REASONS:
                self.arm_fallbacks.labels(arm, reason)
            self.arm_share.labels(arm, model).set(share)
            self.arm_healthy.labels(arm).set(1)
        for result in ("ok", "failed"):
            self.checkpoints.labels(result)
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        self._stages_seen: dict[str, float] = {}
        self.model_loss.set(float("nan"))
        # Each labelled series once looked up: prometheus-client's labels() checks and locks at
        # every call, some 30 of them a batch (1.5 us each). Not for lag, whose series are removed.
        self._series: dict[tuple, Any] = {}

        self.coverage_window = coverage_window
        self._windows = {pair: _RecentWindow(coverage_window) for pair in self.series}
        self._guard_seen = 0
        self._bias_known: set[str] = set()
        self.loss_half_life = loss_half_life
        self._loss_seen: tuple[float, int] = (0.0, 0)
        self._loss_avg: float | None = None

        # -- handover: the viewer-state changelog (consumer.changelog) ---------------------------
        self.restore_seconds = Histogram(
            "streamrec_restore_seconds",
            "Time to restore the viewers of partitions this worker took over, per assignment, from "
            "the viewer-state changelog (read to its end, installed in every model).",
            buckets=RESTORE_SECONDS_BUCKETS,
            **kw,
        )
        self.restored_viewers = Counter(
            "streamrec_restored_viewers", "Viewers restored from the viewer-state changelog.", **kw
        )
        self.restore_records = Counter(
            "streamrec_restore_records", "Viewer-state changelog records read by restores.", **kw
        )
        self.changelog_records = Counter(
            "streamrec_changelog_records", "Viewer-state records written to the changelog.", **kw
        )

        # -- sync: one model over the group (consumer.sync) -------------------------------------
        self.sync_lag = Gauge(
            "streamrec_sync_lag_seconds",
            "Per peer: how old the newest video update applied from it was when applied (from the "
            "peer sending it to this worker applying it).",
            ["peer"],
            **kw,
        )
        self.sync_peer_time = Gauge(
            "streamrec_sync_peer_update_timestamp_seconds",
            "Per peer: Unix time the newest video update applied from it was sent (time() minus "
            "this is its age now: it grows while the peer sends nothing).",
            ["peer"],
            **kw,
        )
        self.sync_records = Counter(
            "streamrec_sync_records",
            "Video update records sent to the update topic, and peers' records applied, by direction.",
            ["direction"],
            **kw,
        )
        self.sync_bytes = Counter(
            "streamrec_sync_bytes", "Bytes of the video update records, by direction.", ["direction"], **kw
        )
        self.sync_videos = Counter(
            "streamrec_sync_videos",
            "Video rows (vectors, accumulators, counts: each video once per send) in the updates sent "
            "and applied, by direction.",
            ["direction"],
            **kw,
        )
        self.sync_seconds = Counter(
            "streamrec_sync_seconds",
            "Seconds spent on the video updates, by step (see consumer.metrics.SYNC_STEPS).",
            ["step"],
            **kw,
        )
        self.sync_fenced = Counter(
            "streamrec_sync_fenced_records",
            "Update records dropped as sent under an older group generation than the last fence "
            "(by a worker expelled meanwhile; its partitions' new owners relearn that learning).",
            **kw,
        )
        for direction in SYNC_DIRECTIONS:
            for counter in (self.sync_records, self.sync_bytes, self.sync_videos):
                counter.labels(direction)
        for step in SYNC_STEPS:
            self.sync_seconds.labels(step)
        # Snapshots of the video state (consumer.snapshot).
        self.sync_snapshots = Counter(
            "streamrec_sync_snapshots",
            "Snapshots of the agreed video state, by outcome: published (manifest acknowledged), "
            "deferred (own updates not yet behind the reader), failed (a chunk not acknowledged).",
            ["outcome"],
            **kw,
        )
        self.sync_snapshot_bytes = Gauge(
            "streamrec_sync_snapshot_bytes", "Bytes of the last snapshot this worker published.", **kw
        )
        self.sync_snapshot_restore = Gauge(
            "streamrec_sync_snapshot_restore",
            "The snapshot this worker started from: seconds reading and installing it, records of "
            "the snapshot topic read, videos installed (0: it started without one).",
            ["what"],
            **kw,
        )
        for outcome in SNAPSHOT_OUTCOMES:
            self.sync_snapshots.labels(outcome)
        for what in ("seconds", "records", "videos"):
            self.sync_snapshot_restore.labels(what)

    def _of(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, kept for the next batches."""
        child = self._series.get((metric, labels))
        if child is None:
            child = self._series[metric, labels] = metric.labels(*labels)
        return child

    # -- per batch -----------------------------------------------------------------------------

    def record_batch(self, consumed: int, learned: int, seconds: float) -> None:
        """One poll batch: events read, events learned, and the time it took end to end."""
        self.consumed.inc(consumed)
        self.learned.inc(learned)
        self.batch_size.observe(consumed)
        self.batch_seconds.observe(seconds)

    def record_stages(self, totals: dict[str, float]) -> None:
        """The worker's running seconds per stage (``{stage: seconds since it started}``); the
        counters follow them (a total lower than the last one, a restarted worker, starts over)."""
        seen = self._stages_seen
        for stage, total in totals.items():
            added = total - seen.get(stage, 0.0)
            if added > 0:
                self._of(self.stage_seconds, stage).inc(added)
            seen[stage] = total

    def record_dead_letters(self, reasons: Sequence[str]) -> None:
        """One reason per dead-lettered event of the batch."""
        counts: dict[str, int] = {}
        for reason in reasons:
            counts[reason] = counts.get(reason, 0) + 1
        for reason, count in counts.items():
            self.dead_lettered.labels(reason).inc(count)

    def record_published(self, count: int) -> None:
        """Recommendation lists published (and acknowledged) in this batch."""
        self.published.inc(count)

    def record_quality(self, model: str, q: BatchQuality, arm: str = CONTROL) -> None:
        """Add one scored batch's :class:`model.evaluate.BatchQuality` for ``model`` in ``arm``
        (:data:`SHADOW_ARM` for a shadow)."""
        of = self._of
        of(self.q_evaluated, model, arm).inc(q.evaluated)
        of(self.q_cold, model, arm).inc(q.events - q.evaluated)
        of(self.q_hits, model, arm).inc(q.hits)
        of(self.q_ndcg, model, arm).inc(q.ndcg_sum)
        of(self.q_rr, model, arm).inc(q.rr_sum)

    def record_online_hits(
        self, shown: int, hits: int, arm: str = CONTROL, shown_watch: float = 0.0, hit_watch: float = 0.0
    ) -> None:
        """Of ``arm``'s viewers' events, ``shown`` had a previously published list for their
        viewer and ``hits`` were watched from it; ``shown_watch`` and ``hit_watch`` are their
        watch seconds."""
        self._of(self.online_shown, arm).inc(shown)
        self._of(self.online_hits, arm).inc(hits)
        if shown_watch:
            self._of(self.online_shown_watch, arm).inc(shown_watch)
        if hit_watch:
            self._of(self.online_hit_watch, arm).inc(hit_watch)

    def record_online(self, arm: str, batch: Sequence[float], totals: Sequence[float]) -> None:
        """One batch of ``arm``'s viewers' events (``batch``) and the experiment's totals after it
        (``totals``), each in the order of :data:`EXPERIMENT_TOTALS` (a :class:`consumer.app.Online`)."""
        shown, hits, shown_watch, hit_watch = batch[:4]
        self.record_online_hits(int(shown), int(hits), arm, shown_watch, hit_watch)
        self.set_experiment(arm, totals)

    def set_experiment(self, arm: str, totals: Sequence[float]) -> None:
        """The experiment's totals for ``arm``, in the order of :data:`EXPERIMENT_TOTALS`."""
        for gauge, value in zip(self.experiment.values(), totals, strict=True):
            self._of(gauge, arm).set(value)

    def record_fallback(self, arm: str, reason: str, lists: int, healthy: bool) -> None:
        """``lists`` lists for ``arm``'s viewers were the control's, for ``reason``; ``healthy``:
        whether the arm's model still serves."""
        self.arm_fallbacks.labels(arm, reason).inc(lists)
        self.arm_healthy.labels(arm).set(1 if healthy else 0)

    def record_freshness(self, seconds: np.ndarray) -> None:
        """Per event of the batch: seconds from its Kafka timestamp to its list being published.

        Negative values (clocks of producer and service disagreeing) count as zero.
        """
        self.freshness.observe_many(np.maximum(np.asarray(seconds, dtype=np.float64), 0.0))

    def record_recommended(
        self,
        model: str,
        video_rows: np.ndarray,
        popularity_percentile: np.ndarray | None,
        catalogue: int,
        arm: str = CONTROL,
    ) -> None:
        """Lists just published by ``model``: coverage and popularity bias over the recent window.

        ``video_rows`` are the model's internal video rows (any shape, ``-1`` for empty slots);
        ``popularity_percentile`` is each recommended video's popularity percentile in ``[0, 1]``
        (aligned with ``video_rows``, or just the valid slots; :func:`popularity_percentiles`
        computes it from watch counts), or ``None`` when unknown: then only coverage is updated;
        ``catalogue`` is the number of videos the model could recommend.
        """
        rows = np.asarray(video_rows).ravel()
        valid = rows >= 0
        if popularity_percentile is None:
            pct = np.zeros(0)
        else:
            pct = np.asarray(popularity_percentile, dtype=np.float64).ravel()
            if pct.size == rows.size:
                pct = pct[valid]
            pct = pct[np.isfinite(pct)]
        window = self._windows.get((model, arm))
        if window is None:  # a model not named at construction: it gets its window now
            window = self._windows[model, arm] = _RecentWindow(self.coverage_window)
        window.add(rows[valid].astype(np.int64), float(pct.sum()), int(pct.size))
        covered = min(1.0, window.distinct / catalogue) if catalogue > 0 else 0.0
        self._of(self.coverage, model, arm).set(covered)
        if pct.size or (model, arm) in self._bias_known:
            self._bias_known.add((model, arm))
            self._of(self.popularity_bias, model, arm).set(window.popularity)

    # -- state ---------------------------------------------------------------------------------

    def forget_lag(self, partition: int) -> None:
        """Partition ``partition`` is no longer this worker's: its lag is its new owner's to say."""
        with contextlib.suppress(KeyError):  # never set: nothing to remove
            self.lag.remove(str(partition))

    def set_lag(self, partition: int, lag: int) -> None:
        """Messages behind the end of ``partition`` after this batch."""
        self.lag.labels(str(partition)).set(max(0, lag))

    def set_model_stats(
        self, events: int, viewers: int, videos: int, memory_bytes: int, loss: float | None = None
    ) -> None:
        """The model's size, and its training loss if given (``None`` leaves the loss gauge alone:
        it may be fed by :meth:`record_loss_total` instead; NaN until either sets it)."""
        self.model_events.set(events)
        self.model_viewers.set(viewers)
        self.model_videos.set(videos)
        self.model_memory.set(memory_bytes)
        if loss is not None:
            self.model_loss.set(loss)

    def record_loss_total(self, loss_sum: float, updates: int) -> None:
        """Feed the loss gauge from the model's running totals (sum of losses, updates made).

        The gauge becomes a moving average of the per-batch mean loss, each batch weighted by
        its updates, with a half-life of ``loss_half_life`` updates. Totals that go down (a
        fresh or restored model) restart the average's baseline without a jump. A model without
        a loss reports a total of 0 for ever: while the total has never moved from 0 the gauge
        stays NaN.
        """
        last_sum, last_updates = self._loss_seen
        self._loss_seen = (loss_sum, updates)
        new = updates - last_updates
        if new <= 0 or loss_sum < last_sum or (loss_sum == 0.0 and self._loss_avg is None):
            return
        mean = (loss_sum - last_sum) / new
        if not math.isfinite(mean):
            return
        if self._loss_avg is None:
            self._loss_avg = mean
        else:
            weight = 1.0 - 0.5 ** (new / self.loss_half_life)
            self._loss_avg += weight * (mean - self._loss_avg)
        self.model_loss.set(self._loss_avg)

    def record_checkpoint(self, seconds: float, size_bytes: int, ok: bool) -> None:
        """One checkpoint attempt; a successful one also sets its size and time."""
        self.checkpoints.labels("ok" if ok else "failed").inc()
        if ok:
            self.checkpoint_seconds.observe(seconds)
            self.checkpoint_size.set(size_bytes)
            self.checkpoint_time.set(time.time())

    def record_guard_trips(self, total: int) -> None:
        """The model's running total of guard trips; the counter follows it.

        A total lower than the last one (a fresh model after a restore) is taken as the new
        starting point, since a counter cannot go down.
        """
        if total > self._guard_seen:
            self.guard_trips.inc(total - self._guard_seen)
        self._guard_seen = total

    # -- handover ------------------------------------------------------------------------------

    def record_restore(self, seconds: float, records: int, viewers: int) -> None:
        """One restore of assigned partitions: its time, the records it read, the viewers restored."""
        self.restore_seconds.observe(seconds)
        self.restore_records.inc(records)
        self.restored_viewers.inc(viewers)

    def record_changelog(self, records: int) -> None:
        """Viewer-state records a poll wrote to the changelog."""
        self.changelog_records.inc(records)

    # -- sync ------------------------------------------------------------------------------------

    def record_sync_sent(
        self, records: int, size_bytes: int, videos: int, take_s: float, encode_s: float
    ) -> None:
        """One send of this worker's video updates: its records, bytes and videos, and the time
        taking and encoding them took."""
        self.sync_records.labels("sent").inc(records)
        self.sync_bytes.labels("sent").inc(size_bytes)
        self.sync_videos.labels("sent").inc(videos)
        self.sync_seconds.labels("take").inc(take_s)
        self.sync_seconds.labels("encode").inc(encode_s)

    def record_sync_applied(
        self, peer: str, size_bytes: int, videos: int, decode_s: float, apply_s: float, sent_at: float
    ) -> None:
        """One record of ``peer``'s updates applied: its size and videos, the time decoding and
        applying it took, and when the peer sent it (Unix seconds; the lag is its age now)."""
        self.sync_records.labels("applied").inc()
        self.sync_bytes.labels("applied").inc(size_bytes)
        self.sync_videos.labels("applied").inc(videos)
        self.sync_seconds.labels("decode").inc(decode_s)
        self.sync_seconds.labels("apply").inc(apply_s)
        self.sync_lag.labels(peer).set(max(0.0, time.time() - sent_at))
        self.sync_peer_time.labels(peer).set(sent_at)

    def record_sync_fenced(self, sender: str) -> None:
        """An update record of ``sender`` dropped by the generation fence (``consumer.sync``)."""
        self.sync_fenced.inc()

    def record_snapshot(self, outcome: str, size_bytes: int = 0) -> None:
        """A snapshot published (its bytes), deferred or failed."""
        self.sync_snapshots.labels(outcome).inc()
        if outcome == "published":
            self.sync_snapshot_bytes.set(size_bytes)

    def record_snapshot_restore(self, seconds: float, records: int, videos: int) -> None:
        """This worker started from a snapshot: the time it took, records read, videos installed."""
        for what, value in (("seconds", seconds), ("records", records), ("videos", videos)):
            self.sync_snapshot_restore.labels(what).set(value)


def popularity_percentiles(counts: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Popularity percentile in ``[0, 1]`` of each video row, from per-row watch ``counts``.

    The share of the catalogue watched less often than the video (ties count half), so the
    most watched video is near 1 and an unwatched one is near 0. ``-1`` rows give NaN.

    >>> popularity_percentiles(np.array([5, 1, 1, 9]), np.array([[3, 0, -1]])).round(3).tolist()
    [[0.875, 0.625, nan]]
    """
    counts = np.asarray(counts, dtype=np.float64)
    rows = np.asarray(rows)
    out = np.full(rows.shape, np.nan)
    valid = (rows >= 0) & (rows < counts.size)
    chosen = rows[valid]  # only the recommended rows: a batch names far fewer than the catalogue
    with np.errstate(invalid="ignore"):  # NaN or inf: not whole numbers (compared below)
        whole = counts.astype(np.int64)
    if counts.size and whole.min() >= 0 and whole.max() <= 4 * counts.size and np.array_equal(whole, counts):
        # Watch counts are whole numbers: how many are below and at most each one, from their
        # histogram (the same integers as the two binary searches below, at a fifth of the cost:
        # a binary search per recommended slot cost 50 us a batch at 2,560 slots).
        at_most = np.cumsum(np.bincount(whole))
        wanted = whole[chosen]
        upto = at_most[wanted]
        below = np.where(wanted > 0, at_most[np.maximum(wanted - 1, 0)], 0)
    else:
        ordered = np.sort(counts)
        wanted = counts[chosen]
        below = np.searchsorted(ordered, wanted, side="left")
        upto = np.searchsorted(ordered, wanted, side="right")
    out[valid] = (below + 0.5 * (upto - below)) / max(1, counts.size)
    return out


def start_http_server(
    port: int,
    addr: str = "0.0.0.0",
    registry: CollectorRegistry | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> tuple[object, int]:
    """Serve ``/metrics`` on ``addr:port`` in a daemon thread; returns ``(server, bound_port)``.

    With ``certfile`` and ``keyfile`` it is HTTPS (prometheus-client's TLS). ``port=0`` picks a
    free port (tests); call ``server.shutdown()`` to stop. A port that cannot be had (another
    ``streamrec serve`` on this machine holds it) is a :class:`~contract.errors.UserError`.
    """
    from prometheus_client import start_http_server as _start

    registry = REGISTRY if registry is None else registry
    try:
        server, _thread = _start(port, addr=addr, registry=registry, certfile=certfile, keyfile=keyfile)
    except OSError as err:
        if err.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise
        raise UserError(
            f"cannot serve /metrics on {addr}:{port}: {err.strerror}. Another process (another "
            "streamrec serve on this machine?) may hold it: give each worker its own --metrics-port "
            "(with --workers N, ports --metrics-port to --metrics-port + N - 1), or 0 for none"
        ) from None
    return server, server.server_port
