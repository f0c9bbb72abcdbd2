"""A dict that forgets keys not touched for ``ttl`` seconds of event time, or past ``max_size``.

Per-id bookkeeping outside the model (which viewers and videos the evaluator has seen, the
list last shown to each viewer) grows with every new id just as the model's tables did. This
is its bounded form: each :meth:`ExpiringDict.touch` moves the key to the young end, and the
oldest keys are dropped when they were last touched more than ``ttl`` before the newest time
seen (event time, as in :mod:`model.lifecycle`) or when there are more than ``max_size`` keys
(least recently touched first, as an LRU cache). With neither it is a plain dict.

>>> d = ExpiringDict(ttl=10.0)
>>> d.touch("a", 1, now=0.0), d.touch("b", 2, now=5.0), d.touch("a", 3, now=6.0)  # was "a" there?
(False, False, True)
>>> d.touch("c", 4, now=15.5)          # "b" was last touched at 5.0 < 15.5 - 10
False
>>> sorted(d.keys()), d.get("a"), "b" in d
(['a', 'c'], 3, False)
>>> lru = ExpiringDict(max_size=2)
>>> [lru.touch(k, k.upper(), now=0.0) for k in "xyzx"], list(lru.keys())
([False, False, False, False], ['z', 'x'])

"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Sequence
from itertools import repeat
from typing import Any

import numpy as np

__all__ = ["ExpiringDict", "RecentIds"]


class ExpiringDict:
    """Key -> value, in order of last touch, bounded by event-time age and by size.

    Eviction happens in :meth:`touch`, from the oldest end, and costs O(1) per evicted key.
    Keys are ordered by touch, not by time: an event that arrives slightly out of order may
    keep a key a little longer than ``ttl``, never evict one too early.
    """

    def __init__(self, ttl: float | None = None, max_size: int | None = None) -> None:
        if ttl is not None and not ttl > 0:
            raise ValueError(f"ttl must be positive or None, got {ttl}")
        if max_size is not None and max_size < 1:
            raise ValueError(f"max_size must be at least 1 or None, got {max_size}")
        self.ttl = ttl
        self.max_size = max_size
        self.now = -math.inf
        # OrderedDict, not dict: popping the oldest end of a plain dict rescans deleted slots.
        self._data: OrderedDict[Hashable, tuple[Any, float]] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def keys(self) -> Iterator[Hashable]:
        """Keys from the least to the most recently touched."""
        return iter(self._data)

    def get(self, key: Hashable, default: Any = None) -> Any:
        item = self._data.get(key)
        return default if item is None else item[0]

    def touch(self, key: Hashable, value: Any = None, now: float | None = None) -> bool:
        """Set ``key`` to ``value`` as seen at event time ``now`` (default: the newest time so far).

        Returns whether ``key`` was there, and not older than ``ttl``, just before: "seen
        recently?" and "remember it" in one call.
        """
        if now is None or math.isnan(now):  # as of the newest time seen
            now = self.now
        elif now > self.now:
            self.now = now
        data = self._data
        old = data.get(key)
        fresh = old is not None and (self.ttl is None or old[1] >= self.now - self.ttl)
        if old is not None and old[1] > now:  # a late event does not make a key look older
            now = old[1]
        data[key] = (value, now)
        data.move_to_end(key)
        if self.max_size is not None or self.ttl is not None:
            self._evict()
        return fresh

    def touch_many(self, keys: Sequence[Hashable], now: float) -> np.ndarray:
        """:meth:`touch` each key in order (value ``None``), all at ``now``; evicts once at the end.

        Returns, per key, whether it was there and fresh just before its touch (a key repeated
        in ``keys`` is fresh the second time). Three times cheaper per key than :meth:`touch`.

        >>> d = ExpiringDict(ttl=5.0)
        >>> d.touch_many(["a", "b", "a"], now=0.0).tolist(), d.touch_many(["a", "c"], now=9.0).tolist()
        ([False, False, True], [False, False])
        """
        if now > self.now:
            self.now = now
        data = self._data
        get, move = data.get, data.move_to_end
        cutoff = -math.inf if self.ttl is None else self.now - self.ttl
        # Each distinct key once (a batch repeats its viewers): the first position of each key,
        # built in C, iterated from the key touched last backwards, then touched in order of
        # last position as a touch per key would leave them.
        first = dict(zip(reversed(keys), range(len(keys) - 1, -1, -1), strict=True))
        order = list(reversed(first))
        was = []
        for key in order:
            old = get(key)
            if old is None:
                data[key] = (None, now)
                was.append(False)
            else:
                was.append(old[1] >= cutoff)
                data[key] = (None, now if now > old[1] else old[1])
                move(key)
        fresh = np.ones(len(keys), dtype=bool)  # a repeat is fresh: its first touch made it so
        fresh[np.fromiter(map(first.__getitem__, order), np.int64, len(order))] = was
        if self.max_size is not None or self.ttl is not None:
            self._evict()
        return fresh

    def put_many(self, keys: Sequence[Hashable], values: Sequence[Any], now: float | None = None) -> None:
        """:meth:`touch` each key with its value, in order, all at ``now``; evicts once at the end
        (the same keys remain as after touching one by one: the most recently touched).

        >>> d = ExpiringDict(max_size=2); d.put_many(["a", "b", "a", "c"], [1, 2, 3, 4], now=0.0)
        >>> list(d.keys()), d.get("a"), d.get("c")
        (['a', 'c'], 3, 4)
        """
        if now is None or math.isnan(now):  # as of the newest time seen
            now = self.now
        elif now > self.now:
            self.now = now
        data = self._data
        get, move = data.get, data.move_to_end
        for key, value in zip(keys, values, strict=True):
            old = get(key)
            # A late event does not make a key look older (as in touch).
            data[key] = (value, now if old is None or old[1] <= now else old[1])
            move(key)
        if self.max_size is not None or self.ttl is not None:
            self._evict()

    def _evict(self) -> None:
        data = self._data
        if self.max_size is not None:
            while len(data) > self.max_size:
                data.popitem(last=False)
                self.evicted += 1
        if self.ttl is not None:
            cutoff = self.now - self.ttl
            while data:
                key = next(iter(data))
                if data[key][1] >= cutoff:
                    break
                data.popitem(last=False)
                self.evicted += 1


class RecentIds:
    """The keys touched within ``ttl`` seconds of event time: :meth:`ExpiringDict.touch_many`'s
    answers without its order of touch.

    A plain dict of key -> last touch, in which a batch is looked up and stored by C loops
    (``map``, ``dict.update``) and whose values are the batch's one time object; the keys older
    than ``ttl`` are swept out once the clock has moved ``ttl / 8`` since the last sweep, or
    the dict has doubled. An ``ExpiringDict`` moves every key touched to the young end of a
    linked list, and in a long-running process each of its nodes is a cache miss: for the
    service's evaluator (two batches of 256 keys a batch) 0.6 us a key, this about a third of it.
    Whether a key was fresh is exact whenever the sweep runs: a key is fresh when its last
    touch is within ``ttl`` of the newest time, as in ``ExpiringDict``.

    >>> ids = RecentIds(ttl=10.0)
    >>> ids.touch_many(["a", "b", "a"], now=0.0).tolist(), ids.touch_many(["a", "c"], now=11.0).tolist()
    ([False, False, True], [False, False])
    >>> "b" in ids, "a" in ids, sorted(ids.keys()), len(ids)
    (False, True, ['a', 'c'], 2)
    """

    def __init__(self, ttl: float) -> None:
        if not ttl > 0:
            raise ValueError(f"ttl must be positive, got {ttl}")
        self.ttl = ttl
        self.max_size = None  # bounded by age only (ExpiringDict's attributes, for comparisons)
        self.now = -math.inf
        self._last: dict[Hashable, float] = {}
        self._swept_at = -math.inf
        self._kept = 0
        self.evicted = 0

    def __len__(self) -> int:
        """The keys held: those touched within ``ttl``, and any up to ``ttl / 8`` older that
        no sweep has dropped yet."""
        return len(self._last)

    def __contains__(self, key: object) -> bool:
        last = self._last.get(key)
        return last is not None and last >= self.now - self.ttl

    def keys(self) -> Iterator[Hashable]:
        """The keys touched within ``ttl``, in no particular order."""
        cutoff = self.now - self.ttl
        return (k for k, t in self._last.items() if t >= cutoff)

    def touch_many(self, keys: Sequence[Hashable], now: float) -> np.ndarray:
        """Touch each key at ``now``; per key, whether it was touched within ``ttl`` before (a
        key repeated in ``keys`` is fresh the second time), as :meth:`ExpiringDict.touch_many`."""
        if now > self.now:
            self.now = now
        n = len(keys)
        last = self._last
        # Each distinct key looked up and stored once (a viewer comes back within a batch: 42
        # distinct in a batch of 256 here), at its first position; a repeat is fresh.
        first = dict(zip(reversed(keys), range(n - 1, -1, -1), strict=True))
        distinct = len(first)
        before = np.fromiter(map(last.get, first, repeat(-math.inf)), np.float64, distinct)
        fresh = np.ones(n, dtype=bool)
        fresh[np.fromiter(first.values(), np.int64, distinct)] = before >= self.now - self.ttl
        if now >= self.now:  # the newest time: no key was touched later
            last.update(zip(first, repeat(now)))
        else:  # a late batch does not make a key look older
            for key, old in zip(first, before.tolist(), strict=True):
                if old < now:
                    last[key] = now
        self._sweep()
        return fresh

    def _sweep(self) -> None:
        """Drop the keys older than ``ttl``, once the clock has moved ``ttl / 8`` since the last
        sweep or the dict has doubled (each key's sweep is paid for by the touches before it)."""
        if self.now - self._swept_at < self.ttl / 8 and len(self._last) <= 2 * self._kept + 1024:
            return
        cutoff = self.now - self.ttl
        kept = {k: t for k, t in self._last.items() if t >= cutoff}
        self.evicted += len(self._last) - len(kept)
        self._last, self._swept_at, self._kept = kept, self.now, len(kept)
