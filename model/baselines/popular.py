"""Most popular: recommend the videos watched most often so far.

The simplest baseline, and the reference implementation of the :class:`~model.base.StreamRanker`
contract: every other model ranks through the same ``top_n_with_rank`` kernel and the same
causal exclusion.

>>> from model.events import WatchEvent
>>> m = MostPopular()
>>> m.learn_many([WatchEvent(0, "a", "x"), WatchEvent(1, "b", "x"), WatchEvent(2, "b", "y")])
>>> m.recommend("c", n=2).videos, m.recommend("a", n=2).videos
(['x', 'y'], ['y'])

"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from model.base import Ranking, Recommendation, StreamRanker
from model.events import WatchEvent
from model.ids import GrowableTable, IdIndex
from model.seen import SeenVideos, viewer_keys
from model.topk import top_n, top_n_with_rank

__all__ = ["MostPopular"]


class MostPopular(StreamRanker):
    """Counts of watches per video; the same list for everyone, minus what they watched."""

    name = "most_popular"

    def __init__(self) -> None:
        super().__init__(seed=None)
        self.videos = IdIndex()
        self.viewers = IdIndex()
        self.seen = SeenVideos()
        self._counts = GrowableTable(dim=0, dtype=np.float64)

    def _video_scores(self) -> np.ndarray:
        return self._counts.array.astype(np.float32)

    def learn_many(self, events: Sequence[WatchEvent]) -> None:
        for e in events:
            video = self.videos.add(e.video)
            self._counts.ensure(len(self.videos))
            self._counts.array[video] += 1.0
            self.seen.add(self.viewers.add(e.viewer), video)

    def _scores(self, batch: int) -> np.ndarray:
        return np.repeat(self._video_scores()[None, :], batch, axis=0)

    def rank_events(self, events: Sequence[WatchEvent], n: int = 10) -> Ranking:
        targets = self.videos.get_many(e.video for e in events)
        exclude = self.seen.exclusion_for_events(viewer_keys(self.viewers, events), targets)
        top, rank = top_n_with_rank(self._scores(len(events)), n, targets, exclude)
        return Ranking(top=top, rank=rank, catalogue=len(self.videos))

    def recommend_many(
        self, viewers: Sequence[str], n: int = 10, exclude_seen: bool = True
    ) -> list[Recommendation]:
        rows = self.viewers.get_many(viewers)
        exclude = self.seen.exclusion_for_viewers(rows.tolist()) if exclude_seen else None
        cols, scores = top_n(self._scores(len(viewers)), n, exclude)
        ids = self.videos.ids
        return [
            Recommendation([ids[c] for c in row if c >= 0], s[row >= 0])
            for row, s in zip(cols, scores, strict=True)
        ]

    def score_videos(self, viewer: str, videos: Sequence[str]) -> np.ndarray:
        rows = self.videos.get_many(videos)
        scores = self._video_scores()
        out = np.full(len(rows), -np.inf, dtype=np.float32)
        out[rows >= 0] = scores[rows[rows >= 0]]
        return out
