"""Small state parts a model lists beside its tables (:mod:`model.persist`): scalars and the RNG.

:class:`Counters` saves named scalar attributes of an object (totals such as events learned,
running sums), :class:`RandomState` the state of a numpy random generator, each as one JSON
array, restored in place into the same object.

>>> import numpy as np
>>> rng = np.random.default_rng(7); saved = RandomState(rng).to_arrays(); first = rng.random()
>>> RandomState(rng).load_arrays(saved); rng.random() == first
True
"""

from __future__ import annotations

import math

import numpy as np

from model.persist import from_json_array, json_array

__all__ = ["Counters", "RandomState"]


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
        return {"values": json_array({name: getattr(self.owner, name) for name in self.names})}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        values = from_json_array(arrays["values"])
        if not isinstance(values, dict) or set(values) != set(self.names):
            raise ValueError(f"counters must be exactly {', '.join(self.names)}")
        loaded = {}
        for name in self.names:
            value, kind = values[name], type(getattr(self.owner, name))
            if kind is int and not (isinstance(value, int) and not isinstance(value, bool)):
                raise ValueError(f"counter {name} must be an integer, got {value!r}")
            if kind is float and not (isinstance(value, int | float) and math.isfinite(value)):
                raise ValueError(f"counter {name} must be a finite number, got {value!r}")
            loaded[name] = kind(value)
        for name, value in loaded.items():
            setattr(self.owner, name, value)


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
