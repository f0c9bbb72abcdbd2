"""Where the benchmarks find MovieLens 100K when no path is given.

``$STREAMREC_ML100K`` if set, else ``../shared/data/ml-100k/u.data`` beside the repository.
The data set is never part of the repository: its licence forbids redistribution.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ml100k"]

REPO = Path(__file__).resolve().parents[1]


def ml100k() -> Path:
    """The default ``u.data`` path (it may not exist: each benchmark says so and exits 2)."""
    env = os.environ.get("STREAMREC_ML100K")
    return Path(env) if env else REPO.parent / "shared" / "data" / "ml-100k" / "u.data"
