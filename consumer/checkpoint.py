"""Checkpoints: the model's whole state together with the input offsets it covers.

A checkpoint is what makes a restart exact. It holds the model files and, for each input
partition, the offset of the next event *not* yet learned. On start the service restores the
newest good checkpoint and resumes each partition from its offset, so no event is learned twice
and none is skipped (see ``consumer.app`` for how committed offsets and checkpoints combine).

Writing is atomic: files go to a temporary folder, are fsynced, and the folder is renamed into
place; a manifest records each file's SHA-256, so a torn or corrupted checkpoint is detected on
load and the previous one is used instead. Storage sits behind :class:`CheckpointStore` so an
object store can replace the local folder.

>>> import tempfile
>>> store = LocalCheckpointStore(tempfile.mkdtemp())
>>> def write(folder):
...     (folder / "model.bin").write_bytes(b"weights")
>>> cp = store.save(write, offsets={("watch-events", 0): 42}, events_learned=42)
>>> restored = store.latest()
>>> restored.offsets, restored.events_learned, (restored.path / "model.bin").read_bytes()
({('watch-events', 0): 42}, 42, b'weights')

"""

from __future__ import annotations

import abc
import hashlib
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from contract.errors import UserError

__all__ = [
    "Checkpoint",
    "CheckpointStore",
    "LocalCheckpointStore",
    "CorruptCheckpoint",
    "FolderTaken",
    "WorkerClaim",
    "claim_worker",
]

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
#: A checkpoint's folder is this and its sequence number (``ckpt-000000000042``).
PREFIX = "ckpt-"
FORMAT = "streamrec-checkpoint/1"

Offsets = dict[tuple[str, int], int]


class CorruptCheckpoint(ValueError):
    """A checkpoint whose manifest or files do not verify."""


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint: its folder, the offsets it covers, and bookkeeping."""

    path: Path
    sequence: int
    offsets: Offsets
    events_learned: int
    created_at: float
    size_bytes: int = 0
    extra: dict = field(default_factory=dict)


class CheckpointStore(abc.ABC):
    """Where checkpoints live. ``save`` must be atomic; ``latest`` must skip corrupt ones."""

    #: How many corrupt checkpoints were skipped by ``latest`` (for the log and a metric).
    skipped_corrupt: int = 0

    @abc.abstractmethod
    def save(
        self, write: Callable[[Path], None], offsets: Offsets, events_learned: int, extra: dict | None = None
    ) -> Checkpoint:
        """Create a checkpoint: ``write(folder)`` puts the model files into ``folder``."""

    @abc.abstractmethod
    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that verifies, or ``None``."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FolderTaken(UserError):
    """Another live process holds the checkpoint folder this worker was told to use."""


#: The file in a worker's checkpoint folder that keeps the worker's name, as Kafka Streams keeps
#: its process id in its state directory: the name outlives the process, not the folder.
NAME_FILE = "worker-name"
#: The file in a worker's checkpoint folder naming the consumer group it serves: a folder of
#: group ``X`` named ``X-2`` is never taken by a group called ``X-2``.
GROUP_FILE = "group"


class WorkerClaim:
    """This process's exclusive hold on one worker's checkpoint folder: a ``flock`` on
    ``<root>/<slot>.lock``, released when the process ends however it ends (kill -9 included),
    so a restarted worker claims its folder again at once. ``name`` is the worker's name, kept
    in the folder (:data:`NAME_FILE`): in its commits, transactional id and update records."""

    def __init__(self, root: Path, slot: str, fd: int, name: str) -> None:
        self.root, self.slot, self._fd, self.name = root, slot, fd, name

    @property
    def folder(self) -> Path:
        return self.root / self.slot

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = -1

    def __del__(self) -> None:  # a service dropped without running or stopping lets go too
        self.release()


def _try_lock(path: Path) -> int | None:
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def claim_worker(
    root: str | Path, name: str, fixed: bool = False, slots: int = 256, group: str | None = None
) -> WorkerClaim:
    """Claim a checkpoint folder under ``root`` for this process, and the name of its worker.

    Workers started side by side from one folder must not share a checkpoint folder: their
    writes and clean-ups would collide, and each would restore the other's model. When the
    folder ``name`` is held by another live process, the next free of ``name-2``, ``name-3``,
    ... is claimed; a restarted worker gets the first free one, its own after a crash. With
    ``fixed`` (the user named the worker), a held folder is an error instead. The lock is a
    local ``flock``: workers on several machines sharing one network folder need a
    ``--worker-id`` each.

    The worker's name is kept in its folder (:data:`NAME_FILE`). A folder's first worker gets
    the folder's name with a random suffix, unless the user named it (``fixed``) or an older
    version left checkpoints there under the folder's name: so workers started with the same
    settings on several machines, each with its own folder, are never two workers of one name
    (which Kafka takes for one: one commits over the other's partitions and fences its
    transactions), and a restart keeps the name its commits and checkpoints were made under.

    ``group`` (the consumer group served) is kept in the folder too (:data:`GROUP_FILE`), and a
    folder kept for another group is passed over: the second worker of group ``X`` (folder
    ``X-2``) and the first of a group called ``X-2`` share nothing.

    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> first, second = claim_worker(root, "streamrec"), claim_worker(root, "streamrec")
    >>> first.slot, second.slot, first.name.startswith("streamrec-"), first.name != second.name
    ('streamrec', 'streamrec-2', True, True)
    >>> name = first.name; first.release()
    >>> claim_worker(root, "streamrec").name == name          # restarted: the same worker
    True
    >>> claim_worker(tempfile.mkdtemp(), "edge", fixed=True).name
    'edge'
    >>> root = tempfile.mkdtemp()
    >>> x, x2 = claim_worker(root, "x", group="x"), claim_worker(root, "x", group="x")
    >>> x2.slot
    'x-2'
    >>> x2.release()  # group x's second worker stopped: its folder is still group x's
    >>> claim_worker(root, "x-2", group="x-2").slot
    'x-2-2'
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    candidates = [name] if fixed else [name, *(f"{name}-{i}" for i in range(2, slots + 1))]
    for candidate in candidates:
        fd = _try_lock(root / f"{candidate}.lock")
        if fd is None:
            continue
        kept = _kept_group(root / candidate)
        if group is not None and kept is not None and kept != group:
            os.close(fd)
            if fixed:
                raise FolderTaken(
                    f"worker {name!r}: its checkpoint folder {root / candidate} belongs to group "
                    f"{kept!r}, not {group!r}; give this worker another --worker-id or --checkpoint-dir"
                )
            continue
        worker = _worker_name(root / candidate, fixed)
        if group is not None and kept is None:
            _keep(root / candidate / GROUP_FILE, group)
        return WorkerClaim(root, candidate, fd, worker)
    if fixed:
        raise FolderTaken(
            f"worker {name!r}: another running process holds its checkpoint folder {root / name}; "
            "give each worker its own --worker-id (or --checkpoint-dir), or stop the other one"
        )
    raise FolderTaken(f"all {slots} worker folders under {root} are held by running processes")


def _worker_name(folder: Path, fixed: bool) -> str:
    """The name kept in ``folder``, or the one it is given now (see :func:`claim_worker`)."""
    kept = folder / NAME_FILE
    try:
        name = kept.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        name = ""
    if name:
        return name  # what its commits, transactional id and checkpoints were made under
    # Named by the user, or an older version's worker whose commits carry the folder's name.
    kept_as_is = fixed or any(folder.glob(f"{PREFIX}*"))
    name = folder.name if kept_as_is else f"{folder.name}-{secrets.token_hex(4)}"
    _keep(kept, name)
    return name


def _kept_group(folder: Path) -> str | None:
    """The group ``folder`` was kept for (``None``: none recorded, an older version's or a new one)."""
    try:
        return (folder / GROUP_FILE).read_text(encoding="utf-8").rstrip("\n") or None
    except FileNotFoundError:
        return None


def _keep(path: Path, value: str) -> None:
    """Write ``value`` to ``path`` whole or not at all (fsynced, renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(f"{value}\n", encoding="utf-8")
    _fsync(temporary)
    os.replace(temporary, path)
    _fsync(path.parent)


class LocalCheckpointStore(CheckpointStore):
    """Checkpoints as folders ``ckpt-<sequence>`` under ``root``; the newest ``keep`` are kept."""

    def __init__(self, root: str | Path, keep: int = 3) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = max(2, keep)  # at least one to fall back on
        self.skipped_corrupt = 0
        for stale in self.root.glob(".tmp-*"):  # left by a process that died mid-write
            shutil.rmtree(stale, ignore_errors=True)

    def _folders(self) -> list[tuple[int, Path]]:
        found = []
        for p in self.root.glob(f"{PREFIX}*"):
            try:
                found.append((int(p.name.removeprefix(PREFIX)), p))
            except ValueError:
                continue
        return sorted(found)

    def save(
        self, write: Callable[[Path], None], offsets: Offsets, events_learned: int, extra: dict | None = None
    ) -> Checkpoint:
        existing = self._folders()
        sequence = existing[-1][0] + 1 if existing else 1
        tmp = self.root / f".tmp-{sequence}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        write(tmp)
        files = {}
        size = 0
        for f in sorted(tmp.iterdir()):
            _fsync(f)
            files[f.name] = _sha256(f)
            size += f.stat().st_size
        created_at = time.time()
        manifest = {
            "format": FORMAT,
            "sequence": sequence,
            "created_at": created_at,
            "events_learned": int(events_learned),
            "offsets": [[t, p, int(o)] for (t, p), o in sorted(offsets.items())],
            "files": files,
            "extra": extra or {},
        }
        (tmp / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        _fsync(tmp / MANIFEST)
        final = self.root / f"{PREFIX}{sequence:012d}"
        os.rename(tmp, final)
        _fsync(self.root)
        for _, old in self._folders()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return Checkpoint(final, sequence, dict(offsets), int(events_learned), created_at, size, extra or {})

    def _verify(self, folder: Path) -> Checkpoint:
        try:
            manifest = orjson.loads((folder / MANIFEST).read_bytes())
        except (OSError, orjson.JSONDecodeError) as err:
            raise CorruptCheckpoint(f"{folder}: unreadable manifest ({err})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise CorruptCheckpoint(f"{folder}: not a {FORMAT} manifest")
        size = 0
        for name, digest in manifest["files"].items():
            path = folder / name
            if not path.is_file() or _sha256(path) != digest:
                raise CorruptCheckpoint(f"{folder}: {name} is missing or does not match its checksum")
            size += path.stat().st_size
        return Checkpoint(
            path=folder,
            sequence=int(manifest["sequence"]),
            offsets={(t, int(p)): int(o) for t, p, o in manifest["offsets"]},
            events_learned=int(manifest["events_learned"]),
            created_at=float(manifest["created_at"]),
            size_bytes=size,
            extra=manifest.get("extra", {}),
        )

    def latest(self) -> Checkpoint | None:
        for _, folder in reversed(self._folders()):
            try:
                return self._verify(folder)
            except CorruptCheckpoint as err:
                self.skipped_corrupt += 1
                log.warning("skipping corrupt checkpoint: %s", err)
        return None
