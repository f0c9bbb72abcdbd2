"""streamrec with a long-term taste profile beside the recent history (FISM-style).

The default model (:class:`~model.embedding.EmbeddingRanker`) represents a viewer by their
last ``history`` watches, mixed with recency weights ``0.8 ** age``: about five watches carry
most of the weight, and nothing older than twenty counts. On ML-100K that is what limits it
for the viewers who have rated the most (HR@10 0.40 for viewers with fewer than 5 earlier
events, 0.16 for those with 100 to 400, from the default model's per-event ranks). This model
adds a second, long-term part to the viewer vector:

    u = sum_a m_a q_{h_a}  +  w * mean_{j in watched} p_j

where the mean runs over *every* video the viewer watched before the event (the same causal
list the exclusions use, in-batch earlier watches included) and ``p`` is a third table of
video vectors, learned through the same softmax gradient as ``q`` (Adagrad, same ``lr``),
starting at zero so that a fresh model scores exactly as the default one. ``w`` is
``profile_weight``; a viewer's profile is read from at most ``profile_watches`` of their
watches (the most recent ones), which bounds the cost of a very heavy viewer.

This is FISM's "viewer = mean of the vectors of what they watched" (Kabbur et al. 2013), or
YouTube's averaged watch embeddings, kept apart from the sequential part so that the
recency-weighted history stays the next-watch signal and the profile learns taste.

Measured (``bench/model_search.py``, batch 256, one run): ML-100K HR@10 0.2081 -> 0.2114 on
the first 80%, 0.2262 -> 0.2302 on the last 20%, 0.2119 -> 0.2153 whole; the synthetic demo
stream 0.1814 -> 0.1824, the floors' stream 0.1522 -> 0.1565; 0.74-0.85x the default's
events/s. ``profile_weight`` 1.0 is as good on ML-100K's first 80% (0.2114; seeds 1 and 2:
0.2106, 0.2117 against 0.2098, 0.2103 at 0.5) but costs the demo stream 0.001 (0.1801), hence
0.5. Adagrad makes the profile's own steps independent of the weight; it scales only how much
the profile counts.

Everything else (shortlist, co-occurrence feature, expiry, batch semantics, save and load) is
the default model's. The profile adds one gather of ``profile_watches`` rows per event and one
``(B, columns) @ (columns, dim)`` product a batch.

>>> from contract.events import WatchEvent
>>> m = ProfileRanker(seed=1)
>>> for t, (v, i) in enumerate([("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"), ("c", "x"), ("c", "z")] * 20):
...     m.learn_many([WatchEvent(t, v, i)])
>>> m.learn_one("d", "x")
>>> m.recommend("d", n=1).videos
['y']
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from contract.events import WatchEvent
from model.compiled import adagrad_rows
from model.compiled_profile import profile_grad_compiled, profile_means_compiled, warm_up
from model.embedding import EmbeddingRanker, _Batch
from model.ids import GrowableTable
from model.lifecycle import DAY

__all__ = ["ProfileRanker", "profile_means", "profile_grad"]


def profile_means(
    P: np.ndarray, ptr: np.ndarray, videos: np.ndarray, limit: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per event, the mean of the rows of ``P`` over its watched videos, given as compressed
    rows ``(ptr, videos)`` (event ``e`` watched ``videos[ptr[e]:ptr[e+1]]``, in watch order).

    Only the last ``limit`` videos of each event count. Videos ``< 0`` or ``>= len(P)`` (not
    created yet: their vectors are zero) count in the mean's denominator but add nothing.
    Returns ``(means, index, owner, inv)``: ``means`` is ``(B, dim)`` float32; ``index`` the
    rows of ``P`` read, ``owner`` the event of each, ``inv`` each event's ``1 / count`` (what
    :func:`profile_grad` needs).

    >>> P = np.array([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]], dtype=np.float32)
    >>> means, index, owner, inv = profile_means(P, np.array([0, 2, 2, 5]), np.array([0, 1, 0, 2, 7]), 3)
    >>> [[round(x, 3) for x in row] for row in means.tolist()]   # video 7 has no row yet: a zero
    [[0.5, 1.0], [0.0, 0.0], [1.667, 1.333]]
    >>> index.tolist(), owner.tolist(), [round(x, 3) for x in inv.tolist()]
    ([0, 1, 0, 2], [0, 0, 2, 2], [0.5, 0.0, 0.333])
    """
    B, dim = ptr.shape[0] - 1, P.shape[1]
    take = np.minimum(np.diff(ptr), limit)
    total = int(take.sum())
    owner = np.repeat(np.arange(B, dtype=np.int64), take)
    offsets = np.zeros(B + 1, dtype=np.int64)
    np.cumsum(take, out=offsets[1:])
    # Entry k of event e sits at ptr[e + 1] - take[e] + (k - offsets[e]).
    index = videos[np.repeat(ptr[1:] - take - offsets[:-1], take) + np.arange(total)]
    counted = (index >= 0) & (index < P.shape[0])
    index, owner = index[counted], owner[counted]
    means = np.zeros((B, dim), dtype=np.float32)
    if index.size:
        np.add.at(means, owner, P[index])
    inv = np.zeros(B, dtype=np.float32)
    inv[take > 0] = 1.0 / take[take > 0]
    means *= inv[:, None]
    return means, index, owner, inv


def profile_grad(
    grad_u: np.ndarray, index: np.ndarray, owner: np.ndarray, inv: np.ndarray, weight: float
) -> tuple[np.ndarray, np.ndarray]:
    """The gradient of the rows :func:`profile_means` read, from the viewer gradient
    ``grad_u`` (``(B, dim)``) of a representation ``u + weight * means``: each read row gets
    ``weight * inv[e] * grad_u[e]`` of its event ``e``, summed per distinct row. Returns
    ``(rows, grad)`` with the rows sorted and distinct.

    >>> grad_u = np.array([[1.0, 2.0], [3.0, 3.0]], np.float32)
    >>> inv = np.array([0.5, 1.0], np.float32)
    >>> rows, g = profile_grad(grad_u, np.array([4, 2, 4]), np.array([0, 0, 1]), inv, 2.0)
    >>> rows.tolist(), g.tolist()
    ([2, 4], [[1.0, 2.0], [7.0, 8.0]])
    """
    if not index.size:
        return index, np.zeros((0, grad_u.shape[1]), dtype=np.float32)
    rows, slot = np.unique(index, return_inverse=True)
    g = np.zeros((rows.size, grad_u.shape[1]), dtype=np.float32)
    np.add.at(g, slot, (weight * inv[owner])[:, None] * grad_u[owner])
    return rows, g


class ProfileRanker(EmbeddingRanker):
    """:class:`~model.embedding.EmbeddingRanker` plus a long-term taste profile per viewer.

    Parameters are the default model's, plus:

    profile_weight
        ``w``: how much the mean of the profile vectors of everything watched adds to the
        viewer vector (0: exactly the default model, with one more table).
    profile_watches
        At most this many of a viewer's watches (the most recent) make up the profile.
    """

    name = "streamrec_profile"

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
        profile_weight: float = 0.5,
        profile_watches: int = 500,
    ) -> None:
        if not profile_weight >= 0:
            raise ValueError(f"profile_weight must be >= 0, got {profile_weight!r}")
        if not isinstance(profile_watches, int) or profile_watches < 1:
            raise ValueError(f"profile_watches must be an integer >= 1, got {profile_watches!r}")
        self.profile_weight = profile_weight
        self.profile_watches = profile_watches
        # The viewer rows whose profile ``_mixing`` adds (set around the serving paths only).
        self._profile_rows: np.ndarray | None = None
        warm_up()
        super().__init__(
            dim=dim,
            history=history,
            recency=recency,
            lr=lr,
            reg=reg,
            init_scale=init_scale,
            max_grad_norm=max_grad_norm,
            trending_half_life=trending_half_life,
            cooc_window=cooc_window,
            cooc_terms=cooc_terms,
            cooc_max_videos=cooc_max_videos,
            cooc_weight=cooc_weight,
            cooc_exponent=cooc_exponent,
            viewer_ttl=viewer_ttl,
            video_ttl=video_ttl,
            expire_every=expire_every,
            min_events=min_events,
            shortlist=shortlist,
            shortlist_share=shortlist_share,
            shortlist_budget=shortlist_budget,
            seed=seed,
        )

    # -- state -------------------------------------------------------------------------------

    def _init_state(self) -> None:
        super()._init_state()
        self._P = GrowableTable(self.dim)  # profile vectors: zero until learned
        self._P_acc = GrowableTable(self.dim)

    def _video_tables(self) -> dict[str, GrowableTable]:
        return {**super()._video_tables(), "profile_vectors": self._P, "profile_vectors_acc": self._P_acc}

    def memory_bytes(self) -> dict[str, int]:
        out = super().memory_bytes()
        extra = 2 * 4 * self.dim  # profile vector and its Adagrad state
        out["per_video"] += extra
        out["total"] += extra * len(self.videos)
        return out

    # -- the profile in the viewer vector ------------------------------------------------------

    def _profile(self, ptr: np.ndarray, videos: np.ndarray) -> np.ndarray:
        """``(B, dim)`` profile means of the watches ``(ptr, videos)`` (compressed rows)."""
        return profile_means_compiled(self._P.array, ptr, videos, self.profile_watches)[0]

    def _batch(self, events: Sequence[WatchEvent]) -> _Batch:
        """The default model's batch, with each event's profile added to its viewer vector
        (its watches before the event: the batch's causal exclusions)."""
        batch = super()._batch(events)
        if self.profile_weight:
            batch.U = batch.U + self.profile_weight * self._profile(*batch.exclude)
            batch.profile = batch.exclude
        return batch

    def _mixing(self, items: np.ndarray, weights: np.ndarray, bound: int):
        mix, U, in_history, slot = super()._mixing(items, weights, bound)
        rows = self._profile_rows
        if rows is not None and self.profile_weight:
            U = U + self.profile_weight * self._profile(*self.seen.exclusions_of(rows))
        return mix, U, in_history, slot

    def _top_n(self, rows: np.ndarray, n: int, exclude_seen: bool, shortlist: np.ndarray | None):
        self._profile_rows = rows[rows >= 0]  # the rows, in order, whose histories it mixes
        try:
            return super()._top_n(rows, n, exclude_seen, shortlist)
        finally:
            self._profile_rows = None

    def viewer_scores(self, viewer_rows: np.ndarray) -> np.ndarray:
        self._profile_rows = viewer_rows[viewer_rows >= 0]
        try:
            return super().viewer_scores(viewer_rows)
        finally:
            self._profile_rows = None

    def _update(self, events, batch, grad, targets, loss, skipped, grad_b, grad_alpha) -> None:  # noqa: ANN001
        """The profile vectors' Adagrad step (from the viewer gradient, with the video vectors
        of before the step), then everything the default model writes."""
        read = getattr(batch, "profile", None)
        if read is not None and read[1].size:
            grad_u = grad @ self._E.array[batch.columns]
            rows, g = profile_grad_compiled(
                grad_u, *read, self.profile_watches, self._P.rows, float(self.profile_weight)
            )
        else:
            rows = np.zeros(0, dtype=np.int64)
        if rows.size:
            if self.reg:
                g += self.reg * self._P.array[rows]
            self.guard_trips += adagrad_rows(
                self._P.array, self._P_acc.array, rows, g, self.lr, self.max_grad_norm
            )
        super()._update(events, batch, grad, targets, loss, skipped, grad_b, grad_alpha)
