"""One model over many workers: the default model's video state as a replica kept in step by
additive updates keyed by video id (issue 12; the design and its evidence: ``docs/scaling.md``).

Each worker learns only its own viewers' events. Its :class:`VideoReplica` keeps a copy of the
*agreed* video state (what every worker has after the updates exchanged so far); :meth:`take`
returns what this worker added since (the difference, by video id: rows differ between
workers), and :meth:`apply` adds a peer's. Additions commute, so replicas that have applied the
same updates agree, in any order, without a single writer. New video vectors start from a
function of the video id and the seed (:class:`ReplicatedRanker`), so workers agree on a video
before any update. The shortlist's decayed popularity stays local: a worker's viewers are a
random sample of the group's, so its popularity estimates the group's.

>>> from contract.events import WatchEvent
>>> a, b = ReplicatedRanker(), ReplicatedRanker()
>>> ra, rb = VideoReplica(a), VideoReplica(b)
>>> a.learn_many([WatchEvent(1.0, "ann", "x"), WatchEvent(2.0, "ann", "y")])
>>> b.learn_many([WatchEvent(1.0, "bob", "y"), WatchEvent(2.0, "bob", "z")])
>>> from_a, from_b = ra.take(), rb.take()
>>> rb.apply(from_a); ra.apply(from_b)
>>> agree = [np.allclose(a._E.array[a.videos.get(v)], b._E.array[b.videos.get(v)]) for v in "xyz"]
>>> agree, sorted(a.videos.ids) == sorted(b.videos.ids) == ["x", "y", "z"]
([True, True, True], True)
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

import numpy as np

from model.embedding import EmbeddingRanker

__all__ = ["ReplicatedRanker", "VideoReplica", "VideoUpdates", "initial_vectors", "SHARED_TABLES"]

#: The per-video tables exchanged, by the model's part names (additive: vectors, their Adagrad
#: accumulators, biases and watch counts). The decayed popularity (``trending``) stays local.
SHARED_TABLES = (
    "video_vectors",
    "video_vectors_acc",
    "transitions",
    "transitions_acc",
    "video_bias",
    "video_bias_acc",
    "watch_counts",
)
_FORMAT = "streamrec.video-updates/1"


def initial_vectors(ids: list[str], dim: int, scale: float, seed: int) -> np.ndarray:
    """Normal(0, ``scale``) starting vectors, each drawn from a generator seeded by the video id
    and ``seed``: the same on every worker.

    >>> v = initial_vectors(["a", "b"], 4, 0.1, 0)
    >>> v.shape, bool((v == initial_vectors(["a", "b"], 4, 0.1, 0)).all()), bool((v[0] != v[1]).any())
    ((2, 4), True, True)
    """
    out = np.empty((len(ids), dim), dtype=np.float32)
    for i, video in enumerate(ids):
        digest = hashlib.blake2b(f"{seed}\x00{video}".encode(), digest_size=8).digest()
        out[i] = np.random.default_rng(int.from_bytes(digest, "big")).normal(0.0, scale, dim)
    return out


def _pack_ids(ids: list[str]) -> dict[str, np.ndarray]:
    """Ids as one UTF-8 blob and where each ends (fixed-width unicode arrays would take four
    bytes times the longest id for every id)."""
    encoded = [v.encode() for v in ids]
    return {
        "id_bytes": np.frombuffer(b"".join(encoded), dtype=np.uint8),
        "id_ends": np.cumsum([len(e) for e in encoded], dtype=np.int64),
    }


def _unpack_ids(blob: np.ndarray, ends: np.ndarray) -> list[str]:
    if not ends.size:
        return []
    data = blob.tobytes()
    starts = [0, *ends[:-1].tolist()]
    return [data[a:b].decode() for a, b in zip(starts, ends.tolist(), strict=True)]


class ReplicatedRanker(EmbeddingRanker):
    """The default model with new video vectors drawn from the video id (:func:`initial_vectors`)
    instead of its random stream, so every worker starts a video at the same point; otherwise
    the same model, under the same name."""

    def _grow(self, batch) -> None:  # noqa: ANN001 - the parent's private batch type
        super()._grow(batch)
        fresh = np.unique(batch.video_rows[~batch.video_known])
        if fresh.size:  # new ids, in new rows or in rows released by expiry and reused
            self._start(fresh)

    def _start(self, rows: np.ndarray) -> None:
        ids = [self.videos.id_of(int(r)) for r in rows]
        self._E.array[rows] = initial_vectors(ids, self.dim, self.init_scale, self.seed or 0)

    def adopt(self, ids: list[str]) -> np.ndarray:
        """Videos a peer met first, created here at their agreed start; their rows."""
        rows = self.videos.add_many(ids)
        n = len(self.videos)
        self._E.ensure(n)
        for table in self._video_tables().values():
            table.ensure(n)
        if self._use_cooc(n):
            self._cooc.ensure(n)
        for name, table in self._video_tables().items():
            if name != "video_vectors":
                table.reset(rows)  # a reused row holds what its last video left
        self._start(rows)
        self._changed()
        return rows


@dataclass
class VideoUpdates:
    """What one worker added to the video state: per video id, the change of each shared table;
    co-occurrence changes as ``(i, j, count)`` with ``i``, ``j`` positions in ``ids``, and each
    video's own count; the change of the co-occurrence weight and its accumulator."""

    ids: list[str]
    tables: dict[str, np.ndarray]
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray] = field(
        default_factory=lambda: (np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32))
    )
    own: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    alpha: np.ndarray = field(default_factory=lambda: np.zeros(2, np.float32))

    def __len__(self) -> int:
        return len(self.ids)

    def to_bytes(self) -> bytes:
        """The updates as one ``.npz`` (no pickle): a Kafka record's value."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            format=np.array(_FORMAT),
            **_pack_ids(self.ids),
            pair_i=self.pairs[0],
            pair_j=self.pairs[1],
            pair_count=self.pairs[2],
            own=self.own,
            alpha=self.alpha,
            **{f"table.{name}": values for name, values in self.tables.items()},
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> VideoUpdates:
        """Read :meth:`to_bytes`' output; ``ValueError`` for anything else."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                if str(arrays["format"]) != _FORMAT:
                    raise ValueError(f"not {_FORMAT}: {arrays['format']}")
                tables = {k.split(".", 1)[1]: arrays[k] for k in arrays.files if k.startswith("table.")}
                return cls(
                    ids=_unpack_ids(arrays["id_bytes"], arrays["id_ends"]),
                    tables=tables,
                    pairs=(arrays["pair_i"], arrays["pair_j"], arrays["pair_count"]),
                    own=arrays["own"],
                    alpha=arrays["alpha"],
                )
        except (OSError, KeyError, ValueError) as err:
            raise ValueError(f"not video updates: {err}") from None

    def records(self, budget: int = 900_000) -> list[bytes]:
        """The updates as records of at most ``budget`` bytes each (a Kafka record's limit is
        1 MB by default): the videos' rows in parts, then the co-occurrence pairs in parts."""
        rows = VideoUpdates(self.ids, self.tables, own=self.own, alpha=self.alpha)
        out = _fit(rows, budget, by_pairs=False)
        if self.pairs[2].size:
            i, j, counts = self.pairs
            involved = np.unique(np.concatenate([i, j]))
            position = np.full(len(self.ids), -1, dtype=np.int32)
            position[involved] = np.arange(involved.size, dtype=np.int32)
            pairs = VideoUpdates(
                [self.ids[k] for k in involved.tolist()],
                {},
                (position[i], position[j], counts),
                alpha=np.zeros(2, np.float32),
            )
            out += _fit(pairs, budget, by_pairs=True)
        return out

    def _videos(self, start: int, stop: int) -> VideoUpdates:
        return VideoUpdates(
            self.ids[start:stop],
            {name: values[start:stop] for name, values in self.tables.items()},
            own=self.own[start:stop] if self.own.size else self.own,
            alpha=self.alpha if start == 0 else np.zeros(2, np.float32),
        )

    def _pairs(self, start: int, stop: int) -> VideoUpdates:
        i, j, counts = (a[start:stop] for a in self.pairs)
        involved = np.unique(np.concatenate([i, j]))
        position = np.full(len(self.ids), -1, dtype=np.int32)
        position[involved] = np.arange(involved.size, dtype=np.int32)
        return VideoUpdates(
            [self.ids[k] for k in involved.tolist()],
            {},
            (position[i], position[j], counts),
            alpha=np.zeros(2, np.float32),
        )


def _fit(part: VideoUpdates, budget: int, by_pairs: bool) -> list[bytes]:
    """``part`` as records within ``budget`` bytes: halved (by videos, or by pairs) until each fits."""
    data = part.to_bytes()
    size = part.pairs[2].size if by_pairs else len(part.ids)
    if len(data) <= budget or size <= 1:
        return [data]
    half = size // 2
    cut = part._pairs if by_pairs else part._videos
    return _fit(cut(0, half), budget, by_pairs) + _fit(cut(half, size), budget, by_pairs)


class VideoReplica:
    """This worker's side of the exchange: the agreed video state, what it added since, and
    its peers' additions (see the module docstring). ``model`` is a :class:`ReplicatedRanker`.
    """

    def __init__(self, model: ReplicatedRanker) -> None:
        if not isinstance(model, ReplicatedRanker):
            raise TypeError("a replica needs the ReplicatedRanker (new vectors drawn from the video id)")
        self.model = model
        self.agree_all()

    # -- the agreed state ------------------------------------------------------------------

    def agree_all(self) -> None:
        """Take the model's whole video state as agreed: nothing of it is to be sent (a model
        restored without its replica state, or events replayed whose updates went out before)."""
        m = self.model
        parts = m.state_parts()
        self._agreed = {name: parts[name].array.copy() for name in SHARED_TABLES}
        self._ids = list(m.videos.ids)
        self._cooc = m._cooc.array.copy()
        self._own = m._cooc.counts.copy()
        self._alpha = np.array([m._alpha[0], m._alpha_acc[0]], dtype=np.float32)

    def _align(self) -> None:
        """Grow the agreed copy to the model's rows; a row whose video changed (new, or reused
        after expiry) is agreed at its video's start (the start is everyone's)."""
        m = self.model
        n = len(m.videos)
        ids = list(m.videos.ids[:n])
        for name in SHARED_TABLES:
            old = self._agreed[name]
            if old.shape[0] < n:
                grown = np.zeros((n, *old.shape[1:]), dtype=old.dtype)
                grown[: old.shape[0]] = old
                self._agreed[name] = grown
        changed = [r for r in range(n) if r >= len(self._ids) or self._ids[r] != ids[r]]
        if changed:
            rows = np.array(changed, dtype=np.int64)
            for name in SHARED_TABLES:
                self._agreed[name][rows] = 0
            self._agreed["video_vectors"][rows] = initial_vectors(
                [ids[r] for r in changed], m.dim, m.init_scale, m.seed or 0
            )
        self._ids = ids
        size = m._cooc.rows
        if self._cooc.shape[0] < size:
            grown = np.zeros((size, size), np.float32)
            grown[: self._cooc.shape[0], : self._cooc.shape[1]] = self._cooc
            self._cooc = grown
            own = np.zeros(size, np.float32)
            own[: self._own.size] = self._own
            self._own = own
        if changed and size:
            rows = np.array([r for r in changed if r < size], dtype=np.int64)
            self._cooc[rows, :] = 0
            self._cooc[:, rows] = 0
            self._own[rows] = 0

    # -- the exchange ----------------------------------------------------------------------

    def take(self) -> VideoUpdates:
        """What this worker added since the last take (or apply), by video id; from now on it is
        agreed (it is being sent)."""
        m = self.model
        self._align()
        n = len(m.videos)
        parts = m.state_parts()
        deltas = {name: parts[name].array[:n] - self._agreed[name][:n] for name in SHARED_TABLES}
        touched = np.zeros(n, dtype=bool)
        for d in deltas.values():
            if n:
                touched |= (d != 0).reshape(n, -1).any(axis=1)
        size = m._cooc.rows
        pair_rows = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        pair_counts = np.zeros(0, np.float32)
        own_delta = np.zeros(0, np.float32)
        if size:
            pair_delta = m._cooc.array - self._cooc[:size, :size]
            pair_rows = np.nonzero(pair_delta)
            pair_counts = pair_delta[pair_rows].astype(np.float32)
            own_delta = m._cooc.counts - self._own[:size]
            touched[:size] |= own_delta != 0
            touched[pair_rows[0]] = True
            touched[pair_rows[1]] = True
            self._cooc[:size, :size] = m._cooc.array
            self._own[:size] = m._cooc.counts
        rows = np.flatnonzero(touched)
        position = np.full(n, -1, dtype=np.int64)
        position[rows] = np.arange(rows.size)
        alpha_now = np.array([m._alpha[0], m._alpha_acc[0]], dtype=np.float32)
        updates = VideoUpdates(
            ids=[self._ids[r] for r in rows.tolist()],
            tables={name: d[rows] for name, d in deltas.items()},
            pairs=(
                position[pair_rows[0]].astype(np.int32),
                position[pair_rows[1]].astype(np.int32),
                pair_counts,
            ),
            own=own_delta[rows[rows < size]] if size else np.zeros(0, np.float32),
            alpha=alpha_now - self._alpha,
        )
        if size and rows.size and updates.own.size != rows.size:  # rows past the counts' size
            own = np.zeros(rows.size, np.float32)
            own[: updates.own.size] = updates.own
            updates.own = own
        for name in SHARED_TABLES:
            self._agreed[name][:n] = parts[name].array[:n]
        self._alpha = alpha_now
        return updates

    def apply(self, updates: VideoUpdates) -> None:
        """Add a peer's updates: to the model and to the agreed state alike (so they are not
        sent on as this worker's own); unknown videos are created at their agreed start."""
        if not len(updates):
            self._apply_alpha(updates.alpha)
            return
        m = self.model
        rows = m.videos.get_many(updates.ids)
        missing = [v for v, r in zip(updates.ids, rows.tolist(), strict=True) if r < 0]
        if missing:
            m.adopt(missing)
            rows = m.videos.get_many(updates.ids)
        i, j, counts = updates.pairs
        cooc = bool(counts.size or updates.own.size) and m._use_cooc(len(m.videos))
        if cooc:
            m._cooc.ensure(len(m.videos))  # before aligning: the agreed counts follow its size
        self._align()
        parts = m.state_parts()
        for name, values in updates.tables.items():
            parts[name].array[rows] += values
            self._agreed[name][rows] += values
        if cooc:
            if counts.size:
                np.add.at(m._cooc.array, (rows[i], rows[j]), counts)
                np.add.at(self._cooc, (rows[i], rows[j]), counts)
            if updates.own.size:
                m._cooc.counts[rows] += updates.own
                self._own[rows] += updates.own
        self._apply_alpha(updates.alpha)
        life = m._life
        if life.enabled and np.isfinite(life.clock.now):
            life.videos.touch(rows, life.clock.now)  # watched somewhere in the group: not idle
        m._changed()

    def _apply_alpha(self, alpha: np.ndarray) -> None:
        m = self.model
        m._alpha[0] += alpha[0]
        m._alpha_acc[0] += alpha[1]
        self._alpha += alpha

    # -- persistence -------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The agreed state, saved beside the model in a checkpoint."""
        return {
            "ids": np.array(self._ids, dtype=str),
            "cooc": self._cooc,
            "own": self._own,
            "alpha": self._alpha,
            **{f"table.{name}": values for name, values in self._agreed.items()},
        }

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self._ids = arrays["ids"].tolist()
        self._cooc = arrays["cooc"].copy()
        self._own = arrays["own"].copy()
        self._alpha = arrays["alpha"].copy()
        self._agreed = {name: arrays[f"table.{name}"].copy() for name in SHARED_TABLES}
