"""The evaluator's sliding window and warm/cold bookkeeping, checked against a plain replay."""

from collections import deque

import numpy as np
import pytest

from contract.events import WatchEvent
from model.base import Ranking
from model.evaluate import StreamingEvaluator


@pytest.mark.parametrize("window", [1, 7, 50])
def test_window_and_warm_mask_match_a_plain_replay(window: int) -> None:
    rng = np.random.default_rng(window)
    ev = StreamingEvaluator("m", window=window)
    seen_viewers, seen_videos = set(), set()
    hits, gains = deque(maxlen=window), deque(maxlen=window)
    for _ in range(30):
        size = int(rng.integers(1, 12))
        batch = [WatchEvent(0.0, f"v{rng.integers(0, 15)}", f"i{rng.integers(0, 25)}") for _ in range(size)]
        rank = rng.integers(0, 20, size)
        ranking = Ranking(top=np.zeros((size, 10), dtype=np.int64), rank=rank, catalogue=25)
        expected_warm = []
        for e in batch:  # the protocol, one event at a time
            expected_warm.append(e.viewer in seen_viewers and e.video in seen_videos)
            seen_viewers.add(e.viewer)
            seen_videos.add(e.video)
        for r in rank[expected_warm]:
            hits.append(float(r < 10))
            gains.append(1.0 / np.log2(r + 2.0) if r < 10 else 0.0)
        quality = ev.observe(batch, ranking)
        assert quality.evaluated == sum(expected_warm)
        if hits:
            assert ev.report.window_hr == pytest.approx(sum(hits) / len(hits))
            assert ev.report.window_ndcg == pytest.approx(sum(gains) / len(gains))
    assert ev.report.evaluated > window  # the window wrapped around
