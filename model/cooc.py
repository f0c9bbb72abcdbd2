"""Counts of videos watched close together by the same viewer, read as a scoring feature.

``C[j, i]`` counts how often ``i`` was watched within ``window`` watches of ``j`` by the same
viewer (both directions). The model reads it as a feature: for an event with recent history
``h_0, h_1, ...`` (most recent first) and mixing weights ``m_a``, video ``i`` gets

    f(i) = sum_a m_a * C[h_a, i] / (n(h_a) * n(i)) ** exponent

an item-to-item score (cosine for ``exponent`` 0.5; a little less favours popular neighbours,
0.45 measured best) that an embedding of modest size cannot represent exactly: it is full
rank. The matrix is dense and square, grown by doubling up to the cap: memory is
``4 * videos**2`` bytes (11 MB for 1,682 videos, 400 MB for 10,000), which is why the model
stops using it above its ``cooc_max_videos``.

>>> c = CoCounts()
>>> c.add(np.array([[1, -1], [0, -1]]), np.array([0, 2]), window=2)
>>> c.ensure(3); c.array.tolist()
[[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]

"""

from __future__ import annotations

import numpy as np

from model.compiled import cooc_add, cooc_feature

__all__ = ["CoCounts"]


class CoCounts:
    """A square float32 count matrix over video rows, and each video's own count.

    It grows with the catalogue, its capacity doubling but never reserved past ``max_size``.
    """

    def __init__(self, capacity: int = 256, max_size: int | None = None) -> None:
        self.max_size = max_size
        self._buffer = np.zeros((capacity, capacity), dtype=np.float32)
        self._counts = np.zeros(capacity, dtype=np.float32)
        self.rows = 0

    @property
    def array(self) -> np.ndarray:
        return self._buffer[: self.rows, : self.rows]

    def ensure(self, rows: int) -> None:
        if rows > self._buffer.shape[0]:
            capacity = self._buffer.shape[0]
            while capacity < rows:
                capacity *= 2
            if self.max_size is not None:  # never reserve past the cap: memory is quadratic
                capacity = max(rows, min(capacity, self.max_size))
            grown = np.zeros((capacity, capacity), dtype=np.float32)
            grown[: self.rows, : self.rows] = self.array
            self._buffer = grown
            counts = np.zeros(capacity, dtype=np.float32)
            counts[: self.rows] = self._counts[: self.rows]
            self._counts = counts
        self.rows = max(self.rows, rows)

    @property
    def counts(self) -> np.ndarray:
        """Each video's own count: the normaliser."""
        return self._counts[: self.rows]

    # -- persistence (a part, see :mod:`model.persist`) -----------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """``pairs`` (the ``(rows, rows)`` counts) and ``counts`` (each video's own).

        >>> c = CoCounts(); c.add(np.array([[1], [0]]), np.array([0, 1]), window=1)
        >>> back = CoCounts(); back.load_arrays(c.to_arrays()); back.array.tolist()
        [[0.0, 2.0], [2.0, 0.0]]
        """
        return {"pairs": self.array, "counts": self.counts}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`to_arrays` wrote, in place; ``ValueError`` if it is malformed."""
        pairs, counts = arrays["pairs"], arrays["counts"]
        n = pairs.shape[0] if pairs.ndim == 2 else -1
        if pairs.shape != (n, n) or counts.shape != (n,):
            raise ValueError(f"co-occurrence shapes {pairs.shape} and {counts.shape} do not match")
        if pairs.dtype != np.float32 or counts.dtype != np.float32:
            raise ValueError(f"co-occurrence counts are {pairs.dtype} and {counts.dtype}, expected float32")
        if self.max_size is not None and n > self.max_size:
            raise ValueError(f"co-occurrence covers {n} videos, past its cap of {self.max_size}")
        if not (np.isfinite(pairs).all() and np.isfinite(counts).all()):
            raise ValueError("co-occurrence counts hold non-finite numbers")
        if (pairs < 0).any() or (counts < 0).any():
            raise ValueError("co-occurrence counts are negative")
        # The capacity ensure() would have grown to, so that memory reads the same as before saving.
        capacity = self._buffer.shape[0]
        self._buffer = np.zeros((capacity, capacity), dtype=np.float32)
        self._counts = np.zeros(capacity, dtype=np.float32)
        self.rows = 0
        self.ensure(n)
        self._buffer[:n, :n] = pairs
        self._counts[:n] = counts

    def clear(self, rows: np.ndarray) -> None:
        """Forget videos ``rows`` (released, to be reused): their counts, in both directions."""
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows[rows < self.rows]
        if rows.size:
            self._buffer[rows, :] = 0.0
            self._buffer[:, rows] = 0.0
            self._counts[rows] = 0.0

    def add(self, history: np.ndarray, videos: np.ndarray, window: int) -> None:
        """Count each event's video with the first ``window`` videos of its history, both ways."""
        self.ensure(int(max(videos.max(initial=-1), history.max(initial=-1))) + 1)
        cooc_add(self._buffer, self._counts, history, videos, window)

    def feature(
        self,
        history: np.ndarray,
        mix: np.ndarray,
        n_cols: int,
        exponent: float = 0.5,
        columns: np.ndarray | None = None,
    ) -> np.ndarray:
        """``(B, n_cols)`` cosine co-occurrence feature for histories ``(B, terms)`` weighted ``mix``.

        With ``columns`` (video rows, any order): only those columns, ``(B, len(columns))``.
        """
        rows = min(self.rows, n_cols)
        if rows == 0:
            return np.zeros((history.shape[0], n_cols if columns is None else columns.shape[0]), np.float32)
        inv = np.maximum(self._counts[:rows], 1.0) ** -exponent
        valid = (history >= 0) & (history < rows)
        h = np.where(valid, history, 0)
        w = np.where(valid, mix * inv[h], 0.0).astype(np.float32)
        # Viewers arrive in bursts, so a batch's histories share most of their videos (about
        # 260 distinct ones in 256 x 12 slots on ML-100K): gather each distinct row once and
        # mix them with one matrix product, instead of one row read per history slot.
        distinct, slot = np.unique(h, return_inverse=True)
        weights = np.zeros((h.shape[0], distinct.size), dtype=np.float32)
        np.add.at(weights, (np.repeat(np.arange(h.shape[0]), h.shape[1]), slot.ravel()), w.ravel())
        gather, col_scale = self._reader(rows, inv, columns)
        if columns is not None:
            acc = weights @ gather(distinct)
            acc *= col_scale
            return acc
        out = np.zeros((history.shape[0], n_cols), dtype=np.float32)
        acc = out[:, :rows]
        np.matmul(weights, gather(distinct), out=acc)
        acc *= col_scale
        return out

    def _reader(self, rows: int, inv: np.ndarray, columns: np.ndarray | None):
        """``(gather, scale)``: read count rows ``index`` (their first ``rows`` columns, or just
        ``columns``, where a video without counts reads 0) and each column's normaliser.

        Only the first ``rows`` columns of a count row are read (fancy indexing with a slice;
        ``np.take`` on a column slice would first copy the whole matrix): gathering is
        memory-bound, and the buffer's spare capacity would be read for nothing.
        """
        buffer = self._buffer
        if columns is None:
            return (lambda index: buffer[index, :rows]), inv
        counted = columns < rows
        col_index = np.where(counted, columns, 0)
        scale = np.where(counted, inv[col_index], 0.0).astype(np.float32)
        return (lambda index: np.take(buffer[index, :rows], col_index, axis=1)), scale

    def features(
        self, items: np.ndarray, mix: np.ndarray, terms: int, exponent: float, columns: np.ndarray
    ) -> np.ndarray:
        """:meth:`feature` of the first ``terms`` slots of histories ``items`` (``(B, L)``,
        weighted ``mix``) at video rows ``columns`` (any order; rows without counts yet read
        0), by the compiled kernel :func:`model.compiled.cooc_feature`: each distinct history
        row's counts at the columns are read once, then every event sums its rows. The cost
        follows the columns asked for, not the catalogue. Equal to :meth:`feature` up to float
        rounding (the order of the sums).

        >>> c = CoCounts(); c.add(np.array([[-1, -1], [0, -1], [1, -1]]), np.array([0, 1, 2]), 2)
        >>> h = np.array([[1, 0], [2, 1], [-1, -1]]); w = np.array([[.6, .4], [.5, .5], [0, 0]], np.float32)
        >>> cols = np.array([2, 0, 5])
        >>> fast = c.features(h, w, 2, 0.5, cols)
        >>> bool(np.allclose(fast, c.feature(h, w, 3, 0.5, columns=cols)))
        True
        """
        inv = (np.maximum(self._counts[: self.rows], 1.0) ** -exponent).astype(np.float32)
        return cooc_feature(self._buffer, inv, items, mix, terms, columns)

    def nbytes(self) -> int:
        """Bytes reserved (the capacity, not just the rows in use); 0 once dropped."""
        return self._buffer.nbytes + self._counts.nbytes if self.rows else 0
