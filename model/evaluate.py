"""Progressive (test-then-train) evaluation of a stream recommender.

For every event, in time order, the model is first asked what it would have recommended to
that viewer, then learns the event. The protocol, shared by ``streamrec evaluate``, the
benchmarks, the service's live metrics and the tests:

* an event is **evaluated** only when its viewer and its video were both seen earlier in the
  stream (otherwise it is counted as *cold* and only learned);
* the model recommends the top ``n`` (10) with the viewer's already-watched videos excluded;
* **HR@n** is 1 when the video is in that list; **NDCG@n** is ``1 / log2(rank + 2)`` for a
  0-based rank below ``n``, else 0; **MRR** is the mean of ``1 / (rank + 1)`` over the full
  ranking; **coverage** is the share of the videos seen so far that appeared in any list.

With ``batch_size > 1`` a batch is scored with the model state from *before* the batch (what
the model can know exactly inside the batch, such as the viewer's earlier watches for
exclusion, it uses), then learned in one go: this is how the service runs, one poll at a
time, and the report states the batch size.

>>> from model.baselines import MostPopular
>>> from contract.events import WatchEvent
>>> stream = [WatchEvent(t, v, i) for t, (v, i) in enumerate(
...     [("a", "x"), ("b", "x"), ("b", "y"), ("a", "y"), ("c", "x"), ("c", "y")])]
>>> report = evaluate(MostPopular(), stream)
>>> report.evaluated, report.hits, round(report.hr, 3)
(2, 2, 1.0)

"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from contract.events import WatchEvent
from model.base import Ranking, StreamRanker
from model.expiring import ExpiringDict, RecentIds
from model.lifecycle import EventClock
from model.topk import UNRANKED

__all__ = ["StreamingEvaluator", "BatchQuality", "EvalReport", "progressive_evaluate", "evaluate"]


@dataclass(frozen=True)
class BatchQuality:
    """Quality of one scored batch: the increments the live metrics add up."""

    events: int
    evaluated: int
    hits: int
    ndcg_sum: float
    rr_sum: float

    @property
    def cold(self) -> int:
        return self.events - self.evaluated


@dataclass
class EvalReport:
    """Running totals of a progressive evaluation (a snapshot; the final one is the result)."""

    model: str
    n: int
    batch_size: int
    events: int = 0
    evaluated: int = 0
    hits: int = 0
    ndcg_sum: float = 0.0
    rr_sum: float = 0.0
    coverage: float = 0.0
    window_hr: float = 0.0
    window_ndcg: float = 0.0
    elapsed_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def hr(self) -> float:
        return self.hits / self.evaluated if self.evaluated else 0.0

    @property
    def ndcg(self) -> float:
        return self.ndcg_sum / self.evaluated if self.evaluated else 0.0

    @property
    def mrr(self) -> float:
        return self.rr_sum / self.evaluated if self.evaluated else 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_json(self) -> dict:
        """The report in the documented JSON shape of ``streamrec evaluate --json``."""
        out = {
            "model": self.model,
            f"hr_at_{self.n}": self.hr,
            f"ndcg_at_{self.n}": self.ndcg,
            "mrr": self.mrr,
            "coverage": self.coverage,
            "evaluated": self.evaluated,
            "cold": self.events - self.evaluated,
            "events": self.events,
            "events_per_s": self.events_per_s,
            "batch_size": self.batch_size,
            "protocol": (
                "test-then-train; evaluated when viewer and video were seen before; "
                f"top-{self.n} excluding watched videos; "
                + (
                    "per event"
                    if self.batch_size == 1
                    else f"batches of {self.batch_size} scored with the state before the batch"
                )
            ),
        }
        out.update(self.extra)
        return out


class StreamingEvaluator:
    """Scores batches against the protocol and keeps the running totals.

    The service feeds it each poll's :class:`~model.base.Ranking`; the offline evaluator feeds
    it the same. It tracks which viewers and videos the stream has shown so far (to skip cold
    events) and a sliding window of the last ``window`` evaluated events.

    Those sets grow with every new id. A service facing endless new ids bounds them with
    ``id_ttl`` (seconds of event time; match the model's TTLs, so that an id the model has
    forgotten counts as cold again) and/or ``max_ids`` per set (least recently seen dropped
    first). Coverage then covers the videos recommended and seen in that recent past. Both
    ``None`` (the default) is the exact protocol above, which offline reports use.

    ``coverage=False`` leaves coverage out (``report.coverage`` is NaN): the service measures
    it on the lists it publishes (``consumer.metrics``), and tracking every ranked video of
    every batch again here cost it about half a microsecond per event and evaluator.

    The clock is the robust event-time clock of :mod:`model.lifecycle`, read once per batch.

    >>> ev = StreamingEvaluator("m", max_ids=2)  # "a" is forgotten when "c" and "d" come
    >>> [ev.warm_mask([WatchEvent(0.0, v, "x")]).tolist() for v in ("a", "b", "a", "c", "d", "a")]
    [[False], [False], [True], [False], [False], [False]]
    """

    def __init__(
        self,
        model_name: str,
        n: int = 10,
        batch_size: int = 1,
        window: int = 5000,
        id_ttl: float | None = None,
        max_ids: int | None = None,
        coverage: bool = True,
    ) -> None:
        self.n = n
        self.report = EvalReport(model=model_name, n=n, batch_size=batch_size)
        self.coverage = coverage
        if not coverage:
            self.report.coverage = math.nan
        self.bounded = id_ttl is not None or max_ids is not None
        self._clock = EventClock()
        self._viewers: set[str] | ExpiringDict | RecentIds = _ids_seen(id_ttl, max_ids)
        self._videos: set[str] | ExpiringDict | RecentIds = _ids_seen(id_ttl, max_ids)
        self._recommended: set[int] | ExpiringDict = ExpiringDict(id_ttl, max_ids) if self.bounded else set()
        # The window is a ring of the last ``window`` evaluated events' hits and gains: summed
        # with numpy per batch (a few µs), where ``math.fsum`` over deques cost 0.3 ms a batch.
        self._window = window
        self._window_hits = np.zeros(window, dtype=np.float64)
        self._window_gain = np.zeros(window, dtype=np.float64)
        self._window_len = 0
        self._window_pos = 0
        # 1/log2(rank+2) for ranks inside the list; precomputed once.
        self._gain = 1.0 / np.log2(np.arange(n) + 2.0)
        self._gain_at = np.append(self._gain, 0.0)  # by rank, capped at n: 0 outside the list
        #: Batches observed, and the warm mask of the last one (what a follower reads).
        self.batches = 0
        self.last_warm: np.ndarray | None = None
        self._leader: StreamingEvaluator | None = None

    def follow(self, leader: StreamingEvaluator) -> None:
        """Take the warm events from ``leader``, an evaluator with the same id bounds that
        observes the very same events first, batch by batch (the service's served model and
        its shadow baseline): the ids seen, their expiry and the clock are the leader's, and
        each batch's warm mask is the one the leader just computed, instead of touching a
        second copy of the same sets with the same ids. Results are those of an evaluator of
        its own; :meth:`observe` refuses a batch the leader has not observed just before.
        """
        if (self.bounded, self.n) != (leader.bounded, leader.n) or (
            self.bounded and not _same_bounds(self._viewers, leader._viewers)
        ):
            raise ValueError("a follower must count ids as its leader does (same n, id_ttl, max_ids)")
        if self.batches or self._viewers or self._videos:
            raise ValueError("only a fresh evaluator can follow another")
        self._leader = leader
        self._viewers, self._videos, self._clock = leader._viewers, leader._videos, leader._clock

    def warm_mask(self, events: Sequence[WatchEvent]) -> np.ndarray:
        """Which events are evaluable (viewer and video seen before), marking all as seen."""
        viewers, videos = self._viewers, self._videos
        warm = np.zeros(len(events), dtype=bool)
        if self.bounded:
            now = self._clock.advance(np.fromiter((e.timestamp for e in events), np.float64, len(events)))
            seen_viewer = viewers.touch_many([e.viewer for e in events], now)
            return videos.touch_many([e.video for e in events], now) & seen_viewer
        # Membership before the batch for all events at once, then the few ids new in this batch:
        # their later events in the same batch are warm (seen earlier in the stream).
        viewer_ids = [e.viewer for e in events]
        video_ids = [e.video for e in events]
        known_viewer = list(map(viewers.__contains__, viewer_ids))
        known_video = list(map(videos.__contains__, video_ids))
        for ids, known in ((viewer_ids, known_viewer), (video_ids, known_video)):
            if not all(known):
                fresh: set[str] = set()
                for i in [i for i, k in enumerate(known) if not k]:
                    known[i] = ids[i] in fresh
                    fresh.add(ids[i])
        viewers.update(viewer_ids)
        videos.update(video_ids)
        np.logical_and(known_viewer, known_video, out=warm)
        return warm

    def observe(self, events: Sequence[WatchEvent], ranking: Ranking) -> BatchQuality:
        """Add one scored batch to the totals and return its own quality."""
        leader = self._leader
        if leader is None:
            warm = self.warm_mask(events)
        elif (
            leader.batches == self.batches + 1
            and leader.last_warm is not None
            and len(leader.last_warm) == len(events)
        ):
            warm = leader.last_warm
        else:
            raise RuntimeError("a following evaluator observes each batch right after its leader")
        self.batches += 1
        self.last_warm = warm
        rank = ranking.rank[warm]
        in_list = rank < self.n
        hits = int(np.count_nonzero(in_list))
        gains = self._gain_at[np.minimum(rank, self.n)]  # 0 past the list
        rr = np.where(rank < UNRANKED, 1.0 / (rank + 1.0), 0.0)
        if self.coverage:
            self._cover(ranking.top[warm])
        self._extend_window(in_list, gains)

        quality = BatchQuality(
            events=len(events),
            evaluated=int(warm.sum()),
            hits=hits,
            ndcg_sum=float(gains.sum()),
            rr_sum=float(rr.sum()),
        )
        r = self.report
        r.events += quality.events
        r.evaluated += quality.evaluated
        r.hits += quality.hits
        r.ndcg_sum += quality.ndcg_sum
        r.rr_sum += quality.rr_sum
        if self._window_len:
            filled = self._window_len
            r.window_hr = float(self._window_hits[:filled].sum()) / filled
            r.window_ndcg = float(self._window_gain[:filled].sum()) / filled
        return quality

    def _cover(self, top: np.ndarray) -> None:
        """Count the videos of the batch's lists (``top``, rows) as recommended: coverage."""
        recommended = _distinct(top[top >= 0]).tolist()
        if self.bounded:
            recent, now = self._recommended, self._clock.now
            if recent.max_size is None:  # by age only: the same as touching each row in turn
                if recommended:
                    recent.touch_many(recommended, now)
            else:  # by count too: a row pushed out mid-batch comes back with this batch's time
                for row in recommended:
                    recent.touch(row, None, now)
        else:
            self._recommended.update(recommended)
        self.report.coverage = len(self._recommended) / max(1, len(self._videos))

    def _extend_window(self, hits: np.ndarray, gains: np.ndarray) -> None:
        """Append to the ring (oldest overwritten); filled slots are always ``[:window_len]``."""
        size, k = self._window, hits.shape[0]
        if size == 0 or k == 0:
            return
        if k >= size:
            hits, gains, k = hits[-size:], gains[-size:], size
        pos = self._window_pos
        first = min(k, size - pos)  # up to the end of the ring, the rest from its start
        self._window_hits[pos : pos + first], self._window_hits[: k - first] = hits[:first], hits[first:]
        self._window_gain[pos : pos + first], self._window_gain[: k - first] = gains[:first], gains[first:]
        self._window_pos = (pos + k) % size
        self._window_len = min(size, self._window_len + k)


def _ids_seen(ttl: float | None, max_size: int | None) -> set[str] | ExpiringDict | RecentIds:
    """The ids an evaluator has seen: all of them (``set``), those of the last ``ttl`` seconds
    (:class:`~model.expiring.RecentIds`), or with a count bound too, least recent out first."""
    if max_size is not None:
        return ExpiringDict(ttl, max_size)
    return set() if ttl is None else RecentIds(ttl)


def _same_bounds(a: ExpiringDict | RecentIds, b: ExpiringDict | RecentIds) -> bool:
    return (a.ttl, a.max_size) == (b.ttl, b.max_size)


def _distinct(rows: np.ndarray) -> np.ndarray:
    """Sorted distinct non-negative ``rows``: a mark array when that is cheaper than a sort.

    >>> _distinct(np.array([5, 1, 5, 0])).tolist()
    [0, 1, 5]
    """
    if rows.size == 0:
        return rows
    top = int(rows.max()) + 1
    if top > 64 * rows.size:  # a big catalogue and few rows: sorting is cheaper
        return np.unique(rows)
    mark = np.zeros(top, dtype=bool)
    mark[rows] = True
    return np.flatnonzero(mark)


def _batches(events: Iterable[WatchEvent], size: int) -> Iterator[list[WatchEvent]]:
    batch: list[WatchEvent] = []
    for e in events:
        batch.append(e)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def progressive_evaluate(
    model: StreamRanker,
    events: Iterable[WatchEvent],
    *,
    n: int = 10,
    batch_size: int = 1,
    step: int = 10_000,
    window: int = 5000,
) -> Iterator[EvalReport]:
    """Test-then-train over ``events``; yields the running report every ``step`` events and at the end.

    The same :class:`EvalReport` object is yielded each time (updated in place). Time spent
    producing ``events`` is not counted in ``elapsed_s``: only scoring, learning and bookkeeping.
    """
    evaluator = StreamingEvaluator(model.name, n=n, batch_size=batch_size, window=window)
    report = evaluator.report
    next_yield = step
    for batch in _batches(events, batch_size):
        start = time.perf_counter()
        evaluator.observe(batch, model.rank_and_learn(batch, n))
        report.elapsed_s += time.perf_counter() - start
        if report.events >= next_yield:
            next_yield += step
            yield report
    yield report


def evaluate(model: StreamRanker, events: Iterable[WatchEvent], **kwargs) -> EvalReport:
    """Run :func:`progressive_evaluate` to the end and return the final report."""
    *_, report = progressive_evaluate(model, events, **kwargs)
    return report


def report_dict(report: EvalReport) -> dict:
    """All fields of a report, for debugging and benchmarks."""
    return asdict(report) | {"hr": report.hr, "ndcg": report.ndcg, "mrr": report.mrr}
