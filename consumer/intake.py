"""Turning one poll's Kafka records into watch events, and the rest into dead letters.

Decoding follows the wire contract in :mod:`contract.schema`. A record that breaks it is not
dropped: it becomes a :class:`DeadLetter` carrying the original key and value unchanged plus the
reason, which the service publishes to the dead-letter topic.

>>> from kafka.consumer.fetcher import ConsumerRecord
>>> def rec(offset, value):
...     return ConsumerRecord(topic="t", partition=0, leader_epoch=0, offset=offset, timestamp=1000,
...                           timestamp_type=0, key=b"k", value=value, headers=[], checksum=None,
...                           serialized_key_size=1, serialized_value_size=len(value),
...                           serialized_header_size=-1)
>>> batch = decode([rec(0, b'{"timestamp": 1, "viewer": "a", "video": "v"}'), rec(1, b"oops")])
>>> [e.viewer for e in batch.events], [(d.offset, d.reason) for d in batch.dead]
(['a'], [(1, 'not_json')])

"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from contract.events import WatchEvent
from contract.schema import EventError, event_from_json, events_from_json

__all__ = ["DeadLetter", "Intake", "decode"]


@dataclass(frozen=True)
class DeadLetter:
    """An input record that cannot be used, with why."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    detail: str


@dataclass
class Intake:
    """A decoded batch: valid events with their origins, and dead letters, in input order."""

    events: list[WatchEvent] = field(default_factory=list)
    #: (partition, offset, Kafka timestamp in seconds) of each event, aligned with ``events``.
    origins: list[tuple[int, int, float]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


def decode(records: Iterable) -> Intake:
    """Decode Kafka ``ConsumerRecord`` s (anything with topic, partition, offset, timestamp, key, value).

    A poll of plainly valid events is decoded in one call (:func:`contract.schema.events_from_json`);
    one that holds anything else, one record at a time, each bad record becoming a dead letter.
    """
    records = records if isinstance(records, list) else list(records)
    events = events_from_json([r.value for r in records])
    if events is not None:
        origins = [(r.partition, r.offset, r.timestamp / 1000.0) for r in records]
        return Intake(events, origins)
    intake = Intake()
    event, origin = intake.events.append, intake.origins.append
    for r in records:
        try:
            event(event_from_json(r.value))
        except EventError as err:
            intake.dead.append(
                DeadLetter(r.topic, r.partition, r.offset, r.key, r.value, err.reason, err.detail)
            )
            continue
        except Exception as err:  # noqa: BLE001 - a record that breaks the decoder itself
            # must not stop the service in a crash loop on the same offset: it is dead-lettered
            # like any bad record, under its own reason, and the decoder bug shows in the metric.
            detail = f"the decoder failed: {type(err).__name__}: {err}"
            dead = DeadLetter(r.topic, r.partition, r.offset, r.key, r.value, "decode_error", detail)
            intake.dead.append(dead)
            continue
        origin((r.partition, r.offset, r.timestamp / 1000.0))
    return intake
