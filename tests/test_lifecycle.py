"""Expirable ids, row reuse, the frequency filter and bounded per-id bookkeeping (known answers)."""

from __future__ import annotations

import numpy as np
import pytest

from contract.events import WatchEvent
from model.baselines.popular import MostPopular
from model.evaluate import StreamingEvaluator, evaluate
from model.expiring import ExpiringDict, RecentIds
from model.frequency import FrequencyFilter
from model.history import RecentHistory
from model.ids import IdIndex
from model.lifecycle import EventClock, Lifecycle
from model.seen import SeenVideos

# -- IdIndex: release and reuse -------------------------------------------------------------


def test_ids_without_releases_keep_arrival_order():
    ids = IdIndex()
    assert ids.add_many(["a", "b", "a", "c"]).tolist() == [0, 1, 0, 2]
    assert (len(ids), ids.live, ids.free_rows) == (3, 3, [])
    assert ids.live_mask().all()


def test_released_rows_are_reused_before_the_table_grows():
    ids = IdIndex()
    ids.add_many(["a", "b", "c", "d"])
    assert ids.remove_rows([1, 3]).tolist() == [1, 3]
    assert ids.get("b") is None and "d" not in ids and ids.get("c") == 2
    assert ids.live_mask().tolist() == [True, False, True, False]
    # The last released row first, then the other, then the table grows.
    assert ids.add_many(["e", "f", "g"]).tolist() == [3, 1, 4]
    assert [ids.id_of(r) for r in range(5)] == ["a", "f", "c", "e", "g"]
    assert (len(ids), ids.live) == (5, 5)


def test_releasing_a_free_or_unknown_row_does_nothing():
    ids = IdIndex()
    ids.add_many(["a", "b"])
    assert ids.remove("b") == 1 and ids.remove("b") is None
    assert ids.remove_rows([1, 7, -1]).tolist() == []
    assert ids.free_rows == [1]


@pytest.mark.parametrize("released", [[], [0], [2, 0], [0, 1, 2]])
def test_next_rows_predicts_add_many(released):
    ids = IdIndex()
    ids.add_many(["a", "b", "c"])
    ids.remove_rows(released)
    batch = ["x", "a", "y", "x", "c", "z", "w"]
    predicted = ids.next_rows(batch)
    assert (len(ids), ids.live) == (3, 3 - len(released))  # nothing created
    assert ids.add_many(batch).tolist() == predicted.tolist()


def test_ids_with_released_rows_round_trip_through_arrays():
    ids = IdIndex()
    ids.add_many(["a", "b", "c"])
    ids.remove_rows([0, 2])
    back = IdIndex()
    back.load_arrays(ids.to_arrays())
    assert (back.get("b"), back.get("a"), back.free_rows, len(back)) == (1, None, [0, 2], 3)
    assert back.add("n") == ids.add("n") == 2


@pytest.mark.parametrize(
    "ids, free, message",
    [
        (["a", "a"], [], "duplicate"),
        (["a"], [5], "free rows"),
        (["a", ""], [1, 1], "free rows"),
        ([1, 2], [], "unicode"),
    ],
)
def test_ids_from_corrupt_arrays_fail_clearly(ids, free, message):
    with pytest.raises(ValueError, match=message):
        IdIndex().load_arrays({"ids": np.array(ids), "free": np.array(free, dtype=np.int64)})


# -- Lifecycle: event-time expiry ------------------------------------------------------------


def _observe(life, viewers, videos, triples, batch=1):
    """Learn ``(viewer, video, timestamp)`` triples, in batches of ``batch``."""
    for k in range(0, len(triples), batch):
        chunk = triples[k : k + batch]
        v = viewers.add_many([p[0] for p in chunk])
        i = videos.add_many([p[1] for p in chunk])
        life.observe(v, i, np.array([p[2] for p in chunk], dtype=np.float64))


def test_ids_expire_after_their_ttl_of_event_time():
    viewers, videos = IdIndex(), IdIndex()
    life = Lifecycle(viewer_ttl=100.0, video_ttl=50.0, every=1, tolerate=0)
    _observe(life, viewers, videos, [("a", "x", 1000.0), ("b", "y", 1060.0)])
    _observe(life, viewers, videos, [("b", "z", 1100.0)])
    old_viewers, old_videos = life.expired(viewers.live_mask(), videos.live_mask())
    # now = 1100: viewer "a" (1000) is exactly 100 old: kept; video "x" is 100 > 50 old, "y" 40.
    assert old_viewers.tolist() == [] and old_videos.tolist() == [0]
    _observe(life, viewers, videos, [("b", "z", 1111.0)])
    old_viewers, old_videos = life.expired(viewers.live_mask(), videos.live_mask())
    assert old_viewers.tolist() == [0] and old_videos.tolist() == [0, 1]


def test_a_few_timestamps_from_the_far_future_expire_nobody():
    viewers, videos = IdIndex(), IdIndex()
    life = Lifecycle(viewer_ttl=100.0, video_ttl=100.0, every=1, tolerate=3)
    _observe(life, viewers, videos, [(f"v{t}", f"x{t % 5}", float(t)) for t in range(50)])
    hostile = [("h1", "x0", 4.1e9), ("h2", "x1", 4.1e9), ("v3", "x2", 4.0e9)]
    _observe(life, viewers, videos, hostile, batch=3)
    assert life.now == 49.0
    assert [r.size for r in life.expired(viewers.live_mask(), videos.live_mask())] == [0, 0]
    # They were seen at the clock's time, not in 2096: they expire like everyone else.
    _observe(life, viewers, videos, [(f"w{t}", "x4", 200.0 + t) for t in range(10)])
    old_viewers, _ = life.expired(viewers.live_mask(), videos.live_mask())
    assert {viewers.id_of(r) for r in old_viewers.tolist()} >= {"h1", "h2", "v3"}


def test_event_clock_lags_by_the_outliers_it_tolerates():
    clock = EventClock(window=8, tolerate=2)
    assert clock.advance(np.array([])) == -np.inf
    assert clock.advance(np.array([2.0, 1.0])) == 1.0  # too few to tell outliers: the smallest
    assert clock.advance(np.array([3.0, np.nan, 4.0])) == 2.0
    assert clock.advance(np.arange(5.0, 20.0)) == 17.0  # only the last 8 count
    back = EventClock(window=8, tolerate=2)
    back.load_array(clock.to_array())
    assert back.advance(np.array([30.0])) == clock.advance(np.array([30.0])) == 18.0


def test_the_clock_never_goes_back_and_late_events_are_seen_now():
    viewers, videos = IdIndex(), IdIndex()
    life = Lifecycle(viewer_ttl=10.0, every=1, tolerate=0)
    _observe(life, viewers, videos, [("a", "x", 50.0), ("b", "x", 30.0)], batch=2)
    # Far in the past (an old replay): learned now, not expired on arrival.
    _observe(life, viewers, videos, [("c", "x", 5.0)])
    assert life.now == 50.0 and life.viewers.array.tolist() == [50.0, 50.0, 50.0]
    assert life.expired(viewers.live_mask(), videos.live_mask())[0].tolist() == []
    _observe(life, viewers, videos, [("a", "x", 65.0)])
    assert life.expired(viewers.live_mask(), videos.live_mask())[0].tolist() == [1, 2]


def test_expiry_runs_every_n_events_and_never_without_a_ttl():
    viewers, videos = IdIndex(), IdIndex()
    life = Lifecycle(video_ttl=1.0, every=3)
    _observe(life, viewers, videos, [("a", "x", 0.0), ("a", "y", 1.0)])
    assert not life.due()
    _observe(life, viewers, videos, [("a", "z", 2.0)])
    assert life.due()
    life.expired(viewers.live_mask(), videos.live_mask())
    assert not life.due()
    off = Lifecycle(every=1)
    _observe(off, IdIndex(), IdIndex(), [("a", "x", 0.0)])
    assert not off.due()


def test_released_rows_are_not_expired_twice_and_restart_unseen():
    viewers, videos = IdIndex(), IdIndex()
    life = Lifecycle(viewer_ttl=1.0, every=1, tolerate=0)
    _observe(life, viewers, videos, [("a", "x", 0.0), ("b", "x", 10.0)])
    old, _ = life.expired(viewers.live_mask(), videos.live_mask())
    life.forget(viewers.remove_rows(old), np.zeros(0, dtype=np.int64))
    assert old.tolist() == [0] and life.expired_viewers == 1
    assert life.expired(viewers.live_mask(), videos.live_mask())[0].tolist() == []
    assert life.viewers.array[0] == -np.inf


def test_lifecycle_state_round_trips():
    viewers, videos = IdIndex(), IdIndex()
    life = Lifecycle(viewer_ttl=5.0, every=2, tolerate=0)
    _observe(life, viewers, videos, [("a", "x", 3.0), ("b", "y", 9.0)])
    back = Lifecycle(viewer_ttl=5.0, every=2, tolerate=0)
    back.load_arrays(life.to_arrays())
    assert (back.now, back.since) == (9.0, 2)
    assert back.expired(viewers.live_mask(), videos.live_mask())[0].tolist() == [0]
    back.check_rows(2, 2)
    with pytest.raises(ValueError, match="last-seen times for 2 viewer rows"):
        back.check_rows(1, 2)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("counters", np.array([1, -1, 0]), "counters"),
        ("viewer_last_seen", np.array([np.nan, 3.0]), "non-finite"),
        ("video_last_seen", np.array([1, 2]), "float64"),
        ("clock", np.zeros(5), "event clock"),
    ],
)
def test_lifecycle_refuses_malformed_arrays(key, value, message):
    viewers, videos = IdIndex(), IdIndex()
    life = Lifecycle(viewer_ttl=5.0)
    _observe(life, viewers, videos, [("a", "x", 3.0), ("b", "y", 9.0)])
    with pytest.raises(ValueError, match=message):
        Lifecycle(viewer_ttl=5.0).load_arrays(life.to_arrays() | {key: value})


def test_bad_ttls_are_refused():
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="viewer_ttl"):
            Lifecycle(viewer_ttl=bad)


# -- FrequencyFilter ------------------------------------------------------------------------


def test_an_id_enters_on_its_kth_event_across_batches():
    f = FrequencyFilter(min_count=3)
    none = np.zeros(2, dtype=bool)
    assert f.admit(["a", "b"], none).tolist() == [False, False]
    assert f.admit(["a", "a"], none).tolist() == [False, True]
    assert f.admit(["b", "b"], none).tolist() == [False, True]
    assert f.count(["a", "b"]).tolist() == [3, 3]


def test_known_ids_are_admitted_without_being_counted():
    f = FrequencyFilter(min_count=2)
    assert f.admit(["a", "a", "a"], np.ones(3, dtype=bool)).all()
    assert f.count(["a"]).tolist() == [0]


def test_counts_are_exact_for_many_distinct_ids():
    f = FrequencyFilter(min_count=5, decay_every=1 << 30)
    ids = [f"viewer-{i}" for i in range(20_000)]
    f.admit(ids, np.zeros(len(ids), dtype=bool))
    f.admit(ids[:100], np.zeros(100, dtype=bool))
    counts = f.count(ids)
    assert counts[:100].tolist() == [2] * 100
    assert (counts[100:] == 1).all()
    assert f.nbytes() == 4 * (1 << 18)  # fixed, whatever the number of ids


def test_counts_halve_every_decay_period():
    f = FrequencyFilter(min_count=200, decay_every=10)
    f.admit(["a"] * 9, np.zeros(9, dtype=bool))
    assert f.count(["a"]).tolist() == [9]
    f.admit(["b"], np.zeros(1, dtype=bool))  # the 10th counted event: halve
    assert f.count(["a", "b"]).tolist() == [4, 0]


def test_min_count_one_admits_everything():
    f = FrequencyFilter(min_count=1)
    assert f.admit(["a", "b"], np.zeros(2, dtype=bool)).all()
    assert f.count(["a"]).tolist() == [0]


def test_filter_state_round_trips():
    f = FrequencyFilter(min_count=2)
    f.admit(["a"], np.zeros(1, dtype=bool))
    back = FrequencyFilter(min_count=2)
    back.load_arrays(f.to_arrays())
    assert back.admit(["a"], np.zeros(1, dtype=bool)).tolist() == [True]
    with pytest.raises(ValueError, match="sketch"):
        FrequencyFilter(min_count=2, width=1 << 10).load_arrays(f.to_arrays())


# -- Purging released videos from other viewers' state --------------------------------------


def test_released_videos_leave_seen_lists_and_histories():
    seen = SeenVideos()
    for v, i in [(0, 3), (0, 5), (1, 5), (2, 4)]:
        seen.add(v, i)
    assert seen.discard_videos(np.array([5, 9])) == 2
    assert (seen.of(0), seen.of(1), seen.of(2)) == ([3], [], [4])
    seen.clear_rows([2])
    assert seen.of(2) == []

    hist = RecentHistory(length=2)
    hist.ensure(2)
    hist.store(np.array([0, 1]), np.array([[5, 3], [4, 5]]), np.ones((2, 2), dtype=np.float32))
    hist.discard_videos(np.array([5]))
    assert hist.items.array.tolist() == [[-1, 3], [4, -1]]
    assert hist.weights.array.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    hist.clear(np.array([1]))
    assert hist.items.array[1].tolist() == [-1, -1]


# -- ExpiringDict ---------------------------------------------------------------------------


def test_expiring_dict_drops_keys_older_than_ttl():
    d = ExpiringDict(ttl=10.0)
    d.touch("a", 1, now=0.0)
    d.touch("b", 2, now=4.0)
    d.touch("a", 3, now=9.0)  # touched again: young
    d.touch("c", 4, now=14.5)  # cutoff 4.5: "b" goes
    assert list(d.keys()) == ["a", "c"] and d.get("a") == 3 and d.evicted == 1
    d.touch("c", 5)  # no time: as of the newest time seen
    d.touch("d", 6, now=30.0)
    assert list(d.keys()) == ["d"]


def test_expiring_dict_as_an_lru_of_bounded_size():
    d = ExpiringDict(max_size=3)
    for i in range(10_000):
        d.touch(f"k{i}", i, now=float(i))
        d.touch("hot", i, now=float(i))
    assert len(d) == 3 and "hot" in d and d.get("k9999") == 9999
    assert d.evicted == 10_001 - 3


def test_expiring_dict_without_bounds_is_a_dict():
    d = ExpiringDict()
    for i in range(1000):
        d.touch(i, None, now=-float(i))
    assert len(d) == 1000 and d.evicted == 0


def test_touch_says_whether_the_key_was_seen_within_ttl():
    d = ExpiringDict(ttl=10.0)
    assert d.touch("a", now=0.0) is False
    assert d.touch("a", now=10.0) is True  # exactly ttl old: still fresh
    assert d.touch("a", now=20.5) is False  # 10.5 old
    d.touch("a", now=15.0)  # a late event does not make "a" look older
    assert d.touch("a", now=30.0) is True


# -- The evaluator's bounded bookkeeping -----------------------------------------------------


def _stream(n, new_every=1):
    """Viewers and videos that keep coming: event t is viewer t // 3 watching video t // 2."""
    return [WatchEvent(float(t), f"v{t // 3}", f"x{t // 2}") for t in range(0, n, new_every)]


def test_bounded_evaluator_equals_the_exact_one_when_nothing_is_old_enough():
    events = [WatchEvent(float(t), f"v{t % 7}", f"x{(t * 5) % 11}") for t in range(300)]
    exact = evaluate(MostPopular(), events, batch_size=16)
    model = MostPopular()
    bounded = StreamingEvaluator(model.name, batch_size=16, id_ttl=1e9, max_ids=1000)
    for i in range(0, len(events), 16):
        batch = events[i : i + 16]
        bounded.observe(batch, model.rank_events(batch))
        model.learn_many(batch)
    assert (bounded.report.evaluated, bounded.report.hits) == (exact.evaluated, exact.hits)
    assert bounded.report.coverage == pytest.approx(exact.coverage)


def test_bounded_evaluator_forgets_ids_under_endless_new_ones():
    model = MostPopular()
    ev = StreamingEvaluator(model.name, id_ttl=50.0)
    events = _stream(4_000)
    for i in range(0, len(events), 100):
        batch = events[i : i + 100]
        ev.observe(batch, model.rank_events(batch))
        model.learn_many(batch)
    # Only ids seen in the last 50 s of event time (plus a batch) are remembered: a few dozen
    # of the 1,334 viewers and 2,000 videos.
    assert len(ev._viewers) <= (50 + 100) // 3 + 2 and len(ev._videos) <= (50 + 100) // 2 + 2
    assert ev.report.events == 4_000 and 0.0 <= ev.report.coverage <= 1.0


def test_touch_many_answers_like_touch_one_by_one():
    rng = np.random.default_rng(0)
    one, many = ExpiringDict(ttl=30.0), ExpiringDict(ttl=30.0)
    for now in np.arange(0.0, 200.0, 10.0):
        keys = [f"k{k}" for k in rng.integers(0, 40, 25)]
        expected = [one.touch(k, None, now) for k in keys]
        assert many.touch_many(keys, now).tolist() == expected
        assert list(many.keys()) == list(one.keys())


@pytest.mark.parametrize("bounds", [{"ttl": 30.0}, {"max_size": 12}, {"ttl": 30.0, "max_size": 12}, {}])
def test_put_many_leaves_what_touch_one_by_one_leaves(bounds):
    # The service stores each batch's lists and per-viewer counts this way.
    rng = np.random.default_rng(1)
    one, many = ExpiringDict(**bounds), ExpiringDict(**bounds)
    for now in np.arange(0.0, 300.0, 10.0) + rng.choice([0.0, -25.0], 30):  # some batches late
        keys = [f"k{k}" for k in rng.integers(0, 40, 25)]
        values = rng.integers(0, 1000, 25).tolist()
        for k, v in zip(keys, values, strict=True):
            one.touch(k, v, float(now))
        many.put_many(keys, values, float(now))
        order = list(one.keys())
        assert list(many.keys()) == order
        assert [many.get(k) for k in order] == [one.get(k) for k in order]
        assert many.now == one.now


def test_recent_ids_answer_as_an_expiring_dict_bounded_by_age():
    # The service's evaluators keep the viewers and videos they saw in RecentIds.
    rng = np.random.default_rng(2)
    ordered, recent = ExpiringDict(ttl=40.0), RecentIds(ttl=40.0)
    for now in np.arange(0.0, 600.0, 7.0) + rng.choice([0.0, -30.0], 86, p=[0.8, 0.2]):  # late batches
        keys = [f"k{k}" for k in rng.integers(0, 60, int(rng.integers(1, 40)))]
        assert recent.touch_many(keys, float(now)).tolist() == ordered.touch_many(keys, float(now)).tolist()
        # ExpiringDict evicts in order of touch, so after a late batch it keeps some stale keys.
        fresh = sorted(k for k, (_, t) in ordered._data.items() if t >= ordered.now - ordered.ttl)
        assert sorted(recent.keys()) == fresh and all(k in recent for k in fresh)
        assert len(recent) >= len(fresh)
    assert not recent.touch_many([], now=1e6).size and len(recent) == 0 and recent.evicted >= 60
