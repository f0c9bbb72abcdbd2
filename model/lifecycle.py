"""Expirable ids: when each viewer and video was last seen, and which have been gone too long.

A stream of endless new ids (one-off visitors, uploads nobody watches again) would grow every
row-indexed table forever. As in Monolith (Liu et al. 2022, "expirable embeddings"), an id not
seen for ``ttl`` seconds is released: its row goes back on the :class:`~model.ids.IdIndex` free
list and the next new id takes it, so the tables stop growing once as many ids leave as arrive.

Time is **event time**, never the wall clock, so replaying a day of events in a minute expires
exactly what the live day would have. The clock (:class:`EventClock`) is robust: it is the
``tolerate + 1``-th largest of the last ``window`` timestamps, never going back, so a few
events stamped far in the future (the wire format accepts anything up to 2100) cannot move it
and expire everyone; the price is a lag of about ``tolerate`` events behind the newest
timestamp. The ids of a learned batch are stamped with the clock, not with their own
timestamps: in a stream in time order that is the same to within a batch, and a wrong
timestamp can neither pin an id for decades (far future) nor have it expire as soon as it is
learned (far past; a replay of old data into a model whose clock is already later learns
normally, and simply expires nothing until its timestamps catch up). Expiry is amortised: it
runs once every ``every`` events, as one vectorised comparison over the last-seen array, never
a per-event Python loop over all ids.

>>> from model.ids import IdIndex
>>> viewers, videos = IdIndex(), IdIndex()
>>> life = Lifecycle(viewer_ttl=10.0, video_ttl=None, every=1, tolerate=0)
>>> life.observe(viewers.add_many(["a"]), videos.add_many(["x"]), np.array([0.0]))
>>> life.observe(viewers.add_many(["b", "b"]), videos.add_many(["x", "y"]), np.array([8.0, 15.0]))
>>> life.due()
True
>>> old_viewers, old_videos = life.expired(viewers.live_mask(), videos.live_mask())
>>> old_viewers.tolist(), old_videos.tolist()         # "a" last seen at 0 < 15 - 10
([0], [])

"""

from __future__ import annotations

import math

import numpy as np

from model.ids import GrowableTable, IdIndex

__all__ = ["Lifecycle", "LastSeen", "EventClock", "DAY"]

#: Seconds in a day: TTLs are seconds of event time.
DAY = 86_400.0

_EMPTY = np.zeros(0, dtype=np.int64)


class EventClock:
    """Event time that a few wrong timestamps cannot move.

    ``now`` is the ``tolerate + 1``-th largest of the last ``window`` finite timestamps
    (``tolerate=0``: the largest), and never goes back. Until more than ``tolerate`` have been
    seen it is the smallest one seen; before any, ``-inf``.

    >>> clock = EventClock(window=8, tolerate=1)
    >>> clock.advance(np.array([10.0, 11.0, 4e9, 12.0]))   # one event from the year 2096
    12.0
    >>> clock.advance(np.array([5.0]))                    # never goes back
    12.0
    """

    def __init__(self, window: int = 256, tolerate: int = 15) -> None:
        if not 0 <= tolerate < window:
            raise ValueError(f"tolerate must be in [0, window), got {tolerate} for window {window}")
        self.window = window
        self.tolerate = tolerate
        self._ring = np.full(window, -np.inf, dtype=np.float64)
        self._pos = 0
        self._filled = 0
        self.now = -math.inf

    def advance(self, timestamps: np.ndarray) -> float:
        """Take a batch of timestamps (in stream order) into account; returns the clock."""
        t = np.asarray(timestamps, dtype=np.float64)
        t = t[np.isfinite(t)][-self.window :]
        if t.size:
            idx = (self._pos + np.arange(t.size)) % self.window
            self._ring[idx] = t
            self._pos = int((self._pos + t.size) % self.window)
            self._filled = min(self.window, self._filled + t.size)
            # The ring fills from slot 0 and then wraps, so its first ``filled`` slots are data.
            filled = self._ring[: self._filled]
            k = max(0, self._filled - 1 - self.tolerate)
            self.now = max(self.now, float(np.partition(filled, k)[k]))
        return self.now

    def to_array(self) -> np.ndarray:
        """``[now, pos, filled, ring...]`` for saving; see :meth:`load_array`."""
        return np.concatenate([[self.now, self._pos, self._filled], self._ring])

    def load_array(self, array: np.ndarray) -> None:
        """Restore what :meth:`to_array` wrote; ``ValueError`` if it is malformed."""
        if array.shape != (3 + self.window,) or array.dtype != np.float64:
            raise ValueError(
                f"event clock is {array.dtype} {array.shape}, expected float64 {(3 + self.window,)}"
            )
        now, pos, filled = array[:3].tolist()
        if not (
            0 <= pos < self.window and 0 <= filled <= self.window and pos.is_integer() and filled.is_integer()
        ):
            raise ValueError("event clock's ring position is out of range")
        if np.isnan(array).any() or now == math.inf or np.isposinf(array[3:]).any():
            raise ValueError("event clock holds NaN or +inf")
        self.now, self._pos, self._filled = now, int(pos), int(filled)
        self._ring[:] = array[3:]


class LastSeen:
    """The event time each row was last seen (``-inf`` for a row never seen)."""

    def __init__(self, capacity: int = 1024) -> None:
        self.table = GrowableTable(0, capacity, dtype=np.float64, fill=-np.inf)

    @property
    def array(self) -> np.ndarray:
        return self.table.array

    def touch(self, rows: np.ndarray, now: float) -> None:
        """``rows`` were seen at ``now`` (rows are created as needed; the clock never goes back)."""
        if rows.size == 0:
            return
        self.table.ensure(int(rows.max()) + 1)
        self.table.array[rows] = now

    def touch_unseen(self, rows: int, now: float) -> None:
        """Of the first ``rows`` rows, those never seen are seen at ``now``."""
        if rows <= 0:
            return
        self.table.ensure(rows)
        head = self.table.array[:rows]
        head[head == -np.inf] = now

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
    tolerate
        Wrong timestamps (far in the future) among the last 256 that the clock ignores; see
        :class:`EventClock`.

    The model calls :meth:`observe` for every learned batch, and when :meth:`due` asks for
    :meth:`expired` rows, which it releases and resets.
    """

    def __init__(
        self,
        viewer_ttl: float | None = None,
        video_ttl: float | None = None,
        every: int = 1000,
        tolerate: int = 15,
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
        self.clock = EventClock(tolerate=tolerate)
        #: Events observed since the last expiry run.
        self.since = 0
        #: Totals released so far (reported as metrics).
        self.expired_viewers = 0
        self.expired_videos = 0

    @property
    def now(self) -> float:
        """The event-time clock (``-inf`` before the first event)."""
        return self.clock.now

    @property
    def enabled(self) -> bool:
        return self.viewer_ttl is not None or self.video_ttl is not None

    def observe(
        self,
        viewer_rows: np.ndarray,
        video_rows: np.ndarray,
        timestamps: np.ndarray,
        n_viewers: int = 0,
        n_videos: int = 0,
    ) -> None:
        """A learned batch: the clock takes its timestamps, and its viewers and videos are seen now.

        ``n_viewers`` and ``n_videos``: the rows that exist. Those made before the clock started
        (a peer's videos applied, viewers handed over, before this model's first event) are
        seen when it starts: never seen, they would all look idle since 1970 and go at the
        first expiry run.
        """
        times = np.asarray(timestamps, dtype=np.float64)
        if times.size == 0:
            return
        started = math.isfinite(self.clock.now)
        now = self.clock.advance(times)
        # The clock runs even with no TTL (it is cheap, and others read it); last-seen times
        # are only kept when something can expire. now is -inf only before any finite timestamp.
        if self.enabled and math.isfinite(now):
            if not started:
                self.viewers.touch_unseen(n_viewers, now)
                self.videos.touch_unseen(n_videos, now)
            self.viewers.touch(np.asarray(viewer_rows, dtype=np.int64), now)
            self.videos.touch(np.asarray(video_rows, dtype=np.int64), now)
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

    def release(self, viewers: IdIndex, videos: IdIndex) -> tuple[np.ndarray, np.ndarray]:
        """One expiry run: remove the expired ids from ``viewers`` and ``videos`` and return
        the rows released, whose state the model must now reset."""
        old_viewers, old_videos = self.expired(viewers.live_mask(), videos.live_mask())
        released = viewers.remove_rows(old_viewers), videos.remove_rows(old_videos)
        self.forget(*released)
        return released

    def forget(self, viewer_rows: np.ndarray, video_rows: np.ndarray) -> None:
        """Released rows start as "never seen" if reused; counts them."""
        self.viewers.forget(viewer_rows)
        self.videos.forget(video_rows)
        self.expired_viewers += int(viewer_rows.size)
        self.expired_videos += int(video_rows.size)

    # -- persistence -------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The state as plain arrays (no pickle); see :meth:`load_arrays`."""
        counters = [self.since, self.expired_viewers, self.expired_videos]
        return {
            "viewer_last_seen": self.viewers.array.copy(),
            "video_last_seen": self.videos.array.copy(),
            "clock": self.clock.to_array(),
            "counters": np.array(counters, dtype=np.int64),
        }

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`to_arrays` wrote, in place; ``ValueError`` if it is malformed.

        Whether the rows exist is the model's to check (:meth:`check_rows`)."""
        counters = arrays["counters"]
        if counters.shape != (3,) or counters.dtype.kind not in "iu" or counters.min() < 0:
            raise ValueError(f"lifecycle counters must be 3 non-negative integers, got {counters!r}")
        for key, last_seen in (("viewer_last_seen", self.viewers), ("video_last_seen", self.videos)):
            last_seen.table.load_arrays({"rows": arrays[key]})
        self.clock.load_array(arrays["clock"])
        self.since, self.expired_viewers, self.expired_videos = counters.tolist()

    def check_rows(self, viewer_rows: int, video_rows: int) -> None:
        """``ValueError`` when last-seen times cover more rows than the id indexes hold."""
        for side, last_seen, rows in (
            ("viewer", self.viewers, viewer_rows),
            ("video", self.videos, video_rows),
        ):
            if last_seen.table.rows > rows:
                raise ValueError(
                    f"last-seen times for {last_seen.table.rows} {side} rows, but {rows} rows exist"
                )
