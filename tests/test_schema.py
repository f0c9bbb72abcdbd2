"""The wire contract: what a watch event may look like, and what happens to anything else.

Every input either decodes to a valid event or raises :class:`EventError` with a reason code
(which the service turns into a dead letter); nothing else may escape, and no accepted event
carries a non-finite number into the model.
"""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.events import WatchEvent
from contract.schema import MAX_EVENT_BYTES, REASONS, EventError, check_event, event_from_json, event_to_json


def decode_or_reason(raw) -> WatchEvent | str:
    try:
        return event_from_json(raw)
    except EventError as err:
        assert err.reason in REASONS
        assert err.detail
        return err.reason


def assert_usable(event: WatchEvent) -> None:
    assert isinstance(event.viewer, str) and 0 < len(event.viewer) <= 256
    assert isinstance(event.video, str) and 0 < len(event.video) <= 256
    assert math.isfinite(event.timestamp) and 0 <= event.timestamp <= 4102444800
    for value in (event.watch_time, event.duration):
        assert value is None or (math.isfinite(value) and value >= 0)


def test_the_documented_example_decodes():
    event = event_from_json(
        b'{"timestamp": 1616963421, "viewer": "UC2nEn-yNA1BtdDNWziphPGA", "video": "WK_Nr4tUtl8", '
        b'"watch_time": 600, "duration": 1200, "event_id": "e1", "extra": {"ignored": true}}'
    )
    assert event == WatchEvent(1616963421.0, "UC2nEn-yNA1BtdDNWziphPGA", "WK_Nr4tUtl8", 600.0, 1200.0, "e1")


def test_round_trip_through_the_encoder():
    event = WatchEvent(12.5, "viewer", "video", None, 30.0)
    assert event_from_json(event_to_json(event)) == event


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"2021-03-28T20:30:21Z"', 1616963421.0),
        ('"2021-03-28T22:30:21+02:00"', 1616963421.0),
        ('"2021-03-28T20:30:21"', 1616963421.0),  # no offset: UTC
    ],
)
def test_iso_8601_timestamps(value, expected):
    event = event_from_json(f'{{"timestamp": {value}, "viewer": 7, "video": 8}}'.encode())
    assert event.timestamp == expected
    assert (event.viewer, event.video) == ("7", "8")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "not_json"),
        (None, "not_json"),
        (b"\xff\xfe\x00", "not_json"),
        (b'{"timestamp": NaN, "viewer": "a", "video": "b"}', "not_json"),
        (b'{"timestamp": Infinity, "viewer": "a", "video": "b"}', "not_json"),
        (b"[1, 2]", "not_object"),
        (b'"just a string"', "not_object"),
        (b'{"viewer": "a", "video": "b"}', "missing_field"),
        (b'{"timestamp": 1, "video": "b"}', "missing_field"),
        (b'{"timestamp": 1, "viewer": "a"}', "missing_field"),
        (b'{"timestamp": 1, "viewer": true, "video": "b"}', "bad_type"),
        (b'{"timestamp": 1, "viewer": 1.5, "video": "b"}', "bad_type"),
        (b'{"timestamp": "yesterday", "viewer": "a", "video": "b"}', "bad_value"),
        (b'{"timestamp": -5, "viewer": "a", "video": "b"}', "bad_value"),
        (b'{"timestamp": 99999999999, "viewer": "a", "video": "b"}', "bad_value"),
        (b'{"timestamp": 1e400, "viewer": "a", "video": "b"}', "not_json"),  # overflows a double
        (b'{"timestamp": 1, "viewer": "", "video": "b"}', "bad_value"),
        (b'{"timestamp": 1, "viewer": "a", "video": "b", "watch_time": -1}', "bad_value"),
        (b'{"timestamp": 1, "viewer": "a", "video": "b", "watch_time": 1e12}', "bad_value"),
        (b'{"timestamp": 1, "viewer": "a", "video": "b", "watch_time": "600"}', "bad_type"),
        (b'{"timestamp": 1, "viewer": "a", "video": "b", "duration": 0}', "bad_value"),
        (b'{"timestamp": 1, "viewer": "a", "video": "b", "event_id": 5}', "bad_type"),
    ],
)
def test_bad_events_get_a_reason(raw, reason):
    assert decode_or_reason(raw) == reason


def test_huge_messages_are_refused_before_parsing():
    raw = b'{"timestamp": 1, "viewer": "a", "video": "' + b"x" * MAX_EVENT_BYTES + b'"}'
    assert decode_or_reason(raw) == "too_large"


def test_huge_ids_and_numbers():
    assert decode_or_reason(orjson.dumps({"timestamp": 1, "viewer": "v" * 257, "video": "b"})) == "bad_value"
    # Beyond 64 bits the JSON parser yields a float, which is not an id.
    assert decode_or_reason(b'{"timestamp": 1, "viewer": 123456789012345678901234567890, "video": "b"}') == (
        "bad_type"
    )


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_get_a_reason(raw):
    result = decode_or_reason(raw)
    if isinstance(result, WatchEvent):
        assert_usable(result)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "timestamp": json_values | st.floats() | st.datetimes().map(lambda d: d.isoformat()),
            "viewer": json_values,
            "video": json_values,
            "watch_time": json_values | st.floats(),
            "duration": json_values | st.floats(),
            "event_id": json_values,
            "other": json_values,
        },
    )
)
def test_any_json_object_decodes_or_gets_a_reason(body):
    try:
        raw = orjson.dumps(body)
    except (orjson.JSONEncodeError, TypeError):
        return  # not representable as JSON (e.g. an int beyond 64 bits): nothing to send
    result = decode_or_reason(raw)
    if isinstance(result, WatchEvent):
        assert_usable(result)
        assert result.viewer == str(body["viewer"])


# -- the service's intake: every record decodes or becomes a dead letter ----------------------


def test_a_record_that_breaks_the_decoder_is_dead_lettered_not_fatal(monkeypatch):
    """A bug in validation must not crash the service on the same offset forever."""
    from kafka.consumer.fetcher import ConsumerRecord

    import consumer.intake as intake

    def record(offset: int, value: bytes) -> ConsumerRecord:
        return ConsumerRecord("t", 0, 0, offset, 1000, 0, b"k", value, [], None, 1, len(value), -1)

    real = intake.event_from_json

    def buggy(raw):
        if b"poison" in raw:
            raise KeyError("a bug")
        return real(raw)

    monkeypatch.setattr(intake, "event_from_json", buggy)
    good = b'{"timestamp": 1, "viewer": "a", "video": "v"}'
    batch = intake.decode([record(0, good), record(1, b'{"poison": 1}'), record(2, b"oops"), record(3, good)])
    assert [o[1] for o in batch.origins] == [0, 3]
    assert [(d.offset, d.reason) for d in batch.dead] == [(1, "decode_error"), (2, "not_json")]
    assert batch.dead[0].value == b'{"poison": 1}' and "KeyError" in batch.dead[0].detail


def verdict(check, event: WatchEvent) -> WatchEvent | str:
    try:
        return check(event)
    except EventError as err:
        return err.reason


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=400, deadline=None)
@given(
    timestamp=st.one_of(finite, st.sampled_from([0.0, 4102444800.0, 4102444800.5, -1e-9, 1.7e12])),
    viewer=st.one_of(st.text(max_size=300), st.sampled_from(["", "v" * 256, "v" * 257])),
    video=st.text(min_size=0, max_size=5),
    watch_time=st.one_of(st.none(), finite, st.sampled_from([0.0, 604800.0, 604800.1])),
    duration=st.one_of(st.none(), finite, st.sampled_from([0.0, 1e-9, 604800.0])),
    event_id=st.one_of(st.none(), st.text(max_size=300)),
)
def test_an_event_made_in_python_is_held_to_the_wire_rules(
    timestamp, viewer, video, watch_time, duration, event_id
):
    """``check_event`` (files, synthetic streams, flags) says what the service would say of the
    same event sent as JSON: the same event back, or the same reason."""
    event = WatchEvent(timestamp, viewer, video, watch_time, duration, event_id)
    try:
        raw = event_to_json(event)
    except TypeError:  # a lone surrogate: no UTF-8 message can carry it
        assert verdict(check_event, event) == "bad_value"
        return
    assert verdict(check_event, event) == verdict(lambda e: event_from_json(raw), event)
