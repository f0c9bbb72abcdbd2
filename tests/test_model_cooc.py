"""The co-occurrence feature's fast batch path (model.cooc) computes the same sums as the plain one."""

import numpy as np
import pytest

from model.cooc import CoCounts
from model.history import RecentHistory, group_positions


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("terms", [1, 3, 12])
def test_batch_feature_equals_plain_feature(seed: int, terms: int) -> None:
    """On histories built by RecentHistory (bursts, new viewers, new videos, short groups)."""
    rng = np.random.default_rng(seed)
    videos_seen = 40
    cooc, recent = CoCounts(capacity=8), RecentHistory(length=max(terms, 4))
    nonzero = 0
    for _batch in range(5):
        size = int(rng.integers(1, 70))
        # Few viewers so groups are long (the band), a few singletons, and videos past the
        # counted rows (new in this batch: they must read as zero).
        viewers = rng.choice(rng.integers(0, 12, 4), size)
        videos = rng.integers(0, videos_seen + 5, size)
        recent.ensure(int(viewers.max()) + 1)
        items, hist_w, *final = recent.for_batch(viewers, videos, rng.random(size).astype(np.float32))
        mix = np.where(items >= 0, hist_w, 0.0).astype(np.float32)[:, :terms]
        history = items[:, :terms]
        n_cols = max(cooc.rows, int(videos.max()) + 1)
        order, _, within = group_positions(viewers)
        fast = cooc.batch_feature(
            history, mix, n_cols, 0.45, videos, order, within, block=int(rng.integers(1, 9))
        )
        plain = cooc.feature(history, mix, n_cols, 0.45)
        assert fast.shape == plain.shape == (size, n_cols)
        np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-6)
        # Some columns only, in any order (the shortlist path), including videos without counts.
        columns = rng.permutation(n_cols + 3)[: max(1, n_cols // 2)]
        padded = np.pad(plain, ((0, 0), (0, 3)))
        for part in (
            cooc.batch_feature(history, mix, n_cols, 0.45, videos, order, within, columns=columns),
            cooc.feature(history, mix, n_cols, 0.45, columns=columns),
        ):
            np.testing.assert_allclose(part, padded[:, columns], rtol=1e-5, atol=1e-6)
        nonzero += int(np.count_nonzero(plain))
        recent.store(*final)
        cooc.add(items, videos, window=terms)
        videos_seen += 5
    assert nonzero > 0  # the comparison was not vacuous
