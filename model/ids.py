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
>>> _ = t.ensure(3)
>>> t.array.shape, t.capacity
((3, 2), 4)

"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from itertools import repeat

import numpy as np

__all__ = ["IdIndex", "GrowableTable", "as_id", "pack_ids", "packed_ids", "saved_ids", "unpack_ids"]


def pack_ids(ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    r"""Ids as one UTF-8 byte array and where each one ends, for saving without pickle. A numpy
    unicode array would not do: it drops trailing NULs (``"bob\x00"`` came back as ``"bob"``,
    another viewer's id) and is as wide as the longest id, for every id.

    >>> ids = ["bob" + chr(0), "bob", "", "é"]
    >>> blob, ends = pack_ids(ids)
    >>> blob.nbytes, ends.tolist(), unpack_ids(blob, ends) == ids
    (9, [4, 7, 7, 9], True)
    """
    encoded = [v.encode("utf-8", "surrogatepass") for v in ids]
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    return blob, np.cumsum([len(e) for e in encoded], dtype=np.int64)


def unpack_ids(blob: np.ndarray, ends: np.ndarray) -> list[str]:
    """The ids :func:`pack_ids` packed; ``ValueError`` if the arrays cannot be its output."""
    if blob.ndim != 1 or blob.dtype != np.uint8 or ends.ndim != 1 or ends.dtype.kind not in "iu":
        raise ValueError(f"packed ids are 1-d uint8 bytes and integer ends, not {blob.dtype}, {ends.dtype}")
    if not ends.size:
        return []
    bounds = ends.tolist()
    if bounds[-1] != blob.size or any(b < a for a, b in zip([0, *bounds], bounds, strict=False)):
        raise ValueError("packed ids' ends do not fit their bytes")
    data = blob.tobytes()
    starts = [0, *bounds[:-1]]
    return [data[a:b].decode("utf-8", "surrogatepass") for a, b in zip(starts, bounds, strict=True)]


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
        """Rows for many ids (created when new, in order of arrival), as an int64 array."""
        if not isinstance(ids, Sequence):
            ids = list(ids)
        # Most ids of a batch are known: look them all up in C, then add the few new ones.
        return self.add_unknown(ids, self.get_many(ids))

    def add_unknown(self, ids: Sequence[str], rows: np.ndarray) -> np.ndarray:
        """:meth:`add_many` when the caller has ``get_many(ids)`` already (``rows``, filled in
        place and returned): only the ids at ``-1`` are looked up again.

        >>> index = IdIndex(); index.add("a")
        0
        >>> index.add_unknown(["b", "a", "b"], index.get_many(["b", "a", "b"])).tolist()
        [1, 0, 1]
        """
        unknown = np.flatnonzero(rows < 0)
        if unknown.size:
            add = self.add
            for i in unknown.tolist():
                rows[i] = add(ids[i])
        return rows

    def get_many(self, ids: Iterable[str]) -> np.ndarray:
        """Rows for many ids, ``-1`` for the unknown ones; creates nothing."""
        if not isinstance(ids, Sequence):
            ids = list(ids)
        # map() runs the lookups in C: twice as fast as a generator on a batch of ids.
        return np.fromiter(map(self._row_of.get, ids, repeat(-1)), dtype=np.int64, count=len(ids))

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

    # -- persistence (a part, see :mod:`model.persist`) -----------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The ids in row order (``""`` on released rows) as ``id_bytes`` and ``id_ends``
        (:func:`pack_ids`) and ``free`` (the free list in reuse order), for saving without
        pickle. A file written before 2026-12-01 holds ``ids`` (a unicode array) instead: read too.

        >>> a = IdIndex(); _ = a.add_many(["x", "y", "z"]); _ = a.remove_rows([1])
        >>> b = IdIndex(); b.load_arrays(a.to_arrays()); b.get("z"), b.get("y"), b.free_rows
        (2, None, [1])
        """
        return {**packed_ids(self._ids), "free": np.asarray(self._free, dtype=np.int64)}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`to_arrays` wrote, in place; ``ValueError`` if it is malformed."""
        free = arrays["free"]
        if free.ndim != 1 or free.dtype.kind not in "iu":
            raise ValueError(f"free rows must be a 1-d integer array, got {free.dtype} of shape {free.shape}")
        id_list = saved_ids(arrays)
        free_list = free.tolist()
        free_set = set(free_list)
        if len(free_set) != len(free_list) or any(not 0 <= r < len(id_list) for r in free_set):
            raise ValueError("free rows repeat or are out of range")
        row_of = {id_: row for row, id_ in enumerate(id_list) if row not in free_set}
        if len(row_of) != len(id_list) - len(free_set):
            raise ValueError("duplicate ids")
        self._ids, self._free, self._row_of = id_list, free_list, row_of


def packed_ids(ids: Sequence[str], name: str = "id") -> dict[str, np.ndarray]:
    """``ids`` as the arrays ``<name>_bytes`` and ``<name>_ends`` (:func:`pack_ids`), to save
    beside others; :func:`saved_ids` reads them back.

    >>> saved_ids(packed_ids(["a", "é"], "viewer"), "viewer")
    ['a', 'é']
    """
    blob, ends = pack_ids(ids)
    return {f"{name}_bytes": blob, f"{name}_ends": ends}


def saved_ids(arrays: Mapping[str, np.ndarray], name: str = "id") -> list[str]:
    """Ids saved by :func:`packed_ids`, or, in a file written before 2026-12-01, as a unicode
    array ``<name>s``; ``ValueError`` if malformed. ``arrays``: any mapping (an open ``.npz``)."""
    if f"{name}_bytes" in arrays:
        return unpack_ids(arrays[f"{name}_bytes"], arrays[f"{name}_ends"])
    ids = arrays[f"{name}s"]
    if ids.ndim != 1 or ids.dtype.kind != "U":
        raise ValueError(f"ids must be a 1-d unicode array, got {ids.dtype} of shape {ids.shape}")
    return ids.tolist()


class GrowableTable:
    """A matrix of ``dim`` columns (a vector when ``dim`` is 0) whose visible rows grow on demand.

    ``array`` is a view of the first ``rows`` rows of a buffer whose capacity doubles when full.
    New rows, and rows :meth:`reset`, hold ``fill`` (0 by default; ``-1`` for a table of row
    references, ``-inf`` for times never seen). A model that starts rows otherwise (random
    vectors) writes the new rows that :meth:`ensure` returns.

    As a part (:mod:`model.persist`) it saves its visible rows, under ``rows``:

    >>> t = GrowableTable(dim=2, fill=-1.0); t.ensure(2)[:] = 3.0; t.ensure(3).tolist()
    [[-1.0, -1.0]]
    >>> back = GrowableTable(dim=2, fill=-1.0); back.load_arrays(t.to_arrays()); back.array.tolist()
    [[3.0, 3.0], [3.0, 3.0], [-1.0, -1.0]]
    """

    def __init__(self, dim: int, capacity: int = 1024, dtype: type = np.float32, fill: float = 0.0) -> None:
        self.dim = dim
        self.fill = fill
        self._buffer = np.full(self._shape(max(1, capacity)), fill, dtype=dtype)
        self.rows = 0

    def _shape(self, rows: int) -> tuple[int, ...]:
        return (rows, self.dim) if self.dim else (rows,)

    @property
    def capacity(self) -> int:
        return self._buffer.shape[0]

    @property
    def array(self) -> np.ndarray:
        return self._buffer[: self.rows]

    def ensure(self, rows: int) -> np.ndarray:
        """Make rows ``0..rows-1`` exist; returns the rows just created (a view, holding ``fill``)."""
        start = self.rows
        if rows <= start:
            return self._buffer[start:start]
        if rows > self.capacity:
            capacity = self.capacity
            while capacity < rows:
                capacity *= 2
            grown = np.empty(self._shape(capacity), dtype=self._buffer.dtype)
            grown[:start] = self._buffer[:start]
            self._buffer = grown
        self._buffer[start:rows] = self.fill
        self.rows = rows
        return self._buffer[start:rows]

    def reset(self, rows: np.ndarray) -> None:
        """Give existing ``rows`` the value a new row gets (for rows released and reused).

        >>> t = GrowableTable(dim=2); _ = t.ensure(3); t.array[:] = 5.0
        >>> t.reset(np.array([1])); t.array.tolist()
        [[5.0, 5.0], [0.0, 0.0], [5.0, 5.0]]
        """
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size:
            self._buffer[rows] = self.fill

    # -- persistence (a part, see :mod:`model.persist`) -----------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"rows": self.array}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Replace the rows with saved ones, in place; ``ValueError`` on another shape or dtype,
        or on a non-finite number other than ``fill``."""
        array = arrays["rows"]
        dtype = self._buffer.dtype
        if array.dtype != dtype or array.ndim != self._buffer.ndim or array.shape[1:] != self._shape(0)[1:]:
            expected = f"(n, {self.dim})" if self.dim else "(n,)"
            raise ValueError(f"table rows are {array.dtype} {array.shape}, expected {dtype} {expected}")
        if dtype.kind == "f":
            bad = ~np.isfinite(array) & (array != self.fill)
            if bad.any():
                raise ValueError("table rows hold non-finite numbers")
        capacity = self.capacity
        while capacity < array.shape[0]:  # as ensure() would have grown it
            capacity *= 2
        self._buffer = np.full(self._shape(capacity), self.fill, dtype=dtype)
        self._buffer[: array.shape[0]] = array
        self.rows = array.shape[0]
