"""The update topic: the workers of a group share one model's video state (issue 12).

Each worker learns from its own partitions' viewers. Its video updates (:mod:`model.replica`)
go to the update topic (``--sync-topic``, by default ``<input topic>-video-updates``) once it has
learned ``--sync-every`` events since it last sent, or ``--sync-interval-s`` has passed with some
unsent, in the poll whose offsets they belong to: acknowledged before the poll's offsets are
committed, or in its transaction with ``--exactly-once``. Every worker reads the whole topic
(assigned every partition, no group), skips its own records and applies its peers', before
each poll's batches. The reader's offsets and the agreed video state are in every checkpoint,
so a restarted worker applies exactly the peers' updates its restored model lacks, and
replayed events (whose updates went out before the crash) are taken as agreed, not sent again.

A worker that joins later reads the topic from its start: the updates add up to the group's
video state, because every video starts from its id. The topic keeps everything
(``retention.ms=-1``) until snapshots exist to start from (``docs/scaling.md``).

>>> UPDATE_HEADER
'streamrec.worker'
"""

from __future__ import annotations

import logging
import time

import numpy as np
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from consumer.clients import close_quietly
from consumer.config import ServiceConfig
from consumer.logs import fields
from consumer.publish import Message
from model.replica import VideoReplica, VideoUpdates

__all__ = ["UpdateExchange", "UPDATE_HEADER", "RECORD_BUDGET"]

log = logging.getLogger(__name__)

#: The header naming the worker that sent an update record (its own are skipped).
UPDATE_HEADER = "streamrec.worker"
#: Bytes per update record: under the 1 MB a Kafka producer and broker accept by default.
RECORD_BUDGET = 900_000
#: A peer whose last update applied is older than this no longer counts in the group's size.
PEER_WINDOW_S = 60.0


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
        self._taken_at = time.monotonic()
        #: Per partition of the update topic, the next offset to read (the applied ones before it).
        self.offsets: dict[int, int] = {}
        self._reader: KafkaConsumer | None = None
        #: Records sent and applied, and the age (s) of the newest applied update when applied.
        self.sent = 0
        self.applied = 0
        self.lag_s = 0.0
        #: Per peer, when (monotonic s) its last update was applied: the group's size, by which
        #: this worker's own steps are weighted (the mean of the workers' steps).
        self.peers: dict[str, float] = {}

    # -- the reader ---------------------------------------------------------------------------

    def connect(self) -> None:
        """Read every partition of the update topic from the saved offsets (else its start)."""
        reader = KafkaConsumer(
            **self.config.kafka.client_options(),
            client_id=f"streamrec-{self.worker}-updates",
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=16 * 1024 * 1024,
        )
        partitions = sorted(reader.partitions_for_topic(self.topic) or ())
        if not partitions:
            close_quietly(reader)
            raise RuntimeError(f"update topic {self.topic} has no partitions (it is created at start-up)")
        assigned = [TopicPartition(self.topic, p) for p in partitions]
        reader.assign(assigned)
        beginning = reader.beginning_offsets(assigned)
        for tp in assigned:
            reader.seek(tp, max(self.offsets.get(tp.partition, 0), beginning[tp]))
        self._reader = reader

    def close(self) -> None:
        close_quietly(self._reader)
        self._reader = None

    def receive(self, timeout_ms: int = 0) -> int:
        """Apply the peers' updates that have arrived; how many records were applied."""
        if self._reader is None:
            return 0
        applied = 0
        polled = self._reader.poll(timeout_ms=timeout_ms, max_records=1000)
        for tp, records in polled.items():
            for record in records:
                self.offsets[tp.partition] = record.offset + 1
                sender = dict(record.headers or ()).get(UPDATE_HEADER, b"").decode()
                if sender == self.worker:
                    continue  # its own: in this model already (or relearned by the replay)
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

    # -- the sender -----------------------------------------------------------------------------

    def learned(self, events: int) -> None:
        self.unsent += events

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
        key, headers = self.worker.encode(), [(UPDATE_HEADER, self.worker.encode())]
        messages = [(self.topic, key, record, headers) for record in records]
        self.sent += len(messages)
        if self.metrics is not None:
            size = sum(len(r) for r in records)
            self.metrics.record_sync_sent(len(records), size, len(updates), taken - started, encoded - taken)
        return messages

    def absorb(self) -> None:
        """Events just replayed learn-only: their updates went out before the restart, weighted
        as they are weighted now; what is learned again is kept at that weight, not sent."""
        self._weigh()
        self.replica.take()
        self.unsent = 0

    def _weigh(self) -> None:
        """This worker's steps count 1 / N, N the workers heard from lately (itself included):
        the group's steps are averaged, as the simulation found best when sends are thousands
        of events apart (``docs/scaling.md``); alone, they count in full."""
        recent = time.monotonic() - PEER_WINDOW_S
        self.replica.step_weight = 1.0 / (1 + sum(1 for at in self.peers.values() if at >= recent))

    # -- checkpoints ------------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        partitions = sorted(self.offsets)
        recent = time.monotonic() - PEER_WINDOW_S
        peers = sorted(p for p, at in self.peers.items() if at >= recent)
        return self.replica.to_arrays() | {
            "update_partitions": np.array(partitions, dtype=np.int64),
            "update_offsets": np.array([self.offsets[p] for p in partitions], dtype=np.int64),
            "peers": np.array(peers, dtype=str) if peers else np.zeros(0, dtype="<U1"),
        }

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.replica.load_arrays(arrays)
        partitions = arrays["update_partitions"].tolist()
        self.offsets = dict(zip(partitions, arrays["update_offsets"].tolist(), strict=True))
        # The peers heard from before the checkpoint: a replay weighs its steps as they were.
        now = time.monotonic()
        self.peers = {p: now for p in arrays["peers"].tolist()} if "peers" in arrays else {}


def update_topic_configs() -> dict[str, str]:
    """The update topic keeps every record: the updates add up to the group's video state."""
    return {"retention.ms": "-1", "cleanup.policy": "delete"}
