"""streamrec's default model: online embeddings whose viewer side is built from recent watches.

The score of video ``i`` for a viewer whose last watches are ``h_0, h_1, ...`` (most recent
first) is

    s(i) = (sum_a m_a q_{h_a}) . e_i + b_i + alpha * f(i)

* ``m_a``: mixing weights proportional to ``recency ** a`` times the watch weight of that watch
  (:func:`model.weighting.watch_weights`), normalised to sum to 1;
* ``q``: *transition* vectors (what watching a video says about the next one), ``e``: video
  vectors, ``b``: video bias;
* ``f(i)``: the co-occurrence of ``i`` with the ``cooc_terms`` most recent watches
  (:mod:`model.cooc`), weighted by the same ``m_a``; ``alpha`` is learned with everything else.

This is FPMC-style (factorised personalised Markov chains, Rendle 2010) with YouTube's
"viewer = average of watched videos" as the Markov part: a viewer is their recent history, so
a viewer who has watched one video already gets that video's neighbourhood, and recency is
built in. The co-occurrence feature adds the full-rank item-to-item signal a 32-dimensional
embedding cannot hold, and the embedding learns what co-occurrence misses (the softmax
gradient flows through the sum).

Learning is implicit feedback: each watch is a positive, weighted by its watch time; the loss
is a softmax over the ranked videos (below), the viewer's already-watched videos left out of
the denominator. Adagrad; the update never writes non-finite numbers (see
:func:`model.compiled.adagrad_rows`), and ``guard_trips`` counts how often it refused.

Batch semantics (``learn_many``): all events of a batch are learned from the parameters
before the batch (new rows start at their initial values: zero transition vectors, small
random video vectors, zero bias), their gradients are summed, and each touched row takes
one Adagrad step. What the batch knows exactly it uses exactly: each event's *history* and
*exclusions* include its viewer's earlier events in the same batch (viewers arrive in bursts,
so this is what keeps a large batch almost as good as a batch of one). A batch of one is
exactly ``learn_one``. ``rank_events`` uses the very same representation, so
``rank_and_learn`` (the evaluator's and the service's call) learns from the score matrix its
test step computed.

How it is computed: a batch is a few matrix products (numpy's BLAS) and, around them, the
compiled kernels of :mod:`model.compiled` (numba), each held to a plain numpy reference
(:mod:`model.kernels`) by the tests: one pass per score row ranks it and takes its softmax
gradient. ``recommend_many`` scores its viewers against the shortlist in one product and one
pass per row; it cannot reuse the batch's scores, as every shortlisted video's vector moved
(the softmax gradient is dense). The kernels compile on first use after an install (seconds)
and load from numba's disk cache afterwards; a model constructed loads them
(:func:`model.compiled.warm_up`), so the first batch does not.

What is ranked: the *shortlist*, the videos people are watching now (decayed popularity), as
many as hold ``shortlist_share`` of recent watches and at least ``shortlist``, is ranked for
each batch, and its softmax normalises over the shortlist plus the batch's own videos (so a
tail video still learns from its watches, and rises into the shortlist when people start
watching it). This is YouTube's two stages in their simplest form: the cost of an event
follows how many videos are being watched, not the size of the catalogue. A catalogue of no
more than ``shortlist`` videos is ranked whole. The share is steered by the hits the shortlist
loses (``shortlist_budget``): learning judges each event whose video was left out, by whether
it would have made the top 10, and the share rises while such losses pass the budget and sinks
slowly while they stay well under it.

Other than the shortlist's floor, no constant depends on the catalogue size: every count is
relative (recency per watch, half-lives in events); the dense co-occurrence matrix is dropped
past ``cooc_max_videos``. How the defaults were chosen, with the measurements, is in
``bench/README.md``.

>>> from contract.events import WatchEvent
>>> m = EmbeddingRanker(seed=1)
>>> for t, (v, i) in enumerate([("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"), ("c", "x"), ("c", "z")] * 20):
...     m.learn_many([WatchEvent(t, v, i)])
>>> m.recommend("new viewer", n=2).videos        # unknown viewer: what is trending
['x', 'y']
>>> m.learn_one("d", "x")
>>> m.recommend("d", n=1).videos                 # one watch of x: its closest neighbour
['y']
>>> m.n_viewers, m.n_videos, m.events_learned
(4, 3, 121)

"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from contract.events import WatchEvent
from model import viewer_state
from model.base import CatalogueScorer, ModelStats, Ranking, Recommendation, recommendations
from model.compiled import (
    NO_BIAS,
    NO_COLUMNS,
    NO_FEATURE,
    adagrad_rows,
    excluded_targets,
    history_grad,
    mix_histories,
    rank_softmax,
    rank_top_n,
    softmax_grad,
    warm_up,
)
from model.cooc import CoCounts
from model.frequency import FrequencyFilter
from model.history import RecentHistory, group_positions
from model.ids import GrowableTable, IdIndex
from model.lifecycle import DAY, Lifecycle
from model.parts import Counters, FixedArrays, RandomState
from model.persist import Part
from model.seen import SeenVideos
from model.weighting import watch_weights

#: The steered shortlist (``shortlist_budget``): a video outside it counts as a lost hit when it
#: would have made the top-:data:`JUDGE_N` of its event had it been ranked.
JUDGE_N = 10
#: Half-life, in judged events, of the lost-hit rate the share is steered by.
STEER_HALF_LIFE = 5_000.0
#: How the share moves per 256 judged events: while the lost-hit rate is over budget, up by
#: this part of its distance to the top times how many times over budget the rate is; while
#: under half the budget, down by a fixed step.
SHARE_UP, SHARE_DOWN = 0.02, 0.002
#: The range the share is steered in.
SHARE_MIN, SHARE_MAX = 0.5, 0.999

__all__ = ["EmbeddingRanker"]


@dataclass
class _Batch:
    """A batch mapped to rows, with each event's causal viewer representation."""

    viewer_ids: Sequence[str]
    video_ids: Sequence[str]
    times: np.ndarray  # (B,) event timestamps
    viewer_rows: np.ndarray  # (B,) rows, provisional (= the row learning will create) for new ids
    video_rows: np.ndarray  # (B,) idem
    n_videos: int  # video rows before the batch (released rows included)
    viewer_known: np.ndarray  # (B,) bool: the viewer held a row before the batch
    video_known: np.ndarray  # (B,) bool: the video held a row before the batch
    weights: np.ndarray  # (B,) watch weights
    grouping: tuple[np.ndarray, np.ndarray, np.ndarray]  # the batch by viewer (group_positions)
    history: np.ndarray  # (B, history) video rows before each event, most recent first
    final: tuple[np.ndarray, np.ndarray, np.ndarray]  # per viewer history after the batch
    mix: np.ndarray  # (B, history) mixing weights of the history slots (rows sum to 1 or 0)
    in_history: np.ndarray  # (D,) the distinct video rows in the batch's histories
    slot: np.ndarray  # (B, history) each slot's index in ``in_history`` (-1: empty)
    U: np.ndarray  # (B, dim) viewer representation before each event
    cold: np.ndarray  # (B,) bool: an unknown viewer without history (gets trending when ranked)
    exclude: tuple[np.ndarray, np.ndarray]  # causal exclusions, compressed rows (ptr, video rows)
    # The video rows the batch scores, by column: the shortlist, then the batch's other videos
    # (without a shortlist: every row after the batch); how many lead columns are ranked; each
    # video row's column (-1: none; empty when columns are rows).
    columns: np.ndarray
    ranked: int
    column_of: np.ndarray
    cooc: np.ndarray | None  # (B, columns) co-occurrence feature
    # The video vectors at the columns as the test step read them (rows not created yet: the
    # last row), for the learning step's product; None until read.
    vectors: np.ndarray | None = None
    # What the shortlist cost this batch (:meth:`EmbeddingRanker._judge_shortlist`): events
    # whose known video, outside it, would have made their top-JUDGE_N; events judged (-1: none).
    lost: int = 0
    judged: int = -1


class EmbeddingRanker(CatalogueScorer):
    """Online FPMC-style embedding recommender trained by Adagrad on implicit watches.

    Parameters
    ----------
    dim
        Embedding size.
    history
        How many recent watches make up the viewer's representation.
    recency
        Weight decay per step back in the history (``recency ** age``).
    lr
        Adagrad learning rate.
    reg
        L2 penalty on the rows an event touches.
    init_scale
        Standard deviation of new video vectors.
    max_grad_norm
        Gradient rows are clipped to this L2 norm.
    trending_half_life
        Half-life, in events, of the decayed popularity that unknown viewers are shown and
        that picks the shortlist.
    cooc_window, cooc_terms
        Two watches co-occur when at most ``cooc_window`` watches apart (0 disables the
        feature); the feature reads the ``cooc_terms`` most recent watches.
    cooc_max_videos
        Past this many videos the dense co-occurrence counts are dropped: their memory is
        ``4 * videos**2`` bytes (67 MB at the default 4,096), written into every checkpoint.
    cooc_weight, cooc_exponent
        Initial ``alpha``; the exponent of the feature's normalisation (:mod:`model.cooc`).
    viewer_ttl, video_ttl
        Seconds of *event time* after which a viewer or video not seen is forgotten and its row
        reused (Monolith-style expirable embeddings; ``None``: never), so memory stays flat
        under endless new ids. An expired viewer is unknown again (trending until their next
        watch); an expired video is never recommended and starts afresh if it comes back. See
        :mod:`model.lifecycle`.
    expire_every
        Learned events between two expiry runs (each is one vectorised pass over the rows); a
        run happens at the end of the batch that reaches the count, so batch sizes shift it
        slightly.
    min_events
        A viewer or video enters the model on its ``min_events``-th event; until then its
        events are only counted (:mod:`model.frequency`) and not learned. 1 (the default)
        admits everything; more pays where most ids are one-offs. The counted events are not
        in the watched lists either (the sketch keeps counts, not who watched): a video's first
        ``min_events - 1`` viewers may be shown it once it is admitted.
    shortlist, shortlist_share
        Which videos are ranked for each batch and normalised over in its softmax: the most
        watched lately (decayed popularity), as many as hold ``shortlist_share`` of the recent
        watches and at least ``shortlist``, plus, for learning, the batch's own videos. A video
        outside the shortlist is not recommended until it gets watched into it.
        ``shortlist_share=0``: exactly ``shortlist`` videos; ``shortlist=None``: the whole
        catalogue.
    shortlist_budget
        Steers the share by what it costs (``None``: the share stays ``shortlist_share``).
        Learning judges every event whose known video was outside the shortlist (a re-watch
        aside: no list shows it): would it have made the event's top-10 had it been ranked?
        The share starts at ``shortlist_share`` and moves within [0.5, 0.999] so that such
        lost hits stay under ``shortlist_budget`` of the events (a moving rate, half-life
        5,000 events): up quickly when they pass it, down slowly while under half of it and
        while the share, not the floor ``shortlist``, sets the length. A skewed catalogue gets
        a short list (and a fast model); a flat one keeps a long one.
    seed
        Drives all randomness (the initial video vectors).
    """

    name = "streamrec"
    #: 2: the steered shortlist's share and lost-hit rate are saved with the counters.
    state_version = 2

    def __init__(
        self,
        dim: int = 32,
        history: int = 20,
        recency: float = 0.8,
        lr: float = 0.15,
        reg: float = 0.0,
        init_scale: float = 0.1,
        max_grad_norm: float = 10.0,
        trending_half_life: float = 2000.0,
        cooc_window: int = 20,
        cooc_terms: int = 12,
        cooc_max_videos: int = 4096,
        cooc_weight: float = 10.0,
        cooc_exponent: float = 0.45,
        viewer_ttl: float | None = 180 * DAY,
        video_ttl: float | None = 180 * DAY,
        expire_every: int = 1000,
        min_events: int = 1,
        shortlist: int | None = 1024,
        shortlist_share: float = 0.95,
        shortlist_budget: float | None = 0.002,
        seed: int | None = 0,
    ) -> None:
        super().__init__(seed=seed)
        if dim < 1 or history < 1:
            raise ValueError("dim and history must be positive")
        if not 0 <= cooc_window <= history or cooc_terms < 1:
            raise ValueError("cooc_window must be in [0, history] and cooc_terms >= 1")
        if not 0.0 < recency <= 1.0:
            raise ValueError(f"recency must be in (0, 1], got {recency}")
        positive = (lr, init_scale, max_grad_norm, trending_half_life)
        if not all(0 < v < math.inf for v in positive) or not 0 <= reg < math.inf:  # NaN fails too
            raise ValueError(
                "lr, init_scale, max_grad_norm, trending_half_life must be finite and > 0; reg finite, >= 0"
            )
        if not isinstance(min_events, int) or min_events < 1:
            raise ValueError(f"min_events must be an integer >= 1, got {min_events!r}")
        if shortlist is not None and (not isinstance(shortlist, int) or shortlist < 1):
            raise ValueError(f"shortlist must be None or an integer >= 1, got {shortlist!r}")
        if not 0.0 <= shortlist_share <= 1.0:
            raise ValueError(f"shortlist_share must be in [0, 1], got {shortlist_share!r}")
        if shortlist_budget is not None and not 0.0 < shortlist_budget < 1.0:
            raise ValueError(f"shortlist_budget must be None or in (0, 1), got {shortlist_budget!r}")
        self.dim = dim
        self.history = history
        self.recency = recency
        self.lr = lr
        self.reg = reg
        self.init_scale = init_scale
        self.max_grad_norm = max_grad_norm
        self.trending_half_life = trending_half_life
        self.cooc_window = cooc_window
        self.cooc_terms = cooc_terms
        self.cooc_max_videos = cooc_max_videos
        self.cooc_weight = cooc_weight
        self.cooc_exponent = cooc_exponent
        self.viewer_ttl = viewer_ttl
        self.video_ttl = video_ttl
        self.expire_every = expire_every
        self.min_events = min_events
        self.shortlist = shortlist
        self.shortlist_share = shortlist_share
        self.shortlist_budget = shortlist_budget
        self.seed = seed
        warm_up()  # the compiled kernels, once per process: at start-up, not in the first batch
        self._init_state()

    # -- state -------------------------------------------------------------------------------

    def _init_state(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        k = self.dim
        # Viewer state: everything indexed by viewer row.
        self.viewers = IdIndex()
        self.seen = SeenVideos()
        self._recent = RecentHistory(self.history)
        # Video state: shared by all viewers.
        self.videos = IdIndex()
        self._E = GrowableTable(k)  # new rows get _random_vectors
        self._E_acc = GrowableTable(k)
        self._Q = GrowableTable(k)
        self._Q_acc = GrowableTable(k)
        self._b = GrowableTable(0)
        self._b_acc = GrowableTable(0)
        self._counts = GrowableTable(0, dtype=np.float64)
        self._cooc = CoCounts(max_size=self.cooc_max_videos)
        # The learned weight of the co-occurrence feature in the score, and its Adagrad state.
        self._alpha = np.full(1, self.cooc_weight, dtype=np.float32)
        self._alpha_acc = np.zeros(1, dtype=np.float32)
        # Decayed popularity, stored multiplied by a growing scale so decay costs nothing.
        self._trend = GrowableTable(0, dtype=np.float64)
        self._trend_scale = 1.0
        # Expiry (on by default) and admission (off); constructing them validates the settings.
        self._life = Lifecycle(self.viewer_ttl, self.video_ttl, self.expire_every)
        self._admit_viewers = FrequencyFilter(self.min_events) if self.min_events > 1 else None
        self._admit_videos = FrequencyFilter(self.min_events) if self.min_events > 1 else None
        self.events_filtered = 0
        self.events_learned = 0
        self.guard_trips = 0
        self.loss_sum = 0.0
        # The shortlist of the current state (computed once between two learned batches).
        self._shortlist_memo: tuple[int, np.ndarray | None] | None = None
        # The steered share, the moving rate of hits it lost, and whether the share (rather
        # than the floor) set the current shortlist's length.
        self.shortlist_share_now = float(self.shortlist_share)
        self.shortlist_lost_rate = 0.0
        self._share_sets_length = False
        self._shortlist_length = 0  # the last length the share set: where the next search starts

    @property
    def n_viewers(self) -> int:
        """Viewers the model holds now (expired ones not counted)."""
        return self.viewers.live

    @property
    def n_videos(self) -> int:
        """Videos the model holds now (expired ones not counted)."""
        return self.videos.live

    @property
    def clock(self) -> float | None:
        """The model's event-time clock (robust to stray timestamps; ``None`` before any event).

        Per-viewer bookkeeping outside the model (an :class:`~model.expiring.ExpiringDict`)
        can use it as its ``now``, so that it forgets on the same clock as the model.
        """
        now = self._life.now
        return now if math.isfinite(now) else None

    def stats(self) -> ModelStats:
        return ModelStats(
            events_learned=self.events_learned,
            viewers=self.viewers.live,
            videos=self.videos.live,
            memory_bytes=self.memory_bytes()["total"],
            loss_sum=self.loss_sum,
            guard_trips=self.guard_trips,
        )

    def video_counts(self) -> np.ndarray:
        return self._counts.array

    @property
    def expired(self) -> tuple[int, int]:
        """``(viewers, videos)`` released by expiry so far."""
        return self._life.expired_viewers, self._life.expired_videos

    def memory_bytes(self) -> dict[str, int]:
        """Bytes of model state: per viewer, per video, and in total (id strings excluded).

        Per viewer: the recent-history ring (int64 rows + float32 weights) and the seen list
        (:meth:`~model.seen.SeenVideos.nbytes`: about 9 bytes a watch; the average is used). Per
        video: video and transition vectors with their Adagrad state, bias, counters, plus its
        share of the dense co-occurrence counts (``cooccurrence``: ``4 * capacity**2`` bytes in
        all, so the share grows with the catalogue). Each row, with expiry on, has a last-seen
        time.
        """
        k = self.dim
        # Tables are sized by rows, released ones included (they wait for reuse).
        viewer_rows, video_rows = len(self.viewers), len(self.videos)
        clock = 8 if self._life.enabled else 0  # last-seen time per row
        per_viewer = self._recent.nbytes_per_viewer() + clock
        seen = self.seen.nbytes()
        per_video = 4 * 4 * k + 2 * 4 + 2 * 8 + clock
        cooc = self._cooc.nbytes()
        admission = sum(f.nbytes() for f in (self._admit_viewers, self._admit_videos) if f is not None)
        total = per_viewer * viewer_rows + seen + per_video * video_rows + cooc + admission
        return {
            "per_viewer": per_viewer + seen // max(1, viewer_rows),
            "per_video": per_video + cooc // max(1, video_rows),
            "cooccurrence": cooc,
            "admission": admission,
            "total": total,
        }

    # -- parts (what model.persist saves) -----------------------------------------------------

    def _video_tables(self) -> dict[str, GrowableTable]:
        """The tables with a row per video row, by part name (grown, reset and saved alike)."""
        return {
            "video_vectors": self._E,
            "video_vectors_acc": self._E_acc,
            "transitions": self._Q,
            "transitions_acc": self._Q_acc,
            "video_bias": self._b,
            "video_bias_acc": self._b_acc,
            "watch_counts": self._counts,
            "trending": self._trend,
        }

    def state_parts(self) -> dict[str, Part]:
        parts: dict[str, Part] = {
            "viewers": self.viewers,
            "videos": self.videos,
            "seen": self.seen,
            "history": self._recent,
            **self._video_tables(),
            "cooccurrence": self._cooc,
            "feature_weights": FixedArrays(alpha=self._alpha, alpha_acc=self._alpha_acc),
            "lifecycle": self._life,
            "random": RandomState(self._rng),
            "counters": Counters(
                self,
                (
                    "events_learned",
                    "events_filtered",
                    "guard_trips",
                    "loss_sum",
                    "_trend_scale",
                    "shortlist_share_now",
                    "shortlist_lost_rate",
                ),
            ),
        }
        if self._admit_viewers is not None:
            parts |= {"admit_viewers": self._admit_viewers, "admit_videos": self._admit_videos}
        return parts

    def check_state(self) -> None:
        """Every table has a row per id row; histories, seen lists and counts name existing rows."""
        n_viewers, n_videos = len(self.viewers), len(self.videos)
        tables = [("history", self._recent.items, n_viewers, "viewer")]
        tables += [(name, t, n_videos, "video") for name, t in self._video_tables().items()]
        for name, table, rows, side in tables:
            if table.rows != rows:
                raise ValueError(f"{name} has {table.rows} rows, but {rows} {side} rows exist")
        if len(self.seen) > n_viewers:
            raise ValueError(f"seen lists for {len(self.seen)} viewer rows, but {n_viewers} rows exist")
        for name, top in (("history", self._recent.max_video()), ("seen lists", self.seen.max_video())):
            if top >= n_videos:
                raise ValueError(f"{name} name video row {top}, but {n_videos} rows exist")
        # Past the cap the counts are unused, and freed at the next step: a replica of a release
        # before 2026-12-01 whose catalogue passed the cap through a peer's videos kept them.
        if self._cooc.rows not in (0, n_videos) and self._use_cooc(n_videos):
            raise ValueError(f"co-occurrence covers {self._cooc.rows} videos, but {n_videos} rows exist")
        self._life.check_rows(n_viewers, n_videos)

    # -- scoring -----------------------------------------------------------------------------

    def _mixing(self, items: np.ndarray, weights: np.ndarray, bound: int):
        """:func:`~model.compiled.mix_histories` of histories ``items`` with watch ``weights``:
        ``m_a`` (``recency ** a`` times the watch's weight, normalised per row; a row of 0 when
        empty), the viewer vectors, the distinct history rows (``< bound``) and each slot's
        index among them."""
        decay = (self.recency ** np.arange(self.history)).astype(np.float32)
        return mix_histories(items, weights, decay, self._Q.array, len(self.videos), bound)

    def _use_cooc(self, n_videos: int) -> bool:
        return self.cooc_window > 0 and n_videos <= self.cooc_max_videos

    def _fit_cooc(self, n_videos: int) -> None:
        """Co-occurrence counts over every video row while the catalogue is within
        ``cooc_max_videos``, and none past it (freed: the model stops reading them), however
        the catalogue grew: this model's learning, a restored viewer's videos, a peer's."""
        if self._use_cooc(n_videos):
            self._cooc.ensure(n_videos)
        elif self._cooc.rows:
            self._cooc = CoCounts(max_size=self.cooc_max_videos)

    def _feature(self, items: np.ndarray, mix: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """The co-occurrence feature of histories ``items`` (weights ``mix``) at video rows ``columns``."""
        terms = min(self.cooc_terms, self.history)
        return self._cooc.features(items, mix, terms, self.cooc_exponent, columns)

    def _finish(self, scores: np.ndarray, rows: np.ndarray, cooc: np.ndarray | None) -> np.ndarray:
        """``scores`` (dot products with video ``rows``) plus bias and ``alpha`` times ``cooc``,
        in place: the arithmetic :func:`~model.compiled.rank_top_n` does while it ranks."""
        scores += self._b.array[rows]
        if cooc is not None:
            scores += self._alpha[0] * cooc
        return scores

    def _free_columns(self, column_of: np.ndarray) -> np.ndarray:
        """Columns of released video rows (``column_of`` empty: columns are rows)."""
        free = np.asarray(self.videos.free_rows, dtype=np.int64)
        if free.size and column_of.size:
            free = column_of[free[free < column_of.size]]
        return free[free >= 0]

    def _trending(self) -> np.ndarray:
        return (self._trend.array / self._trend_scale).astype(np.float32)

    def _shortlist(self, n_videos: int) -> np.ndarray | None:
        """The live video rows to rank, sorted: the hottest ones (decayed popularity), at least
        ``shortlist`` and as many as hold ``shortlist_share`` of it (``None``: rank everything).

        An O(catalogue) selection, and a sort only when the ``shortlist`` hottest hold less
        than the share; once between two learned batches (the next batch's test step ranks the
        shortlist the previous batch's recommendations were drawn from).
        """
        memo = self._shortlist_memo
        if memo is not None and memo[0] == n_videos:
            return memo[1]
        shortlist = self._select_shortlist(n_videos)
        self._shortlist_memo = (n_videos, shortlist)
        return shortlist

    def _select_shortlist(self, n_videos: int) -> np.ndarray | None:
        k, share = self.shortlist, self.shortlist_share_now
        self._share_sets_length = False
        if k is None or self.videos.live <= k:
            return None
        heat = self._trend.array[:n_videos].copy()
        free = self.videos.free_rows
        if free:  # released rows hold no video; live rows all have heat >= 0
            heat[np.asarray(free, dtype=np.int64)] = -1.0
        hottest = np.argpartition(heat, n_videos - k)[n_videos - k :]
        total = heat[heat > 0].sum()
        if heat[hottest].sum() < share * total:
            # The fewest hottest that hold the share: sort the values (3x cheaper than their
            # order), then take the rows above the k-th value and, of the rows at it, the first.
            depth = max(2 * k, self._shortlist_length + self._shortlist_length // 4)
            sums, descending = _running_sums(heat, share * total, depth)
            k = int(np.searchsorted(sums, share * total)) + 1
            self._share_sets_length = True
            self._shortlist_length = k
            if k >= self.videos.live:
                return None
            threshold = descending[k - 1]
            above = np.flatnonzero(heat > threshold)
            at = np.flatnonzero(heat == threshold)
            return np.sort(np.concatenate([above, at[: k - above.size]]))
        return np.sort(hottest)

    def _changed(self) -> None:
        """The state changed: what was computed from it (the shortlist) is stale."""
        self._shortlist_memo = None

    # -- batch preparation -------------------------------------------------------------------

    def _batch(self, events: Sequence[WatchEvent]) -> _Batch:
        """Map a batch to rows and build each event's representation from pre-batch state."""
        times, viewer_ids, video_ids, watch_times, durations = _fields(events)
        n_videos = len(self.videos)
        # Rows learning will give new ids (released rows first), created only when learned.
        viewer_now, video_now = self.viewers.get_many(viewer_ids), self.videos.get_many(video_ids)
        viewer_rows = self.viewers.next_rows(viewer_ids, viewer_now)
        video_rows = self.videos.next_rows(video_ids, video_now)
        viewer_known, video_known = viewer_now >= 0, video_now >= 0
        weights = watch_weights(watch_times, durations)
        grouping = group_positions(viewer_rows)  # shared by histories and exclusions
        items, hist_w, *final = self._recent.for_batch(viewer_rows, video_rows, weights, grouping)
        n_after = max(n_videos, int(video_rows.max()) + 1 if len(events) else 0)
        # New transition rows start at zero, so only the known rows make up U.
        mix, U, in_history, slot = self._mixing(items, hist_w, n_after)
        # A reused row is below len(viewers) but holds no state: known means known before.
        cold = ~viewer_known & (items < 0).all(axis=1)
        # New viewers' rows hold no seen list yet; new videos' rows are excluded in-batch too.
        exclude = self.seen.exclusions(viewer_rows, video_rows, grouping)
        shortlist = self._shortlist(n_videos)
        if shortlist is None:
            columns, ranked, column_of = np.arange(n_after), n_videos, NO_COLUMNS
        else:
            column_of = np.full(n_after, -1, dtype=np.int64)
            column_of[shortlist] = np.arange(shortlist.size)
            others = np.unique(video_rows[column_of[video_rows] < 0])
            columns, ranked = np.concatenate([shortlist, others]), shortlist.size
            column_of[others] = np.arange(ranked, columns.size)
        cooc = self._feature(items, mix, columns) if self._use_cooc(n_after) else None
        return _Batch(
            viewer_ids=viewer_ids,
            video_ids=video_ids,
            times=np.array(times, dtype=np.float64),
            viewer_rows=viewer_rows,
            video_rows=video_rows,
            n_videos=n_videos,
            viewer_known=viewer_known,
            video_known=video_known,
            weights=weights,
            grouping=grouping,
            history=items,
            final=tuple(final),
            mix=mix,
            in_history=in_history,
            slot=slot,
            U=U,
            cold=cold,
            exclude=exclude,
            columns=columns,
            ranked=ranked,
            column_of=column_of,
            cooc=cooc,
        )

    # -- test step ---------------------------------------------------------------------------

    def rank_events(self, events: Sequence[WatchEvent], n: int = 10) -> Ranking:
        """Top-``n`` before each event, from the state before the batch (causal history)."""
        return self._test_step(self._batch(events), n)[0]

    def rank_and_learn(self, events: Sequence[WatchEvent], n: int = 10) -> Ranking:
        """:meth:`rank_events`, then :meth:`learn_many` from the same prepared batch and score
        matrix (the same result, computed once).

        With a shortlist, ranking and the softmax take one compiled pass per row
        (:func:`~model.compiled.rank_softmax`): the batch's new rows are created first, which
        ranking never reads. When the admission filter (``min_events``) holds events back, the
        batch learned is not the batch ranked: it is prepared again.
        """
        batch = self._batch(events)
        admitted = self._admitted(events)
        if admitted is events and batch.column_of.size:
            return self._rank_and_learn_at_once(events, batch, n)
        ranking, scores = self._test_step(batch, n)
        if admitted is events:
            self._learn(events, batch, scores)
        elif admitted:
            batch = self._batch(admitted)
            self._learn(admitted, batch, self._test_step(batch, 0)[1])
        return ranking

    def _dots(self, batch: _Batch) -> np.ndarray:
        """``U @ E.T`` at the batch's columns (rows not created yet read the last row: rescored)."""
        if not batch.n_videos:
            return np.zeros((len(batch.U), batch.columns.size), dtype=np.float32)
        rows = np.minimum(batch.columns, batch.n_videos - 1)
        batch.vectors = self._E.array[rows]
        return batch.U @ batch.vectors.T

    def _targets(self, batch: _Batch) -> tuple[np.ndarray, np.ndarray]:
        """Each event's column: to rank (``-1``: an unknown video or one outside the ranked
        columns) and to learn (always a column)."""
        column = batch.video_rows if not batch.column_of.size else batch.column_of[batch.video_rows]
        return np.where(batch.video_known & (column < batch.ranked), column, -1), column

    def _test_step(self, batch: _Batch, n: int) -> tuple[Ranking, np.ndarray]:
        """The test step of a prepared batch: the top-``n`` and the score matrix the learning
        step starts from, ``(B, columns)``: the model's scores from before the batch, with
        excluded, non-finite and released cells of the ranked columns at ``-inf`` but each
        event's own. Columns of rows that do not exist yet are scored by :meth:`_learn`.

        One matrix product, then one compiled pass per row (:func:`~model.compiled.rank_top_n`:
        bias, feature, masks, rank and top-``n``). A video outside the ranked columns (the
        shortlist) cannot be recommended: its rank is UNRANKED.
        """
        columns, ranked, column_of = batch.columns, batch.ranked, batch.column_of
        scores = self._dots(batch)
        # Released rows can never be recommended: -inf (learning rescores those this batch reuses).
        free = self._free_columns(column_of)
        if free.size:
            scores[:, free] = -np.inf
        targets, learn_targets = self._targets(batch)
        bias = self._b.array[np.minimum(columns, batch.n_videos - 1)] if batch.n_videos else NO_BIAS
        judge = self._judge_inputs(batch, scores, bias, learn_targets)
        top, best, rank = rank_top_n(
            scores,
            ranked,
            n if judge is None else max(n, JUDGE_N),
            targets,
            *batch.exclude,
            column_of,
            bias,
            self._alpha[0],
            NO_FEATURE if batch.cooc is None else batch.cooc,
            True,
        )
        if judge is not None:
            self._judge_shortlist(batch, *judge, best)
            top = top[:, :n]
        self._rank_cold(batch, n, targets, free, self._trending(), top, rank)
        return Ranking(top=_rows_at(columns, top), rank=rank, catalogue=self.videos.live), scores

    # -- the steered shortlist (``shortlist_budget``) ------------------------------------------

    def _judge_inputs(
        self, batch: _Batch, dots: np.ndarray, bias: np.ndarray, targets: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, int] | None:
        """What judging the shortlist needs from the matrix before the kernels finish it in
        place (``None`` when the share is not steered or nothing is shortlisted): the events
        whose known video was not ranked, of viewers ranked by the model's own scores (not the
        trending list), the score each one's video had (dot product, bias, feature: the same
        arithmetic in every path), and how many events are judged. A re-watch is not judged:
        its video is excluded from any list, shortlist or not, so it is no hit to lose (judged,
        a stream of re-watches drove the share to the whole catalogue). ``targets``: each
        event's column."""
        if self.shortlist_budget is None or not batch.column_of.size:
            return None
        judged = batch.video_known & ~batch.cold & ~excluded_targets(*batch.exclude, batch.video_rows)
        outside = np.flatnonzero(judged & (targets >= batch.ranked))
        columns = targets[outside]
        logits = dots[outside, columns] + bias[columns]
        if batch.cooc is not None:
            logits += self._alpha[0] * batch.cooc[outside, columns]
        return outside, logits, int(np.count_nonzero(judged))

    def _judge_shortlist(
        self, batch: _Batch, outside: np.ndarray, logits: np.ndarray, judged: int, best: np.ndarray
    ) -> None:
        """Count the hits the shortlist cost this batch: outside videos scored above their
        event's JUDGE_N-th best ranked video (``best``: each row's top scores, best first)."""
        batch.lost = int(np.count_nonzero(logits > best[outside, JUDGE_N - 1]))
        batch.judged = judged

    def _steer_shortlist(self, lost: int, judged: int) -> None:
        """Move the share by the moving rate of lost hits against ``shortlist_budget``."""
        if judged <= 0:
            return
        weight = 1.0 - 0.5 ** (judged / STEER_HALF_LIFE)
        self.shortlist_lost_rate += weight * (lost / judged - self.shortlist_lost_rate)
        steps, over = judged / 256, self.shortlist_lost_rate / self.shortlist_budget
        if over > 1.0:  # closes a part of the gap to the top, the larger the further over
            gap = SHARE_MAX - self.shortlist_share_now
            self.shortlist_share_now += gap * min(1.0, SHARE_UP * steps * over)
        elif over < 0.5 and self._share_sets_length:
            self.shortlist_share_now = max(SHARE_MIN, self.shortlist_share_now - SHARE_DOWN * steps)

    def _rank_cold(self, batch, n, targets, free, trending, top, rank) -> None:  # noqa: ANN001
        """Viewers the model knows nothing about see what is trending instead (learning still
        starts from the model's own scores for them): re-rank just those rows, in place."""
        cold = np.flatnonzero(batch.cold)
        if not cold.size:
            return
        ranked, column_of = batch.ranked, batch.column_of
        trending = np.broadcast_to(trending[batch.columns[:ranked]], (cold.size, ranked)).copy()
        if free.size:
            trending[:, free[free < ranked]] = -np.inf
        # Their exclusions: none (an unknown viewer's first event in the batch), but checked.
        ptr, videos = batch.exclude
        excluded = (ptr[cold + 1] - ptr[cold]).any()
        top[cold], _, rank[cold] = rank_top_n(
            trending,
            ranked,
            n,
            targets[cold],
            *(_rows_of(ptr, videos, cold) if excluded else _NO_EXCLUSIONS(cold.size)),
            column_of,
            NO_BIAS,
            np.float32(0.0),
            NO_FEATURE,
            False,
        )

    # -- train step --------------------------------------------------------------------------

    def learn_many(self, events: Sequence[WatchEvent]) -> None:
        """Learn a batch (see the module docstring for the exact batch semantics)."""
        events = self._admitted(events)
        if events:
            batch = self._batch(events)
            self._learn(events, batch, self._test_step(batch, 0)[1])  # judges the shortlist too

    def _learn(self, events: Sequence[WatchEvent], batch: _Batch, scores: np.ndarray) -> None:
        """The train step of a prepared batch, from the score matrix of its test step.

        The softmax normalises over the batch's columns: the ranked ones, whose scores the test
        step computed, and the batch's other videos (all rows, without a shortlist); the rows
        created or reused for new videos are scored once they exist.
        """
        self._grow(batch)
        rescore = self._fresh_columns(batch)
        if rescore.size:
            rows = batch.columns[rescore]
            cooc = None if batch.cooc is None else batch.cooc[:, rescore]
            scores[:, rescore] = self._finish(batch.U @ self._E.array[rows].T, rows, cooc)
        # Released rows not reused stay out of the softmax.
        free = self._free_columns(batch.column_of)
        if free.size:
            scores[:, free] = -np.inf
        _, targets = self._targets(batch)
        # Leave out each viewer's watched videos, but never the event's own.
        softmax = softmax_grad(
            scores,
            targets,
            batch.weights,
            *batch.exclude,
            batch.column_of,
            NO_FEATURE if batch.cooc is None else batch.cooc,
        )
        self._update(events, batch, scores, targets, *softmax)

    def _rank_and_learn_at_once(self, events: Sequence[WatchEvent], batch: _Batch, n: int) -> Ranking:
        """:meth:`_test_step` then :meth:`_learn` of a shortlisted batch, with the same
        arithmetic, and ranking and softmax in one pass per row (the new videos' rows, which
        ranking never reads, are created first)."""
        catalogue, trending = self.videos.live, self._trending()
        free = self._free_columns(batch.column_of)  # before new videos reuse some
        scores = self._dots(batch)
        self._grow(batch)
        if free.size:
            scores[:, free] = -np.inf
        rescore = self._fresh_columns(batch)
        if rescore.size:  # the new videos' dot products; rank_softmax adds bias and feature
            scores[:, rescore] = batch.U @ self._E.array[batch.columns[rescore]].T
        rank_targets, targets = self._targets(batch)
        bias = self._b.array[batch.columns]
        judge = self._judge_inputs(batch, scores, bias, targets)
        top, best, rank, *softmax = rank_softmax(
            scores,
            batch.ranked,
            n if judge is None else max(n, JUDGE_N),
            rank_targets,
            targets,
            batch.weights,
            *batch.exclude,
            batch.column_of,
            bias,
            self._alpha[0],
            NO_FEATURE if batch.cooc is None else batch.cooc,
        )
        if judge is not None:
            self._judge_shortlist(batch, *judge, best)
            top = top[:, :n]
        self._rank_cold(batch, n, rank_targets, free, trending, top, rank)
        ranking = Ranking(top=_rows_at(batch.columns, top), rank=rank, catalogue=catalogue)
        self._update(events, batch, scores, targets, *softmax)
        return ranking

    def _grow(self, batch: _Batch) -> None:
        """Create the batch's new rows (the same numbers it was prepared with): adding only the
        ids the index lacks gives the same rows, at a third of the cost of adding all."""
        for index, ids, known in (
            (self.viewers, batch.viewer_ids, batch.viewer_known),
            (self.videos, batch.video_ids, batch.video_known),
        ):
            if not known.all():
                index.add_many(dict.fromkeys(ids[i] for i in np.flatnonzero(~known).tolist()))
        n_videos = len(self.videos)
        self._recent.ensure(len(self.viewers))
        new = self._E.ensure(n_videos)
        if len(new):
            new[:] = self._random_vectors(len(new))
        for table in self._video_tables().values():
            table.ensure(n_videos)

    def _fresh_columns(self, batch: _Batch) -> np.ndarray:
        """Columns of the rows created, or released and reused, for the batch's new videos."""
        fresh = batch.video_rows[~batch.video_known]
        return np.unique(fresh if not batch.column_of.size else batch.column_of[fresh])

    def _update(
        self,
        events: Sequence[WatchEvent],
        batch: _Batch,
        grad: np.ndarray,
        targets: np.ndarray,
        loss: float,
        skipped: int,
        grad_b: np.ndarray,
        grad_alpha: float,
    ) -> None:
        """Everything learning writes, from the softmax gradient ``grad`` over the batch's
        columns: one Adagrad step of video vectors, bias, ``alpha`` and the histories'
        transition vectors, then the histories, counts, seen lists and clocks."""
        self.guard_trips += skipped
        if math.isfinite(loss):
            self.loss_sum += loss
        if batch.judged >= 0:
            self._steer_shortlist(batch.lost, batch.judged)
        columns, E = batch.columns, self._E.array
        lr, clip = self.lr, self.max_grad_norm
        grad_u = grad @ self._vectors_now(batch)
        grad_E = grad.T @ batch.U
        if self.reg:  # on the positives' vectors, once per event
            positives, counts = np.unique(targets, return_counts=True)
            grad_E[positives] += self.reg * counts[:, None] * E[columns[positives]]
        self.guard_trips += adagrad_rows(E, self._E_acc.array, columns, grad_E, lr, clip)
        self.guard_trips += adagrad_rows(
            self._b.array.reshape(-1, 1),
            self._b_acc.array.reshape(-1, 1),
            columns,
            grad_b.reshape(-1, 1),
            lr,
            clip,
        )
        if batch.cooc is not None:
            g = np.full((1, 1), grad_alpha, dtype=np.float32)
            self.guard_trips += adagrad_rows(
                self._alpha.reshape(1, 1), self._alpha_acc.reshape(1, 1), NO_COLUMNS, g, lr, clip
            )
        # Viewer side: the transition vectors of the histories.
        in_history = batch.in_history
        if in_history.size:
            g = history_grad(batch.slot, batch.mix, grad_u, in_history.size)
            if self.reg:
                g += self.reg * self._Q.array[in_history]
            self.guard_trips += adagrad_rows(self._Q.array, self._Q_acc.array, in_history, g, lr, clip)

        viewer_rows, video_rows = batch.viewer_rows, batch.video_rows
        self._recent.store(*batch.final)
        self._fit_cooc(len(self.videos))
        if self._cooc.rows:
            self._cooc.add(batch.history, video_rows, self.cooc_window)
        self.seen.add_many(viewer_rows, video_rows, batch.grouping)
        np.add.at(self._counts.array, video_rows, 1.0)
        self._add_trending(video_rows)
        self.events_learned += len(events)
        self._life.observe(viewer_rows, video_rows, batch.times, len(self.viewers), len(self.videos))
        if self._life.due():
            self._expire()
        self._changed()

    def _vectors_now(self, batch: _Batch) -> np.ndarray:
        """``E[columns]`` after the batch's rows were created, before it is learned: what the
        test step read, with the columns of the rows created (or reused) for new videos read
        again; every other row is untouched between the two (one gather of the shortlist's
        vectors instead of two)."""
        vectors = batch.vectors
        if vectors is None:
            return self._E.array[batch.columns]
        batch.vectors = None  # its columns change now: not to be read as the test step's again
        fresh = self._fresh_columns(batch)
        if fresh.size:
            vectors[fresh] = self._E.array[batch.columns[fresh]]
        return vectors

    def _random_vectors(self, n: int) -> np.ndarray:
        """Starting vectors of ``n`` new video rows: small and random (all the seed drives)."""
        return self._rng.normal(0.0, self.init_scale, (n, self.dim))

    def _add_trending(self, video_rows: np.ndarray) -> None:
        growth = 2.0 ** (1.0 / self.trending_half_life)
        steps = self._trend_scale * growth ** np.arange(video_rows.shape[0])
        np.add.at(self._trend.array, video_rows, steps)
        self._trend_scale *= growth ** video_rows.shape[0]
        if self._trend_scale > 1e100:  # renormalise long before float64 overflows
            self._trend.array[:] /= self._trend_scale
            self._trend_scale = 1.0

    # -- lifecycle ---------------------------------------------------------------------------

    def _admitted(self, events: Sequence[WatchEvent]) -> Sequence[WatchEvent]:
        """The events whose viewer and video both reached ``min_events`` (all are counted);
        ``events`` itself when all did."""
        if self._admit_viewers is None or not events:
            return events
        viewer_ids = [e.viewer for e in events]
        video_ids = [e.video for e in events]
        ok = self._admit_viewers.admit(viewer_ids, self.viewers.get_many(viewer_ids) >= 0)
        ok &= self._admit_videos.admit(video_ids, self.videos.get_many(video_ids) >= 0)
        if ok.all():
            return events
        self.events_filtered += int((~ok).sum())
        return [e for e, keep in zip(events, ok.tolist(), strict=True) if keep]

    def _expire(self) -> None:
        """Release viewers and videos not seen for their TTL and reset their rows."""
        viewers, videos = self._life.release(self.viewers, self.videos)
        if viewers.size:
            # A reused row must start exactly like a new one: no history or seen list.
            self._recent.clear(viewers)
            self.seen.clear_rows(viewers.tolist())
        if videos.size:
            for table in self._video_tables().values():
                table.reset(videos)
            self._E.array[videos] = self._random_vectors(videos.size)
            self._cooc.clear(videos)
            # Other viewers' references to a released video go too, or its next owner would be
            # excluded for them and mixed into their history.
            self._recent.discard_videos(videos)
            self.seen.discard_videos(videos)

    # -- serving -----------------------------------------------------------------------------

    def viewer_scores(self, viewer_rows: np.ndarray) -> np.ndarray:
        """Score rows for known viewer rows (``-1``: trending), from their stored history.

        ``score_videos`` comes from :class:`~model.base.CatalogueScorer`.
        """
        n_videos = len(self.videos)
        scores = np.empty((viewer_rows.shape[0], n_videos), dtype=np.float32)
        known = viewer_rows >= 0
        if known.any():
            items, hist_w = self._recent.of_rows(viewer_rows[known])
            mix, U, _, _ = self._mixing(items, hist_w, n_videos)
            columns = np.arange(n_videos)
            cooc = self._feature(items, mix, columns) if self._use_cooc(n_videos) else None
            scores[known] = self._finish(U @ self._E.array.T, columns, cooc)
        if not known.all():
            scores[~known] = self._trending()
        free = self._free_columns(NO_COLUMNS)
        if free.size:
            scores[:, free] = -np.inf
        return scores

    def recommend_many(
        self, viewers: Sequence[str], n: int = 10, exclude_seen: bool = True
    ) -> list[Recommendation]:
        """Top-``n`` for each viewer from the shortlist, as :meth:`rank_events` ranks.

        One matrix product for the viewers the model knows and one compiled pass per row
        (:func:`~model.compiled.rank_top_n`); viewers it does not know share one list of
        what is trending. A viewer who has watched so much of the shortlist that fewer than
        ``n`` remain gets a list from the whole catalogue.
        """
        rows = self.viewers.get_many(viewers)
        shortlist = self._shortlist(len(self.videos))
        top, best = self._top_n(rows, n, exclude_seen, shortlist)
        if shortlist is not None:
            short = np.flatnonzero((top < 0).any(axis=1))
            if short.size:
                top[short], best[short] = self._top_n(rows[short], n, exclude_seen, None)
        return recommendations(top, best, self.videos.ids)

    def _top_n(
        self, rows: np.ndarray, n: int, exclude_seen: bool, shortlist: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` video rows and scores of viewer ``rows`` (``-1``: unknown) among the
        ``shortlist`` (``None``: every row), best first; ``-1`` and ``-inf`` in empty slots."""
        n_videos = len(self.videos)
        columns = np.arange(n_videos) if shortlist is None else shortlist
        column_of = NO_COLUMNS
        if shortlist is not None:
            column_of = np.full(n_videos, -1, dtype=np.int64)
            column_of[shortlist] = np.arange(shortlist.size)
        free = self._free_columns(column_of)
        top = np.full((rows.shape[0], n), -1, dtype=np.int64)
        best = np.full((rows.shape[0], n), -np.inf, dtype=np.float32)
        known = np.flatnonzero(rows >= 0)
        unknown = np.flatnonzero(rows < 0)
        if known.size:
            items, hist_w = self._recent.of_rows(rows[known])
            mix, U, _, _ = self._mixing(items, hist_w, n_videos)
            cooc = self._feature(items, mix, columns) if self._use_cooc(n_videos) else None
            scores = U @ self._E.array[columns].T
            if free.size:
                scores[:, free] = -np.inf
            exclude = self.seen.exclusions_of(rows[known]) if exclude_seen else _NO_EXCLUSIONS(known.size)
            no_targets = np.full(known.size, -1, dtype=np.int64)
            top[known], best[known], _ = rank_top_n(
                scores,
                columns.size,
                n,
                no_targets,
                *exclude,
                column_of,
                self._b.array[columns],
                self._alpha[0],
                NO_FEATURE if cooc is None else cooc,
                False,
            )
        if unknown.size:  # all get what is trending
            trending = self._trending()[columns][None, :]
            if free.size:
                trending[:, free] = -np.inf
            t, b, _ = rank_top_n(
                trending,
                columns.size,
                n,
                np.full(1, -1, dtype=np.int64),
                *_NO_EXCLUSIONS(1),
                column_of,
                NO_BIAS,
                np.float32(0.0),
                NO_FEATURE,
                False,
            )
            top[unknown], best[unknown] = t[0], b[0]
        return _rows_at(columns, top), best

    # -- handover: viewers' state by video id (issue 12, :mod:`model.viewer_state`) ------------

    def viewer_states(self, viewers: Sequence[str]) -> dict[str, bytes]:
        """Each known viewer's history (ids and weights), seen list and last-seen time, encoded
        (:func:`model.viewer_state.encode`); the rows of all of them are read in one pass.

        >>> from contract.events import WatchEvent
        >>> a = EmbeddingRanker(seed=1)
        >>> a.learn_many([WatchEvent(1.0, "ann", "x"), WatchEvent(2.0, "ann", "y")])
        >>> b = EmbeddingRanker(seed=2); b.restore_viewers(a.viewer_states(["ann", "nobody"]))
        1
        >>> [b.videos.id_of(r) for r in b.seen.of(b.viewers.get("ann"))], b.recommend("ann", n=2).videos
        (['x', 'y'], [])
        """
        viewers = list(viewers)
        rows = self.viewers.get_many(viewers)
        known = np.flatnonzero(rows >= 0)
        if not known.size:
            return {}
        rows = rows[known]
        items, weights = self._recent.of_rows(rows)
        last = self._life.viewers.array
        times = np.full(rows.size, np.nan)
        inside = rows < last.shape[0]
        times[inside] = last[rows[inside]]
        ids, seen_of, encode, state = (
            self.videos.ids,
            self.seen.of,
            viewer_state.encode,
            viewer_state.ViewerState,
        )
        id_of = ids.__getitem__  # mapped in C over a list: a third of a comprehension's time
        out: dict[str, bytes] = {}
        for i, row, history, w, t in zip(
            known.tolist(), rows.tolist(), items.tolist(), weights, times.tolist(), strict=True
        ):
            named = _named(history, id_of)
            seen = list(map(id_of, seen_of(row)))
            out[viewers[i]] = encode(state(viewer_state.FORMAT, t, named, w.tobytes(), seen))
        return out

    def restore_viewers(self, states: Mapping[str, bytes]) -> int:
        """Install viewers' states (:meth:`viewer_states` of another instance), replacing theirs
        here: history, seen list, last-seen time. Videos this instance does not know are created
        as a peer's video is (:meth:`adopt`); a state older than ``viewer_ttl`` (by this model's
        clock) is expired already and skipped, as is one that cannot be read."""
        decoded: dict[str, viewer_state.ViewerState] = {}
        for viewer, data in states.items():
            try:
                decoded[viewer] = viewer_state.decode(data)
            except ValueError:
                continue
        now = self._life.now
        if self.viewer_ttl is not None and math.isfinite(now):
            cutoff = now - self.viewer_ttl
            decoded = {v: s for v, s in decoded.items() if not s.last_seen < cutoff}
        if not decoded:
            return 0
        named = list(dict.fromkeys(v for s in decoded.values() for v in (*s.history, *s.seen) if v))
        missing = [v for v, r in zip(named, self.videos.get_many(named).tolist(), strict=True) if r < 0]
        times = np.array([s.last_seen for s in decoded.values()], dtype=np.float64)
        if missing:
            created = self.adopt(missing)
            if self._life.enabled:  # seen now, or they expire at the next run
                latest = now if math.isfinite(now) else np.nanmax(times, initial=-np.inf)
                self._life.videos.touch(created, float(latest))
        viewer_rows = self.viewers.add_many(list(decoded))
        self._recent.ensure(len(self.viewers))
        row_of = self.videos.get
        items = np.full((len(decoded), self.history), -1, dtype=np.int64)
        weights = np.zeros((len(decoded), self.history), dtype=np.float32)
        for i, s in enumerate(decoded.values()):
            slots = min(len(s.history), self.history)  # a sender with another history length
            items[i, :slots] = [row_of(v) if v else -1 for v in s.history[:slots]]
            weights[i, :slots] = s.history_weights()[:slots]
        weights[items < 0] = 0.0
        self._recent.store(viewer_rows, items, weights)
        self.seen.replace(viewer_rows.tolist(), [[row_of(v) for v in s.seen] for s in decoded.values()])
        if self._life.enabled:
            seen_at = np.where(np.isnan(times), now, times)
            self._life.viewers.table.ensure(len(self.viewers))
            self._life.viewers.array[viewer_rows] = seen_at
        self._changed()
        return len(decoded)

    def adopt(self, ids: list[str]) -> np.ndarray:
        """Videos met elsewhere (a restored viewer watched them), created here as learning
        creates a new video; their rows. :class:`model.replica.ReplicatedRanker` starts them
        at the vectors every worker agrees on instead."""
        rows = self.videos.add_many(ids)
        n = len(self.videos)
        self._E.ensure(n)
        for table in self._video_tables().values():
            table.ensure(n)
            table.reset(rows)  # a reused row holds what its last video left
        self._fit_cooc(n)
        self._E.array[rows] = self._random_vectors(rows.size)
        self._changed()
        return rows


def _NO_EXCLUSIONS(rows: int) -> tuple[np.ndarray, np.ndarray]:  # noqa: N802
    """Compressed exclusion rows that exclude nothing."""
    return np.zeros(rows + 1, dtype=np.int64), NO_COLUMNS


def _fields(events: Sequence[WatchEvent]) -> tuple[Sequence, ...]:
    """Timestamps, viewers, videos, watch times and durations of ``events``, each a tuple
    (one transposition in C instead of a Python loop per field)."""
    if not events:
        return (), (), (), (), ()
    return tuple(zip(*events, strict=True))[:5]


def _named(history: list[int], id_of) -> list[str]:  # noqa: ANN001 - a list's __getitem__
    """The ids of a history's video rows, ``""`` in its empty slots (``-1``): mapped in C, as
    the empty slots of a history are almost always its oldest ones.

    >>> _named([2, 0, -1, -1], ["a", "b", "c"].__getitem__), _named([1, -1, 0], ["a", "b"].__getitem__)
    (['c', 'a', '', ''], ['b', '', 'a'])
    """
    if min(history) >= 0:
        return list(map(id_of, history))
    k = history.index(-1)
    if max(history[k:]) < 0:
        return [*map(id_of, history[:k]), *[""] * (len(history) - k)]
    return [id_of(r) if r >= 0 else "" for r in history]


def _running_sums(values: np.ndarray, target: float, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """The running sums of ``values`` sorted best first, and those values, as far down as the
    sums reach ``target`` (or all of them): the same numbers as ``np.cumsum`` of the whole
    sorted vector, up to there. The top ``depth`` values are sorted first (doubled while short):
    a shortlist is a fifth of a catalogue, and sorting and summing all of it cost 60 us a batch
    at 10,000 videos.

    >>> sums, best = _running_sums(np.array([1.0, 4.0, 2.0, 3.0]), 6.5, 1)
    >>> sums.tolist(), best.tolist()
    ([4.0, 7.0], [4.0, 3.0])
    """
    n = values.size
    while True:
        depth = min(depth, n)
        top = values if depth == n else np.partition(values, n - depth)[n - depth :]
        descending = np.sort(top)[::-1]
        sums = np.cumsum(descending)
        if depth == n or sums[-1] >= target:
            return sums, descending
        depth *= 2


def _rows_at(columns: np.ndarray, top: np.ndarray) -> np.ndarray:
    """The video rows of top-n columns (``-1`` stays ``-1``)."""
    rows = np.full_like(top, -1)
    chosen = top >= 0
    rows[chosen] = columns[top[chosen]]
    return rows


def _rows_of(ptr: np.ndarray, videos: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Compressed rows ``rows`` of ``(ptr, videos)``, as compressed rows of their own."""
    lengths = ptr[rows + 1] - ptr[rows]
    sub = np.zeros(rows.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=sub[1:])
    index = np.repeat(ptr[rows] - sub[:-1], lengths) + np.arange(sub[-1])
    return sub, videos[index]
