"""The viewer-state changelog: a partition that moves takes its viewers' state with it (issue 12).

Events are keyed by viewer and the group assigns partitions, so a viewer's state (their recent
history and everything they watched, in every arm's model; the list last shown to them and their
online hit counts) lives in the worker that owns the viewer's partition. As in Kafka Streams,
every change of it is also written to a compacted topic (``--changelog-topic``, by default
``<group>-<input topic>-viewer-state`` wherever partitions move between workers: see
:attr:`consumer.config.ServiceConfig.changelog_topic`), keyed by viewer, in the **same partition
number** as the input partition the viewer's events come from: after each poll, one record per
viewer the poll touched, with that viewer's whole state by video id (:mod:`model.viewer_state`),
sent with the poll's lists (acknowledged before its offsets are committed, or in its transaction
with ``--exactly-once``). Compaction keeps the latest record of each viewer, so the topic is the
size of the audience, not of the history.

When a partition is assigned and someone else committed it last (:meth:`consumer.ledger.
OffsetLedger.start`, case c), its new owner reads that one changelog partition from its start to
its end before the partition's first event is processed, and installs every viewer's state.
(When the last commit is ours, the checkpoint and the replay hold the state already.) Each
record carries ``through``, the input offset its poll committed: a record whose poll was never
committed (at least once: sent, then the worker died before the commit) is ahead of the commit
the new owner starts from, and is skipped, so the events it holds are learned once, when the new
owner processes them again.

With one model over the group (``--sync-every``), the previous owner may have committed events
whose learning it never sent to its peers (killed between two sends). The new owner then starts
below the commit, where the update topic's learning ends, and relearns up to the commit: the
viewers of those events are first taken back to before them (:func:`watches_between` reads
them from the input, :func:`rewind` takes them off each viewer's state).

>>> record = ViewerRecord(FORMAT, 120, {"control": b"..."}, ["v1", "v2"], (3, 1))
>>> decode(encode(record)) == record
True
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from typing import NamedTuple

import msgspec
from kafka import KafkaAdminClient
from kafka.admin import NewPartitions, NewTopic
from kafka.errors import InvalidPartitionsError, TopicAlreadyExistsError
from kafka.structs import TopicPartition

from consumer.clients import close_quietly, make_reader, read_between
from consumer.config import ServiceConfig
from consumer.intake import decode as decode_events
from consumer.logs import fields
from consumer.publish import Message
from consumer.topics import warn_settings_that_differ
from model import viewer_state
from model.base import StreamRanker

__all__ = [
    "ViewerChangelog",
    "ViewerRecord",
    "Restored",
    "FORMAT",
    "RECORD_BUDGET",
    "encode",
    "decode",
    "install",
    "rewind",
    "watches_between",
]

log = logging.getLogger(__name__)

#: The format of :class:`ViewerRecord`: bumped when its fields change shape or meaning.
FORMAT = 1
#: Bytes per record: under the 1 MB a Kafka producer and broker accept by default. A viewer
#: whose state is larger (some 50,000 watches) is not written; their new owner starts them afresh.
RECORD_BUDGET = 900_000


class ViewerRecord(msgspec.Struct, array_like=True):
    """One viewer's state in the changelog."""

    format: int
    #: The input partition's offset the poll that wrote it committed (its events are below).
    through: int
    #: Per model (an arm's name, or the shadow's ``shadow:<name>``), its :meth:`~model.base.
    #: StreamRanker.viewer_states` bytes; a model that keeps nothing of the viewer is absent.
    models: dict[str, bytes]
    #: The list last published to the viewer (the online hit rate reads it), if any.
    shown: list[str] | None
    #: The viewer's online ``(shown, hits)`` events (the experiment's readout), if any.
    counts: tuple[int, int] | None


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ViewerRecord)


def encode(record: ViewerRecord) -> bytes:
    return _encoder.encode(record)


def decode(data: bytes) -> ViewerRecord:
    """The record :func:`encode` wrote; ``ValueError`` for anything else, or another format."""
    try:
        record = _decoder.decode(data)
    except msgspec.DecodeError as err:
        raise ValueError(f"not a viewer-state record: {err}") from None
    if record.format != FORMAT:
        raise ValueError(f"viewer-state record of format {record.format}, this version reads {FORMAT}")
    return record


class Restored(NamedTuple):
    """What a restore read: the viewers' latest committed records, records read, skipped (of a
    poll never committed, or unreadable), and the seconds it took."""

    viewers: dict[str, ViewerRecord]
    records: int
    skipped: int
    seconds: float


class ViewerChangelog:
    """This worker's side of the changelog: records to write after a poll, restores on assignment."""

    def __init__(self, config: ServiceConfig, metrics=None, viewer_ttl: float | None = None) -> None:
        if config.changelog_topic_name is None:
            raise ValueError("the changelog is off (changelog_topic none)")
        self.config = config
        self.topic: str = config.changelog_topic_name
        #: Seconds after which the models forget a viewer (``None``: never). The topic then also
        #: deletes records older than that (``cleanup.policy=compact,delete``): a viewer gone that
        #: long has no record newer, so the topic holds the live audience, not everyone ever seen.
        self.viewer_ttl = viewer_ttl
        #: The worker's :class:`consumer.metrics.ServiceMetrics`, or ``None``.
        self.metrics = metrics
        self._partitions = 0
        self.written = 0
        self.too_large = 0

    # -- the topic ------------------------------------------------------------------------------

    @property
    def topic_configs(self) -> dict[str, str]:
        """The topic's settings: compacted; with a viewer TTL, records older than it deleted too.

        >>> from consumer.config import ServiceConfig
        >>> ViewerChangelog(ServiceConfig(changelog_topic="on"), viewer_ttl=86_400.0).topic_configs
        {'cleanup.policy': 'compact,delete', 'retention.ms': '86400000'}
        """
        if self.viewer_ttl is None:
            return {"cleanup.policy": "compact"}
        return {"cleanup.policy": "compact,delete", "retention.ms": str(int(self.viewer_ttl * 1000))}

    def ensure_topic(self, partitions: int, timeout_ms: int = 10_000) -> None:
        """Create the topic (:attr:`topic_configs`) with the input's ``partitions``; grow it when
        it has fewer (records are placed by partition number, so growing moves none); warn when it
        exists with other settings. Once per process."""
        if partitions <= self._partitions:
            return
        admin = KafkaAdminClient(
            **self.config.kafka.client_options(),
            client_id=f"streamrec-{self.config.worker}-admin",
            bootstrap_timeout_ms=timeout_ms,
        )
        try:
            existing = set(admin.list_topics())
            if self.topic not in existing:
                try:
                    topic = NewTopic(
                        self.topic,
                        num_partitions=partitions,
                        replication_factor=-1,
                        topic_configs=self.topic_configs,
                    )
                    admin.create_topics([topic], timeout_ms=timeout_ms)
                    log.info("created topics", extra=fields(topics=self.topic, partitions=partitions))
                    self._partitions = partitions
                    return
                except TopicAlreadyExistsError:
                    pass  # another worker created it in between
            else:
                warn_settings_that_differ(admin, {self.topic: self.topic_configs}, existing)
            [described] = admin.describe_topics([self.topic])
            have = len(described["partitions"])
            if 0 < have < partitions:
                with contextlib.suppress(InvalidPartitionsError):  # another worker grew it in between
                    admin.create_partitions(
                        {self.topic: NewPartitions(total_count=partitions)}, timeout_ms=timeout_ms
                    )
                log.warning(
                    "viewer-state changelog had fewer partitions than the input: grown",
                    extra=fields(topic=self.topic, had=have, partitions=partitions),
                )
        finally:
            admin.close()
        self._partitions = partitions

    # -- writing --------------------------------------------------------------------------------

    def messages(
        self,
        touched: Mapping[str, int],
        through: Mapping[int, int],
        models: Mapping[str, StreamRanker],
        shown: Mapping | None = None,
        counts: Mapping | None = None,
    ) -> list[Message]:
        """One record per viewer of ``touched`` (viewer -> input partition) with the whole state
        ``models`` keep of them, and ``shown`` / ``counts`` (``get``-able by viewer), to that
        partition; ``through`` maps each partition to the offset the poll commits."""
        viewers = list(touched)
        states = {name: model.viewer_states(viewers) for name, model in models.items()}
        states = {name: found for name, found in states.items() if found}
        shown_of = shown.get if shown is not None else _nothing
        counts_of = counts.get if counts is not None else _nothing
        topic, out = self.topic, []
        for viewer in viewers:
            partition = touched[viewer]
            hits = counts_of(viewer)
            record = ViewerRecord(
                FORMAT,
                through[partition],
                {name: found[viewer] for name, found in states.items() if viewer in found},
                shown_of(viewer),
                None if hits is None else (int(hits[0]), int(hits[1])),
            )
            value = encode(record)
            if len(value) > RECORD_BUDGET:
                self.too_large += 1
                log.warning(
                    "viewer state too large for one record: not written (a new owner starts the viewer anew)",
                    extra=fields(bytes=len(value), partition=partition),
                )
                continue
            out.append((topic, viewer.encode(), value, None, partition))
        self.written += len(out)
        if self.metrics is not None:
            self.metrics.record_changelog(len(out))
        return out

    # -- restoring ------------------------------------------------------------------------------

    def read(self, upto: Mapping[int, int], timeout_s: float = 120.0) -> Restored:
        """The latest record of every viewer of the changelog partitions ``upto`` names, read from
        their start to their end (read_committed), each no further than the commit the new owner
        starts from (``upto[partition]``: records of later polls are skipped)."""
        started = time.perf_counter()
        reader = make_reader(self.config, "restore")
        latest: dict[str, ViewerRecord] = {}
        records = skipped = 0
        try:
            partitions = [TopicPartition(self.topic, p) for p in sorted(upto)]
            ends = reader.end_offsets(partitions)
            for tp, batch in read_between(reader, {}, ends, timeout_s, max_records=50_000):
                limit = upto[tp.partition]
                for r in batch:
                    records += 1
                    try:
                        record = decode(r.value)
                    except ValueError as err:
                        skipped += 1
                        log.error(
                            "unreadable viewer-state record skipped",
                            extra=fields(partition=tp.partition, offset=r.offset, error=err),
                        )
                        continue
                    if record.through > limit:
                        skipped += 1  # a poll that was never committed: its events come again
                        continue
                    latest[r.key.decode()] = record
        finally:
            close_quietly(reader)
        return Restored(latest, records, skipped, time.perf_counter() - started)


def install(
    restored: Mapping[str, ViewerRecord],
    models: Mapping[str, StreamRanker],
    shown=None,
    counts=None,
    clock: float | None = None,
) -> dict[str, int]:
    """Put the restored viewers into ``models`` (by name) and the service's ``shown`` and
    ``counts`` (:class:`model.expiring.ExpiringDict`, touched at ``clock``); how many viewers
    each model installed."""
    installed = {}
    for name, model in models.items():
        states = {v: r.models[name] for v, r in restored.items() if name in r.models}
        installed[name] = model.restore_viewers(states) if states else 0
    for viewer, record in restored.items():
        if shown is not None and record.shown is not None:
            shown.touch(viewer, record.shown, clock)
        if counts is not None and record.counts is not None:
            counts.touch(viewer, list(record.counts), clock)
    return installed


def watches_between(
    config: ServiceConfig, ranges: Mapping[int, tuple[int, int]], timeout_s: float = 120.0
) -> dict[str, list[tuple[int, str]]]:
    """Each viewer's watches, ``(offset, video)`` in offset order, in the input partitions' offset
    ``ranges`` (partition -> ``(first, end)``, end excluded), read_committed; records that are
    not valid events are left out (they were dead-lettered, never learned)."""
    spans = {TopicPartition(config.input_topic, p): span for p, span in ranges.items() if span[0] < span[1]}
    watches: dict[str, list[tuple[int, str]]] = {}
    if not spans:
        return watches
    reader = make_reader(config, "relearn")
    try:
        starts = {tp: first for tp, (first, _) in spans.items()}
        ends = {tp: end for tp, (_, end) in spans.items()}
        for tp, batch in read_between(reader, starts, ends, timeout_s):
            intake = decode_events([r for r in batch if r.offset < ends[tp]])
            for event, (_, offset, _) in zip(intake.events, intake.origins, strict=True):
                watches.setdefault(event.viewer, []).append((offset, event.video))
    finally:
        close_quietly(reader)
    return watches


def rewind(
    restored: dict[str, ViewerRecord], watches: Mapping[str, list[tuple[int, str]]]
) -> tuple[int, int]:
    """Take each restored viewer's ``watches`` below its record's ``through`` out of every model's
    state (:func:`model.viewer_state.rewound`), in place, so that relearning them starts from
    the state before them; ``(viewers rewound, viewers left as they were)``, the latter when a
    model's state does not end with those watches."""
    done = left = 0
    for viewer, record in restored.items():
        videos = [video for offset, video in watches.get(viewer, ()) if offset < record.through]
        if not videos:
            continue
        states = {name: _rewound(data, videos) for name, data in record.models.items()}
        if None in states.values():
            left += 1
            continue
        record.models.update(states)
        done += 1
    return done, left


def _rewound(data: bytes, videos: list[str]) -> bytes | None:
    """One model's viewer state without its last ``videos``; ``None`` if it cannot be."""
    try:
        back = viewer_state.rewound(viewer_state.decode(data), videos)
    except ValueError:  # a model whose state is not a viewer_state: nothing to rewind
        return None
    return None if back is None else viewer_state.encode(back)


def _nothing(_viewer: str) -> None:
    return None
