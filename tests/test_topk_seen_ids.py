"""The ranking kernel, causal exclusion and id tables: the pieces every model ranks through.

The top-n tests compare against a brute-force sort on random matrices large enough to reach
the kernel's fast path, with ties, NaN, infinities and exclusions mixed in.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.events import WatchEvent
from model.ids import GrowableTable, IdIndex, as_id
from model.seen import SeenVideos, viewer_keys
from model.topk import UNRANKED, shared_top_n, shared_top_n_with_rank, top_n, top_n_with_rank

# -- top-n ---------------------------------------------------------------------------------------


def brute_force(scores: np.ndarray, n: int, targets: np.ndarray, exclude) -> tuple[list, np.ndarray]:
    """Per row, the sorted finite scores of the best n cells, and pessimistic target ranks."""
    s = scores.astype(np.float64).copy()
    s[~np.isfinite(s)] = -np.inf
    if exclude is not None:
        s[exclude] = -np.inf
    best = [sorted((v for v in row if np.isfinite(v)), reverse=True)[:n] for row in s]
    rank = np.full(len(s), UNRANKED, dtype=np.int64)
    for i, t in enumerate(targets):
        if t >= 0 and np.isfinite(s[i, t]):
            rank[i] = int((s[i] >= s[i, t]).sum()) - 1
    return best, rank


@st.composite
def score_batches(draw):
    batch = draw(st.integers(1, 6))
    items = draw(st.sampled_from([1, 3, 10, 11, 64, 300, 700]))
    n = draw(st.sampled_from([1, 5, 10, 20]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # Few distinct values make ties common; some NaN and infinities as a diverged model makes.
    values = rng.integers(0, draw(st.sampled_from([3, 50, 10_000])), size=(batch, items)).astype(np.float32)
    specials = rng.random((batch, items))
    values[specials < 0.05] = np.nan
    values[(specials >= 0.05) & (specials < 0.08)] = np.inf
    values[(specials >= 0.08) & (specials < 0.10)] = -np.inf
    excluded = rng.random((batch, items)) < draw(st.sampled_from([0.0, 0.3, 0.99]))
    exclude = np.nonzero(excluded)
    targets = rng.integers(-1, items, size=batch)
    return values, n, targets, exclude


@settings(max_examples=150, deadline=None)
@given(score_batches())
def test_top_n_matches_a_brute_force_sort(case):
    scores, n, targets, exclude = case
    best, expected_rank = brute_force(scores, n, targets, exclude)
    cols, rank = top_n_with_rank(scores.copy(), n, targets, exclude)
    assert cols.shape == (len(scores), n)
    np.testing.assert_array_equal(rank, expected_rank)
    clean = scores.astype(np.float64)
    for row, (chosen, want) in enumerate(zip(cols, best, strict=True)):
        valid = chosen[chosen >= 0]
        # Exactly as many valid items as exist (up to n), never a NaN, inf or excluded cell...
        assert len(valid) == len(want)
        assert len(set(valid.tolist())) == len(valid)
        assert np.all(chosen[len(valid) :] == -1)
        # ...and they are the best ones, best first.
        assert clean[row, valid].tolist() == want


@settings(max_examples=150, deadline=None)
@given(score_batches())
def test_shared_scores_rank_like_the_whole_matrix(case):
    """Popularity models rank one shared score vector: the same top lists and ranks as the
    matrix of that vector repeated per row, ties listed lower column first."""
    scores, n, targets, (rows, cols) = case
    shared = scores[0]
    # Some cells twice over, as a viewer who watched a video twice excludes it twice.
    exclude = (np.concatenate([rows, rows[::3]]), np.concatenate([cols, cols[::3]]))
    matrix = np.repeat(shared[None, :], len(scores), axis=0)
    best, expected_rank = brute_force(matrix, n, targets, exclude)
    top, rank = shared_top_n_with_rank(shared.copy(), n, targets, exclude)
    np.testing.assert_array_equal(rank, expected_rank)
    clean = np.where(np.isfinite(shared), shared, -np.inf)
    for row, want in enumerate(best):
        allowed = np.isfinite(clean)
        allowed[exclude[1][exclude[0] == row]] = False
        by_score = np.argsort(-clean, kind="stable")
        expected = by_score[allowed[by_score]][:n].tolist()
        assert top[row].tolist() == expected + [-1] * (n - len(expected))
        assert clean[expected].tolist() == want
    # Without targets (serving): the same lists, with their scores.
    cols_only, best = shared_top_n(shared.copy(), n, len(scores), exclude)
    np.testing.assert_array_equal(cols_only, top)
    np.testing.assert_array_equal(best, np.where(top >= 0, clean[np.maximum(top, 0)], -np.inf))


def test_fewer_eligible_items_than_n_pads_with_minus_one():
    scores = np.array([[3.0, 1.0, 2.0]], dtype=np.float32)
    cols, best = top_n(scores, 5, exclude=(np.array([0]), np.array([2])))
    assert cols.tolist() == [[0, 1, -1, -1, -1]]
    assert best[0, :2].tolist() == [3.0, 1.0]
    assert np.all(np.isneginf(best[0, 2:]))


def test_nan_scores_never_count_as_hits():
    # A diverged model: every score NaN. A careless kernel ranks the target first.
    scores = np.full((2, 50), np.nan, dtype=np.float32)
    cols, rank = top_n_with_rank(scores, 10, np.array([3, 7]))
    assert rank.tolist() == [UNRANKED, UNRANKED]
    assert np.all(cols == -1)


def test_ties_are_pessimistic_so_constant_scores_earn_nothing():
    scores = np.zeros((1, 100), dtype=np.float32)
    _, rank = top_n_with_rank(scores, 10, np.array([0]))
    assert rank.tolist() == [99]
    scores = np.array([[1.0, 2.0, 2.0, 2.0, 0.0]], dtype=np.float32)
    _, rank = top_n_with_rank(scores, 10, np.array([1]))
    assert rank.tolist() == [2]  # below both other 2.0s


def test_excluded_or_unknown_target_is_unranked():
    scores = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]], dtype=np.float32)
    _, rank = top_n_with_rank(scores, 2, np.array([2, -1]), exclude=(np.array([0]), np.array([2])))
    assert rank.tolist() == [UNRANKED, UNRANKED]


def test_empty_catalogue():
    cols, best = top_n(np.zeros((2, 0), dtype=np.float32), 3)
    assert cols.tolist() == [[-1, -1, -1]] * 2
    assert np.all(np.isneginf(best))


# -- causal exclusion ----------------------------------------------------------------------------


def test_exclusion_is_causal_inside_a_batch():
    seen = SeenVideos()
    seen.add(0, 10)
    # viewer 0 watches 1 then 2; viewer 1 (known, nothing watched) watches 1; a new viewer twice.
    rows, cols = seen.exclusion_for_events([0, 0, 1, -2, -2], [1, 2, 1, 5, 6])
    cells = {(int(r), int(c)) for r, c in zip(rows, cols, strict=True)}
    assert cells == {(0, 10), (1, 10), (1, 1), (4, 5)}


def test_exclusion_of_one_event_batches_matches_the_whole_batch():
    """Whatever the batch size, each event excludes the same videos."""
    rng = np.random.default_rng(0)
    events = [(int(v), int(i)) for v, i in zip(rng.integers(0, 5, 60), rng.integers(0, 30, 60), strict=True)]
    whole = SeenVideos()
    rows, cols = whole.exclusion_for_events([v for v, _ in events], [i for _, i in events])
    per_event = {k: set() for k in range(len(events))}
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        per_event[r].add(c)
    one_by_one = SeenVideos()
    for k, (v, i) in enumerate(events):
        r1, c1 = one_by_one.exclusion_for_events([v], [i])
        assert set(c1.tolist()) == per_event[k]
        one_by_one.add(v, i)


def test_viewer_keys_create_no_rows_and_share_keys_per_unknown_viewer():
    viewers = IdIndex()
    viewers.add("known")
    events = [WatchEvent(0, "new", "x"), WatchEvent(1, "known", "x"), WatchEvent(2, "new", "y")]
    keys = viewer_keys(viewers, events)
    assert keys[1] == 0 and keys[0] == keys[2] < 0
    assert len(viewers) == 1


def test_exclusion_for_viewers_ignores_unknown_rows():
    seen = SeenVideos()
    seen.add(1, 4)
    rows, cols = seen.exclusion_for_viewers([-1, 1, 7])
    assert list(zip(rows.tolist(), cols.tolist(), strict=True)) == [(1, 4)]


# -- ids -----------------------------------------------------------------------------------------


def test_ints_and_strings_are_the_same_id():
    ids = IdIndex()
    assert ids.add(as_id(42)) == ids.add("42")
    assert ids.get_many(["42", "nope"]).tolist() == [0, -1]
    assert len(ids) == 1


def test_id_index_round_trips_through_arrays():
    ids = IdIndex()
    ids.add_many(["WK_Nr4tUtl8", "é", "3"])
    back = IdIndex()
    back.load_arrays(ids.to_arrays())
    assert back.ids == ids.ids and back.get("é") == 1


def test_id_index_rejects_duplicates_on_load():
    with pytest.raises(ValueError, match="duplicate"):
        IdIndex().load_arrays({"ids": np.array(["a", "a"]), "free": np.zeros(0, dtype=np.int64)})


def test_ids_that_differ_only_by_trailing_nuls_stay_apart_through_a_checkpoint(tmp_path):
    """The contract allows a NUL inside an id. Saved as a numpy unicode array, ``"bob\\x00"``
    came back as ``"bob"``: that viewer lost their history to another, and once both existed
    no checkpoint of the model could be loaded again (duplicate ids)."""
    from model.embedding import EmbeddingRanker

    model = EmbeddingRanker(seed=0)
    nul = "bob" + chr(0)
    model.learn_many([WatchEvent(1.0, nul, "v1"), WatchEvent(2.0, "carol", "v1")])
    model.learn_many([WatchEvent(3.0, "carol", "v2")])
    model.learn_many([WatchEvent(4.0, "bob", "v2")])
    model.save(tmp_path / "m.npz")
    back = EmbeddingRanker.load(tmp_path / "m.npz")
    assert back.viewers.ids == model.viewers.ids
    assert back.recommend(nul).videos == model.recommend(nul).videos == ["v2"]
    assert back.recommend("bob").videos == model.recommend("bob").videos == ["v1"]


def test_one_long_id_does_not_widen_every_saved_id():
    ids = IdIndex()
    ids.add_many([f"viewer-{n:06d}" for n in range(10_000)] + ["x" * 256])
    saved = ids.to_arrays()
    assert sum(a.nbytes for a in saved.values()) < 10_001 * (13 + 8) + 256 + 100


def test_id_index_reads_ids_saved_before_they_were_packed():
    old = {"ids": np.array(["a", "", "c"]), "free": np.array([1], dtype=np.int64)}
    ids = IdIndex()
    ids.load_arrays(old)
    assert ids.ids == ["a", "", "c"] and ids.get("c") == 2 and ids.free_rows == [1]


def test_growable_table_doubles_and_keeps_rows():
    table = GrowableTable(dim=2, capacity=2, fill=1.0)
    table.ensure(2)
    table.array[1] = [5.0, 6.0]
    buffer_before = table.capacity
    assert table.ensure(3).tolist() == [[1.0, 1.0]]  # the new rows, holding the fill
    assert table.capacity == 2 * buffer_before
    assert table.array.tolist() == [[1.0, 1.0], [5.0, 6.0], [1.0, 1.0]]
    assert table.ensure(3).size == 0
    table.ensure(4)  # fits: no reallocation
    assert table.capacity == 4


@pytest.mark.parametrize(
    "rows, message",
    [
        (np.zeros((2, 3), dtype=np.float32), "expected float32 \\(n, 2\\)"),
        (np.zeros((2, 2), dtype=np.float64), "expected float32"),
        (np.array([[1.0, np.inf]], dtype=np.float32), "non-finite"),
    ],
)
def test_growable_table_refuses_malformed_rows(rows, message):
    with pytest.raises(ValueError, match=message):
        GrowableTable(dim=2).load_arrays({"rows": rows})


def test_growable_table_keeps_a_non_finite_fill_and_grows_after_loading():
    table = GrowableTable(dim=0, dtype=np.float64, fill=-np.inf)
    table.ensure(2)[0] = 7.0
    back = GrowableTable(dim=0, dtype=np.float64, fill=-np.inf)
    back.load_arrays(table.to_arrays())
    back.ensure(3)
    assert back.array.tolist() == [7.0, -np.inf, -np.inf]


def test_seen_lists_round_trip_and_refuse_malformed_arrays():
    seen = SeenVideos()
    seen.add_many(np.array([2, 0, 2]), np.array([5, 6, 7]))
    back = SeenVideos()
    back.load_arrays(seen.to_arrays())
    assert (back.of(0), back.of(1), back.of(2), back.max_video()) == ([6], [], [5, 7], 7)
    for bad in (
        {"indptr": np.array([0, 2]), "videos": np.array([1])},
        {"indptr": np.array([0, 1]), "videos": np.array([-3])},
    ):
        with pytest.raises(ValueError, match="seen"):
            SeenVideos().load_arrays(bad)


def test_components_pickle():
    import pickle

    from model.history import RecentHistory
    from model.lifecycle import Lifecycle

    history, life = RecentHistory(length=3), Lifecycle(viewer_ttl=5.0)
    history.ensure(2)
    life.observe(np.array([0]), np.array([0]), np.array([1.0]))
    for part in (history, life, GrowableTable(dim=2, fill=-1.0)):
        back = pickle.loads(pickle.dumps(part))
        assert {k: v.tolist() for k, v in back.to_arrays().items()} == {
            k: v.tolist() for k, v in part.to_arrays().items()
        }
