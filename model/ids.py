"""Dense row numbers for arbitrary ids, and float32 tables that grow with them.

Viewers and videos arrive as strings (YouTube-style ids) or ints. Models keep their vectors in
dense float32 matrices, so each id needs a row. :class:`IdIndex` hands out rows in arrival order
and never creates one unless asked (asking for a prediction must not grow the model).
:class:`GrowableTable` is a matrix whose capacity doubles, so adding a row is amortised O(1)
and there is no reallocation per event.

>>> ids = IdIndex()
>>> ids.add("WK_Nr4"), ids.add("abc"), ids.add("WK_Nr4")
(0, 1, 0)
>>> ids.get("nope") is None, len(ids), ids.id_of(1)
(True, 2, 'abc')

>>> t = GrowableTable(dim=2, capacity=1)
>>> t.ensure(3)
>>> t.array.shape, t.capacity
((3, 2), 4)

"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable

import numpy as np

__all__ = ["IdIndex", "GrowableTable", "as_id"]


def as_id(raw: Hashable) -> str:
    """The canonical string form of an id: ints and strings alike become ``str``."""
    return raw if isinstance(raw, str) else str(raw)


class IdIndex:
    """A two-way map between ids and dense rows ``0..n-1``, in order of first arrival."""

    def __init__(self) -> None:
        self._row_of: dict[str, int] = {}
        self._ids: list[str] = []

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, id_: object) -> bool:
        return id_ in self._row_of

    def get(self, id_: str) -> int | None:
        """The row of ``id_``, or ``None`` when it was never added."""
        return self._row_of.get(id_)

    def add(self, id_: str) -> int:
        """The row of ``id_``, creating it at the end when new."""
        row = self._row_of.get(id_)
        if row is None:
            row = len(self._ids)
            self._row_of[id_] = row
            self._ids.append(id_)
        return row

    def add_many(self, ids: Iterable[str]) -> np.ndarray:
        """Rows for many ids (created when new), as an int64 array."""
        add = self.add
        return np.fromiter((add(i) for i in ids), dtype=np.int64)

    def get_many(self, ids: Iterable[str]) -> np.ndarray:
        """Rows for many ids, ``-1`` for the unknown ones; creates nothing."""
        get = self._row_of.get
        return np.fromiter((get(i, -1) for i in ids), dtype=np.int64)

    def id_of(self, row: int) -> str:
        return self._ids[row]

    @property
    def ids(self) -> list[str]:
        """All ids, in row order (do not mutate)."""
        return self._ids

    def to_array(self) -> np.ndarray:
        """The ids as a unicode array, for saving without pickle."""
        return np.array(self._ids, dtype=str) if self._ids else np.zeros(0, dtype="<U1")

    @classmethod
    def from_array(cls, ids: np.ndarray) -> IdIndex:
        index = cls()
        index._ids = [str(i) for i in ids.tolist()]
        index._row_of = {id_: row for row, id_ in enumerate(index._ids)}
        if len(index._row_of) != len(index._ids):
            raise ValueError("duplicate ids in saved id index")
        return index


class GrowableTable:
    """A float32 matrix of ``dim`` columns whose visible rows grow on demand.

    ``array`` is a view of the first ``rows`` rows of a buffer whose capacity doubles when full.
    New rows are filled by ``init(n_rows) -> array`` (zeros by default).
    """

    def __init__(
        self,
        dim: int,
        capacity: int = 1024,
        init: Callable[[int], np.ndarray] | None = None,
        dtype: type = np.float32,
    ) -> None:
        self.dim = dim
        self._init = init
        self._buffer = np.zeros((max(1, capacity), dim) if dim else (max(1, capacity),), dtype=dtype)
        self.rows = 0

    @property
    def capacity(self) -> int:
        return self._buffer.shape[0]

    @property
    def array(self) -> np.ndarray:
        return self._buffer[: self.rows]

    def ensure(self, rows: int) -> None:
        """Make rows ``0..rows-1`` exist, initialising the new ones."""
        if rows <= self.rows:
            return
        if rows > self.capacity:
            capacity = self.capacity
            while capacity < rows:
                capacity *= 2
            grown = np.zeros((capacity, *self._buffer.shape[1:]), dtype=self._buffer.dtype)
            grown[: self.rows] = self._buffer[: self.rows]
            self._buffer = grown
        if self._init is not None:
            self._buffer[self.rows : rows] = self._init(rows - self.rows)
        self.rows = rows

    def load(self, array: np.ndarray) -> None:
        """Replace the contents with ``array`` (used when restoring saved state)."""
        self._buffer = np.array(array, dtype=self._buffer.dtype, copy=True)
        if self._buffer.shape[0] == 0:
            self._buffer = np.zeros((1, *array.shape[1:]), dtype=self._buffer.dtype)
        self.rows = array.shape[0]
