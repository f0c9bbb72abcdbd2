"""Snapshots of the group's video state: where a worker without a checkpoint starts (issue 12).

A worker that joins a syncing group with nothing saved would otherwise read the whole update
topic (:mod:`consumer.sync`) to rebuild the video state. Instead, one worker now and then
publishes its *agreed* video state (:meth:`model.replica.VideoReplica.snapshot`) to a compacted
snapshot topic (``--snapshot-topic``, by default ``<update topic>-snapshots``), with a manifest
naming the chunks and **the update topic's offsets the snapshot covers**; a new worker installs
the newest complete snapshot and reads the update topic from those offsets.

**Why the snapshot equals the updates before its offsets.** A worker's agreed state is the
videos' starts plus (a) every peer record its reader has applied, which are exactly the peer
records before the reader's positions, plus (b) every record it sent itself (taken as agreed
when taken), plus (c) after a restart, the records an earlier incarnation sent: those its
checkpoint holds, and the later ones its reader applied. Nothing learned and not yet taken is
in it (the replica keeps the agreed copy apart, and the noted co-occurrence counts are
subtracted). So the agreed state is the sum of the records
before the reader's positions exactly when every record of (b) and (c) is behind them too:

- (c): every record an earlier incarnation sent was in the topic when this one connected, so
  the reader must have reached the topic's end offsets as they were at connection;
- (b): each record sent carries this incarnation's id and a sequence number in its headers;
  the reader notes the own ones it passes, and the snapshot waits until it has passed the last
  one sent (with ``--exactly-once`` a record is read only once its transaction commits; an
  aborted one rolls the worker back to a checkpoint, which starts a new incarnation).

:class:`OwnRecords` is that rule; a snapshot is deferred while it does not hold. This
incarnation's own records are never applied by its reader, so whether they are behind it is the
only question; peer records
behind it are applied (or skipped as unreadable, as a reader starting from the snapshot skips
them too). With video expiry on, a video this worker expired is not in its snapshot (nor in its
agreed state); the group's replicas differ in expired videos anyway.

**Keys and torn snapshots.** Chunks are keyed ``chunk/<worker>/<slot>/<i>`` and carry the
snapshot's id in a header; the manifest, keyed ``manifest/<worker>/<slot>``, is sent only once
every chunk is acknowledged. Each worker alternates two slots, so compaction keeps its newest
and its previous snapshot whole while the next is written over the older. A reader takes the
newest manifest whose chunks are all present with its id and checksum; a torn one (a chunk
missing, compacted away or from another snapshot) is logged and the previous one is tried; with
none, the worker reads the update topic from its start (which must then still hold everything).

>>> manifest = Manifest("s1", "w", 1.0, {0: 12}, [ChunkRef("chunk/w/0/0", 3, zlib.crc32(b"abc"))], 1)
>>> Manifest.from_bytes(manifest.to_bytes()) == manifest
True
>>> found = newest_complete({b"manifest/w/0": (manifest.to_bytes(), "s1"), b"chunk/w/0/0": (b"abc", "s1")})
>>> found[0].id, found[1], found[2]
('s1', [b'abc'], [])
"""

from __future__ import annotations

import json
import logging
import time
import uuid
import zlib
from dataclasses import asdict, dataclass, field

from kafka.structs import TopicPartition

from consumer.clients import close_quietly, make_reader
from consumer.config import ServiceConfig
from consumer.logs import fields
from consumer.publish import Message
from model.replica import VideoUpdates

__all__ = [
    "ChunkRef",
    "Manifest",
    "OwnRecords",
    "Snapshot",
    "SNAPSHOT_HEADER",
    "newest_complete",
    "read_snapshot",
    "snapshot_messages",
]

log = logging.getLogger(__name__)

#: The header naming the snapshot a chunk belongs to.
SNAPSHOT_HEADER = "streamrec.snapshot"
#: The headers of an update record: this incarnation's id and the record's sequence number.
INCARNATION_HEADER = "streamrec.incarnation"
SEQUENCE_HEADER = "streamrec.seq"
_FORMAT = "streamrec.video-snapshot/1"


@dataclass(frozen=True)
class ChunkRef:
    key: str
    size: int
    crc32: int


@dataclass(frozen=True)
class Manifest:
    """One snapshot: its chunks, and per partition of the update topic the first offset it does
    not cover (the update topic is read from there)."""

    id: str
    worker: str
    created: float
    offsets: dict[int, int]
    chunks: list[ChunkRef]
    videos: int
    #: The generation fence as of ``offsets`` (:class:`consumer.sync.GenerationFence`): a reader
    #: starting there drops the records its peers drop.
    fence: int = -1
    #: Per input partition, the offset the learning of the update records before ``offsets``
    #: reaches (:attr:`consumer.sync.UpdateExchange.sent_through` as of them); ``None`` in a
    #: manifest from before 2026-11-30. A worker starting from the snapshot knows from it what
    #: of its replay the group has, instead of taking the whole replay as sent.
    through: dict[int, int] | None = None

    def to_bytes(self) -> bytes:
        body = asdict(self) | {"format": _FORMAT, "offsets": {str(p): o for p, o in self.offsets.items()}}
        if self.through is not None:
            body["through"] = {str(p): o for p, o in self.through.items()}
        return json.dumps(body).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """``ValueError`` for anything that is not a manifest of this format."""
        try:
            body = json.loads(data)
            through = body.get("through")  # absent in manifests before 2026-11-30
            if body.get("format") != _FORMAT:
                raise ValueError(f"format {body.get('format')!r}")
            return cls(
                id=str(body["id"]),
                worker=str(body["worker"]),
                created=float(body["created"]),
                offsets={int(p): int(o) for p, o in body["offsets"].items()},
                chunks=[ChunkRef(str(c["key"]), int(c["size"]), int(c["crc32"])) for c in body["chunks"]],
                videos=int(body["videos"]),
                fence=int(body.get("fence", -1)),  # absent in manifests before 2026-11-30
                through={int(p): int(o) for p, o in through.items()} if through is not None else None,
            )
        except (TypeError, KeyError, AttributeError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"not a snapshot manifest: {err}") from None


def snapshot_messages(
    topic: str,
    worker: str,
    slot: int,
    updates: VideoUpdates,
    offsets: dict[int, int],
    budget: int,
    fence: int = -1,
    through: dict[int, int] | None = None,
) -> tuple[list[Message], Message, Manifest]:
    """The chunk records of ``updates`` (each within ``budget`` bytes) and the manifest record
    to send once they are all acknowledged; ``fence``: the generation fence as of ``offsets``,
    ``through``: how far the learning of the records before them reaches (:attr:`Manifest.through`)."""
    snapshot_id = uuid.uuid4().hex
    values = updates.records(budget)
    headers = [(SNAPSHOT_HEADER, snapshot_id.encode())]
    refs = [ChunkRef(f"chunk/{worker}/{slot}/{i}", len(v), zlib.crc32(v)) for i, v in enumerate(values)]
    chunks = [(topic, ref.key.encode(), value, headers) for ref, value in zip(refs, values, strict=True)]
    manifest = Manifest(snapshot_id, worker, time.time(), dict(offsets), refs, len(updates), fence, through)
    return chunks, (topic, f"manifest/{worker}/{slot}".encode(), manifest.to_bytes(), headers), manifest


def newest_complete(
    latest: dict[bytes, tuple[bytes | None, str]], report: bool = True
) -> tuple[Manifest, list[bytes], list[tuple[Manifest, str]]] | None:
    """From the topic's latest value and snapshot header per key, the newest manifest (the
    most updates covered, then the latest made) whose chunks are all there (its id, its size
    and checksum), its chunks, and the newer torn ones with why (each logged if ``report``);
    ``None`` when there is no complete one."""
    manifests, torn = [], []
    for key, (value, _) in latest.items():
        if key.startswith(b"manifest/") and value is not None:
            try:
                manifests.append(Manifest.from_bytes(value))
            except ValueError as err:
                if report:
                    log.warning(
                        "unreadable snapshot manifest skipped", extra=fields(key=key.decode(), error=err)
                    )
    for manifest in sorted(manifests, key=lambda m: (sum(m.offsets.values()), m.created), reverse=True):
        chunks, problem = [], ""
        for ref in manifest.chunks:
            value, owner = latest.get(ref.key.encode(), (None, ""))
            if value is None:
                problem = f"chunk {ref.key} missing"
            elif owner != manifest.id:
                problem = f"chunk {ref.key} belongs to another snapshot"
            elif len(value) != ref.size or zlib.crc32(value) != ref.crc32:
                problem = f"chunk {ref.key} damaged"
            if problem:
                break
            chunks.append(value)
        if not problem:
            return manifest, chunks, torn
        torn.append((manifest, problem))
        if report:
            log.warning(
                "torn snapshot skipped",
                extra=fields(snapshot=manifest.id, by=manifest.worker, problem=problem),
            )
    return None


@dataclass
class Snapshot:
    """A complete snapshot read from the topic: its manifest and decoded chunks, and what
    reading it took."""

    manifest: Manifest
    parts: list[VideoUpdates]
    records_read: int
    bytes_read: int
    seconds: float
    torn: list[tuple[Manifest, str]] = field(default_factory=list)


def read_snapshot(config: ServiceConfig, timeout_s: float = 30.0, window: int = 8) -> Snapshot | None:
    """The newest complete snapshot of the snapshot topic (``None``: none, or no topic).

    The topic is read from its end backwards, ``window`` records at first and four times as
    many each time the newest snapshot is not whole within them: a suffix of the log holds the
    latest value of every key in it, and the newest snapshot sits at the end (its chunks just
    before its manifest), so a reader does not read the older snapshots compaction has not yet
    removed. A torn snapshot newer than the one found sends it to the topic's start."""
    started = time.perf_counter()
    reader = make_reader(config, "snapshots", isolation_level="read_uncommitted")
    records = size = 0
    deadline = time.monotonic() + timeout_s
    try:
        partitions = sorted(reader.partitions_for_topic(config.snapshot_topic_name) or ())
        if not partitions:
            return None
        assigned = [TopicPartition(config.snapshot_topic_name, p) for p in partitions]
        reader.assign(assigned)
        first, end = reader.beginning_offsets(assigned), reader.end_offsets(assigned)
        while True:
            latest: dict[bytes, tuple[bytes | None, str]] = {}
            for tp in assigned:
                reader.seek(tp, max(first[tp], end[tp] - window))
            whole = all(end[tp] - window <= first[tp] for tp in assigned)
            while any(reader.position(tp) < end[tp] for tp in assigned):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"reading {config.snapshot_topic_name} took over {timeout_s} s")
                for batch in reader.poll(timeout_ms=500).values():
                    for record in batch:
                        if record.offset >= end[TopicPartition(record.topic, record.partition)]:
                            continue  # written since: the next reader's
                        owner = dict(record.headers or ()).get(SNAPSHOT_HEADER, b"").decode()
                        latest[record.key or b""] = (record.value, owner)
                        records += 1
                        size += len(record.value or b"")
            found = newest_complete(latest, report=whole)
            if whole or (found is not None and not found[2]):
                break
            window *= 4
    finally:
        close_quietly(reader)
    if found is None:
        return None
    manifest, chunks, torn = found
    parts = [VideoUpdates.from_bytes(c) for c in chunks]
    return Snapshot(manifest, parts, records, size, time.perf_counter() - started, torn)


class OwnRecords:
    """Whether every update record this worker sent is behind its reader's positions: the
    moment its agreed state is the sum of the update topic's records before them (see the
    module docstring).

    >>> own = OwnRecords(end_at_connect={0: 5})
    >>> headers = own.stamp()  # a record sent
    >>> own.settled({0: 7})    # the reader is past the start-up end, not past the own record
    False
    >>> own.seen(headers); own.settled({0: 7})
    True
    """

    def __init__(self, end_at_connect: dict[int, int] | None = None) -> None:
        self.incarnation = uuid.uuid4().hex
        self.end_at_connect = dict(end_at_connect or {})
        self.sent = 0
        self.passed = 0

    def stamp(self) -> list[tuple[str, bytes]]:
        """The headers of the next record sent."""
        self.sent += 1
        return [(INCARNATION_HEADER, self.incarnation.encode()), (SEQUENCE_HEADER, str(self.sent).encode())]

    def seen(self, headers: list[tuple[str, bytes]] | dict) -> None:
        """The reader passed one of this worker's records."""
        h = dict(headers)
        if h.get(INCARNATION_HEADER, b"").decode() == self.incarnation:
            self.passed = max(self.passed, int(h.get(SEQUENCE_HEADER, b"0")))

    def settled(self, positions: dict[int, int]) -> bool:
        """``positions``: the reader's next offset per partition."""
        caught_up = all(positions.get(p, 0) >= end for p, end in self.end_at_connect.items())
        return caught_up and self.passed >= self.sent
