"""Which videos each viewer has watched, and the cells to exclude when ranking a batch.

Exclusion is *causal inside a batch*: event ``i`` excludes what its viewer watched before the
batch plus the videos of that viewer's earlier events in the same batch, never later ones. So
a batch of one and a batch of many exclude exactly the same videos for each event.

>>> seen = SeenVideos()
>>> seen.add(0, 5); seen.add(0, 7)
>>> rows, cols = seen.exclusion_for_events([0, 0, -1], [9, 3, 5])
>>> sorted(zip(rows.tolist(), cols.tolist()))
[(0, 5), (0, 7), (1, 5), (1, 7), (1, 9)]

"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence

import numpy as np

from contract.events import WatchEvent
from model.compiled import exclusion_cells
from model.history import group_positions
from model.ids import IdIndex

__all__ = ["Cells", "SeenVideos", "unknown_keyed", "viewer_keys"]

_EMPTY = np.zeros(0, dtype=np.int64)
_NO_ROW = array("q")


def _joined(rows: Sequence[array]) -> tuple[np.ndarray, np.ndarray]:
    """The lengths of ``rows`` and their videos one after the other, as int64 arrays (writable:
    the buffers are joined in C, then copied once into an array numpy owns the memory of)."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    joined = array("q")
    joined.frombytes(b"".join(rows))
    return lengths, np.frombuffer(joined, dtype=np.int64) if joined else _EMPTY.copy()


def viewer_keys(viewers: IdIndex, events: Sequence[WatchEvent]) -> np.ndarray:
    """Per event, the viewer's row, or a shared negative key for a viewer not known yet.

    This is the ``viewer_keys`` argument of :meth:`SeenVideos.exclusion_for_events`; it creates
    no rows, so ranking a batch never grows the model. The known rows are looked up in one
    call; only the events of unknown viewers take a step of their own.
    """
    ids = [e.viewer for e in events]
    return unknown_keyed(viewers.get_many(ids), ids)


def unknown_keyed(rows: np.ndarray, ids: Sequence[str]) -> np.ndarray:
    """:func:`viewer_keys` from the viewers' rows (``-1``: unknown) and ids: each unknown viewer
    gets a negative key of its own, shared by its events (``rows`` is filled in place).

    >>> unknown_keyed(np.array([3, -1, -1, 0, -1]), ["a", "b", "c", "d", "b"]).tolist()
    [3, -2, -3, 0, -2]
    """
    unknown = np.flatnonzero(rows < 0)
    if unknown.size:
        new: dict[str, int] = {}
        for i in unknown.tolist():
            rows[i] = new.setdefault(ids[i], -2 - len(new))
    return rows


class Cells:
    """Exclusion cells of a batch, made from compressed rows ``(ptr, videos)`` (row ``i``'s
    videos ``videos[ptr[i]:ptr[i+1]]``, ``-1`` where a video is unknown): ``compressed`` as
    they are, for :mod:`model.topk`'s compiled ranking, which reads them so; unpacked as
    ``rows, cols = cells`` (or ``cells[0]``, ``cells[1]``), the ``(rows, cols)`` pair of the
    known videos, made on first use (on ML-100K a batch excludes some 50,000 cells: the popular
    baselines never need them as pairs).
    """

    __slots__ = ("compressed", "_pair")

    def __init__(self, ptr: np.ndarray, videos: np.ndarray) -> None:
        self.compressed = (ptr, videos)
        self._pair: tuple[np.ndarray, np.ndarray] | None = None

    def _cells(self) -> tuple[np.ndarray, np.ndarray]:
        if self._pair is None:
            ptr, videos = self.compressed
            rows = np.repeat(np.arange(ptr.size - 1, dtype=np.int64), np.diff(ptr))
            counted = videos >= 0
            self._pair = (rows, videos) if counted.all() else (rows[counted], videos[counted])
        return self._pair

    def __iter__(self):
        return iter(self._cells())

    def __getitem__(self, index: int) -> np.ndarray:
        return self._cells()[index]

    def __len__(self) -> int:
        return 2


def _row(videos: Iterable[int] = ()) -> array:
    """One viewer's list: 64-bit integers in one buffer (``array('q')``)."""
    return array("q", videos)


class SeenVideos:
    """Per-viewer lists of watched video rows, indexed by viewer row.

    Each list is an ``array('q')``: eight bytes a watch in one buffer, where a Python list held
    a pointer to an int object somewhere on the heap (about 36 bytes a watch). A batch's
    exclusions join its viewers' buffers in one call (``bytes.join``) instead of reading each
    int object, and that was a cache miss per watch: 91 us against about 10 for the 1,300
    watches of a 10,000-video batch's 42 viewers.
    """

    def __init__(self) -> None:
        self._seen: list[array] = []
        self._entries = 0  # sum of the lists' lengths, kept as they change (entries() is per poll)

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, viewer_row: int, video_row: int) -> None:
        seen = self._seen
        while viewer_row >= len(seen):
            seen.append(_row())
        seen[viewer_row].append(video_row)
        self._entries += 1

    def add_many(
        self,
        viewer_rows: np.ndarray,
        video_rows: np.ndarray,
        grouping: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """:meth:`add` for a batch, in order: one list extension per distinct viewer.

        Viewers arrive in bursts (about 8 distinct viewers in 256 ML-100K events), so this is a
        handful of ``list.extend`` calls instead of one Python call per event.

        >>> s = SeenVideos(); s.add_many(np.array([1, 0, 1]), np.array([7, 8, 9])); s.of(1), s.of(0)
        ([7, 9], [8])
        """
        viewer_rows = np.asarray(viewer_rows, dtype=np.int64)
        if viewer_rows.size == 0:
            return
        seen = self._seen
        top = int(viewer_rows.max())
        if top >= len(seen):
            seen.extend(_row() for _ in range(top + 1 - len(seen)))
        if grouping is None:
            order = np.argsort(viewer_rows, kind="stable")
            keys = viewer_rows[order]
            starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        else:  # group_positions(viewer_rows), which the caller had
            order, _, within = grouping
            keys = viewer_rows[order]
            starts = np.flatnonzero(within == 0)
        bounds = np.r_[starts, keys.size].tolist()
        videos = np.asarray(video_rows, dtype=np.int64)[order].tolist()
        for v, a, b in zip(keys[starts].tolist(), bounds[:-1], bounds[1:], strict=True):
            seen[v].extend(videos[a:b])
        self._entries += len(videos)

    def nbytes(self) -> int:
        """About how many bytes the lists take: eight a watch (and an eighth more for the room
        a growing buffer keeps), 88 a viewer (the array object and its slot)."""
        return 9 * self._entries + 88 * len(self._seen)

    def entries(self) -> int:
        """How many (viewer, video) watches the lists hold in all.

        >>> s = SeenVideos(); s.add(0, 1); s.add(2, 1); s.entries()
        2

        A running count: the service reads it (the model's memory) after every poll, where
        summing the lengths took time in proportion to the viewers.
        """
        return self._entries

    def replace(self, viewer_rows: Sequence[int], lists: Sequence[list[int]]) -> None:
        """Set what each of ``viewer_rows`` watched to its list (a viewer handed over whole).

        >>> s = SeenVideos(); s.add(0, 1); s.replace([2, 0], [[5, 6], [7]]); s.of(0), s.of(2), s.entries()
        ([7], [5, 6], 3)
        """
        seen = self._seen
        top = max(viewer_rows, default=-1)
        if top >= len(seen):
            seen.extend(_row() for _ in range(top + 1 - len(seen)))
        for v, videos in zip(viewer_rows, lists, strict=True):
            self._entries += len(videos) - len(seen[v])
            seen[v] = _row(videos)

    def clear_rows(self, viewer_rows: Iterable[int]) -> None:
        """Forget what ``viewer_rows`` watched (released viewers; a reused row starts empty)."""
        seen = self._seen
        for v in viewer_rows:
            if 0 <= v < len(seen):
                self._entries -= len(seen[v])
                seen[v] = _row()

    def discard_videos(self, video_rows: np.ndarray) -> int:
        """Remove ``video_rows`` from every viewer's list (released videos); returns how many entries.

        One vectorised membership test over all entries; only the lists that hold a released
        video are rebuilt, so a reused video row is never excluded for someone who watched the
        video that held it before.

        >>> s = SeenVideos(); s.add(0, 1); s.add(0, 2); s.add(1, 2)
        >>> s.discard_videos(np.array([2])), s.of(0), s.of(1)
        (2, [1], [])
        """
        video_rows = np.asarray(video_rows, dtype=np.int64)
        if video_rows.size == 0 or not self._seen:
            return 0
        lengths, flat = _joined(self._seen)
        hit = np.isin(flat, video_rows)
        if not hit.any():
            return 0
        owners = np.repeat(np.arange(len(self._seen)), lengths)[hit]
        drop = set(video_rows.tolist())
        for v in np.unique(owners).tolist():
            self._seen[v] = _row(i for i in self._seen[v] if i not in drop)
        removed = int(hit.sum())
        self._entries -= removed
        return removed

    def of(self, viewer_row: int) -> list[int]:
        """Video rows watched by ``viewer_row``, in order (empty for an unknown row); a copy."""
        return self._seen[viewer_row].tolist() if 0 <= viewer_row < len(self._seen) else []

    # -- persistence (a part, see :mod:`model.persist`) -----------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The lists in CSR form: ``indptr`` (one more than the viewer rows) and ``videos``.

        >>> s = SeenVideos(); s.add(1, 4); s.add(1, 2)
        >>> back = SeenVideos(); back.load_arrays(s.to_arrays()); back.of(1), len(back)
        ([4, 2], 2)
        """
        lengths, videos = _joined(self._seen)
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return {"indptr": indptr, "videos": videos}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`to_arrays` wrote, in place; ``ValueError`` if it is malformed.

        Whether the video rows exist is the model's to check (:meth:`max_video`)."""
        indptr, videos = arrays["indptr"], arrays["videos"]
        for name, part in (("indptr", indptr), ("videos", videos)):
            if part.ndim != 1 or part.dtype.kind not in "iu":
                raise ValueError(f"seen {name} must be a 1-d integer array, got {part.dtype} {part.shape}")
        if indptr.size < 1 or indptr[0] != 0 or indptr[-1] != videos.size or np.any(np.diff(indptr) < 0):
            raise ValueError("seen indptr does not delimit the seen videos")
        if videos.size and videos.min() < 0:
            raise ValueError("seen lists hold negative video rows")
        flat, bounds = videos.astype(np.int64).tobytes(), (8 * indptr).tolist()
        self._seen = [_row() for _ in bounds[1:]]
        for row, a, b in zip(self._seen, bounds[:-1], bounds[1:], strict=True):
            row.frombytes(flat[a:b])
        self._entries = int(videos.size)

    def max_video(self) -> int:
        """The largest video row in any list (``-1`` when none): for checks after loading."""
        videos = _joined(self._seen)[1]
        return int(videos.max()) if videos.size else -1

    def exclusion_for_viewers(self, viewer_rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, cols)`` cells so that row ``i`` excludes all videos of ``viewer_rows[i]``."""
        # Two vectorised calls for the whole batch rather than two small arrays per viewer.
        lengths, videos = _joined(self._rows(viewer_rows))
        if videos.size == 0:
            return _EMPTY, _EMPTY
        return np.repeat(np.arange(lengths.size, dtype=np.int64), lengths), videos

    def exclusions_of(self, viewer_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What :meth:`exclusion_for_viewers` excludes, as compressed rows ``(ptr, videos)``:
        row ``i`` excludes ``videos[ptr[i]:ptr[i+1]]`` (the compiled kernels' form).

        >>> s = SeenVideos(); s.add(1, 4); s.add(1, 2)
        >>> [a.tolist() for a in s.exclusions_of(np.array([1, -1, 0]))]
        [[0, 2, 2, 2], [4, 2]]
        """
        lengths, videos = _joined(self._rows(viewer_rows.tolist()))
        ptr = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=ptr[1:])
        return ptr, videos

    def _rows(self, viewer_rows: Sequence[int]) -> list[array]:
        """The lists of ``viewer_rows`` (an empty one for a row out of range); not copies."""
        seen, n = self._seen, len(self._seen)
        return [seen[v] if 0 <= v < n else _NO_ROW for v in viewer_rows]

    def exclusions(
        self,
        viewer_keys: np.ndarray,
        video_rows: np.ndarray,
        grouping: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """What :meth:`exclusion_for_events` excludes, as compressed rows ``(ptr, videos)``
        (:func:`model.compiled.exclusion_cells`): the lists of the batch's distinct viewers
        are read once, the in-batch cells come from the grouping.

        >>> seen = SeenVideos(); seen.add(0, 5); seen.add(0, 7)
        >>> ptr, videos = seen.exclusions(np.array([0, 0, -2]), np.array([9, 3, 5]))
        >>> [sorted(videos[a:b].tolist()) for a, b in zip(ptr[:-1], ptr[1:])]
        [[5, 7], [5, 7, 9], []]
        """
        keys = np.asarray(viewer_keys, dtype=np.int64)
        order, start, within = group_positions(keys) if grouping is None else grouping
        # Each group's list read once (an unknown viewer's, or a new row's, is empty), found
        # from the grouping the batch has anyway rather than by sorting the keys again.
        first = within == 0
        list_of = np.empty(keys.shape[0], dtype=np.int64)
        list_of[order] = np.cumsum(first) - 1
        ptr, flat = self.exclusions_of(keys[order[first]])
        return exclusion_cells(order, start, np.asarray(video_rows, dtype=np.int64), flat, ptr, list_of)

    def exclusion_for_events(
        self,
        viewer_keys: Sequence[int] | np.ndarray,
        video_rows: Sequence[int] | np.ndarray,
        grouping: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Causal exclusion cells for a batch of events.

        ``viewer_keys[i]`` is the viewer row of event ``i``, or any negative number for a viewer
        the model does not know yet (events of the same unknown viewer must share the key);
        ``video_rows[i]`` is the event's video row, ``-1`` when unknown (nothing to exclude).
        ``grouping`` is :func:`model.history.group_positions` of the keys, if the caller has it.

        :meth:`exclusions` (the compiled :func:`~model.compiled.exclusion_cells`) as ``(rows,
        cols)`` cells, row by row (:class:`Cells`: made when unpacked); a viewer's burst of
        ``m`` events gives ``m (m - 1) / 2`` in-batch cells. The numpy reference is
        :func:`model.kernels.exclusion_for_events`.
        """
        keys = np.asarray(viewer_keys, dtype=np.int64)
        return Cells(*self.exclusions(keys, np.asarray(video_rows, dtype=np.int64), grouping))
