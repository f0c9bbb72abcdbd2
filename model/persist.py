"""One persistence pattern for every model: parts that save their own arrays, one file per model.

A model is assembled from *parts* (id tables, seen lists, histories, parameter tables,
co-occurrence counts, the lifecycle, counters, the random generator's state). Each part knows
its own arrays: ``to_arrays()`` returns them by name, ``load_arrays(arrays)`` restores them in
place and raises ``ValueError`` when they are malformed. A model lists its parts once, in
:meth:`model.base.StreamRanker.state_parts`; :func:`save_model` and :func:`load_model` do the
rest for every model alike:

* the file is one ``.npz`` (no pickle), written to a temporary name and renamed;
* it carries a format marker, the model's name, the model's own state version, and its
  settings, read from the constructor's signature (every setting is stored under its own name,
  as river does), so settings are never listed by hand;
* loading builds the model from those settings, then hands each part its arrays, then asks the
  model to check that the parts agree (:meth:`~model.base.StreamRanker.check_state`);
* a file that is not ours, of another model, of another state version, or damaged raises
  ``ValueError("<path> is not a file of the streamrec model <name>: ...")`` with the reason.

>>> import tempfile, pathlib
>>> from model.baselines.popular import MostPopular
>>> from contract.events import WatchEvent
>>> m = MostPopular()
>>> m.learn_many([WatchEvent(0, "a", "x"), WatchEvent(1, "b", "y"), WatchEvent(2, "c", "y")])
>>> path = pathlib.Path(tempfile.mkdtemp()) / "m.npz"
>>> m.save(path)
>>> MostPopular.load(path).recommend("a").videos
['y']
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np

from model.npz import read_npz, write_npz

if TYPE_CHECKING:
    from model.base import StreamRanker

__all__ = [
    "Part",
    "FORMAT",
    "settings_of_instance",
    "save_model",
    "load_model",
    "json_array",
    "from_json_array",
]

#: The file format every model is written in; each model versions its own parts on top.
FORMAT = "streamrec.model/3"

M = TypeVar("M", bound="StreamRanker")


class Part(Protocol):
    """What a model's part does to be saved: its arrays out by name, and back in place."""

    def to_arrays(self) -> dict[str, np.ndarray]: ...

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None: ...


def json_array(value: object) -> np.ndarray:
    """A JSON-able value as a 0-d string array (how scalars and small dicts travel in a file)."""
    return np.array(json.dumps(value))


def from_json_array(array: np.ndarray) -> object:
    return json.loads(str(array))


def settings_of_instance(model: StreamRanker) -> dict:
    """The model's settings: each constructor parameter, read from the attribute of its name."""
    params = inspect.signature(type(model).__init__).parameters
    return {name: getattr(model, name) for name in params if name != "self"}


def save_model(model: StreamRanker, path: str | Path) -> None:
    """Write ``model`` to exactly ``path``: settings, then each part's arrays under its name."""
    arrays: dict[str, np.ndarray] = {
        "format": np.array(FORMAT),
        "model": np.array(model.name),
        "state_version": np.array(model.state_version),
        "settings": json_array(settings_of_instance(model)),
    }
    for prefix, part in model.state_parts().items():
        for key, array in part.to_arrays().items():
            arrays[f"{prefix}/{key}"] = array
    write_npz(path, arrays)


def load_model(cls: type[M], path: str | Path) -> M:
    """Read a model of class ``cls`` written by :func:`save_model`."""
    path = Path(path)

    def not_ours(why: str) -> ValueError:
        return ValueError(f"{path} is not a file of the streamrec model {cls.name!r}: {why}")

    arrays = read_npz(path, not_ours)
    found = str(arrays["format"]) if "format" in arrays else None
    if found != FORMAT:
        older = found is not None and found.startswith("streamrec.")
        why = (
            f"it was written by an older streamrec ({found}); this release reads {FORMAT} only: "
            "start from an empty model (remove the checkpoint) and let it learn again"
            if older
            else f"format {found!r}, expected {FORMAT!r}"
        )
        raise not_ours(why)
    if str(arrays.get("model")) != cls.name:
        raise not_ours(f"it holds model {str(arrays.get('model'))!r}")
    if int(arrays["state_version"]) != cls.state_version:
        raise not_ours(f"state version {int(arrays['state_version'])}, expected {cls.state_version}")
    try:
        model = cls(**from_json_array(arrays["settings"]))
        for prefix, part in model.state_parts().items():
            head = f"{prefix}/"
            part.load_arrays({k.removeprefix(head): v for k, v in arrays.items() if k.startswith(head)})
        model.check_state()
    except (KeyError, ValueError, TypeError, IndexError, json.JSONDecodeError) as err:
        raise not_ours(f"damaged content ({type(err).__name__}: {err})") from None
    return model
