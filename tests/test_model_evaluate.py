"""The evaluator's shortcuts give what the plain protocol gives: a follower evaluator (the
service's shadow baseline reads warm events from the served model's evaluator) reports exactly
what an evaluator of its own would."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.events import WatchEvent
from model.base import Ranking
from model.evaluate import StreamingEvaluator


def _stream(seed: int, events: int, ids: int):
    rng = np.random.default_rng(seed)
    # Times mostly forward, some late; a TTL of 50 forgets ids in the middle of the stream.
    times = np.cumsum(rng.exponential(1.0, events)) - rng.choice([0.0, 30.0], events, p=[0.9, 0.1])
    return [
        WatchEvent(float(t), f"u{v}", f"i{i}")
        for t, v, i in zip(times, rng.integers(0, ids, events), rng.integers(0, ids, events), strict=True)
    ]


def _ranking(rng: np.random.Generator, batch: int, n: int) -> Ranking:
    top = rng.integers(-1, 60, (batch, n))
    rank = np.where(rng.random(batch) < 0.2, np.iinfo(np.int64).max, rng.integers(0, 30, batch))
    return Ranking(top=top, rank=rank, catalogue=60)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([None, 50.0]),
    st.sampled_from([None, 7]),
    st.sampled_from([1, 5, 64]),
)
def test_a_follower_reports_what_an_evaluator_of_its_own_reports(seed, ttl, max_ids, batch):
    events = _stream(seed, 300, 25)
    rng = np.random.default_rng(seed + 1)
    leader = StreamingEvaluator("model", n=10, id_ttl=ttl, max_ids=max_ids)
    follower = StreamingEvaluator("shadow", n=10, id_ttl=ttl, max_ids=max_ids)
    follower.follow(leader)
    alone = StreamingEvaluator("shadow", n=10, id_ttl=ttl, max_ids=max_ids)
    for start in range(0, len(events), batch):
        chunk = events[start : start + batch]
        leader.observe(chunk, _ranking(rng, len(chunk), 10))
        ranking = _ranking(rng, len(chunk), 10)
        assert follower.observe(chunk, ranking) == alone.observe(chunk, ranking)
        assert follower.report.coverage == alone.report.coverage
    assert (follower.report.evaluated, follower.report.hits) == (alone.report.evaluated, alone.report.hits)
    assert follower.report.coverage == alone.report.coverage
    assert follower.report.window_hr == alone.report.window_hr


def test_a_follower_refuses_a_batch_its_leader_did_not_observe_first():
    leader, follower = StreamingEvaluator("a", id_ttl=10.0), StreamingEvaluator("b", id_ttl=10.0)
    follower.follow(leader)
    batch = [WatchEvent(0.0, "u", "i")]
    ranking = Ranking(top=np.full((1, 10), -1), rank=np.array([0]), catalogue=1)
    with pytest.raises(RuntimeError):
        follower.observe(batch, ranking)
    leader.observe(batch, ranking)
    follower.observe(batch, ranking)
    with pytest.raises(RuntimeError):
        follower.observe(batch, ranking)


def test_only_a_fresh_evaluator_with_the_same_bounds_follows():
    with pytest.raises(ValueError):
        StreamingEvaluator("b", id_ttl=5.0).follow(StreamingEvaluator("a", id_ttl=10.0))
    used = StreamingEvaluator("b")
    used.warm_mask([WatchEvent(0.0, "u", "i")])
    with pytest.raises(ValueError):
        used.follow(StreamingEvaluator("a"))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.lists(st.integers(0, 12), max_size=15), st.floats(-5.0, 40.0)), max_size=12),
    st.sampled_from([None, 8.0]),
)
def test_touching_the_recommended_rows_at_once_leaves_what_touching_each_leaves(batches, ttl):
    """The evaluator marks a batch's recommended rows with one ``touch_many`` where it called
    ``touch`` per row, when ids expire by age only (the service's): the rows kept, their order
    and their times are the same, on the evaluator's clock, which never goes back. (With a
    bound on their count, a row pushed out in the middle of a batch and touched again would lose
    a later time it had: touched one by one there.)"""
    from model.expiring import ExpiringDict

    each, once = ExpiringDict(ttl), ExpiringDict(ttl)
    clock = 0.0
    for rows, step in batches:
        clock = now = clock + abs(step)  # the evaluator's clock never goes back
        for row in rows:
            each.touch(row, None, now)
        if rows:
            once.touch_many(rows, now)
        assert list(each._data.items()) == list(once._data.items())
        assert len(each) == len(once)


@pytest.mark.parametrize("ttl", [None, 50.0])
def test_without_coverage_every_other_figure_is_the_same(ttl):
    # The service turns coverage off (it measures coverage on the lists it publishes).
    events = _stream(7, 400, 25)
    rng = np.random.default_rng(8)
    full = StreamingEvaluator("model", n=10, id_ttl=ttl)
    lean = StreamingEvaluator("model", n=10, id_ttl=ttl, coverage=False)
    for start in range(0, len(events), 32):
        chunk = events[start : start + 32]
        ranking = _ranking(rng, len(chunk), 10)
        assert lean.observe(chunk, ranking) == full.observe(chunk, ranking)
    assert full.report.coverage > 0 and np.isnan(lean.report.coverage)
    assert (lean.report.hits, lean.report.evaluated, lean.report.window_hr) == (
        full.report.hits,
        full.report.evaluated,
        full.report.window_hr,
    )
