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

from contract.schema import EventError, _checked, _fast, event_from_json, events_from_json
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


# -- a whole poll at once (events_from_json) ------------------------------------------------------


def one_by_one(values):
    """Each value's answer from the rules: its event, or its reason."""
    out = []
    for raw in values:
        try:
            out.append(event_from_json(raw))
        except EventError as err:
            out.append(err.reason)
    return out


def batch_agrees(values) -> bool:
    """The batch path says yes only when every value is an event, and then gives those events."""
    events = events_from_json(values)
    if events is not None:
        assert events == one_by_one(values), [v[:80] for v in values]
    return events is not None


PLAIN = [
    b'{"timestamp": 1616963421, "viewer": "UC2n", "video": "WK_N", "watch_time": 600, "duration": 1200}',
    b'{"timestamp": 5.5, "viewer": "a", "video": "b", "event_id": "e1", "extra": {"n": [1, 2]}}',
    b'{"video": "c", "timestamp": 7, "viewer": "a"}\r',
]


def test_a_poll_of_plain_events_is_decoded_at_once_as_each_alone():
    assert batch_agrees(PLAIN)
    assert batch_agrees(PLAIN[:1])


def test_values_that_would_decode_as_events_only_when_joined_are_refused_one_by_one():
    """Joined by whitespace (as lines, or in an array), these would come out as one valid
    event a value: a value cut off inside an object, the next one closing it, and one holding
    two objects. Each value is bad alone, and the poll is decoded one by one."""
    a = b'{"timestamp": 1, "viewer": "a", "video": "x"}'
    polls = [
        [b'{"timestamp": 1, "viewer": "a", "video": "x", "extra":', b'{"k": 1}}', a + b" " + a],
        [a + b" " + a, b" "],
        [a + b"\n" + a, b""],
        [b'{"timestamp": 1, "viewer": "a",', b'"video": "x"}'],
        [b'{"timestamp": 1, "viewer": "a", "video": "x", "e": [[1', b'{"k": 1}]]}', a + b"],[" + a],
    ]
    for values in polls:
        assert events_from_json(values) is None
        assert any(isinstance(answer, str) for answer in one_by_one(values))
    assert batch_agrees([a, b" " + a + b"\n"])  # whitespace around one object is JSON's own


def test_anything_not_plain_in_a_poll_sends_the_whole_poll_one_by_one():
    a = PLAIN[0]
    for odd in [
        None,  # a tombstone
        b'{"timestamp": "2021-03-28T22:30:21+02:00", "viewer": "a", "video": "b"}',  # valid, not plain
        b'{"timestamp": 1, "viewer": 7, "video": "b"}',  # valid, not plain
        '{"timestamp": 1, "viewer": "\u00fc", "video": "b"}'.encode(),  # valid, not ASCII
        b'{"timestamp": 1, "viewer": "a", "video": "b", "x": "' + b"y" * (64 * 1024) + b'"}',  # too large
        b'{"timestamp": 1e400, "viewer": "a", "video": "b"}',
        b"oops",
    ]:
        assert events_from_json([a, odd, a]) is None
    assert events_from_json([]) is None


def test_polls_cut_from_the_hostile_corpus_agree_with_one_by_one():
    rng = random.Random(11)
    corpus = [r.value for r in hostile_corpus(random.Random(5), 3000)]
    plain = [v for v in corpus if v is not None and events_from_json([v]) is not None]
    assert len(plain) > 100
    taken = 0
    for _ in range(400):
        values = rng.sample(plain, rng.randint(1, 20))
        if rng.random() < 0.5:
            values[rng.randrange(len(values))] = rng.choice(corpus)
        taken += batch_agrees(values)
    assert taken > 100, "polls of plain events should take the batch path"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(PLAIN) | st.binary(max_size=60), min_size=1, max_size=6))
def test_any_values_get_the_same_answer_in_a_poll(values):
    batch_agrees(values)
