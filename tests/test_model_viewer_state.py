"""A viewer handed to another instance of the model (issue 12's handover, model side):
``viewer_states`` then ``restore_viewers`` keep what the viewer watched and how they are scored.

The property the service relies on: a viewer restored into another instance is excluded from
exactly the videos they watched, and, where the two instances hold the same video state, gets
exactly the scores and the list the original would have given. Rows differ between instances
(the state travels by video id), which each test makes sure of.
"""

from __future__ import annotations

import numpy as np
import pytest

from contract.events import WatchEvent
from model import viewer_state
from model.base import StreamRanker
from model.embedding import EmbeddingRanker
from model.profile import ProfileRanker
from model.replica import ReplicatedRanker, initial_vectors
from tests.streams import SOURCES, stream

N = 3000


def learned(model: StreamRanker, events: list[WatchEvent], batch: int = 200) -> StreamRanker:
    for start in range(0, len(events), batch):
        model.learn_many(events[start : start + batch])
    return model


def watched_ids(model: EmbeddingRanker, viewer: str) -> list[str]:
    return [model.videos.id_of(r) for r in model.seen.of(model.viewers.get(viewer))]


def heaviest(events: list[WatchEvent], k: int) -> list[str]:
    counts: dict[str, int] = {}
    for e in events:
        counts[e.viewer] = counts.get(e.viewer, 0) + 1
    return sorted(counts, key=lambda v: (-counts[v], v))[:k]


def forget(model: EmbeddingRanker, viewers: list[str]) -> None:
    """Drop ``viewers`` from ``model`` as expiry does (their rows go back to the free list)."""
    rows = np.array([model.viewers.get(v) for v in viewers], dtype=np.int64)
    model._recent.clear(rows)
    model.seen.clear_rows(rows.tolist())
    model.viewers.remove_rows(rows.tolist())


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("kind", [EmbeddingRanker, ProfileRanker])
def test_a_restored_viewer_gets_the_original_scores_and_list_over_the_same_video_state(
    kind, source, tmp_path
):
    events = stream(source, N)
    original = learned(kind(seed=3), events)
    moved = heaviest(events, 20)
    original.save(tmp_path / "m.npz")
    other = type(original).load(tmp_path / "m.npz")  # the same video state...
    forget(other, moved)  # ...without the moved viewers
    before = {v: other.viewers.get(v) for v in moved}
    assert all(row is None for row in before.values())

    assert other.restore_viewers(original.viewer_states(moved)) == len(moved)

    # The free rows are reused last released first: the viewers come back in other rows.
    rows_differ = [v for v in moved if other.viewers.get(v) != original.viewers.get(v)]
    assert rows_differ, "the test must move viewers to other rows, or rows and ids are not told apart"
    videos = [v for v in original.videos.ids if v]
    for viewer in moved:
        assert watched_ids(other, viewer) == watched_ids(original, viewer)
        np.testing.assert_array_equal(
            other.score_videos(viewer, videos), original.score_videos(viewer, videos)
        )
    back, there = other.recommend_many(moved, n=10), original.recommend_many(moved, n=10)
    assert [r.videos for r in back] == [r.videos for r in there]


@pytest.mark.parametrize("source", SOURCES)
def test_a_viewer_restored_into_a_model_that_never_saw_them_is_excluded_from_all_they_watched(source):
    events = stream(source, N)
    half = len(events) // 2
    first = learned(EmbeddingRanker(seed=1), events)
    moved = heaviest(events, 30)
    # Another worker learned other viewers only, in another order: its video rows differ.
    others = [e for e in reversed(events[:half]) if e.viewer not in set(moved)]
    second = learned(EmbeddingRanker(seed=2), others)

    assert second.restore_viewers(first.viewer_states(moved)) == len(moved)

    watched = {v: {e.video for e in events if e.viewer == v} for v in moved}
    for viewer, rec in zip(moved, second.recommend_many(moved, n=10), strict=True):
        assert sorted(set(watched_ids(second, viewer))) == sorted(watched[viewer])
        assert len(rec.videos) == 10 and not set(rec.videos) & watched[viewer]
    # Without the restore those viewers are strangers there: they get what is trending,
    # watched videos included.
    fresh = learned(EmbeddingRanker(seed=2), others)
    leaks = [
        v for v, r in zip(moved, fresh.recommend_many(moved, n=10), strict=True) if set(r.videos) & watched[v]
    ]
    assert leaks


def test_videos_unknown_to_the_restoring_replica_start_where_every_worker_starts_them():
    a, b = ReplicatedRanker(seed=0), ReplicatedRanker(seed=0)
    a.learn_many([WatchEvent(float(t), "ann", f"v{t}") for t in range(5)])
    b.learn_many([WatchEvent(1.0, "bob", "other")])

    assert b.restore_viewers(a.viewer_states(["ann"])) == 1

    rows = b.videos.get_many([f"v{t}" for t in range(5)])
    assert (rows >= 0).all()
    expected = initial_vectors([f"v{t}" for t in range(5)], b.dim, b.init_scale, 0)
    np.testing.assert_allclose(b._E.array[rows], expected)
    assert not b._counts.array[rows].any()  # created, not watched here
    # Created and touched: the next expiry run does not take them as idle since forever.
    assert np.isfinite(b._life.videos.array[rows]).all()


def test_a_state_past_the_viewer_ttl_or_of_another_format_is_not_restored():
    day = 86_400.0
    a = EmbeddingRanker(viewer_ttl=10 * day)
    # (Twenty events a time: the model's clock ignores up to 15 stray timestamps.)
    a.learn_many([WatchEvent(0.0, "old", "x")] * 20 + [WatchEvent(0.0, "recent", "y")])
    a.learn_many([WatchEvent(9 * day, "recent", "z")] * 20)
    states = a.viewer_states(["old", "recent"])
    b = EmbeddingRanker(viewer_ttl=10 * day)
    b.learn_many([WatchEvent(15 * day, "someone", "x")] * 20)
    future = viewer_state.ViewerState(viewer_state.FORMAT + 1, 15 * day, [], b"", ["x"])

    assert b.restore_viewers(states | {"future": viewer_state.encode(future)}) == 1

    assert b.viewers.get("old") is None and b.viewers.get("future") is None
    assert watched_ids(b, "recent") == ["y"] + ["z"] * 20


def test_a_model_that_does_not_implement_the_handover_hands_over_nothing():
    from model.baselines.recent_popular import RecentPopular

    model = RecentPopular()  # the service's shadow: its viewers start afresh after a move
    model.learn_many([WatchEvent(1.0, "ann", "x")])
    assert model.viewer_states(["ann"]) == {} and model.restore_viewers({"ann": b"..."}) == 0


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("kind", [EmbeddingRanker, ProfileRanker])
def test_a_viewer_rewound_and_relearned_is_the_viewer_before_the_rewind(kind, source, tmp_path):
    """A partition's new owner relearns what the previous owner learned and never sent, from
    the viewers' states taken back before those watches (``viewer_state.rewound``): relearned,
    each viewer's history, weights and watched list are what they were, heavy viewers too
    (whose history, rewound, lost its oldest slots)."""
    events = stream(source, N)
    head, tail = events[: N - 300], events[N - 300 :]
    original = learned(kind(seed=3), head)
    original.save(tmp_path / "m.npz")
    learned(original, tail)
    viewers = sorted({e.viewer for e in tail})
    states = {v: viewer_state.decode(s) for v, s in original.viewer_states(viewers).items()}

    other = type(original).load(tmp_path / "m.npz")
    forget(other, [v for v in viewers if other.viewers.get(v) is not None])  # the changelog replaces them
    rewound = {}
    for viewer, state in states.items():
        back = viewer_state.rewound(state, [e.video for e in tail if e.viewer == viewer])
        assert back is not None, viewer
        rewound[viewer] = viewer_state.encode(back)
    assert other.restore_viewers(rewound) == len(viewers)
    heavy = [
        v for v in viewers if "" not in states[v].history and "" in viewer_state.decode(rewound[v]).history
    ]
    assert heavy, "no viewer lost history slots to the rewind: the test would not cover them"
    learned(other, tail)

    again = {v: viewer_state.decode(s) for v, s in other.viewer_states(viewers).items()}
    for viewer in viewers:
        assert again[viewer].history == states[viewer].history, viewer
        assert again[viewer].seen == states[viewer].seen, viewer
        np.testing.assert_array_equal(again[viewer].history_weights(), states[viewer].history_weights())
