"""After loading a baseline: checks that its parts agree on how many rows exist.

Each part checks its own arrays when it loads them (:mod:`model.persist`); only the model knows
which parts share rows. These are the checks the baselines' ``check_state`` share: a table with
one row per id has as many rows as the index has, and no list or table names a row that does
not exist. Each raises ``ValueError`` saying what disagrees.

>>> from model.ids import GrowableTable, IdIndex
>>> ids, table = IdIndex(), GrowableTable(dim=0)
>>> _ = ids.add_many(["a", "b"]); _ = table.ensure(3)
>>> check_table_rows({"counts": table}, len(ids))
Traceback (most recent call last):
...
ValueError: counts has 3 rows, but 2 ids exist
"""

from __future__ import annotations

from model.ids import GrowableTable, IdIndex
from model.seen import SeenVideos

__all__ = ["check_table_rows", "check_seen_rows"]


def check_table_rows(tables: dict[str, GrowableTable], rows: int) -> None:
    """``ValueError`` unless every table has exactly ``rows`` rows."""
    for name, table in tables.items():
        if table.rows != rows:
            raise ValueError(f"{name} has {table.rows} rows, but {rows} ids exist")


def check_seen_rows(seen: SeenVideos, viewers: IdIndex, videos: IdIndex) -> None:
    """``ValueError`` when seen lists name viewer or video rows that do not exist."""
    if len(seen) > len(viewers):
        raise ValueError(f"seen lists for {len(seen)} viewer rows, but {len(viewers)} rows exist")
    if seen.max_video() >= len(videos):
        raise ValueError(f"seen lists name video row {seen.max_video()}, but {len(videos)} rows exist")
