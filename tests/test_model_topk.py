"""The fast top-n selection in model.topk agrees with a plain sort, including ties and -inf."""

import numpy as np
import pytest

from model.topk import UNRANKED, top_n, top_n_with_rank


def _reference(scores: np.ndarray, n: int) -> np.ndarray:
    """Best-first scores of each row by a full sort (the slow obvious way)."""
    best = -np.sort(-scores, axis=1)[:, :n]
    return np.pad(best, ((0, 0), (0, n - best.shape[1])), constant_values=-np.inf)


@pytest.mark.parametrize("items", [5, 50, 300, 1700])
@pytest.mark.parametrize("kind", ["normal", "ties", "excluded"])
def test_top_n_matches_full_sort(items: int, kind: str) -> None:
    rng = np.random.default_rng(items)
    scores = rng.standard_normal((64, items)).astype(np.float32)
    if kind == "ties":
        scores = np.round(scores).astype(np.float32)  # a handful of distinct values
    if kind == "excluded":
        scores[rng.random(scores.shape) < 0.9] = -np.inf
        scores[3] = -np.inf  # a row with nothing to recommend
        scores[4, :2] = np.nan
    expected = _reference(np.where(np.isfinite(scores), scores, -np.inf), 10)
    cols, best = top_n(scores.copy(), 10)
    np.testing.assert_array_equal(best, expected)
    finite = np.isfinite(best)
    assert (cols[finite] >= 0).all() and (cols[~finite] == -1).all()
    for r in range(scores.shape[0]):  # the columns really hold those scores, without repeats
        chosen = cols[r][cols[r] >= 0]
        assert len(set(chosen.tolist())) == chosen.size
        np.testing.assert_array_equal(scores[r, chosen], best[r][: chosen.size])


def test_rank_is_pessimistic_and_nan_is_never_a_hit() -> None:
    scores = np.array([[1.0, 1.0, 0.5, np.nan], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    _, rank = top_n_with_rank(scores, n=2, targets=np.array([3, 2]))
    assert rank.tolist() == [UNRANKED, 3]
