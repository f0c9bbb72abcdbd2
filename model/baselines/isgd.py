"""ISGD (Vinagre, Jorge and Gama, 2014): incremental matrix factorisation for positive-only feedback.

Every watch is a rating of 1. For each event, the viewer vector ``a`` and the video vector
``b`` take one SGD step on the squared error ``err = 1 - a . b``, the viewer first::

    a += lr * (err * b - reg * a)
    b += lr * (err * a - reg * b)      # with the updated a, as in the paper's Algorithm 1

and videos are recommended by how close their prediction is to 1 (``score = -|1 - a . b|``),
again as in the paper. No negatives are sampled: this is the honest per-event reference that
the embedding model's speed and quality are quoted against (``k=10, lr=0.05, reg=0.01``).

:func:`plain_test_then_train` is the throughput yardstick: a straightforward per-event loop
(score one viewer, mask watched videos, top-n, rank, learn) around the same model, without the
batched evaluator's bookkeeping, so the reference is not slowed down by machinery it does not
need.

References: J. Vinagre, A. M. Jorge, J. Gama, "Fast incremental matrix factorization for
recommendation with positive-only feedback", UMAP 2014.

>>> from contract.events import WatchEvent
>>> m = ISGD(seed=1)
>>> m.learn_many([WatchEvent(t, "a", v) for t, v in enumerate("xyz")])
>>> len(m.recommend("a", n=5).videos), len(m.recommend("new", n=2).videos)
(0, 2)

"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from contract.events import WatchEvent
from model.base import CatalogueScorer, ModelStats
from model.baselines.rows import check_seen_rows, check_table_rows
from model.ids import GrowableTable, IdIndex
from model.parts import Counters, RandomState
from model.persist import Part
from model.seen import SeenVideos

__all__ = ["ISGD", "plain_test_then_train"]


class ISGD(CatalogueScorer):
    """Incremental SGD matrix factorisation on positive-only feedback, one event at a time.

    Parameters
    ----------
    k
        Number of latent factors.
    lr
        SGD step size.
    reg
        L2 regularisation.
    init_std
        Standard deviation of the normal initialisation of new vectors.
    seed
        Seed of the initialisation.
    """

    name = "isgd"

    def __init__(
        self, k: int = 10, lr: float = 0.05, reg: float = 0.01, init_std: float = 0.1, seed: int | None = 42
    ) -> None:
        super().__init__(seed=seed)
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        self.k = k
        self.lr = lr
        self.reg = reg
        self.init_std = init_std
        self._rng = np.random.default_rng(seed)
        self.viewers = IdIndex()
        self.videos = IdIndex()
        self.seen = SeenVideos()
        self.viewer_vectors = GrowableTable(k)
        self.video_vectors = GrowableTable(k)
        self._counts = GrowableTable(dim=0, dtype=np.float64)  # only for unknown viewers
        self.events_learned = 0

    #: ISGD never forgets an id, so it keeps no clock.
    clock = None

    def stats(self) -> ModelStats:
        vectors = self.viewer_vectors.array.nbytes + self.video_vectors.array.nbytes
        memory = vectors + self._counts.array.nbytes + self.seen.nbytes()
        return ModelStats(self.events_learned, self.viewers.live, self.videos.live, memory)

    def video_counts(self) -> np.ndarray:
        return self._counts.array

    def _grow(self, table: GrowableTable, rows: int) -> None:
        """Make ``rows`` rows exist, the new ones random (``init_std``)."""
        new = table.ensure(rows)
        if len(new):
            new[:] = self._rng.normal(0.0, self.init_std, size=new.shape)

    def learn_event(self, event: WatchEvent) -> None:
        """One SGD step for one watch (the per-event recipe; ``learn_many`` loops over it)."""
        u = self.viewers.add(event.viewer)
        self._grow(self.viewer_vectors, len(self.viewers))
        i = self.videos.add(event.video)
        self._grow(self.video_vectors, len(self.videos))
        self._counts.ensure(len(self.videos))
        self._counts.array[i] += 1.0
        a = self.viewer_vectors.array[u]
        b = self.video_vectors.array[i]
        err = 1.0 - float(a @ b)
        a += self.lr * (err * b - self.reg * a)
        b += self.lr * (err * a - self.reg * b)
        self.seen.add(u, i)

    def learn_many(self, events: Sequence[WatchEvent]) -> None:
        for e in events:
            self.learn_event(e)
        self.events_learned += len(events)

    # -- persistence (model.persist) -----------------------------------------------------------

    def state_parts(self) -> dict[str, Part]:
        # The generator too: a loaded model draws the vectors of newcomers the saved one would.
        return {
            "viewers": self.viewers,
            "videos": self.videos,
            "seen": self.seen,
            "viewer_vectors": self.viewer_vectors,
            "video_vectors": self.video_vectors,
            "counts": self._counts,
            "rng": RandomState(self._rng),
            "counters": Counters(self, ("events_learned",)),
        }

    def check_state(self) -> None:
        check_table_rows({"viewer_vectors": self.viewer_vectors}, len(self.viewers))
        check_table_rows({"video_vectors": self.video_vectors, "counts": self._counts}, len(self.videos))
        check_seen_rows(self.seen, self.viewers, self.videos)

    # -- scoring -----------------------------------------------------------------------------

    def viewer_scores(self, viewer_rows: np.ndarray) -> np.ndarray:
        """``(len(viewer_rows), videos)`` float32 scores; a row of ``-1`` gets popularity."""
        videos = self.video_vectors.array
        scores = np.empty((len(viewer_rows), videos.shape[0]), dtype=np.float32)
        known = viewer_rows >= 0
        if known.any():
            pred = self.viewer_vectors.array[viewer_rows[known]] @ videos.T
            scores[known] = -np.abs(1.0 - pred)
        if (~known).any():
            scores[~known] = self._counts.array.astype(np.float32)
        return scores


def plain_test_then_train(model: ISGD, events: Sequence[WatchEvent], n: int = 10) -> dict:
    """Per-event test-then-train of ``model`` under the evaluator's protocol, in a plain loop.

    For each event whose viewer and video were seen before: score that one viewer against all
    videos, set watched videos to ``-inf``, take the top ``n`` and the video's pessimistic
    rank; then learn the event. Returns ``events``, ``evaluated``, ``hits``, ``ndcg_sum``,
    ``rr_sum``, ``coverage`` and ``elapsed_s`` (scoring and learning only).

    >>> from contract.events import WatchEvent
    >>> stream = [WatchEvent(t, v, i) for t, (v, i) in enumerate(
    ...     [("a", "x"), ("b", "x"), ("b", "y"), ("a", "y"), ("c", "x"), ("c", "y")])]
    >>> out = plain_test_then_train(ISGD(seed=0), stream)
    >>> out["evaluated"], out["hits"]
    (2, 2)
    """
    evaluated = hits = 0
    ndcg_sum = rr_sum = 0.0
    shown: set[int] = set()
    start = time.perf_counter()
    for e in events:
        u, i = model.viewers.get(e.viewer), model.videos.get(e.video)
        if u is not None and i is not None:
            scores = -np.abs(1.0 - model.video_vectors.array @ model.viewer_vectors.array[u])
            scores[~np.isfinite(scores)] = -np.inf  # a diverged model must never score a hit
            scores[model.seen.of(u)] = -np.inf
            top = np.argpartition(-scores, n - 1)[:n] if scores.size > n else np.arange(scores.size)
            shown.update(top[np.isfinite(scores[top])].tolist())
            evaluated += 1
            target = scores[i]
            if np.isfinite(target):
                # Pessimistic rank: items tied with the target count as ranked above it.
                rank = int((scores >= target).sum()) - 1
                rr_sum += 1.0 / (rank + 1)
                if rank < n:
                    hits += 1
                    ndcg_sum += 1.0 / math.log2(rank + 2)
        model.learn_event(e)
    return {
        "events": len(events),
        "evaluated": evaluated,
        "hits": hits,
        "ndcg_sum": ndcg_sum,
        "rr_sum": rr_sum,
        "coverage": len(shown) / max(1, len(model.videos)),
        "elapsed_s": time.perf_counter() - start,
    }
