"""The update topic: the workers of a group share one model's video state (issue 12).

Each worker learns from its own partitions' viewers. Its video updates (:mod:`model.replica`)
go to the update topic (``--sync-topic``, by default ``<group>-<input topic>-video-updates``) once it has
learned ``--sync-every`` events since it last sent, or ``--sync-interval-s`` has passed with some
unsent, in the poll whose offsets they belong to: acknowledged before the poll's offsets are
committed, or in its transaction with ``--exactly-once``. Every worker reads the whole topic
(assigned every partition, no group) and applies its peers' records, before each poll's batches
and after each send within one (a poll of thousands of events sends every ``--sync-every`` of
them, not once at its end). The reader's offsets, the agreed video state and the last own
record sent are in every checkpoint (a checkpoint first sends what is unsent), so a worker
restarted, or rolled back to its checkpoint, applies exactly the records its restored model
lacks: its peers', and its own sent after that checkpoint (:meth:`UpdateExchange._holds`).

What the group already has of a partition's learning is written on the update records: each
names, per input partition, the offset its sender's learning goes up to (:data:`THROUGH_HEADER`),
and the reader notes the farthest per partition (:attr:`UpdateExchange.sent_through`; on
connecting, it first reads the topic to where it ended). When a partition is positioned, the
service learns the events it learns again below that offset first (replayed after a restart,
or served again after a crash between a send and the poll's commit, its own or the partition's
previous owner's): their viewers learn them, and their video learning, which the reader has
applied from the records that carried it, is taken back, neither sent nor held twice
(:meth:`UpdateExchange.relearned`). The rest it learns as unsent, so a restarted worker's last
polls, committed after its last send, reach the peers after all. So every replica is the
records of the topic added up, whatever its worker went through.

**Fenced by the group's generation.** A worker expelled alive (frozen past the session timeout,
then thawed) may send updates after its partitions' new owner decided, from the update topic,
what to relearn of them: learned twice. So every update record names the group generation its
sender held (:data:`GENERATION_HEADER`), and a worker that takes partitions over first sends a
*fence* record naming its own, newer generation, and reads the topic past it before deciding.
Every reader drops the records sent under a generation older than the last fence before them
(:class:`GenerationFence`): they all read the one partition in the same order, so they all drop
the same records, the new owner's decision included. Kafka's own producer epochs fence zombies
the same way; ``--exactly-once`` has those too (an expelled worker's transaction is refused).

A worker that joins later with nothing saved starts from the newest snapshot of the group's
video state (:mod:`consumer.snapshot`, ``--snapshot-every-s``) and reads the topic from the
offsets the snapshot covers; without snapshots it reads the topic from its start (the updates
add up to the group's video state, because every video starts from its id), so then the topic
keeps everything. One worker of the group (the first by the hash of its name among itself and
the peers heard from lately) publishes a snapshot every ``--snapshot-every-s`` seconds, at a
moment its agreed state is exactly the updates before its reader's positions.

>>> UPDATE_HEADER
'streamrec.worker'
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator

import msgspec
import numpy as np
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from consumer.clients import close_quietly, make_reader
from consumer.config import ServiceConfig
from consumer.logs import fields
from consumer.publish import Message
from consumer.snapshot import (
    INCARNATION_HEADER,
    SEQUENCE_HEADER,
    OwnRecords,
    Snapshot,
    read_snapshot,
    snapshot_messages,
)
from contract.errors import UserError
from model.replica import VideoReplica, VideoUpdates

__all__ = [
    "GENERATION_HEADER",
    "GenerationFence",
    "NameTaken",
    "RECORD_BUDGET",
    "THROUGH_HEADER",
    "Through",
    "UPDATE_HEADER",
    "UpdateExchange",
    "admitted",
]

log = logging.getLogger(__name__)

#: The header naming the worker that sent an update record (its own are skipped).
UPDATE_HEADER = "streamrec.worker"
#: The header saying how far the sender's learning goes: a :class:`Through`, JSON.
THROUGH_HEADER = "streamrec.through"
#: The header naming the group generation the sender held when it sent (ASCII digits).
GENERATION_HEADER = "streamrec.generation"
#: The header marking a fence record: no updates, only a new generation (value ``b""``).
FENCE_HEADER = "streamrec.fence"
#: Bytes per update record: under the 1 MB a Kafka producer and broker accept by default.
RECORD_BUDGET = 900_000
#: How long a worker waits for the update topic's partitions to show in the metadata.
TOPIC_WAIT_S = 30.0
#: A peer whose last update applied is older than this no longer counts in the group's size.
PEER_WINDOW_S = 60.0


class NameTaken(UserError):
    """Two live workers of one group send under one name (:meth:`UpdateExchange._check_name`)."""


class Through(msgspec.Struct, frozen=True):
    """How far an update record's learning goes: per input partition, the next offset the sender
    had not learned when it took the update (``offsets``), and which record of that send it is
    (``part`` of ``parts``: a large send is split to fit Kafka's record size).

    >>> header = Through({0: 120, 3: 75}, part=0, parts=1).encode()
    >>> header
    b'{"offsets":{"0":120,"3":75},"part":0,"parts":1}'
    >>> Through.decode(header).offsets
    {0: 120, 3: 75}
    """

    offsets: dict[int, int]
    part: int = 0
    parts: int = 1

    def encode(self) -> bytes:
        return _through_encoder.encode(self)

    @classmethod
    def decode(cls, data: bytes) -> Through:
        return _through_decoder.decode(data)


_through_encoder = msgspec.json.Encoder()
_through_decoder = msgspec.json.Decoder(Through)


class GenerationFence:
    """Which update records count, read in the topic's order: a fence record raises the fence
    to its generation; a record sent under an older generation than the fence is dropped (its
    sender had been expelled, and its partitions' new owner relearns what it had not sent
    before the fence). A lower fence replaces a higher one: a group deleted and made again
    (empty longer than the offsets' retention) counts its generations from 1 again.

    >>> fence = GenerationFence()
    >>> fence.admits({GENERATION_HEADER: b"3"})
    True
    >>> fence.admits({GENERATION_HEADER: b"4", FENCE_HEADER: b""})  # a fence: nothing to apply
    False
    >>> fence.admits({GENERATION_HEADER: b"3"}), fence.admits({GENERATION_HEADER: b"4"})
    (False, True)
    >>> fence.admits({})  # sent by a version that did not say
    True
    """

    def __init__(self, generation: int = -1) -> None:
        self.generation = generation
        #: Records dropped as sent under an older generation.
        self.dropped = 0

    def admits(self, headers: dict[str, bytes]) -> bool:
        """Whether a record with ``headers``, the next in the topic, is applied (fences are not)."""
        found = headers.get(GENERATION_HEADER)
        if found is None:
            return True
        generation = int(found)
        if FENCE_HEADER in headers:
            if generation >= 0:  # a fence sent while its sender was out of the group fences nothing
                self.generation = generation
            return False
        if generation < self.generation:
            self.dropped += 1
            return False
        return True

    @staticmethod
    def fence_headers(worker: str, generation: int) -> list[tuple[str, bytes]]:
        return [
            (UPDATE_HEADER, worker.encode()),
            (GENERATION_HEADER, str(generation).encode()),
            (FENCE_HEADER, b""),
        ]


def admitted(records: Iterable, fence: GenerationFence | None = None) -> Iterator:
    """The update records (in the topic's order) that a reader applies: neither fences nor sent
    under a generation older than the fence before them."""
    fence = fence if fence is not None else GenerationFence()
    return (record for record in records if fence.admits(dict(record.headers or ())))


class UpdateExchange:
    """This worker's side of the update topic: what to send, and its peers' updates to apply."""

    def __init__(self, config: ServiceConfig, replica: VideoReplica, metrics=None) -> None:
        self.config = config
        #: The worker's :class:`consumer.metrics.ServiceMetrics`, or ``None``: it gets the sync
        #: series (records and bytes sent and applied, seconds per step, lag per peer).
        self.metrics = metrics
        self.topic = config.sync_topic_name
        self.worker = config.worker
        self.replica = replica
        self.every = config.sync_every
        self.interval_s = config.sync_interval_s
        #: Events learned since the updates were last taken.
        self.unsent = 0
        #: Per input partition, the next offset this worker has not learned (the service keeps
        #: it): each update record carries it (:data:`THROUGH_HEADER`).
        self.through: dict[int, int] = {}
        #: Per input partition, the farthest ``through`` of the update records read (this
        #: worker's and its peers'): below it, the partition's learning is in the update topic.
        self.sent_through: dict[int, int] = {}
        #: Whether :attr:`sent_through` covers every record before the reader's positions: read
        #: from the topic's start, or carried by the checkpoint or snapshot started from. Then a
        #: partition it does not name has had nothing of its learning sent.
        self.reach_known = False
        #: The group generation this worker holds (the service sets it to ask its consumer):
        #: every record it sends names it.
        self.generation: Callable[[], int] = lambda: -1
        #: The update records read so far in the topic's order decide which count.
        self.fence = GenerationFence()
        #: Whether the last own record read ends its send (a kill within a split send does not).
        self._own_send_complete = True
        self._taken_at = time.monotonic()
        #: Per partition of the update topic, the next offset to read (the applied ones before it).
        self.offsets: dict[int, int] = {}
        self._reader: KafkaConsumer | None = None
        #: Sends (each of one or more records), records sent and applied, and the age (s) of the
        #: newest applied update when applied.
        self.sends = 0
        self.sent = 0
        self.applied = 0
        self.lag_s = 0.0
        #: Per peer, when (monotonic s) its last update was applied: the group's size, by which
        #: this worker's own steps are weighted (the mean of the workers' steps).
        self.peers: dict[str, float] = {}
        #: Update records read (own and peers'), e.g. after starting from a snapshot.
        self.read = 0
        #: Whether the agreed state and offsets came from a checkpoint (then no snapshot is read).
        self.restored = False
        #: The last own record whose learning the restored state holds: (incarnation, sequence)
        #: as saved in the checkpoint; ``None``: none (a fresh model, or one from a snapshot).
        #: Own records after it, read after a restart or a rollback, are applied like a peer's.
        self.kept_own: tuple[str, int] | None = None
        #: Restored from a checkpoint that predates :attr:`kept_own`: own records are all taken
        #: as held and events learned again are kept, not discarded (the older rule).
        self.legacy_own = False
        #: Own records of earlier incarnations applied (their learning was not in the state).
        self.reapplied = 0
        #: This incarnation's records every reader dropped (sent after it was expelled): its
        #: model holds learning the group does not, so it must not be checkpointed.
        self.fenced_own = 0
        #: This incarnation's own records, to know when a snapshot may be taken.
        self.own = OwnRecords()
        #: Partitions of the update topic holding a record of this incarnation already read.
        self._own_read_in: set[int] = set()
        self.snapshot_every_s = config.snapshot_every_s
        self.snapshot_topic = config.snapshot_topic_name
        #: The snapshot this worker started from, if any.
        self.started_from: Snapshot | None = None
        #: Snapshots published by this worker (manifests acknowledged).
        self.snapshots = 0
        self._snapshot_at = time.monotonic() + self.snapshot_every_s
        self._snapshot_slot = 0
        self._snapshot_producer: KafkaProducer | None = None
        #: A snapshot whose chunks are on their way: (chunk futures, manifest message, size).
        self._snapshot_pending: tuple[list, Message, int] | None = None
        self._manifest_future = None
        #: The update topic's offsets of the snapshot last sent, and of the last acknowledged.
        self._snapshot_sent_offsets: dict[int, int] = {}
        self.snapshot_offsets: dict[int, int] = {}

    # -- the reader ---------------------------------------------------------------------------

    def connect(self) -> None:
        """Read every partition of the update topic from the saved offsets (else its start)."""
        reader = make_reader(self.config, "updates")
        # Created at start-up, by this worker or another one just before: a broker may not list
        # its partitions for a moment (each call asks for the metadata again).
        deadline = time.monotonic() + TOPIC_WAIT_S
        while not (partitions := sorted(reader.partitions_for_topic(self.topic) or ())):
            if time.monotonic() > deadline:
                close_quietly(reader)
                raise RuntimeError(
                    f"update topic {self.topic} has no partitions after {TOPIC_WAIT_S:g} s "
                    "(it is created at start-up)"
                )
            time.sleep(0.2)
        assigned = [TopicPartition(self.topic, p) for p in partitions]
        reader.assign(assigned)
        beginning = reader.beginning_offsets(assigned)
        # Every record an earlier incarnation sent is before these: a snapshot waits for them.
        self.own = OwnRecords({tp.partition: o for tp, o in reader.end_offsets(assigned).items()})
        if self.snapshot_every_s and not self.restored:
            self._start_from_snapshot()
        if not self.restored and self.started_from is None:
            self.reach_known = True  # read from the topic's start
        lost = {
            tp.partition: beginning[tp]
            for tp in assigned
            if self.offsets.get(tp.partition, 0) < beginning[tp]
        }
        if lost:  # a checkpoint (or a snapshot) older than the update topic's retention
            self.reach_known = False
            log.warning(
                "update records this worker needs were deleted by the topic's retention: its video "
                "state misses them (a worker started without its checkpoint begins from the newest "
                "snapshot)",
                extra=fields(topic=self.topic, first_kept=lost, restored=self.restored),
            )
        for tp in assigned:
            reader.seek(tp, max(self.offsets.get(tp.partition, 0), beginning[tp]))
        self._reader = reader
        self._catch_up()

    def _catch_up(self) -> None:
        """Read to where the topic ended at connect, before anything is learned: the peers'
        updates the restored state lacks, and this worker's own records since, which say how far
        its learning had reached the peers before it stopped (:attr:`sent_through`)."""
        self.read_to_end(self.own.end_at_connect)
        if self.sent_through:
            log.info(
                "the update topic holds the learning of these input offsets",
                extra=fields(topic=self.topic, through=self.sent_through, own_records_applied=self.reapplied),
            )
        if not self._own_send_complete:
            log.warning(
                "this worker's last send before it stopped was cut short (at-least-once): its peers "
                "hold part of it, and the rest of that learning is taken as sent",
                extra=fields(topic=self.topic, through=self.sent_through),
            )

    def read_to_end(self, ends: dict[int, int] | None = None, timeout_s: float = 60.0) -> None:
        """Read (and apply) the update topic up to ``ends`` (per partition; default: its end
        now), so :attr:`sent_through` knows every record sent before."""
        if self._reader is None:
            return
        if ends is None:
            ends = {
                tp.partition: o for tp, o in self._reader.end_offsets(list(self._reader.assignment())).items()
            }
        deadline = time.monotonic() + timeout_s
        while any(self._positions().get(p, 0) < end for p, end in ends.items()):
            if time.monotonic() > deadline:
                log.warning(
                    "update topic not read to its end: what is learned again may be sent twice",
                    extra=fields(topic=self.topic, positions=self._positions(), end=ends),
                )
                return
            self._read(timeout_ms=200)

    def sent_before(self, partition: int, start: int, replay_until: int | None) -> int:
        """The offset of input ``partition`` below which its learning is in the update topic
        already (sent by this worker, or by the partition's previous owner), for a partition
        positioned at ``start`` (at least ``start``): the events below it that are learned
        again (replayed, or served again after a crash between a send and the poll's commit)
        update their viewers only (:meth:`relearned`): neither sent nor held twice.

        A worker that started from a snapshot without a checkpoint has not read the records
        before the snapshot: their reach comes with it (:attr:`Manifest.through`). A snapshot
        from before that field says nothing, and the whole replay (up to ``replay_until``) is
        taken as sent.
        """
        sent = self.sent_through.get(partition, start)
        blind = self.started_from is not None and self.started_from.manifest.through is None
        if blind and not self.restored and replay_until is not None:
            sent = max(sent, replay_until)
        return max(sent, start)

    def close(self) -> None:
        if self._snapshot_producer is not None:
            self._snapshot_producer.close(timeout=5)
            self._snapshot_producer = None
        close_quietly(self._reader)
        self._reader = None

    def receive(self, timeout_ms: int = 0, snapshots: bool = True) -> int:
        """Apply the peers' updates that have arrived; how many records were applied. Publishes a
        snapshot when one is due and this worker's agreed state is the updates before its reader
        (``snapshots``: between polls only, since it waits for this worker's own records)."""
        applied = self._read(timeout_ms)
        if snapshots and self.snapshot_every_s and self._reader is not None:
            self._snapshot_step()
        return applied

    def _read(self, timeout_ms: int) -> int:
        if self._reader is None:
            return 0
        applied = 0
        polled = self._reader.poll(timeout_ms=timeout_ms, max_records=1000)
        for tp, records in polled.items():
            for record in records:
                self.offsets[tp.partition] = record.offset + 1
                self.read += 1
                headers = dict(record.headers or ())
                sender = headers.get(UPDATE_HEADER, b"").decode()
                if not self.fence.admits(headers):
                    if FENCE_HEADER not in headers:
                        self._fenced_off(sender, headers, tp.partition, record.offset)
                    continue
                own = sender == self.worker
                if own:
                    self._check_name(headers, tp.partition, record.offset)
                self._note_through(headers, own=own)
                if own:
                    self.own.seen(headers)
                    if self._holds(headers):
                        continue  # its own, in this model already
                started = time.perf_counter()
                try:
                    updates = VideoUpdates.from_bytes(record.value)
                except ValueError as err:
                    log.error(
                        "unreadable video update skipped",
                        extra=fields(partition=tp.partition, offset=record.offset, error=err),
                    )
                    continue
                decoded = time.perf_counter()
                self.replica.apply(updates)
                done = time.perf_counter()
                if own:  # sent before a restart or a rollback: the peers have it, now so does this one
                    self.reapplied += 1
                    continue
                applied += 1
                self.peers[sender] = time.monotonic()
                sent_at = record.timestamp / 1000.0
                self.lag_s = max(0.0, time.time() - sent_at)
                if self.metrics is not None:
                    rows = len(updates) if updates.tables else 0  # not a record of pairs only
                    self.metrics.record_sync_applied(
                        sender, len(record.value), rows, decoded - started, done - decoded, sent_at
                    )
        self.applied += applied
        return applied

    def _check_name(self, headers: dict[str, bytes], partition: int, offset: int) -> None:
        """Stop if another live process sends under this worker's name. Records of earlier
        incarnations of a name (a worker restarted) all precede the new one's first record in
        the topic's order; a record of another incarnation after one of this incarnation's
        own was appended while both ran: two workers of one name (on two machines, say), whose
        records each would take for its own, learning and hand-overs mixed up. No clocks are
        compared, so skew between machines cannot raise it falsely."""
        incarnation = headers.get(INCARNATION_HEADER, b"").decode()
        if not incarnation or self.legacy_own:
            return
        if incarnation == self.own.incarnation:
            self._own_read_in.add(partition)
        elif partition in self._own_read_in:
            raise NameTaken(
                f"another worker of group {self.config.group_id!r} also calls itself {self.worker!r}: "
                f"its update record at {self.topic}[{partition}]@{offset} came after this worker's own. "
                "Give each worker its own --worker-id (each machine's --workers N a prefix of its own), "
                "or leave it out: each worker then gets a name of its own, kept in its checkpoint folder"
            )

    def _holds(self, headers: dict[str, bytes]) -> bool:
        """Whether this worker's model holds the learning of its own record with ``headers``:
        sent by this incarnation, or by the one whose checkpoint it restored, before that
        checkpoint. Any other own record (sent after the checkpoint by the incarnation that
        stopped or rolled back) is applied like a peer's: the peers have it, and the events it
        learned are either someone else's now or, replayed here, learned again and discarded
        (:meth:`relearned`)."""
        incarnation = headers.get(INCARNATION_HEADER, b"").decode()
        if self.legacy_own or not incarnation or incarnation == self.own.incarnation:
            return True
        kept = self.kept_own
        if kept is None or incarnation != kept[0]:
            return False
        return int(headers.get(SEQUENCE_HEADER, b"0")) <= kept[1]

    def _fenced_off(self, sender: str, headers: dict[str, bytes], partition: int, offset: int) -> None:
        """A record sent under an older generation than the last fence: its sender had been
        expelled, and the partitions' new owners relearn what it had not sent before the fence."""
        if sender == self.worker:
            self.own.seen(headers)  # this incarnation's, sent while expelled: rolled back here too
            if headers.get(INCARNATION_HEADER, b"").decode() == self.own.incarnation:
                self.fenced_own += 1
        log.warning(
            "update record dropped: sent under an older group generation, by a worker expelled since",
            extra=fields(
                sender=sender,
                generation=int(headers[GENERATION_HEADER]),
                fence=self.fence.generation,
                partition=partition,
                offset=offset,
            ),
        )
        if self.metrics is not None:
            self.metrics.record_sync_fenced(sender)

    def fence_message(self) -> Message:
        """The fence record a worker sends before it decides what to relearn of partitions it
        took over (:class:`GenerationFence`)."""
        headers = GenerationFence.fence_headers(self.worker, self.generation())
        return (self.topic, self.worker.encode(), b"", headers)

    def _note_through(self, headers: dict[str, bytes], own: bool) -> None:
        found = headers.get(THROUGH_HEADER)
        if found is None:
            return  # sent by a version that did not say
        try:
            through = Through.decode(found)
        except msgspec.DecodeError:
            log.error("unreadable through header on an update record", extra=fields(header=found))
            return
        for partition, offset in through.offsets.items():
            if offset > self.sent_through.get(partition, -1):
                self.sent_through[partition] = offset
        if own:
            self._own_send_complete = through.part + 1 >= through.parts

    # -- the sender -----------------------------------------------------------------------------

    def learned(self, events: int) -> None:
        self.unsent += events

    def filled(self) -> bool:
        """Whether ``--sync-every`` events were learned since the last send (sent mid-poll)."""
        return self.unsent >= self.every

    def due(self) -> bool:
        """Whether to send with this poll: enough events, or unsent ones waiting long enough."""
        if not self.unsent:
            return False
        return self.unsent >= self.every or time.monotonic() - self._taken_at >= self.interval_s

    def outgoing(self, force: bool = False) -> list[Message]:
        """The records of everything learned since the last send, if due (or ``force``)."""
        if not (force and self.unsent) and not self.due():
            return []
        started = time.perf_counter()
        self._weigh()
        updates = self.replica.take()
        taken = time.perf_counter()
        records = updates.records(RECORD_BUDGET)
        encoded = time.perf_counter()
        self.unsent = 0
        self._taken_at = time.monotonic()
        key, sender = self.worker.encode(), (UPDATE_HEADER, self.worker.encode())
        generation = (GENERATION_HEADER, str(self.generation()).encode())
        through = dict(self.through)
        messages = [
            (
                self.topic,
                key,
                record,
                [
                    sender,
                    generation,
                    (THROUGH_HEADER, Through(through, i, len(records)).encode()),
                    *self.own.stamp(),
                ],
            )
            for i, record in enumerate(records)
        ]
        self.sent += len(messages)
        self.sends += 1
        if self.metrics is not None:
            size = sum(len(r) for r in records)
            self.metrics.record_sync_sent(len(records), size, len(updates), taken - started, encoded - taken)
        return messages

    def absorb(self) -> None:
        """Keep everything learned since the last take as agreed, unsent (an expelled worker with
        no checkpoint to go back to keeps its learning to itself)."""
        self._weigh()
        self.replica.take()
        self.unsent = 0

    def relearned(self) -> None:
        """Everything learned since the last take was events learned again below
        :meth:`sent_before`: their learning is in the update topic, and this worker's reader
        applied it (a peer's records, or its own from before a restart or a rollback), so the
        video side of learning them again is taken back; their viewers keep it. A checkpoint
        older than that rule had its own records taken as held: then the learning is kept."""
        if self.legacy_own:
            self.absorb()
            return
        self.replica.discard()
        self.unsent = 0

    def _weigh(self) -> None:
        """This worker's steps count 1 / N, N the workers heard from lately (itself included):
        the group's steps are averaged, as the simulation found best when sends are thousands
        of events apart (``docs/scaling.md``); alone, they count in full."""
        recent = time.monotonic() - PEER_WINDOW_S
        self.replica.step_weight = 1.0 / (1 + sum(1 for at in self.peers.values() if at >= recent))

    # -- snapshots ----------------------------------------------------------------------------

    def _start_from_snapshot(self) -> None:
        """A worker with nothing saved installs the newest complete snapshot and reads the
        update topic from the offsets it covers (none: from the topic's start)."""
        model = self.replica.model
        if len(model.videos):
            return  # a model restored without its exchange state: it keeps what it learned
        started = time.perf_counter()
        try:
            snapshot = read_snapshot(self.config)
        except TimeoutError as err:
            log.error(
                "snapshot topic unreadable; reading the update topic from its start", extra=fields(error=err)
            )
            return
        if snapshot is None:
            log.info(
                "no complete snapshot; reading the update topic from its start",
                extra=fields(topic=self.snapshot_topic),
            )
            return
        for part in snapshot.parts:
            self.replica.apply(part)
        self.offsets = dict(snapshot.manifest.offsets)
        self.fence = GenerationFence(snapshot.manifest.fence)
        if snapshot.manifest.through is not None:
            self.sent_through = dict(snapshot.manifest.through)
            self.reach_known = True
        self.started_from = snapshot
        seconds = time.perf_counter() - started
        log.info(
            "started from snapshot",
            extra=fields(
                snapshot=snapshot.manifest.id,
                by=snapshot.manifest.worker,
                age_s=round(time.time() - snapshot.manifest.created, 1),
                videos=snapshot.manifest.videos,
                records=snapshot.records_read,
                bytes=snapshot.bytes_read,
                torn_skipped=len(snapshot.torn),
                update_offsets=snapshot.manifest.offsets,
                seconds=round(seconds, 3),
            ),
        )
        if self.metrics is not None:
            self.metrics.record_snapshot_restore(seconds, snapshot.records_read, snapshot.manifest.videos)

    def _snapshot_step(self) -> None:
        """Finish a snapshot on its way; start one when due, if this worker is the one to."""
        self._finish_snapshot()
        if self._snapshot_pending is not None or time.monotonic() < self._snapshot_at or not self._chosen():
            return
        # Its own records are acknowledged by now (sent before the poll's commit): give the
        # reader a moment to pass them rather than miss every moment under steady load.
        deadline = time.monotonic() + 2.0
        while not self.own.settled(self._positions()) and time.monotonic() < deadline:
            self._read(timeout_ms=100)
        positions = self._positions()
        if positions == self._snapshot_sent_offsets:  # nothing applied or sent since the last
            self._snapshot_at = time.monotonic() + self.snapshot_every_s
            return
        if not self.own.settled(positions):
            self._snapshot_at = time.monotonic() + min(5.0, self.snapshot_every_s)
            if self.metrics is not None:
                self.metrics.record_snapshot("deferred")
            return
        self.publish_snapshot(positions)

    def _positions(self) -> dict[int, int]:
        return {tp.partition: self._reader.position(tp) for tp in self._reader.assignment()}

    def _chosen(self) -> bool:
        """Whether this worker snapshots: the first by the hash of its name among itself and the
        peers heard from lately (one at a time; another takes over when it goes quiet)."""
        recent = time.monotonic() - PEER_WINDOW_S
        names = [self.worker, *(p for p, at in self.peers.items() if at >= recent)]
        return min(names, key=_rank) == self.worker

    def publish_snapshot(self, positions: dict[int, int]) -> None:
        """Send the agreed state's chunks, covering the update topic before ``positions``; the
        manifest follows once they are acknowledged (:meth:`_finish_snapshot`)."""
        if self._snapshot_producer is None:
            self._snapshot_producer = KafkaProducer(
                **self.config.kafka.client_options(),
                client_id=f"streamrec-{self.worker}-snapshots",
                acks="all",
                max_request_size=2 * RECORD_BUDGET,
            )
        updates = self.replica.snapshot()
        chunks, manifest, described = snapshot_messages(
            self.snapshot_topic,
            self.worker,
            self._snapshot_slot,
            updates,
            positions,
            RECORD_BUDGET,
            self.fence.generation,
            dict(self.sent_through),
        )
        self._snapshot_slot ^= 1
        self._snapshot_sent_offsets = dict(positions)
        producer = self._snapshot_producer
        futures = [producer.send(t, key=k, value=v, headers=h) for t, k, v, h in chunks]
        self._snapshot_pending = (futures, manifest, sum(c.size for c in described.chunks))
        self._snapshot_at = time.monotonic() + self.snapshot_every_s

    def _finish_snapshot(self) -> None:
        if self._manifest_future is not None and self._manifest_future.is_done:
            if self._manifest_future.succeeded():
                self.snapshots += 1
                self.snapshot_offsets = self._snapshot_sent_offsets
            self._manifest_future = None
        if self._snapshot_pending is None:
            return
        futures, (topic, key, value, headers), size = self._snapshot_pending
        if not all(f.is_done for f in futures):
            return
        self._snapshot_pending = None
        failed = [f.exception for f in futures if f.failed()]
        if failed:
            log.error("snapshot not published: a chunk failed", extra=fields(error=failed[0]))
            if self.metrics is not None:
                self.metrics.record_snapshot("failed")
            return
        self._manifest_future = self._snapshot_producer.send(topic, key=key, value=value, headers=headers)
        log.info("snapshot published", extra=fields(chunks=len(futures), bytes=size, topic=topic))
        if self.metrics is not None:
            self.metrics.record_snapshot("published", size)

    # -- checkpoints ------------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        recent = time.monotonic() - PEER_WINDOW_S
        peers = sorted(p for p, at in self.peers.items() if at >= recent)
        reach = (  # how far the topic's learning reaches, when known
            _as_arrays(self.sent_through, "through_partitions", "through_offsets") if self.reach_known else {}
        )
        return (
            self.replica.to_arrays()
            | _as_arrays(self.offsets, "update_partitions", "update_offsets")
            | {
                "update_topic": np.array(self.topic),
                "update_fence": np.array(self.fence.generation, dtype=np.int64),
                "peers": np.array(peers, dtype=str) if peers else np.zeros(0, dtype="<U1"),
                # Every own record up to this one is in the state saved (checkpoints hold nothing unsent).
                "own_incarnation": np.array(self.own.incarnation),
                "own_sent": np.array(self.own.sent, dtype=np.int64),
            }
            | reach
        )

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.restored = True
        self.replica.load_arrays(arrays)
        self.offsets = _as_map(arrays, "update_partitions", "update_offsets")
        if "update_fence" in arrays:  # the fence as of those offsets (absent before 2026-11-30)
            self.fence = GenerationFence(int(arrays["update_fence"]))
        if "through_partitions" in arrays:  # absent before 2026-11-30, or when not known
            self.sent_through = _as_map(arrays, "through_partitions", "through_offsets")
            self.reach_known = True
        if "own_incarnation" in arrays:  # absent before 2026-11-30
            self.kept_own = (str(arrays["own_incarnation"]), int(arrays["own_sent"]))
        else:
            self.legacy_own = True
        # The peers heard from before the checkpoint: a replay weighs its steps as they were.
        now = time.monotonic()
        self.peers = {p: now for p in arrays["peers"].tolist()} if "peers" in arrays else {}
        # A checkpoint from before 2026-12-01 does not say: the topic given then, or the default
        # then (named after the input topic alone).
        legacy = self.config.sync_topic or self.config.internal_topic("video-updates", legacy=True)
        saved = str(arrays["update_topic"]) if "update_topic" in arrays else legacy
        if saved != self.topic:
            self._start_anew(saved)

    def _start_anew(self, saved: str) -> None:
        """The checkpoint's offsets are another update topic's (renamed by ``--sync-topic`` or a
        new default): the video state restored is taken as agreed, all of it (a checkpoint
        holds nothing unsent), and this topic is read from its start, every record in it being
        newer than the checkpoint."""
        log.warning(
            "the checkpoint was exchanging updates on another topic: this worker starts on this one "
            "from the video state it restored (pass --sync-topic to keep the old one)",
            extra=fields(checkpoint_topic=saved, topic=self.topic),
        )
        self.replica.agree_all()
        self.offsets, self.sent_through, self.reach_known = {}, {}, True
        self.fence = GenerationFence()
        self.kept_own, self.legacy_own = None, False


def _as_arrays(mapping: dict[int, int], keys: str, values: str) -> dict[str, np.ndarray]:
    """A partition -> offset map as two aligned int64 arrays named ``keys`` and ``values``, for a
    checkpoint; :func:`_as_map` reads it back.

    >>> _as_map(_as_arrays({3: 30, 1: 10}, "p", "o"), "p", "o")
    {1: 10, 3: 30}
    """
    ordered = sorted(mapping)
    return {
        keys: np.array(ordered, dtype=np.int64),
        values: np.array([mapping[k] for k in ordered], dtype=np.int64),
    }


def _as_map(arrays: dict[str, np.ndarray], keys: str, values: str) -> dict[int, int]:
    return dict(zip(arrays[keys].tolist(), arrays[values].tolist(), strict=True))


def _rank(worker: str) -> bytes:
    return hashlib.blake2b(worker.encode(), digest_size=8).digest()
