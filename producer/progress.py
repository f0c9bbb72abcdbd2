"""A one-line progress bar on stderr, drawn only when stderr is a terminal.

No dependency: a replay prints a few lines a second at most, and a pipe or a log file gets
nothing (only the summary the command prints at the end).

>>> import io
>>> out = io.StringIO()
>>> bar = Progress(total=4, stream=out, enabled=True, interval=0.0)
>>> for _ in range(4):
...     bar.update()
>>> bar.close()
>>> out.getvalue().rstrip().rsplit("\\r", 1)[-1].split()[:3]
['[##############################]', '4/4', '(100%)']

"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """Counts items and redraws ``[####    ] done/total (pct) rate ev/s`` at most every ``interval`` s."""

    def __init__(
        self,
        total: int | None = None,
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        interval: float = 0.2,
        width: int = 30,
    ) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.interval = interval
        self.width = width
        self.done = 0
        self._start = time.monotonic()
        self._last = -float("inf")

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.enabled:
            now = time.monotonic()
            if now - self._last >= self.interval:
                self._last = now
                self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-9)
        rate = f"{self.done / elapsed:,.0f} ev/s"
        if self.total:
            share = min(1.0, self.done / self.total)
            filled = int(round(share * self.width))
            bar = "[" + "#" * filled + " " * (self.width - filled) + "]"
            text = f"{bar} {self.done:,}/{self.total:,} ({share:.0%}) {rate}"
        else:
            text = f"{self.done:,} events {rate}"
        self.stream.write("\r" + text + " " * 4)
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
