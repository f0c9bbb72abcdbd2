"""Plain numpy versions of the model's compiled kernels (:mod:`model.compiled`): the references.

The model runs the compiled kernels; these are what each kernel is held to, on random inputs,
in ``tests/test_kernels.py`` (to float rounding: where numpy sums pairwise or in BLAS order, a
loop sums in its own order), and what ``bench/floor.py`` times as the numpy floor. Each is
written for clarity, from whole-array numpy operations, as the model computed it before the
kernels:

* :func:`softmax_grad` and :func:`adagrad_step`, the training step's two hot functions (the
  Adagrad step is the one place parameters are written, and it refuses to write non-finite
  numbers: a diverging update is clipped, and a row whose gradient is still not finite is
  skipped and counted);
* :func:`rank_top_n`, :func:`softmax_step`, :func:`mix_histories`, :func:`history_grad`,
  :func:`batch_histories`: the references of the kernels of the same names;
* :func:`shared_top_n_with_rank`: the reference of :func:`model.compiled.shared_top_n_rank`
  (what :func:`model.topk.shared_top_n_with_rank` computed in numpy before it);
* :func:`exclusion_for_events`: the reference of :func:`model.compiled.exclusion_cells`, as
  cells (what :meth:`model.seen.SeenVideos.exclusion_for_events` computed before it);
* :func:`quantize_rows` and :func:`dequantize_rows`: the reference of
  :func:`model.compiled.quantized_step` (the update topic's quantised vectors, ``model.replica``);
* :func:`add_rows_both` and :func:`add_pairs_both_ways`: the references of the compiled kernels
  of the same names (a peer's update added to a replica, ``model.replica.VideoReplica.apply``).

>>> import numpy as np
>>> p, acc = np.ones((3, 2), dtype=np.float32), np.zeros((3, 2), dtype=np.float32)
>>> g = np.array([[1.0, 0.0], [np.nan, 1.0]], dtype=np.float32)
>>> adagrad_step(p, acc, np.array([0, 2]), g, lr=0.5, max_norm=10.0)
1
>>> p.tolist()
[[0.5, 1.0], [1.0, 1.0], [1.0, 1.0]]

"""

from __future__ import annotations

import numpy as np

from model.topk import UNRANKED

__all__ = [
    "adagrad_step",
    "batch_histories",
    "exclusion_for_events",
    "history_grad",
    "mix_histories",
    "dequantize_rows",
    "add_rows_both",
    "add_pairs_both_ways",
    "quantize_rows",
    "rank_top_n",
    "shared_top_n_with_rank",
    "softmax_grad",
    "softmax_step",
]

_EPS = 1e-8


def softmax_grad(
    logits: np.ndarray, targets: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, float, int]:
    """Gradient of the weighted softmax cross-entropy with respect to ``logits``, in place.

    ``logits`` is ``(B, N)`` float32 with excluded cells at ``-inf``; ``targets[i]`` is the
    positive column of row ``i``. Returns ``(grad, loss, skipped)``: ``grad`` is ``logits``
    itself, overwritten with ``weights[i] * (softmax(row) - onehot(target))``. A row whose
    scores overflowed (a NaN or ``+inf`` anywhere, or a non-finite positive) is a sign of
    divergence: its gradient is zero and it is counted in ``skipped``.

    Four passes over the matrix (max, subtract, exp with the row sums, one scaling by
    ``weight / sum``); everything else is per row. This is the training step's hottest loop.

    >>> g, loss, skipped = softmax_grad(np.array([[0.0, 0.0, -np.inf]], np.float32), np.array([0]),
    ...                                 np.array([2.0], np.float32))
    >>> g.tolist(), round(loss, 4), skipped
    ([[-1.0, 1.0, 0.0]], 1.3863, 0)
    """
    rows = np.arange(logits.shape[0])
    top = logits.max(axis=1)
    target_logit = logits[rows, targets].astype(np.float64)
    bad = ~(np.isfinite(top) & np.isfinite(target_logit))
    skipped = int(bad.sum())
    if skipped:
        logits[bad] = 0.0
        top[bad] = 0.0
        target_logit[bad] = 0.0
    np.subtract(logits, top[:, None], out=logits)
    target_logit -= top
    np.exp(logits, out=logits)
    total = logits.sum(axis=1)
    w = np.where(bad, 0.0, weights).astype(np.float32)
    loss = float(np.sum((w * (np.log(total) - target_logit))[~bad]))
    # One scaling pass: weight / total per row; then the positive's -weight.
    np.multiply(logits, (w / total)[:, None], out=logits)
    logits[rows, targets] -= w
    return logits, loss, skipped


def adagrad_step(
    param: np.ndarray,
    accum: np.ndarray,
    rows: np.ndarray | None,
    grad: np.ndarray,
    lr: float,
    max_norm: float,
) -> int:
    """Adagrad on ``param[rows]`` (all rows when ``rows`` is None, else unique rows); returns
    how many rows were refused.

    Each gradient row is clipped to L2 norm ``max_norm`` first (large steps are how online
    models diverge). A row whose new parameters or accumulator would not be finite (a NaN
    gradient, an overflow) is not written at all.

    The new values are computed in two temporaries and checked with one sum each (a finite
    sum means every cell is finite; only otherwise are rows checked one by one): this runs on
    the whole video table every batch.
    """
    n = grad.shape[0]
    if n == 0:
        return 0
    grad = grad.reshape(n, -1)
    whole = rows is None
    p = param.reshape(n, -1) if whole else param[rows].reshape(n, -1)
    a = accum.reshape(n, -1) if whole else accum[rows].reshape(n, -1)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        sq = grad * grad
        norm2 = sq.sum(axis=1)
        clip = ~(norm2 <= max_norm * max_norm)  # NaN norms too: they are refused below anyway
        if clip.any():
            norm = np.sqrt(norm2[clip])
            scale = np.where(norm > max_norm, max_norm / norm, 1.0).astype(grad.dtype)
            grad = grad.copy()
            grad[clip] *= scale[:, None]
            sq[clip] = grad[clip] * grad[clip]
        # New arrays (``sq`` is one): nothing is written before the check.
        new_a = np.add(a, sq, out=sq)
        step = np.sqrt(new_a)
        step += _EPS
        np.divide(grad, step, out=step)
        step *= lr
        new_p = np.subtract(p, step, out=step)
        finite = np.isfinite(new_p.sum()) and np.isfinite(new_a.sum())
    if finite:
        refused = 0
    else:
        ok = np.isfinite(new_p).all(axis=1) & np.isfinite(new_a).all(axis=1)
        refused = int(n - ok.sum())
        keep = np.flatnonzero(ok)
        rows = keep if whole else rows[keep]
        new_p, new_a = new_p[keep], new_a[keep]
        whole = False
    shape = param.shape[1:]
    if whole:
        param[...] = new_p.reshape(param.shape)
        accum[...] = new_a.reshape(accum.shape)
    else:
        param[rows] = new_p.reshape((-1, *shape))
        accum[rows] = new_a.reshape((-1, *shape))
    return refused


def _cells(ptr: np.ndarray, videos: np.ndarray, column_of: np.ndarray, width: int):
    """Compressed exclusion rows as ``(rows, cols)`` cells in ``[0, width)``."""
    rows = np.repeat(np.arange(ptr.size - 1), np.diff(ptr))
    cols = videos.astype(np.int64)
    if column_of.size:
        inside = (cols >= 0) & (cols < column_of.size)
        cols = np.where(inside, column_of[np.where(inside, cols, 0)], -1)
    keep = (cols >= 0) & (cols < width)
    return rows[keep], cols[keep]


def rank_top_n(scores, width, n, targets, ex_ptr, ex_videos, column_of, bias, alpha, feature, keep_targets):
    """:func:`model.compiled.rank_top_n`: finish (bias, ``alpha`` times feature), mask the
    ranked columns (exclusions, non-finite), rank the targets pessimistically and take the
    top-``n`` by a stable sort (ties: lower column first); ``scores`` changed in place alike."""
    batch, cols = scores.shape
    width = max(0, min(width, cols))
    if bias.shape[0] == cols:
        scores += bias
    if feature.shape == scores.shape:
        scores += np.float32(alpha) * feature
    rows = np.arange(batch)
    valid = (targets >= 0) & (targets < cols)
    kept = scores[rows[valid], targets[valid]].copy()
    ranked = scores[:, :width]
    ranked[~np.isfinite(ranked)] = -np.inf
    ranked[_cells(ex_ptr, ex_videos, column_of, width)] = -np.inf
    rank = np.full(batch, UNRANKED, dtype=np.int64)
    inside = np.flatnonzero((targets >= 0) & (targets < width))
    target = ranked[inside, targets[inside]]
    ok = np.isfinite(target)
    rank[inside[ok]] = (ranked[inside[ok]] >= target[ok, None]).sum(axis=1) - 1
    order = np.argsort(-ranked, axis=1, kind="stable")[:, :n]
    best = np.take_along_axis(ranked, order, axis=1)
    top = np.where(np.isfinite(best), order, -1)
    pad = n - top.shape[1]
    top = np.pad(top, ((0, 0), (0, pad)), constant_values=-1)
    best = np.pad(
        np.where(top[:, : best.shape[1]] >= 0, best, -np.inf), ((0, 0), (0, pad)), constant_values=-np.inf
    )
    if keep_targets:
        back = valid & (targets < width)
        scores[rows[back], targets[back]] = kept[back[valid]]
    return top, best.astype(np.float32), rank


def softmax_step(logits, targets, weights, ex_ptr, ex_videos, column_of, feature):
    """:func:`model.compiled.softmax_grad`: exclusions but the target to ``-inf``, then
    :func:`softmax_grad`, the column sums and the feature's gradient; ``logits`` in place."""
    rows = np.arange(logits.shape[0])
    kept = logits[rows, targets].copy()
    logits[_cells(ex_ptr, ex_videos, column_of, logits.shape[1])] = -np.inf
    logits[rows, targets] = kept
    with np.errstate(invalid="ignore", over="ignore"):
        grad, loss, skipped = softmax_grad(logits, targets, weights)
    sums = grad.sum(axis=0)
    feature_grad = float(np.vdot(grad, feature)) if feature.shape == grad.shape else 0.0
    return loss, skipped, sums, feature_grad


def mix_histories(items, hist_w, decay, Q, known, bound):
    """:func:`model.compiled.mix_histories`: mixing weights, viewer vectors by a matrix
    product over the distinct history rows, the distinct rows (sorted here) and each slot's
    index among them."""
    mix = np.where(items >= 0, hist_w * decay[None, :], 0.0).astype(np.float32)
    norm = mix.sum(axis=1, keepdims=True)
    mix /= np.where(norm > 0, norm, 1.0)
    rows, slot = np.unique(items[items >= 0], return_inverse=True)
    slots = np.full(items.shape, -1, dtype=np.int64)
    slots[items >= 0] = slot
    dense = np.zeros((items.shape[0], rows.size), dtype=np.float32)
    np.add.at(dense, (np.nonzero(items >= 0)[0], slot), mix[items >= 0])
    U = (
        dense[:, rows < known] @ Q[rows[rows < known]]
        if rows.size
        else np.zeros((items.shape[0], Q.shape[1]))
    )
    return mix, U.astype(np.float32), rows, slots


def history_grad(slot, mix, grad_u, distinct):
    """:func:`model.compiled.history_grad`: the transposed product, through a dense matrix."""
    dense = np.zeros((slot.shape[0], distinct), dtype=np.float32)
    np.add.at(dense, (np.nonzero(slot >= 0)[0], slot[slot >= 0]), mix[slot >= 0])
    return dense.T @ grad_u


def batch_histories(stored_items, stored_weights, viewers, videos, weights, order, start):
    """:func:`model.compiled.batch_histories`, in whole-array numpy (what
    :meth:`model.history.RecentHistory.for_batch` computed before the kernel)."""
    L, n = stored_items.shape[1], viewers.shape[0]
    known = (viewers[order] >= 0) & (viewers[order] < stored_items.shape[0])
    pre_items = np.full((n, L), -1, dtype=np.int64)
    pre_weights = np.zeros((n, L), dtype=np.float32)
    pre_items[known] = stored_items[viewers[order][known]]
    pre_weights[known] = stored_weights[viewers[order][known]]
    vid_sorted, w_sorted = videos[order], weights[order]
    within = np.arange(n) - start
    last = np.ones(n, dtype=bool)
    last[:-1] = start[1:] != start[:-1]
    pos = np.concatenate([np.arange(n), np.flatnonzero(last) + 1])
    cnt = np.concatenate([within, within[last] + 1])
    src = np.concatenate([np.arange(n), np.flatnonzero(last)])
    age = np.arange(L)[None, :]
    in_batch = age < cnt[:, None]
    idx_in = np.clip(pos[:, None] - 1 - age, 0, max(n - 1, 0))
    idx_pre = np.clip(age - cnt[:, None], 0, L - 1)
    items = np.where(in_batch, vid_sorted[idx_in], np.take_along_axis(pre_items[src], idx_pre, axis=1))
    hw = np.where(in_batch, w_sorted[idx_in], np.take_along_axis(pre_weights[src], idx_pre, axis=1))
    hist_items = np.empty((n, L), dtype=np.int64)
    hist_w = np.empty((n, L), dtype=np.float32)
    hist_items[order] = items[:n]
    hist_w[order] = hw[:n]
    return hist_items, hist_w, viewers[order][last], items[n:], hw[n:].astype(np.float32)


#: Largest batch x catalogue counted with a bitmap (16 MB of bools) rather than a sort.
_BITMAP_CELLS = 1 << 24
_EMPTY = np.zeros(0, dtype=np.int64)


def _distinct_per_row(rows: np.ndarray, cols: np.ndarray, batch: int, items: int) -> np.ndarray:
    """How many distinct columns each row's cells hold (a video watched twice is excluded twice).

    A bitmap of the batch when it is small (a scatter and a sum, ~20x faster than sorting the
    cells on ML-100K), else a sort.
    """
    if batch * items <= _BITMAP_CELLS:
        marked = np.zeros(batch * items, dtype=bool)
        marked[rows * items + cols] = True
        return marked.reshape(batch, items).sum(axis=1)
    cells = np.unique(rows * items + cols)
    return np.bincount(cells // items, minlength=batch)


def _shared_order(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``scores`` with non-finite cells at ``-inf``, its best-first (stable) order, each item's
    position in that order, and how many items are finite (the first ones of the order)."""
    clean = np.where(np.isfinite(scores), scores, -np.inf).astype(np.float32, copy=False)
    order = np.argsort(-clean, kind="stable")
    position = np.empty(clean.shape[0], dtype=np.int64)
    position[order] = np.arange(clean.shape[0])
    return clean, order, position, int(np.isfinite(clean).sum())


def _shared_top(order, position, finite: int, n: int, batch: int, rows, cols) -> np.ndarray:
    """Each row's first ``n`` items down the shared order that it does not exclude."""
    # Read as deep as n plus the row's exclusions above that depth reach, grown until no row
    # needs more: the cost follows the exclusions, not the catalogue.
    depth = min(n, finite)
    while True:
        inside = position[cols] < depth
        need = min(finite, n + int(np.bincount(rows[inside], minlength=batch).max(initial=0)))
        if need <= depth:
            break
        depth = need
    available = np.ones((batch, depth), dtype=bool)
    inside = position[cols] < depth
    available[rows[inside], position[cols[inside]]] = False
    slot = np.cumsum(available, axis=1) - 1
    r, p = np.nonzero(available & (slot < n))
    top = np.full((batch, n), -1, dtype=np.int64)
    top[r, slot[r, p]] = order[p]
    return top


def shared_top_n_with_rank(
    scores: np.ndarray,
    n: int,
    targets: np.ndarray,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`model.compiled.shared_top_n_rank` (through :func:`model.topk.shared_top_n_with_rank`):
    the top-``n`` and pessimistic ranks of a batch sharing one score vector, as ``model.topk``
    computed them before the kernel: a stable sort of the whole vector, then per batch a
    ``(batch, depth)`` availability bitmap and a bitmap of the excluded cells.

    >>> s = np.array([0.1, 0.9, 0.5, 0.7], dtype=np.float32)
    >>> top, rank = shared_top_n_with_rank(s, 2, np.array([2, 2]), (np.array([1]), np.array([1])))
    >>> top.tolist(), rank.tolist()
    ([[1, 3], [3, 2]], [2, 1])
    """
    batch, items = targets.shape[0], scores.shape[0]
    clean, order, position, finite = _shared_order(scores)
    rows, cols = (_EMPTY, _EMPTY) if exclude is None else exclude

    rank = np.full(batch, UNRANKED, dtype=np.int64)
    known = targets >= 0
    target_score = np.full(batch, -np.inf, dtype=np.float32)
    target_score[known] = clean[targets[known]]
    target_out = np.zeros(batch, dtype=bool)  # the target itself is excluded for its row
    target_out[rows[cols == np.where(known, targets, -1)[rows]]] = True
    # Cells at or above the target, minus the row's excluded ones at or above it, minus itself.
    at_least = items - np.searchsorted(clean[order[::-1]], target_score, side="left")
    above = clean[cols] >= target_score[rows]
    above_excluded = _distinct_per_row(rows[above], cols[above], batch, items)
    ok = known & np.isfinite(target_score) & ~target_out
    rank[ok] = (at_least - above_excluded - 1)[ok]
    return _shared_top(order, position, finite, n, batch, rows, cols), rank


def exclusion_for_events(
    lists: list[list[int]], viewer_keys: np.ndarray, video_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`model.compiled.exclusion_cells` (through
    :meth:`model.seen.SeenVideos.exclusion_for_events`) as ``(rows, cols)`` cells, in
    whole-array numpy as ``SeenVideos`` computed them before: event ``i`` excludes what its
    viewer (``viewer_keys[i]``, a row of ``lists``, or negative: not known yet) watched before
    the batch and the videos (``>= 0``) of that viewer's earlier events in the batch."""
    from model.history import group_positions

    keys = np.asarray(viewer_keys, dtype=np.int64)
    video_rows = np.asarray(video_rows, dtype=np.int64)
    order, start, within = group_positions(keys)
    total = int(within.sum())
    rows_in = np.repeat(order, within)
    offsets = np.arange(total) - np.repeat(np.cumsum(within) - within, within)
    cols_in = video_rows[order][np.repeat(start, within) + offsets]
    counted = cols_in >= 0
    rows_in, cols_in = rows_in[counted], cols_in[counted]
    known = (keys >= 0) & (keys < len(lists))
    if not known.any():
        return rows_in, cols_in
    uniq, inverse = np.unique(keys[known], return_inverse=True)
    chosen = [lists[v] for v in uniq.tolist()]
    lengths = np.array([len(x) for x in chosen], dtype=np.int64)
    flat = np.array([v for x in chosen for v in x], dtype=np.int64)
    counts = lengths[inverse]
    rows_pre = np.repeat(np.flatnonzero(known), counts)
    offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    cols_pre = flat[np.repeat((np.cumsum(lengths) - lengths)[inverse], counts) + offsets]
    return np.concatenate([rows_pre, rows_in]), np.concatenate([cols_pre, cols_in])


def excluded_targets(ex_ptr: np.ndarray, ex_videos: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per event, whether its video ``targets[i]`` is among its exclusions (a re-watch)."""
    rows = np.repeat(np.arange(targets.shape[0]), np.diff(ex_ptr))
    out = np.zeros(targets.shape[0], dtype=bool)
    out[rows[(ex_videos == targets[rows]) & (targets[rows] >= 0)]] = True
    return out


def quantize_rows(values: np.ndarray, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """``(q, scale)``: each row of ``(R, K)`` ``values`` as integers of ``dtype`` times a float32
    scale, ``scale = max |row| / max(dtype)``, rounded to nearest (a row's error is at most half
    its scale; its largest entry is exact up to float32 rounding). A row of zeros has scale 0.

    >>> q, scale = quantize_rows(np.array([[0.5, -0.25, 0.001], [0.0, 0.0, 0.0]], np.float32), np.int8)
    >>> q.tolist(), scale.tolist()[1]
    ([[127, -64, 0], [0, 0, 0]], 0.0)
    >>> bool(np.abs(dequantize_rows(q, scale)[0] - [0.5, -0.25, 0.001]).max() <= scale[0] / 2)
    True
    """
    top = np.iinfo(dtype).max
    scale = (np.abs(values).max(axis=1) / np.float32(top)).astype(np.float32)
    divisor = np.where(scale > 0, scale, np.float32(1))
    q = np.clip(np.rint(values / divisor[:, None]), -top, top).astype(dtype)
    return q, scale


def dequantize_rows(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The float32 values :func:`quantize_rows`' ``(q, scale)`` stand for: the one definition
    both the sender and every peer add, so they add the same numbers."""
    return q.astype(np.float32) * scale[:, None]


def add_rows_both(param: np.ndarray, agreed: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """``values`` added to rows ``rows`` (distinct) of both ``param`` and ``agreed``, in place:
    a peer's change of one table, kept by the model and as agreed."""
    param[rows] += values
    agreed[rows] += values


def add_pairs_both_ways(matrix: np.ndarray, i: np.ndarray, j: np.ndarray, counts: np.ndarray) -> None:
    """``counts`` added at ``(i, j)`` and ``(j, i)`` of ``matrix``, in place: co-occurrence pairs,
    each unordered pair once and ``i != j`` (so no cell is named twice)."""
    matrix[i, j] += counts
    matrix[j, i] += counts
