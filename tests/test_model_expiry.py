"""EmbeddingRanker with expirable ids and the frequency filter: what a user of the model notices."""

from __future__ import annotations

import numpy as np
import pytest

from contract.events import WatchEvent
from model.embedding import EmbeddingRanker
from model.topk import UNRANKED

CATALOGUE = [f"c{i}" for i in range(8)]


def _regulars(t0: int, t1: int, viewers: int = 6) -> list[WatchEvent]:
    """Viewers r0..r5 keep watching the catalogue, one event per second from t0 to t1."""
    return [
        WatchEvent(float(t), f"r{t % viewers}", CATALOGUE[(t * 3) % len(CATALOGUE)]) for t in range(t0, t1)
    ]


def _learn(model: EmbeddingRanker, events: list[WatchEvent], batch: int = 8, rank: bool = False) -> None:
    for i in range(0, len(events), batch):
        chunk = events[i : i + batch]
        if rank:
            model.rank_and_learn(chunk)
        else:
            model.learn_many(chunk)


def _state(model: EmbeddingRanker) -> dict[str, np.ndarray]:
    attrs = ("_E", "_E_acc", "_Q", "_Q_acc", "_b", "_b_acc", "_counts", "_trend")
    out = {a: getattr(model, a).array.copy() for a in attrs}
    out["history"] = model._recent.items.array.copy()
    out["cooc"] = model._cooc.array.copy()
    return out


def test_an_expired_viewer_is_unknown_and_a_new_viewer_reuses_the_row_from_scratch():
    model = EmbeddingRanker(viewer_ttl=100.0, expire_every=1)
    _learn(model, [WatchEvent(0.0, "gone", v) for v in ("c0", "c1", "c2")] + _regulars(1, 200))
    assert "gone" not in model.viewers and model.expired[0] == 1
    # Unknown again: the same trending list as someone never seen.
    assert model.recommend("gone").videos == model.recommend("nobody").videos
    row = model.viewers.free_rows[-1]
    assert (model._recent.items.array[row] == -1).all() and model.seen.of(row) == []
    assert not model._recent.weights.array[row].any()

    model.learn_one("newcomer", "c5", x={"timestamp": 200.0})
    assert model.viewers.get("newcomer") == row
    assert model.seen.of(row) == [model.videos.get("c5")]
    # What "gone" watched is not excluded for the newcomer: the seen list did not leak.
    assert {"c0", "c1", "c2"} <= set(model.recommend("newcomer", n=10).videos)


def test_an_expired_video_is_never_recommended_and_comes_back_fresh():
    model = EmbeddingRanker(video_ttl=50.0, expire_every=1)
    early = [WatchEvent(float(t), f"r{t % 6}", "hit") for t in range(10)]
    _learn(model, early + _regulars(10, 100))
    assert "hit" not in model.videos and model.n_videos == len(CATALOGUE)
    viewers = [f"r{i}" for i in range(6)] + ["nobody"]
    for rec in model.recommend_many(viewers, n=20, exclude_seen=False):
        assert "hit" not in rec.videos and "" not in rec.videos
        assert len(rec.videos) == len(CATALOGUE)  # the released row does not fill a slot
    ranking = model.rank_events(_regulars(100, 110))
    assert not np.isin(ranking.top, model.videos.free_rows).any()

    # Back after its expiry: a new video (cold, so unranked), learned from its first watch again.
    comeback = WatchEvent(100.0, "r1", "hit")
    assert model.rank_events([comeback]).rank.tolist() == [UNRANKED]
    model.learn_many([comeback])
    row = model.videos.get("hit")
    assert model._counts.array[row] == 1.0
    assert model._cooc.counts[row] == 1.0


def test_a_reused_video_row_is_not_excluded_for_who_watched_the_old_video():
    model = EmbeddingRanker(video_ttl=50.0, expire_every=1)
    _learn(model, [WatchEvent(0.0, "fan", "old")] + _regulars(1, 100) + [WatchEvent(100.0, "fan", "c1")])
    old_row = model.videos.free_rows[-1]
    assert old_row not in model.seen.of(model.viewers.get("fan"))
    model.learn_one("someone", "fresh", x={"timestamp": 101.0})
    assert model.videos.get("fresh") == old_row
    assert "fresh" in model.recommend("fan", n=20).videos
    assert old_row not in model._recent.items.array[model.viewers.get("fan")]


def test_memory_stays_flat_under_endless_new_viewers_and_videos():
    def churn(t0: int, t1: int) -> list[WatchEvent]:
        # Every viewer watches 4 videos in 4 seconds and never returns; a video lives 8 seconds.
        return [WatchEvent(float(t), f"v{t // 4}", f"x{t // 8}") for t in range(t0, t1)]

    capped = EmbeddingRanker(viewer_ttl=60.0, video_ttl=60.0, expire_every=50)
    _learn(capped, churn(0, 2000), batch=50)
    rows = (len(capped.viewers), len(capped.videos), capped._E.capacity, capped.seen.entries())
    _learn(capped, churn(2000, 8000), batch=50)
    # Four times the ids, the same number of rows and seen entries: released rows are reused.
    assert (len(capped.viewers), len(capped.videos), capped._E.capacity, capped.seen.entries()) == rows
    # Rows: viewers of the last TTL + expiry period + batch (ids are stamped with the clock at
    # the end of their batch) + clock lag (15 events) seconds, 4 s each.
    assert rows[0] <= (60 + 50 + 50 + 15) // 4 + 2 and capped.expired[0] > 1900

    uncapped = EmbeddingRanker(viewer_ttl=None, video_ttl=None)
    _learn(uncapped, churn(0, 8000), batch=50)
    assert (len(uncapped.viewers), len(uncapped.videos)) == (2000, 1000)
    assert capped.memory_bytes()["total"] * 10 < uncapped.memory_bytes()["total"]


def test_nothing_changes_while_nothing_is_old_enough_to_expire():
    events = _regulars(0, 300) + [WatchEvent(300.0 + t, f"n{t}", f"x{t % 3}") for t in range(40)]
    plain = EmbeddingRanker(seed=4, viewer_ttl=None, video_ttl=None)
    timed = EmbeddingRanker(seed=4, viewer_ttl=1e6, video_ttl=1e6, expire_every=1)
    _learn(plain, events)
    _learn(timed, events)
    for key, value in _state(plain).items():
        np.testing.assert_array_equal(_state(timed)[key], value, err_msg=key)


def test_ranking_before_learning_reuses_rows_exactly_like_learning_alone():
    # rank_and_learn learns from the test step's score matrix; columns of rows a batch reuses
    # must be rescored as new videos, so both paths learn the same thing.
    events = [WatchEvent(float(t), f"v{t % 5}", f"x{t // 6}") for t in range(400)]
    a = EmbeddingRanker(seed=2, video_ttl=20.0, viewer_ttl=30.0, expire_every=5)
    b = EmbeddingRanker(seed=2, video_ttl=20.0, viewer_ttl=30.0, expire_every=5)
    _learn(a, events, batch=7, rank=True)
    _learn(b, events, batch=7, rank=False)
    assert a.expired[1] > 40 and len(a.videos) < 10
    for key, value in _state(a).items():
        np.testing.assert_array_equal(_state(b)[key], value, err_msg=key)


def test_a_video_or_viewer_enters_the_model_on_its_kth_event():
    model = EmbeddingRanker(min_events=3)
    _learn(model, _regulars(0, 60))
    filtered = model.events_filtered  # each regular's and each video's first two events
    model.learn_many([WatchEvent(60.0, "r0", "rare"), WatchEvent(61.0, "r1", "rare")])
    assert "rare" not in model.videos and model.events_filtered == filtered + 2
    assert "rare" not in model.recommend("r2", n=20).videos
    model.learn_one("r2", "rare", x={"timestamp": 62.0})
    assert "rare" in model.videos and "rare" in model.recommend("r3", n=20).videos
    # A viewer with fewer events is still unknown: trending.
    model.learn_one("passer-by", "c1", x={"timestamp": 63.0})
    assert "passer-by" not in model.viewers
    assert model.recommend("passer-by").videos == model.recommend("nobody").videos


def test_expiry_and_admission_state_survive_save_and_load(tmp_path):
    events = [WatchEvent(float(t), f"v{t % 9}", f"x{t // 5}") for t in range(300)]
    model = EmbeddingRanker(seed=1, viewer_ttl=40.0, video_ttl=25.0, expire_every=10, min_events=2)
    _learn(model, events, batch=16)
    assert model.videos.free_rows and model.events_filtered
    model.save(tmp_path / "m.npz")
    loaded = EmbeddingRanker.load(tmp_path / "m.npz")
    settings = (loaded.viewer_ttl, loaded.video_ttl, loaded.expire_every, loaded.min_events)
    assert settings == (40.0, 25.0, 10, 2)
    assert loaded.videos.free_rows == model.videos.free_rows and loaded.expired == model.expired
    # Both continue identically: same rows reused, same expiries, same admissions.
    more = [WatchEvent(300.0 + t, f"w{t % 4}", f"x{(300 + t) // 5}") for t in range(200)]
    _learn(model, more, batch=16)
    _learn(loaded, more, batch=16)
    assert loaded.viewers.ids == model.viewers.ids and loaded.events_filtered == model.events_filtered
    for key, value in _state(model).items():
        np.testing.assert_array_equal(_state(loaded)[key], value, err_msg=key)
    viewers = ["w0", "w1", "v3", "nobody"]
    lists = [r.videos for r in model.recommend_many(viewers)]
    assert [r.videos for r in loaded.recommend_many(viewers)] == lists


def test_bad_lifecycle_settings_are_refused():
    with pytest.raises(ValueError, match="viewer_ttl"):
        EmbeddingRanker(viewer_ttl=0)
    with pytest.raises(ValueError, match="min_events"):
        EmbeddingRanker(min_events=0)
