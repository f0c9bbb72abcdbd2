"""The watch event: the one record that flows through streamrec.

A watch event says that a viewer watched a video at some time, for some number of seconds.
It is the unit the producer sends, the consumer decodes, and every model learns from.

>>> from contract.events import WatchEvent
>>> e = WatchEvent(timestamp=1616963421.0, viewer="UC2nEn", video="WK_Nr4", watch_time=600.0)
>>> e.viewer, e.duration
('UC2nEn', None)

"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["WatchEvent"]


class WatchEvent(NamedTuple):
    """One watch: ``viewer`` watched ``video`` at ``timestamp`` (Unix seconds).

    ``watch_time`` is the seconds watched; ``None`` means unknown (a rating, a click), which
    models treat as a plain positive of weight 1. ``duration`` is the video's length in seconds,
    when known, so that the fraction watched can be used.
    """

    timestamp: float
    viewer: str
    video: str
    watch_time: float | None = None
    duration: float | None = None
    event_id: str | None = None
