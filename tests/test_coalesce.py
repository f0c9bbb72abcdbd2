"""One list per viewer per poll (consumer.coalesce): a backlog's poll makes its lists once,
after its last batch, each answering every event of its viewer in the poll.

Checked on the project's seeded synthetic stream: the coalescer alone (which lists, when, from
which event, every event's freshness counted once), then the service answering the same poll
with and without it (the same learning, the same last list per viewer, fewer lists), and a poll
whose last batch holds only dead letters.
"""

from __future__ import annotations

from collections import Counter

import orjson
import pytest
from kafka.consumer.fetcher import ConsumerRecord

from consumer.coalesce import ListCoalescer, behind, every_viewer
from consumer.config import ConfigError, ServiceConfig
from consumer.runner import build_service
from contract.schema import event_to_json
from producer.synth import synth_events

BATCH = 128
LISTS = ServiceConfig().output_topic


def poll_of(events: int = 1536, seed: int = 11) -> list[ConsumerRecord]:
    """A poll's records of the synthetic stream, keyed by viewer (as the producers key them),
    each with its own Kafka timestamp."""
    stream = list(synth_events(viewers=120, videos=300, events=events, seed=seed))
    return [
        ConsumerRecord(
            topic="watch-events",
            partition=0,
            leader_epoch=0,
            offset=i,
            timestamp=1_000_000 + i,
            timestamp_type=0,
            key=e.viewer.encode(),
            value=event_to_json(e),
            headers=[],
            checksum=None,
            serialized_key_size=-1,
            serialized_value_size=-1,
            serialized_header_size=-1,
        )
        for i, e in enumerate(stream)
    ]


def batches_of(records: list) -> list[list]:
    return [records[i : i + BATCH] for i in range(0, len(records), BATCH)]


def intake_of(records: list) -> tuple[list, list]:
    from consumer.intake import decode

    intake = decode(records)
    return intake.events, intake.origins


def test_a_polls_lists_come_after_its_last_batch_one_per_viewer_answering_every_event():
    records = poll_of()
    batches = batches_of(records)
    coalescer = ListCoalescer(batches=len(batches))
    last_event = {r.key.decode(): r for r in records}
    dues = [coalescer.due(*intake_of(batch)) for batch in batches]
    assert all(not due.answers and not due.produced_at for due in dues[:-1])
    final = dues[-1]
    assert sorted(final.answers) == sorted(last_event)  # each viewer once
    for viewer, (timestamp, source) in final.answers.items():
        record = last_event[viewer]  # the list answers the viewer's last event of the poll
        assert source == (record.partition, record.offset)
        assert timestamp == orjson.loads(record.value)["timestamp"]
    # Every event's freshness is counted once, with the list that answers it.
    assert Counter(final.produced_at) == Counter(r.timestamp / 1000.0 for r in records)
    assert coalescer.held == 0
    # The point of it: far fewer lists than one per viewer per batch.
    per_batch = sum(len(every_viewer(*intake_of(batch)).answers) for batch in batches)
    assert len(final.answers) < 0.6 * per_batch
    with pytest.raises(RuntimeError, match="another"):
        coalescer.due(*intake_of(batches[0]))


def answered(coalesce: bool, records: list):
    """A service (no Kafka) answering ``records`` as one poll, batch by batch: the answers."""
    service = build_service(ServiceConfig(checkpoint_dir="none", metrics_port=0), with_metrics=False)
    batches = batches_of(records)
    coalescer = ListCoalescer(batches=len(batches)) if coalesce else None
    return service, [service.answer(batch, coalescer) for batch in batches]


def lists_of(answers) -> list[tuple[str, dict]]:
    return [
        (key.decode(), orjson.loads(value))
        for a in answers
        for topic, key, value, _ in a.messages
        if topic == LISTS
    ]


def test_the_service_learns_the_same_and_ends_the_poll_with_the_same_lists():
    records = poll_of()
    _, every_answers = answered(False, records)
    once, once_answers = answered(True, records)
    # Learning does not depend on which lists are made: the same test-step results.
    for a, b in zip(every_answers, once_answers, strict=True):
        assert a.tested.arms["control"][1] == b.tested.arms["control"][1]
    assert all(not lists_of([a]) for a in once_answers[:-1])
    published = lists_of(once_answers)
    last_once, last_every = dict(published), dict(lists_of(every_answers))
    assert len(published) == len(last_once), "a viewer got two lists in one poll"
    assert last_once.keys() == last_every.keys()
    # A viewer whose last event is in the last batch gets the very list made after every batch
    # (scores to float32 rounding: one product over other viewers' rows).
    in_last_batch = {r.key.decode() for r in batches_of(records)[-1]}
    for viewer, value in last_once.items():
        theirs = last_every[viewer]
        assert value["source"] == theirs["source"]
        assert value["event_timestamp"] == theirs["event_timestamp"]
        if viewer in in_last_batch:
            assert [i["video"] for i in value["items"]] == [i["video"] for i in theirs["items"]]
            scores = [i["score"] for i in value["items"]]
            assert scores == pytest.approx([i["score"] for i in theirs["items"]], rel=1e-5)
    assert len(published) < 0.6 * len(lists_of(every_answers))
    # What the online metrics call "shown" is what was published.
    assert {v: once.shown.get(v) for v in last_once} == {
        v: [item["video"] for item in value["items"]] for v, value in last_once.items()
    }
    # Every event answered once in the freshness samples.
    assert sum(len(a.recommended.produced_at) for a in once_answers) == len(records)


def test_a_poll_whose_last_batch_is_all_dead_letters_still_gets_its_lists():
    records = poll_of(events=3 * BATCH)
    for i in range(2 * BATCH, 3 * BATCH):
        records[i] = records[i]._replace(value=b"not json")
    _, answers = answered(True, records)
    assert answers[-1].intake.events == [] and len(answers[-1].intake.dead) == BATCH
    viewers = {r.key.decode() for r in records[: 2 * BATCH]}
    assert {viewer for viewer, _ in lists_of(answers[-1:])} == viewers
    assert len(lists_of(answers)) == len(viewers)


def test_a_poll_of_one_batch_lists_every_viewer_at_once():
    records = poll_of(events=BATCH)
    assert ListCoalescer(batches=1).due(*intake_of(records)) == every_viewer(*intake_of(records))


@pytest.mark.parametrize(
    ("args", "once"),
    [
        ([], True),
        (["--lists-per", "batch"], False),
        (["--lists-per", "poll"], True),
        (["--arms", "a=streamrec,b=most_popular"], False),  # auto: the readout needs shown lists
        (["--arms", "a=streamrec,b=most_popular", "--lists-per", "poll"], True),
    ],
)
def test_lists_are_made_once_a_poll_but_in_a_live_experiment_unless_told(args, once):
    assert ServiceConfig.from_args(args, environ={}).lists_once_a_poll is once


def test_an_unknown_choice_is_refused_at_start_up():
    with pytest.raises(ConfigError, match="lists_per must be one of auto, poll, batch"):
        ServiceConfig.from_args(["--lists-per", "viewer"], environ={})


def test_only_a_poll_that_is_behind_waits_for_its_end():
    """A poll grown past one batch by a moment's pause holds fresh events: lists every batch.
    One whose newest event is older than the poll budget is a backlog: lists once."""
    records = poll_of(events=3 * BATCH)
    now = records[-1].timestamp / 1000.0
    budget = ServiceConfig().poll_budget_ms / 1000
    assert not behind(records, budget, now=now + 0.5 * budget)
    assert behind(records, budget, now=now + 2 * budget)
