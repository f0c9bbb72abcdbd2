"""Pacing: events leave on schedule (checked with a fake clock, so nothing really sleeps)."""

from __future__ import annotations

import itertools

import pytest

from contract.events import WatchEvent
from producer.pacing import paced


class FakeClock:
    """A clock that only moves when the pacer sleeps (plus ``work`` seconds per reading)."""

    def __init__(self, oversleep: float = 0.0) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []
        self.oversleep = oversleep

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds + self.oversleep


def emission_times(items, clock: FakeClock, **pace) -> list[float]:
    return [clock.now - 100.0 for _ in paced(items, clock=clock.time, sleep=clock.sleep, **pace)]


def test_rate_spaces_events_evenly():
    clock = FakeClock()
    times = emission_times(range(5), clock, rate=4)
    assert times == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_speedup_follows_the_events_own_timestamps():
    events = [WatchEvent(t, "v", "x") for t in (1000.0, 1000.0, 1060.0, 1090.0, 1600.0)]
    clock = FakeClock()
    times = emission_times(events, clock, speedup=60)
    # Gaps of 0 s, 60 s, 30 s and 510 s become 0 s, 1 s, 0.5 s and 8.5 s.
    assert times == pytest.approx([0.0, 0.0, 1.0, 1.5, 10.0])


def test_a_late_wake_up_is_caught_up_instead_of_delaying_everything_after():
    clock = FakeClock(oversleep=0.35)  # every sleep ends 0.35 s late
    times = emission_times(range(9), clock, rate=4)
    due = [i / 4 for i in range(9)]
    assert all(t >= d for t, d in zip(times, due, strict=True))  # never early
    assert times[-1] - due[-1] <= 0.35 + 1e-9  # late by one oversleep at most, not one per event
    assert len(clock.sleeps) < 8  # events already due go out without sleeping


def test_high_rates_do_not_sleep_per_event():
    clock = FakeClock()
    # A clock that also advances 10 us per reading, like real work between events.
    reading = iter(itertools.count())

    def busy_clock() -> float:
        clock.now += 1e-5 if next(reading) else 0.0
        return clock.now

    sent = list(paced(range(10_000), rate=50_000, clock=busy_clock, sleep=clock.sleep))
    assert sent == list(range(10_000))
    assert 0 < len(clock.sleeps) < 1000


def test_unpaced_streams_never_read_the_clock():
    def no_clock() -> float:
        raise AssertionError("the clock was read")

    assert list(paced(range(3), clock=no_clock, sleep=no_clock)) == [0, 1, 2]


def test_pacing_is_lazy_so_endless_sources_work():
    clock = FakeClock()
    first = list(
        itertools.islice(paced(itertools.count(), rate=1000, clock=clock.time, sleep=clock.sleep), 5)
    )
    assert first == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "pace, message",
    [({"rate": 0}, "rate"), ({"speedup": -1}, "speed-up"), ({"rate": 1, "speedup": 2}, "not both")],
)
def test_bad_pacing_is_refused(pace, message):
    with pytest.raises(ValueError, match=message):
        paced([WatchEvent(0, "a", "b")], **pace)  # at the call, before any event is consumed
