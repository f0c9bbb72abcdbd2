"""river's ``FunkMF`` behind the :class:`~model.base.StreamRanker` contract.

Each watch is learned as ``FunkMF.learn_one(viewer, video, y=1.0)`` (implicit feedback: a
watch is a rating of 1, there are no negatives), exactly what a river user would write. What
the adapter adds is ranking: river's ``rank`` calls ``predict_one`` once per item, and
``predict_one`` on an unknown user silently creates a vector for it. Here the latent vectors
are read from river's dicts into one matrix per batch and all videos are scored with one
matrix product; unknown viewers get popularity, and nothing is ever created by a query.

The defaults (``k=10``, SGD with learning rate 0.05, normal initialisation with sigma 0.1) are
river's own, apart from the learning rate, which is the ISGD one so the two differ only in the
update rule and the ranking.

>>> from contract.events import WatchEvent
>>> m = FunkMFRanker(seed=3)
>>> m.learn_many([WatchEvent(0, "a", "x"), WatchEvent(1, "b", "y"), WatchEvent(2, "c", "x")])
>>> sorted(m.recommend("a", n=5).videos), m.recommend("nobody", n=1).videos
(['y'], ['x'])
>>> "nobody" in m.funk.u_latents
False

"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from river import optim, reco

from contract.events import WatchEvent
from model.base import CatalogueScorer, ModelStats
from model.ids import GrowableTable, IdIndex
from model.seen import SeenVideos

__all__ = ["FunkMFRanker"]


class FunkMFRanker(CatalogueScorer):
    """Adapter: river ``FunkMF`` learns, numpy ranks.

    Parameters
    ----------
    k
        Number of latent factors.
    lr
        Learning rate of river's ``optim.SGD``.
    l2
        river's L2 regularisation.
    seed
        Seed of river's initialiser.
    """

    name = "funk_mf"

    def __init__(self, k: int = 10, lr: float = 0.05, l2: float = 0.0, seed: int | None = 42) -> None:
        super().__init__(seed=seed)
        self.k = k
        self.lr = lr
        self.l2 = l2
        self.funk = reco.FunkMF(
            n_factors=k,
            optimizer=optim.SGD(lr),
            l2=l2,
            initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=seed),
            seed=seed,
        )
        self.viewers = IdIndex()
        self.videos = IdIndex()
        self.seen = SeenVideos()
        self._counts = GrowableTable(dim=0, dtype=np.float64)
        self.events_learned = 0

    #: FunkMF never forgets an id, so it keeps no clock.
    clock = None

    def stats(self) -> ModelStats:
        # river keeps a k-vector per id (float64) in dicts; seen lists as everywhere else.
        memory = 8 * self.k * (len(self.viewers) + len(self.videos)) + 36 * self.seen.entries()
        return ModelStats(self.events_learned, self.viewers.live, self.videos.live, memory)

    def video_counts(self) -> np.ndarray:
        return self._counts.array

    def learn_many(self, events: Sequence[WatchEvent]) -> None:
        learn = self.funk.learn_one
        for e in events:
            learn(e.viewer, e.video, 1.0)
            video = self.videos.add(e.video)
            self._counts.ensure(len(self.videos))
            self._counts.array[video] += 1.0
            self.seen.add(self.viewers.add(e.viewer), video)
        self.events_learned += len(events)

    def _video_matrix(self) -> np.ndarray:
        latents = self.funk.i_latents
        ids = self.videos.ids
        if not ids:
            return np.zeros((0, self.k), dtype=np.float32)
        return np.stack([latents[v] for v in ids]).astype(np.float32)

    def viewer_scores(self, viewer_rows: np.ndarray) -> np.ndarray:
        ids = self.viewers.ids
        return self._scores([ids[r] if r >= 0 else None for r in viewer_rows])

    def _scores(self, viewers: Sequence[str | None]) -> np.ndarray:
        videos = self._video_matrix()
        latents = self.funk.u_latents
        scores = np.repeat(self._counts.array.astype(np.float32)[None, :], len(viewers), axis=0)
        known = [b for b, v in enumerate(viewers) if v in latents]
        if known:
            users = np.stack([latents[viewers[b]] for b in known]).astype(np.float32)
            scores[known] = users @ videos.T
        return scores
