"""The arms of a live experiment: which model serves which viewers, and what each one learns from.

A service always serves through arms. Without an experiment there is one, ``control``, serving
``--model``. ``--arms control=streamrec,treatment=most_popular`` adds others; the first arm named
is the control. Viewers are split by :class:`consumer.experiment.Assignment` (a stable hash of
viewer id and ``--experiment-salt``, weighted by ``--arm-weights``), so every worker and every
restart puts a viewer in the same arm without sharing anything.

What each arm's model learns from (``--arms-learn-from``):

* ``all`` (the default): every arm learns every event, and is tested (test-then-train HR@10) on
  every event. The arms differ only in the model: this compares **models** on equal data.
* ``own``: an arm learns, and is tested, only on its own viewers' events. Each model then lives
  with the feedback its own lists cause: this compares **feedback loops** (a popularity arm
  that narrows what its viewers watch learns from that narrower stream), at the price of each
  model learning from its share of the stream only.

The online hit rate (the viewer's next watch came from the list we last showed them) is counted
per arm by the viewer's assignment, whichever model made the list: intention to treat, so an
arm that falls back to the control's lists (:class:`Arm` ``healthy``) is charged for it.

>>> specs = parse_arms("control=streamrec,treatment=most_popular", "3,1", ["treatment:window=0"])
>>> [(s.name, s.model, s.weight, s.settings) for s in specs]
[('control', 'streamrec', 3.0, {}), ('treatment', 'most_popular', 1.0, {'window': 0})]
>>> parse_arms("", "", [], default_model="isgd")[0]
ArmSpec(name='control', model='isgd', weight=1.0, settings={})
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from consumer.experiment import Assignment
from contract.events import WatchEvent
from model.base import StreamRanker
from model.evaluate import StreamingEvaluator

__all__ = ["ArmSpec", "Arm", "Arms", "parse_arms", "CONTROL", "LEARN_FROM"]

#: The name of the only arm of a service that runs no experiment.
CONTROL = "control"
#: Values of ``--arms-learn-from``.
LEARN_FROM = ("all", "own")
#: Arm names go into metric labels, file names and messages: keep them plain.
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")


class ArmSpec(NamedTuple):
    """One arm as configured: its name, the registry name of its model, its weight, the model's
    constructor settings."""

    name: str
    model: str
    weight: float
    settings: dict[str, object]


def parse_arms(
    arms: str,
    weights: str,
    settings: Sequence[str],
    default_model: str = "streamrec",
    default_settings: dict[str, object] | None = None,
) -> list[ArmSpec]:
    """The arms of ``--arms NAME=MODEL[,...]``, ``--arm-weights`` (``W,W`` in arm order or
    ``NAME=W,...``; default: equal) and ``--arm-settings NAME:KEY=VALUE`` (repeatable).

    With no ``arms``, one arm ``control`` serving ``default_model`` with ``default_settings``.
    Raises ``ValueError`` naming what is wrong.
    """
    from model import registry

    if not arms.strip():
        if weights.strip() or any(s.strip() for s in settings):
            raise ValueError("--arm-weights and --arm-settings need --arms")
        return [ArmSpec(CONTROL, default_model, 1.0, dict(default_settings or {}))]
    if default_settings:
        raise ValueError("with --arms, give each arm's settings as --arm-settings NAME:KEY=VALUE")
    pairs: list[tuple[str, str]] = []
    for item in arms.split(","):
        name, sep, model = (part.strip() for part in item.partition("="))
        if not sep or not name or not model:
            raise ValueError(f"--arms: {item.strip()!r} is not NAME=MODEL")
        if not _NAME.match(name):
            raise ValueError(f"--arms: arm name {name!r}: a letter, then letters, digits, '_' or '-'")
        if model not in registry.names():
            raise ValueError(f"--arms: unknown model {model!r}; choose one of {', '.join(registry.names())}")
        if name in (n for n, _ in pairs):
            raise ValueError(f"--arms: arm {name!r} named twice")
        pairs.append((name, model))
    names = [n for n, _ in pairs]
    weight_of = _weights(weights, names)
    per_arm: dict[str, list[str]] = {n: [] for n in names}
    for item in settings:
        if not item.strip():
            continue
        name, sep, setting = item.partition(":")
        if not sep or name.strip() not in per_arm:
            raise ValueError(f"--arm-settings: {item!r} is not ARM:KEY=VALUE for an arm of --arms")
        per_arm[name.strip()].append(setting)
    return [
        ArmSpec(name, model, weight_of[name], registry.parse_settings(per_arm[name])) for name, model in pairs
    ]


def _weights(text: str, names: list[str]) -> dict[str, float]:
    if not text.strip():
        return dict.fromkeys(names, 1.0)
    items = [t.strip() for t in text.split(",")]
    try:
        if all("=" in t for t in items):
            given = {k.strip(): float(v) for k, _, v in (t.partition("=") for t in items)}
        elif len(items) == len(names):
            given = dict(zip(names, map(float, items), strict=True))
        else:
            raise ValueError(f"{len(items)} weights for {len(names)} arms")
    except ValueError as err:
        raise ValueError(f"--arm-weights {text!r}: {err}") from None
    if set(given) != set(names):
        raise ValueError(f"--arm-weights names {sorted(given)}, the arms are {names}")
    if not all(w > 0 and w < float("inf") for w in given.values()):
        raise ValueError(f"--arm-weights {text!r}: every weight must be positive and finite")
    return given


@dataclass(eq=False)
class Arm:
    """One arm on this worker: its model, how to make a fresh one, and its test-then-train
    evaluator. ``healthy`` is false once its model raised: from then until a restart its
    viewers get the control's lists and it learns nothing (its state is no longer trusted); when
    arms learn from their own viewers, the control learns theirs from then on."""

    spec: ArmSpec
    factory: Callable[[], StreamRanker]
    model: StreamRanker
    evaluator: StreamingEvaluator
    is_control: bool
    healthy: bool = True
    #: The model's guard trips when last looked at: an increase means a batch it refused.
    guard_seen: int = 0
    #: Why this arm's viewers got the control's lists, since the start: reason -> events.
    fallbacks: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def file(self) -> str:
        """Its model's file in a checkpoint: the control's is the served model's ``model.npz``,
        so starting or stopping an experiment keeps what the served model learned."""
        return "model.npz" if self.is_control else f"arm-{self.name}.npz"


class Arms:
    """Every arm of this worker and the viewers' assignment to them; the control first.

    >>> from model.registry import create
    >>> specs = parse_arms("control=most_popular,treatment=most_popular", "", [])
    >>> arms = Arms(specs, lambda spec: (lambda: create(spec.model)), salt="exp", n=10)
    >>> [a.name for a in arms], arms.control.name
    (['control', 'treatment'], 'control')
    >>> arms.arm_of("alice") is arms.arm_of("alice")
    True
    """

    def __init__(
        self,
        specs: Sequence[ArmSpec],
        factory_of: Callable[[ArmSpec], Callable[[], StreamRanker]],
        *,
        salt: str = "streamrec",
        learn_from: str = "all",
        n: int = 10,
    ) -> None:
        if learn_from not in LEARN_FROM:
            raise ValueError(f"learn_from must be one of {LEARN_FROM}, got {learn_from!r}")
        self.learn_from = learn_from
        self.salt = salt
        self.n = n
        self.arms: list[Arm] = []
        for i, spec in enumerate(specs):
            factory = factory_of(spec)
            model = factory()
            # Coverage is measured on the published lists (consumer.metrics), not again here.
            evaluator = StreamingEvaluator(model.name, n=n, id_ttl=model.viewer_ttl, coverage=False)
            self.arms.append(Arm(spec, factory, model, evaluator, is_control=i == 0))
        self.control = self.arms[0]
        total = sum(a.spec.weight for a in self.arms)
        #: Each arm's share of the viewers.
        self.shares = {a.name: a.spec.weight / total for a in self.arms}
        self.assignment = Assignment({a.name: a.spec.weight for a in self.arms}, salt=salt)
        self._by_name = {a.name: a for a in self.arms}

    def __iter__(self):
        return iter(self.arms)

    def learning_order(self) -> list[Arm]:
        """The arms in the order they learn a batch: the control last, so that when arms learn
        from their own viewers, an arm that fails on the batch hands that very batch's events
        of its viewers to the control (:meth:`learns`), not only the next batch's."""
        return [*self.arms[1:], self.arms[0]]

    def __len__(self) -> int:
        return len(self.arms)

    @property
    def experiment(self) -> bool:
        """Whether more than one arm serves (otherwise every viewer is the control's)."""
        return len(self.arms) > 1

    def arm_of(self, viewer: str) -> Arm:
        if len(self.arms) == 1:
            return self.control
        return self._by_name[self.assignment.arm_of(viewer)]

    def split(self, events: Sequence[WatchEvent]) -> dict[str, list[int]]:
        """The positions of each arm's viewers' events in ``events``."""
        if len(self.arms) == 1:
            return {self.control.name: list(range(len(events)))}
        out: dict[str, list[int]] = {a.name: [] for a in self.arms}
        arm_of = self.assignment.arm_of
        for i, e in enumerate(events):
            out[arm_of(e.viewer)].append(i)
        return out

    def learns(
        self, arm: Arm, events: Sequence[WatchEvent], split: dict[str, list[int]]
    ) -> Sequence[WatchEvent]:
        """The events ``arm`` learns from (and is tested on) in this batch (``events`` itself
        when it learns them all: no copy on the hot path)."""
        if not arm.healthy:
            return []
        if self.learn_from == "all" or len(self.arms) == 1:
            return events
        failed = [a.name for a in self.arms if not a.healthy] if arm is self.control else []
        if failed:  # the control serves the viewers of arms that failed: it learns their watches too
            return [events[i] for i in sorted(i for name in (arm.name, *failed) for i in split[name])]
        return [events[i] for i in split[arm.name]]

    def fresh(self) -> None:
        """Every arm's model made anew (before a checkpoint is read back; the live quality counts on)."""
        for arm in self.arms:
            arm.model = arm.factory()
            arm.healthy, arm.guard_seen = True, 0

    def describe(self) -> dict[str, object]:
        """The experiment for a log line."""
        return {
            "arms": {a.name: a.spec.model for a in self.arms},
            "shares": {k: round(v, 4) for k, v in self.shares.items()},
            "salt": self.salt,
            "learn_from": self.learn_from,
        }
