"""Most popular: recommend the videos watched most often so far.

The simplest baseline and the smallest :class:`~model.base.CatalogueScorer`: it only says how
it scores the catalogue; ranking, causal exclusion and top-n come from the base class, as they
do for every other model.

It runs for as long as the service does (it is the service's shadow baseline), so its memory is
bounded the same way as the main model's: a viewer or video not seen for its TTL (event time,
:mod:`model.lifecycle`) is released, and its row is reused by the next new id. It saves to and
loads from one ``.npz`` file like every model (:mod:`model.persist`), so a restarted service
resumes the baseline too.

>>> from contract.events import WatchEvent
>>> m = MostPopular()
>>> m.learn_many([WatchEvent(0, "a", "x"), WatchEvent(1, "b", "x"), WatchEvent(2, "b", "y")])
>>> m.recommend("c", n=2).videos, m.recommend("a", n=2).videos
(['x', 'y'], ['y'])

"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from contract.events import WatchEvent
from model.base import CatalogueScorer, ModelStats, Ranking
from model.baselines.rows import check_seen_rows, check_table_rows
from model.history import group_positions
from model.ids import GrowableTable, IdIndex
from model.lifecycle import DAY, Lifecycle
from model.parts import Counters
from model.persist import Part
from model.seen import SeenVideos, unknown_keyed
from model.topk import shared_top_n_with_rank

__all__ = ["MostPopular"]


class MostPopular(CatalogueScorer):
    """Counts of watches per video; the same list for everyone, minus what they watched.

    Parameters
    ----------
    viewer_ttl, video_ttl
        Seconds of event time after which an id not seen again is released (``None``: never),
        180 days by default as in :class:`~model.embedding.EmbeddingRanker`.
    expire_every
        Events between two expiry runs.
    """

    name = "most_popular"

    def __init__(
        self,
        viewer_ttl: float | None = 180 * DAY,
        video_ttl: float | None = 180 * DAY,
        expire_every: int = 1000,
    ) -> None:
        super().__init__(seed=None)
        self.viewer_ttl, self.video_ttl, self.expire_every = viewer_ttl, video_ttl, expire_every
        self._life = Lifecycle(viewer_ttl, video_ttl, expire_every)
        self.videos = IdIndex()
        self.viewers = IdIndex()
        self.seen = SeenVideos()
        self._counts = GrowableTable(dim=0, dtype=np.float64)
        self.events_learned = 0

    @property
    def clock(self) -> float | None:
        now = self._life.now
        return now if math.isfinite(now) else None

    def stats(self) -> ModelStats:
        # Per video its counts, per row a last-seen time (when ids expire); the seen lists.
        tables = [*self._video_tables().values(), self._life.viewers.table, self._life.videos.table]
        memory = sum(t.array.nbytes for t in tables) + self.seen.nbytes()
        return ModelStats(self.events_learned, self.viewers.live, self.videos.live, memory)

    def video_counts(self) -> np.ndarray:
        return self._counts.array

    def _video_tables(self) -> dict[str, GrowableTable]:
        """The tables with one row per video row, by part name (grown, reset and saved alike)."""
        return {"counts": self._counts}

    @property
    def expired(self) -> tuple[int, int]:
        """Viewers and videos released so far."""
        return self._life.expired_viewers, self._life.expired_videos

    def _video_scores(self) -> np.ndarray:
        return self._counts.array.astype(np.float32)

    def shared_scores(self) -> np.ndarray:
        scores = self._video_scores()
        if self.videos.free_rows:  # released rows hold no video: never recommended
            scores[np.asarray(self.videos.free_rows, dtype=np.int64)] = -np.inf
        return scores

    def viewer_scores(self, viewer_rows: np.ndarray) -> np.ndarray:
        return np.repeat(self.shared_scores()[None, :], len(viewer_rows), axis=0)

    def learn_many(self, events: Sequence[WatchEvent]) -> None:
        chunk = self._max_chunk
        if len(events) > chunk:
            for start in range(0, len(events), chunk):
                self.learn_many(events[start : start + chunk])
            return
        viewer_ids, video_ids = [e.viewer for e in events], [e.video for e in events]
        self._learn(
            events, viewer_ids, video_ids, self.viewers.get_many(viewer_ids), self.videos.get_many(video_ids)
        )

    def rank_and_learn(self, events: Sequence[WatchEvent], n: int = 10) -> Ranking:
        """:meth:`rank_events` then :meth:`learn_many`, each id looked up once for both (the
        service's shadow baseline runs this for every batch).

        >>> from contract.events import WatchEvent
        >>> m = MostPopular(); m.learn_many([WatchEvent(0, "a", "x"), WatchEvent(1, "a", "y")])
        >>> m.rank_and_learn([WatchEvent(2, "b", "y"), WatchEvent(3, "b", "x")], n=2).rank.tolist()
        [1, 0]
        """
        if len(events) > self._max_chunk or type(self).learn_many is not MostPopular.learn_many:
            return super().rank_and_learn(events, n)  # in chunks, or a subclass learns its own way
        viewer_ids, video_ids = [e.viewer for e in events], [e.video for e in events]
        viewer_rows, video_rows = self.viewers.get_many(viewer_ids), self.videos.get_many(video_ids)
        keys = unknown_keyed(viewer_rows.copy(), viewer_ids)
        grouping = group_positions(keys)  # the same groups as the rows learning gives them
        exclude = self.seen.exclusion_for_events(keys, video_rows, grouping)
        top, rank = shared_top_n_with_rank(self.shared_scores(), n, video_rows, exclude)
        ranking = Ranking(top=top, rank=rank, catalogue=self.videos.live)
        self._learn(events, viewer_ids, video_ids, viewer_rows, video_rows, grouping)
        return ranking

    def _learn(
        self,
        events: Sequence[WatchEvent],
        viewer_ids: list[str],
        video_ids: list[str],
        viewer_rows: np.ndarray,
        video_rows: np.ndarray,
        grouping: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Learn ``events``, whose ids' rows before the batch (``-1``: new) the caller looked up
        (and grouped by viewer, if it did: :func:`model.history.group_positions`)."""
        videos = self.videos.add_unknown(video_ids, video_rows)
        viewers = self.viewers.add_unknown(viewer_ids, viewer_rows)
        for table in self._video_tables().values():
            table.ensure(len(self.videos))
        self._count(videos)
        self.seen.add_many(viewers, videos, grouping)
        times = np.array([e.timestamp for e in events], dtype=np.float64)
        self._life.observe(viewers, videos, times, len(self.viewers), len(self.videos))
        self.events_learned += len(events)
        if self._life.due():
            self._expire()

    def _expire(self) -> None:
        viewers, videos = self._life.release(self.viewers, self.videos)
        self.seen.clear_rows(viewers.tolist())
        if videos.size:
            for table in self._video_tables().values():
                table.reset(videos)
            self.seen.discard_videos(videos)

    def _count(self, videos: np.ndarray) -> None:
        """Add the watches of ``videos`` (one row per event, in order) to the counts."""
        np.add.at(self._counts.array, videos, self._watch_weights(len(videos)))

    #: Most events one vectorised step takes (subclasses whose weights grow bound it).
    _max_chunk = 1 << 62

    def _watch_weights(self, n: int) -> np.ndarray | float:
        """What each of the next ``n`` watches adds to its video's count."""
        return 1.0

    # -- persistence (model.persist) -----------------------------------------------------------

    def _counters(self) -> tuple[str, ...]:
        """Scalar attributes saved with the model."""
        return ("events_learned",)

    def state_parts(self) -> dict[str, Part]:
        return {
            "viewers": self.viewers,
            "videos": self.videos,
            "seen": self.seen,
            **self._video_tables(),
            "lifecycle": self._life,
            "counters": Counters(self, self._counters()),
        }

    def check_state(self) -> None:
        check_table_rows(self._video_tables(), len(self.videos))
        check_seen_rows(self.seen, self.viewers, self.videos)
        self._life.check_rows(len(self.viewers), len(self.videos))
