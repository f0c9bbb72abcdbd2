"""The co-occurrence feature's compiled path (model.cooc.CoCounts.features) computes the same sums
as the plain numpy one (CoCounts.feature), and the compiled count update the same counts."""

import numpy as np
import pytest

from model.cooc import CoCounts
from model.history import RecentHistory


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("terms", [1, 3, 12])
def test_compiled_feature_equals_plain_feature(seed: int, terms: int) -> None:
    """On histories built by RecentHistory (bursts, new viewers, new videos, short groups)."""
    rng = np.random.default_rng(seed)
    videos_seen = 40
    cooc, recent = CoCounts(capacity=8), RecentHistory(length=max(terms, 4))
    nonzero = 0
    for _batch in range(5):
        size = int(rng.integers(1, 70))
        # Few viewers so groups are long, a few singletons, and videos past the counted rows
        # (new in this batch: they must read as zero).
        viewers = rng.choice(rng.integers(0, 12, 4), size)
        videos = rng.integers(0, videos_seen + 5, size)
        recent.ensure(int(viewers.max()) + 1)
        items, hist_w, *final = recent.for_batch(viewers, videos, rng.random(size).astype(np.float32))
        mix = np.where(items >= 0, hist_w, 0.0).astype(np.float32)
        n_cols = max(cooc.rows, int(videos.max()) + 1)
        plain = cooc.feature(items[:, :terms], mix[:, :terms], n_cols, 0.45)
        fast = cooc.features(items, mix, terms, 0.45, np.arange(n_cols))
        assert fast.shape == plain.shape == (size, n_cols)
        np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-6)
        # Some columns only, in any order (the shortlist path), including videos without counts.
        columns = rng.permutation(n_cols + 3)[: max(1, n_cols // 2)]
        padded = np.pad(plain, ((0, 0), (0, 3)))
        for part in (
            cooc.features(items, mix, terms, 0.45, columns),
            cooc.feature(items[:, :terms], mix[:, :terms], n_cols, 0.45, columns=columns),
        ):
            np.testing.assert_allclose(part, padded[:, columns], rtol=1e-5, atol=1e-6)
        nonzero += int(np.count_nonzero(plain))
        recent.store(*final)
        before = cooc.array.copy() if cooc.rows else np.zeros((0, 0), np.float32)
        cooc.add(items, videos, window=terms)
        np.testing.assert_array_equal(cooc.array, _added(before, items, videos, terms, cooc.rows))
        videos_seen += 5
    assert nonzero > 0  # the comparison was not vacuous


def _added(before: np.ndarray, history: np.ndarray, videos: np.ndarray, window: int, rows: int) -> np.ndarray:
    """The count update in plain numpy (the reference of model.compiled.cooc_add)."""
    out = np.zeros((rows, rows), dtype=np.float32)
    out[: before.shape[0], : before.shape[1]] = before
    h = history[:, :window]
    valid = (h >= 0) & (h != videos[:, None])
    j = h[valid]
    i = np.broadcast_to(videos[:, None], h.shape)[valid]
    np.add.at(out, (j, i), np.float32(1.0))
    np.add.at(out, (i, j), np.float32(1.0))
    return out
