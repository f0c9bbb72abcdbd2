"""Models by name: what ``streamrec evaluate --model``, the benchmarks and the service ask for.

Each name maps to ``"module:Class"``, imported only when that model is created, so listing the
names costs nothing and a model that is not installed (or not written yet) fails only when it
is asked for, with a clear message.

>>> resolve(["most_popular,isgd", "most_popular"])
['most_popular', 'isgd']
>>> resolve(["all"])[0] == DEFAULT_MODEL
True
>>> create("recent_popular").name
'recent_popular'

"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path

from model.base import StreamRanker

__all__ = [
    "MODELS",
    "DEFAULT_MODEL",
    "DEFAULT_BATCH_SIZE",
    "UnknownModel",
    "create",
    "load",
    "model_class",
    "resolve",
    "names",
]

#: name -> (``module:Class``, one-line description). The first entry is the default model.
MODELS: dict[str, tuple[str, str]] = {
    "streamrec": ("model.embedding:EmbeddingRanker", "the streamrec embedding model (default)"),
    "cooccurrence": (
        "model.baselines.cooccurrence:CoOccurrenceKNN",
        "item co-occurrence kNN over the viewer's recent watches",
    ),
    "recent_popular": ("model.baselines.recent_popular:RecentPopular", "decayed watch counts"),
    "most_popular": ("model.baselines.popular:MostPopular", "watch counts"),
    "isgd": ("model.baselines.isgd:ISGD", "incremental SGD matrix factorisation (Vinagre 2014)"),
    "funk_mf": ("model.baselines.funk_mf:FunkMFRanker", "river's FunkMF through an adapter"),
}

#: The model evaluated and served when none is named.
DEFAULT_MODEL = "streamrec"

#: Events per scored-then-learned batch when none is given: one poll's worth in the service.
DEFAULT_BATCH_SIZE = 256


class UnknownModel(ValueError):
    """A model name that is not registered, or whose code cannot be imported."""


def names() -> list[str]:
    """Every registered model name, the default first."""
    return list(MODELS)


def resolve(requested: Iterable[str] | None) -> list[str]:
    """Expand ``--model`` values: comma-separated, repeatable, ``all``; de-duplicated in order.

    ``None`` or nothing means the default model alone.
    """
    out: list[str] = []
    for value in requested or ():
        for name in value.split(","):
            name = name.strip()
            if not name:
                continue
            expanded = names() if name == "all" else [name]
            for n in expanded:
                if n not in MODELS:
                    raise UnknownModel(f"unknown model {n!r}; choose from {', '.join(names())} or all")
                if n not in out:
                    out.append(n)
    return out or [DEFAULT_MODEL]


def model_class(name: str) -> type[StreamRanker]:
    """The class registered as ``name`` (imported now)."""
    if name not in MODELS:
        raise UnknownModel(f"unknown model {name!r}; choose from {', '.join(names())}")
    target, _ = MODELS[name]
    module_name, _, class_name = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise UnknownModel(f"model {name!r} is not available ({target}: {err})") from None


def create(name: str, **params) -> StreamRanker:
    """A fresh model registered as ``name``, built with its defaults overridden by ``params``."""
    return model_class(name)(**params)


def load(name: str, path: str | Path) -> StreamRanker:
    """The model registered as ``name``, restored from a file its ``save`` wrote."""
    cls = model_class(name)
    if not hasattr(cls, "load"):
        raise UnknownModel(f"model {name!r} cannot be saved and restored")
    return cls.load(path)
