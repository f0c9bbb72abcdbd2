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

It saves like every model (:mod:`model.persist`): river's latent vectors as two arrays in the
order of the id indexes, with the state of river's initialiser, so nothing is pickled and a
loaded model draws the same vectors for newcomers as the saved one would have.

"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from river import optim, reco

from contract.events import WatchEvent
from model.base import CatalogueScorer, ModelStats
from model.baselines.rows import check_seen_rows, check_table_rows
from model.ids import GrowableTable, IdIndex
from model.parts import Counters
from model.persist import Part, from_json_array, json_array
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
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
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
        memory = 8 * self.k * (len(self.viewers) + len(self.videos)) + self.seen.nbytes()
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

    # -- persistence (model.persist) -----------------------------------------------------------

    def state_parts(self) -> dict[str, Part]:
        # The id indexes come first: river's vectors are saved and restored in their order.
        return {
            "viewers": self.viewers,
            "videos": self.videos,
            "seen": self.seen,
            "counts": self._counts,
            "river": _RiverState(self),
            "counters": Counters(self, ("events_learned",)),
        }

    def check_state(self) -> None:
        check_table_rows({"counts": self._counts}, len(self.videos))
        check_seen_rows(self.seen, self.viewers, self.videos)

    # -- scoring -----------------------------------------------------------------------------

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


class _RiverState:
    """What river's ``FunkMF`` learned, as a part: no pickle, restored into river's own structures.

    ``viewers`` and ``videos`` are the latent vectors (``u_latents``, ``i_latents``: float64
    ``(ids, k)``, one row per id in the order of the model's id indexes, which hold exactly the
    ids river has seen); ``rng_key`` and ``rng`` the state of the initialiser's generator;
    ``steps`` the step counters of river's two optimisers (read by learning-rate schedules).
    """

    def __init__(self, model: FunkMFRanker) -> None:
        self.model = model

    def to_arrays(self) -> dict[str, np.ndarray]:
        model, funk = self.model, self.model.funk
        state = funk.initializer._rng.get_state(legacy=False)
        return {
            "viewers": self._matrix(funk.u_latents, model.viewers.ids),
            "videos": self._matrix(funk.i_latents, model.videos.ids),
            "rng_key": state["state"]["key"],
            "rng": json_array(
                {"pos": state["state"]["pos"], "has_gauss": state["has_gauss"], "gauss": state["gauss"]}
            ),
            "steps": np.array([funk.u_optimizer.n_iterations, funk.i_optimizer.n_iterations], dtype=np.int64),
        }

    def _matrix(self, latents: dict, ids: list[str]) -> np.ndarray:
        if not ids:
            return np.zeros((0, self.model.k), dtype=np.float64)
        return np.stack([latents[i] for i in ids]).astype(np.float64, copy=False)

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        model, funk = self.model, self.model.funk
        latents = {}
        for key, ids in (("viewers", model.viewers.ids), ("videos", model.videos.ids)):
            matrix = arrays[key]
            if matrix.dtype != np.float64 or matrix.shape != (len(ids), model.k):
                raise ValueError(
                    f"river's {key} vectors are {matrix.dtype} {matrix.shape}, "
                    f"expected float64 ({len(ids)}, {model.k})"
                )
            if not np.isfinite(matrix).all():
                raise ValueError(f"river's {key} vectors hold non-finite numbers")
            latents[key] = matrix
        key, rest, steps = arrays["rng_key"], from_json_array(arrays["rng"]), arrays["steps"]
        if key.dtype != np.uint32 or key.shape != (624,) or not isinstance(rest, dict):
            raise ValueError("the state of river's initialiser is not an MT19937 state")
        if steps.shape != (2,) or steps.dtype.kind not in "iu" or steps.min() < 0:
            raise ValueError("river's optimiser step counters must be 2 non-negative integers")
        state = {
            "bit_generator": "MT19937",
            "state": {"key": key, "pos": int(rest["pos"])},
            "has_gauss": int(rest["has_gauss"]),
            "gauss": float(rest["gauss"]),
        }
        funk.initializer._rng.set_state(state)
        # In river's own dicts (defaultdicts that draw newcomers), each vector its own array, as
        # river's optimiser updates them in place.
        for target, ids, matrix in (
            (funk.u_latents, model.viewers.ids, latents["viewers"]),
            (funk.i_latents, model.videos.ids, latents["videos"]),
        ):
            target.clear()
            target.update(zip(ids, [row.copy() for row in matrix], strict=True))
        funk.u_optimizer.n_iterations, funk.i_optimizer.n_iterations = steps.tolist()
