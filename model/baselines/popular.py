"""Most popular: recommend the videos watched most often so far.

The simplest baseline and the smallest :class:`~model.base.CatalogueScorer`: it only says how
it scores the catalogue; ranking, causal exclusion and top-n come from the base class, as they
do for every other model.

>>> from model.events import WatchEvent
>>> m = MostPopular()
>>> m.learn_many([WatchEvent(0, "a", "x"), WatchEvent(1, "b", "x"), WatchEvent(2, "b", "y")])
>>> m.recommend("c", n=2).videos, m.recommend("a", n=2).videos
(['x', 'y'], ['y'])

"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from model.base import CatalogueScorer
from model.events import WatchEvent
from model.ids import GrowableTable, IdIndex
from model.seen import SeenVideos

__all__ = ["MostPopular"]


class MostPopular(CatalogueScorer):
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

    def shared_scores(self) -> np.ndarray:
        return self._video_scores()

    def viewer_scores(self, viewer_rows: np.ndarray) -> np.ndarray:
        return np.repeat(self._video_scores()[None, :], len(viewer_rows), axis=0)

    def learn_many(self, events: Sequence[WatchEvent]) -> None:
        chunk = self._max_chunk
        if len(events) > chunk:
            for start in range(0, len(events), chunk):
                self.learn_many(events[start : start + chunk])
            return
        videos = self.videos.add_many(e.video for e in events)
        viewers = self.viewers.add_many(e.viewer for e in events)
        self._counts.ensure(len(self.videos))
        np.add.at(self._counts.array, videos, self._watch_weights(len(events)))
        self.seen.add_many(viewers, videos)

    #: Most events one vectorised step takes (subclasses whose weights grow bound it).
    _max_chunk = 1 << 62

    def _watch_weights(self, n: int) -> np.ndarray | float:
        """What each of the next ``n`` watches adds to its video's count."""
        return 1.0
