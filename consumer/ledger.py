"""The offset protocol: what the model has learned, per partition, and how commits and checkpoints agree.

Every offset the service keeps, and every rule that moves one, is in :class:`OffsetLedger`.
The ledger talks neither to Kafka nor to the model: the service tells it what happened and asks
it what to do. Its guarantee: **each event is learned into the model exactly once**, across
crashes, restarts, rebalances and failed commits, provided checkpoints are on.

Two records say how far the model got: the *commit* of each partition (with this worker's name
as commit metadata) says what was published, and the *checkpoint* (the model saved with, per
partition, the next offset it has not learned) says what the saved model holds. The steps:

When partitions are assigned (:meth:`~OffsetLedger.assigned`, then :meth:`~OffsetLedger.start`):

1. The service pauses each newly assigned partition: kafka-python calls back on its IO thread,
   where reading committed offsets is not allowed. Right after the poll each one is positioned
   (records fetched before the pause are dropped and read again from there):

   a. the last commit is ours and the checkpoint covers the partition: start at the
      checkpoint's offset, and *replay* the records up to the commit learn-only (they were
      published already);
   b. the last commit is ours but no checkpoint covers it (we crashed before the first one):
      start at the beginning of the partition, replaying up to the commit: the log is the state;
   c. someone else committed last: start at their commit; those events live in their model,
      and the partition's viewers' state comes from the viewer-state changelog, read before the
      partition resumes (:mod:`consumer.changelog`). The service then checkpoints at once, so
      a crash before its next checkpoint finds one that covers the partition (else case b would
      relearn the other worker's events from the start of the log). With one model over the
      group, when the update topic holds the previous owner's learning only up to an offset
      below its commit (it was killed between two sends; or before any send naming the
      partition: then from the start of its log), start there instead and replay up to the
      commit learn-only (:meth:`~OffsetLedger.relearn`), its viewers taken back to that
      offset: that learning reaches the group, from this worker;
   d. no commit: start at the checkpoint's offset if there is one, else where
      ``auto_offset_reset`` says.

For each poll (:meth:`~OffsetLedger.open`, then :meth:`~OffsetLedger.close`; a :class:`Batch`
is one poll's records, which the service learns in smaller batches):

2. Split the poll: records below their partition's replay mark are learned only; the rest are
   tested, learned, recommended and published.
3. The poll is *open* from then until its commit is confirmed: the model holds events that no
   commit covers, so a checkpoint now would learn them twice after a restart. It is refused
   (the service waits for the answers of the commits in flight before it writes one).
4. The service sends each batch's lists as soon as the batch is learned (a poll of several
   batches: its lists once, after its last, :mod:`consumer.coalesce`), without waiting for
   the brokers; after the poll's last batch it waits until every message is acknowledged, then
   sends the commit of the next offset of each partition (:meth:`~OffsetLedger.delivered`).
   Nothing is committed whose lists are not acknowledged, and the commit goes out before the
   next poll, the only place a rebalance can move a partition, so the brokers apply it (or
   refuse it) before any partition moves. Under exactly-once, the messages and the offsets
   commit in one transaction, begun by the poll's first message, before the next poll.
5. Committed: the brokers' answer arrives during the next poll (or the transaction is
   committed); each partition's learned offset moves to its commit, and the poll is closed
   (:meth:`~OffsetLedger.confirmed`, :meth:`~OffsetLedger.close`). The answer is read right
   after that poll, before newly assigned partitions are positioned (step 1).
6. The commit failed (``CommitFailedError``: the group moved on without us, after a rebalance
   or a session that expired while the brokers were away): :meth:`~OffsetLedger.rollback`.
   The poll's partitions may be someone else's now, and the last checkpoint is the newest
   state that agrees with the commits: offsets and counts go back to it (so does the model),
   and the next poll rejoins the group and positions each partition by step 1. Without
   checkpoints nothing is rolled back, and that poll may be learned twice.

Checkpoints (:meth:`~OffsetLedger.due`, :meth:`~OffsetLedger.to_checkpoint`,
:meth:`~OffsetLedger.checkpointed`, :meth:`~OffsetLedger.restored`):

7. A checkpoint is due once something was learned since the last one and ``every_events``
   events or ``every_seconds`` seconds have passed; the service also writes one when
   partitions are revoked (every poll is closed by then, so the checkpoint agrees with the
   commits) and when it stops.
8. It saves the model with :attr:`~OffsetLedger.learned` and the count of events learned;
   restoring one sets both back, and replay (step 1a) brings the model up to the commits.

>>> from kafka.structs import OffsetAndMetadata, TopicPartition
>>> ledger = OffsetLedger("w1", checkpoints=True, every_events=100, every_seconds=30.0)
>>> tp = TopicPartition("watch", 0)
>>> ledger.learned = {tp: 40}                               # restored: the model holds 0..39
>>> ours = OffsetAndMetadata(70, ledger.metadata, -1)       # we had published up to 69
>>> ledger.start(tp, ours, beginning=lambda: 0)
Start(offset=40, source='checkpoint', replay_until=70)

"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from kafka.structs import OffsetAndMetadata, TopicPartition

from consumer.checkpoint import Checkpoint, Offsets

__all__ = ["OffsetLedger", "Batch", "Start"]


class Start(NamedTuple):
    """Where a newly assigned partition starts: ``offset`` (``None``: as ``auto_offset_reset``
    says), why (``source``), and the offset below which records are replayed learn-only."""

    offset: int | None
    source: str
    replay_until: int | None


@dataclass(frozen=True)
class Batch:
    """One poll split by the ledger: records to learn only, records to serve, offsets to commit
    (the poll's records; the service learns them in batches of ``max_batch_events``)."""

    replay: list
    live: list
    offsets: dict[TopicPartition, OffsetAndMetadata]
    consumed: int


class OffsetLedger:
    """Per partition, what the model has learned; what is replayed, open, and due (see the module).

    ``worker`` names this worker in commit metadata; ``checkpoints`` says whether a checkpoint
    store exists (without one, a restart starts from an empty model and nothing rolls back).
    """

    def __init__(self, worker: str, checkpoints: bool, every_events: int, every_seconds: float) -> None:
        self.metadata = f"streamrec:{worker}"
        self.checkpoints = checkpoints
        self.every_events = every_events
        self.every_seconds = every_seconds
        #: Per partition, the next offset the in-memory model has not learned.
        self.learned: dict[TopicPartition, int] = {}
        #: Per partition, offsets below this are replayed learn-only (already published).
        self.replay_until: dict[TopicPartition, int] = {}
        #: Events learned into the current model state, across restarts (restored from checkpoints).
        self.events = 0
        #: Events learned since the last checkpoint.
        self.unsaved = 0
        #: True between learning a poll and sending its commit (step 3).
        self.is_open = False
        #: Polls whose commit was sent but not confirmed yet, oldest first (step 4).
        self.unconfirmed: list[Batch] = []
        self._pending: set[TopicPartition] = set()
        self._last_checkpoint = time.monotonic()

    # -- step 1: assignment ------------------------------------------------------------------

    def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions just assigned (and paused by the service): positioned after the next poll."""
        self._pending.update(partitions)

    def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions taken away before they were positioned are forgotten."""
        self._pending.difference_update(partitions)

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def take_pending(self, assignment: Iterable[TopicPartition]) -> set[TopicPartition]:
        """The pending partitions still assigned, to position now; none is pending after this."""
        pending, self._pending = self._pending & set(assignment), set()
        return pending

    def start(
        self, tp: TopicPartition, committed: OffsetAndMetadata | None, beginning: Callable[[], int]
    ) -> Start:
        """Where ``tp`` starts, from its last commit and the checkpoint (step 1, cases a to d).

        ``beginning()`` is the partition's first offset, asked for only in case b.
        """
        learned = self.learned.get(tp)
        ours = committed is not None and committed.metadata == self.metadata
        if ours and learned is None and self.checkpoints:
            learned = beginning()  # b: no checkpoint covers our commit: relearn the log
        if ours and learned is not None:  # a (and b)
            if learned < committed.offset:
                self.replay_until[tp] = committed.offset
            return Start(learned, "checkpoint", self.replay_until.get(tp))
        if committed is not None:  # c
            self.learned[tp] = committed.offset
            return Start(committed.offset, "committed", self.replay_until.get(tp))
        if learned is not None:  # d, with a checkpoint
            return Start(learned, "checkpoint", self.replay_until.get(tp))
        return Start(None, "auto_offset_reset", self.replay_until.get(tp))

    def relearn(self, tp: TopicPartition, offset: int) -> Start:
        """Case c when the previous owner's learning reached its peers only up to ``offset``,
        below its commit (it was killed between two sends): start at ``offset`` and replay up
        to the commit learn-only, so that learning is not lost to the group."""
        committed = self.learned[tp]
        self.learned[tp] = offset
        self.replay_until[tp] = committed
        return Start(offset, "committed", committed)

    # -- steps 2 to 6: one batch -------------------------------------------------------------

    def open(self, polled: dict[TopicPartition, list]) -> Batch:
        """Split ``polled`` into replayed and live records (step 2) and open the poll (step 3)."""
        self.is_open = True
        replay, live = [], []
        for tp, records in polled.items():
            until = self.replay_until.get(tp)
            if until is None:
                live.extend(records)
                continue
            for r in records:
                (replay if r.offset < until else live).append(r)
            if records[-1].offset + 1 >= until:
                del self.replay_until[tp]
        offsets = {
            tp: OffsetAndMetadata(records[-1].offset + 1, self.metadata, -1) for tp, records in polled.items()
        }
        return Batch(replay, live, offsets, sum(len(r) for r in polled.values()))

    def count(self, events: int) -> None:
        """``events`` more were learned into the model."""
        self.events += events
        self.unsaved += events

    def close(self, batch: Batch) -> None:
        """The poll's offsets are committed (step 5)."""
        for tp, committed in batch.offsets.items():
            self.learned[tp] = committed.offset
        self.is_open = False

    def delivered(self, batch: Batch) -> None:
        """The poll's lists are acknowledged and its commit is sent, not confirmed (step 4)."""
        self.is_open = False
        self.unconfirmed.append(batch)

    def confirmed(self, polls: int) -> None:
        """The oldest ``polls`` delivered polls are committed (step 5)."""
        for _ in range(polls):
            self.close(self.unconfirmed.pop(0))

    @property
    def settled(self) -> bool:
        """No poll is open and every commit is confirmed: the model agrees with the commits."""
        return not self.is_open and not self.unconfirmed

    def rollback(self) -> None:
        """The poll's commit failed (step 6): back to an empty ledger, for the last checkpoint."""
        self.is_open = False
        self.unconfirmed = []
        if self.checkpoints:
            self.learned, self.replay_until = {}, {}
            self.events = self.unsaved = 0

    # -- steps 7 and 8: checkpoints ------------------------------------------------------------

    def due(self) -> bool:
        """Whether a checkpoint is due now (step 7)."""
        if not self.checkpoints or self.unsaved == 0:
            return False
        waited = time.monotonic() - self._last_checkpoint
        return waited >= self.every_seconds or self.unsaved >= self.every_events

    def to_checkpoint(self) -> Offsets | None:
        """The offsets a checkpoint of the model now covers; ``None`` while a poll is open or a
        commit is not confirmed."""
        if not self.settled:
            return None
        return {(tp.topic, tp.partition): offset for tp, offset in self.learned.items()}

    def checkpointed(self) -> None:
        self.unsaved = 0
        self._last_checkpoint = time.monotonic()

    def restored(self, checkpoint: Checkpoint) -> None:
        """The model was restored from ``checkpoint`` (step 8)."""
        self.events = checkpoint.events_learned
        self.learned = {TopicPartition(t, p): o for (t, p), o in checkpoint.offsets.items()}
