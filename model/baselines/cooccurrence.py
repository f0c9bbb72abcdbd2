"""Item co-occurrence kNN over each viewer's recent watches: the strongest baseline.

Two videos *co-occur* when one viewer watched both within ``window`` watches of each other.
A viewer is represented by their last ``history`` watched videos, the most recent weighing
most; a candidate video ``j`` scores

    score(j) = sum over recent videos i of  decay ** age(i) * C[i, j] / (pop(i) * pop(j)) ** alpha

where ``C`` holds the co-occurrence counts, ``pop`` the watch counts and ``age`` is 0 for the
last watch. ``alpha = 0.5`` would be cosine similarity between the videos' viewer sets; 0.4
favours popular neighbours slightly, which measured better. A tiny
popularity term breaks ties among videos that co-occur with nothing in the history (and is
all an unknown viewer gets: trending).

The counts live in a dense float32 matrix that doubles in both dimensions as videos arrive:
one update is two fancy-indexed additions, and a batch is scored by gathering ``history`` rows
per event and one batched matrix product. Memory is ``4 * capacity**2`` bytes, the capacity
being the number of videos rounded up to a power of two (16 MB for ML-100K's 1,682 films,
67 MB for ML-1M's 3,706, 1 GB for ML-10M's 10,677). Past ``max_videos`` (16,384) the counts
move to :class:`TopCoCounts`, which keeps the heaviest ``slots`` (256) pairs of each video in
``8 * slots`` bytes per video: slightly weaker (see ``slots``) but bounded.

>>> from contract.events import WatchEvent
>>> m = CoOccurrenceKNN()
>>> m.learn_many([WatchEvent(0, "a", "x"), WatchEvent(1, "a", "y"), WatchEvent(2, "b", "z"),
...               WatchEvent(3, "b", "w"), WatchEvent(4, "c", "z"), WatchEvent(5, "d", "x")])
>>> m.recommend("d", n=1).videos  # d watched x; x was watched with y
['y']

"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from contract.events import WatchEvent
from model.base import CatalogueScorer, ModelStats
from model.baselines.rows import check_seen_rows, check_table_rows
from model.ids import GrowableTable, IdIndex
from model.parts import Counters
from model.persist import Part
from model.seen import SeenVideos

__all__ = ["CoOccurrenceKNN", "CoCounts", "TopCoCounts", "CatalogueTooLarge"]


class CatalogueTooLarge(MemoryError):
    """More videos than a dense co-occurrence matrix may hold."""


class CoCounts:
    """A square float32 count matrix over video rows whose capacity doubles as videos arrive.

    >>> c = CoCounts(capacity=1)
    >>> c.ensure(3); c.add_pairs(2, np.array([0, 1]))
    >>> c.array.tolist()
    [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]
    """

    def __init__(self, capacity: int = 1024, max_size: int = 16_384) -> None:
        self.max_size = max_size
        self._capacity = max(1, min(capacity, max_size))
        self._buffer = np.zeros((self._capacity,) * 2, dtype=np.float32)
        self.size = 0

    @property
    def array(self) -> np.ndarray:
        return self._buffer[: self.size, : self.size]

    def ensure(self, size: int) -> None:
        if size <= self.size:
            return
        capacity = self._buffer.shape[0]
        if size > self.max_size:
            raise CatalogueTooLarge(
                f"co-occurrence counts are a dense matrix: {size:,} videos is more than its limit of "
                f"{self.max_size:,} ({4 * self.max_size**2 / 2**30:.0f} GiB)"
            )
        if size > capacity:
            while capacity < size:
                capacity = min(2 * capacity, self.max_size)
            grown = np.zeros((capacity, capacity), dtype=np.float32)
            grown[: self.size, : self.size] = self.array
            self._buffer = grown
        self.size = size

    def nbytes(self) -> int:
        return self._buffer.nbytes

    # -- persistence (a part, see :mod:`model.persist`) -----------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The ``(size, size)`` counts, under ``dense``.

        >>> c = CoCounts(); c.ensure(2); c.add_pairs(1, np.array([0]))
        >>> back = CoCounts(); back.load_arrays(c.to_arrays()); back.array.tolist()
        [[0.0, 1.0], [1.0, 0.0]]
        """
        return {"dense": self.array}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`to_arrays` wrote, in place; ``ValueError`` if it is malformed."""
        dense = arrays["dense"]
        n = dense.shape[0] if dense.ndim == 2 else -1
        if dense.shape != (n, n) or dense.dtype != np.float32:
            raise ValueError(
                f"dense co-occurrence counts are {dense.dtype} {dense.shape}, expected square float32"
            )
        if n > self.max_size:
            raise ValueError(
                f"dense co-occurrence counts cover {n} videos, past their limit of {self.max_size}"
            )
        if not np.isfinite(dense).all() or (dense < 0).any():
            raise ValueError("co-occurrence counts are negative or not finite")
        # Grown from the first capacity as learning grew it, so the memory reported is the same.
        self._buffer = np.zeros((self._capacity,) * 2, dtype=np.float32)
        self.size = 0
        self.ensure(n)
        self._buffer[:n, :n] = dense

    # -- counting and scoring ----------------------------------------------------------------

    def add_pairs(self, video: int, others: np.ndarray, weight: float = 1.0) -> None:
        """Count ``video`` as co-occurring with each of ``others`` (both directions)."""
        # add.at, not +=: a viewer who re-watched a video has it twice in ``others``.
        np.add.at(self._buffer, (others, video), weight)
        np.add.at(self._buffer, (video, others), weight)

    def weighted_rows(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``out[a] = sum_l weights[a, l] * counts[rows[a, l]]``: ``(A, L)`` in, ``(A, size)`` out."""
        a, length = rows.shape
        gathered = self._buffer[rows.ravel(), : self.size].reshape(a, length, self.size)
        return np.matmul(weights[:, None, :], gathered)[:, 0, :]


class TopCoCounts:
    """About the heaviest ``slots`` co-occurrence counts of each video, in fixed-width rows.

    Each video row holds ``slots`` (column, count) pairs. A pair already present is incremented;
    a new one replaces the row's smallest count and starts from its own weight. (Space-Saving,
    where the newcomer inherits the evicted count, measured far worse here: with rows full, fresh
    pairs outranked established ones: HR@10 0.18 instead of 0.20 with 256 slots.) Pairs that keep
    co-occurring stay; memory is ``8 * slots`` bytes per video whatever the catalogue.

    >>> c = TopCoCounts(slots=2)
    >>> c.ensure(4); c.add_pairs(3, np.array([0, 1])); c.add_pairs(3, np.array([1, 2]))
    >>> c.weighted_rows(np.array([[3]]), np.array([[1.0]], dtype=np.float32)).tolist()
    [[0.0, 2.0, 1.0, 0.0]]
    """

    def __init__(self, slots: int = 256, capacity: int = 1024) -> None:
        self.slots = slots
        self._cols = GrowableTable(slots, capacity, dtype=np.int32, fill=-1)  # -1: an empty slot
        self._vals = GrowableTable(slots, capacity)
        self.size = 0

    @classmethod
    def from_dense(cls, dense: CoCounts, slots: int) -> TopCoCounts:
        """The heaviest ``slots`` counts of each row of ``dense``."""
        top = cls(slots, capacity=2 * dense.size)
        top.ensure(dense.size)
        counts = dense.array
        k = min(slots, dense.size)
        cols = np.argpartition(-counts, k - 1, axis=1)[:, :k] if k < dense.size else None
        if cols is None:
            cols = np.broadcast_to(np.arange(dense.size), counts.shape)
        vals = np.take_along_axis(counts, cols, axis=1)
        top._cols.array[:, :k] = np.where(vals > 0, cols, -1)
        top._vals.array[:, :k] = vals
        return top

    def ensure(self, size: int) -> None:
        if size > self.size:
            self._cols.ensure(size)
            self._vals.ensure(size)
            self.size = size

    def nbytes(self) -> int:
        return self._cols.array.nbytes + self._vals.array.nbytes

    # -- persistence (a part, see :mod:`model.persist`) -----------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Each video's slots: ``cols`` (int32, ``-1`` when empty) and ``vals``, ``(size, slots)``.

        >>> c = TopCoCounts(slots=2); c.ensure(3); c.add_pairs(2, np.array([0]))
        >>> back = TopCoCounts(slots=2); back.load_arrays(c.to_arrays()); back._cols.array.tolist()
        [[2, -1], [-1, -1], [0, -1]]
        """
        return {"cols": self._cols.array, "vals": self._vals.array}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`to_arrays` wrote, in place; ``ValueError`` if it is malformed."""
        cols, vals = arrays["cols"], arrays["vals"]
        if cols.shape != vals.shape:
            raise ValueError(
                f"co-occurrence slots {cols.shape} and their counts {vals.shape} differ in shape"
            )
        n = len(cols)
        if cols.size and (cols.min() < -1 or cols.max() >= n):
            raise ValueError(f"co-occurrence slots name columns outside the {n} videos")
        if not np.isfinite(vals).all() or (vals < 0).any():
            raise ValueError("co-occurrence counts are negative or not finite")
        self._cols.load_arrays({"rows": cols})
        self._vals.load_arrays({"rows": vals})
        self.size = n

    def add_pairs(self, video: int, others: np.ndarray, weight: float = 1.0) -> None:
        """Count ``video`` as co-occurring with each of ``others`` (both directions)."""
        others, times = np.unique(others, return_counts=True)
        add = (weight * times).astype(np.float32)
        cols, vals = self._cols.array, self._vals.array
        # Column ``video`` in the rows of ``others``: one slot per row.
        hit = cols[others] == video
        found = hit.any(axis=1)
        slot = np.where(found, hit.argmax(axis=1), vals[others].argmin(axis=1))
        vals[others, slot] = np.where(found, vals[others, slot], 0.0) + add
        cols[others, slot] = video
        # Columns ``others`` in the row of ``video``: the new ones take its smallest slots.
        row_cols, row_vals = cols[video], vals[video]
        present = row_cols[None, :] == others[:, None]
        known = present.any(axis=1)
        row_vals[present.argmax(axis=1)[known]] += add[known]
        new = np.flatnonzero(~known)
        if new.size:
            free = np.argsort(row_vals, kind="stable")[: new.size]
            row_vals[free] = add[new]
            row_cols[free] = others[new]

    def weighted_rows(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``out[a] = sum_l weights[a, l] * counts[rows[a, l]]``: ``(A, L)`` in, ``(A, size)`` out."""
        a, length = rows.shape
        cols = self._cols.array[rows.ravel()].reshape(a, length * self.slots)
        vals = self._vals.array[rows.ravel()].reshape(a, length, self.slots) * weights[:, :, None]
        flat = cols.astype(np.int64) + (np.arange(a, dtype=np.int64) * self.size)[:, None]
        keep = cols >= 0
        out = np.bincount(flat[keep], weights=vals.reshape(a, -1)[keep], minlength=a * self.size)
        return out.reshape(a, self.size).astype(np.float32)


class CoOccurrenceKNN(CatalogueScorer):
    """Recommend what co-occurred most with the viewer's recent watches.

    Parameters
    ----------
    history
        How many of the viewer's last watches represent them.
    decay
        Weight ratio between consecutive history positions (``decay ** age``).
    window
        Two watches of one viewer co-occur when at most ``window`` watches apart; ``None``
        counts every pair of the viewer's history.
    alpha
        Normalisation exponent: ``C[i, j] / (pop(i) * pop(j)) ** alpha``.
    max_videos
        Largest catalogue the dense count matrix may hold (``4 * max_videos**2`` bytes); past
        it, the counts switch to :class:`TopCoCounts`.
    slots
        Pairs kept per video once the counts are sparse. On the first 80% of ML-100K, sparse
        counts from the start gave HR@10 0.187 / 0.198 / 0.202 with 128 / 256 / 512 slots,
        against 0.202 dense.

    The defaults were chosen on the first 80% of ML-100K (see ``bench/README.md``).
    """

    name = "cooccurrence"

    def __init__(
        self,
        history: int = 20,
        decay: float = 0.8,
        window: int | None = 20,
        alpha: float = 0.4,
        max_videos: int = 16_384,
        slots: int = 256,
    ) -> None:
        super().__init__(seed=None)
        if history < 1:
            raise ValueError(f"history must be at least 1, got {history}")
        if window is not None and window < 1:
            raise ValueError(f"window must be at least 1 or None, got {window}")
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        if max_videos < 1:
            raise ValueError(f"max_videos must be at least 1, got {max_videos}")
        self.history = history
        self.decay = decay
        self.window = window
        self.alpha = alpha
        self.videos = IdIndex()
        self.viewers = IdIndex()
        self.seen = SeenVideos()  # in watch order, so its tail is the recent history
        self.max_videos = max_videos
        self.slots = slots
        self.counts: CoCounts | TopCoCounts = CoCounts(max_size=max_videos)
        self._pop = GrowableTable(dim=0, dtype=np.float64)
        self._age_weights = decay ** np.arange(history, dtype=np.float64)
        self.events_learned = 0

    #: The co-occurrence kNN never forgets an id, so it keeps no clock.
    clock = None

    def stats(self) -> ModelStats:
        memory = self.counts.nbytes() + self._pop.array.nbytes + self.seen.nbytes()
        return ModelStats(self.events_learned, self.viewers.live, self.videos.live, memory)

    def video_counts(self) -> np.ndarray:
        return self._pop.array

    # -- learning ----------------------------------------------------------------------------

    def learn_many(self, events: Sequence[WatchEvent]) -> None:
        window = self.window
        for e in events:
            video = self.videos.add(e.video)
            viewer = self.viewers.add(e.viewer)
            self._ensure_counts(len(self.videos))
            self._pop.ensure(len(self.videos))
            self._pop.array[video] += 1.0
            earlier = self.seen.of(viewer)
            if earlier:
                others = earlier if window is None else earlier[-window:]
                self.counts.add_pairs(video, np.asarray(others, dtype=np.int64))
            self.seen.add(viewer, video)
        self.events_learned += len(events)

    def _ensure_counts(self, size: int) -> None:
        try:
            self.counts.ensure(size)
        except CatalogueTooLarge:
            # Too many videos for the dense matrix: keep each video's heaviest pairs instead.
            self.counts = TopCoCounts.from_dense(self.counts, self.slots)
            self.counts.ensure(size)

    # -- persistence (model.persist) -----------------------------------------------------------

    def state_parts(self) -> dict[str, Part]:
        return {
            "viewers": self.viewers,
            "videos": self.videos,
            "seen": self.seen,
            "counts": _Counts(self),
            "popularity": self._pop,
            "counters": Counters(self, ("events_learned",)),
        }

    def check_state(self) -> None:
        if self.counts.size != len(self.videos):
            raise ValueError(
                f"co-occurrence counts cover {self.counts.size} videos, but {len(self.videos)} exist"
            )
        check_table_rows({"popularity": self._pop}, len(self.videos))
        check_seen_rows(self.seen, self.viewers, self.videos)

    # -- scoring -----------------------------------------------------------------------------

    def _scores(self, histories: list[list[int]]) -> np.ndarray:
        """``(len(histories), videos)`` float32 scores; each history is oldest first."""
        batch, size, length = len(histories), self.counts.size, self.history
        pop = self._pop.array
        # Popularity, scaled far below any co-occurrence score, breaks ties and serves the cold.
        base = (pop / (pop.max() if size else 1.0) * 1e-6).astype(np.float32)
        scores = np.repeat(base[None, :], batch, axis=0)
        idx = np.zeros((batch, length), dtype=np.int64)
        weight = np.zeros((batch, length), dtype=np.float64)
        for b, h in enumerate(histories):
            h = h[-length:]
            if h:
                idx[b, : len(h)] = h[::-1]  # most recent first, so age = position
                weight[b, : len(h)] = self._age_weights[: len(h)]
        active = np.flatnonzero(weight[:, 0] > 0)
        if active.size and size:
            rows = idx[active]
            norm = np.maximum(pop, 1.0) ** -self.alpha
            w = (weight[active] * norm[rows]).astype(np.float32)
            sim = self.counts.weighted_rows(rows, w)
            scores[active] += sim * norm.astype(np.float32)[None, :]
        return scores

    def viewer_scores(self, viewer_rows: np.ndarray) -> np.ndarray:
        return self._scores([self.seen.of(r)[-self.history :] for r in viewer_rows.tolist()])

    def event_scores(self, events: Sequence[WatchEvent]) -> np.ndarray:
        return self._scores(self._histories_for_events(events))

    def _histories_for_events(self, events: Sequence[WatchEvent]) -> list[list[int]]:
        # History before the batch plus the viewer's earlier events in it, exactly as causal
        # exclusion does: the state (counts) is from before the batch, the history is current.
        in_batch: dict[str, list[int]] = {}
        histories = []
        for e in events:
            row = self.viewers.get(e.viewer)
            earlier = in_batch.setdefault(e.viewer, [])
            before = self.seen.of(row)[-self.history :] if row is not None else []
            histories.append(before + earlier if earlier else before)
            video = self.videos.get(e.video)
            if video is not None:
                earlier.append(video)
        return histories


class _Counts:
    """The model's co-occurrence counts as one part, dense or bounded: whichever it holds.

    Loading puts the kind the file holds in place, so a model saved after it moved to
    :class:`TopCoCounts` is loaded with bounded rows, and one saved before goes on with the
    dense matrix (and moves when it grows past ``max_videos``, as the saved one would have).
    """

    def __init__(self, model: CoOccurrenceKNN) -> None:
        self.model = model

    def to_arrays(self) -> dict[str, np.ndarray]:
        return self.model.counts.to_arrays()

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        model = self.model
        counts = CoCounts(max_size=model.max_videos) if "dense" in arrays else TopCoCounts(model.slots)
        counts.load_arrays(arrays)
        model.counts = counts
