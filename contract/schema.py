"""The wire contract: watch events in JSON, as they travel on the input topic.

One JSON object per Kafka message value (and per line of a ``.jsonl`` file)::

    {"timestamp": 1616963421, "viewer": "UC2nEn-yNA1BtdDNWziphPGA", "video": "WK_Nr4tUtl8",
     "watch_time": 600, "duration": 1200, "event_id": "e-1"}

Rules (an event breaking any of them is dead-lettered with the reason code in brackets):

* the value is a UTF-8 JSON object of at most 64 KiB [``not_json``, ``not_object``, ``too_large``];
* ``timestamp`` (required): Unix seconds as a number, or an ISO-8601 string (``Z`` or an offset;
  no offset means UTC); between 1970 and 2100 [``missing_field``, ``bad_type``, ``bad_value``];
* ``viewer``, ``video`` (required): non-empty strings of at most 256 characters, or integers
  (turned into strings); booleans are not ids [``missing_field``, ``bad_type``, ``bad_value``];
* ``watch_time`` (optional; absent or ``null`` means unknown, learned as a plain positive):
  seconds, finite, ``0 <= watch_time <= 7 days`` [``bad_type``, ``bad_value``];
* ``duration`` (optional): the video's length in seconds, finite, ``0 < duration <= 7 days``;
* ``event_id`` (optional): a string of at most 256 characters;
* other fields are ignored, so producers can add context without breaking consumers (a number
  too large for a double there, ``"x": 1e400``, is still valid JSON: the event is used).

Decoding is msgspec's typed decoder (:class:`_Wire`): one pass over the bytes that builds only
the six fields above, checking their types, ranges and lengths, and skips the rest, at about a
fifth of the cost of building a dict with orjson and checking it in Python (measured in
``bench/e2e.py``'s decode figure). Whatever that fast path does not accept outright is decoded
again by the plain rules below (:func:`_checked`), which name the reason; so the reason codes
come from one place, and the fast path can only say yes to an event the rules accept. A poll
of plain events (number timestamps, string ids) is decoded with the loop in C, each value on
its own (:func:`events_from_json`).

>>> event_from_json(b'{"timestamp": 10, "viewer": 42, "video": "v", "watch_time": 30}')
WatchEvent(timestamp=10.0, viewer='42', video='v', watch_time=30.0, duration=None, event_id=None)
>>> event_from_json(b'{"viewer": "a", "video": "v"}')
Traceback (most recent call last):
...
contract.schema.EventError: missing_field: 'timestamp' is required

"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Annotated

import msgspec
import orjson
from msgspec.structs import astuple

from contract.events import WatchEvent

__all__ = [
    "EventError",
    "check_event",
    "event_from_json",
    "event_to_json",
    "events_from_json",
    "REASONS",
    "MAX_EVENT_BYTES",
]

MAX_EVENT_BYTES = 64 * 1024
MAX_ID_CHARS = 256
MAX_SECONDS = 7 * 24 * 3600
MIN_TIMESTAMP = 0.0
MAX_TIMESTAMP = 4102444800.0  # 2100-01-01T00:00:00Z
#: The integers the JSON parser of :func:`_checked` keeps as integers (beyond them it yields a
#: float, which is not an id): the fast path leaves others to it.
_MIN_INT, _MAX_INT = -(2**63), 2**64 - 1

#: Every reason code an event can be dead-lettered with (the ``reason`` metric label values).
REASONS = ("not_json", "not_object", "too_large", "missing_field", "bad_type", "bad_value")


class EventError(ValueError):
    """Why an event cannot be used: ``reason`` is one of :data:`REASONS`, ``detail`` says more."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _number(body: dict, name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EventError("bad_type", f"{name!r} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise EventError("bad_value", f"{name!r} must be finite")
    return value


def _identifier(body: dict, name: str) -> str:
    if name not in body:
        raise EventError("missing_field", f"{name!r} is required")
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise EventError("bad_type", f"{name!r} must be a string or an integer, got {type(value).__name__}")
    value = value if isinstance(value, str) else str(value)
    if not value or len(value) > MAX_ID_CHARS:
        raise EventError("bad_value", f"{name!r} must have 1 to {MAX_ID_CHARS} characters")
    return value


def _timestamp(body: dict) -> float:
    if "timestamp" not in body:
        raise EventError("missing_field", "'timestamp' is required")
    raw = body["timestamp"]
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            raise EventError("bad_value", "'timestamp' string is not ISO-8601") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        value = parsed.timestamp()
    else:
        value = _number(body, "timestamp")
        if value is None:
            raise EventError("missing_field", "'timestamp' is required")
    if not MIN_TIMESTAMP <= value <= MAX_TIMESTAMP:
        raise EventError("bad_value", "'timestamp' must be between 1970 and 2100 (Unix seconds)")
    return value


def _seconds(body: dict, name: str, allow_zero: bool) -> float | None:
    value = _number(body, name)
    if value is None:
        return None
    if value < 0 or (value == 0 and not allow_zero) or value > MAX_SECONDS:
        low = "0 <=" if allow_zero else "0 <"
        raise EventError("bad_value", f"{name!r} must be {low} seconds <= {MAX_SECONDS}")
    return value


# The rules' ranges and lengths, as msgspec checks them while it decodes (lengths in characters).
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]
_Timestamp = Annotated[float, msgspec.Meta(ge=MIN_TIMESTAMP, le=MAX_TIMESTAMP)]
_WatchTime = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_SECONDS)]
_Duration = Annotated[float, msgspec.Meta(gt=0.0, le=MAX_SECONDS)]
_EventId = Annotated[str, msgspec.Meta(max_length=MAX_ID_CHARS)]


class _Wire(msgspec.Struct, gc=False):
    """The fields of an event as they travel: msgspec checks their JSON types and the rules'
    ranges and lengths while it decodes, all but the range of integer ids, which :func:`_fast`
    checks."""

    timestamp: _Timestamp | str
    viewer: _Id | int
    video: _Id | int
    watch_time: _WatchTime | None = None
    duration: _Duration | None = None
    event_id: _EventId | None = None


_decode_wire = msgspec.json.Decoder(_Wire).decode


class _Plain(msgspec.Struct, gc=False):
    """:class:`_Wire` without the forms that need more than msgspec checks (ISO timestamps,
    integer ids): every field already what :class:`WatchEvent` holds, in its order."""

    timestamp: _Timestamp
    viewer: _Id
    video: _Id
    watch_time: _WatchTime | None = None
    duration: _Duration | None = None
    event_id: _EventId | None = None


if not _Plain.__struct_fields__ == _Wire.__struct_fields__ == WatchEvent._fields:  # read by position below
    raise ImportError("contract.schema: the wire structs' fields must be WatchEvent's, in its order")
_decode_plain = msgspec.json.Decoder(_Plain).decode
_as_event = partial(tuple.__new__, WatchEvent)  # a WatchEvent of a tuple of its fields, in C


def event_from_json(raw: bytes | bytearray | memoryview | str | None) -> WatchEvent:
    """Decode and validate one event; raises :class:`EventError` with a reason code."""
    if raw is None:
        raise EventError("not_json", "empty message (null value)")
    if len(raw) > MAX_EVENT_BYTES:
        raise EventError("too_large", f"{len(raw)} bytes, the limit is {MAX_EVENT_BYTES}")
    event = _fast(raw)
    return event if event is not None else _checked(raw)


def _fast(raw: bytes | bytearray | memoryview | str) -> WatchEvent | None:
    """The event if it is plainly valid, else ``None`` (then :func:`_checked` says why, or accepts
    what this path was too cautious for). It never accepts what the rules refuse."""
    if not isinstance(raw, str):
        if type(raw) is not bytes:
            raw = bytes(raw)
        if not raw.isascii():  # msgspec does not check the UTF-8 of fields it skips
            try:
                raw.decode()
            except UnicodeDecodeError:
                return None
    try:
        wire = _decode_wire(raw)
    except Exception:  # noqa: BLE001 - any refusal (or a RecursionError on deep nesting): the rules decide
        return None
    timestamp, viewer, video = wire.timestamp, wire.viewer, wire.video
    if type(timestamp) is str:
        try:
            parsed = datetime.fromisoformat(timestamp)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            timestamp = parsed.timestamp()
        except (ValueError, OverflowError):
            return None
        if not MIN_TIMESTAMP <= timestamp <= MAX_TIMESTAMP:
            return None
    if type(viewer) is int:  # msgspec keeps integers of any size; the rules' parser does not
        if not _MIN_INT <= viewer <= _MAX_INT:
            return None
        viewer = str(viewer)
    if type(video) is int:
        if not _MIN_INT <= video <= _MAX_INT:
            return None
        video = str(video)
    return WatchEvent(timestamp, viewer, video, wire.watch_time, wire.duration, wire.event_id)


def events_from_json(values: Sequence[bytes | bytearray | memoryview]) -> list[WatchEvent] | None:
    """:func:`event_from_json` of every one of ``values``, when all of them are plain events
    (number timestamps, string ids, ASCII: what streamrec's own producers send); ``None`` when
    any is not (then decode them one by one: each gets its event or its reason).

    Each value is decoded alone, straight into the fields of :class:`WatchEvent` in its order,
    and the loop runs in C: 0.3 us an event instead of 0.6 one by one. (Decoding the values
    joined as the lines of one buffer is no faster, and not safe: msgspec reads a line stream
    as values separated by any whitespace, so a value cut in two and another holding two
    objects would decode as two valid events.)

    >>> one = b'{"timestamp": 1, "viewer": "a", "video": "x"}'
    >>> two = b'{"timestamp": 2, "viewer": "b", "video": "y", "watch_time": 30}'
    >>> [(e.viewer, e.video, e.watch_time) for e in events_from_json([one, two])]
    [('a', 'x', None), ('b', 'y', 30.0)]
    >>> events_from_json([one + b" " + two, b" "]) is None  # two objects in one value, none in the other
    True
    """
    try:
        ascii_only = b"".join(values).isascii()  # refuses None (a tombstone) and str
    except TypeError:
        return None
    if not values or not ascii_only or max(map(len, values)) > MAX_EVENT_BYTES:
        return None
    try:
        return list(map(_as_event, map(astuple, map(_decode_plain, values))))
    except Exception:  # noqa: BLE001 - one value is not plain: each alone says which
        return None


def _checked(raw: bytes | bytearray | memoryview | str) -> WatchEvent:
    """The rules, one by one, on a dict from orjson: the reason for any event :func:`_fast` refused."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise EventError("not_json", str(err).split(":")[0] or "invalid JSON") from None
    if not isinstance(body, dict):
        raise EventError("not_object", f"expected a JSON object, got {type(body).__name__}")
    return _from_body(body)


def check_event(event: WatchEvent) -> WatchEvent:
    """The rules of :func:`event_from_json`, with its reasons, for an event made in Python (a
    file's row, a synthetic event, a command's flags): what the service would dead-letter is
    refused before it is sent. Returns the event as the service reads it.

    >>> check_event(WatchEvent(1616963421, "alice", "v", 600.0)).timestamp
    1616963421.0
    >>> check_event(WatchEvent(1616963421000, "alice", "v"))  # milliseconds, not seconds
    Traceback (most recent call last):
    ...
    contract.schema.EventError: bad_value: 'timestamp' must be between 1970 and 2100 (Unix seconds)
    """
    body = {name: value for name, value in zip(event._fields, event, strict=True) if value is not None}
    for name in ("viewer", "video", "event_id"):
        value = body.get(name)
        if isinstance(value, str) and not value.isascii():
            try:  # a Python string may hold what no UTF-8 message can carry (lone surrogates)
                value.encode()
            except UnicodeEncodeError:
                raise EventError("bad_value", f"{name!r} is not valid UTF-8 text") from None
    return _from_body(body)


def _from_body(body: dict) -> WatchEvent:
    """The rules on the fields of one event (a decoded JSON object, or an event's own)."""
    event_id = body.get("event_id")
    if event_id is not None and (not isinstance(event_id, str) or len(event_id) > MAX_ID_CHARS):
        raise EventError("bad_type", f"'event_id' must be a string of at most {MAX_ID_CHARS} characters")
    return WatchEvent(
        timestamp=_timestamp(body),
        viewer=_identifier(body, "viewer"),
        video=_identifier(body, "video"),
        watch_time=_seconds(body, "watch_time", allow_zero=True),
        duration=_seconds(body, "duration", allow_zero=False),
        event_id=event_id,
    )


def event_to_json(event: WatchEvent) -> bytes:
    """The JSON value of a watch event on the input topic (unknown fields left out)."""
    return orjson.dumps({k: v for k, v in event._asdict().items() if v is not None})
