"""Baselines: the shared contract (checked on every one), then each one's own behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest

from contract.events import WatchEvent
from model.baselines import ISGD, CoOccurrenceKNN, FunkMFRanker, MostPopular, RecentPopular
from model.baselines.cooccurrence import CoCounts, TopCoCounts
from model.baselines.isgd import plain_test_then_train
from model.evaluate import evaluate
from model.registry import create, names
from model.topk import UNRANKED

BASELINES = [n for n in names() if n != "streamrec"]


def clustered_stream(viewers: int = 60, clusters: int = 4, per_cluster: int = 12, seed: int = 0):
    """Each viewer watches videos of one cluster, in random order; clusters equally popular.

    Popularity carries no signal here, co-occurrence carries all of it.
    """
    rng = np.random.default_rng(seed)
    events = []
    queues = {}
    for v in range(viewers):
        c = v % clusters
        queues[f"u{v}"] = [f"c{c}v{i}" for i in rng.permutation(per_cluster)[: per_cluster // 2 + 2]]
    t = 0
    while any(queues.values()):
        for viewer, queue in queues.items():
            if queue and rng.random() < 0.5:
                events.append(WatchEvent(float(t), viewer, queue.pop()))
                t += 1
    return events


@pytest.fixture(scope="module")
def stream():
    return clustered_stream()


# -- the contract, on every baseline -------------------------------------------------------------


@pytest.mark.parametrize("name", BASELINES)
def test_recommendations_exclude_watched_videos_and_fill_n(name, stream):
    model = create(name)
    model.learn_many(stream)
    watched = {}
    for e in stream:
        watched.setdefault(e.viewer, set()).add(e.video)
    catalogue = {e.video for e in stream}
    for viewer in ("u0", "u1", "u7"):
        rec = model.recommend(viewer, n=10)
        assert len(rec.videos) == min(10, len(catalogue - watched[viewer]))
        assert not set(rec.videos) & watched[viewer]
        assert len(set(rec.videos)) == len(rec.videos)
        assert np.all(np.diff(rec.scores) <= 0)
    # Without exclusion, watched videos may come back.
    assert len(model.recommend("u0", n=10, exclude_seen=False).videos) == 10


@pytest.mark.parametrize("name", BASELINES)
def test_unknown_viewer_gets_trending_and_creates_no_state(name, stream):
    model = create(name)
    model.learn_many(stream)
    viewers_before = len(model.viewers)
    rec = model.recommend("somebody-new", n=5)
    assert len(rec.videos) == 5
    model.predict_one("somebody-new", "c0v1")
    model.rank("somebody-new", {"c0v1", "c1v1"})
    model.rank_events([WatchEvent(1e9, "another-new", "c0v1")])
    assert len(model.viewers) == viewers_before
    assert model.viewers.get("somebody-new") is None
    if isinstance(model, FunkMFRanker):
        assert "somebody-new" not in model.funk.u_latents


@pytest.mark.parametrize("name", BASELINES)
def test_learning_in_batches_equals_learning_one_by_one(name, stream):
    batched, single = create(name), create(name)
    for start in range(0, len(stream), 37):
        batched.learn_many(stream[start : start + 37])
    for e in stream:
        single.learn_many([e])
    probe = [e.video for e in stream[:20]]
    for viewer in ("u0", "u5", "nobody"):
        np.testing.assert_allclose(batched.score_videos(viewer, probe), single.score_videos(viewer, probe))
        assert batched.recommend(viewer, n=5).videos == single.recommend(viewer, n=5).videos


@pytest.mark.parametrize("name", BASELINES)
def test_ranking_a_batch_uses_the_state_before_it(name, stream):
    """Ranking distinct viewers together or one at a time gives the same ranks."""
    model = create(name)
    model.learn_many(stream[:-40])
    batch, seen_viewers = [], set()
    for e in stream[-40:]:
        if e.viewer not in seen_viewers:
            seen_viewers.add(e.viewer)
            batch.append(e)
    together = model.rank_events(batch, n=10)
    for k, e in enumerate(batch):
        alone = model.rank_events([e], n=10)
        assert alone.rank[0] == together.rank[k]
        assert alone.top[0].tolist() == together.top[k].tolist()


@pytest.mark.parametrize("name", BASELINES)
def test_river_protocol(name, stream):
    model = create(name)
    for e in stream[:200]:
        model.learn_one(e.viewer, e.video)
    viewer = stream[0].viewer
    assert math.isfinite(model.predict_one(viewer, stream[1].video))
    assert model.predict_one(viewer, "never-seen-video") == -math.inf
    items = {e.video for e in stream[:50]}
    ranked = model.rank(viewer, items)
    assert sorted(ranked) == sorted(items)
    scores = [model.predict_one(viewer, i) for i in ranked]
    assert scores == sorted(scores, reverse=True)
    # A false y is not a watch: nothing is learned.
    model.learn_one("zero", "c0v0", y=0)
    assert model.viewers.get("zero") is None


@pytest.mark.parametrize("name", BASELINES)
def test_every_baseline_runs_in_the_evaluator(name, stream):
    report = evaluate(create(name), stream, batch_size=16)
    assert report.evaluated > 0
    assert 0.0 <= report.hr <= 1.0 and 0.0 <= report.ndcg <= report.hr


# -- each baseline's own idea --------------------------------------------------------------------


def test_cooccurrence_finds_the_cluster_popularity_cannot(stream):
    knn = evaluate(CoOccurrenceKNN(), stream, batch_size=8)
    pop = evaluate(MostPopular(), stream, batch_size=8)
    # 4 equally popular clusters: popularity hits about a quarter as often as a cluster-aware model.
    assert knn.hr > 2 * pop.hr


def test_cooccurrence_weighs_the_most_recent_watch_most():
    m = CoOccurrenceKNN()
    # Others watched a->x and b->y; the viewer watched a long ago and b just now.
    m.learn_many(
        [
            WatchEvent(0, "o1", "a"),
            WatchEvent(1, "o1", "x"),
            WatchEvent(2, "o2", "b"),
            WatchEvent(3, "o2", "y"),
        ]
    )
    m.learn_many([WatchEvent(4, "me", "a"), WatchEvent(5, "me", "b")])
    assert m.recommend("me", n=2).videos == ["y", "x"]


def test_cooccurrence_counts_only_pairs_within_the_window():
    m = CoOccurrenceKNN(window=2)
    m.learn_many([WatchEvent(t, "v", str(t)) for t in range(4)])
    counts = m.counts.array
    assert np.array_equal(counts, counts.T)
    row = {m.videos.id_of(j): counts[m.videos.get("3"), j] for j in range(4)}
    assert row == {"0": 0.0, "1": 1.0, "2": 1.0, "3": 0.0}


def test_cooccurrence_uses_earlier_watches_in_the_same_batch_as_history():
    m = CoOccurrenceKNN()
    m.learn_many([WatchEvent(0, "o", "a"), WatchEvent(1, "o", "x"), WatchEvent(2, "p", "b")])
    m.learn_many([WatchEvent(3, "me", "b")])
    # "me" watches a, then x, in one batch: by the time of x, a is in the history.
    ranking = m.rank_events([WatchEvent(4, "me", "a"), WatchEvent(5, "me", "x")], n=3)
    assert ranking.rank[1] == 0


def test_recent_popular_forgets_at_the_half_life():
    m = RecentPopular(half_life=4)
    m.learn_many([WatchEvent(t, f"old{t}", "old") for t in range(3)])  # weights 2^0, 2^.25, 2^.5
    m.learn_many([WatchEvent(3 + t, f"new{t}", "new") for t in range(2)])  # 2^.75, 2^1
    # 3 old watches against 2 new ones, but the old ones have faded.
    old, new = m.score_videos("x", ["old", "new"])
    assert new > old
    assert old / new == pytest.approx((1 + 2**0.25 + 2**0.5) / (2**0.75 + 2))


def test_recent_popular_survives_long_streams_with_a_short_half_life():
    m = RecentPopular(half_life=1)
    m.learn_many([WatchEvent(t, "v", "a" if t % 3 else "b") for t in range(3000)])
    scores = m.score_videos("new", ["a", "b"])
    assert np.all(np.isfinite(scores)) and scores[0] > 0
    # The last event (t=2999, 2999 % 3 == 2) was "a"; "b" came one event earlier: half as much.
    assert m.recommend("new", n=2).videos == ["a", "b"]


def test_recent_popular_with_a_long_half_life_ranks_like_most_popular(stream):
    a = evaluate(RecentPopular(half_life=1e12), stream, batch_size=8)
    b = evaluate(MostPopular(), stream, batch_size=8)
    assert a.hits == b.hits and a.evaluated == b.evaluated


def test_isgd_learning_moves_the_prediction_towards_one():
    m = ISGD(seed=0)
    m.learn_many([WatchEvent(0, "a", "x")])
    before = float(m.viewer_vectors.array[0] @ m.video_vectors.array[0])
    m.learn_many([WatchEvent(t, "a", "x") for t in range(1, 200)])
    after = float(m.viewer_vectors.array[0] @ m.video_vectors.array[0])
    assert abs(1 - after) < abs(1 - before)


def test_isgd_plain_loop_agrees_with_the_evaluator_per_event(stream):
    plain = plain_test_then_train(ISGD(seed=3), stream)
    report = evaluate(ISGD(seed=3), stream, batch_size=1)
    assert (plain["evaluated"], plain["hits"]) == (report.evaluated, report.hits)
    assert plain["ndcg_sum"] == pytest.approx(report.ndcg_sum)
    assert plain["rr_sum"] == pytest.approx(report.rr_sum)


def test_funk_mf_scores_are_rivers_own_predictions(stream):
    m = FunkMFRanker(seed=1)
    m.learn_many(stream[:300])
    viewer = stream[0].viewer
    videos = sorted({e.video for e in stream[:300]})
    ours = m.score_videos(viewer, videos)
    river_scores = [m.funk.predict_one(viewer, v) for v in videos]
    np.testing.assert_allclose(ours, river_scores, rtol=1e-5, atol=1e-6)


def test_cooccurrence_moves_to_bounded_rows_past_its_dense_limit(stream):
    dense = CoOccurrenceKNN()
    switched = CoOccurrenceKNN(max_videos=10, slots=64)  # every row fits: nothing is dropped
    dense.learn_many(stream)
    switched.learn_many(stream)
    assert isinstance(dense.counts, CoCounts) and isinstance(switched.counts, TopCoCounts)
    for viewer in ("u0", "u3", "u9"):
        assert switched.recommend(viewer, n=5).videos == dense.recommend(viewer, n=5).videos


def test_bounded_rows_keep_the_pairs_that_recur():
    counts = TopCoCounts(slots=2)
    counts.ensure(5)
    counts.add_pairs(4, np.array([0, 0, 1]))  # 0 twice, 1 once
    counts.add_pairs(4, np.array([2]))  # evicts the lighter pair (4, 1)
    counts.add_pairs(4, np.array([0]))
    row = counts.weighted_rows(np.array([[4]]), np.array([[1.0]], dtype=np.float32))[0]
    assert row.tolist() == [3.0, 0.0, 1.0, 0.0, 0.0]


# -- the popularity models run as the service's shadow: bounded memory, saved with it ----------


@pytest.mark.parametrize("cls", [MostPopular, RecentPopular])
def test_popularity_memory_stays_flat_under_endless_new_viewers_and_videos(cls):
    """One new viewer and one new video per second, forever: ids unseen for the TTL go, and
    their rows are reused, so the tables stop growing."""
    model = cls(viewer_ttl=100.0, video_ttl=100.0, expire_every=10)
    rows = []
    for start in range(0, 3000, 50):
        model.learn_many([WatchEvent(float(t), f"v{t}", f"x{t}") for t in range(start, start + 50)])
        rows.append((len(model.viewers), len(model.videos), model.seen.entries()))
    assert rows[-1] == rows[len(rows) // 2]  # flat once as many leave as arrive
    # Live ids: the TTL's worth, plus a batch, the clock's tolerance and the expiry interval.
    assert max(rows[-1][:2]) <= 200 and model.viewers.live <= 100 + 50 + 15 + 10
    assert model.expired[0] > 2500 and model.expired[1] > 2500


@pytest.mark.parametrize("cls", [MostPopular, RecentPopular])
def test_popularity_never_recommends_an_expired_video_and_forgets_expired_viewers(cls):
    model = cls(viewer_ttl=50.0, video_ttl=50.0, expire_every=1)
    model.learn_many([WatchEvent(float(t), "fan", "old-hit") for t in range(5)])
    regulars = [WatchEvent(float(t), f"r{t % 3}", f"c{t % 4}") for t in range(5, 100)]
    model.learn_many(regulars)
    assert "old-hit" not in model.videos and "fan" not in model.viewers
    lists = model.recommend_many(["r0", "nobody"], n=10, exclude_seen=False)
    assert all(sorted(rec.videos) == ["c0", "c1", "c2", "c3"] for rec in lists)
    ranking = model.rank_events([WatchEvent(100.0, "r1", "c2")])
    assert not np.isin(ranking.top, model.videos.free_rows).any() and ranking.catalogue == 4
    # The returning fan is new (only this watch is excluded for them), and the old hit counts
    # from zero: its count is the weight of this one watch, not five watches more.
    one_watch = 2.0 ** getattr(model, "_log2_increment", 0.0)
    model.learn_many([WatchEvent(100.0, "fan", "old-hit")])
    assert model._counts.array[model.videos.get("old-hit")] == pytest.approx(one_watch)
    assert model.seen.of(model.viewers.get("fan")) == [model.videos.get("old-hit")]


@pytest.mark.parametrize("cls", [MostPopular, RecentPopular])
def test_popularity_save_and_load_continue_exactly(cls, stream, tmp_path):
    first, rest = stream[: len(stream) // 2], stream[len(stream) // 2 :]
    kwargs = {"half_life": 50.0} if cls is RecentPopular else {}
    model = cls(viewer_ttl=30.0, video_ttl=60.0, expire_every=7, **kwargs)
    model.learn_many(first)
    model.save(tmp_path / "m.npz")
    restored = cls.load(tmp_path / "m.npz")
    for m in (model, restored):
        for i in range(0, len(rest), 16):
            m.learn_many(rest[i : i + 16])
    assert restored.expired == model.expired and restored._life.now == model._life.now
    np.testing.assert_array_equal(restored._counts.array, model._counts.array)
    viewers = sorted({e.viewer for e in stream})
    lists = [[r.videos for r in m.recommend_many(viewers)] for m in (model, restored)]
    assert lists[0] == lists[1]


def test_popularity_load_refuses_foreign_and_damaged_files(stream, tmp_path):
    model = RecentPopular()
    model.learn_many(stream)
    model.save(tmp_path / "recent.npz")
    with pytest.raises(ValueError, match="not a streamrec most_popular file"):
        MostPopular.load(tmp_path / "recent.npz")  # another model's file
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="cannot read it as .npz"):
        RecentPopular.load(tmp_path / "junk.npz")
    arrays = dict(np.load(tmp_path / "recent.npz"))
    arrays["video/counts"] = arrays["video/counts"][:-1]
    np.savez(tmp_path / "cut.npz", **arrays)
    with pytest.raises(ValueError, match="damaged content"):
        RecentPopular.load(tmp_path / "cut.npz")


@pytest.mark.parametrize("name", names())
def test_a_fresh_model_recommends_nothing_and_ranks_nothing(name):
    """Asked before it learned anything (a river user might), a model answers, empty-handed."""
    model = create(name)
    assert model.recommend("anyone").videos == []
    ranking = model.rank_events([WatchEvent(0.0, "a", "x")])
    assert (ranking.top == -1).all() and ranking.rank.tolist() == [UNRANKED]
    assert model.predict_one("a", "x") == -math.inf
