"""The streamrec service: watch events in, learning, fresh recommendations out.

One poll reads like the data flow (:meth:`StreamrecService.process`)::

    poll -> for each batch of the poll:
                decode (bad records -> dead letters) -> test then learn (score before
                learning: live quality) -> recommend for the batch's viewers -> send
         -> wait for every acknowledgement, commit the poll's offsets -> checkpoint when due

Three objects keep the promises below, each in its own module: :class:`consumer.ledger.OffsetLedger`
(which offsets the model has learned, replay after a restart, when a checkpoint is due, rollback),
:class:`consumer.publish.Publisher` (outputs and commits, acknowledged or transactional) and
:class:`consumer.checkpoint.CheckpointStore` (atomic, verified checkpoints). The service only asks
a model for what every model offers (:class:`model.base.StreamRanker`): the batched paths,
``stats()``, ``clock``, ``video_counts()``, ``viewer_ttl``, ``save`` and ``load``.

Batches follow the load
-----------------------
A poll takes what has arrived, without waiting for more: a caught-up service gets the few
events that came in since its last poll and answers them at once (no timer runs out first: the
poll returns as soon as a fetch brings records, and the producer's linger is cut short by the
flush at the end of the poll). A service that is behind takes more per poll, which spreads the
commit over more events, up to two bounds: ``max_poll_records``, and the number of events it
processes in ``poll_budget_ms`` by its measured cost (per event, and per poll for the
acknowledgements and the commit), so an event that arrives during a poll waits about that long
for its turn however far behind the service is. A poll is learned in batches of at most
``max_batch_events`` (256, ``streamrec evaluate``'s batch, so the live quality reads like the
offline figure); each batch's lists are sent as soon as they are made and travel while the next
batch is learned; but a poll of several batches that is behind (its newest event older than
``poll_budget_ms``) makes its lists once, after its last batch, one per viewer (``lists_per``,
:mod:`consumer.coalesce`): a viewer's earlier lists would be overwritten within the poll, and
one ranking call for the poll costs less than one per batch. The offsets of a poll are
committed once every list of it is acknowledged.

Where the time goes is counted per stage (:data:`consumer.metrics.STAGES`) in
:attr:`StreamrecService.stage_seconds` and the ``streamrec_stage_seconds_total`` metric.

Records that cannot be read
---------------------------
An error that would come back on the same offset at every restart must not become a crash loop.
A record whose value cannot be used (malformed, invalid, or one that breaks the decoder) is
dead-lettered. A record batch that kafka-python itself cannot read (a codec it has no library
for, a batch that fails its checksum) cannot be: its records never reach the service. Then the
service stops with one message that names the partition, the offset and what to do
(:class:`UnreadableRecords`), after a clean checkpoint, without committing past it.

Delivery and learning guarantees
--------------------------------
* **Outputs and offsets.** By default, recommendations and dead letters are acknowledged by the
  brokers (``acks=all``) *before* the poll's offsets are committed: at-least-once. A crash
  between the two republishes a poll's lists; each is an overwrite of the same viewer key, so a
  compacted topic and any reader that keeps the latest list per viewer see no difference. With
  ``exactly_once``, outputs and offsets commit in one Kafka transaction per poll and readers
  that use ``isolation_level=read_committed`` see each list once.
* **Learning.** The model learns each event exactly once across crashes and restarts. A
  checkpoint stores the model together with, per partition, the next offset it has *not*
  learned. Offsets are committed with this worker's name as commit metadata. When a partition is
  assigned and its last commit is ours, the service resumes from the checkpoint's offset and
  *replays* the events up to the committed offset learn-only (they were already published),
  then continues normally; with no checkpoint yet (a crash before the first one), it replays
  from the start of the partition, since the log is the state. When someone else committed
  last, that worker learned those events, so we start at the committed offset. A commit the
  group refuses (``CommitFailedError``) rolls the model back to the last checkpoint. Every poll
  is committed before the next one, where rebalances happen, so no partition moves with lists in
  flight. The steps, numbered, are in :mod:`consumer.ledger`.
* **Viewers across a move.** After each poll, the state of every viewer it touched (each arm's
  history and watched videos, the list last shown, the online counts) goes to the viewer-state
  changelog with the poll's lists, before its offsets are committed. When a partition comes
  from another worker, its viewers are restored from there before its first event
  (:mod:`consumer.changelog`), so their lists go on excluding what they watched.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.errors import CommitFailedError, CorruptRecordError, KafkaError, UnsupportedCodecError
from kafka.structs import TopicPartition

from consumer.arms import Arm, Arms
from consumer.backoff import Interrupted, retry
from consumer.changelog import ViewerChangelog, install, rewind, watches_between
from consumer.checkpoint import Checkpoint, CheckpointStore, LocalCheckpointStore, WorkerClaim, claim_worker
from consumer.clients import close_abandoned, close_quietly, connect, fetched_to, make_producer
from consumer.coalesce import ListCoalescer, behind, every_viewer
from consumer.config import DEFAULT_MODEL, ServiceConfig
from consumer.intake import DeadLetter, Intake, decode
from consumer.ledger import Batch, OffsetLedger, Start
from consumer.logs import fields
from consumer.metrics import SHADOW_ARM, STAGES, popularity_percentiles
from consumer.outputs import MAX_RECORD_BYTES, dead_letter_record, recommendation_values
from consumer.publish import Message, Publisher, TransactionAborted, fenced
from consumer.sync import NameTaken, UpdateExchange
from contract.errors import UserError
from contract.events import WatchEvent
from model.base import ModelStats, Ranking, Recommendation, StreamRanker
from model.evaluate import BatchQuality, StreamingEvaluator
from model.expiring import ExpiringDict
from model.ids import packed_ids, saved_ids
from model.npz import read_npz, write_npz
from model.persist import settings_of_instance
from model.replica import VideoReplica

__all__ = ["StreamrecService", "Answer", "MODEL_FILE", "UnreadableRecords"]

log = logging.getLogger(__name__)

#: The served model's file in a checkpoint; a shadow's is named after the shadow (``<name>.npz``).
MODEL_FILE = "model.npz"


#: The experiment's readout state in a checkpoint (with more than one arm).
EXPERIMENT_FILE = "experiment.npz"
#: The agreed video state and the update topic's offsets, with ``sync_every`` (consumer.sync).
REPLICA_FILE = "replica.npz"

#: Errors of kafka-python's poll that the same offset raises again at every restart.
UNREADABLE = (UnsupportedCodecError, CorruptRecordError)
#: Polls that may meet a checksum error before the service stops (a corrupted transfer reads
#: well when fetched again; a corrupted log does not).
CORRUPT_POLLS = 3


def freeze_start_up() -> None:
    """Leave what start-up made out of every later garbage collection (``gc.freeze``).

    Importing numba, numpy, kafka-python and the model leaves about 150,000 objects that live
    as long as the process. Python's full collections walk all of them: 30-70 ms each here,
    a stall of the loop (and of every list's freshness) whenever the objects made since the
    last one reach a quarter of the old ones.
    Frozen, they are no longer walked (reference counting still frees what is dropped); what
    the service makes afterwards (ids, lists shown) is collected as before.
    """
    gc.collect()
    gc.freeze()


class UnreadableRecords(UserError):
    """kafka-python cannot read a record batch: the service stops instead of looping on it."""


class Online(NamedTuple):
    """Of one arm's viewers' events in a batch: those whose viewer had a list published before
    (``shown``), those watched from it (``hits``), their watch seconds, and what the batch added
    to the per-viewer sums of the readout's variance (:class:`consumer.experiment.Counts`)."""

    shown: int
    hits: int
    shown_watch: float
    hit_watch: float
    shown_squares: int
    hit_squares: int
    products: int
    viewers: int


class Tested(NamedTuple):
    """What the test step found before the batch was learned, for the live metrics."""

    #: Per arm that learned the batch: its ranking of the events it learned, and their quality.
    arms: dict[str, tuple[Ranking, BatchQuality]]
    shadow_quality: BatchQuality | None
    #: Per arm, the online hit counts of its viewers' events.
    online: dict[str, Online]


class Recommended(NamedTuple):
    """Fresh lists for the batch's viewers, as messages, when they were made, and the Kafka
    timestamps of the events they answer (for the freshness metric)."""

    messages: list[Message]
    generated_at: float
    produced_at: list[float]


class Answer(NamedTuple):
    """What one batch of records comes to: the messages to publish (lists, dead letters), and
    what the metrics are made of."""

    messages: list[Message]
    intake: Intake
    tested: Tested | None
    recommended: Recommended | None


class Measured(NamedTuple):
    """One served batch, for the metrics: recorded with the rest of its poll once delivered."""

    consumed: int
    intake: Intake
    tested: Tested | None
    recommended: Recommended | None
    seconds: float


class _Rebalance(ConsumerRebalanceListener):
    """Forwards kafka-python's rebalance callbacks to the service (they must stay quick)."""

    def __init__(self, service: StreamrecService) -> None:
        self.service = service

    def on_partitions_revoked(self, revoked):
        self.service._on_revoked(revoked)

    def on_partitions_assigned(self, assigned):
        self.service._on_assigned(assigned)

    def on_partitions_lost(self, lost):
        self.service._on_lost(lost)


class StreamrecService:
    """One worker of a consumer group: learns from its partitions and publishes recommendations.

    ``model_factory`` makes a fresh model (the control's); a checkpoint is read back with that
    model's own ``load``. ``arm_factories`` makes the models of a live experiment's other arms,
    by arm name (see :mod:`consumer.arms`; ``config.arm_specs`` names them, the control first).
    ``shadow_factory`` makes an optional baseline scored on the same stream (for the
    dashboards), checkpointed with the model. ``metrics`` is a
    :class:`consumer.metrics.ServiceMetrics` or ``None``; ``store`` replaces the local
    checkpoint folder of ``config``.
    """

    def __init__(
        self,
        config: ServiceConfig,
        model_factory: Callable[[], StreamRanker],
        shadow_factory: Callable[[], StreamRanker] | None = None,
        metrics=None,
        store: CheckpointStore | None = None,
        arm_factories: Mapping[str, Callable[[], StreamRanker]] | None = None,
    ) -> None:
        self.shadow_factory = shadow_factory
        self.metrics = metrics
        #: This process's hold on its checkpoint folder (``None`` without a local folder).
        self.claim: WorkerClaim | None = None
        if store is None and config.checkpoint_path is not None:
            self.claim = claim_worker(
                config.checkpoint_path, config.worker, fixed=bool(config.worker_id), group=config.group_id
            )
            if self.claim.slot != config.worker:
                log.info(
                    "checkpoint folder held by another running worker: this one takes the next",
                    extra=fields(held=config.worker, folder=self.claim.slot),
                )
            if config.worker_id and self.claim.name != config.worker_id:
                log.warning(
                    "the checkpoint folder belongs to a worker of another name: serving as that worker",
                    extra=fields(
                        worker_id=config.worker_id, folder=str(self.claim.folder), worker=self.claim.name
                    ),
                )
            config = dataclasses.replace(config, worker_id=self.claim.name)
            store = LocalCheckpointStore(self.claim.folder)
        self.config = config
        self.store = store
        specs = config.arm_specs
        factories = {specs[0].name: model_factory, **(arm_factories or {})}
        missing = [s.name for s in specs if s.name not in factories]
        if missing:
            raise ValueError(f"no model factory for arm(s) {missing}")
        #: The arms serving viewers, the control first (one, ``control``, without an experiment).
        self.arms = Arms(
            specs,
            lambda spec: factories[spec.name],
            salt=config.experiment_salt,
            learn_from=config.arms_learn_from,
            n=config.top_n,
        )
        self.shadow = shadow_factory() if shadow_factory else None
        self.ledger = OffsetLedger(
            config.worker,
            checkpoints=store is not None,
            every_events=config.checkpoint_every_events,
            every_seconds=config.checkpoint_interval_s,
        )
        # Per-id bookkeeping forgets on the model's clock and TTL, so memory stays bounded under
        # endless new ids (None: the model never forgets, neither do these).
        ttl = self.model.viewer_ttl
        self.shadow_evaluator = (
            StreamingEvaluator(self.shadow.name, n=config.top_n, id_ttl=ttl, coverage=False)
            if self.shadow
            else None
        )
        if self.shadow_evaluator is not None and (self.arms.learn_from == "all" or not self.arms.experiment):
            # The control's evaluator observes every event of every batch just before: the
            # shadow's reads which events are warm from it instead of a copy of the same sets.
            self.shadow_evaluator.follow(self.evaluator)
        #: The list last published to each viewer, for the online hit rate.
        self.shown = ExpiringDict(ttl=ttl)
        #: Per viewer: events shown a list and hits so far, ``[shown, hits]`` (the readout's units).
        self.viewer_hits = ExpiringDict(ttl=ttl)
        #: Per arm, the experiment's totals since it began, in the order of :class:`Online`;
        #: checkpointed (``experiment.npz``) so the readout survives restarts.
        self.tallies: dict[str, np.ndarray] = {arm.name: np.zeros(len(Online._fields)) for arm in self.arms}
        self.batches = 0
        self.dead_lettered = 0
        #: Seconds spent in each stage of the loop since the service started (see the module).
        self.stage_seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        # What a poll costs, from the last polls: decayed sums of batch seconds and events, and
        # of the per-poll seconds (acknowledgements, commit); they size the next poll.
        self._work = [0.0, 0.0]
        self._per_poll = 0.0
        self._corrupt_polls = 0
        # Set by the rebalance callbacks during a poll: partitions may have moved since the
        # commits in flight were sent; and a checkpoint the revocation could not write.
        self._rebalanced = False
        self._checkpoint_after_poll = False
        # A transaction found timed out in a rebalance callback, raised by the loop.
        self._expired: TransactionAborted | None = None
        # The group gave partitions in this poll (not a rollback positioning them again): the
        # generation this worker holds is fresh, so it may fence older ones off.
        self._joined = False
        # Stop as if killed, sending, committing and checkpointing nothing more: another process
        # took over this worker's name, or the brokers kept refusing a poll when told to stop.
        self._as_if_killed = False
        #: The largest dead letter the dead-letter topic takes (its ``max.message.bytes``, once
        #: connected): larger ones are cut to fit, marked so (:func:`consumer.outputs.dead_letter_record`).
        self.dead_letter_bytes = MAX_RECORD_BYTES
        #: The largest record batch the topics the producer writes take (once connected; ``None``:
        #: not told), which its batches are kept within (:func:`consumer.clients.make_producer`).
        self.batch_limit: int | None = None
        # Partitions were lost (expelled from the group) holding unsent learning: rolled back
        # to the last checkpoint right after the poll.
        self._lost = False
        #: The update topic's side of this worker: one model over the group (``sync_every``).
        self.exchange: UpdateExchange | None = None
        self._bind_exchange()
        #: The viewer-state changelog (``None`` when off): what a moved partition's viewers take along.
        self.changelog = (
            ViewerChangelog(config, metrics, self._viewer_ttl()) if config.changelog_topic_name else None
        )
        # Viewers of the poll being processed -> their input partition (the changelog's records).
        self._touched: dict[str, int] = {}
        # After a restart, per input partition: below this offset, what is learned again reached
        # the peers before (UpdateExchange.sent_before), and this worker's reader applied it: it
        # is learned first, for the viewers, and its video side taken back (relearned()).
        self._sent_boundary: dict[int, int] = {}
        # Told once that the group has other workers while this one learns its own model.
        self._told_private = False
        self._stop = threading.Event()
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._publisher: Publisher | None = None

    @property
    def metrics(self):  # noqa: ANN201 - a consumer.metrics.ServiceMetrics, or None
        """The worker's :class:`consumer.metrics.ServiceMetrics` (``None``: no metrics). Set after
        construction too (it is labelled by the service's models): the update exchange and the
        changelog report to whatever is set here."""
        return self._metrics

    @metrics.setter
    def metrics(self, metrics) -> None:  # noqa: ANN001
        self._metrics = metrics
        for part in (getattr(self, "exchange", None), getattr(self, "changelog", None)):
            if part is not None:
                part.metrics = metrics

    @property
    def model(self) -> StreamRanker:
        """The control's model: the served model when there is no experiment."""
        return self.arms.control.model

    @model.setter
    def model(self, model: StreamRanker) -> None:
        self.arms.control.model = model

    @property
    def evaluator(self) -> StreamingEvaluator:
        """The control's test-then-train evaluator."""
        return self.arms.control.evaluator

    @property
    def model_events(self) -> int:
        """Events learned into the current model state, across restarts."""
        return self.ledger.events

    @property
    def model_names(self) -> tuple[str, ...]:
        """The ``model`` label values of the quality metrics: the served model, then the shadow."""
        return (self.model.name, self.shadow.name) if self.shadow else (self.model.name,)

    @property
    def arm_labels(self) -> tuple[tuple[str, str, float], ...]:
        """``(arm, model, share of viewers)`` of every arm, for the metrics."""
        return tuple((a.name, a.model.name, self.arms.shares[a.name]) for a in self.arms)

    # -- lifecycle -------------------------------------------------------------------------

    def stop(self, *_: object) -> None:
        """Ask the loop to finish the current batch, checkpoint, commit and return (signal-safe)."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self, max_batches: int | None = None) -> None:
        """Serve until :meth:`stop` (or ``max_batches`` batches, for tests)."""
        self.restore()
        self._connect()
        freeze_start_up()
        log.info(
            "serving",
            extra=fields(
                input=self.config.input_topic,
                output=self.config.output_topic,
                group=self.config.group_id,
                worker=self.config.worker,
                model=self.model.name,
                exactly_once=self.config.exactly_once,
                **({"experiment": self.arms.describe()} if self.arms.experiment else {}),
            ),
        )
        try:
            while not self._stop.is_set():
                try:
                    self._step()
                except TransactionAborted as err:
                    self._renew_producer(err)
                if max_batches is not None and self.batches >= max_batches:
                    break
        except KafkaError as err:
            taken = fenced(err)
            if taken is None:
                raise
            self._as_if_killed = True
            raise UserError(
                f"another process took over this worker's {taken} (streamrec-{self.config.worker}): "
                f"two workers of group {self.config.group_id!r} run under the name {self.config.worker!r}. "
                "Give each its own --worker-id, or leave it out: each worker then names itself at its "
                "first start and keeps the name in its checkpoint folder. "
                "This one stops without committing or checkpointing what it has not committed."
            ) from None
        except NameTaken:  # the same, seen in the update topic: stop as if killed, sending nothing more
            self._as_if_killed = True
            raise
        except Interrupted:  # told to stop while the brokers refused a send or a commit
            log.warning(
                "stopped while the brokers refused this poll's lists or offsets: nothing more is "
                "committed or checkpointed, and a restart learns the poll again from the last commit"
            )
            self._as_if_killed = True
        finally:
            self._shutdown()

    def _step(self) -> None:
        """One turn of the loop: poll, apply the peers' updates, learn and publish, checkpoint."""
        if self._expired is not None:  # found in a rebalance callback, which cannot raise it
            raise self._expired
        polled = self._poll()
        if self.exchange is not None:
            self._exchange(idle=not polled)
        if polled:
            self.process(polled)
            self.batches += 1
        if self.ledger.due() and self._settle(wait=True):
            started = time.perf_counter()
            self._checkpoint_all_sent()
            self.stage_seconds["checkpoint"] += time.perf_counter() - started
        self._report_lag()

    def _renew_producer(self, err: TransactionAborted) -> None:
        """The brokers aborted a transaction of this worker (left open too long as it stalled,
        or after a refused send) and no other process took its name: a new producer, and back
        to the last checkpoint, as for a refused commit. Stopping instead would name the wrong
        cause (another process of this name)."""
        log.warning(
            "the brokers aborted this worker's transaction; a new producer, back to the last checkpoint",
            extra=fields(error=err),
        )
        self._expired = None
        close_abandoned(self._producer)
        self._producer = retry(
            lambda: make_producer(self.config, self.batch_limit),
            message="Kafka unreachable; retrying",
            wait=self._stop.wait,
        )
        self._publisher = self._new_publisher()
        self._rollback(err)

    def _connect(self) -> None:
        try:
            self._producer, self._consumer, outputs = connect(
                self.config, _Rebalance(self), wait=self._stop.wait
            )
            self.dead_letter_bytes = outputs.dead_letter_bytes
            self.batch_limit = outputs.batch_limit
        except Interrupted:
            raise SystemExit(0) from None
        self._publisher = self._new_publisher()
        if self.exchange is not None:
            self.exchange.connect()

    def _new_publisher(self) -> Publisher:
        """The publisher around this worker's producer and consumer (at start, and after a
        stalled transaction cost the producer)."""
        return Publisher(
            self._producer,
            self._consumer,
            self.config.exactly_once,
            latest_wins=frozenset({self.config.output_topic}),
            wait=self._stop.wait,
            batched_send=self.config.batched_send,
        )

    def _shutdown(self) -> None:
        if self._as_if_killed:  # fenced (another process has the name) or stuck: send nothing more
            self._release()
            return
        try:
            if self.exchange is not None and self._publisher is not None:
                self._send_unattached(self.exchange.outgoing(force=True))  # peers learn it all
            if self._consumer is not None and self._settle(wait=True) and self.ledger.unsaved:
                self.checkpoint()
            elif self.exchange is not None and self.store is not None and self.exchange.sent:
                self.checkpoint()  # the agreed state moved with the last updates sent
        except TransactionAborted as err:  # stalled on the way out: a restart rolls back
            log.warning(
                "the brokers aborted this worker's transaction while stopping; the last checkpoint stands",
                extra=fields(error=err),
            )
        finally:
            self._release()

    def _release(self) -> None:
        if self.exchange is not None:
            self.exchange.close()
        close_quietly(self._consumer, self._producer)
        self._consumer = self._producer = self._publisher = None
        if self.claim is not None:
            self.claim.release()
        log.info("stopped", extra=fields(batches=self.batches, model_events=self.model_events))

    # -- state -----------------------------------------------------------------------------

    def restore(self) -> Checkpoint | None:
        """Load the newest good checkpoint, if any, and the offsets it covers."""
        if self.store is None:
            return None
        checkpoint = self.store.latest()
        if self.metrics is not None and self.store.skipped_corrupt:
            self.metrics.record_checkpoint(0.0, 0, ok=False)
        if checkpoint is None:
            log.info("no checkpoint; starting with a fresh model", extra=fields(store=str(self.store.root)))
            return None
        kept = checkpoint.extra.get("model")
        if kept is not None and kept != self.model.name:  # refused at once, not retried for good
            raise UserError(
                f"the checkpoint in {checkpoint.path.parent} holds model {kept!r}, not {self.model.name!r}: "
                f"serve it with --model {kept}, or start the new model with another --checkpoint-dir"
            )
        self.model = _restored(self.model, checkpoint.path / MODEL_FILE)
        for arm in self.arms.arms[1:]:
            arm.model = _restored_arm(arm, checkpoint.path / arm.file)
        if self.arms.experiment:
            self._restore_experiment(checkpoint.path / EXPERIMENT_FILE)
        self._bind_exchange(checkpoint.path / REPLICA_FILE)
        if self.shadow is not None:
            shadow_file = checkpoint.path / _shadow_file(self.shadow)
            if shadow_file.exists():  # a checkpoint written without this shadow leaves it fresh
                self.shadow = type(self.shadow).load(shadow_file)
        self.ledger.restored(checkpoint)
        log.info(
            "restored checkpoint",
            extra=fields(
                path=str(checkpoint.path), events=checkpoint.events_learned, offsets=len(checkpoint.offsets)
            ),
        )
        if self.metrics is not None:
            self._record_model_size()
        return checkpoint

    def _checkpoint_all_sent(self, read_back: bool = True) -> None:
        """A checkpoint with no video updates unsent in it: a restart from a checkpoint sends
        what it holds unsent, which the process that wrote it may have sent since (twice). Its
        records are read back first (``read_back``; not inside kafka-python's callbacks): one
        dropped by every reader, sent after this worker was expelled, stops the checkpoint."""
        if self.exchange is not None and self._publisher is not None:
            self._send_unattached(self.exchange.outgoing(force=True))
            if read_back:
                self.exchange.read_to_end()
        self.checkpoint()

    def checkpoint(self) -> Checkpoint | None:
        """Write the model (and the shadow) with the offsets it covers, atomically."""
        if self.store is None:
            return None
        if self.exchange is not None and self.exchange.fenced_own:
            # Learning whose updates the group dropped: saved, it would stay in this replica
            # for good. The rollback this worker is heading for goes back to the last one.
            log.warning(
                "not checkpointing: update records this worker sent were dropped by every reader "
                "(sent after it was expelled from the group)",
                extra=fields(records=self.exchange.fenced_own),
            )
            return None
        offsets = self.ledger.to_checkpoint()
        if offsets is None:
            # The model holds a batch whose offsets were not committed: saving it with the old
            # offsets would learn that batch twice after a restart. The last checkpoint stands.
            log.warning("not checkpointing a model with an uncommitted batch")
            return None
        started = time.perf_counter()

        def write(folder: Path) -> None:
            for arm in self.arms:
                arm.model.save(folder / arm.file)
            if self.arms.experiment:
                self._save_experiment(folder / EXPERIMENT_FILE)
            if self.exchange is not None:
                write_npz(folder / REPLICA_FILE, self.exchange.to_arrays())
            if self.shadow is not None:
                self.shadow.save(folder / _shadow_file(self.shadow))

        extra = {"model": self.model.name} | ({"shadow": self.shadow.name} if self.shadow else {})
        if self.arms.experiment:
            extra["arms"] = {a.name: a.model.name for a in self.arms}
        checkpoint = self.store.save(write, offsets, self.ledger.events, extra=extra)
        seconds = time.perf_counter() - started
        self.ledger.checkpointed()
        if self.metrics is not None:
            self.metrics.record_checkpoint(seconds, checkpoint.size_bytes, ok=True)
        log.info(
            "checkpoint written",
            extra=fields(
                sequence=checkpoint.sequence,
                events=checkpoint.events_learned,
                bytes=checkpoint.size_bytes,
                seconds=round(seconds, 4),
            ),
        )
        return checkpoint

    def _bind_exchange(self, saved: Path | None = None) -> None:
        """The update exchange around the current model (after a restore, the restored one),
        with the agreed state and offsets saved beside it; none saved: everything it holds is
        taken as agreed (it is either nothing, or what a model without the exchange learned)."""
        if not self.config.sync_every:
            return
        old = self.exchange
        replica = VideoReplica(self.model, self.config.sync_precision)
        exchange = UpdateExchange(self.config, replica, metrics=self.metrics)
        exchange.generation = self._generation
        if saved is not None and saved.exists():
            exchange.load_arrays(read_npz(saved, ValueError))
        if old is not None:
            old.close()
            if self._publisher is not None:
                exchange.connect()  # a rollback while serving: read again from the saved offsets
        self.exchange = exchange

    def _generation(self) -> int:
        """The group generation this worker's consumer holds (-1 outside the group): the update
        records it sends name it, and a partition's new owner fences off older ones."""
        return self._consumer.group_metadata().generation_id if self._consumer is not None else -1

    def _exchange(self, idle: bool) -> None:
        """Apply the peers' updates that arrived; when idle, send what waited long enough (a
        stream that stops must not keep its last updates from the peers)."""
        exchange = self.exchange
        started = time.perf_counter()
        exchange.receive()
        if idle and exchange.due():
            self._send_unattached(exchange.outgoing())
        self.stage_seconds["sync"] += time.perf_counter() - started

    def _exchange_mid_poll(self) -> None:
        """Once ``--sync-every`` events are learned, send them with the poll (its commit still
        waits for them) and apply what the peers sent meanwhile: a poll holds thousands of
        events, and waiting for its end would double how stale each worker's video state is."""
        exchange = self.exchange
        if exchange is None or not exchange.filled():
            return
        started = time.perf_counter()
        self._publisher.send(exchange.outgoing())
        exchange.receive(snapshots=False)
        self.stage_seconds["sync"] += time.perf_counter() - started

    def _send_unattached(self, messages: list[Message]) -> None:
        """Send update records that belong to no poll, and wait until they are acknowledged."""
        if messages:
            self._publisher.send(messages)
            self._publisher.flush_unattached()

    def _save_experiment(self, path: Path) -> None:
        """The readout's state: each arm's totals and each viewer's counts (the units)."""
        counts = self.viewer_hits
        viewers = list(counts.keys())
        with path.open("wb") as f:
            np.savez(
                f,
                salt=np.array(self.arms.salt),
                arms=np.array([arm.name for arm in self.arms]),
                tallies=np.array([self.tallies[arm.name] for arm in self.arms]),
                **packed_ids(viewers, "viewer"),
                viewer_counts=np.array([counts.get(v) for v in viewers], dtype=np.int64).reshape(-1, 2),
            )

    def _restore_experiment(self, path: Path) -> None:
        """The readout's state from a checkpoint of the same experiment (same salt; totals of the
        arms it had), so the readout goes on where it was; a new experiment starts from zero."""
        if not path.exists():
            return
        with np.load(path, allow_pickle=False) as saved:
            if str(saved["salt"]) != self.arms.salt:
                log.info("a new experiment (another salt): its readout starts from zero")
                return
            self.viewer_hits = ExpiringDict(ttl=self.model.viewer_ttl)  # a rollback: the saved ones
            for name, totals in zip(saved["arms"].tolist(), saved["tallies"], strict=True):
                if name in self.tallies:
                    self.tallies[name] = totals.astype(np.float64)
            clock = self.model.clock
            viewers = saved_ids(saved, "viewer")
            for viewer, (shown, hits) in zip(viewers, saved["viewer_counts"].tolist(), strict=True):
                self.viewer_hits.touch(viewer, [shown, hits], clock)
        if self.metrics is not None:
            for name, totals in self.tallies.items():
                self.metrics.set_experiment(name, totals)

    # -- partitions ------------------------------------------------------------------------

    def _poll(self) -> dict[TopicPartition, list]:
        started = time.perf_counter()
        self._rebalanced = False
        try:
            polled = self._consumer.poll(timeout_ms=self.config.poll_timeout_ms, max_records=self.poll_size())
        except UNREADABLE as err:
            self._unreadable(err)
            polled = {}
        else:
            self._corrupt_polls = 0
        self.stage_seconds["poll" if polled else "idle"] += time.perf_counter() - started
        if self._lost:
            self._lost = False
            self._publisher.forget()
            if self.store is None:  # nothing to go back to: the learning stays here, unsent
                self.exchange.absorb()
            self._rollback(CommitFailedError("expelled from the group: its partitions were lost"))
            return {}
        # The answers to the commits sent before this poll, before anything is positioned: a
        # rebalance in the poll came after them (ledger step 5).
        if not self._settle(wait=self._rebalanced):
            return {}  # rolled back: the next poll positions every partition again
        if self._checkpoint_after_poll:
            self._checkpoint_after_poll = False
            if self.ledger.unsaved:
                self._checkpoint_all_sent()
        if self.ledger.has_pending:
            self._position_assigned(polled)
        return polled

    def _settle(self, wait: bool = False) -> bool:
        """Close the polls whose commits are confirmed (``wait``: all of them); false when a
        commit was refused and the model rolled back to the last checkpoint."""
        if self._publisher is None:
            return True
        try:
            self.ledger.confirmed(self._publisher.settle(wait=wait, rebalanced=self._rebalanced))
        except CommitFailedError as err:
            self._rollback(err)
            return False
        return True

    def poll_size(self) -> int:
        """How many records the next poll may take: as many as the service processes in
        ``poll_budget_ms`` by its recent cost, within 1 and ``max_poll_records``; whole batches
        when that is more than one, so a backlog is learned in full batches."""
        seconds, events = self._work
        config = self.config
        if events < 1:
            return config.max_batch_events  # nothing measured yet: one batch
        per_event = seconds / events
        room = config.poll_budget_ms / 1000.0 - self._per_poll
        size = max(1, min(config.max_poll_records, int(room / per_event) if per_event > 0 else 1 << 30))
        if size > config.max_batch_events:
            size -= size % config.max_batch_events
        return size

    def _measured(self, batch_seconds: float, events: int, poll_seconds: float) -> None:
        """One poll's cost: ``batch_seconds`` for its ``events``, ``poll_seconds`` once per poll."""
        if events == 0:
            return
        decay = 0.8
        self._work[0] = decay * self._work[0] + batch_seconds
        self._work[1] = decay * self._work[1] + events
        self._per_poll = decay * self._per_poll + (1 - decay) * poll_seconds if self.batches else poll_seconds

    def _unreadable(self, err: Exception) -> None:
        """kafka-python could not read a record batch: poll again after a checksum error (a
        transfer can be corrupted), else stop with where and what to do (see the module)."""
        if isinstance(err, CorruptRecordError):
            self._corrupt_polls += 1
            if self._corrupt_polls < CORRUPT_POLLS:
                log.warning("a record batch failed its checksum; fetching it again", extra=fields(error=err))
                return
        where = self._unreadable_at(err)
        if isinstance(err, UnsupportedCodecError):
            todo = (
                "install the codec library kafka-python needs (lz4, python-snappy and zstandard are "
                "dependencies of streamrec: reinstall it), then restart: the service resumes at this offset"
            )
        else:
            todo = (
                "the record batch is damaged on the broker: restore the partition from a replica, or "
                "skip the batch by committing a later offset for this group "
                "(kafka-consumer-groups.sh --reset-offsets --to-offset), then restart"
            )
        said = str(err)  # kafka-python's errors name their class already
        said = said if said.startswith(type(err).__name__) else f"{type(err).__name__}: {said}"
        message = f"cannot read the records at {where}: {said}; {todo}"
        log.error("cannot read records; stopping", extra=fields(at=where, error=err, action=todo))
        raise UnreadableRecords(message) from err

    def _unreadable_at(self, err: Exception) -> str:
        """Which partition and offset the poll could not read: each assigned partition is read
        from this worker's position by a probe consumer of its own (the service's consumer is
        not polled again: its fetch state after such an error is not to be trusted)."""
        consumer = self._consumer
        paused = set(consumer.paused())
        assigned = sorted(set(consumer.assignment()) - paused, key=lambda tp: tp.partition)
        positions = {tp: consumer.position(tp) for tp in assigned}
        culprits = [tp for tp in assigned if self._unreadable_from(tp, positions[tp])] or assigned
        return ", ".join(f"{tp.topic} partition {tp.partition} offset {positions[tp]}" for tp in culprits)

    def _unreadable_from(self, tp: TopicPartition, offset: int) -> bool:
        """Whether kafka-python fails to read ``tp`` from ``offset`` (a fresh, group-less consumer)."""
        probe = KafkaConsumer(
            **self.config.kafka.client_options(),
            client_id=f"streamrec-{self.config.worker}-probe",
            enable_auto_commit=False,
            isolation_level="read_committed",
            group_id=None,
        )
        try:
            probe.assign([tp])
            probe.seek(tp, offset)
            probe.poll(timeout_ms=2000, max_records=1)
            return False
        except UNREADABLE:
            return True
        finally:
            close_quietly(probe)

    def _on_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        # Runs on kafka-python's IO thread, where blocking calls (reading committed offsets) are
        # not allowed: pause the partitions and position them right after the poll.
        self._rebalanced = True
        if assigned:
            self._joined = True
            self.ledger.assigned(assigned)
            self._consumer.pause(*assigned)

    def _position_assigned(self, polled: dict[TopicPartition, list]) -> None:
        """Seek newly assigned partitions to where this model's learning ends, then resume them."""
        consumer = self._consumer
        partitions = self.ledger.take_pending(consumer.assignment())
        starts: dict[TopicPartition, Start] = {}
        for tp in partitions:
            polled.pop(tp, None)  # fetched before the pause took effect: read again after the seek
            starts[tp] = start = self.ledger.start(
                tp,
                consumer.committed(tp, metadata=True),
                beginning=lambda tp=tp: consumer.beginning_offsets([tp])[tp],
            )
            if start.offset is not None:
                consumer.seek(tp, start.offset)
        # partition -> the offset someone else committed last
        taken_over = {tp.partition: s.offset for tp, s in starts.items() if s.source == "committed"}
        if self.exchange is not None and any(s.source != "checkpoint" for s in starts.values()):
            # The previous owner's last updates may still be unread here: a crash between its
            # send and its commit left learning of events past its commit in the update topic.
            # The fence first: what the previous owner sends from now on (expelled alive, not
            # dead) every reader drops, so what is read to here is all the group keeps of it.
            # Only with a generation just given: after a rollback this worker may be the one
            # expelled, still unaware, and its fence would lower the group's.
            if self._joined:
                self._send_unattached([self.exchange.fence_message()])
            self.exchange.read_to_end()
        self._joined = False
        relearn = self._unsent_by_previous_owner(taken_over)
        for tp in starts:
            if tp.partition in relearn:
                starts[tp] = self.ledger.relearn(tp, relearn[tp.partition][0])
                consumer.seek(tp, starts[tp].offset)
        for tp, start in starts.items():
            sent_until = self._note_start(tp.partition, start)
            log.info(
                "partition assigned",
                extra=fields(
                    partition=tp.partition,
                    start=start.offset,
                    source=start.source,
                    replay_until=start.replay_until,
                    **({"peers_have_until": sent_until} if sent_until is not None else {}),
                ),
            )
        if self.changelog is not None and partitions:
            self.changelog.ensure_topic(len(consumer.partitions_for_topic(self.config.input_topic) or ()))
            if taken_over:
                self._restore_viewers(taken_over, relearn)
        if taken_over and self.store is not None:
            # Saved now, a checkpoint says where this model's learning of them begins. Without
            # it, a crash before the next one would find our commit on them and no checkpoint
            # covering them, and replay them from the start of the log (ledger case b): the
            # previous owner's events, learned twice.
            self._checkpoint_all_sent()
        if partitions:
            consumer.resume(*partitions)
            self._tell_if_private_in_a_group()

    def _tell_if_private_in_a_group(self) -> None:
        """Warn, once, when this worker holds some but not all of the input's partitions and
        learns a model of its own: the group is several half-trained models, not one (each
        worker learns its video vectors from its share of the stream; on MovieLens 2 workers
        reach HR@10 0.197 against one worker's 0.212)."""
        if self.exchange is not None or self._told_private:
            return
        topic = self.config.input_topic
        total = len(self._consumer.partitions_for_topic(topic) or ())
        held = sum(1 for tp in self._consumer.assignment() if tp.topic == topic)
        if not 0 < held < total:
            return
        self._told_private = True
        if self.config.model_shareable:
            fix = "start every worker of the group with the same --sync-every (1024 is a good start)"
        else:
            fix = f"one model over the group (--sync-every) takes the {DEFAULT_MODEL} model and no experiment"
        log.warning(
            "other workers share this group, and each learns a model of its own from its partitions",
            extra=fields(partitions_held=held, partitions=total, group=self.config.group_id, fix=fix),
        )

    def _note_start(self, partition: int, start: Start) -> int | None:
        """Where ``partition`` starts, for the update records' through offsets; and the offset
        below which the update topic already holds its learning, if past the start (after a
        crash; returned, else ``None``): the events learned again below it are learned first
        and their video learning taken back (:meth:`UpdateExchange.relearned`): the reader
        applied it from the update topic, so it is neither sent nor held twice."""
        exchange = self.exchange
        if exchange is None:
            return None
        if start.offset is not None:
            exchange.through[partition] = start.offset
        # No commit (auto_offset_reset): a worker killed in the first poll of this partition may
        # have sent its learning of it all the same.
        begins = start.offset if start.offset is not None else 0
        sent = exchange.sent_before(partition, begins, start.replay_until)
        if sent <= begins:
            self._sent_boundary.pop(partition, None)
            return None
        self._sent_boundary[partition] = sent
        return sent

    def _viewer_ttl(self) -> float | None:
        """How long the changelog's models keep a viewer: the longest, ``None`` if any forever."""
        ttls = [model.viewer_ttl for model in self._changelog_models().values()]
        return None if None in ttls else max(ttls, default=None)

    def _changelog_models(self) -> dict[str, StreamRanker]:
        """The models whose viewer state the changelog carries: each arm's, and the shadow's."""
        models = {arm.name: arm.model for arm in self.arms}
        if self.shadow is not None:
            models[f"shadow:{self.shadow.name}"] = self.shadow
        return models

    def _unsent_by_previous_owner(self, taken_over: dict[int, int]) -> dict[int, tuple[int, int]]:
        """Partitions taken over whose previous owner's learning the update topic holds only up
        to an offset below its commit (it was killed between two sends, its partitions moved
        before it was back): partition -> ``(that offset, the commit)``, to relearn in between.
        A partition no update record names had nothing sent: relearned from the start of its
        log, when the exchange knows every record's reach (else, from an older checkpoint or
        snapshot, it is taken as sent). Only with the changelog, which takes the viewers back."""
        exchange = self.exchange
        if exchange is None or self.changelog is None:
            return {}
        relearn = {}
        for partition, committed in taken_over.items():
            reach = exchange.sent_through.get(partition)
            if committed is None or (reach is None and not exchange.reach_known):
                continue
            if reach is not None and reach >= committed:
                continue  # all of it in the topic: the usual handover, no round trip to ask
            tp = TopicPartition(self.config.input_topic, partition)
            first = self._consumer.beginning_offsets([tp])[tp]
            reach = first if reach is None else max(reach, first)
            if reach < committed:
                relearn[partition] = (reach, committed)
        return relearn

    def _restore_viewers(self, taken_over: dict[int, int], relearn: dict[int, tuple[int, int]]) -> None:
        """The viewers of partitions someone else committed last, from the changelog, into every
        model and the readout's per-viewer state, before any of their events is processed; those
        of partitions to ``relearn`` from below the commit taken back to where it starts."""
        restored = self.changelog.read(taken_over)
        if relearn:
            started = time.perf_counter()
            watches = watches_between(self.config, relearn)
            rewound, left = rewind(restored.viewers, watches)
            log.info(
                "relearning what the previous owner learned and never sent",
                extra=fields(
                    partitions={p: f"{first}..{end}" for p, (first, end) in sorted(relearn.items())},
                    events=sum(end - first for first, end in relearn.values()),
                    viewers_rewound=rewound,
                    viewers_not_rewound=left,
                    seconds=round(time.perf_counter() - started, 4),
                ),
            )
        started = time.perf_counter()
        installed = install(
            restored.viewers, self._changelog_models(), self.shown, self.viewer_hits, self.model.clock
        )
        seconds = restored.seconds + time.perf_counter() - started
        log.info(
            "viewers restored from the changelog",
            extra=fields(
                partitions=sorted(taken_over),
                viewers=len(restored.viewers),
                records=restored.records,
                skipped=restored.skipped,
                installed=installed,
                seconds=round(seconds, 4),
                read_seconds=round(restored.seconds, 4),
            ),
        )
        if self.metrics is not None:
            self.metrics.record_restore(seconds, restored.records, len(restored.viewers))

    def _on_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        # Every poll is processed and its commit sent before the next poll, where this runs; a
        # checkpoint keeps our state's offsets in step with the commits, once they are
        # confirmed: here, or right after this poll (the answers are read on this IO thread).
        if revoked and self.exchange is not None and self._publisher is not None:
            # Their learning reaches the peers before they move, under through offsets that say
            # so: a partition's new owner relearns what the update topic lacks of it (what a
            # killed worker never sent), so learning held back here would be learned twice.
            try:
                self._send_unattached(self.exchange.outgoing(force=True))
            except TransactionAborted as err:  # kafka-python would swallow it: the loop raises it
                self._expired = err
        self._let_go(revoked)
        if revoked:
            log.info("partitions revoked", extra=fields(partitions=sorted(tp.partition for tp in revoked)))
            if self._expired is None:  # else rolled back to the last checkpoint instead
                self._checkpoint_once_settled()

    def _on_lost(self, lost: Sequence[TopicPartition]) -> None:
        """Expelled from the group (its session expired: the process was frozen, or cut off from
        the brokers): the partitions are someone else's already, and their new owners relearn
        what the update topic lacks of them. Nothing of ours goes out for them: learning not yet
        sent is dropped with a rollback to the last checkpoint, right after this poll (sent
        now, it would be learned twice)."""
        self._let_go(lost)
        if not lost:
            return
        held = self.exchange.unsent if self.exchange is not None else 0
        log.warning(
            "partitions lost: this worker was expelled from the group",
            extra=fields(partitions=sorted(tp.partition for tp in lost), unsent_events=held),
        )
        if held or (self.exchange is not None and self.store is not None):
            # Back to the last checkpoint even with nothing unsent: its updates sent since that
            # the group kept are read again, and any it dropped (sent after the expulsion, in
            # flight at a freeze) are not, so the replica keeps exactly the group's.
            self._lost = True
        else:
            self._checkpoint_once_settled()

    def _let_go(self, partitions: Sequence[TopicPartition]) -> None:
        """Forget what was kept per partition for ``partitions``, no longer this worker's."""
        self._rebalanced = True
        self.ledger.revoked(partitions)
        for tp in partitions:
            self._sent_boundary.pop(tp.partition, None)
            if self.exchange is not None:
                self.exchange.through.pop(tp.partition, None)
            if self.metrics is not None:  # else its last lag would stay on the dashboard for good
                self.metrics.forget_lag(tp.partition)

    def _checkpoint_once_settled(self) -> None:
        """A checkpoint of what was learned since the last, now if every commit is confirmed,
        else right after this poll (which reads the answers)."""
        if self.ledger.unsaved:
            if self.ledger.settled:
                self._checkpoint_all_sent(read_back=False)  # in a kafka-python callback
            else:
                self._checkpoint_after_poll = True

    def _report_lag(self) -> None:
        if self.metrics is None or self._consumer is None:
            return
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            learned = self.ledger.learned.get(tp)
            if high is not None and learned is not None:
                # Transaction markers and aborted records are never returned by a poll, so never
                # learned: past them, the consumer's position says the partition is read.
                read = max(learned, fetched_to(self._consumer, tp) or 0)
                self.metrics.set_lag(tp.partition, max(0, high - read))

    # -- one batch -------------------------------------------------------------------------

    def process(self, polled: dict[TopicPartition, list]) -> None:
        """Learn one poll's records in batches, sending lists as soon as they are made (after
        each batch, or once after the last: ``lists_per``); then wait for every acknowledgement
        and commit the poll's offsets."""
        stages = self.stage_seconds
        poll = self.ledger.open(polled)
        self._touched = {}
        replay, live = poll.replay, poll.live
        work = replay_seconds = 0.0
        replayed = 0  # events of the replay learned (its dead letters are not)
        published, measured = 0, []  # the batches' metrics, recorded once the poll is delivered
        if self._sent_boundary:  # after a restart: first what the peers have of this learning
            (sent_replay, replay), (sent_live, live) = self._split_sent(replay), self._split_sent(live)
            if sent_replay or sent_live:
                started = time.perf_counter()
                self._publisher.send(self.exchange.outgoing(force=True))  # unsent before: theirs too
                stages["sync"] += time.perf_counter() - started
                seconds, learned = self._replay(sent_replay)
                replay_seconds, replayed = replay_seconds + seconds, replayed + learned
                published, seconds = self._serve_all(sent_live, measured, mid_poll=False)
                work += seconds
                self.exchange.relearned()
            self._pass_boundaries(polled)
        seconds, learned = self._replay(replay)  # replayed after a restart: learned only
        replay_seconds, replayed = replay_seconds + seconds, replayed + learned
        work += replay_seconds
        count, seconds = self._serve_all(live, measured)
        published += count
        work += seconds
        if self.exchange is not None:  # the poll's video updates, delivered with its lists
            started = time.perf_counter()
            self._publisher.send(self.exchange.outgoing())
            stages["sync"] += time.perf_counter() - started
        if self.changelog is not None and self._touched:  # its viewers' state, likewise
            started = time.perf_counter()
            self._publisher.send(self._changelog_messages(poll))
            spent = time.perf_counter() - started
            stages["changelog"] += spent
            work += spent  # it grows with the poll's viewers: part of what sizes the next poll
        delivering = self._publisher.seconds
        before = delivering["acknowledge"] + delivering["commit"]
        if not self._deliver(poll):
            return
        self._measured(work, poll.consumed, delivering["acknowledge"] + delivering["commit"] - before)
        stages.update(delivering)
        if self.metrics is not None:
            self._record(measured)
            started = time.perf_counter()
            self._record_poll(poll, published, replay_seconds, replayed)
            stages["metrics"] += time.perf_counter() - started

    def _replay(self, records: list) -> tuple[float, int]:
        """Learn records whose lists were published before a restart (learned only); seconds,
        and the events learned."""
        if not records:
            return 0.0, 0
        stages = self.stage_seconds
        started = time.perf_counter()
        intake = decode(records)
        self._touch(intake)
        learning = time.perf_counter()
        stages["decode"] += learning - started
        self._learn(intake.events)
        self._learned_through(records)
        stages["test_learn"] += time.perf_counter() - learning
        return time.perf_counter() - started, len(intake.events)

    def _serve_all(self, records: list, measured: list[Measured], mid_poll: bool = True) -> tuple[int, float]:
        """Serve ``records`` in batches of ``max_batch_events``, each batch's metrics appended to
        ``measured``: lists sent, seconds. ``mid_poll``: send updates whenever ``--sync-every``
        is reached."""
        size, published, work = self.config.max_batch_events, 0, 0.0
        coalescer = None
        if (
            self.config.lists_once_a_poll
            and len(records) > size
            and behind(records, self.config.poll_budget_ms / 1000, time.time())
        ):
            coalescer = ListCoalescer(batches=-(-len(records) // size))
        for start in range(0, len(records), size):
            started = time.perf_counter()
            count, batch = self._serve(records[start : start + size], coalescer)
            published += count
            if batch is not None:
                measured.append(batch)
            if mid_poll:
                self._exchange_mid_poll()
            work += time.perf_counter() - started
        return published, work

    def _split_sent(self, records: list) -> tuple[list, list]:
        """``records`` below their partition's sent boundary (learned again, in the peers
        already), and the others."""
        boundary, sent, rest = self._sent_boundary, [], []
        for r in records:
            (sent if r.offset < boundary.get(r.partition, -1) else rest).append(r)
        return sent, rest

    def _pass_boundaries(self, polled: dict[TopicPartition, list]) -> None:
        """Partitions whose poll reached their sent boundary need it no more."""
        for tp, records in polled.items():
            until = self._sent_boundary.get(tp.partition)
            if until is not None and records[-1].offset + 1 >= until:
                del self._sent_boundary[tp.partition]

    def _learned_through(self, records: list) -> None:
        """The update records to come say the model has learned up to these offsets."""
        if self.exchange is not None and records:
            self.exchange.through.update({r.partition: r.offset + 1 for r in records})

    def _touch(self, intake: Intake) -> None:
        """The viewers of ``intake``'s events, with their input partitions, are the poll's to write."""
        if self.changelog is not None and intake.events:
            self._touched.update(
                zip([e.viewer for e in intake.events], [o[0] for o in intake.origins], strict=True)
            )

    def _changelog_messages(self, poll: Batch) -> list[Message]:
        """The changelog records of the poll's viewers, each to its input partition's number."""
        through = {tp.partition: committed.offset for tp, committed in poll.offsets.items()}
        return self.changelog.messages(
            self._touched, through, self._changelog_models(), self.shown, self.viewer_hits
        )

    def _serve(self, records: list, coalescer: ListCoalescer | None = None) -> tuple[int, Measured | None]:
        """One batch: :meth:`answer` it, then send; the number of lists sent, and what its
        metrics are made of (``None`` without metrics)."""
        started = time.perf_counter()
        answer = self.answer(records, coalescer)
        self._touch(answer.intake)
        self._learned_through(records)
        self._publisher.send(answer.messages)
        count = len(answer.recommended.messages) if answer.recommended else 0
        if self.metrics is None:
            return count, None
        seconds = time.perf_counter() - started
        return count, Measured(len(records), answer.intake, answer.tested, answer.recommended, seconds)

    def answer(self, records: Sequence, coalescer: ListCoalescer | None = None) -> Answer:
        """One batch of consumer records, everything but Kafka: decode (bad records become dead
        letters), test then learn, recommend. Counts the events as learned (the ledger's step
        that the poll's offsets then commit); the benchmarks drive the service through it.

        ``coalescer``: the batch is the next of a poll whose lists are made after its last batch,
        one per viewer (:mod:`consumer.coalesce`); ``None``: a list for every viewer now."""
        stages = self.stage_seconds
        started = time.perf_counter()
        intake = decode(records)
        decoded = time.perf_counter()
        stages["decode"] += decoded - started
        tested = recommended = None
        if intake.events:
            tested = self._test_and_learn(intake.events)
        if intake.events or coalescer is not None:  # a poll's last batch makes its lists, even if all dead
            learned = time.perf_counter()
            stages["test_learn"] += learned - decoded
            recommended = self._recommend(intake, coalescer)
            stages["recommend"] += time.perf_counter() - learned
        messages = [*(recommended.messages if recommended else ()), *self._dead_letters(intake.dead)]
        return Answer(messages, intake, tested, recommended)

    def _learn(self, events: list[WatchEvent]) -> None:
        """Learn only: events whose lists were published before a restart."""
        if not events:
            return
        split = self.arms.split(events) if self.arms.learn_from == "own" else {}
        for arm in self.arms.learning_order():
            learns = self.arms.learns(arm, events, split)
            if learns:
                self._guarded(arm, lambda arm=arm, learns=learns: arm.model.learn_many(learns))
        if self.shadow is not None:
            self.shadow.learn_many(events)
        self._count_learned(len(events))

    def _count_learned(self, events: int) -> None:
        """``events`` more learned: for the offsets' ledger, and to send to the peers (unless
        they had them before a restart: then they are taken back, ``UpdateExchange.relearned``)."""
        self.ledger.count(events)
        if self.exchange is not None:
            self.exchange.learned(events)

    def _test_and_learn(self, events: list[WatchEvent]) -> Tested:
        """What each viewer would have been shown just before each event (the live quality), then
        learn: every arm's model on the events it learns from (:meth:`consumer.arms.Arms.learns`)."""
        arms = self.arms
        if arms.experiment:
            split = arms.split(events)
            online = {name: self._online([events[i] for i in at]) for name, at in split.items()}
        else:  # one arm: all the events, without splitting or copying them
            split = {}
            online = {arms.control.name: self._online(events)}
        for name, counts in online.items():
            self.tallies[name] += counts
        n = self.config.top_n
        tested: dict[str, tuple[Ranking, BatchQuality]] = {}
        for arm in arms.learning_order():
            learns = arms.learns(arm, events, split)
            if not learns:
                continue
            ranking = self._guarded(arm, lambda a=arm, e=learns: a.model.rank_and_learn(e, n))
            if ranking is not None:
                tested[arm.name] = (ranking, arm.evaluator.observe(learns, ranking))
        shadow_quality = None
        if self.shadow is not None:
            shadow_quality = self.shadow_evaluator.observe(events, self.shadow.rank_and_learn(events, n))
        self._count_learned(len(events))
        return Tested(tested, shadow_quality, online)

    def _online(self, events: Sequence[WatchEvent]) -> Online:
        """Of ``events``, those whose viewer was shown a list before, and those watched from it;
        each viewer's running counts grow the per-viewer sums by their increments."""
        # A viewer's list changes only after the batch: look it up once per viewer, count per viewer.
        last_list = self.shown.get
        by_viewer: dict[str, list] = {}  # viewer -> [their last list, shown, hits] in this batch
        shown_watch = hit_watch = 0.0
        for e in events:
            mine = by_viewer.get(e.viewer)
            if mine is None:
                mine = by_viewer[e.viewer] = [last_list(e.viewer), 0, 0]
            previous = mine[0]
            if previous is None:
                continue
            watched = e.watch_time or 0.0
            mine[1] += 1
            shown_watch += watched
            if e.video in previous:
                mine[2] += 1
                hit_watch += watched
        shown = hits = squares = hit_squares = products = viewers = 0
        counts = self.viewer_hits
        returning, totals = [], []
        for viewer, (previous, k, m) in by_viewer.items():
            if previous is None:
                continue
            total = counts.get(viewer)
            if total is None:
                total = [0, 0]
                viewers += 1
            s, h = total
            # What this batch adds to the sums of squares and products of the per-viewer counts.
            squares += (s + k) ** 2 - s * s
            hit_squares += (h + m) ** 2 - h * h
            products += (s + k) * (h + m) - s * h
            total[0], total[1] = s + k, h + m
            shown += k
            hits += m
            returning.append(viewer)
            totals.append(total)
        counts.put_many(returning, totals, self.model.clock)
        return Online(shown, hits, shown_watch, hit_watch, squares, hit_squares, products, viewers)

    def _guarded(self, arm: Arm, step: Callable[[], object]) -> object | None:
        """``step`` of ``arm``'s model; for an arm other than the control, an exception marks it
        failed (its viewers get the control's lists until a restart) and gives ``None``. The
        control's exceptions stop the service as before: there is nothing to fall back to."""
        if arm.is_control:
            return step()
        try:
            return step()
        except Exception as err:  # noqa: BLE001 - any failure of a treatment must not stop the service
            arm.healthy = False
            log.error(
                "arm failed: its viewers get the control's lists until a restart",
                extra=fields(arm=arm.name, model=arm.model.name, error=f"{type(err).__name__}: {err}"),
                exc_info=True,
            )
            return None

    def _fell_back(self, arm: Arm, reason: str, lists: int) -> None:
        """``lists`` lists for ``arm``'s viewers were made by the control's model, for ``reason``."""
        arm.fallbacks[reason] = arm.fallbacks.get(reason, 0) + lists
        if self.metrics is not None:
            self.metrics.record_fallback(arm.name, reason, lists, arm.healthy)

    def _control_lists(self, arm: Arm, viewers: list[str], n: int) -> list[Recommendation]:
        """The control's lists for ``viewers`` of ``arm``. When each arm learns from its own
        viewers only, the control never learned these viewers' watches: it is asked for more,
        and what each watched, as their own arm's model holds it, is left out, so no list shows
        a watched video (unless that model cannot say)."""
        control = self.arms.control
        if arm is control or self.arms.learn_from != "own":
            return control.model.recommend_many(viewers, n=n)
        try:
            watched = {v: set(videos) for v, videos in arm.model.watched(viewers).items()}
        except Exception as err:  # noqa: BLE001 - the arm's model failed: the lists go unfiltered
            log.warning("a failed arm's viewers' watches are unknown", extra=fields(arm=arm.name, error=err))
            watched = {}
        extra = max(map(len, watched.values()), default=0)
        lists = control.model.recommend_many(viewers, n=n + extra)
        out = []
        for viewer, rec in zip(viewers, lists, strict=True):
            gone = watched.get(viewer, ())
            keep = [i for i, video in enumerate(rec.videos) if video not in gone][:n]
            out.append(Recommendation([rec.videos[i] for i in keep], rec.scores[keep]))
        return out

    def _recommend(self, intake: Intake, coalescer: ListCoalescer | None = None) -> Recommended:
        """A fresh list for each viewer whose list is due after the batch (``coalescer``;
        ``None``: each of the batch), sourced from their last event, made by the viewer's arm
        (the control's when that arm has failed)."""
        due = (coalescer.due if coalescer is not None else every_viewer)(intake.events, intake.origins)
        now, out, n = time.time(), self.config.output_topic, self.config.top_n
        messages: list[Message] = []
        if not due.answers:  # made after the poll's last batch
            return Recommended(messages, now, due.produced_at)
        control = self.arms.control
        for arm, viewers in self._viewers_by_arm(due.answers):
            lists = None
            if arm is not control and arm.healthy and not self._guard_tripped(arm):
                lists = self._guarded(arm, lambda a=arm, v=viewers: a.model.recommend_many(v, n=n))
            source = arm if lists is not None else control
            if lists is None:
                if arm is not control:
                    self._fell_back(arm, "exception" if not arm.healthy else "guard", len(viewers))
                lists = self._control_lists(arm, viewers, n)
            answered = [due.answers[v] for v in viewers]
            values = recommendation_values(
                viewers,
                lists,
                source.model.name,
                now,
                [a[0] for a in answered],
                [a[1] for a in answered],
                arm=arm.name,
            )
            # Lists of 10: `in` is as quick as a set's.
            self.shown.put_many(viewers, [rec.videos for rec in lists], source.model.clock)
            messages += [(out, v.encode(), value, None) for v, value in zip(viewers, values, strict=True)]
        return Recommended(messages, now, due.produced_at)

    def _viewers_by_arm(self, viewers: Iterable[str]) -> list[tuple[Arm, list[str]]]:
        if not self.arms.experiment:
            return [(self.arms.control, list(viewers))]
        groups: dict[str, list[str]] = {}
        arm_of = self.arms.assignment.arm_of
        for viewer in viewers:
            groups.setdefault(arm_of(viewer), []).append(viewer)
        return [(arm, groups[arm.name]) for arm in self.arms if arm.name in groups]

    def _guard_tripped(self, arm: Arm) -> bool:
        """Whether ``arm``'s model refused non-finite updates since the last batch (asked of
        treatments only: the control's trips are counted, and it serves on)."""
        trips = arm.model.stats().guard_trips
        tripped, arm.guard_seen = trips > arm.guard_seen, trips
        if tripped:
            log.warning(
                "arm's model refused non-finite updates: its viewers get the control's lists this batch",
                extra=fields(arm=arm.name, trips=trips),
            )
        return tripped

    def _dead_letters(self, dead: list[DeadLetter]) -> list[Message]:
        self.dead_lettered += len(dead)
        return [(self.config.dlq_topic, *dead_letter_record(d, self.dead_letter_bytes)) for d in dead]

    def _deliver(self, poll: Batch) -> bool:
        """Acknowledge the poll and commit it (ledger steps 4 to 6): in its transaction, or sent
        and confirmed after the next poll; false when the group moved on and we rolled back."""
        try:
            committed = self._publisher.deliver(poll.offsets)
        except CommitFailedError as err:
            self._rollback(err)
            return False
        if committed:
            self.ledger.close(poll)
        else:
            self.ledger.delivered(poll)
        return True

    def _rollback(self, err: CommitFailedError | TransactionAborted) -> None:
        """Go back to the last checkpoint after a poll whose offsets could not be committed.

        The model has learned a poll no commit covers, and the last checkpoint agrees with the
        commits, so the model goes back to it; every assigned partition is positioned again
        from there by the next poll (ledger step 6). The poll's lists were published:
        publishing them again is an overwrite. Without checkpoints the model is kept, so that
        poll may be learned twice.
        """
        log.warning("commit failed: the group moved on; back to the last checkpoint", extra=fields(error=err))
        self.ledger.rollback()
        self._sent_boundary = {}
        assigned = self._consumer.assignment() if self._consumer is not None else set()
        if assigned and self.store is not None:  # positioned again, from the checkpoint, after the next poll
            self.ledger.assigned(assigned)
            self._consumer.pause(*assigned)
        if self.store is None:
            return
        self.arms.fresh()
        self.shadow = self.shadow_factory() if self.shadow_factory else None
        if self.restore() is None:  # no checkpoint yet: the fresh model's exchange, read anew
            self._bind_exchange()

    # -- metrics ---------------------------------------------------------------------------

    def _record(self, batches: Sequence[Measured]) -> None:
        """A delivered poll's batches in the metrics (its lists are counted by :meth:`process`).

        Once a poll, not once a batch: a backlog's poll holds 16 batches, and each recording
        cost about 1.5 us an event, most of it the popularity percentiles (a histogram of the
        whole catalogue) and the coverage window. Counters take the batches' sums; each batch
        still goes to the batch-size and batch-time histograms; coverage and popularity bias
        take each arm's newest ``coverage_window`` recommended slots, the ones the window keeps.
        A poll rolled back is not recorded: it is learned, and recorded, again.
        """
        if not batches:
            return
        started = time.perf_counter()
        try:
            metrics = self.metrics
            for batch in batches:
                metrics.record_batch(batch.consumed, len(batch.intake.events), batch.seconds)
            dead = [d.reason for batch in batches for d in batch.intake.dead]
            if dead:
                metrics.record_dead_letters(dead)
            tests = [batch.tested for batch in batches if batch.tested is not None]
            for arm in self.arms:
                scored = [t.arms[arm.name] for t in tests if arm.name in t.arms]
                if scored:
                    metrics.record_quality(arm.model.name, _summed([q for _, q in scored]), arm.name)
                    self._record_recommended(arm, [ranking for ranking, _ in scored])
                online = [t.online[arm.name] for t in tests if arm.name in t.online]
                if online:
                    summed = online[0] if len(online) == 1 else Online(*map(sum, zip(*online, strict=True)))
                    metrics.record_online(arm.name, summed, self.tallies[arm.name])
            shadow = [t.shadow_quality for t in tests if t.shadow_quality is not None]
            if shadow:
                metrics.record_quality(self.shadow.name, _summed(shadow), SHADOW_ARM)
            waited = [_freshness(b) for b in batches if b.recommended and b.recommended.produced_at]
            if waited:
                metrics.record_freshness(np.concatenate(waited))
        finally:
            self.stage_seconds["metrics"] += time.perf_counter() - started

    def _record_recommended(self, arm: Arm, rankings: list[Ranking]) -> None:
        """Coverage and popularity bias of ``arm``'s test-step lists, over the newest slots."""
        rows = np.concatenate([ranking.top.ravel() for ranking in rankings])
        rows = rows[rows >= 0][-self.metrics.coverage_window :]
        catalogue = rankings[-1].catalogue
        popularity = self._popularity(arm.model, rows, catalogue)
        self.metrics.record_recommended(arm.model.name, rows, popularity, catalogue, arm.name)

    def _record_poll(self, poll: Batch, published: int, replay_seconds: float, replayed: int) -> None:
        """One committed poll in the metrics: replayed records, lists acknowledged, the model, stages."""
        metrics = self.metrics
        if poll.replay:
            metrics.record_batch(len(poll.replay), replayed, replay_seconds)
        metrics.record_published(published)
        stats = self._record_model_size()
        metrics.record_guard_trips(stats.guard_trips)
        # The model keeps running loss totals; the metrics turn them into a moving average.
        metrics.record_loss_total(stats.loss_sum, stats.events_learned)
        metrics.record_stages(self.stage_seconds)

    def _record_model_size(self) -> ModelStats:
        stats = self.model.stats()
        self.metrics.set_model_stats(self.model_events, stats.viewers, stats.videos, stats.memory_bytes)
        return stats

    def _popularity(self, model: StreamRanker, rows: np.ndarray, catalogue: int) -> np.ndarray | None:
        """Popularity percentile of each recommended video row, from the model's watches per
        video row (``None`` for a model that does not count them), for the popularity-bias metric."""
        counts = model.video_counts()
        if counts is None:
            return None
        return popularity_percentiles(np.asarray(counts)[:catalogue], rows)


def _summed(qualities: list[BatchQuality]) -> BatchQuality:
    """The quality of several batches as one (the one itself, when there is one)."""
    if len(qualities) == 1:
        return qualities[0]
    return BatchQuality(
        events=sum(q.events for q in qualities),
        evaluated=sum(q.evaluated for q in qualities),
        hits=sum(q.hits for q in qualities),
        ndcg_sum=sum(q.ndcg_sum for q in qualities),
        rr_sum=sum(q.rr_sum for q in qualities),
    )


def _freshness(batch: Measured) -> np.ndarray:
    """Per event ``batch``'s lists answer: seconds from its Kafka timestamp to its viewer's list
    being made (an event whose viewer's list waited for a later batch of the poll counts there)."""
    produced_at = np.array(batch.recommended.produced_at, dtype=np.float64)
    return np.maximum(batch.recommended.generated_at - produced_at, 0.0)


def _shadow_file(shadow: StreamRanker) -> str:
    """A shadow's file in a checkpoint, named for what it is (``recent_popular.npz``)."""
    return f"{shadow.name}.npz"


def _restored_arm(arm: Arm, path: Path) -> StreamRanker:
    """An experiment arm's model from a checkpoint: a fresh one when the checkpoint has none for
    this arm (the experiment started after it) or holds another model (the arm changed model)."""
    if not path.exists():
        log.info("arm starts with a fresh model: none in the checkpoint", extra=fields(arm=arm.name))
        return arm.model
    try:
        return _restored(arm.model, path)
    except ValueError as err:
        log.warning("arm starts with a fresh model", extra=fields(arm=arm.name, reason=str(err)))
        return arm.model


def _restored(fresh: StreamRanker, path: Path) -> StreamRanker:
    """The model saved at ``path``, read by ``fresh``'s class; it keeps the settings it was saved
    with (changing a learned model's settings under it is not defined), and says so when they
    are not ``fresh``'s. Start afresh (a new checkpoint folder) to apply new settings."""
    model = type(fresh).load(path)
    asked, kept = settings_of_instance(fresh), settings_of_instance(model)
    differ = [k for k in asked if kept.get(k) != asked[k]]
    if differ:
        log.warning(
            "the checkpoint's model keeps its own settings, not --model-settings",
            extra=fields(kept={k: kept[k] for k in differ}, asked={k: asked[k] for k in differ}),
        )
    return model
