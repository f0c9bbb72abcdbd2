"""The msgspec fast path of the decoder agrees with the rules it stands in for.

``contract.schema.event_from_json`` decodes with msgspec first (``_fast``) and hands anything it
does not accept outright to the plain rules (``_checked``), which name the reason. The promise
that keeps one validator: the fast path never accepts an event the rules refuse, and what it
accepts is the same event. Checked here on the hostile corpus and on fuzzed input.
"""

from __future__ import annotations

import random

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.schema import EventError, _checked, _fast, event_from_json
from tests.hostile import hostile_corpus


def rules(raw):
    try:
        return _checked(raw)
    except EventError as err:
        return err.reason


def agrees(raw) -> None:
    fast = _fast(raw)
    if fast is not None:
        assert rules(raw) == fast, raw[:200]


def test_the_fast_path_accepts_only_what_the_rules_accept_on_the_hostile_corpus():
    corpus = hostile_corpus(random.Random(5), 3000)
    accepted = 0
    for record in corpus:
        if record.value is None or len(record.value) > 64 * 1024:
            continue
        agrees(record.value)
        accepted += _fast(record.value) is not None
    assert accepted > 300, "the fast path should take the valid events itself"


def test_valid_events_of_every_documented_shape_take_the_fast_path():
    for raw in [
        b'{"timestamp": 1616963421, "viewer": "UC2n", "video": "WK_N", "watch_time": 600, "duration": 1200}',
        b'{"timestamp": "2021-03-28T22:30:21+02:00", "viewer": 7, "video": 8, "event_id": "e1"}',
        b'{"timestamp": 0, "viewer": "a", "video": "b", "watch_time": null, "extra": {"n": [1, 2]}}',
        '{"timestamp": 1, "viewer": "\u00fc\u00fc", "video": "b"}'.encode(),
    ]:
        assert _fast(raw) is not None, raw
        assert _fast(raw) == _checked(raw)


def test_refusals_keep_the_reason_of_the_rules():
    cases = {
        b'{"timestamp": 1, "viewer": 123456789012345678901234567890, "video": "b"}': "bad_type",
        b'{"timestamp": 1e400, "viewer": "a", "video": "b"}': "not_json",
        b'{"timestamp": 1, "viewer": "a", "video": "b", "x": "\xff"}': "not_json",  # UTF-8, skipped field
        b'{"timestamp": 1, "viewer": "a", "video": "b", "x": ' + b"[" * 2000 + b"]" * 2000 + b"}": "not_json",
        b'{"timestamp": 1, "viewer": "a", "video": "b", "event_id": "' + b"e" * 257 + b'"}': "bad_type",
        b'{"timestamp": "0001-01-01T00:00:00+14:00", "viewer": "a", "video": "b"}': "bad_value",
    }
    for raw, reason in cases.items():
        assert _fast(raw) is None
        try:
            event_from_json(raw)
        except EventError as err:
            assert err.reason == reason, raw[:80]
        else:
            raise AssertionError(f"accepted {raw[:80]!r}")


def test_a_number_too_large_for_a_double_in_an_ignored_field_does_not_refuse_the_event():
    """Valid JSON, and other fields are ignored: the event is used (the rules' parser alone refused it)."""
    event = event_from_json(b'{"timestamp": 1, "viewer": "a", "video": "b", "context": 1e400}')
    assert (event.viewer, event.video) == ("a", "b")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**66), max_value=2**66)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
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
        },
    )
)
def test_any_json_object_gets_the_same_answer_from_both_paths(body):
    try:
        raw = orjson.dumps(body)
    except (orjson.JSONEncodeError, TypeError):
        return
    agrees(raw)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_any_bytes_get_the_same_answer_from_both_paths(raw):
    agrees(raw)
