"""Top-n selection and target ranks over a batch of score rows: the one place ranking happens.

Models score a batch of viewers against their catalogue as a ``(batch, items)`` float32
matrix; this module turns that matrix into top-n lists and, for evaluation, the rank of each
event's video. Models that give every viewer the same scores (popularity) skip the matrix:
:func:`shared_top_n_with_rank` ranks the one vector with each row's exclusions.

Excluded cells (already-watched videos) and non-finite scores (a diverged model) are set to
``-inf`` *before* selection, so a NaN can never count as a hit and ``n`` valid items come back
whenever that many exist.

Ranks are pessimistic: a target that ties with other items is ranked below all of them, so a
model that scores everything equal (or zero) gets no credit.

>>> import numpy as np
>>> scores = np.array([[0.1, 0.9, 0.5, 0.7]], dtype=np.float32)
>>> top, rank = top_n_with_rank(scores, n=2, targets=np.array([2]))
>>> top.tolist(), rank.tolist()
([[1, 3]], [2])
>>> scores = np.array([[0.1, 0.9, 0.5, 0.7]], dtype=np.float32)
>>> top, rank = top_n_with_rank(scores, n=2, targets=np.array([2]),
...                             exclude=(np.array([0]), np.array([1])))
>>> top.tolist(), rank.tolist()
([[3, 2]], [1])

"""

from __future__ import annotations

import numpy as np

from model.compiled import group_cells, shared_top_n_rank

__all__ = ["top_n_with_rank", "top_n", "shared_top_n_with_rank", "shared_top_n", "mask_scores", "UNRANKED"]

_EMPTY = np.zeros(0, dtype=np.int64)
#: The rank given to a target that cannot be recommended (unknown, excluded, or non-finite).
UNRANKED = np.iinfo(np.int64).max


def mask_scores(scores: np.ndarray, exclude: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Set the ``exclude`` cells and every non-finite score to ``-inf``, in place, and return
    ``scores``: what :func:`top_n` and :func:`top_n_with_rank` do before selecting."""
    # NaN compares false with everything, so it would slip through selection; -inf never wins.
    # The maximum is NaN or +inf exactly when some cell is, so one reduction clears the usual
    # all-finite case; only then is the mask built (np.nan_to_num is slower still).
    if scores.size and not scores.max() < np.inf:
        scores[~np.isfinite(scores)] = -np.inf
    if exclude is not None and exclude[0].size:
        rows, cols = exclude
        if scores.flags.c_contiguous:  # flat indices: 2-3x faster than a (rows, cols) scatter
            scores.reshape(-1)[rows * scores.shape[1] + cols] = -np.inf
        else:
            scores[rows, cols] = -np.inf
    return scores


def _block_max(scores: np.ndarray, blocks: int) -> np.ndarray:
    """``(batch, blocks)`` maxima of the column classes ``col % blocks`` (``blocks`` a power-of-2
    fraction of the row length or less, at most half of it).

    Folding halves of the row onto each other keeps every ufunc call on long contiguous
    stretches (a ``(batch, size, blocks)`` reshape-max runs ``batch * size`` tiny inner loops);
    each level writes a new array, as an output overlapping its input makes numpy copy.
    """
    items = scores.shape[1]
    width = blocks << ((items // blocks).bit_length() - 1)  # largest blocks * 2**j <= items
    half = width // 2
    out = np.maximum(scores[:, :half], scores[:, half:width])
    for start in range(width, items, half):  # the tail: column width + r joins class r % half
        stop = min(items, start + half)
        np.maximum(out[:, : stop - start], scores[:, start:stop], out=out[:, : stop - start])
    while half > blocks:
        half //= 2
        out = np.maximum(out[:, :half], out[:, half : 2 * half])
    return out


def _largest(scores: np.ndarray, k: int) -> np.ndarray:
    """Unordered columns of the ``k`` largest cells of each row (``0 < k < items``).

    ``np.argpartition`` costs ~15 ns per cell. Faster for ``k`` much smaller than a row: split
    each row's columns into ``m >= k`` interleaved blocks; the ``k``-th largest block maximum is
    a lower bound on the row's ``k``-th largest value, and usually only a few cells above ``k``
    reach it. Those candidates are selected exactly; rows where the bound is useless (many ties
    or many ``-inf``) fall back to ``argpartition``.
    """
    batch, items = scores.shape
    blocks = max(4 * k, 64)
    if items < 4 * blocks or batch == 0:
        return np.argpartition(scores, items - k, axis=1)[:, items - k :]
    block_max = _block_max(scores, blocks)
    m = blocks
    bound = np.partition(block_max, m - k, axis=1)[:, m - k]
    flat = np.flatnonzero(scores >= bound[:, None])
    rows, cols = np.divmod(flat, items)
    counts = np.bincount(rows, minlength=batch)
    limit = 4 * blocks
    fallback = ~np.isfinite(bound) | (counts > limit)
    if fallback.any():
        keep = ~fallback[rows]
        rows, cols = rows[keep], cols[keep]
        counts[fallback] = 0
    width = max(int(counts.max()), k)
    first = np.cumsum(counts) - counts
    pos = np.arange(rows.size) - first[rows]
    cand = np.full((batch, width), -np.inf, dtype=scores.dtype)
    cand_cols = np.zeros((batch, width), dtype=np.int64)
    cand[rows, pos] = scores[rows, cols]
    cand_cols[rows, pos] = cols
    part = np.argpartition(cand, width - k, axis=1)[:, width - k :] if width > k else None
    out = cand_cols if part is None else np.take_along_axis(cand_cols, part, axis=1)
    if fallback.any():
        bad = np.flatnonzero(fallback)
        out[bad] = np.argpartition(scores[bad], items - k, axis=1)[:, items - k :]
    return out


def top_n(
    scores: np.ndarray,
    n: int,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    _prepared: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and scores of the ``n`` best cells of each row, best first.

    ``scores`` is modified in place. ``exclude`` is a pair of index arrays ``(rows, cols)`` of
    cells that must not be chosen. Slots that could not be filled with a finite score hold
    column ``-1`` and score ``-inf``.
    """
    if not _prepared:
        scores = mask_scores(scores, exclude)
    batch, items = scores.shape
    k = min(n, items)
    if k == 0:
        return np.full((batch, n), -1, dtype=np.int64), np.full((batch, n), -np.inf, dtype=np.float32)
    part = _largest(scores, k) if k < items else np.broadcast_to(np.arange(items), (batch, items)).copy()
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    cols = np.take_along_axis(part, order, axis=1)
    best = np.take_along_axis(part_scores, order, axis=1)
    cols[~np.isfinite(best)] = -1
    if k < n:
        cols = np.pad(cols, ((0, 0), (0, n - k)), constant_values=-1)
        best = np.pad(best, ((0, 0), (0, n - k)), constant_values=-np.inf)
    return cols, best.astype(np.float32, copy=False)


def top_n_with_rank(
    scores: np.ndarray,
    n: int,
    targets: np.ndarray,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``n`` columns per row, and the 0-based pessimistic rank of ``targets[i]`` in row ``i``.

    A target of ``-1`` (unknown to the model), an excluded target, or a target with a
    non-finite score gets rank :data:`UNRANKED`. ``scores`` is modified in place.
    """
    scores = mask_scores(scores, exclude)
    batch = scores.shape[0]
    rank = np.full(batch, UNRANKED, dtype=np.int64)
    known = np.flatnonzero(targets >= 0)
    if known.size:
        target_scores = scores[known, targets[known]]
        rows = scores if known.size == batch else scores[known]
        # Pessimistic rank = cells above the target + ties other than itself, in one pass.
        # Summing the comparison's bytes into uint16 is twice as fast as count_nonzero(axis=1).
        above = (rows >= target_scores[:, None]).view(np.uint8)
        small = rows.shape[1] < np.iinfo(np.uint16).max
        at_least = above.sum(axis=1, dtype=np.uint16 if small else np.int64).astype(np.int64) - 1
        ok = np.isfinite(target_scores)
        rank[known[ok]] = at_least[ok]
    cols, _ = top_n(scores, n, _prepared=True)
    return cols, rank


def _shared_order(scores: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """``scores`` with non-finite cells at ``-inf``, the first items of its best-first stable
    order (ties: lower item first), at least ``depth`` of them or every finite one, how many
    items are finite, and the clean scores sorted ascending (to count the items at or above a
    score).

    A stable argsort of the whole vector cost 1 ms at 10,000 items, once per batch: sorting
    the values alone costs 20 us, and their ``depth``-th largest bounds the items that can come
    first. The stable order of those items alone, in item order, is the whole order's start.
    """
    clean = np.where(np.isfinite(scores), scores, -np.inf).astype(np.float32, copy=False)
    ascending = np.sort(clean)
    items = clean.shape[0]
    finite = items - int(np.searchsorted(ascending, -np.inf, side="right"))
    depth = min(depth, finite)
    if depth <= 0:
        return clean, _EMPTY, finite, ascending
    first = np.flatnonzero(clean >= ascending[items - depth])
    return clean, first[np.argsort(-clean[first], kind="stable")], finite, ascending


def _compressed(exclude: tuple[np.ndarray, np.ndarray] | None, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Excluded cells as compressed rows ``(ptr, items)``: the form the exclusions came in when
    they carry it (``exclude.compressed``, :meth:`model.seen.SeenVideos.exclusion_for_events`),
    else grouped by row here."""
    if exclude is None:
        return np.zeros(batch + 1, dtype=np.int64), _EMPTY
    compressed = getattr(exclude, "compressed", None)
    if compressed is not None:
        return compressed
    rows, cols = exclude
    return group_cells(np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64), batch)


def _depth(n: int, ptr: np.ndarray) -> int:
    """How far down the shared order every row's top-``n`` lies: ``n`` plus the most excluded
    cells of any row (each excluded cell hides at most one item above the ``n``-th)."""
    return n + (int(np.diff(ptr).max()) if ptr.size > 1 else 0)


def shared_top_n(
    scores: np.ndarray, n: int, batch: int, exclude: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_n` for ``batch`` rows that all share one score vector ``scores``: columns and
    scores of each row's ``n`` best items it does not exclude, best first (ties: lower column
    first; empty slots ``-1`` and ``-inf``).

    >>> scores = np.array([0.25, 0.75, 0.5], np.float32)
    >>> cols, best = shared_top_n(scores, 2, 2, exclude=(np.array([0]), np.array([1])))
    >>> cols.tolist(), best.tolist()
    ([[2, 0], [1, 2]], [[0.5, 0.25], [0.75, 0.5]])
    """
    ptr, items = _compressed(exclude, batch)
    clean, prefix, _, _ = _shared_order(scores, _depth(n, ptr))
    none = np.full(batch, -1, dtype=np.int64)
    top, _ = shared_top_n_rank(clean, prefix, n, none, none, ptr, items)
    best = np.full(top.shape, -np.inf, dtype=np.float32)
    best[top >= 0] = clean[top[top >= 0]]
    return top, best


def shared_top_n_with_rank(
    scores: np.ndarray,
    n: int,
    targets: np.ndarray,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_n_with_rank` for a batch whose rows all share one score vector ``scores``.

    Popularity models give every viewer the same scores, minus what each has watched. Instead
    of a ``(batch, items)`` matrix, the items are ordered once and each row reads only as far
    down that order as its exclusions reach (:func:`model.compiled.shared_top_n_rank`, held
    to :func:`model.kernels.shared_top_n_with_rank`): the cost follows the exclusions, not
    the catalogue. ``targets`` sets the batch size. Ranks are the same pessimistic ranks;
    among tied scores, the lower column is listed first.

    >>> s = np.array([0.1, 0.9, 0.5, 0.7], dtype=np.float32)
    >>> top, rank = shared_top_n_with_rank(s, 2, np.array([2, 2]), (np.array([1]), np.array([1])))
    >>> top.tolist(), rank.tolist()
    ([[1, 3], [3, 2]], [2, 1])
    """
    batch, items = targets.shape[0], scores.shape[0]
    targets = np.asarray(targets, dtype=np.int64)
    ptr, excluded = _compressed(exclude, batch)
    clean, prefix, _, ascending = _shared_order(scores, _depth(n, ptr))
    known = (targets >= 0) & (targets < items)
    target_score = np.full(batch, -np.inf, dtype=np.float32)
    target_score[known] = clean[targets[known]]
    at_least = items - np.searchsorted(ascending, target_score, side="left")
    return shared_top_n_rank(clean, prefix, n, targets, at_least, ptr, excluded)
