"""ServiceMetrics exposes the documented names, and the values the service's calls imply.

Each test reads the registry the way Prometheus does: the text exposition format, parsed.
"""

from __future__ import annotations

import time
import urllib.request

import numpy as np
import pytest
from kafka.consumer.fetcher import ConsumerRecord
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consumer.app import Measured
from consumer.config import ServiceConfig
from consumer.metrics import (
    DEAD_LETTER_REASONS,
    EXPERIMENT_TOTALS,
    FRESHNESS_BUCKETS,
    SHADOW_ARM,
    STAGES,
    ServiceMetrics,
    popularity_percentiles,
    start_http_server,
)
from consumer.runner import build_service
from contract.schema import REASONS, event_to_json
from model.evaluate import BatchQuality
from producer.synth import synth_events
from streamrec import __version__


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` as a Prometheus scrape would see it."""
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def metrics() -> ServiceMetrics:
    return ServiceMetrics(registry=CollectorRegistry())


def test_names_outside_checks_rely_on_exist_at_zero(metrics):
    samples = scrape(metrics.registry)
    assert value(samples, "streamrec_events_learned_total") == 0
    assert value(samples, "streamrec_recommendations_published_total") == 0
    assert value(samples, "streamrec_model_events") == 0
    for reason in REASONS:
        assert value(samples, "streamrec_events_dead_lettered_total", reason=reason) == 0
    # The served model in the one arm, control, and the service's shadow, in none.
    for model, arm in (("streamrec", "control"), ("recent_popular", "")):
        for name in ("evaluated", "cold", "hits", "ndcg", "reciprocal_rank"):
            assert value(samples, f"streamrec_quality_{name}_total", model=model, arm=arm) == 0
    for name in ("online_shown_events", "online_hit_events", "experiment_fallback_lists"):
        assert any(key[0] == f"streamrec_{name}_total" and ("arm", "control") in key[1] for key in samples)
    assert value(samples, "streamrec_experiment_arm_share_ratio", model="streamrec", arm="control") == 1


def test_seconds_per_stage_exist_at_zero_and_follow_the_workers_running_totals(metrics):
    samples = scrape(metrics.registry)
    for stage in STAGES:
        assert value(samples, "streamrec_stage_seconds_total", stage=stage) == 0
    metrics.record_stages({"decode": 0.5, "test_learn": 2.0})
    metrics.record_stages({"decode": 0.75, "test_learn": 2.0, "commit": 0.25})
    samples = scrape(metrics.registry)
    assert value(samples, "streamrec_stage_seconds_total", stage="decode") == 0.75
    assert value(samples, "streamrec_stage_seconds_total", stage="test_learn") == 2.0
    assert value(samples, "streamrec_stage_seconds_total", stage="commit") == 0.25
    metrics.record_stages({"decode": 0.1})  # a restarted worker: its totals start again
    metrics.record_stages({"decode": 0.3})
    assert value(scrape(metrics.registry), "streamrec_stage_seconds_total", stage="decode") == 0.95


def test_every_name_has_the_prefix_and_counters_end_in_total(metrics):
    families = list(text_string_to_metric_families(generate_latest(metrics.registry).decode()))
    assert families
    for family in families:
        assert family.name.startswith("streamrec_"), family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name


def test_build_info_names_version_and_model():
    metrics = ServiceMetrics(models=("bpr", "recent_popular"), registry=CollectorRegistry())
    samples = scrape(metrics.registry)
    assert value(samples, "streamrec_build_info", version=__version__, model="bpr") == 1


def test_batch_counts_events_and_observes_size_and_time(metrics):
    metrics.record_batch(consumed=100, learned=97, seconds=0.02)
    metrics.record_batch(consumed=50, learned=50, seconds=0.01)
    samples = scrape(metrics.registry)
    assert value(samples, "streamrec_events_consumed_total") == 150
    assert value(samples, "streamrec_events_learned_total") == 147
    assert value(samples, "streamrec_batch_events_count") == 2
    assert value(samples, "streamrec_batch_events_sum") == 150
    assert value(samples, "streamrec_batch_processing_seconds_sum") == pytest.approx(0.03)
    assert value(samples, "streamrec_batch_processing_seconds_bucket", le="0.01") == 1


def test_dead_letters_are_counted_per_reason(metrics):
    metrics.record_dead_letters(["not_json", "bad_value", "not_json", "decode_error"])
    samples = scrape(metrics.registry)
    got = {r: value(samples, "streamrec_events_dead_lettered_total", reason=r) for r in DEAD_LETTER_REASONS}
    assert got == {
        r: {"not_json": 2, "bad_value": 1, "decode_error": 1}.get(r, 0) for r in DEAD_LETTER_REASONS
    }


def test_published_counts_lists(metrics):
    metrics.record_published(12)
    metrics.record_published(3)
    assert value(scrape(metrics.registry), "streamrec_recommendations_published_total") == 15


def test_quality_counters_add_up_batches_per_model(metrics):
    metrics.record_quality(
        "streamrec", BatchQuality(events=10, evaluated=8, hits=3, ndcg_sum=1.5, rr_sum=2.0)
    )
    metrics.record_quality("streamrec", BatchQuality(events=5, evaluated=5, hits=1, ndcg_sum=0.5, rr_sum=0.7))
    metrics.record_quality(
        "recent_popular", BatchQuality(events=15, evaluated=13, hits=2, ndcg_sum=0.9, rr_sum=1.0), SHADOW_ARM
    )
    samples = scrape(metrics.registry)
    q = {
        (name, model): value(samples, f"streamrec_quality_{name}_total", model=model, arm=arm)
        for name in ("evaluated", "cold", "hits", "ndcg", "reciprocal_rank")
        for model, arm in (("streamrec", "control"), ("recent_popular", SHADOW_ARM))
    }
    assert q[("evaluated", "streamrec")] == 13 and q[("cold", "streamrec")] == 2
    assert q[("hits", "streamrec")] == 4 and q[("hits", "recent_popular")] == 2
    assert q[("ndcg", "streamrec")] == pytest.approx(2.0)
    assert q[("reciprocal_rank", "streamrec")] == pytest.approx(2.7)
    assert q[("cold", "recent_popular")] == 2


def test_online_hits_and_their_watch_time_per_arm():
    arms = (("control", "streamrec", 0.5), ("treatment", "most_popular", 0.5))
    metrics = ServiceMetrics(registry=CollectorRegistry(), arms=arms)
    metrics.record_online_hits(shown=40, hits=7, shown_watch=4000.0, hit_watch=900.0)
    metrics.record_online_hits(shown=30, hits=2, arm="treatment")
    metrics.record_online_hits(shown=10, hits=1, arm="treatment", shown_watch=50.0, hit_watch=5.0)
    samples = scrape(metrics.registry)
    got = {
        (name, arm): value(samples, f"streamrec_online_{name}_total", arm=arm)
        for name in ("shown_events", "hit_events", "shown_watch_seconds", "hit_watch_seconds")
        for arm in ("control", "treatment")
    }
    assert got == {
        ("shown_events", "control"): 40,
        ("hit_events", "control"): 7,
        ("shown_watch_seconds", "control"): 4000,
        ("hit_watch_seconds", "control"): 900,
        ("shown_events", "treatment"): 40,
        ("hit_events", "treatment"): 3,
        ("shown_watch_seconds", "treatment"): 50,
        ("hit_watch_seconds", "treatment"): 5,
    }
    for arm, model, share in arms:
        assert value(samples, "streamrec_experiment_arm_share_ratio", arm=arm, model=model) == share
        assert value(samples, "streamrec_experiment_arm_healthy", arm=arm) == 1


def test_the_experiments_totals_are_gauges_set_from_the_services_tallies():
    """Totals since the experiment began, which a restart restores (counters would restart at 0)."""
    metrics = ServiceMetrics(registry=CollectorRegistry(), arms=(("control", "streamrec", 1.0),))
    assert value(scrape(metrics.registry), "streamrec_experiment_viewers", arm="control") == 0
    metrics.record_online("control", (4, 1, 40.0, 10.0, 6, 1, 2, 2), (104, 21, 1040.0, 210.0, 600, 50, 90, 9))
    samples = scrape(metrics.registry)
    got = [value(samples, f"streamrec_experiment_{name}", arm="control") for name in EXPERIMENT_TOTALS]
    assert got == [104, 21, 1040, 210, 600, 50, 90, 9]
    assert value(samples, "streamrec_online_shown_events_total", arm="control") == 4  # the batch


def test_fallbacks_count_lists_per_arm_and_reason_and_mark_a_failed_arm():
    arms = (("control", "streamrec", 0.5), ("treatment", "isgd", 0.5))
    metrics = ServiceMetrics(registry=CollectorRegistry(), arms=arms)
    metrics.record_fallback("treatment", "guard", 3, healthy=True)
    metrics.record_fallback("treatment", "exception", 5, healthy=False)
    samples = scrape(metrics.registry)
    fallbacks = "streamrec_experiment_fallback_lists_total"
    assert value(samples, fallbacks, arm="treatment", reason="guard") == 3
    assert value(samples, fallbacks, arm="treatment", reason="exception") == 5
    assert value(samples, fallbacks, arm="control", reason="exception") == 0
    assert value(samples, "streamrec_experiment_arm_healthy", arm="treatment") == 0
    assert value(samples, "streamrec_experiment_arm_healthy", arm="control") == 1


def test_freshness_histogram_bins_a_whole_batch_like_prometheus(metrics):
    rng = np.random.default_rng(0)
    seconds = np.concatenate([rng.exponential(0.05, 500), [-0.01, 0.001, 120.0]])
    metrics.record_freshness(seconds)
    samples = scrape(metrics.registry)
    clipped = np.maximum(seconds, 0)
    for le in FRESHNESS_BUCKETS:
        want = int((clipped <= le).sum())
        assert value(samples, "streamrec_freshness_seconds_bucket", le=str(float(le))) == want, le
    assert value(samples, "streamrec_freshness_seconds_bucket", le="+Inf") == seconds.size
    assert value(samples, "streamrec_freshness_seconds_count") == seconds.size
    assert value(samples, "streamrec_freshness_seconds_sum") == pytest.approx(clipped.sum())


def test_coverage_and_popularity_bias_over_the_recent_window():
    metrics = ServiceMetrics(registry=CollectorRegistry(), coverage_window=40)
    # Two lists of 10 over videos 0..19 out of 100, then -1 padding which must not count.
    rows = np.arange(20).reshape(2, 10)
    metrics.record_recommended("streamrec", rows, np.full(rows.shape, 0.9), catalogue=100)
    samples = scrape(metrics.registry)
    assert value(samples, "streamrec_coverage_ratio", model="streamrec", arm="control") == pytest.approx(0.20)
    assert value(
        samples, "streamrec_popularity_bias_ratio", model="streamrec", arm="control"
    ) == pytest.approx(0.9)
    padded = np.array([[0, 1, -1, -1]])
    metrics.record_recommended("streamrec", padded, np.array([[0.1, 0.1, np.nan, np.nan]]), catalogue=100)
    samples = scrape(metrics.registry)
    assert value(samples, "streamrec_coverage_ratio", model="streamrec", arm="control") == pytest.approx(0.20)
    assert value(
        samples, "streamrec_popularity_bias_ratio", model="streamrec", arm="control"
    ) == pytest.approx((20 * 0.9 + 2 * 0.1) / 22)
    # 50 more slots of one video push the older ones out of the 40-slot window.
    for _ in range(5):
        metrics.record_recommended("streamrec", np.full((1, 10), 7), np.full((1, 10), 0.5), catalogue=100)
    samples = scrape(metrics.registry)
    assert value(samples, "streamrec_coverage_ratio", model="streamrec", arm="control") == pytest.approx(0.01)
    assert value(
        samples, "streamrec_popularity_bias_ratio", model="streamrec", arm="control"
    ) == pytest.approx(0.5)
    # The baseline published nothing: no coverage series for it rather than a false 0.
    assert not any(
        key[0] == "streamrec_coverage_ratio" and ("model", "recent_popular") in key[1] for key in samples
    )


def test_coverage_counts_the_distinct_videos_of_exactly_the_slots_in_its_window():
    """Batches of repeated videos come and go; coverage is always the distinct videos of the
    batches still in the window (the newest ones that fit in its size, at least one), counted
    afresh."""
    rng = np.random.default_rng(3)
    metrics = ServiceMetrics(registry=CollectorRegistry(), coverage_window=300)
    batches = []
    for _ in range(60):
        rows = rng.integers(0, 500, (int(rng.integers(1, 12)), 10)) ** 2 % 500  # skewed, repeats
        rows[rng.random(rows.shape) < 0.1] = -1
        metrics.record_recommended("streamrec", rows, None, catalogue=500)
        batches.append(rows[rows >= 0])
        kept, slots = [], 0
        for batch in reversed(batches):  # the newest first, while they fit
            if kept and slots + batch.size > 300:
                break
            kept.append(batch)
            slots += batch.size
        samples = scrape(metrics.registry)
        coverage = value(samples, "streamrec_coverage_ratio", model="streamrec", arm="control")
        assert coverage == pytest.approx(np.unique(np.concatenate(kept)).size / 500)


def test_coverage_without_popularity_leaves_bias_unset(metrics):
    metrics.record_recommended("streamrec", np.array([[0, 1, 2, -1]]), None, catalogue=6)
    samples = scrape(metrics.registry)
    assert value(samples, "streamrec_coverage_ratio", model="streamrec", arm="control") == pytest.approx(0.5)
    assert not any(key[0] == "streamrec_popularity_bias_ratio" for key in samples)


def test_popularity_percentiles_rank_videos_by_watch_count():
    counts = np.array([50, 0, 3, 3, 7, 1000])
    pct = popularity_percentiles(counts, np.array([[5, 0, 4], [2, 3, 1]]))
    assert pct[0, 0] > pct[0, 1] > pct[0, 2] > pct[1, 0] > pct[1, 2]
    assert pct[1, 0] == pct[1, 1]  # equal counts, equal percentile
    assert ((pct > 0) & (pct < 1)).all()


def test_lag_is_per_partition(metrics):
    metrics.set_lag(0, 120)
    metrics.set_lag(1, 0)
    samples = scrape(metrics.registry)
    assert value(samples, "streamrec_consumer_lag_messages", partition="0") == 120
    assert value(samples, "streamrec_consumer_lag_messages", partition="1") == 0


def test_model_stats_and_missing_loss(metrics):
    metrics.set_model_stats(events=5000, viewers=300, videos=900, memory_bytes=1 << 20, loss=0.42)
    samples = scrape(metrics.registry)
    assert value(samples, "streamrec_model_events") == 5000
    assert value(samples, "streamrec_model_viewers") == 300
    assert value(samples, "streamrec_model_videos") == 900
    assert value(samples, "streamrec_model_memory_bytes") == 1 << 20
    assert value(samples, "streamrec_model_loss") == pytest.approx(0.42)
    metrics.set_model_stats(events=5001, viewers=300, videos=900, memory_bytes=1 << 20, loss=None)
    assert value(scrape(metrics.registry), "streamrec_model_loss") == pytest.approx(0.42)  # left alone


def test_loss_is_nan_until_known(metrics):
    metrics.set_model_stats(events=1, viewers=1, videos=1, memory_bytes=1, loss=None)
    assert np.isnan(value(scrape(metrics.registry), "streamrec_model_loss"))


def test_loss_from_running_totals_is_a_moving_average_of_batch_means():
    metrics = ServiceMetrics(registry=CollectorRegistry(), loss_half_life=1000)
    metrics.record_loss_total(loss_sum=500.0, updates=100)  # batch mean 5.0
    assert value(scrape(metrics.registry), "streamrec_model_loss") == pytest.approx(5.0)
    metrics.record_loss_total(loss_sum=500.0 + 1000 * 3.0, updates=1100)  # 1000 updates at 3.0: half-way
    assert value(scrape(metrics.registry), "streamrec_model_loss") == pytest.approx(4.0)
    metrics.record_loss_total(loss_sum=3500.0, updates=1100)  # no new updates: unchanged
    metrics.record_loss_total(loss_sum=20.0, updates=10)  # a restored, smaller model: no jump
    assert value(scrape(metrics.registry), "streamrec_model_loss") == pytest.approx(4.0)
    metrics.record_loss_total(loss_sum=20.0 + 1000 * 2.0, updates=1010)
    assert value(scrape(metrics.registry), "streamrec_model_loss") == pytest.approx(3.0)


def test_a_model_without_a_loss_leaves_the_loss_gauge_nan(metrics):
    """Every model reports a loss total; one that has no loss reports 0 for ever."""
    metrics.record_loss_total(loss_sum=0.0, updates=100)
    metrics.record_loss_total(loss_sum=0.0, updates=250)
    assert np.isnan(value(scrape(metrics.registry), "streamrec_model_loss"))
    metrics.record_loss_total(loss_sum=30.0, updates=260)  # a first loss: 3.0 over 10 updates
    assert value(scrape(metrics.registry), "streamrec_model_loss") == pytest.approx(3.0)


def test_checkpoints(metrics):
    assert value(scrape(metrics.registry), "streamrec_checkpoint_last_success_timestamp_seconds") == 0
    before = time.time()
    metrics.record_checkpoint(seconds=0.3, size_bytes=4096, ok=True)
    metrics.record_checkpoint(seconds=0.1, size_bytes=0, ok=False)
    samples = scrape(metrics.registry)
    assert value(samples, "streamrec_checkpoints_total", result="ok") == 1
    assert value(samples, "streamrec_checkpoints_total", result="failed") == 1
    assert value(samples, "streamrec_checkpoint_size_bytes") == 4096
    assert value(samples, "streamrec_checkpoint_duration_seconds_count") == 1
    assert before <= value(samples, "streamrec_checkpoint_last_success_timestamp_seconds") <= time.time()


def test_guard_trips_follow_the_models_total_and_survive_a_reset(metrics):
    metrics.record_guard_trips(3)
    metrics.record_guard_trips(5)
    metrics.record_guard_trips(0)  # a fresh model: the counter stays, the next trips add to it
    metrics.record_guard_trips(2)
    assert value(scrape(metrics.registry), "streamrec_model_guard_trips_total") == 7


def test_http_server_serves_the_registry(metrics):
    metrics.record_published(4)
    server, port = start_http_server(0, addr="127.0.0.1", registry=metrics.registry)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body = response.read().decode()
    finally:
        server.shutdown()
    assert "streamrec_recommendations_published_total 4.0" in body


def test_a_model_not_named_up_front_still_gets_its_series():
    metrics = ServiceMetrics(models=(), registry=CollectorRegistry())
    metrics.record_quality("ab_arm", BatchQuality(events=4, evaluated=4, hits=1, ndcg_sum=0.5, rr_sum=0.5))
    metrics.record_recommended("ab_arm", np.array([[3, 4]]), np.array([[0.2, 0.4]]), catalogue=8)
    samples = scrape(metrics.registry)
    assert value(samples, "streamrec_quality_hits_total", model="ab_arm", arm="control") == 1
    assert value(samples, "streamrec_coverage_ratio", model="ab_arm", arm="control") == pytest.approx(0.25)
    assert value(samples, "streamrec_popularity_bias_ratio", model="ab_arm", arm="control") == pytest.approx(
        0.3
    )


# -- the service records a poll's batches at once ------------------------------------------------


def _served(batches, per_poll: int, coverage_window: int = 10_000):
    """A service answering ``batches`` of consumer records, its metrics recorded ``per_poll``
    batches at a time as ``process`` records a poll's; the service and every batch's Measured."""
    service = build_service(ServiceConfig(checkpoint_dir="none", metrics_port=0), with_metrics=False)
    service.metrics = ServiceMetrics(
        models=service.model_names,
        registry=CollectorRegistry(),
        arms=service.arm_labels,
        coverage_window=coverage_window,
    )
    measured, poll = [], []
    for records in batches:
        answer = service.answer(records)
        poll.append(Measured(len(records), answer.intake, answer.tested, answer.recommended, 0.01))
        if len(poll) == per_poll:
            service._record(poll)
            measured += poll
            poll = []
    service._record(poll)
    return service, measured + poll


def _batches_of_records(events: int = 2048, size: int = 128) -> list[list]:
    values = [event_to_json(e) for e in synth_events(viewers=300, videos=400, events=events, seed=5)]
    values[100], values[900] = b"oops", b'{"viewer": "a"}'  # two dead letters
    records = [
        ConsumerRecord("t", 0, 0, i, 1_000, 0, b"k", v, [], None, 1, len(v), -1) for i, v in enumerate(values)
    ]
    return [records[i : i + size] for i in range(0, len(records), size)]


def test_a_poll_recorded_at_once_adds_up_to_its_batches_recorded_one_by_one():
    batches = _batches_of_records()
    one_by_one, _ = _served(batches, per_poll=1)
    at_once, _ = _served(batches, per_poll=8)
    each, polls = scrape(one_by_one.metrics.registry), scrape(at_once.metrics.registry)
    additive = (
        "streamrec_events_consumed_total",
        "streamrec_events_learned_total",
        "streamrec_events_dead_lettered_total",
        "streamrec_quality_",  # evaluated, cold, hits, ndcg, reciprocal rank: each model
        "streamrec_online_",  # shown, hits and their watch seconds
        "streamrec_experiment_",  # the running per-viewer sums of the readout
        "streamrec_batch_events_count",
        "streamrec_batch_events_sum",
        "streamrec_batch_processing_seconds_count",
        "streamrec_freshness_seconds_count",
    )
    compared = [key for key in each if key[0].startswith(additive) and not key[0].endswith("_created")]
    assert len(compared) >= 30
    for key in compared:
        assert polls[key] == pytest.approx(each[key], rel=1e-12), key
    assert value(polls, "streamrec_batch_events_count") == len(batches)  # each batch, in its histogram
    assert value(polls, "streamrec_events_dead_lettered_total", reason="missing_field") == 1
    assert value(polls, "streamrec_online_hit_events_total", arm="control") > 0
    bias = ("streamrec_popularity_bias_ratio", (("arm", "control"), ("model", "streamrec")))
    assert polls[bias] == pytest.approx(
        each[bias], abs=0.02
    )  # the counts of the poll's end, not each batch's


def test_coverage_of_a_poll_larger_than_the_window_is_over_its_newest_slots():
    at_once, measured = _served(_batches_of_records(), per_poll=16, coverage_window=700)
    rows = np.concatenate([m.tested.arms["control"][0].top.ravel() for m in measured])
    newest = rows[rows >= 0][-700:]
    catalogue = measured[-1].tested.arms["control"][0].catalogue
    samples = scrape(at_once.metrics.registry)
    coverage = value(samples, "streamrec_coverage_ratio", model="streamrec", arm="control")
    assert coverage == pytest.approx(np.unique(newest).size / catalogue)
