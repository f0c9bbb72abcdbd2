"""Admit an id into the model only after ``min_count`` events: a count-min sketch in numpy.

Most ids in a real stream are seen once (a visitor who leaves, an upload nobody watches).
Giving each a row costs memory and teaches the model nothing, so, as Monolith's frequency
filter does, an id enters the model only on its ``min_count``-th event; until then its events
are only counted.

Counts live in a count-min sketch (Cormode and Muthukrishnan 2005): ``depth`` rows of
``width`` saturating uint8 counters; an id increments one counter per row and its count is
the smallest of them, never less than the truth and, while the ids counted are few compared
with ``width``, exactly it. Memory is fixed (``depth * width`` bytes, 1 MiB by default) however
many ids go by. Counts are halved every ``decay_every`` counted events, so an id must reach
``min_count`` within roughly that many events and old counts do not fill the sketch. Updates
are *conservative* (only counters below the new estimate rise), which keeps over-counting low.
Ids are hashed with BLAKE2b, so counts survive a restart (Python's ``hash`` is salted per
process).

>>> f = FrequencyFilter(min_count=2)
>>> known = np.zeros(4, dtype=bool)
>>> f.admit(["a", "b", "a", "a"], known).tolist()      # "a" on its 2nd event, "b" not yet
[False, False, True, True]
>>> f.admit(["b", "c"], np.array([False, True])).tolist()  # "c" is already in the model
[True, True]
>>> f.count(["a", "b", "z"]).tolist()
[3, 2, 0]

"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from model.history import group_positions

__all__ = ["FrequencyFilter", "hash_ids"]

_MAX = np.iinfo(np.uint8).max


def hash_ids(ids: Sequence[str]) -> np.ndarray:
    """Stable 64-bit hashes of string ids (the same in every process).

    >>> hash_ids(["a"]).dtype, hash_ids(["a"])[0] == hash_ids(["a"])[0], hash_ids(["a", "b"]).size
    (dtype('uint64'), np.True_, 2)
    """
    blake = hashlib.blake2b
    return np.fromiter(
        (
            int.from_bytes(blake(i.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
            for i in ids
        ),
        dtype=np.uint64,
        count=len(ids),
    )


class FrequencyFilter:
    """Counts events of ids not in the model yet and says when each reaches ``min_count``.

    Parameters
    ----------
    min_count
        Events an id needs before it is admitted (1 admits everything and counts nothing).
    width, depth
        Sketch size: ``depth`` rows of ``width`` counters (``width`` a power of two).
    decay_every
        Counted events between two halvings of every counter.
    """

    def __init__(
        self, min_count: int, width: int = 1 << 18, depth: int = 4, decay_every: int = 1 << 17
    ) -> None:
        if not 1 <= min_count <= _MAX:
            raise ValueError(f"min_count must be in [1, {_MAX}], got {min_count}")
        if width < 2 or width & (width - 1) or depth < 1 or decay_every < 1:
            raise ValueError("width must be a power of two >= 2, depth and decay_every >= 1")
        self.min_count = min_count
        self.width = width
        self.depth = depth
        self.decay_every = decay_every
        self.sketch = np.zeros((depth, width), dtype=np.uint8)
        self.since_decay = 0
        # Multiply-shift hashing (Dietzfelbinger): one odd multiplier per row, fixed so that a
        # saved sketch means the same thing when loaded.
        rng = np.random.default_rng(0x5EED)
        self._mult = rng.integers(1, 2**63, size=depth, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self._shift = np.uint64(64 - width.bit_length() + 1)

    def _cells(self, ids: Sequence[str]) -> np.ndarray:
        """``(depth, len(ids))`` counter columns of each id."""
        h = hash_ids(ids)
        return ((self._mult[:, None] * h[None, :]) >> self._shift).astype(np.int64)

    def count(self, ids: Sequence[str]) -> np.ndarray:
        """Estimated events counted for each id (never below the truth, until decay)."""
        if not len(ids):
            return np.zeros(0, dtype=np.int64)
        cells = self._cells(ids)
        return self.sketch[np.arange(self.depth)[:, None], cells].min(axis=0).astype(np.int64)

    def admit(self, ids: Sequence[str], known: np.ndarray) -> np.ndarray:
        """Per event, whether its id may enter the model, counting the events of unknown ids.

        ``ids[i]`` is the id of event ``i`` and ``known[i]`` whether the model already holds it
        (admitted without counting). An unknown id is admitted on the event that brings its
        count, earlier events in this call included, to ``min_count``, and on every later one.
        """
        admitted = np.asarray(known, dtype=bool).copy()
        if self.min_count <= 1:
            admitted[:] = True
            return admitted
        unknown = np.flatnonzero(~admitted)
        if unknown.size == 0:
            return admitted
        first: dict[str, int] = {}
        key = np.fromiter((first.setdefault(ids[i], len(first)) for i in unknown.tolist()), dtype=np.int64)
        uniq = list(first)
        cells = self._cells(uniq)
        rows = np.arange(self.depth)[:, None]
        before = self.sketch[rows, cells].min(axis=0).astype(np.int64)
        _, _, within = group_positions(key)
        order = np.argsort(key, kind="stable")
        count_at = np.empty(unknown.size, dtype=np.int64)
        count_at[order] = before[key[order]] + within + 1
        admitted[unknown] = count_at >= self.min_count
        # Conservative update: each id's counters rise to (estimate + its events here), no more.
        target = np.minimum(before + np.bincount(key, minlength=len(uniq)), _MAX).astype(np.uint8)
        np.maximum.at(
            self.sketch, (np.broadcast_to(rows, cells.shape), cells), np.broadcast_to(target, cells.shape)
        )
        self.since_decay += int(unknown.size)
        if self.since_decay >= self.decay_every:
            self.sketch >>= 1
            self.since_decay = 0
        return admitted

    def nbytes(self) -> int:
        return int(self.sketch.nbytes)

    # -- persistence -------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"sketch": self.sketch, "since_decay": np.array(self.since_decay, dtype=np.int64)}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`to_arrays` wrote, in place; ``ValueError`` if it is malformed."""
        sketch, since = arrays["sketch"], arrays["since_decay"]
        if sketch.shape != self.sketch.shape or sketch.dtype != np.uint8:
            raise ValueError(
                f"frequency sketch is {sketch.dtype} {sketch.shape}, expected uint8 {self.sketch.shape}"
            )
        if since.shape != () or since.dtype.kind not in "iu" or not 0 <= int(since) < self.decay_every:
            raise ValueError(f"frequency filter's events since decay must be in [0, {self.decay_every})")
        self.sketch = sketch.copy()
        self.since_decay = int(since)
