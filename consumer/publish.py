"""Publishing a poll's outputs while the next batch is learned, and committing its offsets once.

The service hands each batch's recommendation lists and dead letters to :meth:`Publisher.send`
as soon as they are made; ``send`` does not wait for the brokers, so the producer's IO thread
delivers them while the service learns the next batch of the same poll. At the end of the poll,
:meth:`Publisher.deliver` waits for what is still in flight and commits the poll's offsets,
keeping the service's delivery guarantee in one of two modes:

* **at least once** (the default): every message is acknowledged by the brokers (``acks=all``),
  the unacknowledged ones sent again until none is left, and only then are the offsets
  committed. A crash in between republishes the poll's lists, each an overwrite of the same
  viewer's key. A list sent again is dropped when a newer list of the same viewer was sent after
  it (:attr:`Publisher.latest_wins`), so a retry never puts an older list on top.

  The commit is *sent* before the next poll but not waited for: the brokers take 5 ms or more
  to answer one (Kafka 4's group coordinator lingers 5 ms before it writes offsets; 6-7 ms
  measured here), which the service spends learning the next poll instead. One is in flight at
  a time: a poll's commit first waits for the answer to the one before (see
  :meth:`Publisher._commit_delivered`), which polls a few milliseconds apart would otherwise
  pile up past kafka-python's in-flight limit.
  :meth:`Publisher.settle`, right after that poll, says which polls are now committed. This
  keeps the rule that no partition moves with lists in flight: the commit goes out before the
  poll in which a rebalance could start, on the same connection as the group's JoinGroup, so
  the brokers apply it (or refuse it, under the old generation) before the partitions move. A
  commit that failed for a reason that passes (brokers away) is made again, synchronously,
  unless a rebalance happened meanwhile: then, as for a commit the group refused, the service
  rolls back;
* **exactly once** (``exactly_once``): the poll's messages and offsets commit in one Kafka
  transaction, begun by its first ``send``; readers with ``isolation_level=read_committed`` see
  each list once. A transaction left open past the producer's transaction timeout (the process
  stalled: a long pause, a frozen VM) is aborted by the brokers, which fence the producer for
  good with the same error as a second process of this worker's name would:
  :class:`TransactionTimedOut` tells the two apart by the transaction's age, and the service
  makes a new producer and rolls back instead of stopping.

Sending is cheap because the partition of every message is computed for the whole batch at once
(:func:`consumer.partitioner.partitions`, Kafka's default murmur2 partitioning, so each key lands
where any client would put it; kafka-python's own partitioner hashes each key in pure Python),
and each partition's plain keyed messages (the lists) are then appended to the producer's
batches in one step (:mod:`consumer.appending`) instead of one ``send`` each: about a tenth of
the cost per message. Messages with headers (dead letters), without a key or a value, go
through ``send``, in their place in their partition's order.

Brokers that cannot be reached are waited for (:func:`consumer.backoff.retry`). A commit the
group refuses (``CommitFailedError``: it moved on without this worker) is raised to the service,
which rolls its model back (see :mod:`consumer.ledger`). The seconds spent handing messages over,
waiting for acknowledgements and committing are kept in :attr:`Publisher.seconds` for the
service's per-stage metric.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple, NoReturn

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import CommitFailedError, FencedInstanceIdError, KafkaError, ProducerFencedError
from kafka.structs import OffsetAndMetadata, TopicPartition

from consumer.appending import Appended, append, appendable, fits
from consumer.backoff import retry
from consumer.partitioner import partitions

__all__ = ["Message", "Publisher", "Sent", "NotAcknowledged", "TransactionAborted", "TransactionTimedOut"]

#: One record to publish: topic, key, value, headers; and, optionally, a fifth element, the
#: partition (a changelog co-partitioned with the input, :mod:`consumer.changelog`).
Message = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None]


class Sent(NamedTuple):
    """Messages handed to the producer and what tells whether the brokers took them: a
    ``send``'s future (one message) or an :class:`~consumer.appending.Appended` (a run)."""

    messages: Sequence[Message]
    outcome: object

    def failed(self) -> list[Message]:
        """The messages not acknowledged (once the producer has been flushed)."""
        outcome = self.outcome
        if isinstance(outcome, Appended):
            return [self.messages[i] for i in outcome.failed()]
        return list(self.messages) if outcome.failed() else []


#: How long :meth:`Publisher.settle` waits for a commit's answer before it commits again itself.
COMMIT_ANSWER_TIMEOUT_S = 30.0
#: How long delivering a poll waits for the commit in flight to be answered before it sends its
#: own; past that (a cluster in trouble), the poll is committed by the next :meth:`Publisher.settle`.
IN_FLIGHT_WAIT_S = 1.0


class _Commit(NamedTuple):
    """A commit in flight: the polls it covers (up to ``sequence``), its future, a done flag."""

    sequence: int
    offsets: dict
    future: object
    done: threading.Event


class NotAcknowledged(KafkaError):
    """Some messages of a poll were not acknowledged by the brokers; they are sent again."""

    retriable = True


class TransactionAborted(KafkaError):
    """The brokers aborted this worker's transaction and no other process took its name: nothing
    of the transaction is committed. The service makes a new producer and rolls back to its last
    checkpoint, as for a refused commit (not a ``CommitFailedError``: a rollback alone would
    keep a producer that may be dead)."""


class TransactionTimedOut(TransactionAborted):
    """The brokers aborted this worker's transaction, open longer than the transaction timeout
    (the process stalled), and fenced its producer: the producer can do nothing more."""


class Publisher:
    """Sends messages with ``producer`` as they come; commits offsets for ``consumer``'s group.

    ``latest_wins`` names the topics where a message replaces the earlier ones of its key (the
    recommendations, keyed by viewer): a failed message there is not sent again when a later one
    of the same key was sent after it.
    """

    def __init__(
        self,
        producer: KafkaProducer,
        consumer: KafkaConsumer,
        exactly_once: bool,
        latest_wins: frozenset[str] = frozenset(),
        wait: Callable[[float], bool | None] = time.sleep,
        batched_send: bool = True,
    ) -> None:
        self.producer = producer
        self.consumer = consumer
        self.exactly_once = exactly_once
        self.latest_wins = latest_wins
        #: How to wait between tries of a send or commit the brokers refused: the service's
        #: stop event's ``wait``, so a worker stuck on one stops when told to
        #: (:class:`consumer.backoff.Interrupted`).
        self.wait = wait
        #: Seconds spent in ``send`` (``publish``), waiting for acknowledgements
        #: (``acknowledge``) and committing (``commit``), summed since the start.
        self.seconds = {"publish": 0.0, "acknowledge": 0.0, "commit": 0.0}
        self._sent: list[Sent] = []
        # Plain lists appended a partition's run at a time (consumer.appending), where this
        # kafka-python allows it; else one send each.
        self._appends = batched_send and fits(producer)
        self._in_transaction = False
        # When (monotonic s) the open transaction began, and whether one outlived the timeout.
        self._began = 0.0
        self._timed_out = False
        self._transaction_timeout_s = producer.config.get("transaction_timeout_ms", 60_000) / 1000
        self._request_timeout_s = producer.config.get("request_timeout_ms", 30_000) / 1000
        # The producer's (id, epoch) when the open transaction began (or the last committed):
        # within a transaction, kafka-python changes it only by bumping the epoch itself after
        # a refused send (see _classified).
        self._epoch = _producer_epoch(producer)
        # Delivered polls whose commit is not confirmed yet (sequence, offsets), and the
        # commits in flight, oldest first.
        self._delivered: deque[tuple[int, dict]] = deque()
        self._commits: deque[_Commit] = deque()
        self._sequence = 0

    @property
    def pending(self) -> int:
        """Messages sent since the last :meth:`deliver`."""
        return len(self._sent)

    def send(self, messages: Sequence[Message]) -> None:
        """Hand ``messages`` to the producer now; their acknowledgements are awaited by :meth:`deliver`."""
        if not messages:
            return
        started = time.perf_counter()
        try:
            if self.exactly_once and not self._in_transaction:
                self._begin()
            self._sent.extend(self._send(messages))
        except KafkaError as err:
            _reraise(self._classified(err), err)
        self.seconds["publish"] += time.perf_counter() - started

    def _begin(self) -> None:
        self.producer.begin_transaction()
        self._in_transaction = True
        self._began = time.monotonic()
        self._epoch = _producer_epoch(self.producer)

    def _classified(self, err: KafkaError) -> KafkaError:
        """What ``err``, raised by a transactional call, means for the service.

        * :class:`TransactionTimedOut` when it ends a transaction open longer than the timeout
          (or comes from a producer already found so). The brokers have aborted such a
          transaction whatever the error says: kafka-python reports it as the producer fenced
          (``ProducerFencedError``, for good), or bumps the epoch itself after
          ``InvalidProducerEpochError`` and then refuses the transaction's next call.
        * After such an epoch bump (KIP-360) kafka-python's calls say only that the transaction
          is gone ("not in an active transaction", an invalid transition). The bump is waited
          for, and its answer tells: ``ProducerFencedError`` when another process took this
          worker's transactional id (the bump is refused), :class:`TransactionAborted` when
          the brokers only aborted the transaction (the bump succeeded).
        * Else ``err`` itself.
        """
        stalled = self._in_transaction and time.monotonic() - self._began > self._transaction_timeout_s
        if self._timed_out or stalled:
            self._timed_out = True
            return TransactionTimedOut(
                f"the transaction stayed open past the {self._transaction_timeout_s:g} s transaction "
                f"timeout and the brokers aborted it ({type(err).__name__})"
            )
        manager = getattr(self.producer, "_transaction_manager", None)
        if manager is None or not self.exactly_once or fenced(err):
            return err
        deadline = time.monotonic() + self._request_timeout_s
        while manager.is_bumping_epoch() and time.monotonic() < deadline:
            time.sleep(0.01)
        if isinstance(manager.last_error, ProducerFencedError):
            return manager.last_error
        epoch = _producer_epoch(self.producer)
        if epoch != self._epoch and not manager.is_bumping_epoch():
            self._epoch = epoch
            return TransactionAborted(
                f"kafka-python bumped the producer's epoch after the brokers refused a send, and the "
                f"brokers aborted the transaction ({type(err).__name__}: {err})"
            )
        return err

    def _send(self, messages: Sequence[Message]) -> list[Sent]:
        """Hand ``messages`` to the producer: each partition's plain keyed messages appended in one
        step (:func:`consumer.appending.append`), the others through ``send``; in order within
        each partition."""
        producer = self.producer
        known: dict[str, frozenset[int]] = {}  # each topic's partitions, asked of kafka-python once

        def partitions_of(topic: str) -> frozenset[int]:
            if topic not in known:
                known[topic] = frozenset(producer.partitions_for(topic) or ())
            return known[topic]

        by_topic: dict[str, list[int]] = {}
        chosen: list[int | None] = [None] * len(messages)
        for i, m in enumerate(messages):
            if len(m) > 4:
                chosen[i] = m[4]
            elif m[1] is not None:
                by_topic.setdefault(m[0], []).append(i)
        for topic, indices in by_topic.items():
            ids = sorted(partitions_of(topic))  # as kafka-python's DefaultPartitioner
            if ids:
                picked = partitions([messages[i][1] for i in indices], len(ids)).tolist()
                for i, p in zip(indices, picked, strict=True):
                    chosen[i] = ids[p]
        if not self._appends:
            send = producer.send
            return [
                Sent((m,), send(m[0], key=m[1], value=m[2], headers=m[3], partition=p))
                for m, p in zip(messages, chosen, strict=True)
            ]
        return self._append(messages, chosen, partitions_of)

    def _append(
        self,
        messages: Sequence[Message],
        chosen: list[int | None],
        partitions_of: Callable[[str], frozenset[int]],
    ) -> list[Sent]:
        """:meth:`_send` with appending: runs of appendable messages per partition, each sent
        when a message of its partition must go through ``send`` (a partition kafka-python does
        not know among them: ``send`` says why), the rest at the end."""
        producer = self.producer
        limit = producer.config["max_request_size"]
        runs: dict[tuple[str, int], list[Message]] = {}
        sent: list[Sent] = []
        for m, p in zip(messages, chosen, strict=True):
            if p is not None and p in partitions_of(m[0]) and appendable(m[1], m[2], m[3], limit):
                runs.setdefault((m[0], p), []).append(m)
                continue
            where = (m[0], p)
            if where in runs:  # keep the partition's order: its run goes first
                sent.extend(self._append_run(where, runs.pop(where)))
            sent.append(Sent((m,), producer.send(m[0], key=m[1], value=m[2], headers=m[3], partition=p)))
        for where, run in runs.items():
            sent.extend(self._append_run(where, run))
        return sent

    def _append_run(self, where: tuple[str, int], run: list[Message]) -> list[Sent]:
        out, at = [], 0
        for appended in append(self.producer, *where, [(m[1], m[2]) for m in run]):
            out.append(Sent(run[at : at + appended.count], appended))
            at += appended.count
        return out

    @property
    def unconfirmed(self) -> int:
        """Delivered polls whose commit is not confirmed yet."""
        return len(self._delivered)

    def deliver(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> bool:
        """Wait for every message sent since the last call, then commit ``offsets`` (ledger step 4):
        in the transaction the sends began (true: committed), or once every message is
        acknowledged, sent and not waited for (false: :meth:`settle` confirms it)."""
        if self.exactly_once:
            self._commit_transaction(offsets)
            return True
        started = time.perf_counter()
        self._until_acknowledged()
        self.seconds["acknowledge"] += time.perf_counter() - started
        started = time.perf_counter()
        self._sequence += 1
        self._delivered.append((self._sequence, offsets))
        self._commit_delivered(wait=IN_FLIGHT_WAIT_S)
        self.seconds["commit"] += time.perf_counter() - started
        return False

    def _commit_delivered(self, wait: float = 0.0) -> bool:
        """Commit every delivered poll not confirmed yet, asynchronously, once the commit in
        flight, if any, is answered (waiting up to ``wait`` seconds for it; else :meth:`settle`
        sends this one later); true if sent.

        One commit in flight at a time. kafka-python fails a request past the connection's
        ``max_in_flight_requests_per_connection`` at once (``NodeNotReadyError``, "Node paused")
        rather than queue it; with a commit sent after every poll, every few milliseconds at
        5,000 events/s, that happened about twice a second, and each refused commit was made
        again synchronously behind a 100 ms back-off: the freshness p99. Nor does a larger limit
        do: when polls come faster than the coordinator answers commits, the unanswered ones pile
        up past any limit. Waiting for the answer before (a millisecond or two, usually there
        already) paces commits to the coordinator, and keeps every poll's commit sent before the
        next poll, where a rebalance may come (ledger step 5).
        """
        in_flight = self._commits[-1].done if self._commits else None
        if in_flight is not None and not in_flight.is_set() and not (wait and in_flight.wait(wait)):
            return False
        if not self._delivered or (self._commits and self._commits[-1].sequence == self._sequence):
            return False
        # Every poll not confirmed yet, merged: a commit covers those before it, should they fail.
        merged: dict = {}
        for _, polled in self._delivered:
            merged.update(polled)
        done = threading.Event()
        future = self.consumer.commit_async(merged, callback=_ignore)
        future.add_both(lambda _: done.set())
        self._commits.append(_Commit(self._sequence, merged, future, done))
        return True

    def flush_unattached(self) -> None:
        """Wait for what was sent outside any poll (video updates of an idle worker): its
        acknowledgements, or its own transaction, with no offsets in it."""
        if self.exactly_once:
            self._commit_transaction({})
            return
        started = time.perf_counter()
        self._until_acknowledged()
        self.seconds["acknowledge"] += time.perf_counter() - started

    def settle(self, wait: bool = False, rebalanced: bool = False) -> int:
        """How many delivered polls are confirmed committed since the last call, oldest first.

        With ``wait``, until every commit is answered. A commit that failed for a reason that
        passes is made again synchronously (waiting while the brokers are away), unless
        ``rebalanced`` says the group may have moved since it was sent: then, as when the group
        refuses a commit, ``CommitFailedError`` is raised and nothing more is confirmed.
        """
        started = time.perf_counter()
        before = self._confirmed_up_to()
        try:
            self._read_answers(wait, rebalanced)
            # Polls whose commit waited past IN_FLIGHT_WAIT_S in deliver(): it goes now (and,
            # with ``wait``, is waited for too).
            while not self._commits and self._commit_delivered() and wait:
                self._read_answers(wait, rebalanced)
        finally:
            self.seconds["commit"] += time.perf_counter() - started
        return self._confirmed_up_to() - before

    def _read_answers(self, wait: bool, rebalanced: bool) -> None:
        """Confirm the commits answered, oldest first (``wait``: every one), making a failed one
        again (:meth:`_recommit`); stop at the first still unanswered."""
        while self._commits:
            commit = self._commits[0]
            if not commit.done.is_set() and not (wait and commit.done.wait(COMMIT_ANSWER_TIMEOUT_S)):
                if wait:  # no answer in time: commit again, synchronously
                    self._recommit(commit, rebalanced, TimeoutError("no answer to a commit"))
                return
            self._commits.popleft()
            if commit.future.succeeded():
                self._confirm(commit.sequence)
                continue
            self._recommit(commit, rebalanced, commit.future.exception)

    def _recommit(self, commit: _Commit, rebalanced: bool, err: BaseException | None) -> None:
        """A commit failed: commit every delivered poll again, or raise when that is not safe."""
        if isinstance(err, CommitFailedError):
            self.forget()
            raise err
        if err is not None and fenced(err):  # not a rebalance to roll back from: the service stops
            raise err
        retriable = isinstance(err, TimeoutError) or getattr(err, "retriable", False)
        if rebalanced or not retriable:
            self.forget()
            why = f"{type(err).__name__}: {err}"
            raise CommitFailedError(f"a commit failed ({why}) and the group may have moved since")
        merged: dict = {}
        for _, polled in self._delivered:
            merged.update(polled)
        try:
            self._commit(merged)
        except CommitFailedError:
            self.forget()
            raise
        self._commits.clear()
        self._confirm(self._sequence)

    def _confirmed_up_to(self) -> int:
        return self._sequence - len(self._delivered)

    def _confirm(self, sequence: int) -> None:
        while self._delivered and self._delivered[0][0] <= sequence:
            self._delivered.popleft()

    def forget(self) -> None:
        """After a refused commit, or partitions lost: the service rolls back; no delivered poll
        counts any more."""
        self._delivered.clear()
        self._commits.clear()

    def _commit_transaction(self, offsets: dict) -> None:
        producer = self.producer
        self._sent = []
        try:
            if not self._in_transaction:
                self._begin()
            started = time.perf_counter()
            # Bounded: past the timeout the brokers abort the transaction anyway, and kafka-python
            # 3.0's flush never returns after it bumps the epoch itself (InvalidProducerEpoch).
            producer.flush(timeout=self._transaction_timeout_s)
            self.seconds["acknowledge"] += time.perf_counter() - started
            started = time.perf_counter()
            if offsets:
                group = self.consumer.group_metadata()
                if group.generation_id < 0:
                    # Expelled and not yet told by a poll: the brokers skip the generation check
                    # of offsets sent without one, so these would overwrite the new owner's.
                    raise CommitFailedError("not in the group (its session expired): offsets not committed")
                producer.send_offsets_to_transaction(offsets, group)
            producer.commit_transaction()
            self._epoch = _producer_epoch(producer)
            self.seconds["commit"] += time.perf_counter() - started
        except KafkaError as err:
            # Left open, the failed transaction puts the producer in an error state where every
            # later begin_transaction raises. Aborted, no read_committed reader sees its lists;
            # a CommitFailedError then rolls the model back (see consumer.ledger).
            raised = self._classified(err)
            try:
                producer.abort_transaction()
            except KafkaError:
                if raised is err:
                    raise
            finally:
                _drop_refused_offsets(producer)
            _reraise(raised, err)
        finally:
            self._in_transaction = False

    def _until_acknowledged(self) -> None:
        sent, self._sent = self._sent, []
        if not sent:
            return
        self.producer.flush()
        failed = [m for s in sent for m in s.failed()]
        if not failed:
            return
        pending = self._still_wanted(failed, [m for s in sent for m in s.messages])

        def send_pending() -> None:
            nonlocal pending
            tried = len(pending)
            again = self._send(pending)
            self.producer.flush()
            pending = [m for s in again for m in s.failed()]
            if pending:
                raise NotAcknowledged(f"{len(pending)} of {tried} messages not acknowledged")

        if pending:
            retry(
                send_pending,
                message="publish failed; retrying",
                retriable=lambda err: isinstance(err, NotAcknowledged),
                wait=self.wait,
            )

    def _still_wanted(self, failed: list[Message], sent: list[Message]) -> list[Message]:
        """The failed messages to send again: all, but for a later message of the same key in a
        ``latest_wins`` topic, which replaces it (and is itself sent again if it failed)."""
        last = {(m[0], m[1]): i for i, m in enumerate(sent) if m[0] in self.latest_wins}
        index = {id(m): i for i, m in enumerate(sent)}
        return [m for m in failed if m[0] not in self.latest_wins or last[(m[0], m[1])] == index[id(m)]]

    def _commit(self, offsets: dict) -> None:  # synchronous, for a commit made again
        """Commit, waiting while the brokers cannot be reached.

        kafka-python raises a retriable error (``KafkaConnectionError``) when the brokers go
        away during a commit; a commit the group refuses (``CommitFailedError``) is not
        retriable and is raised.
        """
        retry(lambda: self.consumer.commit(offsets), message="commit failed; retrying", wait=self.wait)


def _drop_refused_offsets(producer: KafkaProducer) -> None:
    """Forget offsets the group refused in an earlier transaction (kafka-python 3.0.12 keeps them).

    kafka-python's transaction manager keeps the offsets of ``send_offsets_to_transaction`` in a
    dict until the brokers accept them, and neither an abort nor a new transaction clears it. A
    commit refused for a stale generation (``UnknownMemberIdError``, ``IllegalGenerationError``:
    a worker expelled while busy) leaves its offsets there, and the next transaction's offsets
    are *added* to them: once the worker rejoins, they go out under its new, valid generation
    and overwrite the commits of the partitions' new owner with the old ones (seen: a partition
    committed 1,376 events behind where its owner had learned, so the group never finished).
    Apache Kafka's Java client drops them once the request has failed (its TxnOffsetCommitHandler
    clears ``pendingTxnOffsetCommits`` when the result is completed); kafka-python's port does
    not. Called after every abort, the one way out of a transaction whose offsets were refused:
    nothing of ours is in flight then, so what is left there is stale. A private field: without
    it there is nothing to drop.
    """
    manager = getattr(producer, "_transaction_manager", None)
    refused = getattr(manager, "_pending_txn_offset_commits", None)
    if refused:
        refused.clear()


def _ignore(_offsets, _response) -> None:
    """kafka-python's callback of an asynchronous commit: :meth:`Publisher.settle` reads the future."""


def fenced(err: BaseException) -> str | None:
    """What another process with this worker's name took over, if ``err`` (or what it was
    raised from) says so: ``"transactional id"`` (kafka-python raises ``ProducerFencedError``
    once, then a plain ``KafkaError`` naming it from every later transactional call), or
    ``"group.instance.id"`` (a static member of the same id joined); else ``None``."""
    if isinstance(err, TransactionAborted):
        return None  # the brokers aborted or fenced a transaction, not another process
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, ProducerFencedError) or "ProducerFencedError" in str(err):
            return "transactional id"
        if isinstance(err, FencedInstanceIdError):
            return "group.instance.id"
        err = err.__cause__ or err.__context__
    return None


def _producer_epoch(producer: KafkaProducer) -> tuple[int, int] | None:
    """The producer's (id, epoch) under its transactional id (a private field), else ``None``."""
    manager = getattr(producer, "_transaction_manager", None)
    current = getattr(manager, "producer_id_and_epoch", None)
    return None if current is None else (current.producer_id, current.epoch)


def _reraise(raised: KafkaError, err: KafkaError) -> NoReturn:
    """Raise ``err`` itself, or ``raised`` (what :meth:`Publisher._classified` made of it) from it."""
    if raised is err:
        raise err
    raise raised from err
