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

Settings come from the command line as ``key=value`` text (values read as JSON, else as
text) and are checked against the model's constructor before it is built:

>>> parse_settings(["dim=16,shortlist=null", "loss=softmax"])
{'dim': 16, 'shortlist': None, 'loss': 'softmax'}
>>> create("recent_popular", half_life=500).half_life
500.0
>>> create("recent_popular", half_lif=500)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
model.registry.BadSetting: model 'recent_popular' has no setting 'half_lif'; its settings: half_life, ...

"""

from __future__ import annotations

import importlib
import inspect
import json
import types
import typing
from collections.abc import Iterable
from pathlib import Path

from model.base import StreamRanker

__all__ = [
    "MODELS",
    "DEFAULT_MODEL",
    "DEFAULT_BATCH_SIZE",
    "UnknownModel",
    "BadSetting",
    "create",
    "parse_settings",
    "settings_of",
    "load",
    "model_class",
    "resolve",
    "names",
]

#: name -> (``module:Class``, one-line description). The first entry is the default model.
MODELS: dict[str, tuple[str, str]] = {
    "streamrec": ("model.embedding:EmbeddingRanker", "the streamrec embedding model (default)"),
    "streamrec_profile": (
        "model.profile:ProfileRanker",
        "streamrec plus a long-term taste profile of everything the viewer watched",
    ),
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


class BadSetting(ValueError):
    """A model setting that is malformed, unknown to the model, or of a value it refuses."""


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


def settings_of(name: str) -> dict[str, object]:
    """The settings the model registered as ``name`` takes, with their defaults."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    parameters = inspect.signature(model_class(name)).parameters.values()
    return {p.name: p.default for p in parameters if p.kind in named}


def parse_settings(items: Iterable[str]) -> dict[str, object]:
    """``key=value`` items (each may hold several, comma-separated) as a dict, later ones winning.

    A value is read as JSON (``16``, ``0.5``, ``true``, ``null``) and otherwise kept as text.
    """
    settings: dict[str, object] = {}
    for item in items:
        for pair in item.split(","):
            if not pair.strip():
                continue
            key, sep, text = pair.partition("=")
            key = key.strip()
            if not sep or not key:
                raise BadSetting(f"expected key=value, got {pair.strip()!r}")
            try:
                settings[key] = json.loads(text)
            except json.JSONDecodeError:
                settings[key] = text.strip()
    return settings


def _checked(cls: type, name: str, key: str, value: object) -> object:
    """``value`` as the type ``cls``'s constructor declares for ``key`` (ints are floats too)."""
    try:
        hint = typing.get_type_hints(cls.__init__).get(key)
    except NameError:  # an annotation that cannot be resolved at run time: the constructor judges
        return value
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return value
    for kind in allowed:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
    if not all(k in (bool, int, float, str, type(None)) for k in allowed):
        return value  # a type this check does not know: the constructor judges it
    expected = " or ".join("null" if k is type(None) else k.__name__ for k in allowed)
    raise BadSetting(f"model {name!r}: setting {key!r} must be {expected}, got {value!r}")


def create(name: str, **params) -> StreamRanker:
    """A fresh model registered as ``name``, built with its defaults overridden by ``params``.

    Each setting is checked first: unknown names and values of the wrong type raise
    :class:`BadSetting`, and so does a value the model itself refuses.
    """
    cls = model_class(name)
    known = settings_of(name)
    for key in params:
        if key not in known:
            listed = ", ".join(known) or "none"
            raise BadSetting(f"model {name!r} has no setting {key!r}; its settings: {listed}")
    params = {key: _checked(cls, name, key, value) for key, value in params.items()}
    try:
        return cls(**params)
    except ValueError as err:
        raise BadSetting(f"model {name!r}: {err}") from None


def load(name: str, path: str | Path) -> StreamRanker:
    """The model registered as ``name``, restored from a file its ``save`` wrote (every model
    saves and loads, :mod:`model.persist`); a file that is not one raises ``ValueError``."""
    return model_class(name).load(path)
