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

Rows can be released (an id that expired) and are then reused, last released first; ``len``
stays the number of rows (the size tables must have), ``live`` counts the ids:

>>> ids.remove_rows([0]).tolist(), "WK_Nr4" in ids, ids.live, len(ids)
([0], False, 1, 2)
>>> ids.next_rows(["new", "abc", "other", "new"]).tolist()   # what add_many would give; creates nothing
[0, 1, 2, 0]
>>> ids.add_many(["new", "abc", "other", "new"]).tolist(), len(ids)
([0, 1, 2, 0], 3)

>>> t = GrowableTable(dim=2, capacity=1)
>>> t.ensure(3)
>>> t.array.shape, t.capacity
((3, 2), 4)

"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence

import numpy as np

__all__ = ["IdIndex", "GrowableTable", "as_id"]


def as_id(raw: Hashable) -> str:
    """The canonical string form of an id: ints and strings alike become ``str``."""
    return raw if isinstance(raw, str) else str(raw)


class IdIndex:
    """A two-way map between ids and dense rows ``0..n-1``, in order of first arrival.

    Released rows (:meth:`remove_rows`) go on a free list and new ids take them (the most
    recently released first) before any row is appended, so the number of rows stops growing
    once as many ids leave as arrive. Without releases nothing changes: rows are handed out in
    arrival order.
    """

    def __init__(self) -> None:
        self._row_of: dict[str, int] = {}
        self._ids: list[str] = []
        self._free: list[int] = []  # released rows, reused from the end (a stack)

    def __len__(self) -> int:
        """The number of rows, released ones included: the size the row-indexed tables need."""
        return len(self._ids)

    @property
    def live(self) -> int:
        """How many ids hold a row."""
        return len(self._row_of)

    @property
    def free_rows(self) -> list[int]:
        """Released rows waiting for reuse, the next one to be reused last (do not mutate)."""
        return self._free

    def __contains__(self, id_: object) -> bool:
        return id_ in self._row_of

    def get(self, id_: str) -> int | None:
        """The row of ``id_``, or ``None`` when it was never added."""
        return self._row_of.get(id_)

    def add(self, id_: str) -> int:
        """The row of ``id_``, creating it at the end when new."""
        row = self._row_of.get(id_)
        if row is None:
            if self._free:
                row = self._free.pop()
                self._ids[row] = id_
            else:
                row = len(self._ids)
                self._ids.append(id_)
            self._row_of[id_] = row
        return row

    def add_many(self, ids: Iterable[str]) -> np.ndarray:
        """Rows for many ids (created when new), as an int64 array."""
        add = self.add
        return np.fromiter((add(i) for i in ids), dtype=np.int64)

    def get_many(self, ids: Iterable[str]) -> np.ndarray:
        """Rows for many ids, ``-1`` for the unknown ones; creates nothing."""
        get = self._row_of.get
        return np.fromiter((get(i, -1) for i in ids), dtype=np.int64)

    def next_rows(self, ids: Sequence[str], current: np.ndarray | None = None) -> np.ndarray:
        """The rows :meth:`add_many` would give ``ids`` (repeats share one), creating nothing.

        ``current`` is ``get_many(ids)`` when the caller already has it (one lookup per id
        instead of two: this runs for every event).
        """
        rows = self.get_many(ids) if current is None else current.copy()
        unknown = np.flatnonzero(rows < 0)
        if unknown.size:
            fresh: dict[str, int] = {}
            free, n = self._free, len(self._ids)
            for i in unknown.tolist():
                row = fresh.get(ids[i])
                if row is None:
                    k = len(fresh)
                    row = free[-1 - k] if k < len(free) else n + k - len(free)
                    fresh[ids[i]] = row
                rows[i] = row
        return rows

    def remove_rows(self, rows: Iterable[int]) -> np.ndarray:
        """Release ``rows`` (their ids become unknown); returns the rows actually released.

        Rows already free or out of range are ignored. Released rows are reused by later
        :meth:`add` calls, the last released first.
        """
        released = []
        for row in rows:
            row = int(row)
            if 0 <= row < len(self._ids):
                id_ = self._ids[row]
                if self._row_of.get(id_) == row:
                    del self._row_of[id_]
                    self._ids[row] = ""
                    self._free.append(row)
                    released.append(row)
        return np.asarray(released, dtype=np.int64)

    def remove(self, id_: str) -> int | None:
        """Release the row of ``id_``; returns it, or ``None`` when ``id_`` is unknown."""
        row = self._row_of.get(id_)
        if row is not None:
            self.remove_rows([row])
        return row

    def live_mask(self) -> np.ndarray:
        """``(len(self),)`` bool: which rows hold an id."""
        mask = np.ones(len(self._ids), dtype=bool)
        mask[self._free] = False
        return mask

    def id_of(self, row: int) -> str:
        return self._ids[row]

    @property
    def ids(self) -> list[str]:
        """All ids, in row order; released rows hold ``""`` (do not mutate)."""
        return self._ids

    def to_array(self) -> np.ndarray:
        """The ids as a unicode array, for saving without pickle (released rows: ``""``)."""
        return np.array(self._ids, dtype=str) if self._ids else np.zeros(0, dtype="<U1")

    def free_array(self) -> np.ndarray:
        """The free list as int64, in reuse order; see :meth:`from_array`."""
        return np.asarray(self._free, dtype=np.int64)

    @classmethod
    def from_array(cls, ids: np.ndarray, free: np.ndarray | None = None) -> IdIndex:
        """The index saved as ``to_array()`` (and ``free_array()`` when rows were released)."""
        index = cls()
        index._ids = [str(i) for i in ids.tolist()]
        index._free = [] if free is None else [int(r) for r in free.tolist()]
        free_set = set(index._free)
        if len(free_set) != len(index._free) or any(not 0 <= r < len(index._ids) for r in free_set):
            raise ValueError("malformed free rows in saved id index")
        index._row_of = {id_: row for row, id_ in enumerate(index._ids) if row not in free_set}
        if len(index._row_of) != len(index._ids) - len(free_set):
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

    def reset(self, rows: np.ndarray) -> None:
        """Give existing ``rows`` the values a new row gets (for rows released and reused).

        >>> t = GrowableTable(dim=2); t.ensure(3); t.array[:] = 5.0
        >>> t.reset(np.array([1])); t.array.tolist()
        [[5.0, 5.0], [0.0, 0.0], [5.0, 5.0]]
        """
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return
        if self._init is not None:
            self._buffer[rows] = self._init(rows.size)
        else:
            self._buffer[rows] = 0

    def load(self, array: np.ndarray) -> None:
        """Replace the contents with ``array`` (used when restoring saved state)."""
        self._buffer = np.array(array, dtype=self._buffer.dtype, copy=True)
        if self._buffer.shape[0] == 0:
            self._buffer = np.zeros((1, *array.shape[1:]), dtype=self._buffer.dtype)
        self.rows = array.shape[0]
