"""Read watch events from files: MovieLens in its three layouts, and our own JSON lines.

Each MovieLens rating counts as one watch event of unknown watch time (a plain positive of
weight 1): a rating says the viewer watched the film, not how long, and treating a 1-star
rating as a negative would need explicit feedback the service never gets from watch logs.

Formats (``auto`` picks by file name, then by content):

* ``movielens``: ``u.data`` (tab-separated ``user item rating timestamp``), ``ratings.dat``
  (``::``-separated) or ``ratings.csv`` (header ``userId,movieId,rating,timestamp``);
* ``jsonl``: one watch event per line, the same JSON as the Kafka input topic.

Events come back sorted by timestamp (stable, so ties keep file order): replays and the
evaluator need time order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from contract.events import WatchEvent

__all__ = ["DataFormatError", "ReadStats", "read_events", "detect_format", "FORMATS"]

FORMATS = ("auto", "movielens", "jsonl")


class DataFormatError(ValueError):
    """A file that cannot be read as watch events; the message names the file and line."""


@dataclass
class ReadStats:
    rows: int = 0
    bad_rows: int = 0


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".data", ".dat", ".csv")):
        return "movielens"
    with path.open("rb") as f:
        head = f.read(4096).lstrip()
    if head.startswith(b"{"):
        return "jsonl"
    if head:
        return "movielens"
    raise DataFormatError(f"{path}: empty file, cannot tell its format")


def _movielens_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    with path.open("r", encoding="utf-8", errors="strict") as f:
        first = True
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            if "::" in line:
                fields = line.split("::")
            elif "\t" in line:
                fields = line.split("\t")
            else:
                fields = line.split(",")
            if first and fields and fields[0].strip().lower() in ("userid", "user_id", "user"):
                first = False
                continue  # the ratings.csv header
            first = False
            yield number, fields


def _parse_movielens(number: int, fields: list[str], path: Path) -> WatchEvent:
    if len(fields) < 4:
        raise DataFormatError(
            f"{path}:{number}: expected user, item, rating, timestamp; got {len(fields)} fields"
        )
    user, item, _rating, ts = (f.strip() for f in fields[:4])
    if not user or not item:
        raise DataFormatError(f"{path}:{number}: empty user or item id")
    try:
        timestamp = float(ts)
    except ValueError:
        raise DataFormatError(f"{path}:{number}: timestamp {ts!r} is not a number") from None
    if not math.isfinite(timestamp):
        raise DataFormatError(f"{path}:{number}: timestamp {ts!r} is not finite")
    return WatchEvent(timestamp=timestamp, viewer=user, video=item)


def _parse_json(number: int, line: bytes, path: Path) -> WatchEvent:
    # The Kafka decoder owns the full validation rules; files share them.
    from contract.schema import EventError, event_from_json

    try:
        return event_from_json(line)
    except EventError as err:
        raise DataFormatError(f"{path}:{number}: {err}") from None


def read_events(
    path: str | Path, fmt: str = "auto", *, skip_bad_rows: bool = False, stats: ReadStats | None = None
) -> list[WatchEvent]:
    """All events of ``path`` in time order. Raises :class:`DataFormatError` on bad input,
    unless ``skip_bad_rows`` (then bad rows are counted in ``stats.bad_rows``)."""
    path = Path(path)
    if fmt not in FORMATS:
        raise DataFormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not path.exists():
        raise DataFormatError(f"{path}: no such file")
    if path.is_dir():
        for name in ("u.data", "ratings.dat", "ratings.csv"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise DataFormatError(f"{path}: a folder without u.data, ratings.dat or ratings.csv")
    if fmt == "auto":
        fmt = detect_format(path)
    stats = stats if stats is not None else ReadStats()
    events: list[WatchEvent] = []

    def keep(make):
        stats.rows += 1
        try:
            events.append(make())
        except DataFormatError:
            stats.bad_rows += 1
            if not skip_bad_rows:
                raise

    try:
        if fmt == "movielens":
            for number, fields in _movielens_rows(path):
                keep(lambda n=number, f=fields: _parse_movielens(n, f, path))
        else:
            with path.open("rb") as f:
                for number, line in enumerate(f, start=1):
                    if line.strip():
                        keep(lambda n=number, raw=line: _parse_json(n, raw, path))
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    events.sort(key=lambda e: e.timestamp)
    return events
