"""Small state parts a model lists beside its tables (:mod:`model.persist`).

:class:`Counters` saves named scalar attributes of an object (totals such as events learned,
running sums) and :class:`RandomState` the state of a numpy random generator, each as one JSON
array; :class:`FixedArrays` saves arrays whose shape the settings fix (a learned weight and its
optimiser state). Each is restored in place, into the very objects the model holds.

>>> import numpy as np
>>> rng = np.random.default_rng(7); saved = RandomState(rng).to_arrays(); first = rng.random()
>>> RandomState(rng).load_arrays(saved); rng.random() == first
True
"""

from __future__ import annotations

import math

import numpy as np

from model.persist import from_json_array, json_array

__all__ = ["Counters", "RandomState", "FixedArrays"]


class Counters:
    """Named scalar attributes of ``owner`` as a part, saved under ``values``.

    Each attribute keeps its type when loaded (an int stays an int, a float stays a finite
    float); a missing, extra or ill-typed value raises ``ValueError``.

    >>> class Totals: pass
    >>> a = Totals(); a.events, a.loss = 3, 0.5
    >>> b = Totals(); b.events, b.loss = 0, 0.0
    >>> Counters(b, ("events", "loss")).load_arrays(Counters(a, ("events", "loss")).to_arrays())
    >>> b.events, b.loss
    (3, 0.5)
    """

    def __init__(self, owner: object, names: tuple[str, ...]) -> None:
        self.owner = owner
        self.names = names

    def to_arrays(self) -> dict[str, np.ndarray]:
        values = {name: getattr(self.owner, name) for name in self.names}
        return {"values": json_array({k: int(v) if _is_int(v) else float(v) for k, v in values.items()})}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        values = from_json_array(arrays["values"])
        if not isinstance(values, dict) or set(values) != set(self.names):
            raise ValueError(f"counters must be exactly {', '.join(self.names)}")
        loaded = {}
        for name in self.names:
            value = values[name]
            if _is_int(getattr(self.owner, name)):
                if not _is_int(value):
                    raise ValueError(f"counter {name} must be an integer, got {value!r}")
                loaded[name] = int(value)
            else:
                if not (
                    isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
                ):
                    raise ValueError(f"counter {name} must be a finite number, got {value!r}")
                loaded[name] = float(value)
        for name, value in loaded.items():
            setattr(self.owner, name, value)


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


class RandomState:
    """The state of ``generator`` (a :class:`numpy.random.Generator`) as a part, under ``state``."""

    def __init__(self, generator: np.random.Generator) -> None:
        self.generator = generator

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"state": json_array(self.generator.bit_generator.state)}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        state = from_json_array(arrays["state"])
        expected = type(self.generator.bit_generator).__name__
        if not isinstance(state, dict) or state.get("bit_generator") != expected:
            raise ValueError(f"random state is not a {expected} state")
        self.generator.bit_generator.state = state


class FixedArrays:
    """Arrays of a shape the settings fix, by name, as a part: each must come back with its
    shape and dtype, finite, and is written into the array the model holds.

    >>> weight = np.ones(1, dtype=np.float32)
    >>> FixedArrays(weight=weight).load_arrays({"weight": np.array([0.5], dtype=np.float32)}); weight
    array([0.5], dtype=float32)
    """

    def __init__(self, **arrays: np.ndarray) -> None:
        self.arrays = arrays

    def to_arrays(self) -> dict[str, np.ndarray]:
        return dict(self.arrays)

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        for name, target in self.arrays.items():
            value = arrays[name]
            if value.shape != target.shape or value.dtype != target.dtype:
                raise ValueError(
                    f"{name} is {value.dtype} {value.shape}, expected {target.dtype} {target.shape}"
                )
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise ValueError(f"{name} holds non-finite numbers")
        for name, target in self.arrays.items():
            target[...] = arrays[name]
