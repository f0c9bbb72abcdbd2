"""Most popular: recommend the videos watched most often so far.

The simplest baseline and the smallest :class:`~model.base.CatalogueScorer`: it only says how
it scores the catalogue; ranking, causal exclusion and top-n come from the base class, as they
do for every other model.

It runs for as long as the service does (it is the service's shadow baseline), so its memory is
bounded the same way as the main model's: a viewer or video not seen for its TTL (event time,
:mod:`model.lifecycle`) is released, and its row is reused by the next new id. It saves to and
loads from one ``.npz`` file, so a restarted service resumes the baseline too.

>>> from contract.events import WatchEvent
>>> m = MostPopular()
>>> m.learn_many([WatchEvent(0, "a", "x"), WatchEvent(1, "b", "x"), WatchEvent(2, "b", "y")])
>>> m.recommend("c", n=2).videos, m.recommend("a", n=2).videos
(['x', 'y'], ['y'])

"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from contract.events import WatchEvent
from model.base import CatalogueScorer, ModelStats
from model.ids import GrowableTable, IdIndex
from model.lifecycle import DAY, Lifecycle
from model.npz import read_npz, write_npz
from model.seen import SeenVideos

__all__ = ["MostPopular"]

#: Format marker of the files :meth:`MostPopular.save` writes.
FORMAT = "streamrec.popular/1"


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
        # Per row: a count (8 bytes) and a last-seen time (8); per watch, its seen-list slot.
        rows = len(self.viewers) + len(self.videos)
        memory = 8 * len(self.videos) + 8 * rows + 36 * self.seen.entries()
        return ModelStats(self.events_learned, self.viewers.live, self.videos.live, memory)

    def video_counts(self) -> np.ndarray:
        return self._counts.array

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
        videos = self.videos.add_many(e.video for e in events)
        viewers = self.viewers.add_many(e.viewer for e in events)
        self._counts.ensure(len(self.videos))
        np.add.at(self._counts.array, videos, self._watch_weights(len(events)))
        self.seen.add_many(viewers, videos)
        times = np.fromiter((e.timestamp for e in events), dtype=np.float64, count=len(events))
        self._life.observe(viewers, videos, times)
        self.events_learned += len(events)
        if self._life.due():
            self._expire()

    def _expire(self) -> None:
        viewers, videos = self._life.release(self.viewers, self.videos)
        self.seen.clear_rows(viewers.tolist())
        if videos.size:
            self._counts.reset(videos)
            self.seen.discard_videos(videos)

    #: Most events one vectorised step takes (subclasses whose weights grow bound it).
    _max_chunk = 1 << 62

    def _watch_weights(self, n: int) -> np.ndarray | float:
        """What each of the next ``n`` watches adds to its video's count."""
        return 1.0

    # -- persistence -------------------------------------------------------------------------

    def _config(self) -> dict:
        return {"viewer_ttl": self.viewer_ttl, "video_ttl": self.video_ttl, "expire_every": self.expire_every}

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, state: dict) -> None:
        pass

    def save(self, path: str | Path) -> None:
        """Write the whole model to ``path`` (one ``.npz``, no pickle; written then renamed)."""
        path = Path(path)
        indptr, seen = self.seen.to_arrays()
        arrays = {
            "format": np.array(FORMAT),
            "model": np.array(self.name),
            "config": np.array(json.dumps(self._config())),
            "state": np.array(json.dumps(self._extra_state())),
            "viewer/ids": self.viewers.to_array(),
            "viewer/free": self.viewers.free_array(),
            "viewer/seen_indptr": indptr,
            "viewer/seen_videos": seen,
            "video/ids": self.videos.to_array(),
            "video/free": self.videos.free_array(),
            "video/counts": self._counts.array,
        }
        arrays |= {f"lifecycle/{k}": v for k, v in self._life.to_arrays().items()}
        write_npz(path, arrays)

    @classmethod
    def load(cls, path: str | Path) -> MostPopular:
        """Read a model :meth:`save` wrote; a foreign or damaged file raises ``ValueError``."""
        path = Path(path)

        def not_ours(why: str) -> ValueError:
            return ValueError(f"{path} is not a streamrec {cls.name} file: {why}")

        arrays = read_npz(path, not_ours)
        if str(arrays.get("format")) != FORMAT or str(arrays.get("model")) != cls.name:
            raise not_ours(f"format {str(arrays.get('format'))!r} of {str(arrays.get('model'))!r}")
        try:
            model = cls(**json.loads(str(arrays["config"])))
            model.viewers = IdIndex.from_array(arrays["viewer/ids"], arrays["viewer/free"])
            model.videos = IdIndex.from_array(arrays["video/ids"], arrays["video/free"])
            model.seen = SeenVideos.from_arrays(arrays["viewer/seen_indptr"], arrays["viewer/seen_videos"])
            counts = arrays["video/counts"]
            if counts.shape != (len(model.videos),) or not np.isfinite(counts).all():
                raise ValueError(f"counts have shape {counts.shape}, expected ({len(model.videos)},)")
            if len(model.seen) > len(model.viewers):
                raise ValueError("seen lists for unknown viewers")
            model._counts.load(counts)
            life = {k.removeprefix("lifecycle/"): v for k, v in arrays.items() if k.startswith("lifecycle/")}
            model._life.load_arrays(life)
            model._load_extra_state(json.loads(str(arrays["state"])))
        except (KeyError, ValueError, TypeError, IndexError, json.JSONDecodeError) as err:
            raise not_ours(f"damaged content ({type(err).__name__}: {err})") from None
        return model
