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

Taking costs what changed, not the catalogue: the model notes what it writes
(:class:`VideoChanges`: the rows of each batch, the co-occurrence pairs it counts, the rows
that change video), so :meth:`take` differences only those rows and sends the counted pairs
as they are, without a copy of the dense co-occurrence matrix to compare against.

The vectors' changes and their accumulators' may travel as 16- or 8-bit integers with a scale
per row (``precision``, :func:`quantize_rows`): most of a send's bytes. The sender then keeps
the rounded step it sends, not its exact one, so every replica adds the same numbers.

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
import json
from dataclasses import dataclass, field

import numpy as np

from model.compiled import add_pairs_both_ways, add_rows_both, add_rows_both_1d, quantized_step
from model.embedding import EmbeddingRanker
from model.ids import GrowableTable, packed_ids, saved_ids, unpack_ids
from model.kernels import dequantize_rows, quantize_rows

__all__ = [
    "ReplicatedRanker",
    "VideoChanges",
    "VideoReplica",
    "VideoUpdates",
    "initial_vectors",
    "SHARED_TABLES",
    "STEP_TABLES",
    "PRECISIONS",
    "quantize_rows",
    "dequantize_rows",
]

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
#: The tables of the model's steps (what ``step_weight`` scales): vectors and bias.
STEP_TABLES = ("video_vectors", "transitions", "video_bias")
#: The tables quantised when the exchange is (``VideoReplica.precision``): the vectors and their
#: Adagrad accumulators, 512 of a row's 540 bytes at dim 32 (biases and counts go as they are).
QUANTIZED_TABLES = ("video_vectors", "transitions", "video_vectors_acc", "transitions_acc")
#: Version 2: co-occurrence pairs once per unordered pair (added both ways), in the smallest
#: integer types that hold them. Version 1 (every ordered pair, float32) is still read.
#: Version 3: version 2 with some tables quantised (:func:`~model.kernels.quantize_rows`: integers and
#: a scale per row), written only when they are, so a worker that predates it refuses them loudly
#: instead of adding integers to its vectors.
_FORMAT = "streamrec.video-updates/2"
_FORMAT_QUANTIZED = "streamrec.video-updates/3"
_FORMAT_V1 = "streamrec.video-updates/1"

#: How the changes of the vectors and their accumulators travel (``--sync-precision``): as
#: float32, or quantised to 16- or 8-bit integers with a float32 scale per row
#: (:func:`quantize_rows`). The sender keeps exactly what it sends (its own model takes the
#: rounded step), so replicas still agree.
PRECISIONS: dict[str, type | None] = {"float32": None, "int16": np.int16, "int8": np.int8}


def _union(n: int, *rows: np.ndarray) -> np.ndarray:
    """The distinct rows below ``n`` among ``rows``, sorted: ``np.unique`` of them concatenated,
    by a mask over the catalogue (a send's pairs name tens of thousands of rows, mostly repeats,
    where sorting or hashing them all cost a third of the take).

    >>> _union(6, np.array([4, 1]), np.array([1, 1, 3])).tolist()
    [1, 3, 4]
    """
    mask = np.zeros(n, dtype=bool)
    for r in rows:
        mask[r] = True
    return np.flatnonzero(mask)


def _positions(n: int, rows: np.ndarray) -> np.ndarray:
    """Per row below ``n``, its position in ``rows`` (distinct), ``-1`` for a row not in them:
    what ``np.unique``'s ``return_inverse`` gives, for the rows :func:`_union` found.

    >>> _positions(5, np.array([1, 3, 4])).tolist()
    [-1, 0, -1, 1, 2]
    """
    position = np.full(n, -1, dtype=np.int64)
    position[rows] = np.arange(rows.size)
    return position


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


def _compact(values: np.ndarray) -> np.ndarray:
    """Whole non-negative numbers in the smallest unsigned integer type that holds them (counts
    and positions: 2 bytes instead of 4 on a catalogue under 65,536); anything else as it is.

    >>> _compact(np.array([0.0, 3.0, 70000.0], np.float32)).dtype, _compact(np.array([0.5])).dtype
    (dtype('uint32'), dtype('float64'))
    """
    if not values.size:
        return values
    if values.dtype.kind == "f" and not (np.all(values >= 0) and np.all(values == np.round(values))):
        return values
    if values.dtype.kind == "i" and values.min() < 0:
        return values
    return values.astype(np.min_scalar_type(int(values.max())))


_MAGIC = b"streamrec.video-updates/2\n"
_MAGIC_QUANTIZED = b"streamrec.video-updates/3\n"


def _pack(arrays: dict[str, np.ndarray], quantized: bool = False) -> bytes:
    """Named arrays as ``magic, header length (4 bytes), JSON header, data``; each array's data
    starts at a multiple of 8 bytes.

    >>> back = _unpack(_pack({"a": np.arange(3, dtype=np.uint16), "b": np.ones((2, 2), np.float32)}))
    >>> back["a"].tolist(), back["b"].shape, back["b"].dtype
    ([0, 1, 2], (2, 2), dtype('float32'))
    """
    entries, offset = [], 0
    for name, values in arrays.items():
        values = np.ascontiguousarray(values)
        entries.append([name, values.dtype.str, list(values.shape), offset])
        offset += -(-values.nbytes // 8) * 8
    magic = _MAGIC_QUANTIZED if quantized else _MAGIC
    header = json.dumps({"format": _FORMAT_QUANTIZED if quantized else _FORMAT, "arrays": entries}).encode()
    out = bytearray(len(magic) + 4 + len(header) + offset)
    out[: len(magic)] = magic
    out[len(magic) : len(magic) + 4] = len(header).to_bytes(4, "little")
    start = len(magic) + 4 + len(header)
    out[start - len(header) : start] = header
    body = np.frombuffer(out, dtype=np.uint8, offset=start)
    for (_, _, _, at), values in zip(entries, arrays.values(), strict=True):
        data = np.ascontiguousarray(values).reshape(-1).view(np.uint8)
        body[at : at + data.size] = data
    return bytes(out)


def _unpack(data: bytes) -> dict[str, np.ndarray]:
    """:func:`_pack`'s arrays, read-only views of ``data``; ``ValueError`` if it is not one."""
    if data[: len(_MAGIC)] not in (_MAGIC, _MAGIC_QUANTIZED):  # the same length
        raise ValueError(f"not {_FORMAT} or {_FORMAT_QUANTIZED}")
    size = int.from_bytes(data[len(_MAGIC) : len(_MAGIC) + 4], "little")
    start = len(_MAGIC) + 4 + size
    header = json.loads(data[len(_MAGIC) + 4 : start])
    out = {}
    for name, dtype, shape, at in header["arrays"]:
        kind = np.dtype(dtype)
        if kind.kind not in "biuf":
            raise ValueError(f"array {name} of type {dtype}")
        count = int(np.prod(shape, dtype=np.int64))
        if at < 0 or start + at + count * kind.itemsize > len(data):
            raise ValueError(f"array {name} runs past the record's end")
        out[name] = np.frombuffer(data, dtype=kind, count=count, offset=start + at).reshape(shape)
    return out


class VideoChanges:
    """What a :class:`ReplicatedRanker` wrote to its shared video state since its replica last
    took it: rows of the shared tables written (``dirty``), rows whose video changed (created,
    reused or released), and the co-occurrence counts added, as the pairs counted and each
    event's video (the model's :func:`~model.compiled.cooc_add` adds a pair both ways and the
    video once). A release drops what was counted for the released rows: their counts are
    cleared in the model too.

    >>> c = VideoChanges()
    >>> c.counted(np.array([[1, -1], [0, 2]]), np.array([0, 3]), window=2)
    >>> lo, hi, counts, own_rows, own_counts = c.pop_counts()
    >>> lo.tolist(), hi.tolist(), counts.tolist(), own_rows.tolist(), own_counts.tolist()
    ([0, 0, 2], [1, 3, 3], [1.0, 1.0, 1.0], [0, 3], [1.0, 1.0])
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Nothing changed (everything the model holds is agreed)."""
        self._dirty = np.zeros(1024, dtype=bool)
        self._renamed: list[np.ndarray] = []
        self.forget_counts()

    # -- noting ---------------------------------------------------------------------------------

    def wrote(self, *rows: np.ndarray) -> None:
        """Rows of the shared tables were written."""
        for r in rows:
            if r.size:
                top = int(r.max()) + 1
                if top > self._dirty.size:
                    grown = np.zeros(max(top, 2 * self._dirty.size), dtype=bool)
                    grown[: self._dirty.size] = self._dirty
                    self._dirty = grown
                self._dirty[r] = True

    def renamed(self, rows: np.ndarray) -> None:
        """Rows now hold another video (created for a new one, reused, or released)."""
        if rows.size:
            self._renamed.append(np.asarray(rows, dtype=np.int64))

    def counted(self, history: np.ndarray, videos: np.ndarray, window: int) -> None:
        """The co-occurrence counts the model adds for a batch (as :func:`model.compiled.cooc_add`):
        each event's video with each of the first ``window`` videos of its history, once."""
        reach = min(window, history.shape[1])
        near = history[:, :reach]
        video = np.broadcast_to(videos[:, None], near.shape)
        ok = (near >= 0) & (near != video)
        i, j = video[ok], near[ok]
        self._lo.append(np.minimum(i, j).astype(np.int64))
        self._hi.append(np.maximum(i, j).astype(np.int64))
        self._weight.append(np.ones(i.size, np.float32))
        self._own_rows.append(np.asarray(videos, dtype=np.int64))
        self._own_weight.append(np.ones(videos.size, np.float32))

    def carried(
        self, lo: np.ndarray, hi: np.ndarray, counts: np.ndarray, own_rows: np.ndarray, own_counts: np.ndarray
    ) -> None:
        """Counts already summed (restored from a checkpoint), pending like counted ones."""
        self._lo.append(lo.astype(np.int64))
        self._hi.append(hi.astype(np.int64))
        self._weight.append(counts.astype(np.float32))
        self._own_rows.append(own_rows.astype(np.int64))
        self._own_weight.append(own_counts.astype(np.float32))

    def forget_counts(self) -> None:
        """The model dropped its co-occurrence counts (past its cap): nothing of them to send."""
        self._lo: list[np.ndarray] = []
        self._hi: list[np.ndarray] = []
        self._weight: list[np.ndarray] = []
        self._own_rows: list[np.ndarray] = []
        self._own_weight: list[np.ndarray] = []

    def released(self, rows: np.ndarray) -> None:
        """Rows released by expiry: their counts are gone, and so is anything noted of them."""
        if not rows.size:
            return
        self.renamed(rows)
        lo, hi, weight, own_rows, own_weight = self.pop_counts(summed=False)
        keep = ~(np.isin(lo, rows) | np.isin(hi, rows))
        keep_own = ~np.isin(own_rows, rows)
        self.carried(lo[keep], hi[keep], weight[keep], own_rows[keep_own], own_weight[keep_own])
        self._dirty[rows[rows < self._dirty.size]] = False

    # -- taking ---------------------------------------------------------------------------------

    def pop_dirty(self, n: int) -> np.ndarray:
        """The rows below ``n`` written since the last call, sorted; forgets them."""
        rows = np.flatnonzero(self._dirty[:n])
        self._dirty[:] = False
        return rows

    def pop_renamed(self) -> np.ndarray:
        """The rows that changed video since the last call, sorted; forgets them."""
        rows = np.unique(np.concatenate(self._renamed)) if self._renamed else np.zeros(0, np.int64)
        self._renamed = []
        return rows

    def pop_counts(self, summed: bool = True) -> tuple[np.ndarray, ...]:
        """``(lo, hi, counts, own_rows, own_counts)`` noted since the last call (``summed``:
        one entry per pair and per row, sorted); forgets them."""
        parts = (self._lo, self._hi, self._weight, self._own_rows, self._own_weight)
        lo, hi, weight, own_rows, own_weight = (
            np.concatenate(p) if p else np.zeros(0, np.float32 if k in (2, 4) else np.int64)
            for k, p in enumerate(parts)
        )
        self.forget_counts()
        if not summed or not lo.size and not own_rows.size:
            return lo, hi, weight, own_rows, own_weight
        size = int(max(hi.max(initial=-1), own_rows.max(initial=-1))) + 1
        codes, at = np.unique(lo * size + hi, return_inverse=True)
        counts = np.bincount(at.ravel(), weights=weight, minlength=codes.size).astype(np.float32)
        own_all = np.bincount(own_rows, weights=own_weight, minlength=size)
        rows = np.flatnonzero(own_all)
        return codes // size, codes % size, counts, rows, own_all[rows].astype(np.float32)

    # -- persistence ----------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """What is noted and not yet taken (saved with the replica; the lists are summed)."""
        lo, hi, counts, own_rows, own_counts = self.pop_counts()
        self.carried(lo, hi, counts, own_rows, own_counts)
        renamed = self.pop_renamed()
        self.renamed(renamed)
        return {
            "dirty": np.flatnonzero(self._dirty),
            "renamed": renamed,
            "pair_lo": lo,
            "pair_hi": hi,
            "pair_count": counts,
            "own_rows": own_rows,
            "own_count": own_counts,
        }

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.clear()
        self.wrote(arrays["dirty"])
        self.renamed(arrays["renamed"])
        self.carried(
            arrays["pair_lo"],
            arrays["pair_hi"],
            arrays["pair_count"],
            arrays["own_rows"],
            arrays["own_count"],
        )


class ReplicatedRanker(EmbeddingRanker):
    """The default model with new video vectors drawn from the video id (:func:`initial_vectors`)
    instead of its random stream, so every worker starts a video at the same point, and noting
    what it writes to the shared video state (:attr:`changes`); otherwise the same model, under
    the same name."""

    def _init_state(self) -> None:
        super()._init_state()
        #: What was written since the replica last took (:class:`VideoChanges`).
        self.changes = VideoChanges()

    def _grow(self, batch) -> None:  # noqa: ANN001 - the parent's private batch type
        super()._grow(batch)
        fresh = np.unique(batch.video_rows[~batch.video_known])
        if fresh.size:  # new ids, in new rows or in rows released by expiry and reused
            self._start(fresh)
            self.changes.renamed(fresh)

    def _update(self, events, batch, *step) -> None:  # noqa: ANN001 - the parent's private types
        # Noted before the parent's step: expiry at its end may release rows counted here.
        if self._use_cooc(len(self.videos)):
            self.changes.counted(batch.history, batch.video_rows, self.cooc_window)
        else:
            self.changes.forget_counts()
        self.changes.wrote(batch.columns, batch.in_history, batch.video_rows)
        super()._update(events, batch, *step)

    def _expire(self) -> None:
        before = len(self.videos.free_rows)
        super()._expire()
        self.changes.released(np.asarray(self.videos.free_rows[before:], dtype=np.int64))

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
        self._fit_cooc(n)
        for name, table in self._video_tables().items():
            if name != "video_vectors":
                table.reset(rows)  # a reused row holds what its last video left
        self._start(rows)
        self.changes.renamed(rows)
        self._changed()
        return rows


@dataclass
class VideoUpdates:
    """What one worker added to the video state: per video id, the change of each shared table;
    co-occurrence changes as ``(i, j, count)`` with ``i``, ``j`` positions in ``ids``, each
    unordered pair once (added at ``(i, j)`` and ``(j, i)``), and each video's own count; the
    change of the co-occurrence weight and its accumulator. A table named in ``scales`` is
    quantised: ``tables[name]`` holds integers, and :meth:`table` the values they stand for."""

    ids: list[str]
    tables: dict[str, np.ndarray]
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray] = field(
        default_factory=lambda: (np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32))
    )
    own: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    alpha: np.ndarray = field(default_factory=lambda: np.zeros(2, np.float32))
    #: Per quantised table, the scale of each row (:func:`quantize_rows`).
    scales: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def table(self, name: str) -> np.ndarray:
        """The change of table ``name`` per video, as it is added (dequantised if it travels so)."""
        values = self.tables[name]
        return dequantize_rows(values, self.scales[name]) if name in self.scales else values

    def negated(self) -> VideoUpdates:
        """The same updates taken back: applied after these, nothing changed (quantised tables
        stay integers: they are rounded symmetrically, so every value has its opposite)."""
        i, j, counts = self.pairs
        return VideoUpdates(
            ids=self.ids,
            tables={name: -values for name, values in self.tables.items()},
            pairs=(i, j, -counts),
            own=-self.own,
            alpha=-self.alpha,
            scales=self.scales,
        )

    @property
    def watches(self) -> float:
        """How many watch events' learning the updates carry: their watch counts, summed (one
        per event learned; 0 when they carry no counts)."""
        return float(self.table("watch_counts").sum()) if "watch_counts" in self.tables else 0.0

    def to_bytes(self) -> bytes:
        """The updates as one record value: a small JSON header naming each array (dtype, shape,
        where it starts) and the arrays' bytes after it (no pickle, no zip: one copy of each)."""
        arrays = {
            **packed_ids(self.ids),
            "pair_i": _compact(self.pairs[0]),
            "pair_j": _compact(self.pairs[1]),
            "pair_count": _compact(self.pairs[2]),
            "own": _compact(self.own),
            "alpha": self.alpha,
            **{f"table.{name}": values for name, values in self.tables.items()},
            **{f"scale.{name}": values for name, values in self.scales.items()},
        }
        return _pack(arrays, quantized=bool(self.scales))

    @classmethod
    def from_bytes(cls, data: bytes) -> VideoUpdates:
        """Read :meth:`to_bytes`' output (or version 1's ``.npz``); ``ValueError`` for anything else."""
        try:
            if data[:2] == b"PK":  # version 1
                with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                    arrays = {k: npz[k] for k in npz.files}
                if str(arrays.get("format")) != _FORMAT_V1:
                    raise ValueError(f"not {_FORMAT}: {arrays.get('format')}")
            else:
                arrays = _unpack(data)
            tables = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("table.")}
            scales = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("scale.")}
            if any(k not in tables or v.shape != tables[k].shape[:1] for k, v in scales.items()):
                raise ValueError("a scale without its table, or of another length")
            i, j, counts = (arrays[k] for k in ("pair_i", "pair_j", "pair_count"))
            if "format" in arrays:  # version 1: every ordered pair, so each unordered one twice
                once = i < j
                i, j, counts = i[once], j[once], counts[once]
            return cls(
                ids=unpack_ids(arrays["id_bytes"], arrays["id_ends"]),
                tables=tables,
                pairs=(i.astype(np.int64), j.astype(np.int64), counts.astype(np.float32)),
                own=arrays["own"].astype(np.float32),
                alpha=arrays["alpha"].astype(np.float32),
                scales=scales,
            )
        except (OSError, KeyError, ValueError, TypeError, UnicodeDecodeError) as err:
            raise ValueError(f"not video updates: {err}") from None

    def records(self, budget: int = 900_000) -> list[bytes]:
        """The updates as records of at most ``budget`` bytes each (a Kafka record's limit is
        1 MB by default): the videos' rows in parts, then the co-occurrence pairs in parts."""
        rows = VideoUpdates(self.ids, self.tables, own=self.own, alpha=self.alpha, scales=self.scales)
        out = _fit(rows, budget, by_pairs=False)
        if self.pairs[2].size:
            out += _fit(self._pairs(0, self.pairs[2].size), budget, by_pairs=True)
        return out

    def _videos(self, start: int, stop: int) -> VideoUpdates:
        return VideoUpdates(
            self.ids[start:stop],
            {name: values[start:stop] for name, values in self.tables.items()},
            own=self.own[start:stop] if self.own.size else self.own,
            alpha=self.alpha if start == 0 else np.zeros(2, np.float32),
            scales={name: values[start:stop] for name, values in self.scales.items()},
        )

    def _pairs(self, start: int, stop: int) -> VideoUpdates:
        i, j, counts = (a[start:stop] for a in self.pairs)
        # np.unique(..., return_inverse=True) of the pairs' videos, by a mask over this update's
        # videos: the same sorted videos and positions, without sorting tens of thousands.
        involved = _union(len(self.ids), i, j)
        at = _positions(len(self.ids), involved)[np.concatenate([i, j])]
        return VideoUpdates(
            [self.ids[k] for k in involved.tolist()],
            {},
            (at[: i.size], at[i.size :], counts),
            alpha=np.zeros(2, np.float32),
        )

    def _size_estimate(self) -> int:
        """Bytes :meth:`to_bytes` writes, near enough to plan the parts (each array's data and
        about 100 bytes of header; the ids as UTF-8 and where each ends)."""
        arrays = [
            *self.tables.values(),
            *self.scales.values(),
            *map(_compact, self.pairs),
            _compact(self.own),
            self.alpha,
        ]
        return sum(a.nbytes for a in arrays) + sum(len(v) + 8 for v in self.ids) + 100 * (len(arrays) + 4)


def _fit(part: VideoUpdates, budget: int, by_pairs: bool) -> list[bytes]:
    """``part`` as records within ``budget`` bytes: cut into as many even parts (by videos, or
    by pairs) as its estimated size needs, each halved again should it still not fit."""
    size = part.pairs[2].size if by_pairs else len(part.ids)
    cut = part._pairs if by_pairs else part._videos
    parts = -(-part._size_estimate() // budget)
    if parts > 1 and size > 1:
        bounds = np.linspace(0, size, min(parts, size) + 1).astype(int)
        return [
            r for a, b in zip(bounds[:-1], bounds[1:], strict=True) for r in _fit(cut(a, b), budget, by_pairs)
        ]
    data = part.to_bytes()
    if len(data) <= budget or size <= 1:
        return [data]
    half = size // 2
    return _fit(cut(0, half), budget, by_pairs) + _fit(cut(half, size), budget, by_pairs)


class VideoReplica:
    """This worker's side of the exchange: the agreed video state, what it added since, and
    its peers' additions (see the module docstring). ``model`` is a :class:`ReplicatedRanker`.
    """

    def __init__(self, model: ReplicatedRanker, precision: str = "float32") -> None:
        if not isinstance(model, ReplicatedRanker):
            raise TypeError("a replica needs the ReplicatedRanker (new vectors drawn from the video id)")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.model = model
        #: How the changes of :data:`QUANTIZED_TABLES` travel (:data:`PRECISIONS`).
        self.precision = precision
        #: The weight of this worker's own steps in what it sends, and keeps: 1 sums the
        #: workers' steps (sequential SGD when sends are close); ``1 / N`` over N workers
        #: averages them (federated averaging, which does not overshoot when sends are far
        #: apart). Accumulators and counts are always summed.
        self.step_weight = 1.0
        self.agree_all()

    # -- the agreed state ------------------------------------------------------------------

    def agree_all(self) -> None:
        """Take the model's whole video state as agreed: nothing of it is to be sent (a model
        restored without its replica state, or events replayed whose updates went out before)."""
        m = self.model
        parts = m.state_parts()
        n = len(m.videos)
        self._agreed: dict[str, GrowableTable] = {}
        for name in SHARED_TABLES:
            source = parts[name]
            table = GrowableTable(source.dim, capacity=max(n, 1024), dtype=source.array.dtype)
            table.ensure(n)[:] = source.array[:n]
            self._agreed[name] = table
        self._alpha = np.array([m._alpha[0], m._alpha_acc[0]], dtype=np.float32)
        m.changes.clear()

    def _align(self) -> None:
        """Grow the agreed copy to the model's rows; a row whose video changed is agreed at its
        video's start (the start is everyone's), a released row at what it holds (its video is
        gone here, not in the group: nothing of it is sent)."""
        m = self.model
        n = len(m.videos)
        for table in self._agreed.values():
            table.ensure(n)
        rows = m.changes.pop_renamed()
        rows = rows[rows < n]
        if not rows.size:
            return
        ids = [m.videos.id_of(int(r)) for r in rows]
        live = np.array([bool(v) for v in ids])
        parts = m.state_parts()
        gone, fresh = rows[~live], rows[live]
        for name, table in self._agreed.items():
            table.array[gone] = parts[name].array[gone]
            table.array[fresh] = 0
        self._agreed["video_vectors"].array[fresh] = initial_vectors(
            [v for v in ids if v], m.dim, m.init_scale, m.seed or 0
        )

    # -- the exchange ----------------------------------------------------------------------

    def take(self) -> VideoUpdates:
        """What this worker added since the last take (or apply), by video id; from now on it is
        agreed (it is being sent). Costs the rows written since, not the catalogue."""
        m = self.model
        self._align()
        n = len(m.videos)
        parts = m.state_parts()
        dirty = m.changes.pop_dirty(n)
        deltas = {name: parts[name].array[dirty] - self._agreed[name].array[dirty] for name in SHARED_TABLES}
        changed = np.zeros(dirty.size, dtype=bool)
        for d in deltas.values():
            changed |= (d != 0).any(axis=1) if d.ndim == 2 else d != 0
        # What is sent is what this worker keeps: its steps at their weight, the vectors and
        # accumulators rounded as they travel; its rows become the agreed ones plus exactly that.
        rewritten = set()
        if self.step_weight != 1.0:  # this worker's steps count at their weight, here as everywhere
            for name in STEP_TABLES:
                deltas[name] = (deltas[name] * self.step_weight).astype(deltas[name].dtype)
                rewritten.add(name)
        scales: dict[str, np.ndarray] = {}
        quantized: dict[str, np.ndarray] = {}
        kind = PRECISIONS[self.precision]
        if kind is not None:  # rounded, kept and agreed in one compiled pass per table
            top = np.iinfo(kind).max
            for name in QUANTIZED_TABLES:
                d = np.ascontiguousarray(deltas[name], dtype=np.float32)
                q, scale = np.empty(d.shape, dtype=kind), np.empty(d.shape[0], dtype=np.float32)
                quantized_step(d, top, q, scale, parts[name].array, self._agreed[name].array, dirty)
                quantized[name], scales[name] = q, scale
        for name in rewritten - quantized.keys():
            parts[name].array[dirty] = self._agreed[name].array[dirty] + deltas[name]
        for name in SHARED_TABLES:
            if name not in quantized:
                self._agreed[name].array[dirty] = parts[name].array[dirty]
        lo, hi, counts, own_rows, own_counts = m.changes.pop_counts()
        cooc = m._cooc.rows > 0
        rows = _union(n, dirty[changed], lo, hi, own_rows) if cooc else dirty[changed]
        ids = m.videos.ids
        named = [ids[r] for r in rows.tolist()]
        if "" in named:  # released since: their changes went with them
            keep = np.array([bool(v) for v in named])
            rows, named = rows[keep], [v for v in named if v]
        position = _positions(n, rows)
        tables, sent_scales = {}, {}
        at = position[dirty[changed]]
        placed = at >= 0

        def placed_at(values: np.ndarray) -> np.ndarray:
            out = np.zeros((rows.size, *values.shape[1:]), dtype=values.dtype)
            out[at[placed]] = values[changed][placed]
            return out

        for name, d in deltas.items():
            tables[name] = placed_at(quantized.get(name, d))
        for name, scale in scales.items():
            sent_scales[name] = placed_at(scale)
        own = np.zeros(rows.size if cooc else 0, np.float32)
        pairs = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
        if cooc:
            kept = position[own_rows] >= 0
            own[position[own_rows[kept]]] = own_counts[kept]
            i, j = position[lo], position[hi]
            kept = (i >= 0) & (j >= 0)
            pairs = (i[kept], j[kept], counts[kept])
        alpha_now = np.array([m._alpha[0], m._alpha_acc[0]], dtype=np.float32)
        updates = VideoUpdates(
            ids=named, tables=tables, pairs=pairs, own=own, alpha=alpha_now - self._alpha, scales=sent_scales
        )
        self._alpha = alpha_now
        return updates

    def discard(self) -> None:
        """Take back what this worker added since the last take (or apply): its model's video
        state goes back to the agreed one, while what it learned of its viewers stays. For
        events learned again whose learning the replica already holds, applied from the update
        topic as their first learning was sent: learned twice, they would count twice here and
        once everywhere else."""
        self.apply(self.take().negated())

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
        self._align()
        parts = m.state_parts()
        for name in updates.tables:
            values = updates.table(name)
            add = add_rows_both if values.ndim == 2 else add_rows_both_1d
            add(parts[name].array, self._agreed[name].array, rows, values)
        i, j, counts = updates.pairs
        if (counts.size or updates.own.size) and m._use_cooc(len(m.videos)):
            m._cooc.ensure(len(m.videos))
            if counts.size:  # each pair once and i != j: no cell named twice
                add_pairs_both_ways(m._cooc.array, rows[i], rows[j], counts)
            if updates.own.size:
                m._cooc.counts[rows] += updates.own
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

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot(self) -> VideoUpdates:
        """The agreed video state as one update that a fresh replica applies to hold it: for
        each video that received anything, its agreed rows less its start (the vectors' start is
        its id's, every other table's is zero), the agreed co-occurrence pairs and counts, and the
        co-occurrence weight less a fresh model's. What this worker learned and has not taken is
        not in it (the agreed copy and the noted counts keep it apart).

        Applied to a fresh replica it equals applying every update the agreed state is made of;
        which updates those are (and where they sit in the update topic) is the caller's to know
        (``consumer.snapshot``)."""
        m = self.model
        self._align()
        n = len(m.videos)
        ids = m.videos.ids
        agreed = {name: table.array[:n] for name, table in self._agreed.items()}
        pending = m.changes.pop_counts()
        m.changes.carried(*pending)  # noted, not taken: still to be sent, so not in the snapshot
        lo, hi, counts, own_rows, own_counts = pending
        cooc = m._cooc.rows > 0 and m._use_cooc(n)
        if cooc:
            matrix = m._cooc.array[:n, :n].copy()
            matrix[lo, hi] -= counts
            matrix[hi, lo] -= counts
            own_all = m._cooc.counts[:n].copy()
            own_all[own_rows] -= own_counts
        live = np.array([bool(v) for v in ids], dtype=bool)
        touched = np.zeros(n, dtype=bool)
        for name in SHARED_TABLES:
            if name != "video_vectors":
                values = agreed[name]
                touched |= (values != 0).any(axis=1) if values.ndim == 2 else values != 0
        if cooc:
            touched |= own_all != 0
        rows = np.flatnonzero(live & touched)
        named = [ids[r] for r in rows.tolist()]
        tables = {name: agreed[name][rows].copy() for name in SHARED_TABLES}
        tables["video_vectors"] -= initial_vectors(named, m.dim, m.init_scale, m.seed or 0)
        pairs = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
        own = np.zeros(0, np.float32)
        if cooc:  # pairs by position in ``rows``, as :meth:`take` numbers them
            sub = matrix[np.ix_(rows, rows)]
            i, j = np.nonzero(np.triu(sub, 1))
            pairs = (i.astype(np.int64), j.astype(np.int64), sub[i, j].astype(np.float32))
            own = own_all[rows].astype(np.float32)
        alpha = self._alpha - np.array([m.cooc_weight, 0.0], dtype=np.float32)
        return VideoUpdates(ids=named, tables=tables, pairs=pairs, own=own, alpha=alpha)

    # -- persistence -------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The agreed state and what is noted but not yet taken, saved beside the model in a
        checkpoint (the model's co-occurrence counts less the noted ones are the agreed ones)."""
        self._align()
        ids = self.model.videos.ids
        return {
            **packed_ids(ids),
            "alpha": self._alpha,
            **{f"table.{name}": table.array for name, table in self._agreed.items()},
            **{f"changes.{k}": v for k, v in self.model.changes.to_arrays().items()},
        }

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore :meth:`to_arrays`' output beside the model restored with it. A replica saved
        before the changes were noted (a dense copy of the counts, ``cooc``) is read too: every
        row is compared once and the counts' difference is pending."""
        m = self.model
        self._alpha = arrays["alpha"].copy()
        for name in SHARED_TABLES:
            values = arrays[f"table.{name}"]
            table = GrowableTable(values.shape[1] if values.ndim == 2 else 0, dtype=values.dtype)
            table.ensure(values.shape[0])[:] = values
            self._agreed[name] = table
        if "changes.dirty" in arrays:
            m.changes.load_arrays(
                {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("changes.")}
            )
        else:
            m.changes.clear()
            m.changes.wrote(np.arange(len(m.videos)))
            if m._cooc.rows and "cooc" in arrays:
                size = min(m._cooc.rows, arrays["cooc"].shape[0])
                diff = m._cooc.array[:size, :size] - arrays["cooc"][:size, :size]
                lo, hi = np.nonzero(np.triu(diff, 1))
                own = m._cooc.counts[:size] - arrays["own"][:size]
                own_rows = np.flatnonzero(own)
                m.changes.carried(lo, hi, diff[lo, hi], own_rows, own[own_rows])
        saved = saved_ids(arrays)
        now = m.videos.ids
        moved = [r for r in range(len(now)) if r >= len(saved) or saved[r] != now[r]]
        m.changes.renamed(np.array(moved, dtype=np.int64))
