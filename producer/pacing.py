"""Pace a stream of events: a fixed rate, a speed-up of the original timestamps, or no pacing.

:func:`paced` wraps any iterator of events and yields each one when it is due. Due times are
absolute (from the moment the first event is yielded), so a late wake-up does not push every
later event back: the pacer catches up instead of drifting. It sleeps only when it is ahead by
at least ``min_sleep`` seconds, so high rates cost one sleep per few events, not per event.

The clock and the sleep function are injectable, which lets tests check the schedule without
waiting:

>>> class Clock:
...     now = 0.0
...     def time(self): return self.now
...     def sleep(self, s): self.now += s
>>> clock = Clock()
>>> [round(clock.now, 2) for _ in paced(range(4), rate=10, clock=clock.time, sleep=clock.sleep)]
[0.0, 0.1, 0.2, 0.3]

"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

__all__ = ["paced", "schedule"]

T = TypeVar("T")


def schedule(
    rate: float | None = None, speedup: float | None = None
) -> Callable[[int, object, float], float]:
    """The due time of the ``i``-th item, relative to the first, as ``due(i, item, first_ts)``.

    ``rate`` is in items per second; ``speedup`` divides the gaps between the events' own
    timestamps (``speedup=60`` plays an hour in a minute). Neither: everything is due at once.

    >>> due = schedule(rate=4)
    >>> due(0, None, 0.0), due(2, None, 0.0)
    (0.0, 0.5)
    >>> from contract.events import WatchEvent
    >>> due = schedule(speedup=10)
    >>> due(5, WatchEvent(1030.0, "a", "v"), 1000.0)
    3.0
    """
    if rate is not None and speedup is not None:
        raise ValueError("give a rate or a speed-up, not both")
    if rate is not None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0 events/s, got {rate}")
        return lambda i, _item, _first: i / rate
    if speedup is not None:
        if not speedup > 0:
            raise ValueError(f"speed-up must be > 0, got {speedup}")
        return lambda _i, item, first: max(0.0, (item.timestamp - first) / speedup)
    return lambda _i, _item, _first: 0.0


def paced(
    items: Iterable[T],
    rate: float | None = None,
    speedup: float | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    min_sleep: float = 0.001,
) -> Iterator[T]:
    """Yield ``items`` no earlier than their due time (see :func:`schedule`).

    With ``speedup`` the items must be :class:`~contract.events.WatchEvent` (or anything with a
    ``timestamp``), in time order; an event earlier than the first is due at once.
    """
    due = schedule(rate, speedup)  # checks the arguments now, not at the first item
    if rate is None and speedup is None:
        return iter(items)  # as fast as possible: no clock reads at all
    return _paced(items, due, clock, sleep, min_sleep)


def _paced(items, due, clock, sleep, min_sleep):
    start = None
    first_ts = 0.0
    for i, item in enumerate(items):
        if start is None:
            start = clock()
            first_ts = getattr(item, "timestamp", 0.0)
        wait = start + due(i, item, first_ts) - clock()
        if wait >= min_sleep:
            sleep(wait)
        yield item
