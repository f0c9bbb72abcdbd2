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
:mod:`model.kernels`), and ``guard_trips`` counts how often it refused.

Batch semantics (``learn_many``): all events of a batch are learned from the parameters
before the batch (new rows start at their initial values: zero transition vectors, small
random video vectors, zero bias), their gradients are summed, and each touched row takes
one Adagrad step. What the batch knows exactly it uses exactly: each event's *history* and
*exclusions* include its viewer's earlier events in the same batch (viewers arrive in bursts,
so this is what keeps a large batch almost as good as a batch of one). A batch of one is
exactly ``learn_one``. ``rank_events`` uses the very same representation, so
``rank_and_learn`` (the evaluator's and the service's call) learns from the score matrix its
test step computed.

What is ranked: the *shortlist*, the videos people are watching now (decayed popularity), as
many as hold ``shortlist_share`` of recent watches and at least ``shortlist``, is ranked for
each batch, and its softmax normalises over the shortlist plus the batch's own videos (so a
tail video still learns from its watches, and rises into the shortlist when people start
watching it). This is YouTube's two stages in their simplest form: the cost of an event
follows how many videos are being watched, not the size of the catalogue. A catalogue of no
more than ``shortlist`` videos is ranked whole.

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from contract.events import WatchEvent
from model.base import CatalogueScorer, ModelStats, Ranking, Recommendation, recommendations
from model.cooc import CoCounts
from model.frequency import FrequencyFilter
from model.history import RecentHistory, group_positions
from model.ids import GrowableTable, IdIndex
from model.kernels import adagrad_step, softmax_grad
from model.lifecycle import DAY, Lifecycle
from model.parts import Counters, FixedArrays, RandomState
from model.persist import Part
from model.seen import SeenVideos
from model.topk import mask_scores, top_n, top_n_with_rank
from model.weighting import watch_weights

__all__ = ["EmbeddingRanker"]

#: Video columns to score: every row (a slice) or some rows (an index array).
Columns = slice | np.ndarray


def _distinct(rows: np.ndarray, bound: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(rows, return_inverse=True)`` for rows in ``[0, bound)``.

    A mark-and-cumsum over ``bound`` cells instead of a sort when that is cheaper (a batch's
    history rows number thousands, the catalogue is small).
    """
    if bound > 64 * max(rows.size, 1):
        return np.unique(rows, return_inverse=True)
    mark = np.zeros(bound, dtype=bool)
    mark[rows] = True
    return np.flatnonzero(mark), (np.cumsum(mark) - 1)[rows]


@dataclass
class _Batch:
    """A batch mapped to rows, with each event's causal viewer representation."""

    viewer_rows: np.ndarray  # (B,) rows, provisional (= the row learning will create) for new ids
    video_rows: np.ndarray  # (B,) idem
    n_videos: int  # video rows before the batch (released rows included)
    viewer_known: np.ndarray  # (B,) bool: the viewer held a row before the batch
    video_known: np.ndarray  # (B,) bool: the video held a row before the batch
    weights: np.ndarray  # (B,) watch weights
    history: np.ndarray  # (B, history) video rows before each event, most recent first
    final: tuple[np.ndarray, np.ndarray, np.ndarray]  # per viewer history after the batch
    in_history: np.ndarray  # (D,) the distinct video rows in the batch's histories
    mix: np.ndarray  # (B, D) mixing weights over ``in_history`` (rows sum to 1 or 0)
    U: np.ndarray  # (B, dim) viewer representation before each event
    cold: np.ndarray  # (B,) bool: an unknown viewer without history (gets trending when ranked)
    exclude: tuple[np.ndarray, np.ndarray]  # causal exclusion cells (cols may be >= n_videos)
    cooc: np.ndarray | None  # (B, video rows after the batch, or columns) co-occurrence feature
    # With a shortlist: the batch's columns (the shortlist first, then the batch's other videos),
    # how many lead columns are the shortlist, and each video row's column (-1: none).
    columns: np.ndarray | None = None
    ranked: int = 0
    column_of: np.ndarray | None = None


class _Logits(NamedTuple):
    """What the softmax step learns from: logits over ``columns`` (with their co-occurrence
    feature ``cooc``), each event's target column, and the exclusion cells still to apply."""

    logits: np.ndarray
    targets: np.ndarray
    exclude: tuple[np.ndarray, np.ndarray]
    columns: Columns
    cooc: np.ndarray | None


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
        admits everything; more pays where most ids are one-offs.
    shortlist, shortlist_share
        Which videos are ranked for each batch and normalised over in its softmax: the most
        watched lately (decayed popularity), as many as hold ``shortlist_share`` of the recent
        watches and at least ``shortlist``, plus, for learning, the batch's own videos. A video
        outside the shortlist is not recommended until it gets watched into it.
        ``shortlist_share=0``: exactly ``shortlist`` videos; ``shortlist=None``: the whole
        catalogue.
    seed
        Drives all randomness (the initial video vectors).
    """

    name = "streamrec"

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
        seed: int | None = 0,
    ) -> None:
        super().__init__(seed=seed)
        if dim < 1 or history < 1:
            raise ValueError("dim and history must be positive")
        if not 0 <= cooc_window <= history or cooc_terms < 1:
            raise ValueError("cooc_window must be in [0, history] and cooc_terms >= 1")
        if not 0.0 < recency <= 1.0:
            raise ValueError(f"recency must be in (0, 1], got {recency}")
        if lr <= 0 or reg < 0 or init_scale <= 0 or max_grad_norm <= 0 or trending_half_life <= 0:
            raise ValueError("lr, init_scale, max_grad_norm, trending_half_life must be > 0; reg >= 0")
        if not isinstance(min_events, int) or min_events < 1:
            raise ValueError(f"min_events must be an integer >= 1, got {min_events!r}")
        if shortlist is not None and (not isinstance(shortlist, int) or shortlist < 1):
            raise ValueError(f"shortlist must be None or an integer >= 1, got {shortlist!r}")
        if not 0.0 <= shortlist_share <= 1.0:
            raise ValueError(f"shortlist_share must be in [0, 1], got {shortlist_share!r}")
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
        self.seed = seed
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

        Per viewer: the recent-history ring (int64 rows + float32 weights) and about 36 bytes
        per watch in the seen list (a list slot and an int object; the average is used). Per
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
        seen = 36 * self.seen.entries()
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
                self, ("events_learned", "events_filtered", "guard_trips", "loss_sum", "_trend_scale")
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
        if self._cooc.rows not in (0, n_videos):
            raise ValueError(f"co-occurrence covers {self._cooc.rows} videos, but {n_videos} rows exist")
        self._life.check_rows(n_viewers, n_videos)

    # -- scoring -----------------------------------------------------------------------------

    def _mixing_weights(self, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``m_a`` for histories ``items`` (``-1``: empty slot) of watch ``weights``:
        ``recency ** a`` times the watch's weight, normalised per row (a row of 0 when empty)."""
        decay = (self.recency ** np.arange(self.history)).astype(np.float32)
        mix_w = np.where(items >= 0, weights * decay[None, :], 0.0).astype(np.float32)
        norm = mix_w.sum(axis=1, keepdims=True)
        mix_w /= np.where(norm > 0, norm, 1.0)
        return mix_w

    def _use_cooc(self, n_videos: int) -> bool:
        return self.cooc_window > 0 and n_videos <= self.cooc_max_videos

    def _logits(self, U: np.ndarray, columns: Columns, cooc: np.ndarray | None) -> np.ndarray:
        """Scores of video rows ``columns`` for representations ``U``: one matrix product, plus
        ``alpha`` times ``cooc``, the co-occurrence feature of exactly those columns."""
        scores = U @ self._E.array[columns].T + self._b.array[columns]
        if cooc is not None:
            scores += self._alpha[0] * cooc
        return scores

    def _mask_free(self, scores: np.ndarray) -> None:
        """Released video rows can never be recommended (nor compete in the softmax)."""
        free = np.asarray(self.videos.free_rows, dtype=np.int64)
        if free.size:
            scores[:, free[free < scores.shape[1]]] = -np.inf

    def _trending(self) -> np.ndarray:
        return (self._trend.array / self._trend_scale).astype(np.float32)

    def _shortlist(self, n_videos: int) -> np.ndarray | None:
        """The live video rows to rank, sorted: the hottest ones (decayed popularity), at least
        ``shortlist`` and as many as hold ``shortlist_share`` of it (``None``: rank everything).

        Once per batch: an O(catalogue) selection, and a sort only when the ``shortlist``
        hottest hold less than the share.
        """
        k = self.shortlist
        if k is None or self.videos.live <= k:
            return None
        heat = self._trend.array[:n_videos].copy()
        free = self.videos.free_rows
        if free:  # released rows hold no video; live rows all have heat >= 0
            heat[np.asarray(free, dtype=np.int64)] = -1.0
        hottest = np.argpartition(heat, n_videos - k)[n_videos - k :]
        total = heat[heat > 0].sum()
        if heat[hottest].sum() < self.shortlist_share * total:
            by_heat = np.argsort(-heat)
            held = np.cumsum(heat[by_heat])
            k = int(np.searchsorted(held, self.shortlist_share * total)) + 1
            if k >= self.videos.live:
                return None
            hottest = by_heat[:k]
        return np.sort(hottest)

    # -- batch preparation -------------------------------------------------------------------

    def _batch(self, events: Sequence[WatchEvent]) -> _Batch:
        """Map a batch to rows and build each event's representation from pre-batch state."""
        viewer_ids = [e.viewer for e in events]
        video_ids = [e.video for e in events]
        n_videos = len(self.videos)
        # Rows learning will give new ids (released rows first), created only when learned.
        viewer_now, video_now = self.viewers.get_many(viewer_ids), self.videos.get_many(video_ids)
        viewer_rows = self.viewers.next_rows(viewer_ids, viewer_now)
        video_rows = self.videos.next_rows(video_ids, video_now)
        viewer_known, video_known = viewer_now >= 0, video_now >= 0
        weights = watch_weights([e.watch_time for e in events], [e.duration for e in events])
        grouping = group_positions(viewer_rows)  # shared by histories, exclusions, co-occurrence
        items, hist_w, *final = self._recent.for_batch(viewer_rows, video_rows, weights, grouping)
        mix_w = self._mixing_weights(items, hist_w)
        valid = items >= 0
        n_after = max(n_videos, int(video_rows.max()) + 1 if len(events) else 0)
        # The batch's histories share most of their videos (bursts): mix over the distinct ones.
        in_history, slot = _distinct(items[valid], n_after)
        cells = np.nonzero(valid)[0] * in_history.size + slot  # (event, distinct video) cells
        mix = np.bincount(cells, mix_w[valid], len(events) * in_history.size)
        mix = mix.astype(np.float32).reshape(len(events), in_history.size)
        # New transition rows start at zero, so only the known part contributes.
        known = in_history < n_videos
        U = mix[:, known] @ self._Q.array[in_history[known]]
        # A reused row is below len(viewers) but holds no state: known means known before.
        cold = ~viewer_known & ~valid.any(axis=1)
        # New viewers' rows hold no seen list yet; new videos' rows are excluded in-batch too.
        exclude = self.seen.exclusion_for_events(viewer_rows, video_rows, grouping)
        columns, ranked, column_of = None, 0, None
        shortlist = self._shortlist(n_videos)
        if shortlist is not None:
            column_of = np.full(n_after, -1, dtype=np.int64)
            column_of[shortlist] = np.arange(shortlist.size)
            others = np.unique(video_rows[column_of[video_rows] < 0])
            columns, ranked = np.concatenate([shortlist, others]), shortlist.size
            column_of[others] = np.arange(ranked, columns.size)
        cooc = None
        if self._use_cooc(n_after):
            terms = min(self.cooc_terms, self.history)
            order, _, within = grouping
            cooc = self._cooc.batch_feature(
                items[:, :terms],
                mix_w[:, :terms],
                n_after,
                self.cooc_exponent,
                video_rows,
                order,
                within,
                columns=columns,
            )
        return _Batch(
            viewer_rows=viewer_rows,
            video_rows=video_rows,
            n_videos=n_videos,
            viewer_known=viewer_known,
            video_known=video_known,
            weights=weights,
            history=items,
            final=tuple(final),
            in_history=in_history,
            mix=mix,
            U=U,
            cold=cold,
            exclude=exclude,
            cooc=cooc,
            columns=columns,
            ranked=ranked,
            column_of=column_of,
        )

    # -- test step ---------------------------------------------------------------------------

    def rank_events(self, events: Sequence[WatchEvent], n: int = 10) -> Ranking:
        """Top-``n`` before each event, from the state before the batch (causal history)."""
        return self._test_step(self._batch(events), n)[0]

    def rank_and_learn(self, events: Sequence[WatchEvent], n: int = 10) -> Ranking:
        """:meth:`rank_events`, then :meth:`learn_many` from the same prepared batch and score
        matrix (the same result, computed once).

        When the admission filter (``min_events``) holds events back, the batch learned is not
        the batch ranked: it is prepared again.
        """
        batch = self._batch(events)
        ranking, scores = self._test_step(batch, n)
        admitted = self._admitted(events)
        if admitted is events:
            self._learn(events, batch, scores)
        elif admitted:
            batch = self._batch(admitted)
            self._learn(admitted, batch, self._test_step(batch, None)[1])
        return ranking

    def _test_step(self, batch: _Batch, n: int | None) -> tuple[Ranking | None, np.ndarray]:
        """The test step of a prepared batch: the top-``n`` (``None``: no ranking, only the
        scores) and the score matrix the learning step starts from, the model's scores from
        before the batch with excluded and non-finite cells at ``-inf``, but each event's own."""
        if batch.columns is None:
            ranked = None  # the whole catalogue, by row
            known_cols = slice(0, batch.n_videos)
            cooc = None if batch.cooc is None else batch.cooc[:, known_cols]
            scores = self._logits(batch.U, known_cols, cooc)
            targets = np.where(batch.video_known, batch.video_rows, -1)
            ex_rows, ex_cols = batch.exclude
            inside = ex_cols < batch.n_videos
            exclude = (ex_rows[inside], ex_cols[inside])
            # Released rows can never be recommended: -inf in place (learning rescores the
            # ones this batch reuses for new videos).
            self._mask_free(scores)
        else:
            # The shortlist, by column: a video outside it cannot be recommended (rank UNRANKED).
            ranked = batch.columns[: batch.ranked]
            cooc = None if batch.cooc is None else batch.cooc[:, : batch.ranked]
            scores = self._logits(batch.U, ranked, cooc)
            column = batch.column_of[batch.video_rows]
            targets = np.where(batch.video_known & (column < batch.ranked), column, -1)
            ex_rows, ex_cols = batch.exclude
            ex_cols = batch.column_of[ex_cols]
            inside = (ex_cols >= 0) & (ex_cols < batch.ranked)
            exclude = (ex_rows[inside], ex_cols[inside])
        rows = np.arange(scores.shape[0])
        known = targets >= 0
        target_logit = scores[rows[known], targets[known]].copy()
        if n is None:
            mask_scores(scores, exclude)
            ranking = None
        else:
            ranking = self._ranking(batch, scores, n, targets, exclude, ranked)
        scores[rows[known], targets[known]] = target_logit
        return ranking, scores

    def _ranking(
        self,
        batch: _Batch,
        scores: np.ndarray,
        n: int,
        targets: np.ndarray,
        exclude: tuple[np.ndarray, np.ndarray],
        ranked: np.ndarray | None,
    ) -> Ranking:
        """Rank ``scores`` in place (masking them as :func:`~model.topk.mask_scores` does)."""
        top, rank = top_n_with_rank(scores, n, targets, exclude)
        cold = np.flatnonzero(batch.cold)
        if cold.size:
            # Viewers the model knows nothing about see what is trending instead (learning
            # still starts from the model's own scores for them): re-rank just those rows.
            trending = self._trending()
            trending = trending[: batch.n_videos] if ranked is None else trending[ranked]
            trending = np.broadcast_to(trending, (cold.size, trending.size)).copy()
            if ranked is None:
                self._mask_free(trending)
            on_cold = batch.cold[exclude[0]]
            where = (np.cumsum(batch.cold) - 1)[exclude[0][on_cold]]
            top[cold], rank[cold] = top_n_with_rank(trending, n, targets[cold], (where, exclude[1][on_cold]))
        if ranked is not None:
            top = np.where(top >= 0, ranked[np.maximum(top, 0)], -1)
        return Ranking(top=top, rank=rank, catalogue=self.videos.live)

    # -- train step --------------------------------------------------------------------------

    def learn_many(self, events: Sequence[WatchEvent]) -> None:
        """Learn a batch (see the module docstring for the exact batch semantics)."""
        events = self._admitted(events)
        if events:
            batch = self._batch(events)
            self._learn(events, batch, self._test_step(batch, None)[1])

    def _learn(self, events: Sequence[WatchEvent], batch: _Batch, scores: np.ndarray) -> None:
        """The train step of a prepared batch, from the score matrix of its test step."""
        viewer_rows, video_rows = batch.viewer_rows, batch.video_rows
        # Create the new rows (the same numbers the batch was prepared with): adding only the
        # ids the index lacks gives the same rows, at a third of the cost of adding all.
        fresh = np.flatnonzero(~batch.viewer_known).tolist()
        if fresh:
            self.viewers.add_many([events[i].viewer for i in fresh])
        fresh = np.flatnonzero(~batch.video_known).tolist()
        if fresh:
            self.videos.add_many([events[i].video for i in fresh])
        n_viewers, n_videos = len(self.viewers), len(self.videos)
        self._recent.ensure(n_viewers)
        new = self._E.ensure(n_videos)
        if len(new):
            new[:] = self._random_vectors(len(new))
        for table in self._video_tables().values():
            table.ensure(n_videos)

        grad_u = self._softmax_step(batch, scores).astype(np.float32, copy=False)
        # Viewer side: the transition vectors of the histories.
        in_history = batch.in_history
        if in_history.size:
            g = batch.mix.T @ grad_u
            if self.reg:
                g += self.reg * self._Q.array[in_history]
            self.guard_trips += adagrad_step(
                self._Q.array, self._Q_acc.array, in_history, g, self.lr, self.max_grad_norm
            )

        self._recent.store(*batch.final)
        if self._use_cooc(n_videos):
            self._cooc.add(batch.history, video_rows, self.cooc_window)
        elif self._cooc.rows:  # past the cap: free the counts
            self._cooc = CoCounts(max_size=self.cooc_max_videos)
        self.seen.add_many(viewer_rows, video_rows)
        np.add.at(self._counts.array, video_rows, 1.0)
        self._add_trending(video_rows)
        self.events_learned += len(events)
        times = np.fromiter((e.timestamp for e in events), dtype=np.float64, count=len(events))
        self._life.observe(viewer_rows, video_rows, times)
        if self._life.due():
            self._expire()

    def _softmax_step(self, batch: _Batch, scores: np.ndarray) -> np.ndarray:
        """One Adagrad step of the weighted softmax on the video side (vectors, bias and
        ``alpha``), from the test step's ``scores``; returns the gradient of each event's ``U``."""
        prepared = (self._catalogue_logits if batch.columns is None else self._shortlist_logits)(
            batch, scores
        )
        logits, targets, (ex_rows, ex_cols), columns, cooc = prepared
        # Leave out each viewer's watched videos, but never the event's own.
        rows = np.arange(logits.shape[0])
        target_logit = logits[rows, targets].copy()
        logits.reshape(-1)[ex_rows * logits.shape[1] + ex_cols] = -np.inf
        logits[rows, targets] = target_logit
        grad, loss, skipped = softmax_grad(logits, targets, batch.weights)
        self.guard_trips += skipped
        if math.isfinite(loss):
            self.loss_sum += loss
        grad_u = grad @ self._E.array[columns]
        whole = isinstance(columns, slice)
        self._video_step(None if whole else columns, grad.T @ batch.U, grad.sum(axis=0), batch.video_rows)
        if cooc is not None:
            g = np.array([[np.vdot(grad, cooc)]], dtype=np.float32)
            self.guard_trips += adagrad_step(
                self._alpha, self._alpha_acc, None, g, self.lr, self.max_grad_norm
            )
        return grad_u

    def _catalogue_logits(self, batch: _Batch, scores: np.ndarray) -> _Logits:
        """:class:`_Logits` over every video row: the test step's ``scores`` of the rows that
        existed before the batch, the new rows scored now that they exist."""
        n_before, n_videos = batch.n_videos, len(self.videos)
        U, cooc = batch.U, batch.cooc

        def feature(columns: Columns) -> np.ndarray | None:
            return None if cooc is None else cooc[:, columns]

        if n_before == n_videos:
            logits = scores  # the usual case: no new video
        else:
            logits = np.empty((U.shape[0], n_videos), dtype=np.float32)
            logits[:, :n_before] = scores
            new = slice(n_before, n_videos)
            logits[:, new] = self._logits(U, new, feature(new))
        # Released rows this batch reused were masked when ranked: score them as new rows.
        reused = np.unique(batch.video_rows[~batch.video_known & (batch.video_rows < n_before)])
        if reused.size:
            logits[:, reused] = self._logits(U, reused, feature(reused))
        self._mask_free(logits)
        # The test step excluded the cells of the rows it scored; those of new rows remain.
        ex_rows, ex_cols = batch.exclude
        todo = ex_cols >= n_before
        if reused.size:
            todo |= np.isin(ex_cols, reused)
        whole = slice(0, n_videos)
        return _Logits(logits, batch.video_rows, (ex_rows[todo], ex_cols[todo]), whole, feature(whole))

    def _shortlist_logits(self, batch: _Batch, scores: np.ndarray) -> _Logits:
        """:class:`_Logits` over the batch's columns: the shortlist, whose ``scores`` the test
        step computed, then the batch's other videos, scored now that the new ones exist."""
        columns, ranked, cooc = batch.columns, batch.ranked, batch.cooc
        others = self._logits(batch.U, columns[ranked:], None if cooc is None else cooc[:, ranked:])
        logits = np.concatenate([scores, others], axis=1)
        # The test step excluded the shortlist's cells; those of the other columns remain.
        ex_rows, ex_cols = batch.exclude
        ex_cols = batch.column_of[ex_cols]
        todo = ex_cols >= ranked
        return _Logits(
            logits, batch.column_of[batch.video_rows], (ex_rows[todo], ex_cols[todo]), columns, cooc
        )

    def _video_step(self, rows: np.ndarray | None, grad_E: np.ndarray, grad_b: np.ndarray, positives) -> None:
        """Adagrad on video vectors and biases: all rows (``rows`` None) or unique ``rows``;
        ``reg`` applies to the ``positives``' vectors, once per event."""
        lr, clip = self.lr, self.max_grad_norm
        E = self._E.array
        if self.reg:
            pos_rows, pos_counts = np.unique(positives, return_counts=True)
            if rows is None:
                grad_E[pos_rows] += self.reg * pos_counts[:, None] * E[pos_rows]
            else:  # rows are unique, not necessarily sorted
                by_row = np.argsort(rows)
                where = by_row[np.searchsorted(rows, pos_rows, sorter=by_row)]
                grad_E[where] += self.reg * pos_counts[:, None] * E[pos_rows]
        self.guard_trips += adagrad_step(E, self._E_acc.array, rows, grad_E, lr, clip)
        self.guard_trips += adagrad_step(self._b.array, self._b_acc.array, rows, grad_b[:, None], lr, clip)

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
        return self._viewer_logits(viewer_rows)

    def recommend_many(
        self, viewers: Sequence[str], n: int = 10, exclude_seen: bool = True
    ) -> list[Recommendation]:
        """Top-``n`` for each viewer from the shortlist, as :meth:`rank_events` ranks.

        A viewer who has watched so much of the shortlist that fewer than ``n`` remain gets
        a list from the whole catalogue.
        """
        shortlist = self._shortlist(len(self.videos))
        if shortlist is None:
            return super().recommend_many(viewers, n, exclude_seen)
        rows = self.viewers.get_many(viewers)
        exclude = None
        if exclude_seen:
            column_of = np.full(len(self.videos), -1, dtype=np.int64)
            column_of[shortlist] = np.arange(shortlist.size)
            ex_rows, ex_cols = self.seen.exclusion_for_viewers(rows.tolist())
            ex_cols = column_of[ex_cols]
            exclude = (ex_rows[ex_cols >= 0], ex_cols[ex_cols >= 0])
        cols, scores = top_n(self._viewer_logits(rows, shortlist), n, exclude)
        videos = np.where(cols >= 0, shortlist[np.maximum(cols, 0)], -1)
        lists = recommendations(videos, scores, self.videos.ids)
        short = np.flatnonzero((cols < 0).any(axis=1)).tolist()
        if short:
            whole = super().recommend_many([viewers[i] for i in short], n, exclude_seen)
            for i, recommendation in zip(short, whole, strict=True):
                lists[i] = recommendation
        return lists

    def _viewer_logits(self, viewer_rows: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
        """Scores of every video (or of video rows ``columns``) for stored viewers."""
        n_videos = len(self.videos)
        known = viewer_rows >= 0
        width = n_videos if columns is None else columns.size
        scores = np.empty((viewer_rows.shape[0], width), dtype=np.float32)
        if known.any():
            items, hist_w = self._recent.of_rows(viewer_rows[known])
            mix_w = self._mixing_weights(items, hist_w)
            U = np.einsum("bl,blk->bk", mix_w, self._Q.array[np.where(items >= 0, items, 0)])
            cooc = None
            if self._use_cooc(n_videos):
                terms = min(self.cooc_terms, self.history)
                cooc = self._cooc.feature(
                    items[:, :terms], mix_w[:, :terms], n_videos, self.cooc_exponent, columns=columns
                )
            scores[known] = self._logits(U, slice(0, n_videos) if columns is None else columns, cooc)
        if not known.all():
            trending = self._trending()
            scores[~known] = trending if columns is None else trending[columns]
        if columns is None:
            self._mask_free(scores)
        return scores
