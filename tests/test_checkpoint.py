"""Checkpoints are atomic, verified, and a damaged one never stops a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.checkpoint import LocalCheckpointStore


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
