"""Checkpoints are atomic, verified, and a damaged one never stops a restart; the offset ledger
positions every partition so that each event is learned once; the service checkpoints and
restores any model through the model contract alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka.structs import OffsetAndMetadata, TopicPartition

from consumer.checkpoint import Checkpoint, LocalCheckpointStore
from consumer.ledger import OffsetLedger, Start


def save(store: LocalCheckpointStore, payload: bytes, events: int):
    def write(folder: Path) -> None:
        (folder / "model.npz").write_bytes(payload)

    return store.save(write, {("watch-events", 0): events, ("watch-events", 1): 2 * events}, events)


def test_latest_is_the_newest_and_old_ones_are_pruned(tmp_path):
    store = LocalCheckpointStore(tmp_path, keep=2)
    for i in range(1, 5):
        save(store, f"state {i}".encode(), i * 10)
    latest = store.latest()
    assert latest.events_learned == 40
    assert latest.offsets == {("watch-events", 0): 40, ("watch-events", 1): 80}
    assert (latest.path / "model.npz").read_bytes() == b"state 4"
    assert len(list(tmp_path.glob("ckpt-*"))) == 2


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete_file", "delete_manifest", "garbage_manifest"])
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    store = LocalCheckpointStore(tmp_path)
    save(store, b"good state", 10)
    bad = save(store, b"newer state", 20)
    model = bad.path / "model.npz"
    manifest = bad.path / "MANIFEST.json"
    if damage == "flip":
        model.write_bytes(b"newer stbte")
    elif damage == "truncate":
        model.write_bytes(b"newer")
    elif damage == "delete_file":
        model.unlink()
    elif damage == "delete_manifest":
        manifest.unlink()
    else:
        manifest.write_bytes(b"\x00{not json")
    reopened = LocalCheckpointStore(tmp_path)
    latest = reopened.latest()
    assert latest.events_learned == 10
    assert (latest.path / "model.npz").read_bytes() == b"good state"
    assert reopened.skipped_corrupt == 1


def test_a_crash_while_writing_leaves_no_checkpoint_behind(tmp_path):
    store = LocalCheckpointStore(tmp_path)
    save(store, b"good state", 10)

    def crash(folder: Path) -> None:
        (folder / "model.npz").write_bytes(b"half")
        raise KeyboardInterrupt  # the process dies mid-write

    with pytest.raises(KeyboardInterrupt):
        store.save(crash, {}, 99)
    assert LocalCheckpointStore(tmp_path).latest().events_learned == 10
    assert not list(tmp_path.glob(".tmp-*")), "the half-written folder is cleaned up on the next start"


def test_empty_store_has_no_checkpoint(tmp_path):
    assert LocalCheckpointStore(tmp_path / "new").latest() is None


TP = TopicPartition("watch-events", 0)


class Record:
    def __init__(self, offset: int) -> None:
        self.offset = offset


def ledger(checkpoints: bool = True, every_events: int = 100, every_seconds: float = 30.0) -> OffsetLedger:
    return OffsetLedger("w1", checkpoints, every_events, every_seconds)


def restored(book: OffsetLedger, offset: int, events: int) -> None:
    book.restored(Checkpoint(Path("."), 1, {(TP.topic, TP.partition): offset}, events, 0.0))


@pytest.mark.parametrize(
    ("checkpoint", "commit", "start"),
    [
        (40, ("w1", 70), Start(40, "checkpoint", 70)),  # a: replay our published events learn-only
        (None, ("w1", 70), Start(5, "checkpoint", 70)),  # b: no checkpoint yet: relearn the log
        (40, ("w2", 90), Start(90, "committed", None)),  # c: another worker learned up to 90
        (40, None, Start(40, "checkpoint", None)),  # d: never committed: the checkpoint
        (None, None, Start(None, "auto_offset_reset", None)),
    ],
)
def test_an_assigned_partition_starts_where_the_models_learning_ends(checkpoint, commit, start):
    book = ledger()
    if checkpoint is not None:
        restored(book, checkpoint, checkpoint)
    committed = None if commit is None else OffsetAndMetadata(commit[1], f"streamrec:{commit[0]}", -1)
    assert book.start(TP, committed, beginning=lambda: 5) == start


def test_replayed_records_are_learned_only_and_a_batch_moves_the_offsets_once_committed():
    book = ledger()
    restored(book, 40, 40)
    book.start(TP, OffsetAndMetadata(43, book.metadata, -1), beginning=lambda: 0)
    batch = book.open({TP: [Record(o) for o in range(40, 46)]})
    assert [r.offset for r in batch.replay] == [40, 41, 42]
    assert [r.offset for r in batch.live] == [43, 44, 45]
    assert batch.offsets[TP] == OffsetAndMetadata(46, book.metadata, -1)
    book.count(6)
    assert book.to_checkpoint() is None, "a model holding an uncommitted batch is not checkpointed"
    book.close(batch)
    assert book.to_checkpoint() == {(TP.topic, TP.partition): 46} and book.events == 46
    assert not book.open({TP: [Record(46)]}).replay, "replay ends at the commit"


def test_a_failed_commit_rolls_back_to_the_checkpoint_only_when_there_are_checkpoints():
    for checkpoints in (True, False):
        book = ledger(checkpoints)
        restored(book, 40, 40)
        book.open({TP: [Record(40)]})
        book.count(1)
        book.rollback()
        assert not book.is_open
        assert (book.events, book.learned) == ((0, {}) if checkpoints else (41, {TP: 40}))


def test_a_checkpoint_is_due_after_enough_events_or_seconds_once_something_was_learned():
    book = ledger(every_events=10, every_seconds=3600.0)
    assert not book.due()
    book.count(9)
    assert not book.due()
    book.count(1)
    assert book.due()
    book.checkpointed()
    assert not book.due()
    soon = ledger(every_events=10**9, every_seconds=0.0)
    assert not soon.due(), "nothing learned, nothing to save"
    soon.count(1)
    assert soon.due()
    without_store = ledger(checkpoints=False, every_events=1)
    without_store.count(5)
    assert not without_store.due()


def test_the_service_serves_checkpoints_and_restores_a_model_through_the_contract_alone(
    kafka_bootstrap, new_topic, tmp_path
):
    """A model and a shadow that offer nothing but the StreamRanker contract: the service learns
    a stream with them on a real broker, metrics on, checkpoints on stop, and restores them."""
    import threading

    from prometheus_client import CollectorRegistry

    from consumer.app import StreamrecService
    from consumer.config import ServiceConfig
    from consumer.metrics import ServiceMetrics
    from contract.schema import event_to_json
    from producer.synth import synth_events
    from tests.service_helpers import ContractOnlyModel, ContractOnlyShadow, produce, topics, wait_for

    events = list(synth_events(viewers=40, videos=120, events=400, seed=3))
    names = topics(new_topic, partitions=2)
    produce(kafka_bootstrap, names["input_topic"], [(e.viewer.encode(), event_to_json(e)) for e in events])
    config = ServiceConfig(
        bootstrap_servers=kafka_bootstrap,
        group_id=f"g-{names['input_topic']}",
        metrics_port=0,
        checkpoint_dir=str(tmp_path),
        max_poll_records=50,
        **names,
    )

    def service() -> StreamrecService:
        metrics = ServiceMetrics(models=("streamrec", "recent_popular"), registry=CollectorRegistry())
        return StreamrecService(config, ContractOnlyModel, ContractOnlyShadow, metrics=metrics)

    first, failed = service(), []

    def run() -> None:
        try:
            first.run()
        except BaseException as err:  # an AssertionError from the model ends the thread: report it
            failed.append(err)
            raise

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert wait_for(lambda: first.model_events >= len(events) or not thread.is_alive())
    first.stop()
    thread.join(30)
    assert not failed, failed
    assert first.model_events == len(events)

    second = service()
    checkpoint = second.restore()
    assert checkpoint is not None and checkpoint.events_learned == len(events) == second.model_events
    assert sorted(p.name for p in checkpoint.path.glob("*.npz")) == ["model.npz", "recent_popular.npz"]
    assert second.model.stats() == first.model.stats()
    assert second.shadow.stats() == first.shadow.stats()
