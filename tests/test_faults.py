"""Faults the service must survive, on a real broker with the service as real processes.

Each test runs ``python -m consumer`` as child processes against the session's broker and
reads what they did from their ``/metrics`` endpoints (``streamrec_model_events``: events
learned into the model state, restored from checkpoints across restarts), from the manifests
of the checkpoints they wrote and from the topics they published to. Nothing is mocked.

* ``kill -9`` ten times during one replay: every event learned exactly once, lists keep coming
  after each restart, and the final model is statistically indistinguishable from a run
  without kills (see that test for why not bit-for-bit equal). With ``--exactly-once``, a
  ``read_committed`` reader of the output topic finds each published list exactly once.
* The broker stopped for 12 s mid-stream and started again: the service waits, reconnects and
  loses nothing.
* A second worker joins the group and leaves again: the two workers' counts add up to the
  events produced, so nothing is lost or learned twice across the handovers.
* 10k hostile records mixed into a replay: no crash, every valid event learned, every
  invalid one dead-lettered unchanged with a reason, the model's non-finite guard never fires.

The events are the seeded synthetic stream (``tests/streams.py``); the kill -9 test, whose
model comparison depends on the data, runs on ML-100K too when the file is here.

Every service runs with small polls, checkpoints every 0.25 s (so kills land both between and
right after checkpoints) and a 6 s session timeout (the broker's minimum: a worker restarted
after ``kill -9`` gets its partitions back once the group gives up on the dead member).
"""

from __future__ import annotations

import math
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from contract.events import WatchEvent
from contract.schema import REASONS, event_from_json, event_to_json
from model import registry
from model.evaluate import evaluate
from producer.synth import synth_events
from tests.hostile import BROKER_MAX_MESSAGE_BYTES, hostile_corpus
from tests.service_helpers import (
    ServiceProcess,
    end_offsets,
    latest_manifest,
    produce,
    read_all,
    topics,
    wait_for,
)
from tests.streams import SOURCES, stream

pytestmark = pytest.mark.kafka

SEED = 20261127
FAST = [
    "--max-poll-records",
    "20",
    "--poll-timeout-ms",
    "50",
    "--checkpoint-interval-s",
    "0.25",
    "--session-timeout-ms",
    "6000",
]
#: Delivery modes for the tests that run in both: outputs and commits at least once, or in one
#: transaction per batch (the outage and hostile tests pass with --exactly-once too, run by
#: hand; in CI they run at-least-once, the default, to keep the file within minutes).
MODES = {"at_least_once": [], "exactly_once": ["--exactly-once"]}


def keyed(events) -> list[tuple[bytes, bytes]]:
    return [(e.viewer.encode(), event_to_json(e)) for e in events]


def tail_of(service: ServiceProcess, lines: int = 40) -> str:
    """The end of the service's log; a live service first prints its threads' stacks there
    (SIGUSR1), so a test that waited in vain shows what the service was waiting for."""
    if service.alive:
        service.proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        lines += 60
    return "\n".join(service.log().splitlines()[-lines:])


def read_topic(bootstrap: str, topic: str, isolation_level: str = "read_committed") -> list:
    """Every record of ``topic`` a reader with ``isolation_level`` sees, up to the current end.

    ``read_committed`` is what a downstream reader of an exactly-once service uses: records of
    aborted transactions are skipped, and its end is the last stable offset.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, isolation_level=isolation_level
    )
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        records: list = []
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            assert time.monotonic() < deadline, f"{topic}: not read to its end {ends} in 60 s"
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def check_lists(
    bootstrap: str, names: dict[str, str], exactly_once: bool, inputs: dict[tuple[int, int], WatchEvent]
) -> Counter:
    """Read the published lists as a downstream reader would and check them against the input.

    ``inputs`` maps each input record's ``(partition, offset)`` to its event. Every list must
    answer the watch it names (same viewer, that watch's time) and every viewer's last watch
    must be answered. Under exactly-once, a ``read_committed`` reader must find each list
    (each source watch) once: none of an aborted or repeated batch. Returns how many lists
    each source watch got.
    """
    answered: Counter = Counter()
    for record in read_topic(bootstrap, names["output_topic"], "read_committed"):
        body = orjson.loads(record.value)
        source = body["source"]["partition"], body["source"]["offset"]
        watch = inputs[source]
        assert (record.key.decode(), body["viewer"]) == (watch.viewer, watch.viewer), (source, body)
        assert body["event_timestamp"] == watch.timestamp, (source, body)
        answered[source] += 1
    last = {e.viewer: source for source, e in sorted(inputs.items())}
    unanswered = set(last.values()) - set(answered)
    assert not unanswered, f"{len(unanswered)} viewers' last watches got no list, e.g. {min(unanswered)}"
    if exactly_once:
        twice = {source: n for source, n in answered.items() if n > 1}
        assert not twice, f"exactly-once: {len(twice)} lists published more than once, e.g. {min(twice)}"
    return answered


def final_model(checkpoints: Path, worker: str):
    folders = sorted(checkpoints.glob(f"{worker}/ckpt-*"))
    return registry.load("streamrec", folders[-1] / "model.npz")


def watched(model) -> dict[str, list[str]]:
    """Each viewer's watched videos as the model holds them (its causal exclusion lists)."""
    videos = model.videos.ids
    return {v: sorted(videos[r] for r in model.seen.of(row)) for row, v in enumerate(model.viewers.ids)}


# -- kill -9 ---------------------------------------------------------------------------------

KILLS = 10
N_STREAM = 3300
N_TAIL = 1500


#: (mode, source) of the kill -9 runs: both modes on the synthetic stream; on ML-100K, when it
#: is here, the stricter exactly-once mode only (each run takes a minute: ten 6 s sessions).
KILL_RUNS = [("at_least_once", "synthetic"), ("exactly_once", "synthetic")]
KILL_RUNS += [("exactly_once", s) for s in SOURCES if s != "synthetic"]


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "source"), KILL_RUNS)
def test_kill_9_ten_times_during_a_replay_learns_every_event_exactly_once(
    kafka_bootstrap, new_topic, tmp_path, mode, source
):
    """Ten ``kill -9`` at seeded random points; then the counts, the lists and the model are checked.

    The stream is cut into eleven chunks, one per life of the service, each produced before
    that life starts, so every restarted process has new events to publish lists for. A life
    is killed at a random event of its chunk plus a random delay of up to 0.5 s (two
    checkpoint intervals), so some kills land right after a checkpoint and some lose
    uncheckpointed learning that the next life must redo by replaying the committed events.

    The final model is compared with one learned by a single uninterrupted service run.
    Exact equality is not guaranteed: ``learn_many`` learns every event of a batch from the
    parameters before the batch, so the parameters depend on where batches start and end, and a
    restart can move those boundaries (a poll may return fewer records than the maximum, and
    partitions interleave differently); a learn-only replay also computes its scores itself
    instead of reusing ``rank_events``' matrix, which changes float32 rounding. (In the runs
    here, one partition and full polls kept the boundaries on multiples of 20, and the two
    models' parameters differed by at most 4e-6.)
    What must be *exactly* equal is what was learned: the number of events (the service's
    count and the model's own), the viewers and videos, and every viewer's watched videos in
    the model. The parameters must be *statistically indistinguishable*: both models go on to
    be evaluated test-then-train on the same held-out tail, and their HR@10 may differ by no
    more than three standard errors of a difference of two hit rates on that many events.

    Lists: at least once, every viewer's last watch is answered. With ``--exactly-once`` a kill
    lands between transactions or inside one, which the next life's producer aborts; either
    way a ``read_committed`` reader finds each list exactly once.
    """
    events = stream(source, N_STREAM + N_TAIL, seed=SEED)
    replay, tail = events[:N_STREAM], events[N_STREAM:]
    fast = [*FAST, *MODES[mode]]
    names = topics(new_topic)
    group, checkpoints = f"g-{names['input_topic']}", tmp_path / "kill"
    rng = random.Random(SEED)
    bounds = [round(i * N_STREAM / (KILLS + 1)) for i in range(KILLS + 2)]
    peak = 0  # the most events the model ever held: above what was produced means learned twice
    kills = []
    lists_before = 0
    for life in range(KILLS + 1):
        start, end = bounds[life], bounds[life + 1]
        produce(kafka_bootstrap, names["input_topic"], keyed(replay[start:end]))
        service = ServiceProcess(
            kafka_bootstrap, names, group, checkpoints, tmp_path / f"life-{life}.log", extra=fast
        )
        target = end if life == KILLS else rng.randint(start + 1, end)
        seen = {"events": 0}

        def learned_target(service=service, target=target, seen=seen, produced=end) -> bool:
            nonlocal peak
            found = service.metrics()
            assert service.alive, f"the service died:\n{tail_of(service)}"
            if found is None:
                return False
            seen["events"] = int(found.get("streamrec_model_events", 0))
            peak = max(peak, seen["events"])
            assert seen["events"] <= produced, "the model holds more events than were produced"
            published = found.get("streamrec_recommendations_published_total", 0)
            return seen["events"] >= target and published > 0

        assert wait_for(learned_target, timeout=120, interval=0.05), (
            f"life {life}: not at {target} events (at {seen['events']}):\n{tail_of(service)}"
        )
        if life == KILLS:
            break
        time.sleep(rng.uniform(0.0, 0.5))
        last = service.model_events()  # one last look, as close to the kill as a scrape gets
        service.kill()
        kills.append((last or seen["events"], latest_manifest(checkpoints)["events_learned"]))
        lists = end_offsets(kafka_bootstrap, names["output_topic"])
        assert lists > lists_before, f"life {life} published no recommendations"
        lists_before = lists

    assert service.model_events() == N_STREAM
    # What this life consumed it learned, the events replayed after the kill included.
    final = service.metrics()
    assert final["streamrec_events_learned_total"] == final["streamrec_events_consumed_total"] > 0
    assert service.stop() == 0, tail_of(service)
    assert "restored checkpoint" in service.log()
    assert latest_manifest(checkpoints)["events_learned"] == N_STREAM
    assert peak == N_STREAM
    # The kills really cost learning that had to be redone (else this tested nothing).
    assert any(at_kill > saved for at_kill, saved in kills), f"(learned, checkpointed) at kills: {kills}"

    # Every chunk, so every life, got fresh lists: recommendations continued after each restart.
    answered = check_lists(
        kafka_bootstrap, names, mode == "exactly_once", {(0, i): e for i, e in enumerate(replay)}
    )
    offsets = sorted(offset for _, offset in answered)
    for start, end in zip(bounds, bounds[1:], strict=False):
        assert any(start <= o < end for o in offsets), f"no list for events {start}..{end}"
    assert offsets[-1] == N_STREAM - 1

    # The same stream once more, without kills, for the comparison.
    base_names = dict(names, output_topic=new_topic("recs-base"), dlq_topic=new_topic("dlq-base"))
    base = ServiceProcess(
        kafka_bootstrap, base_names, f"{group}-base", tmp_path / "base", tmp_path / "base.log", extra=fast
    )
    assert wait_for(lambda: base.model_events() == N_STREAM, timeout=120), tail_of(base)
    assert base.stop() == 0, tail_of(base)

    killed, clean = final_model(checkpoints, group), final_model(tmp_path / "base", f"{group}-base")
    assert killed.events_learned == clean.events_learned == N_STREAM
    assert (killed.n_viewers, killed.n_videos) == (clean.n_viewers, clean.n_videos)
    assert watched(killed) == watched(clean)
    a, b = evaluate(killed, tail, batch_size=20), evaluate(clean, tail, batch_size=20)
    assert a.evaluated == b.evaluated > 500
    p = (a.hits + b.hits) / (a.evaluated + b.evaluated)
    tolerance = 3 * math.sqrt(2 * p * (1 - p) / a.evaluated)
    assert abs(a.hr - b.hr) <= tolerance, (
        f"{source}: HR@10 after kills {a.hr:.4f}, without {b.hr:.4f}, tolerance {tolerance:.4f}"
    )


def stable(bootstrap: str, topic: str) -> bool:
    """Whether no open transaction holds ``topic`` back from a read_committed reader (its end,
    the last stable offset, is the end a read_uncommitted reader sees): a worker killed inside
    one leaves it open until the brokers abort it (10-20 s: its transaction timeout)."""
    ends = {}
    for isolation in ("read_committed", "read_uncommitted"):
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level=isolation
        )
        try:
            parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
            ends[isolation] = consumer.end_offsets(parts)
        finally:
            consumer.close()
    return ends["read_committed"] == ends["read_uncommitted"]


@pytest.mark.slow
def test_a_worker_killed_inside_a_transaction_holds_readers_back_seconds_not_a_minute(
    kafka_bootstrap, new_topic, tmp_path
):
    """kill -9 of an exactly-once worker while a poll's lists are published but not committed:
    the brokers abort its transaction after ``consumer.clients.TRANSACTION_TIMEOUT_MS`` (10 s;
    their cleanup runs every 10 s), so a ``read_committed`` reader of the lists waits 10-20 s,
    not the minute of kafka-python's default. Polls of many small batches, each published as
    it is made, keep a transaction open most of the time; a kill that lands between two proves
    nothing, so it is retried with a new worker (a new transactional id)."""
    names = topics(new_topic, partitions=1)
    group = f"g-{names['input_topic']}"
    options = [
        "--exactly-once",
        "--no-shadow-baseline",
        # Lists sent after every batch: a poll's transaction opens at its first batch, not at
        # its end (the default in a backlog), so that a kill can land inside one.
        *("--lists-per", "batch"),
        "--max-batch-events",
        "32",
        "--poll-budget-ms",
        "600000",
        "--session-timeout-ms",
        "6000",
    ]
    produce(kafka_bootstrap, names["input_topic"], keyed(synth_events(500, 400, 100_000, seed=SEED)))
    held_for = None
    for attempt in range(5):
        log = tmp_path / f"w{attempt}.log"
        worker = ServiceProcess(kafka_bootstrap, names, group, tmp_path / "ckpt", log, f"w{attempt}", options)
        # Past its first polls (a transaction each, quickly committed), then just after one opens.
        assert wait_for(lambda w=worker: (w.model_events() or 0) > 3000, 120), tail_of(worker)
        wait_for(lambda: not stable(kafka_bootstrap, names["output_topic"]), 20, interval=0.0)
        worker.kill()
        killed = time.monotonic()
        if not stable(kafka_bootstrap, names["output_topic"]):
            assert wait_for(lambda: stable(kafka_bootstrap, names["output_topic"]), 90)
            held_for = time.monotonic() - killed
            break
    assert held_for is not None, "no kill landed inside a transaction in five attempts"
    assert held_for < 40, f"read_committed readers were held back {held_for:.0f} s after the kill"


# -- broker outage ---------------------------------------------------------------------------


@pytest.mark.slow
def test_broker_down_for_12_s_mid_stream_loses_nothing(kafka_bootstrap, new_topic, local_broker, tmp_path):
    """Events trickle in; the broker stops for 12 s and comes back; the service learns them all."""
    events = stream("synthetic", 3000, seed=SEED)
    names = topics(new_topic)
    group, checkpoints = f"g-{names['input_topic']}", tmp_path / "ckpt"
    failed: list[BaseException] = []

    def trickle() -> None:  # keeps sending through the outage: the producer buffers and retries
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
        futures = []
        for i, (key, value) in enumerate(keyed(events)):
            futures.append(producer.send(names["input_topic"], key=key, value=value))
            if i % 50 == 49:
                time.sleep(0.1)
        producer.flush()
        producer.close()
        failed.extend(f.exception for f in futures if f.failed())

    service = ServiceProcess(kafka_bootstrap, names, group, checkpoints, tmp_path / "svc.log", extra=FAST)
    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    assert wait_for(lambda: (service.model_events() or 0) >= 500, timeout=90), tail_of(service)
    before = service.model_events()
    local_broker.stop()
    time.sleep(12)
    assert service.alive, f"the service died while the broker was down:\n{tail_of(service)}"
    local_broker.start()
    sender.join(180)
    assert not sender.is_alive() and not failed, f"the test's producer lost events: {failed[:3]}"
    produced = end_offsets(kafka_bootstrap, names["input_topic"])
    assert produced >= len(events)  # at least: a producer retry may write an event twice
    assert wait_for(lambda: service.model_events() == produced, timeout=120), tail_of(service)
    assert before < produced
    assert service.stop() == 0, tail_of(service)
    assert latest_manifest(checkpoints)["events_learned"] == produced
    # Recommendations resumed after the outage, up to the last event.
    recs = read_all(kafka_bootstrap, names["output_topic"], expect=10**9, timeout=3)
    offsets = {orjson.loads(r.value)["source"]["offset"] for r in recs}
    assert produced - 1 in offsets
    assert any(o > before for o in offsets)


# -- rebalance -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_a_second_worker_joining_and_leaving_loses_and_duplicates_nothing(
    kafka_bootstrap, new_topic, tmp_path, mode
):
    """Worker ``b`` joins ``a``'s group mid-stream, takes partitions, learns, and leaves again.

    Each worker learns what arrives on its partitions while it owns them; a partition coming
    back to ``a`` resumes at ``b``'s last commit. So the two final counts add up to the events
    produced exactly when no event was skipped or learned twice during the two handovers.
    Under exactly-once, neither handover publishes a list twice.
    """
    events = stream("synthetic", 3000, seed=SEED)
    names = topics(new_topic, partitions=4)
    group, checkpoints = f"g-{names['input_topic']}", tmp_path / "ckpt"

    def trickle() -> None:
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
        for i, (key, value) in enumerate(keyed(events)):
            producer.send(names["input_topic"], key=key, value=value)
            if i % 50 == 49:
                # 15 s in all: time for b to start, join and restore while a third of the
                # stream is still to come, however loaded the machine
                time.sleep(0.25)
        producer.flush()
        producer.close()

    sender = threading.Thread(target=trickle, daemon=True)
    fast = [*FAST, *MODES[mode]]
    a = ServiceProcess(kafka_bootstrap, names, group, checkpoints, tmp_path / "a.log", "a", fast)
    sender.start()
    assert wait_for(lambda: (a.model_events() or 0) > 0, timeout=90), tail_of(a)
    b = ServiceProcess(kafka_bootstrap, names, group, checkpoints, tmp_path / "b.log", "b", fast)
    assert wait_for(lambda: (b.model_events() or 0) >= 200, timeout=90), tail_of(b)
    assert b.stop() == 0, tail_of(b)
    learned_by_b = latest_manifest(checkpoints, "b")["events_learned"]
    sender.join(120)
    produced = end_offsets(kafka_bootstrap, names["input_topic"])
    assert produced == len(events)
    assert wait_for(lambda: a.model_events() + learned_by_b >= produced, timeout=120), tail_of(a)
    assert a.stop() == 0, tail_of(a)
    learned_by_a = latest_manifest(checkpoints, "a")["events_learned"]
    assert learned_by_a > 0 and learned_by_b >= 200
    assert learned_by_a + learned_by_b == produced, (learned_by_a, learned_by_b, produced)
    # In the end ``a`` owns every partition again and its state reaches each one's end.
    final = latest_manifest(checkpoints, "a")["offsets"]
    assert len(final) == 4 and sum(offset for _, _, offset in final) == produced
    inputs = {
        (r.partition, r.offset): event_from_json(r.value)
        for r in read_topic(kafka_bootstrap, names["input_topic"])
    }
    check_lists(kafka_bootstrap, names, mode == "exactly_once", inputs)


# -- a frozen worker -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_a_worker_frozen_longer_than_its_session_learns_nothing_twice(
    kafka_bootstrap, new_topic, tmp_path, mode
):
    """SIGSTOP for longer than the session timeout (a long GC or VM pause), then SIGCONT, 3 times.

    While the worker is frozen the group gives up on it. Woken in the middle of a batch, its
    commit fails (kafka-python raises ``CommitFailedError``): the batch is learned but no
    commit covers it, and the partitions are assigned afresh. The worker must neither die nor
    keep that batch's learning (it reads the batch again after rejoining). Under exactly-once
    that batch's lists are aborted with its transaction: a ``read_committed`` reader finds each
    list once.
    """
    # A backlog the worker is still busy with at the third freeze: it learns tens of thousands
    # of events a second, and a freeze of an idle worker has no batch to land in.
    events = stream("synthetic", 40_000, seed=SEED)
    names = topics(new_topic)
    produce(kafka_bootstrap, names["input_topic"], keyed(events))
    group, checkpoints = f"g-{names['input_topic']}", tmp_path / "ckpt"
    extra = [*FAST, *MODES[mode], "--max-poll-records", "200"]  # big batches: a freeze lands in one
    service = ServiceProcess(kafka_bootstrap, names, group, checkpoints, tmp_path / "svc.log", extra=extra)
    rng = random.Random(SEED)
    for target in (8_000, 18_000, 28_000):
        assert wait_for(lambda t=target: (service.model_events() or 0) >= t, timeout=90), tail_of(service)
        time.sleep(rng.uniform(0.0, 0.1))
        service.proc.send_signal(signal.SIGSTOP)
        time.sleep(8)  # the session timeout is 6 s
        service.proc.send_signal(signal.SIGCONT)
    assert wait_for(lambda: service.model_events() == len(events), timeout=120), tail_of(service)
    assert service.alive
    assert service.stop() == 0, tail_of(service)
    assert latest_manifest(checkpoints)["events_learned"] == len(events)
    answered = check_lists(
        kafka_bootstrap, names, mode == "exactly_once", {(0, i): e for i, e in enumerate(events)}
    )
    if mode == "exactly_once":
        # The aborted batches' lists are in the log: a read_uncommitted reader sees them, so the
        # read_committed check above had something to leave out. (Each freeze lands mid-batch
        # nearly always, as the service is busy with the backlog; in runs here 2 to 4 batches
        # were aborted per run.)
        everything = len(read_topic(kafka_bootstrap, names["output_topic"], "read_uncommitted"))
        assert everything > sum(answered.values()), "no freeze aborted a batch's transaction"


@pytest.mark.slow
def test_an_exactly_once_worker_stalled_past_its_transaction_timeout_goes_on_and_learns_nothing_twice(
    kafka_bootstrap, new_topic, tmp_path
):
    """Frozen for 22 s in the middle of a transaction: past the 6 s session and past the 10 s
    transaction timeout, so the brokers abort the transaction (their check runs every 10 s by
    default) and kafka-python fences the producer or bumps its epoch. That reads like a second
    process of the worker's name, but the transaction's age says it stalled: the worker makes a
    new producer, rolls back to its last checkpoint and goes on, where it used to stop with the
    wrong cause. Every event learned once; a read_committed reader finds each list once."""
    events = stream("synthetic", 60_000, seed=SEED)
    # A third of the stream per attempt: an attempt whose freeze timed nothing out (below) still
    # leaves the next one transactions to freeze, however fast the machine learns.
    thirds = [events[i : i + 20_000] for i in range(0, len(events), 20_000)]
    names = topics(new_topic)
    produce(kafka_bootstrap, names["input_topic"], keyed(thirds[0]))
    checkpoints = tmp_path / "ckpt"
    # Long transactions: a poll of up to a second's work each.
    extra = [
        *("--exactly-once", "--session-timeout-ms", "6000"),
        *("--max-poll-records", "8000", "--poll-budget-ms", "1000"),
        *("--lists-per", "batch"),  # the transaction open from a poll's first batch, not its end
    ]
    service = ServiceProcess(
        kafka_bootstrap, names, f"g-{names['input_topic']}", checkpoints, tmp_path / "svc.log", extra=extra
    )
    stalled = "the brokers aborted this worker's transaction"
    readers = {
        level: KafkaConsumer(bootstrap_servers=kafka_bootstrap, isolation_level=level)
        for level in ("read_committed", "read_uncommitted")
    }
    output = names["output_topic"]
    parts = [
        TopicPartition(output, p) for p in sorted(readers["read_committed"].partitions_for_topic(output))
    ]

    def transaction_open() -> bool:
        """Lists written but not committed: the end a read_committed reader sees lags."""
        stable, written = (
            readers[level].end_offsets(parts) for level in ("read_committed", "read_uncommitted")
        )
        return any(written[tp] > stable[tp] for tp in parts)

    # Frozen the moment a transaction is seen open (the next poll's lists written, not yet
    # committed); should it commit in that moment, the freeze times nothing out: again, later.
    produced = 1
    for attempt in range(len(thirds)):
        if attempt == produced:
            produce(kafka_bootstrap, names["input_topic"], keyed(thirds[attempt]))
            produced += 1
        target = 20_000 * attempt + 6_000
        assert wait_for(lambda t=target: (service.model_events() or 0) >= t, timeout=90), tail_of(service)
        assert wait_for(transaction_open, 30, interval=0.01), tail_of(service)
        service.proc.send_signal(signal.SIGSTOP)
        time.sleep(22)
        service.proc.send_signal(signal.SIGCONT)
        if wait_for(lambda: stalled in service.log(), 20):
            break
    for third in thirds[produced:]:
        produce(kafka_bootstrap, names["input_topic"], keyed(third))
    for reader in readers.values():
        reader.close()
    assert stalled in service.log(), tail_of(service)
    assert wait_for(lambda: service.model_events() == len(events), timeout=120), tail_of(service)
    assert service.alive, tail_of(service)
    assert service.stop() == 0, tail_of(service)
    assert latest_manifest(checkpoints)["events_learned"] == len(events)
    check_lists(kafka_bootstrap, names, True, {(0, i): e for i, e in enumerate(events)})


# -- hostile input ---------------------------------------------------------------------------

N_HOSTILE = 10_000


@pytest.mark.slow
def test_ten_thousand_hostile_records_in_a_replay(kafka_bootstrap, new_topic, tmp_path):
    """No crash; every valid event learned; every invalid record dead-lettered unchanged, with why."""
    rng = random.Random(SEED)
    replay = stream("synthetic", 2000, seed=SEED)
    hostile = hostile_corpus(rng, N_HOSTILE)
    mixed: list[tuple[bytes | None, bytes | None, bool]] = [(k, v, True) for k, v in keyed(replay)]
    for record in hostile:
        mixed.insert(rng.randrange(len(mixed) + 1), (record.key, record.value, record.valid))
    valid = sum(ok for _, _, ok in mixed)
    invalid = [(k, v) for k, v, ok in mixed if not ok]
    assert any(v is not None and len(v) > BROKER_MAX_MESSAGE_BYTES - 1024 for _, v in invalid)
    assert any(k is None and v is None for k, v in invalid)  # a record with neither key nor value

    names = topics(new_topic)
    produce(
        kafka_bootstrap,
        names["input_topic"],
        [(k, v) for k, v, _ in mixed],
        max_request_size=2 * BROKER_MAX_MESSAGE_BYTES,
    )
    group, checkpoints = f"g-{names['input_topic']}", tmp_path / "ckpt"
    extra = [*FAST, "--max-poll-records", "200"]  # the last flag wins: bigger polls, same checkpoints
    service = ServiceProcess(kafka_bootstrap, names, group, checkpoints, tmp_path / "svc.log", extra=extra)

    def learned_all() -> bool:
        assert service.alive, f"the service died:\n{tail_of(service)}"
        return service.model_events() == valid

    assert wait_for(learned_all, timeout=180), tail_of(service)
    metrics = service.metrics()
    assert service.stop() == 0, tail_of(service)
    assert latest_manifest(checkpoints)["events_learned"] == valid
    assert metrics["streamrec_model_guard_trips_total"] == 0
    by_reason = {r: metrics.get(f'streamrec_events_dead_lettered_total{{reason="{r}"}}', 0) for r in REASONS}
    assert sum(by_reason.values()) == len(invalid)

    dead = read_all(kafka_bootstrap, names["dlq_topic"], expect=len(invalid), timeout=60)
    assert len(dead) == len(invalid)
    offsets = [i for i, (_, _, ok) in enumerate(mixed) if not ok]
    reasons, altered = Counter(), Counter()
    for d, (key, value), offset in zip(dead, invalid, offsets, strict=True):
        headers = dict(d.headers)
        reasons[headers["streamrec.error.reason"].decode()] += 1
        assert headers["streamrec.error.detail"]
        assert headers["streamrec.source"].decode() == f"{names['input_topic']}/0/{offset}"
        how = headers.get("streamrec.error.altered", b"").decode()
        if not how:  # the original record, unchanged
            assert (d.key, d.value) == (key, value)
            continue
        # Only records that cannot be sent as they are may be altered, as documented.
        altered[how.split(":")[0]] += 1
        if how == "null_record":
            assert (key, value, d.key, d.value) == (None, None, None, b"")
        else:
            assert how == f"truncated:{len(key or b'')},{len(value)}"
            assert value.startswith(d.value) and (key or b"").startswith(d.key or b"")
            assert len(key or b"") + len(value) > BROKER_MAX_MESSAGE_BYTES - 1024
    assert set(reasons) <= set(REASONS) and reasons == {r: n for r, n in by_reason.items() if n}
    assert reasons["too_large"] >= 4
    assert altered["truncated"] == 2  # the value at the broker's limit and the enormous key
    assert altered["null_record"] == sum(k is None and v is None for k, v in invalid)

    # Every viewer of a valid event, odd ids included, got a list.
    recs = read_all(kafka_bootstrap, names["output_topic"], expect=10**9, timeout=5)
    listed = {orjson.loads(r.value)["viewer"] for r in recs}
    assert listed == {str(orjson.loads(v)["viewer"]) for _, v, ok in mixed if ok}
