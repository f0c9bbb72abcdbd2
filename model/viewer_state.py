"""One viewer's state as bytes, by video id: what a partition's new owner needs to go on serving
the viewer (issue 12's handover; the changelog that carries it is :mod:`consumer.changelog`).

A model keeps a viewer as rows (their history ring, their seen list), and rows differ between
workers, so the state travels by **video id**: the recent history (most recent first, ``""`` in
an empty slot) with the weight of each watch, every video the viewer watched (in order, the
causal exclusion list), and when the viewer was last seen (event time, for expiry). Encoded with
msgspec's MessagePack (the project's codec for compact records), the weights as float32 bytes.
The first field is the format, so a state written by another version is refused, not misread.

>>> state = ViewerState(FORMAT, 12.5, ["b", "a", ""], np.array([1, 0.5, 0], np.float32).tobytes(), ["a", "b"])
>>> back = decode(encode(state))
>>> back.history, back.seen, back.history_weights().tolist()
(['b', 'a', ''], ['a', 'b'], [1.0, 0.5, 0.0])
>>> decode(encode(ViewerState(FORMAT + 1, 0.0, [], b"", [])))
Traceback (most recent call last):
...
ValueError: viewer state of format 2, this version reads format 1
"""

from __future__ import annotations

import msgspec
import numpy as np

__all__ = ["ViewerState", "FORMAT", "encode", "decode", "rewound"]

#: The format of :class:`ViewerState`: bumped when its fields change shape or meaning.
FORMAT = 1


class ViewerState(msgspec.Struct, array_like=True):
    """One viewer's state, by video id (see the module)."""

    format: int
    #: Event time the viewer was last seen (NaN when the model does not keep it).
    last_seen: float
    #: The recent history, most recent first; ``""`` in an empty slot.
    history: list[str]
    #: float32 weight of each history slot, as bytes.
    weights: bytes
    #: Every video the viewer watched, in order (repeats kept).
    seen: list[str]

    def history_weights(self) -> np.ndarray:
        return np.frombuffer(self.weights, dtype=np.float32)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ViewerState)


def encode(state: ViewerState) -> bytes:
    return _encoder.encode(state)


def decode(data: bytes) -> ViewerState:
    """The state :func:`encode` wrote; ``ValueError`` for anything else, or another format."""
    try:
        state = _decoder.decode(data)
    except msgspec.DecodeError as err:
        raise ValueError(f"not a viewer state: {err}") from None
    if state.format != FORMAT:
        raise ValueError(f"viewer state of format {state.format}, this version reads format {FORMAT}")
    if len(state.weights) != 4 * len(state.history):
        raise ValueError("viewer state's history and weights differ in length")
    return state


def rewound(state: ViewerState, videos: list[str]) -> ViewerState | None:
    """``state`` before its last watches, ``videos`` (oldest first), or ``None`` when those are not
    its last watches (a model that skipped or merged some): a new owner that relearns events
    the previous one learned but never sent to its peers replays them from this state.

    The seen list loses its tail; the history its most recent slots, the older ones moving up
    and the slots at the end left empty: watches older than the history keeps are not known
    here, so the replay's first events see a shorter history than the first learning did.

    >>> weights = np.array([1, 1, 0.5], np.float32).tobytes()
    >>> state = ViewerState(FORMAT, 9.0, ["c", "b", "a"], weights, ["a", "b", "c"])
    >>> back = rewound(state, ["b", "c"])
    >>> back.history, back.history_weights().tolist(), back.seen
    (['a', '', ''], [0.5, 0.0, 0.0], ['a'])
    >>> rewound(state, ["a", "c"]) is None  # "a" is not the watch before "c"
    True
    """
    watches = len(videos)
    if watches == 0:
        return state
    if watches > len(state.seen) or state.seen[-watches:] != videos:
        return None
    slots = len(state.history)
    recent = list(reversed(videos))[:slots]
    if state.history[: len(recent)] != recent:
        return None
    kept, empty = state.history[watches:], min(watches, slots)  # the older slots move up
    weights = np.concatenate([state.history_weights()[watches:], np.zeros(empty, np.float32)])
    return ViewerState(
        state.format, state.last_seen, kept + [""] * empty, weights.tobytes(), state.seen[:-watches]
    )
