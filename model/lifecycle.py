"""Expirable ids: when each viewer and video was last seen, and which have been gone too long.

A stream of endless new ids (one-off visitors, uploads nobody watches again) would grow every
row-indexed table forever. As in Monolith (Liu et al. 2022, "expirable embeddings"), an id not
seen for ``ttl`` seconds is released: its row goes back on the :class:`~model.ids.IdIndex` free
list and the next new id takes it, so the tables stop growing once as many ids leave as arrive.

Time is **event time**: the clock is the largest event timestamp seen so far, never the wall
clock, so replaying a day of events in a minute expires exactly what the live day would have.
(An event stamped far in the future would move the clock and expire everyone; the intake is
where absurd timestamps are rejected.) Expiry is amortised: it runs once every ``every``
events, as one vectorised comparison over the last-seen array, never a per-event Python loop
over all ids.

>>> from model.ids import IdIndex
>>> viewers, videos = IdIndex(), IdIndex()
>>> life = Lifecycle(viewer_ttl=10.0, video_ttl=None, every=1)
>>> life.observe(viewers.add_many(["a", "b"]), videos.add_many(["x", "x"]), np.array([0.0, 8.0]))
>>> life.observe(viewers.add_many(["b"]), videos.add_many(["y"]), np.array([15.0]))
>>> life.due()
True
>>> old_viewers, old_videos = life.expired(viewers.live_mask(), videos.live_mask())
>>> old_viewers.tolist(), old_videos.tolist()         # "a" last seen at 0 < 15 - 10
([0], [])

"""

from __future__ import annotations

import math

import numpy as np

from model.ids import GrowableTable

__all__ = ["Lifecycle", "LastSeen"]

_EMPTY = np.zeros(0, dtype=np.int64)


class LastSeen:
    """The event time each row was last seen (``-inf`` for a row never seen)."""

    def __init__(self, capacity: int = 1024) -> None:
        self.table = GrowableTable(0, capacity, dtype=np.float64, init=lambda n: np.full(n, -np.inf))

    @property
    def array(self) -> np.ndarray:
        return self.table.array

    def touch(self, rows: np.ndarray, times: np.ndarray) -> None:
        """Row ``rows[i]`` was seen at ``times[i]`` (rows are created as needed)."""
        if rows.size == 0:
            return
        self.table.ensure(int(rows.max()) + 1)
        # maximum, not assignment: events inside a batch may be slightly out of order.
        np.maximum.at(self.table.array, rows, times)

    def older_than(self, cutoff: float, live: np.ndarray) -> np.ndarray:
        """Live rows last seen strictly before ``cutoff``."""
        n = min(self.table.rows, live.shape[0])
        return np.flatnonzero(live[:n] & (self.table.array[:n] < cutoff))

    def forget(self, rows: np.ndarray) -> None:
        """Released rows: a row reused later starts from "never seen"."""
        self.table.reset(rows[rows < self.table.rows])


class Lifecycle:
    """Event-time clock, last-seen times of viewers and videos, and when to expire them.

    Parameters
    ----------
    viewer_ttl, video_ttl
        Seconds of event time after which an id not seen is released; ``None``: never.
    every
        Events between two expiry runs. Expiry costs one comparison per row, so running it
        every few thousand events keeps it a negligible share of learning.

    The model calls :meth:`observe` for every learned batch, and when :meth:`due` asks for
    :meth:`expired` rows, which it releases and resets.
    """

    def __init__(
        self, viewer_ttl: float | None = None, video_ttl: float | None = None, every: int = 1000
    ) -> None:
        for name, ttl in (("viewer_ttl", viewer_ttl), ("video_ttl", video_ttl)):
            if ttl is not None and not (ttl > 0 and math.isfinite(ttl)):
                raise ValueError(f"{name} must be a positive number of seconds or None, got {ttl}")
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.viewer_ttl = viewer_ttl
        self.video_ttl = video_ttl
        self.every = every
        self.viewers = LastSeen()
        self.videos = LastSeen()
        #: The event-time clock: the largest timestamp observed.
        self.now = -math.inf
        #: Events observed since the last expiry run.
        self.since = 0
        #: Totals released so far (reported as metrics).
        self.expired_viewers = 0
        self.expired_videos = 0

    @property
    def enabled(self) -> bool:
        return self.viewer_ttl is not None or self.video_ttl is not None

    def observe(self, viewer_rows: np.ndarray, video_rows: np.ndarray, timestamps: np.ndarray) -> None:
        """A learned batch: its viewers and videos were seen at its events' timestamps."""
        if timestamps.size == 0:
            return
        times = np.asarray(timestamps, dtype=np.float64)
        finite = np.isfinite(times)
        if not finite.all():  # a NaN time would never expire; treat it as "now"
            times = np.where(finite, times, self.now if math.isfinite(self.now) else 0.0)
        self.now = max(self.now, float(times.max()))
        self.viewers.touch(np.asarray(viewer_rows, dtype=np.int64), times)
        self.videos.touch(np.asarray(video_rows, dtype=np.int64), times)
        self.since += int(times.size)

    def due(self) -> bool:
        """Whether an expiry run is due (never when no TTL is set)."""
        return self.enabled and self.since >= self.every

    def expired(self, viewer_live: np.ndarray, video_live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows to release now: live viewers and videos not seen for their TTL.

        ``*_live`` are the :meth:`~model.ids.IdIndex.live_mask` of each index. The caller
        releases the rows from its index, resets their state and calls :meth:`forget`.
        """
        self.since = 0
        viewers = (
            _EMPTY
            if self.viewer_ttl is None
            else self.viewers.older_than(self.now - self.viewer_ttl, viewer_live)
        )
        videos = (
            _EMPTY
            if self.video_ttl is None
            else self.videos.older_than(self.now - self.video_ttl, video_live)
        )
        return viewers, videos

    def forget(self, viewer_rows: np.ndarray, video_rows: np.ndarray) -> None:
        """Released rows start as "never seen" if reused; counts them."""
        self.viewers.forget(viewer_rows)
        self.videos.forget(video_rows)
        self.expired_viewers += int(viewer_rows.size)
        self.expired_videos += int(video_rows.size)

    # -- persistence -------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The state as plain arrays (no pickle); see :meth:`load_arrays`."""
        counters = [self.now, self.since, self.expired_viewers, self.expired_videos]
        return {
            "viewer_last_seen": self.viewers.array.copy(),
            "video_last_seen": self.videos.array.copy(),
            "counters": np.array(counters, dtype=np.float64),
        }

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        counters = arrays["counters"]
        if counters.shape != (4,):
            raise ValueError(f"lifecycle counters have shape {counters.shape}, expected (4,)")
        for key, last_seen in (("viewer_last_seen", self.viewers), ("video_last_seen", self.videos)):
            array = arrays[key]
            if array.ndim != 1 or np.isnan(array).any():
                raise ValueError(f"malformed {key}")
            last_seen.table.load(array)
        self.now = float(counters[0])
        self.since, self.expired_viewers, self.expired_videos = (int(c) for c in counters[1:])
