"""A seeded corpus of hostile watch-event records, each labelled valid or invalid *by construction*.

The labels come from the documented wire rules (:mod:`contract.schema`), not from running the
decoder, so a test that compares them with what the service did checks the decoder too. Most
records break a rule (malformed JSON, wrong types, missing fields, huge strings and numbers,
NaN/Infinity, absurd watch times, timestamps outside 1970..2100, non-UTF-8 bytes, empty and
null values, enormous messages up to the broker's limit, deep nesting). Some are odd but
valid by a documented rule (integer ids, extra fields, ISO-8601 timestamps, ids of exactly
256 characters, ``watch_time`` of 0, null or exactly 7 days, Unicode and control characters
in ids), because a decoder that rejects those drops valid events.

A plain seeded generator rather than hypothesis: the live test needs one fixed corpus sent
through a real broker, not many shrinking examples (hypothesis fuzzes the decoder itself in
``tests/test_schema.py``).

>>> import random
>>> corpus = hostile_corpus(random.Random(1), 200)
>>> len(corpus), sum(r.valid for r in corpus) > 0, sum(not r.valid for r in corpus) > 100
(200, True, True)
>>> corpus == hostile_corpus(random.Random(1), 200)
True

"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import orjson

__all__ = ["HostileRecord", "hostile_corpus", "NULL_VALUE", "BROKER_MAX_MESSAGE_BYTES"]

#: The broker's default ``message.max.bytes``: the largest record batch it accepts.
BROKER_MAX_MESSAGE_BYTES = 1_048_588
#: Above the service's limit (64 KiB) but still accepted by the broker.
_LARGE_SIZES = (65_537, 200_000, 900_000)
#: A value at the broker's limit: the batch header (61 bytes), record framing and key fill the rest.
NEAR_MAX_VALUE_BYTES = BROKER_MAX_MESSAGE_BYTES - 200

#: Marker for a record whose value is null (a tombstone); see ``tests.service_helpers.produce``.
NULL_VALUE = None

T0 = 1_700_000_000  # a plausible timestamp (2023-11-14)


@dataclass(frozen=True)
class HostileRecord:
    """One input record: its key, its value (``None``: null), whether the rules accept it, and why."""

    key: bytes | None
    value: bytes | None
    valid: bool
    kind: str


def _event(rng: random.Random, **override) -> dict:
    body = {
        "timestamp": T0 + rng.randrange(10**6),
        "viewer": f"hv{rng.randrange(50)}",
        "video": f"hm{rng.randrange(80)}",
        "watch_time": rng.randrange(1, 3600),
    }
    body.update(override)
    return {k: v for k, v in body.items() if v is not _DROP}


_DROP = object()


def _dumps(body: object) -> bytes:
    return orjson.dumps(body)


# -- invalid records: (kind, maker) -------------------------------------------------------------


def _malformed(rng: random.Random) -> bytes:
    good = _dumps(_event(rng))
    choice = rng.randrange(6)
    if choice == 0:
        return good[: rng.randrange(1, len(good) - 1)]  # truncated
    if choice == 1:
        return good.replace(b'"', b"'")  # single quotes
    if choice == 2:
        return good[:-1] + b",}"  # trailing comma
    if choice == 3:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))  # noise
    if choice == 4:
        return b"{" * rng.randrange(1, 50)
    return good + b" trailing"


def _not_object(rng: random.Random) -> bytes:
    return rng.choice(
        [b"[1, 2, 3]", b"42", b'"a string"', b"null", b"true", b"[]", b"3.5e3", _dumps([_event(rng)])]
    )


def _missing(rng: random.Random) -> bytes:
    field = rng.choice(["timestamp", "viewer", "video"])
    return _dumps(_event(rng, **{field: _DROP}))


def _wrong_type(rng: random.Random) -> bytes:
    field, value = rng.choice(
        [
            ("timestamp", [T0]),
            ("timestamp", {"s": T0}),
            ("timestamp", True),
            ("timestamp", None),
            ("viewer", 1.5),
            ("viewer", True),
            ("viewer", None),
            ("viewer", ["a"]),
            ("video", {"id": "x"}),
            ("video", False),
            ("watch_time", "600"),
            ("watch_time", True),
            ("watch_time", [1]),
            ("duration", "long"),
            ("event_id", 12345),
            ("event_id", ["e"]),
        ]
    )
    return _dumps(_event(rng, **{field: value}))


def _with_literal(rng: random.Random, field: str, literal: bytes) -> bytes:
    """An event whose ``field`` holds ``literal`` as written (JSON that orjson would not write)."""
    body = _dumps(_event(rng, **{field: 7}))
    return body.replace(b'"%s":7' % field.encode(), b'"%s":%s' % (field.encode(), literal))


def _bad_value(rng: random.Random) -> bytes:
    if rng.random() < 0.1:  # integers beyond 64 bits: too long for an id, absurd as seconds
        field = rng.choice(["viewer", "watch_time", "timestamp"])
        return _with_literal(rng, field, b"9" * rng.randrange(300, 400))
    field, value = rng.choice(
        [
            ("viewer", ""),
            ("video", ""),
            ("viewer", "v" * rng.randrange(257, 5000)),
            ("video", "é" * 257),
            ("event_id", "e" * 257),
            ("watch_time", -1),
            ("watch_time", -1e9),
            ("watch_time", 7 * 24 * 3600 + 1),
            ("watch_time", 1e300),
            ("duration", 0),
            ("duration", -5),
            ("duration", 1e12),
            ("timestamp", -1),
            ("timestamp", 4_102_444_801),
            ("timestamp", 1e300),
            ("timestamp", "9999-12-31T00:00:00"),
            ("timestamp", "0001-01-01T00:00:00Z"),
            ("timestamp", "yesterday"),
            ("timestamp", ""),
        ]
    )
    return _dumps(_event(rng, **{field: value}))


def _non_finite(rng: random.Random) -> bytes:
    field = rng.choice(["timestamp", "watch_time", "duration"])
    literal = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400"])
    return _with_literal(rng, field, literal)


def _non_utf8(rng: random.Random) -> bytes:
    body = _dumps(_event(rng, viewer="VIEWER"))
    bad = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"])
    return body.replace(b"VIEWER", b"v" + bad) if rng.random() < 0.7 else b"\xff\xfe" + body


def _empty(rng: random.Random) -> bytes | None:
    return rng.choice([b"", b" ", b"\n", NULL_VALUE])


def _nested(rng: random.Random) -> bytes:
    depth = rng.randrange(1025, 20_000)  # orjson's limit is 1024 levels
    return b'{"timestamp": 1, "viewer": "a", "video": "b", "x": ' + b"[" * depth + b"]" * depth + b"}"


INVALID: list[tuple[str, Callable[[random.Random], bytes | None], float]] = [
    ("malformed_json", _malformed, 3),
    ("not_object", _not_object, 1),
    ("missing_field", _missing, 2),
    ("wrong_type", _wrong_type, 3),
    ("bad_value", _bad_value, 4),
    ("non_finite", _non_finite, 2),
    ("non_utf8", _non_utf8, 2),
    ("empty", _empty, 1),
    ("nested", _nested, 0.05),
]


# -- odd but valid records --------------------------------------------------------------------


def _odd_valid(rng: random.Random) -> bytes:
    choice = rng.randrange(10)
    if choice == 0:
        return _dumps(_event(rng, viewer=rng.randrange(-(2**62), 2**62), video=rng.randrange(10**6)))
    if choice == 1:
        return _dumps(_event(rng, context={"page": "home", "n": [1, 2, {"deep": None}]}, extra="x" * 1000))
    if choice == 2:
        return _dumps(
            _event(rng, timestamp=rng.choice(["2024-03-01T12:00:00Z", "2024-03-01T12:00:00+05:30"]))
        )
    if choice == 3:
        return _dumps(_event(rng, viewer="w" * 256, video="ü" * 256))
    if choice == 4:
        return _dumps(_event(rng, watch_time=rng.choice([0, None, 7 * 24 * 3600, 0.001])))
    if choice == 5:
        return _dumps(_event(rng, viewer=rng.choice(["😀 viewer", "עברית", "a\u0000b", "tab\there", " "])))
    if choice == 6:
        return _dumps(_event(rng, timestamp=rng.choice([0, 4_102_444_800, 1.5e9 + 0.25])))
    if choice == 7:
        return _dumps(_event(rng, duration=rng.choice([1, 7 * 24 * 3600]), event_id="e" * 256))
    if choice == 8:  # big but under the service's 64 KiB limit
        return _dumps(_event(rng, padding="p" * 60_000))
    return _dumps(_event(rng, watch_time=None, duration=None, event_id=None))


def _enormous(rng: random.Random, size: int) -> bytes:
    """A ``size``-byte value: JSON-looking garbage or one huge id (both over the service's limit)."""
    if rng.random() < 0.5:
        head = b'{"timestamp": 1700000000, "viewer": "'
        return head + b"x" * (size - len(head) - 2) + b'"}'
    return bytes(rng.randrange(256) for _ in range(64)) * (size // 64) + b"\x00" * (size % 64)


def hostile_corpus(rng: random.Random, n: int, valid_share: float = 0.15) -> list[HostileRecord]:
    """``n`` hostile records, about ``valid_share`` of them odd-but-valid; at least a few enormous.

    Enormous records (over the service's 64 KiB limit, up to the broker's own limit) and
    enormous keys come first so that even a short corpus has them; the rest are drawn by the
    weights in :data:`INVALID`.
    """
    records: list[HostileRecord] = []
    if n >= 100:
        for size in (*_LARGE_SIZES, NEAR_MAX_VALUE_BYTES):
            records.append(HostileRecord(b"huge", _enormous(rng, size), False, f"enormous_{size}"))
        # An enormous key: with an unusable value it is dead-lettered; with a usable one, learned.
        key = b"k" * (NEAR_MAX_VALUE_BYTES - 200)
        records.append(HostileRecord(key, b"{oops", False, "enormous_key"))
        records.append(HostileRecord(key, _dumps(_event(rng)), True, "enormous_key"))
    kinds = [k for k, _, _ in INVALID]
    makers = {k: m for k, m, _ in INVALID}
    weights = [w for _, _, w in INVALID]
    while len(records) < n:
        if rng.random() < valid_share:
            records.append(HostileRecord(b"odd", _odd_valid(rng), True, "odd_valid"))
            continue
        kind = rng.choices(kinds, weights)[0]
        key = rng.choice([b"bad", None, b"", b"\xff\xfe"])
        records.append(HostileRecord(key, makers[kind](rng), False, kind))
    rng.shuffle(records)
    return records
