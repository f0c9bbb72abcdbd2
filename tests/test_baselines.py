"""Each baseline's own idea and its own state; the contract they share with every model is
checked in ``tests/test_model_contract.py``."""

from __future__ import annotations

import numpy as np
import pytest

from contract.events import WatchEvent
from model.baselines import ISGD, CoOccurrenceKNN, FunkMFRanker, MostPopular, RecentPopular
from model.baselines.cooccurrence import CoCounts, TopCoCounts
from model.baselines.isgd import plain_test_then_train
from model.evaluate import evaluate
from tests.test_model_contract import assert_same_lists, assert_same_state, clustered_stream


@pytest.fixture(scope="module")
def stream():
    return clustered_stream()


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


# -- each baseline's own state survives save and load -----------------------------------------


@pytest.mark.parametrize("switch_at", ["before_save", "after_load"])
def test_cooccurrence_saves_its_counts_dense_or_bounded(switch_at, stream, tmp_path):
    """The counts move from the dense matrix to bounded rows past ``max_videos``: a model saved
    on either side of the move, or moving after it was loaded, goes on exactly."""
    first_seen = list(dict.fromkeys(e.video for e in stream))
    moves_at = next(i for i, e in enumerate(stream) if e.video == first_seen[24])  # the 25th video
    cut = 400 if switch_at == "before_save" else moves_at
    first, rest = stream[:cut], stream[cut:]
    model = CoOccurrenceKNN(max_videos=24, slots=8)
    model.learn_many(first)
    assert isinstance(model.counts, TopCoCounts if switch_at == "before_save" else CoCounts)
    model.save(tmp_path / "knn.npz")
    loaded = CoOccurrenceKNN.load(tmp_path / "knn.npz")
    assert type(loaded.counts) is type(model.counts)
    for m in (model, loaded):
        m.learn_many(rest)
    assert isinstance(loaded.counts, TopCoCounts)
    assert_same_state(model, loaded)
    assert_same_lists(model, loaded, ["u0", "u3", "u9", "stranger"])


def test_recent_popular_saves_the_weight_of_the_next_watch(tmp_path):
    """With a short half-life the counts are rescaled as they go: a loaded model carries on
    from the same increment, so new watches weigh what they would have."""
    events = [WatchEvent(float(t), f"v{t % 7}", f"x{t % 5}") for t in range(3000)]
    model = RecentPopular(half_life=2.0)
    model.learn_many(events[:2001])
    model.save(tmp_path / "recent.npz")
    loaded = RecentPopular.load(tmp_path / "recent.npz")
    assert loaded._log2_increment == model._log2_increment > 0
    for m in (model, loaded):
        m.learn_many(events[2001:])
    assert_same_state(model, loaded)


def test_funk_mf_restores_rivers_own_structures(stream, tmp_path):
    model = FunkMFRanker(seed=5)
    model.learn_many(stream[:300])
    model.save(tmp_path / "funk.npz")
    loaded = FunkMFRanker.load(tmp_path / "funk.npz")
    # river's API answers the same on the loaded model, and a newcomer still gets a fresh random
    # vector from river's initialiser, drawn from where the saved model's generator was.
    for viewer, video in [(e.viewer, e.video) for e in stream[:20]]:
        assert loaded.funk.predict_one(viewer, video) == model.funk.predict_one(viewer, video)
    assert list(loaded.funk.u_latents) == list(model.funk.u_latents)
    for m in (model, loaded):
        m.funk.learn_one("newcomer", "c0v1", 1.0)
    np.testing.assert_array_equal(loaded.funk.u_latents["newcomer"], model.funk.u_latents["newcomer"])


def test_isgd_saves_its_random_generator(stream, tmp_path):
    model = ISGD(seed=4)
    model.learn_many(stream[:300])
    model.save(tmp_path / "isgd.npz")
    loaded = ISGD.load(tmp_path / "isgd.npz")
    for m in (model, loaded):
        m.learn_many([WatchEvent(1e3, "newcomer", "premiere")])
    row = model.videos.get("premiere")
    np.testing.assert_array_equal(loaded.video_vectors.array[row], model.video_vectors.array[row])


@pytest.mark.parametrize(
    ("name", "setting"),
    [
        ("isgd", {"k": 0}),
        ("funk_mf", {"k": 0}),
        ("cooccurrence", {"slots": 0}),
        ("cooccurrence", {"max_videos": 0}),
        ("streamrec", {"lr": float("nan")}),  # JSON reports could not even hold the result
        ("streamrec", {"init_scale": float("inf")}),
    ],
)
def test_a_setting_a_baseline_cannot_learn_with_is_refused_when_it_is_made(name, setting):
    """Refused by the registry with the setting named, not accepted and then failing on the
    first batch (``k=0`` failed in a matrix product; ``slots=0`` once the catalogue grew)."""
    from model import registry

    with pytest.raises(registry.BadSetting, match=next(iter(setting)).split("_")[0]):
        registry.create(name, **setting)
