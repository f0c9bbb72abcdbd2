"""The progressive evaluator, checked by hand on a tiny stream, and the tail figures built on it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from contract.events import WatchEvent
from model.baselines import CoOccurrenceKNN, MostPopular
from model.evaluate import evaluate
from streamrec.commands.evaluate import evaluate_model

# viewer, video; comments give what MostPopular knows before each event.
TINY = [
    ("a", "x"),  # cold: both new
    ("b", "x"),  # cold: b new
    ("b", "y"),  # cold: y new
    ("a", "y"),  # counts x2 y1, a watched x -> list [y]: rank 0
    ("c", "z"),  # cold
    ("a", "z"),  # counts x2 y2 z1, a watched x, y -> [z]: rank 0
    ("c", "x"),  # counts x2 y2 z2, c watched z -> x ties with y: pessimistic rank 1
    ("d", "y"),  # cold: d new
]
STREAM = [WatchEvent(float(t), v, i) for t, (v, i) in enumerate(TINY)]


def test_hand_computed_hr_ndcg_mrr():
    report = evaluate(MostPopular(), STREAM, n=10)
    assert (report.events, report.evaluated, report.hits) == (8, 3, 3)
    assert report.ndcg == pytest.approx((1 + 1 + 1 / math.log2(3)) / 3)
    assert report.mrr == pytest.approx((1 + 1 + 1 / 2) / 3)
    assert report.coverage == 1.0  # x, y and z were all recommended to someone
    assert report.to_json()["cold"] == 5


def test_a_tie_at_the_edge_of_the_list_is_a_miss():
    report = evaluate(MostPopular(), STREAM, n=1)
    assert (report.evaluated, report.hits) == (3, 2)
    assert report.ndcg == pytest.approx(2 / 3)
    # MRR is over the full ranking, not the list: unchanged.
    assert report.mrr == pytest.approx((1 + 1 + 1 / 2) / 3)


def test_a_batch_is_scored_with_the_state_before_it():
    # One batch of everything: the model knows nothing when scoring, so nothing can hit, but the
    # events whose viewer and video appeared earlier in the stream are still evaluated.
    report = evaluate(MostPopular(), STREAM, n=10, batch_size=len(STREAM))
    assert (report.evaluated, report.hits) == (3, 0)
    assert "batches of 8" in report.to_json()["protocol"]


class Diverged(MostPopular):
    """A model whose every score is NaN, as a diverged SGD run produces."""

    def _video_scores(self) -> np.ndarray:
        return np.full(len(self.videos), np.nan, dtype=np.float32)


def test_nan_scores_are_never_hits():
    report = evaluate(Diverged(), STREAM)
    assert report.evaluated == 3 and report.hits == 0 and report.mrr == 0.0


def synthetic_stream(events: int = 3000, seed: int = 0) -> list[WatchEvent]:
    rng = np.random.default_rng(seed)
    viewers = rng.integers(0, 80, events)
    videos = (viewers % 7) * 10 + rng.integers(0, 12, events)
    return [
        WatchEvent(float(t), f"u{v}", f"i{i}") for t, (v, i) in enumerate(zip(viewers, videos, strict=True))
    ]


@pytest.mark.parametrize("batch_size", [1, 64, 100])
def test_tail_figures_are_the_whole_minus_the_first_part(batch_size):
    events = synthetic_stream()
    out = evaluate_model(CoOccurrenceKNN(), events, batch_size=batch_size, tail=0.2)
    tail = out["tail"]
    start = tail["from_event"]
    # The tail starts on the first batch boundary at or after 80% of the stream.
    assert start % batch_size == 0 and 0.8 * len(events) <= start < 0.8 * len(events) + batch_size
    # Test-then-train is causal, so evaluating the prefix alone gives the counters at the cut.
    head = evaluate(CoOccurrenceKNN(), events[:start], batch_size=batch_size)
    assert tail["events"] == len(events) - start
    assert tail["evaluated"] == out["evaluated"] - head.evaluated
    whole_hits = out["hr_at_10"] * out["evaluated"]
    assert tail["hr_at_10"] * tail["evaluated"] == pytest.approx(whole_hits - head.hits)
    assert tail["ndcg_at_10"] * tail["evaluated"] == pytest.approx(
        out["ndcg_at_10"] * out["evaluated"] - head.ndcg_sum
    )


def test_no_tail_when_asked_for_none():
    out = evaluate_model(MostPopular(), STREAM, batch_size=2, tail=0.0)
    assert "tail" not in out and out["batch_size"] == 2


def test_progress_sees_every_batch_and_the_end():
    seen = []
    evaluate_model(
        MostPopular(), synthetic_stream(500), batch_size=64, progress=lambda r: seen.append(r.events)
    )
    assert seen[-1] == 500 and seen == sorted(seen) and len(seen) >= 500 // 64


class Measured(MostPopular):
    def memory_bytes(self) -> dict[str, int]:
        return {"per_viewer": 8, "per_video": 8 * len(self.videos), "total": 0}


def test_models_that_know_their_size_report_it():
    assert evaluate_model(Measured(), STREAM, batch_size=1)["memory_bytes"]["per_video"] == 8 * 3
    assert "memory_bytes" not in evaluate_model(MostPopular(), STREAM, batch_size=1)


def test_a_stream_shorter_than_a_batch_reports_no_tail():
    out = evaluate_model(MostPopular(), STREAM, batch_size=64, tail=0.2)
    assert "tail" not in out and out["events"] == len(STREAM)
