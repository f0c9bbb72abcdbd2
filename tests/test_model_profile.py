"""The default model with a long-term taste profile (model.profile.ProfileRanker)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest

from contract.events import WatchEvent
from model import registry
from model.compiled_profile import profile_grad_compiled, profile_means_compiled
from model.embedding import EmbeddingRanker
from model.profile import ProfileRanker, profile_grad, profile_means
from tests.test_model_embedding import _rank_and_learn_agrees, _state
from tests.test_model_embedding import _trained as trained


def _taste_stream(viewers: int = 40, seed: int = 0) -> list[WatchEvent]:
    """Each viewer belongs to group a or b: five of the group's ten videos, then the 25 videos
    everybody watches (in random order), then the group's five others. What follows the shared
    run is certain (the viewer's group), but only a history longer than 25 shows it."""
    rng = np.random.default_rng(seed)
    events: list[WatchEvent] = []
    t = 0.0
    for v in range(viewers):
        group = "ab"[v % 2]
        own = [f"{group}{i}" for i in rng.permutation(10)]
        shared = [f"c{i}" for i in rng.permutation(25)]
        for video in own[:5] + shared + own[5:]:
            events.append(WatchEvent(t, f"{group}-viewer{v}", video))
            t += 1.0
    return events


#: A profile model trained on ``events`` in batches (``cls=`` another model to compare).
_trained = partial(trained, cls=ProfileRanker)


def _probe(model, group: str) -> list[str]:  # noqa: ANN001
    """Top-5 for a new viewer who watched five of ``group``'s videos, then 25 shared ones."""
    events = [WatchEvent(1e6 + i, "probe", f"{group}{i}") for i in range(5)]
    events += [WatchEvent(1e6 + 5 + i, "probe", f"c{i}") for i in range(25)]
    model.learn_many(events)
    return model.recommend("probe", n=5).videos


def _groups_stream(rounds: int = 30, seed: int = 0) -> list[WatchEvent]:
    """Two disjoint taste groups: viewers g0-* watch videos a0..a4, viewers g1-* watch b0..b4."""
    rng = np.random.default_rng(seed)
    events = []
    for t in range(rounds * 10):
        group = int(rng.integers(2))
        events.append(
            WatchEvent(float(t), f"g{group}-{int(rng.integers(6))}", "ab"[group] + str(int(rng.integers(5))))
        )
    return events


@pytest.mark.parametrize("batch", [1, 16, 128])
def test_known_answer_disjoint_groups(batch: int) -> None:
    # A viewer who watched one video of a group can only go on with that group's videos.
    model = _trained(_groups_stream(rounds=60), batch=batch)
    model.learn_one("newcomer", "a2")
    assert all(v.startswith("a") for v in model.recommend("newcomer", n=4).videos)
    model.learn_one("other", "b0")
    assert all(v.startswith("b") for v in model.recommend("other", n=4).videos)


def _margin(model, group: str) -> float:  # noqa: ANN001
    """After :func:`_probe`: mean score of the group's unwatched videos minus the other's."""
    _probe(model, group)
    other = "b" if group == "a" else "a"
    own = model.score_videos("probe", [f"{group}{i}" for i in range(5, 10)])
    rest = model.score_videos("probe", [f"{other}{i}" for i in range(10)])
    return float(own.mean() - rest.mean())


@pytest.mark.parametrize("batch", [1, 16, 128])
def test_the_profile_remembers_what_the_history_forgot(batch: int) -> None:
    # After 25 shared videos the 20-watch history is the same for both groups and holds no
    # clue; the profile still holds the five videos of the viewer's group, which the next
    # video always belongs to. Summed over both groups (the stream ends with one of them,
    # which the history's recency favours), the profile moves the scores toward the right
    # group; the default model's barely move (measured at the default profile_weight 0.5:
    # 0.72, 0.41, 0.51 against -0.03, 0.05, 0.06 at batch 1, 16, 128).
    events = _taste_stream(viewers=80)
    profile = sum(_margin(_trained(events, batch=batch), g) for g in "ab")
    default = sum(_margin(_trained(events, batch=batch, cls=EmbeddingRanker), g) for g in "ab")
    assert profile > 0.25 and profile > default + 0.25, (profile, default)


def test_zero_weight_is_exactly_the_default_model() -> None:
    events = _taste_stream(viewers=12)
    plain = EmbeddingRanker(seed=3)
    zero = ProfileRanker(seed=3, profile_weight=0.0)
    for start in range(0, len(events), 32):
        chunk = events[start : start + 32]
        a, b = plain.rank_and_learn(chunk, n=5), zero.rank_and_learn(chunk, n=5)
        np.testing.assert_array_equal(a.top, b.top)
        np.testing.assert_array_equal(a.rank, b.rank)
    np.testing.assert_array_equal(plain._E.array, zero._E.array)
    assert not zero._P.array.any()


def test_batch_of_one_is_learn_one() -> None:
    events = _taste_stream(viewers=6)
    by_batches = _trained(events, batch=1)
    by_one = ProfileRanker(seed=3)
    for e in events:
        by_one.learn_one(e.viewer, e.video, True, {"timestamp": e.timestamp})
    for key, array in _state(by_one).items():
        np.testing.assert_array_equal(array, _state(by_batches)[key], err_msg=key)


@pytest.mark.parametrize(
    ("batch", "settings"),
    [
        (1, {}),
        (7, {}),
        (64, {}),
        (50, {"shortlist": 15, "shortlist_share": 0.0}),
        (50, {"shortlist": None}),
        (40, {"profile_watches": 3}),
    ],
)
def test_rank_and_learn_is_rank_events_then_learn_many(batch: int, settings: dict) -> None:
    """One score matrix for both steps ranks and learns exactly as the two steps apart (the
    profile's own table included), and as learning alone."""
    together = _rank_and_learn_agrees(_taste_stream(viewers=10), batch, cls=ProfileRanker, **settings)
    assert together._P.array.any()  # the profile learned


def test_ranking_a_batch_uses_the_profile_as_recommending_does() -> None:
    # rank_events (the test step, from the batch's causal watches) and recommend_many (from
    # the stored seen list) build the same viewer vector: the same top list after a batch.
    model = _trained(_taste_stream(), batch=64)
    probe = [WatchEvent(1e6 + i, "probe", f"a{i}") for i in range(5)]
    probe += [WatchEvent(1e6 + 5 + i, "probe", f"c{i}") for i in range(25)]
    model.learn_many(probe)
    ranked = model.rank_events([WatchEvent(2e6, "probe", "a7")], n=5)
    assert [model.videos.id_of(int(r)) for r in ranked.top[0]] == model.recommend("probe", n=5).videos


def test_expired_rows_start_with_a_zero_profile_and_rank_and_learn_agrees() -> None:
    events = _taste_stream(viewers=30)
    span = events[-1].timestamp - events[0].timestamp
    settings = {"viewer_ttl": span / 6, "video_ttl": span / 6, "expire_every": 50}
    model = _trained(events, batch=50, **settings)
    assert model.expired[0] > 0
    test_rank_and_learn_is_rank_events_then_learn_many(50, settings)
    for row in model.videos.free_rows:
        assert not model._P.array[row].any()


def test_predictions_create_no_state() -> None:
    model = _trained(_taste_stream(viewers=8))
    snapshot = _state(model)
    model.recommend_many(["ghost", "a-viewer0"], n=5)
    model.score_videos("a-viewer0", ["a1", "nope"])
    model.rank_events([WatchEvent(0.0, "ghost", "zzz"), WatchEvent(1.0, "a-viewer0", "a1")])
    for key, array in _state(model).items():
        np.testing.assert_array_equal(array, snapshot[key], err_msg=key)


def test_save_load_round_trip_continues_identically(tmp_path: Path) -> None:
    events = _taste_stream(viewers=12)
    events += [WatchEvent(1e5 + t, f"a-viewer{t % 6}", f"new{t % 4}") for t in range(30)]
    model = _trained(events[:300], batch=20)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = registry.load("streamrec_profile", path)
    assert isinstance(loaded, ProfileRanker)
    assert (loaded.profile_weight, loaded.profile_watches) == (model.profile_weight, model.profile_watches)
    np.testing.assert_array_equal(loaded._P.array, model._P.array)
    viewers = ["a-viewer0", "b-viewer1", "stranger"]
    for a, b in zip(model.recommend_many(viewers), loaded.recommend_many(viewers), strict=True):
        assert a.videos == b.videos
        np.testing.assert_array_equal(a.scores, b.scores)
    for m in (model, loaded):
        for start in range(300, len(events), 20):
            m.learn_many(events[start : start + 20])
    for key, array in _state(model).items():
        np.testing.assert_array_equal(array, _state(loaded)[key], err_msg=key)
    assert loaded.stats() == model.stats()
    with pytest.raises(ValueError, match="holds model 'streamrec_profile'"):
        EmbeddingRanker.load(path)


def test_registry_creates_it_with_its_settings() -> None:
    model = registry.create("streamrec_profile", profile_weight=2, profile_watches=50)
    assert model.name == "streamrec_profile" and model.profile_weight == 2.0
    assert registry.settings_of("streamrec_profile")["profile_weight"] == 0.5
    assert registry.DEFAULT_MODEL == "streamrec"
    with pytest.raises(registry.BadSetting):
        registry.create("streamrec_profile", profile_watches=0)
    with pytest.raises(registry.BadSetting):
        registry.create("streamrec_profile", profile_weight=-1.0)


def _compressed(rng: np.random.Generator, events: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Random compressed watch lists: empty rows, ``-1`` and rows past the table included."""
    lengths = rng.integers(0, 9, events)
    lengths[::5] = 0
    ptr = np.zeros(events + 1, dtype=np.int64)
    np.cumsum(lengths, out=ptr[1:])
    videos = rng.integers(-1, rows + 3, int(ptr[-1])).astype(np.int64)
    return ptr, videos


@pytest.mark.parametrize("limit", [1, 3, 100])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compiled_kernels_equal_their_numpy_references(limit: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows, dim, events = 11, 5, 23
    P = rng.normal(size=(rows, dim)).astype(np.float32)
    ptr, videos = _compressed(rng, events, rows)
    means, index, owner, inv = profile_means(P, ptr, videos, limit)
    fast, fast_inv = profile_means_compiled(P, ptr, videos, limit)
    np.testing.assert_allclose(fast, means, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast_inv, inv, rtol=1e-6)
    grad_u = rng.normal(size=(events, dim)).astype(np.float32)
    ref_rows, ref_grad = profile_grad(grad_u, index, owner, inv, 1.5)
    got_rows, got_grad = profile_grad_compiled(grad_u, ptr, videos, limit, rows, 1.5)
    np.testing.assert_array_equal(got_rows, ref_rows)
    np.testing.assert_allclose(got_grad, ref_grad, rtol=1e-5, atol=1e-6)


def test_compiled_kernels_on_empty_input() -> None:
    P = np.zeros((3, 4), dtype=np.float32)
    ptr, videos = np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    means, inv = profile_means_compiled(P, ptr, videos, 5)
    assert means.shape == (0, 4) and inv.shape == (0,)
    rows, grad = profile_grad_compiled(np.zeros((0, 4), np.float32), ptr, videos, 5, 3, 1.0)
    assert rows.shape == (0,) and grad.shape == (0, 4)
