"""One ``.npz`` file per saved model: written atomically, read without pickle.

Every model file (:mod:`model.persist`) goes through these two functions, so every saved model
is replaced in one rename and every file that is not a readable ``.npz`` is refused with the same
clear message.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "m.npz"
>>> write_npz(path, {"format": np.array("demo/1"), "x": np.arange(3)})
>>> read_npz(path, ValueError)["x"].tolist()
[0, 1, 2]
>>> _ = path.write_bytes(b"junk")
>>> read_npz(path, ValueError)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: cannot read it as .npz (...)
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["write_npz", "read_npz"]


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to exactly ``path`` (no ``.npz`` appended): a temporary file, then a
    rename, so a crash never leaves half a model under the real name."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def read_npz(path: str | Path, not_ours: Callable[[str], Exception]) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path``, pickle refused; a missing file raises
    ``FileNotFoundError``, anything unreadable ``not_ours(why)``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise not_ours(f"cannot read it as .npz ({err})") from None
