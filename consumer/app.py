"""The streamrec service: watch events in, learning, fresh recommendations out.

The loop reads like the data flow::

    poll -> decode (bad records -> dead letters) -> test (score before learning: live quality)
         -> learn -> recommend for the batch's viewers -> publish + commit offsets -> checkpoint when due

Delivery and learning guarantees
--------------------------------
* **Outputs and offsets.** By default, recommendations and dead letters are acknowledged by the
  brokers (``acks=all``) *before* the batch's offsets are committed: at-least-once. A crash
  between the two republishes a batch's lists; each is an overwrite of the same viewer key, so a
  compacted topic and any reader that keeps the latest list per viewer see no difference. With
  ``exactly_once``, outputs and offsets commit in one Kafka transaction per batch and readers
  that use ``isolation_level=read_committed`` see each list once.
* **Learning.** The model learns each event exactly once across crashes and restarts. A
  checkpoint stores the model together with, per partition, the next offset it has *not*
  learned. Offsets are committed with this worker's name as commit metadata. When a partition is
  assigned and its last commit is ours, the service resumes from the checkpoint's offset and
  *replays* the events up to the committed offset learn-only (they were already published),
  then continues normally; with no checkpoint yet (a crash before the first one), it replays
  from the start of the partition, since the log is the state. When someone else committed
  last, that worker learned those events, so we start at the committed offset.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from consumer.checkpoint import Checkpoint, CheckpointStore, LocalCheckpointStore
from consumer.config import ConfigError, ServiceConfig
from consumer.intake import Intake, decode
from consumer.logs import fields
from consumer.outputs import dead_letter_record, recommendation_value
from consumer.topics import ensure_output_topics
from contract.events import WatchEvent
from model.base import StreamRanker
from model.evaluate import StreamingEvaluator
from model.expiring import ExpiringDict

__all__ = ["StreamrecService"]

log = logging.getLogger(__name__)

#: How long one connection attempt waits before the service logs and backs off.
BOOTSTRAP_TIMEOUT_MS = 5000
#: kafka-python backs off up to 30 s between reconnects; after a broker outage that delays
#: recovery and lets the group session expire. Java's client caps it at 1 s.
RECONNECT_BACKOFF_MAX_MS = 1000

Message = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None]


class _Rebalance(ConsumerRebalanceListener):
    """Forwards kafka-python's rebalance callbacks to the service (they must stay quick)."""

    def __init__(self, service: StreamrecService) -> None:
        self.service = service

    def on_partitions_revoked(self, revoked):
        self.service._on_revoked(revoked)

    def on_partitions_assigned(self, assigned):
        self.service._on_assigned(assigned)


class StreamrecService:
    """One worker of a consumer group: learns from its partitions and publishes recommendations.

    ``model_factory`` makes a fresh model; ``load_model(path)`` restores one from a checkpoint
    file. ``shadow`` is an optional baseline scored on the same stream (for the dashboards).
    ``metrics`` is a :class:`consumer.metrics.ServiceMetrics` or ``None``.
    """

    def __init__(
        self,
        config: ServiceConfig,
        model_factory: Callable[[], StreamRanker],
        load_model: Callable[[Path], StreamRanker] | None = None,
        shadow_factory: Callable[[], StreamRanker] | None = None,
        metrics=None,
        store: CheckpointStore | None = None,
    ) -> None:
        self.config = config
        self.model_factory = model_factory
        self.load_model = load_model
        self.shadow_factory = shadow_factory
        self.metrics = metrics
        if store is None and config.checkpoint_path is not None:
            store = LocalCheckpointStore(config.checkpoint_path / config.worker)
        self.store = store
        self.model = model_factory()
        if store is not None and not (hasattr(self.model, "save") and load_model is not None):
            raise ConfigError(
                f"model {self.model.name!r} cannot be saved, so it cannot be checkpointed; "
                "run it with --checkpoint-dir none (a restart then starts from an empty model)"
            )
        self.shadow = shadow_factory() if shadow_factory else None
        # Per-id bookkeeping forgets on the model's clock and TTL, so memory stays bounded under
        # endless new ids (None: the model never forgets, neither do these).
        ttl = getattr(self.model, "viewer_ttl", None)
        self.evaluator = StreamingEvaluator(self.model.name, n=config.top_n, id_ttl=ttl)
        self.shadow_evaluator = (
            StreamingEvaluator("popular", n=config.top_n, id_ttl=ttl) if self.shadow else None
        )
        #: Events learned into the current model state, across restarts (restored from checkpoints).
        self.model_events = 0
        #: Per partition, the next offset the in-memory model has not learned.
        self.learned: dict[TopicPartition, int] = {}
        #: Per partition, offsets below this are replayed learn-only (already published).
        self.replay_until: dict[TopicPartition, int] = {}
        #: The list last published to each viewer, for the online hit rate.
        self.shown = ExpiringDict(ttl=ttl)
        self.batches = 0
        self.dead_lettered = 0
        self._stop = threading.Event()
        self._events_since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._metadata = f"streamrec:{config.worker}"
        #: True between learning a batch and committing it: a checkpoint then would double-learn.
        self._uncommitted = False
        #: Partitions assigned but not yet positioned (see ``_on_assigned``).
        self._pending: set[TopicPartition] = set()

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
        log.info(
            "serving",
            extra=fields(
                input=self.config.input_topic,
                output=self.config.output_topic,
                group=self.config.group_id,
                model=self.model.name,
                exactly_once=self.config.exactly_once,
            ),
        )
        try:
            while not self._stop.is_set():
                polled = self._consumer.poll(
                    timeout_ms=self.config.poll_timeout_ms, max_records=self.config.max_poll_records
                )
                if self._pending:
                    self._start_assigned(polled)
                if polled:
                    self.process(polled)
                    self.batches += 1
                self._maybe_checkpoint()
                self._report_lag()
                if max_batches is not None and self.batches >= max_batches:
                    break
        finally:
            self._shutdown()

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
        if self.load_model is None:
            raise RuntimeError("a checkpoint exists but no load_model function was given")
        self.model = self.load_model(checkpoint.path / "model.npz")
        shadow_file = checkpoint.path / "shadow.npz"
        if self.shadow is not None and shadow_file.exists() and hasattr(type(self.shadow), "load"):
            self.shadow = type(self.shadow).load(shadow_file)
        self.model_events = checkpoint.events_learned
        self.learned = {TopicPartition(t, p): o for (t, p), o in checkpoint.offsets.items()}
        log.info(
            "restored checkpoint",
            extra=fields(
                path=str(checkpoint.path), events=checkpoint.events_learned, offsets=len(self.learned)
            ),
        )
        if self.metrics is not None:
            self.metrics.set_model_stats(**self._model_stats())
        return checkpoint

    def checkpoint(self) -> Checkpoint | None:
        """Write the model and the offsets it covers, atomically."""
        if self.store is None:
            return None
        if self._uncommitted:
            # The model holds a batch whose offsets were not committed: saving it with the old
            # offsets would learn that batch twice after a restart. The last checkpoint stands.
            log.warning("not checkpointing a model with an uncommitted batch")
            return None
        started = time.perf_counter()

        def write(folder: Path) -> None:
            self.model.save(folder / "model.npz")
            if self.shadow is not None and hasattr(self.shadow, "save"):
                self.shadow.save(folder / "shadow.npz")

        offsets = {(tp.topic, tp.partition): o for tp, o in self.learned.items()}
        checkpoint = self.store.save(write, offsets, self.model_events, extra={"model": self.model.name})
        seconds = time.perf_counter() - started
        self._events_since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
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

    def _maybe_checkpoint(self) -> None:
        if self.store is None or self._events_since_checkpoint == 0:
            return
        due_by_time = time.monotonic() - self._last_checkpoint >= self.config.checkpoint_interval_s
        if due_by_time or self._events_since_checkpoint >= self.config.checkpoint_every_events:
            self.checkpoint()

    def _model_stats(self) -> dict:
        m = self.model
        # EmbeddingRanker.memory_bytes() is a breakdown ({"per_viewer", "per_video", "total"})
        # and its ``loss`` attribute names the loss function: export numbers only, never crash.
        memory = m.memory_bytes() if hasattr(m, "memory_bytes") else 0
        if isinstance(memory, dict):
            memory = memory.get("total", 0)
        loss = getattr(m, "loss", None)
        return {
            "events": self.model_events,
            "viewers": int(getattr(m, "n_viewers", 0)),
            "videos": int(getattr(m, "n_videos", 0)),
            "memory_bytes": int(memory),
            "loss": float(loss) if isinstance(loss, int | float) and not isinstance(loss, bool) else None,
        }

    # -- Kafka -----------------------------------------------------------------------------

    def _connect(self) -> None:
        """Create the consumer and producer, retrying with backoff while the brokers are down."""
        delay = 0.5
        log.info("connecting to Kafka", extra=fields(bootstrap=self.config.bootstrap_servers))
        while not self._stop.is_set():
            try:
                ensure_output_topics(self.config, timeout_ms=BOOTSTRAP_TIMEOUT_MS)
                self._producer = self._make_producer()
                self._consumer = self._make_consumer()
                return
            except KafkaError as err:
                log.warning(
                    "Kafka unreachable; retrying",
                    extra=fields(bootstrap=self.config.bootstrap_servers, error=err, retry_in_s=delay),
                )
                self._close_clients()
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
        raise SystemExit(0)

    def _make_producer(self) -> KafkaProducer:
        options = {
            "bootstrap_servers": self.config.bootstrap_servers,
            "client_id": f"streamrec-{self.config.worker}",
            "acks": "all",
            "linger_ms": 2,
            "compression_type": None,
            "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
            "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
        }
        if self.config.exactly_once:
            options["transactional_id"] = f"streamrec-{self.config.worker}"
        else:
            options["enable_idempotence"] = True
        producer = KafkaProducer(**options)
        if self.config.exactly_once:
            producer.init_transactions()
        return producer

    def _make_consumer(self) -> KafkaConsumer:
        consumer = KafkaConsumer(
            bootstrap_servers=self.config.bootstrap_servers,
            group_id=self.config.group_id,
            client_id=f"streamrec-{self.config.worker}",
            enable_auto_commit=False,
            auto_offset_reset=self.config.auto_offset_reset,
            max_poll_records=self.config.max_poll_records,
            session_timeout_ms=self.config.session_timeout_ms,
            heartbeat_interval_ms=min(3000, self.config.session_timeout_ms // 3),
            isolation_level="read_committed",
            bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
            reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
        )
        consumer.subscribe([self.config.input_topic], listener=_Rebalance(self))
        return consumer

    def _on_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        # Runs on kafka-python's IO thread, where blocking calls (reading committed offsets) are
        # not allowed: pause the partitions and decide where they start right after the poll.
        if assigned:
            self._pending.update(assigned)
            self._consumer.pause(*assigned)

    def _start_assigned(self, polled: dict[TopicPartition, list]) -> None:
        """Seek newly assigned partitions to where this model's learning ends, then resume them."""
        pending, self._pending = self._pending & self._consumer.assignment(), set()
        for tp in pending:
            polled.pop(tp, None)  # fetched before the pause took effect: read again after the seek
            committed = self._consumer.committed(tp, metadata=True)
            learned = self.learned.get(tp)
            ours = committed is not None and committed.metadata == self._metadata
            if ours and learned is None and self.store is not None:
                # We committed here but no checkpoint covers it (we crashed before the first one):
                # the model's state is the log itself, so relearn it from its start.
                learned = self._consumer.beginning_offsets([tp])[tp]
            if ours and learned is not None:
                # Our own commit: resume where the model's state ends; replay up to the commit.
                if learned < committed.offset:
                    self.replay_until[tp] = committed.offset
                self._consumer.seek(tp, learned)
                start, how = learned, "checkpoint"
            elif committed is not None:
                # Another worker learned up to its commit: those events live in its model.
                self.learned[tp] = committed.offset
                self._consumer.seek(tp, committed.offset)
                start, how = committed.offset, "committed"
            elif learned is not None:
                self._consumer.seek(tp, learned)
                start, how = learned, "checkpoint"
            else:
                start, how = None, self.config.auto_offset_reset
            log.info(
                "partition assigned",
                extra=fields(
                    partition=tp.partition, start=start, source=how, replay_until=self.replay_until.get(tp)
                ),
            )
        if pending:
            self._consumer.resume(*pending)

    def _on_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        # Every polled batch is processed and committed before the next poll, where this runs,
        # so nothing is pending; a checkpoint keeps our state's offsets in step with the commits.
        self._pending.difference_update(revoked)
        if revoked:
            log.info("partitions revoked", extra=fields(partitions=sorted(tp.partition for tp in revoked)))
            if self.store is not None and self._events_since_checkpoint:
                self.checkpoint()

    def _close_clients(self) -> None:
        for client in (self._consumer, self._producer):
            if client is not None:
                try:
                    client.close()
                except Exception:  # noqa: BLE001 - closing is best effort on the way out
                    log.debug("close failed", exc_info=True)
        self._consumer = self._producer = None

    def _shutdown(self) -> None:
        try:
            if self._consumer is not None and self._events_since_checkpoint:
                self.checkpoint()
        finally:
            self._close_clients()
            log.info("stopped", extra=fields(batches=self.batches, model_events=self.model_events))

    # -- one batch -------------------------------------------------------------------------

    def process(self, polled: dict[TopicPartition, list]) -> None:
        """Learn from one poll's records and publish what they change."""
        started = time.perf_counter()
        self._uncommitted = True
        replay_records, live_records = [], []
        for tp, records in polled.items():
            until = self.replay_until.get(tp)
            if until is None:
                live_records.extend(records)
                continue
            for r in records:
                (replay_records if r.offset < until else live_records).append(r)
            if records[-1].offset + 1 >= until:
                del self.replay_until[tp]
        if replay_records:
            replayed = decode(replay_records).events
            self._learn(replayed)
        intake = decode(live_records)
        messages = self._test_learn_recommend(intake) if intake.events else []
        self.dead_lettered += len(intake.dead)
        messages.extend((self.config.dlq_topic, *dead_letter_record(d)) for d in intake.dead)
        offsets = {
            tp: OffsetAndMetadata(records[-1].offset + 1, self._metadata, -1)
            for tp, records in polled.items()
        }
        try:
            self._publish_and_commit(messages, offsets)
        except CommitFailedError as err:
            self._rollback(err)
            return
        for tp, meta in offsets.items():
            self.learned[tp] = meta.offset
        self._uncommitted = False
        if self.metrics is not None:
            consumed = sum(len(r) for r in polled.values())
            self.metrics.record_batch(consumed, len(intake.events), time.perf_counter() - started)
            if intake.dead:
                self.metrics.record_dead_letters([d.reason for d in intake.dead])
            self.metrics.set_model_stats(**self._model_stats())
            trips = getattr(self.model, "guard_trips", None)
            if trips is not None:
                self.metrics.record_guard_trips(int(trips))
            # The model keeps running loss totals; the metrics turn them into a moving average.
            loss_sum = getattr(self.model, "loss_sum", None)
            if loss_sum is not None:
                self.metrics.record_loss_total(
                    loss_sum, getattr(self.model, "events_learned", self.model_events)
                )

    def _rollback(self, err: CommitFailedError) -> None:
        """Go back to the last checkpoint after a batch whose offsets could not be committed.

        The group moved on without this worker (a rebalance, or a session that expired while
        the brokers were away): the batch's offsets cannot be committed and its partitions may
        be someone else's now. The model has learned a batch no commit covers, and the last
        checkpoint agrees with the commits, so the model goes back to it; the next poll rejoins
        the group and positions each partition from there. The batch's lists were published:
        publishing them again is an overwrite. Without checkpoints the model is kept, so that
        batch may be learned twice.
        """
        log.warning("commit failed: the group moved on; back to the last checkpoint", extra=fields(error=err))
        self._uncommitted = False
        if self.store is None:
            return
        self.model = self.model_factory()
        self.shadow = self.shadow_factory() if self.shadow_factory else None
        self.model_events = 0
        self.learned, self.replay_until = {}, {}
        self._events_since_checkpoint = 0
        self.restore()

    def _learn(self, events: list[WatchEvent]) -> None:
        self.model.learn_many(events)
        if self.shadow is not None:
            self.shadow.learn_many(events)
        self.model_events += len(events)
        self._events_since_checkpoint += len(events)

    def _test_learn_recommend(self, intake: Intake) -> list[Message]:
        events, n = intake.events, self.config.top_n
        # Test before train: what we would have shown each viewer just before the event.
        ranking = self.model.rank_events(events, n)
        quality = self.evaluator.observe(events, ranking)
        shadow_quality = None
        if self.shadow is not None:
            shadow_quality = self.shadow_evaluator.observe(events, self.shadow.rank_events(events, n))
        shown = hits = 0
        for e in events:
            previous = self.shown.get(e.viewer)
            if previous is not None:
                shown += 1
                hits += e.video in previous
        self._learn(events)

        last_of_viewer: dict[str, int] = {}
        for i, e in enumerate(events):
            last_of_viewer[e.viewer] = i
        viewers = list(last_of_viewer)
        lists = self.model.recommend_many(viewers, n=n)
        now = time.time()
        messages: list[Message] = []
        out = self.config.output_topic
        for viewer, rec in zip(viewers, lists, strict=True):
            i = last_of_viewer[viewer]
            partition, offset, _ = intake.origins[i]
            value = recommendation_value(
                viewer, rec.videos, rec.scores, self.model.name, now, events[i].timestamp, partition, offset
            )
            messages.append((out, viewer.encode(), value, None))
            self.shown.touch(viewer, frozenset(rec.videos), getattr(self.model, "now", None))

        if self.metrics is not None:
            self.metrics.record_quality(self.model.name, quality)
            if shadow_quality is not None:
                self.metrics.record_quality("popular", shadow_quality)
            self.metrics.record_online_hits(shown, hits)
            self.metrics.record_published(len(lists))
            produced_at = np.fromiter((o[2] for o in intake.origins), dtype=np.float64, count=len(events))
            self.metrics.record_freshness(np.maximum(now - produced_at, 0.0))
            self.metrics.record_recommended(
                self.model.name, ranking.top, self._popularity(ranking), ranking.catalogue
            )
        return messages

    def _popularity(self, ranking) -> np.ndarray | None:
        """Popularity percentile of each recommended video, for the popularity-bias metric.

        From the watch counts per video row that the model keeps (``_counts``: EmbeddingRanker
        and the popularity baselines); ``None`` for a model without them.
        """
        counts = getattr(self.model, "_counts", None)
        if counts is None:
            return None
        from consumer.metrics import popularity_percentiles

        counts = getattr(counts, "array", counts)  # a GrowableTable or a plain array
        return popularity_percentiles(np.asarray(counts)[: ranking.catalogue], ranking.top)

    def _publish_and_commit(self, messages: list[Message], offsets: dict) -> None:
        producer, consumer = self._producer, self._consumer
        if self.config.exactly_once:
            producer.begin_transaction()
            try:
                for topic, key, value, headers in messages:
                    producer.send(topic, key=key, value=value, headers=headers)
                producer.send_offsets_to_transaction(offsets, consumer.group_metadata())
                producer.commit_transaction()
            except KafkaError:
                # Left open, the failed transaction puts the producer in an error state where
                # every later begin_transaction raises. Aborted, no read_committed reader sees
                # its lists; a CommitFailedError then rolls the model back (see process).
                producer.abort_transaction()
                raise
            return
        pending = messages
        delay = 0.2
        while pending:
            futures = [(m, producer.send(m[0], key=m[1], value=m[2], headers=m[3])) for m in pending]
            producer.flush()
            pending = [m for m, f in futures if f.failed()]
            if pending:
                log.warning("publish failed; retrying", extra=fields(messages=len(pending), retry_in_s=delay))
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
        self._commit(offsets)

    def _commit(self, offsets: dict) -> None:
        """Commit, retrying with backoff while the brokers cannot be reached.

        kafka-python raises a retriable error (``KafkaConnectionError``) when the brokers go away
        during a commit; the service waits for them instead of dying. A commit the group refuses
        (``CommitFailedError``: it moved on without us) is not retriable and is raised.
        """
        delay = 0.2
        while True:
            try:
                self._consumer.commit(offsets)
                return
            except KafkaError as err:
                if not err.retriable:
                    raise
                log.warning("commit failed; retrying", extra=fields(error=err, retry_in_s=delay))
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _report_lag(self) -> None:
        if self.metrics is None or self._consumer is None:
            return
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            if high is not None and tp in self.learned:
                self.metrics.set_lag(tp.partition, max(0, high - self.learned[tp]))
