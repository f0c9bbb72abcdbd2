"""A seeded synthetic watch stream with structure a recommender can learn.

The project ships no data (MovieLens may not be redistributed), so this stream is the default
demo and load-test source. It plants the structure real watch logs have, so that a learning
model has something to find and popularity alone is a weak answer:

* **latent tastes**: ``clusters`` topics; each video belongs to one; each viewer has a taste
  vector over topics (a sparse Dirichlet draw: one or two topics dominate). A watch picks a
  topic from the viewer's taste, then a video of that topic. The watch matrix is therefore of
  low rank, which is what viewer and video embeddings learn;
* **Zipf-like popularity**: inside a topic videos are picked in proportion to a Zipf weight
  (exponent ``zipf``), and a share ``popular_share`` of watches ignores taste altogether and
  follows global popularity (what a trending shelf produces); a share ``stray_share`` are
  stray clicks on anything at all;
* **sessions**: viewers come back in sessions of a few videos in a row; consecutive videos of a
  session stay on the same topic with probability ``stickiness`` (bursts);
* **arrivals**: a share of viewers and videos appears only part-way through the stream, and a
  fresh video is picked more often for a while (``fresh_share``);
* **taste drift**: a viewer's taste moves toward a topic of its own, by ``1 - exp(-dt / drift_days)``
  of the way over ``dt`` days, so last month's profile is somewhat stale;
* **watch time**: every video has a duration; the fraction watched is high when the video's
  topic matches the viewer's taste and low otherwise (a popular off-taste video is abandoned
  early), so weighting by watch time separates liking from clicking.

The stream is a plain iterator of :class:`~contract.events.WatchEvent` in timestamp order; the
same seed gives the same events, and iterating twice gives the same events twice.

>>> stream = SyntheticStream(viewers=50, videos=80, events=500, seed=7)
>>> events = list(stream)
>>> len(events), events == list(SyntheticStream(viewers=50, videos=80, events=500, seed=7))
(500, True)
>>> all(a.timestamp <= b.timestamp for a, b in zip(events, events[1:]))
True
>>> all(0 <= e.watch_time <= e.duration for e in events)
True

"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from contract.events import WatchEvent

__all__ = ["SyntheticStream", "synth_events", "DEFAULT_START"]

#: 2024-01-01T00:00:00Z: a plausible present-day start for demo timestamps.
DEFAULT_START = 1704067200.0

_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))


def _youtube_like_ids(rng: np.random.Generator, n: int, length: int, prefix: str = "") -> list[str]:
    """``n`` distinct random ids over YouTube's base64url alphabet (``WK_Nr4tUtl8``-like)."""
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < n:
        for row in rng.integers(0, 64, size=(n - len(ids), length)):
            id_ = prefix + "".join(_ALPHABET[row])
            if id_ not in seen:  # a collision needs 64**11 luck, but ids must be unique
                seen.add(id_)
                ids.append(id_)
    return ids


@dataclass
class _Session:
    viewer: int
    left: int
    topic: int


class SyntheticStream:
    """The generator's world (viewers, videos, tastes) and its event stream.

    Parameters
    ----------
    viewers, videos, events
        Population sizes and stream length.
    seed
        Drives all randomness: the world and the stream.
    start
        Timestamp of the first session (Unix seconds).
    span_days
        Roughly how many days the stream covers (sessions start uniformly at random in time).
    clusters
        Number of latent topics.
    zipf
        Exponent of the Zipf popularity law (0 gives uniform popularity).
    popular_share
        Share of watches that follow global popularity instead of taste.
    stray_share
        Share of watches that are stray clicks: any available video, uniformly, mostly abandoned
        early (autoplay, a misleading thumbnail). They are noise for what a viewer likes.
    stickiness
        Probability that the next video of a session stays on the session's topic.
    session_mean
        Mean number of videos per session.
    new_viewer_share, new_video_share
        Shares of viewers and videos that arrive during the stream instead of at its start.
    fresh_share
        Share of taste-driven watches that go to one of the newest videos of the topic.
    drift_days
        Time constant of taste drift, in days (``0`` or ``inf``: no drift).
    taste_alpha
        Dirichlet concentration of tastes: smaller means viewers keep to fewer topics.

    Attributes
    ----------
    viewer_ids, video_ids
        The ids, as they appear in events.
    video_topic
        ``(videos,)`` topic of each video.
    taste
        ``(viewers, clusters)`` initial taste of each viewer (rows sum to 1).
    """

    def __init__(
        self,
        viewers: int = 2000,
        videos: int = 5000,
        events: int = 100_000,
        seed: int = 0,
        *,
        start: float = DEFAULT_START,
        span_days: float = 30.0,
        clusters: int = 20,
        zipf: float = 1.0,
        popular_share: float = 0.15,
        stray_share: float = 0.1,
        stickiness: float = 0.7,
        session_mean: float = 6.0,
        new_viewer_share: float = 0.3,
        new_video_share: float = 0.2,
        fresh_share: float = 0.15,
        drift_days: float = 90.0,
        taste_alpha: float = 0.05,
    ) -> None:
        if viewers < 1 or videos < 1 or events < 0:
            raise ValueError("viewers and videos must be >= 1 and events >= 0")
        if clusters < 1:
            raise ValueError("clusters must be >= 1")
        for name, share in [
            ("popular_share", popular_share),
            ("stray_share", stray_share),
            ("popular_share + stray_share", popular_share + stray_share),
            ("stickiness", stickiness),
            ("new_viewer_share", new_viewer_share),
            ("new_video_share", new_video_share),
            ("fresh_share", fresh_share),
        ]:
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {share}")
        if session_mean < 1:
            raise ValueError("session_mean must be >= 1")
        if drift_days < 0:
            raise ValueError("drift_days must be >= 0")
        self.viewers, self.videos, self.events, self.seed = viewers, videos, events, seed
        self.start, self.span_days, self.clusters, self.zipf = start, span_days, clusters, zipf
        self.popular_share, self.stickiness, self.session_mean = popular_share, stickiness, session_mean
        self.stray_share = stray_share
        self.new_viewer_share, self.new_video_share = new_viewer_share, new_video_share
        self.fresh_share, self.drift_days, self.taste_alpha = fresh_share, drift_days, taste_alpha
        self._build_world(np.random.default_rng([seed, 0]))

    # -- the world: who exists, who likes what ------------------------------------------------

    def _build_world(self, rng: np.random.Generator) -> None:
        k = self.clusters
        self.viewer_ids = _youtube_like_ids(rng, self.viewers, 22, prefix="UC")
        self.video_ids = _youtube_like_ids(rng, self.videos, 11)

        # Viewers: a sparse taste over topics (mostly one or two), an activity level (a few heavy
        # viewers, many light ones), a topic their taste drifts toward, and the point of the stream
        # (0..1) where they join. Sorting by arrival makes "who has joined" a prefix of the arrays.
        self.taste = rng.dirichlet(np.full(k, self.taste_alpha), size=self.viewers)
        self.activity = rng.lognormal(0.0, 1.0, size=self.viewers)
        self.drift_topic = rng.integers(0, k, size=self.viewers)
        late = rng.random(self.viewers) < self.new_viewer_share
        self.viewer_arrival = np.where(late, rng.random(self.viewers), 0.0)
        self._viewer_order = np.argsort(self.viewer_arrival, kind="stable")
        self._viewer_cum = np.cumsum(self.activity[self._viewer_order])
        self._viewer_arrival_sorted = self.viewer_arrival[self._viewer_order]

        # Videos: a topic, a Zipf popularity weight (random rank, so popularity is independent
        # of topic), a duration (median 8 minutes), an arrival point.
        self.video_topic = rng.integers(0, k, size=self.videos)
        rank = rng.permutation(self.videos) + 1
        self.popularity = 1.0 / rank.astype(np.float64) ** self.zipf
        self.duration = np.clip(rng.lognormal(np.log(480.0), 0.8, size=self.videos), 30.0, 4 * 3600.0).round()
        late = rng.random(self.videos) < self.new_video_share
        self.video_arrival = np.where(late, rng.random(self.videos), 0.0)

        # Per topic, and globally: videos in arrival order with cumulative popularity, so the
        # videos available at progress p are a prefix found by one binary search.
        def shelf(members: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            order = members[np.argsort(self.video_arrival[members], kind="stable")]
            return order, np.cumsum(self.popularity[order]), self.video_arrival[order]

        self._topic_shelf = [shelf(np.flatnonzero(self.video_topic == t)) for t in range(k)]
        self._global_shelf = shelf(np.arange(self.videos))

    # -- the stream ----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[WatchEvent]:
        return self._stream(np.random.default_rng([self.seed, 1]))

    def __len__(self) -> int:
        return self.events

    def _pick(self, rng: np.random.Generator, shelf, progress: float, how: str = "popular") -> int:
        """A video of ``shelf`` available at ``progress``: by popularity, among the newest, or any."""
        order, cum, arrival = shelf
        available = int(np.searchsorted(arrival, progress, side="right"))
        if available == 0:
            return -1
        if how == "fresh":
            # One of the ten newest arrivals: new uploads get a burst of attention.
            return int(order[available - 1 - rng.integers(0, min(10, available))])
        if how == "any":
            return int(order[rng.integers(0, available)])
        return int(order[np.searchsorted(cum[:available], rng.random() * cum[available - 1], side="right")])

    def _stream(self, rng: np.random.Generator) -> Iterator[WatchEvent]:
        total = self.events
        if total == 0:
            return
        taste = self.taste.copy()
        cum_taste = np.cumsum(taste, axis=1)
        seen: list[set[int]] = [set() for _ in range(self.viewers)]
        busy = np.zeros(self.viewers, dtype=bool)  # in a session now: one screen per viewer
        last_session = np.full(self.viewers, self.start)
        drift_seconds = self.drift_days * 86400.0 if 0 < self.drift_days < float("inf") else 0.0
        sessions_expected = total / self.session_mean
        session_gap = self.span_days * 86400.0 / sessions_expected
        next_start = self.start
        active: list[tuple[float, int, _Session]] = []  # (time of its next watch, tie-break, session)
        counter = 0
        emitted = 0

        while emitted < total:
            progress = emitted / total
            if not active or next_start <= active[0][0]:
                now_start = next_start
                # A session starts: a viewer who has joined by now, weighted by activity.
                joined = max(1, int(np.searchsorted(self._viewer_arrival_sorted, progress, side="right")))
                cum = self._viewer_cum
                viewer = int(
                    self._viewer_order[np.searchsorted(cum[:joined], rng.random() * cum[joined - 1], "right")]
                )
                next_start += rng.exponential(session_gap)
                if busy[viewer]:
                    continue  # already watching something: this visit is the session going on
                busy[viewer] = True
                if drift_seconds:
                    step = -np.expm1(-(next_start - last_session[viewer]) / drift_seconds)
                    taste[viewer] *= 1.0 - step
                    taste[viewer, self.drift_topic[viewer]] += step
                    cum_taste[viewer] = np.cumsum(taste[viewer])
                    last_session[viewer] = next_start
                length = int(rng.geometric(1.0 / self.session_mean))  # >= 1, mean session_mean
                topic = int(np.searchsorted(cum_taste[viewer], rng.random() * cum_taste[viewer, -1], "right"))
                counter += 1
                heapq.heappush(active, (now_start, counter, _Session(viewer, length, topic)))
                continue

            now, _, session = heapq.heappop(active)
            viewer = session.viewer
            if rng.random() >= self.stickiness:
                session.topic = int(
                    np.searchsorted(cum_taste[viewer], rng.random() * cum_taste[viewer, -1], "right")
                )
            # The trending shelf, a stray click on anything, or the session's topic (a fresh
            # upload or by popularity).
            draw = rng.random()
            if draw < self.popular_share:
                shelf, how = self._global_shelf, "popular"
            elif draw < self.popular_share + self.stray_share:
                shelf, how = self._global_shelf, "any"
            else:
                shelf = self._topic_shelf[session.topic]
                how = "fresh" if rng.random() < self.fresh_share else "popular"
            video = -1
            # Avoid re-watches (no recommender should be asked to predict them): a few tries on
            # the chosen shelf, then on the trending one; a re-watch only if all are seen.
            for attempt in range(48):
                if attempt == 32:
                    shelf, how = self._global_shelf, "popular"
                candidate = self._pick(rng, shelf, progress, how)
                if how == "fresh":
                    how = "popular"  # the newest are few: look further on the same shelf
                if candidate >= 0:
                    video = candidate
                    if candidate not in seen[viewer]:
                        break
            if video < 0:  # nothing has arrived yet on either shelf
                video = self._pick(rng, self._global_shelf, 1.0)
            seen[viewer].add(video)

            # Watch fraction: mean 0.15 off-taste up to 0.9 on the viewer's favourite topic.
            affinity = taste[viewer, self.video_topic[video]] / taste[viewer].max()
            mean = 0.15 + 0.75 * affinity
            fraction = rng.beta(6.0 * mean, 6.0 * (1.0 - mean))
            duration = float(self.duration[video])
            watch_time = float(round(fraction * duration))
            emitted += 1
            yield WatchEvent(
                timestamp=float(round(now, 3)),
                viewer=self.viewer_ids[viewer],
                video=self.video_ids[video],
                watch_time=watch_time,
                duration=duration,
            )
            session.left -= 1
            busy[viewer] = session.left > 0
            if session.left > 0:
                # The next video starts after this one (as far as it was watched) plus a pause.
                counter += 1
                heapq.heappush(active, (now + watch_time + rng.exponential(20.0), counter, session))


def synth_events(
    viewers: int = 2000, videos: int = 5000, events: int = 100_000, seed: int = 0, **kwargs
) -> Iterator[WatchEvent]:
    """The events of a :class:`SyntheticStream` (same parameters).

    >>> [e.viewer[:2] for e in synth_events(viewers=3, videos=5, events=2, seed=1)]
    ['UC', 'UC']
    """
    return iter(SyntheticStream(viewers, videos, events, seed, **kwargs))
