"""Read watch events from files: MovieLens in its three layouts, and our own JSON lines.

Each MovieLens rating counts as one watch event of unknown watch time (a plain positive of
weight 1): a rating says the viewer watched the film, not how long, and treating a 1-star
rating as a negative would need explicit feedback the service never gets from watch logs.

Formats (``auto`` picks by file name, then by content):

* ``movielens``: ``u.data`` (tab-separated ``user item rating timestamp``), ``ratings.dat``
  (``::``-separated) or ``ratings.csv`` (header ``userId,movieId,rating,timestamp``);
* ``jsonl``: one watch event per line, the same JSON as the Kafka input topic.

Either may be gzip-compressed (``ratings.csv.gz``: found by its first bytes). Rows are held to
the service's rules (:mod:`contract.schema`): a timestamp in milliseconds, say, is an error
naming the line, not an event the service would dead-letter after the replay said it was sent.

Events come back sorted by timestamp (stable, so ties keep file order): replays and the
evaluator need time order.
"""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from contract.events import WatchEvent
from contract.schema import MAX_ID_CHARS, MAX_TIMESTAMP, MIN_TIMESTAMP

__all__ = ["DataFormatError", "ReadStats", "read_events", "detect_format", "FORMATS"]

FORMATS = ("auto", "movielens", "jsonl")
_GZIP_MAGIC = b"\x1f\x8b"


class DataFormatError(ValueError):
    """A file that cannot be read as watch events; the message names the file and line."""


@dataclass
class ReadStats:
    rows: int = 0
    bad_rows: int = 0


def _open(path: Path) -> IO[bytes]:
    """``path`` as bytes, through gzip when it is compressed (``ratings.csv.gz``)."""
    with path.open("rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == _GZIP_MAGIC else path.open("rb")


def _plain_name(path: Path) -> str:
    name = path.name.lower()
    return name[: -len(".gz")] if name.endswith(".gz") else name


def detect_format_by_name(path: Path) -> str | None:
    """``jsonl`` or ``movielens`` by the file's name (a ``.gz`` suffix aside), else ``None``."""
    name = _plain_name(path)
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".data", ".dat", ".csv")):
        return "movielens"
    return None


def detect_format(path: Path) -> str:
    by_name = detect_format_by_name(path)
    if by_name is not None:
        return by_name
    try:
        with _open(path) as f:
            head = f.read(4096).lstrip()
    except (OSError, EOFError, zlib.error) as err:
        raise DataFormatError(f"{path}: cannot read it: {err}") from None
    if head.startswith(b"{"):
        return "jsonl"
    if head:
        return "movielens"
    raise DataFormatError(f"{path}: empty file, cannot tell its format")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Numbered lines of ``path`` as bytes (decompressed), blank ones left out."""
    try:
        with _open(path) as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    yield number, line
    except (OSError, EOFError, zlib.error) as err:  # a damaged gzip stream, an unreadable file
        raise DataFormatError(f"{path}: cannot read it: {err}") from None


def _movielens_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    first = True
    for number, raw in _lines(path):
        try:
            line = raw.decode("utf-8-sig" if first else "utf-8").strip()
        except UnicodeDecodeError as err:
            where = f"{err.reason} at column {err.start + 1}"
            raise DataFormatError(f"{path}:{number}: not UTF-8 text ({where})") from None
        if "::" in line:
            fields = line.split("::")
        elif "\t" in line:
            fields = line.split("\t")
        else:
            fields = line.split(",")
        # ratings.csv's header, bare or quoted as spreadsheets write it
        if first and fields and fields[0].strip().strip('"').lower() in ("userid", "user_id", "user"):
            first = False
            continue
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
    if len(user) > MAX_ID_CHARS or len(item) > MAX_ID_CHARS:
        raise DataFormatError(f"{path}:{number}: an id longer than {MAX_ID_CHARS} characters")
    try:
        timestamp = float(ts)
    except ValueError:
        raise DataFormatError(f"{path}:{number}: timestamp {ts!r} is not a number") from None
    if not math.isfinite(timestamp):
        raise DataFormatError(f"{path}:{number}: timestamp {ts!r} is not finite")
    # The service's rule (contract.schema), checked here so a replay never sends what it refuses.
    if not MIN_TIMESTAMP <= timestamp <= MAX_TIMESTAMP:
        raise DataFormatError(
            f"{path}:{number}: timestamp {ts!r} is not Unix seconds between 1970 and 2100 (milliseconds?)"
        )
    return WatchEvent(timestamp=timestamp, viewer=user, video=item)


def _parse_json(number: int, line: bytes, path: Path) -> WatchEvent:
    # The Kafka decoder owns the full validation rules; files share them.
    from contract.schema import EventError, event_from_json

    try:
        return event_from_json(line)
    except EventError as err:
        raise DataFormatError(f"{path}:{number}: {err}") from None


#: What a folder is searched for, in this order (each may also be gzip-compressed).
_RATINGS_FILES = ("u.data", "ratings.dat", "ratings.csv")


def _file_in(folder: Path) -> Path:
    """The events file of ``folder``: a MovieLens ratings file, else its one JSON-lines file."""
    for name in _RATINGS_FILES:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    lines = sorted(p for p in folder.iterdir() if p.is_file() and detect_format_by_name(p) == "jsonl")
    if len(lines) == 1:
        return lines[0]
    found = f"{len(lines)} JSON-lines files" if lines else "no JSON-lines file"
    raise DataFormatError(f"{folder}: a folder without u.data, ratings.dat or ratings.csv, and {found}")


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
        path = _file_in(path)
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

    if fmt == "movielens":
        for number, fields in _movielens_rows(path):
            keep(lambda n=number, f=fields: _parse_movielens(n, f, path))
    else:
        for number, line in _lines(path):
            keep(lambda n=number, raw=line: _parse_json(n, raw, path))
    events.sort(key=lambda e: e.timestamp)
    return events
