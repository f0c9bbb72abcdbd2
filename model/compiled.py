"""The default model's hot loops, compiled with numba: each replaces a chain of numpy calls.

One batch of the model is a few dense matrix products (BLAS, left to numpy) and, around them,
passes over ``(batch, columns)`` score matrices and small per-event loops. In numpy each of
those is a dozen calls with a temporary array each; here each is one loop that reads a score
row while it is in cache. The kernels, and the numpy code each one replaced (kept as its
reference in :mod:`model.kernels`, and tested against it on random inputs in
``tests/test_kernels.py``):

* :func:`rank_top_n`: a score matrix's bias and co-occurrence feature added, exclusions and
  non-finite cells set to ``-inf``, each target's pessimistic rank and the top-``n`` in one
  pass per row (no sort, no partition); replaces ``_logits`` + ``model.topk.top_n_with_rank``;
* :func:`softmax_grad`: the weighted softmax cross-entropy gradient in place, with the
  remaining exclusions, the non-finite guard, the column sums (the bias gradient) and the
  gradient of the feature weight; replaces ``model.kernels.softmax_grad`` and the masking,
  concatenation and sums around it;
* :func:`rank_softmax`: the two above on each row while it is in cache, bit-identical to
  calling them one after the other;
* :func:`adagrad_rows`: Adagrad with clipping on given rows, refusing a row whose new values
  would not be finite; replaces ``model.kernels.adagrad_step``;
* :func:`mix_histories` and :func:`history_grad`: each event's mixing weights over its recent
  watches, the viewer vector they mix, and the transposed product for the gradient; replace
  ``_mixing_weights``, ``_distinct``, a ``bincount`` and two matrix products;
* :func:`batch_histories`: each event's history just before it and each viewer's after the
  batch; replaces :meth:`model.history.RecentHistory.for_batch`'s index arithmetic;
* :func:`cooc_feature` and :func:`cooc_add`: the co-occurrence feature at given columns and
  the count update; replace ``CoCounts.batch_feature`` (``CoCounts.feature`` stays: the
  reference) and an ``np.add.at``;
* :func:`exclusion_cells`: each event's excluded videos (what its viewer watched before the
  batch and earlier in it) as compressed rows; replaces ``SeenVideos.exclusion_for_events``'
  array arithmetic; :func:`excluded_targets`: which events' own video is among them (a
  re-watch);
* :func:`shared_top_n_rank`: the top-``n`` and ranks of a batch that shares one score vector
  (the popularity baselines, among them the service's shadow), one pass per row over its
  exclusions and down the shared order; replaces ``model.topk``'s bitmaps, bincounts and
  cumulative sums over ``(batch, depth)`` (kept as :func:`model.kernels.shared_top_n_with_rank`).

Exclusions are compressed rows (``ptr``, ``videos``): row ``i`` excludes
``videos[ptr[i]:ptr[i+1]]``, video rows mapped to score columns by ``column_of`` (empty: a
video's row is its column; ``-1`` or out of range: not a column, ignored).

Arithmetic is float32 as in numpy, in the same order where numpy's order is a plain loop;
sums numpy does pairwise (the softmax's row sums, squared norms) are summed here in float64 or
sequentially, so results agree with the references to float rounding, not bit for bit. No
kernel uses ``fastmath`` (``-inf`` and NaN are values these loops must see) but for three
float64 sums, free to reassociate (``reassoc`` only). ``exp`` is a Cephes-style polynomial
(within 2 ulp of numpy's) that the compiler vectorises; the libm call numba would make costs
3x more. Each row's work is a function of its own: inlined into a kernel's row loop, a slice
assignment or an array-taking helper made the whole loop 3x to 20x slower.

Compiled functions are cached on disk (``cache=True``: beside this file, or under
``NUMBA_CACHE_DIR`` or the user's cache directory when the install is read-only). Everything
here is a module-level function of arrays, so models that call them stay picklable.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = [
    "JIT_OPTIONS",
    "NO_BIAS",
    "NO_COLUMNS",
    "NO_FEATURE",
    "UNRANKED",
    "adagrad_rows",
    "add_pairs_both_ways",
    "add_rows_both",
    "add_rows_both_1d",
    "cooc_add",
    "cooc_feature",
    "excluded_targets",
    "exclusion_cells",
    "group_cells",
    "history_grad",
    "mix_histories",
    "quantized_step",
    "rank_softmax",
    "rank_top_n",
    "shared_top_n_rank",
    "softmax_grad",
]

#: The rank of a target that cannot be recommended (as :data:`model.topk.UNRANKED`).
UNRANKED = np.iinfo(np.int64).max
#: "No bias", "no feature", "columns are video rows": the empty arrays kernels take for them.
NO_BIAS = np.zeros(0, dtype=np.float32)
NO_FEATURE = np.zeros((0, 0), dtype=np.float32)
NO_COLUMNS = np.zeros(0, dtype=np.int64)

_NEG_INF = np.float32(-np.inf)
_POS_INF = np.float32(np.inf)
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_EPS = np.float32(1e-8)

# exp(x) = 2**k * exp(r), k = round(x / ln 2), r = x - k ln 2 in two parts (Cody-Waite), exp(r)
# by a degree-7 polynomial (Cephes' expf); 2**k from its exponent bits.
_LOG2E = np.float32(1.44269504088896341)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_ROUND = np.float32(12582912.0)  # 1.5 * 2**23: adding it rounds a float32 to an integer
_EXP_FLOOR = np.float32(-87.0)  # below it exp is under 1.7e-38: taken as 0
_P0, _P1, _P2 = np.float32(1.9875691500e-4), np.float32(1.3981999507e-3), np.float32(8.3334519073e-3)
_P3, _P4, _P5 = np.float32(4.1665795894e-2), np.float32(1.6666665459e-1), np.float32(5.0000001201e-1)


def _can_cache() -> bool:
    """Whether numba finds a writable place for this module's cache (``NUMBA_CACHE_DIR``,
    ``__pycache__`` beside it, or the user's cache directory), asked the way numba asks it.

    With none, ``cache=True`` would make this module fail at import ("no locator available"):
    the kernels then compile at every start instead (seconds), and still run."""
    try:
        from numba.core.caching import FunctionCache
    except ImportError:  # numba moved it: let numba decide
        return True
    try:
        FunctionCache(_can_cache)
    except RuntimeError:
        return False
    return True


#: numba options of every kernel in the project (cached on disk where it can be, no GIL held).
JIT_OPTIONS = {"cache": _can_cache(), "nogil": True}
#: For kernels whose divisors are never zero: numba's default ("python") error model checks every
#: float division for a zero divisor and raises ZeroDivisionError, a branch that keeps the
#: compiler from vectorising the loop (and its square roots); the "numpy" model divides as IEEE
#: does. Where no divisor can be zero the results are the same, bit for bit.
_JIT_IEEE = {**JIT_OPTIONS, "error_model": "numpy"}


@njit(**JIT_OPTIONS)
def _fill(x: np.ndarray, value: np.float32) -> None:
    """``x[:] = value`` as a loop (numba's slice assignment, inside a kernel's row loop, made
    that whole loop 3x slower)."""
    for j in range(x.shape[0]):
        x[j] = value


@njit(**JIT_OPTIONS)
def _exclude(
    row: np.ndarray, width: int, videos: np.ndarray, start: int, stop: int, column_of: np.ndarray
) -> None:
    """``row[column] = -inf`` for the columns of ``videos[start:stop]`` below ``width``
    (``column_of``: video row to column, ``-1`` none; empty: a row is its column)."""
    mapped = column_of.shape[0]
    for k in range(start, stop):
        c = videos[k]
        if mapped:
            c = column_of[c] if 0 <= c < mapped else -1
        if 0 <= c < width:
            row[c] = _NEG_INF


@njit(**JIT_OPTIONS)
def _scan_row(row: np.ndarray) -> tuple[int, np.float32]:
    """How many cells of a float32 row are NaN or ``+inf``, and the row's maximum (meaningful
    only when none is): one vectorised pass, the maximum taken over integers that order like
    the floats (float maxima that must respect NaN do not vectorise)."""
    keys = row.view(np.int32)
    bad = 0
    top = np.int32(-(2**31))
    for j in range(row.shape[0]):
        x = row[j]
        bad += (x != x) | (x == _POS_INF)
        k = keys[j]
        k = k ^ ((k >> 31) & np.int32(0x7FFFFFFF))
        top = k if k > top else top
    out = np.empty(1, dtype=np.int32)
    out[0] = top ^ ((top >> 31) & np.int32(0x7FFFFFFF))  # the map is its own inverse
    return bad, out.view(np.float32)[0] if row.shape[0] else _NEG_INF


@njit(**JIT_OPTIONS)
def _exp_shifted(row: np.ndarray, shift: np.float32, bits: np.ndarray) -> None:
    """``row[:] = exp(row - shift)`` for rows whose cells are at most ``shift`` or ``-inf``
    (softmax rows); ``bits`` is int32 scratch of the row's length. Two loops the compiler
    vectorises."""
    _exp_poly(row, shift, bits)
    scale = bits.view(np.float32)
    for j in range(row.shape[0]):
        row[j] = row[j] * scale[j]


@njit(**JIT_OPTIONS)
def exp_shifted(x: np.ndarray, shift: float) -> np.ndarray:
    """``exp(x - shift)`` for a float32 vector ``x <= shift`` (``-inf`` allowed), as the
    softmax computes it: a new array (the kernels work in place)."""
    out = x.copy()
    _exp_shifted(out, np.float32(shift), np.empty(x.shape[0], dtype=np.int32))
    return out


@njit(**JIT_OPTIONS)
def _exp_shifted_sum(row: np.ndarray, shift: np.float32, bits: np.ndarray) -> float:
    """:func:`_exp_shifted`, returning the row's float64 sum (taken in its second loop)."""
    _exp_poly(row, shift, bits)
    return _scale_sum(row, bits.view(np.float32))


@njit(**JIT_OPTIONS)
def _exp_poly(row: np.ndarray, shift: np.float32, bits: np.ndarray) -> None:
    """The first loop of :func:`_exp_shifted`: ``exp(r)`` in ``row``, ``2**k``'s bits in ``bits``."""
    for j in range(row.shape[0]):
        v = row[j] - shift
        low = not v >= _EXP_FLOOR  # -inf and the underflow range
        v = max(v, _EXP_FLOOR)
        k = (v * _LOG2E + _ROUND) - _ROUND
        r = v - k * _LN2_HI - k * _LN2_LO
        y = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
        row[j] = y * (r * r) + r + _ONE
        bits[j] = 0 if low else (np.int32(k) + np.int32(127)) << 23


@njit(**JIT_OPTIONS, fastmath={"reassoc"})
def _scale_sum(row: np.ndarray, scale: np.ndarray) -> float:
    """``row *= scale`` (exact IEEE products), returning the float64 sum in any order."""
    total = 0.0
    for j in range(row.shape[0]):
        y = row[j] * scale[j]
        row[j] = y
        total += y
    return total


@njit(**JIT_OPTIONS, fastmath={"reassoc"})
def _sum64(x: np.ndarray) -> float:
    """A float64 sum in any order (vectorised)."""
    total = 0.0
    for j in range(x.shape[0]):
        total += x[j]
    return total


@njit(**JIT_OPTIONS, fastmath={"reassoc"})
def _scale_row(
    row: np.ndarray, scale: np.float32, t: int, w: np.float32, sums: np.ndarray, feature: np.ndarray
) -> float:
    """``row = row * scale``, then ``- w`` at the target ``t``; the new row added into
    ``sums`` and, when ``feature`` has the row's length, ``sum(row * feature)`` in float64 (in
    any order: the one sum ``reassoc`` is for; each cell's arithmetic is exact IEEE)."""
    dot = 0.0
    if feature.shape[0] == row.shape[0]:
        for j in range(row.shape[0]):
            g = row[j] * scale - (w if j == t else _ZERO)
            row[j] = g
            sums[j] += g
            dot += float(g) * float(feature[j])
    else:
        for j in range(row.shape[0]):
            g = row[j] * scale - (w if j == t else _ZERO)
            row[j] = g
            sums[j] += g
    return dot


#: Cells per block of the top-n search (a constant: each block's maximum is one vector).
_BLOCK = 16


@njit(inline="always", **JIT_OPTIONS)
def _finished(
    x: np.float32, j: int, bias: np.ndarray, alpha: np.float32, f: np.ndarray, mode: int
) -> np.float32:
    """A dot product plus ``bias[j]`` (``mode`` 1 or 3) plus ``alpha * f[j]`` (``mode`` 2 or 3)."""
    if mode & 1:
        x = x + bias[j]
    if mode & 2:
        x = x + alpha * f[j]
    return x


@njit(**JIT_OPTIONS)
def _select_top_n(
    row: np.ndarray,
    width: int,
    n: int,
    block_max: np.ndarray,
    groups: np.ndarray,
    cand: np.ndarray,
    cand_cols: np.ndarray,
    top: np.ndarray,
    best: np.ndarray,
) -> None:
    """The ``n`` largest of ``row[:width]`` (no NaN; ``block_max`` holds the maxima of its
    blocks of :data:`_BLOCK` cells) into ``top``/``best``, best first; ties: lower column first;
    ``-inf`` cells are never chosen (their slots keep ``-1``/``-inf``).

    The blocks are dealt into ``4 n`` groups; the ``n``-th largest group maximum is a lower
    bound on the row's ``n``-th largest cell (``n`` disjoint groups each hold a cell at least
    that large), so only the cells of blocks that reach it are candidates: usually a few more
    than ``n``, sorted by insertion. ``groups``, ``cand`` and ``cand_cols`` are scratch.
    """
    if n == 0:
        return
    blocks = (width + _BLOCK - 1) // _BLOCK
    count = groups.shape[0]
    _fill(groups, _NEG_INF)
    g = 0
    for b in range(blocks):  # block b joins group b % count (no division in the loop)
        m = block_max[b]
        groups[g] = m if m > groups[g] else groups[g]
        g = g + 1 if g + 1 < count else 0
    # The n-th largest group maximum: insertion into n slots kept in ascending order (best is
    # scratch here; it is filled below).
    bound = _NEG_INF
    if count > n:
        _fill(best, _NEG_INF)
        for g in range(count):
            m = groups[g]
            if m > best[0]:
                p = 0
                while p + 1 < n and best[p + 1] < m:
                    best[p] = best[p + 1]
                    p += 1
                best[p] = m
        bound = best[0]
        _fill(best, _NEG_INF)
    k = 0
    for b in range(blocks):
        if block_max[b] >= bound and block_max[b] > _NEG_INF:
            for j in range(b * _BLOCK, min(width, (b + 1) * _BLOCK)):
                x = row[j]
                if x >= bound and x > _NEG_INF:
                    cand[k] = x
                    cand_cols[k] = j
                    k += 1
    # Candidates come in column order; a cell moves up only past strictly smaller ones.
    filled = 0
    for a in range(k):
        x = cand[a]
        if filled == n and not x > best[n - 1]:
            continue
        p = min(filled, n - 1)
        while p > 0 and best[p - 1] < x:
            best[p] = best[p - 1]
            top[p] = top[p - 1]
            p -= 1
        best[p] = x
        top[p] = cand_cols[a]
        filled = min(filled + 1, n)


@njit(**JIT_OPTIONS)
def _finish_row(
    row: np.ndarray, width: int, bias: np.ndarray, alpha: np.float32, f: np.ndarray, mode: int
) -> None:
    """Add ``bias`` (``mode`` 1, 3) and ``alpha * f`` (``mode`` 2, 3) to every cell; in the
    first ``width`` cells, NaN and +-inf become ``-inf`` (``x - x`` is 0 only for finite ``x``)."""
    cols = row.shape[0]
    if mode == 3:
        for j in range(width):
            x = (row[j] + bias[j]) + alpha * f[j]
            row[j] = x if x - x == _ZERO else _NEG_INF
        for j in range(width, cols):
            row[j] = (row[j] + bias[j]) + alpha * f[j]
    elif mode == 1:
        for j in range(width):
            x = row[j] + bias[j]
            row[j] = x if x - x == _ZERO else _NEG_INF
        for j in range(width, cols):
            row[j] = row[j] + bias[j]
    elif mode == 2:
        for j in range(width):
            x = row[j] + alpha * f[j]
            row[j] = x if x - x == _ZERO else _NEG_INF
        for j in range(width, cols):
            row[j] = row[j] + alpha * f[j]
    else:
        for j in range(width):
            x = row[j]
            row[j] = x if x - x == _ZERO else _NEG_INF


@njit(**JIT_OPTIONS)
def _rank_row(
    row: np.ndarray,
    width: int,
    n: int,
    t: int,
    bias: np.ndarray,
    alpha: np.float32,
    f: np.ndarray,
    mode: int,
    ex_videos: np.ndarray,
    ex_start: int,
    ex_stop: int,
    column_of: np.ndarray,
    keep_target: bool,
    block_max: np.ndarray,
    groups: np.ndarray,
    cand: np.ndarray,
    cand_cols: np.ndarray,
    top: np.ndarray,
    best: np.ndarray,
) -> int:
    """One row of :func:`rank_top_n`: finish, mask, rank target ``t``, top-``n``; returns the rank."""
    cols = row.shape[0]
    kept = _finished(row[t], t, bias, alpha, f, mode) if 0 <= t < cols else _ZERO
    # Excluded cells first: -inf stays -inf through the additions.
    _exclude(row, width, ex_videos, ex_start, ex_stop, column_of)
    target = _POS_INF  # counts nothing
    if 0 <= t < width:
        target = _finished(row[t], t, bias, alpha, f, mode)
        if target - target != _ZERO:  # excluded or not finite (NaN != 0 too): not ranked
            target = _POS_INF
    # Finish every cell; in the ranked ones, NaN and +-inf become -inf (x - x is 0 only for
    # finite x). Then count the cells at or above the target, and take each block's maximum:
    # loops the compiler vectorises (fused into one, it does not).
    _finish_row(row, width, bias, alpha, f, mode)
    at_least = 0
    if target < _POS_INF:
        for j in range(width):
            at_least += row[j] >= target
    blocks = (width + _BLOCK - 1) // _BLOCK
    for b in range(blocks):
        start = b * _BLOCK
        m = _NEG_INF
        if start + _BLOCK <= width:
            for c in range(_BLOCK):
                x = row[start + c]
                m = x if x > m else m
        else:
            for j in range(start, width):
                x = row[j]
                m = x if x > m else m
        block_max[b] = m
    _select_top_n(row, width, n, block_max, groups, cand, cand_cols, top, best)
    if keep_target and 0 <= t < width:
        row[t] = kept
    return at_least - 1 if target < _POS_INF else UNRANKED


@njit(**JIT_OPTIONS)
def rank_top_n(
    scores: np.ndarray,
    width: int,
    n: int,
    targets: np.ndarray,
    ex_ptr: np.ndarray,
    ex_videos: np.ndarray,
    column_of: np.ndarray,
    bias: np.ndarray,
    alpha: np.float32,
    feature: np.ndarray,
    keep_targets: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores finished, masked and ranked in place: ``(top, best, rank)``.

    ``scores`` is ``(B, W)`` float32 (dot products, C-contiguous). Every cell first becomes
    ``scores + bias[col]`` (when ``bias`` has ``W`` values) ``+ alpha * feature`` (when
    ``feature`` is ``(B, W)``), as :meth:`EmbeddingRanker._finish` computes it. Only the first
    ``width`` columns are ranked: there, excluded cells (``ex_ptr``/``ex_videos`` through
    ``column_of``) and non-finite cells become ``-inf``, as :func:`model.topk.mask_scores` does.

    ``top`` is ``(B, n)`` int64 columns best first (ties: lower column first; ``-1`` where
    fewer than ``n`` finite cells remain), ``best`` their scores (``-inf`` there), ``rank``
    the pessimistic rank of ``targets[i]`` among row ``i``'s cells (cells at or above it, other
    than itself), :data:`UNRANKED` for a target ``-1``, excluded or non-finite. With
    ``keep_targets`` each target cell gets back its finished value (masking excepted): the
    softmax learns from it.

    One pass per row finishes, masks, counts the cells at or above the target and takes the
    maxima of blocks of cells; the top-``n`` then reads only the blocks that can hold it
    (:func:`_select_top_n`).
    """
    batch, cols = scores.shape
    width = max(0, min(width, cols))
    mode = (1 if bias.shape[0] == cols else 0) + (
        2 if feature.shape[0] == batch and feature.shape[1] == cols else 0
    )
    top = np.full((batch, n), -1, dtype=np.int64)
    best = np.full((batch, n), _NEG_INF, dtype=np.float32)
    rank = np.full(batch, UNRANKED, dtype=np.int64)
    blocks = (width + _BLOCK - 1) // _BLOCK
    block_max = np.empty(blocks, dtype=np.float32)
    groups = np.empty(4 * n, dtype=np.float32)
    cand = np.empty(width, dtype=np.float32)
    cand_cols = np.empty(width, dtype=np.int64)
    no_feature = np.zeros(0, dtype=np.float32)
    for i in range(batch):
        row = scores[i]
        f = feature[i] if mode & 2 else no_feature
        rank[i] = _rank_row(
            row, width, n, targets[i], bias, alpha, f, mode, ex_videos, ex_ptr[i], ex_ptr[i + 1],
            column_of, keep_targets, block_max, groups, cand, cand_cols, top[i], best[i],
        )  # fmt: skip
    return top, best, rank


@njit(**JIT_OPTIONS)
def _softmax_row(
    row: np.ndarray,
    t: int,
    w: np.float32,
    ex_videos: np.ndarray,
    ex_start: int,
    ex_stop: int,
    column_of: np.ndarray,
    bits: np.ndarray,
    column_sums: np.ndarray,
    f: np.ndarray,
) -> tuple[float, int, float]:
    """One row of :func:`softmax_grad`: ``(loss, skipped, feature_grad)`` of the row."""
    kept = row[t]
    _exclude(row, row.shape[0], ex_videos, ex_start, ex_stop, column_of)
    row[t] = kept
    bad, top = _scan_row(row)
    if bad or kept - kept != _ZERO:
        _fill(row, _ZERO)
        return 0.0, 1, 0.0
    total = np.float32(_exp_shifted_sum(row, top, bits))
    loss = float(w) * (float(np.log(total)) - (float(kept) - float(top)))
    return loss, 0, _scale_row(row, w / total, t, w, column_sums, f)


@njit(**JIT_OPTIONS)
def softmax_grad(
    logits: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    ex_ptr: np.ndarray,
    ex_videos: np.ndarray,
    column_of: np.ndarray,
    feature: np.ndarray,
) -> tuple[float, int, np.ndarray, float]:
    """Gradient of the weighted softmax cross-entropy with respect to ``logits``, in place.

    ``logits`` is ``(B, W)`` float32; ``targets[i]`` is row ``i``'s positive column. First the
    excluded cells (``ex_ptr``/``ex_videos`` through ``column_of``) other than the target are
    set to ``-inf`` (left out of the denominator). Then, as :func:`model.kernels.softmax_grad`:
    each row becomes ``weights[i] * (softmax(row) - onehot(target))``; a row with a NaN or
    ``+inf`` anywhere, or a non-finite target, is zero and counted as skipped.

    Returns ``(loss, skipped, column_sums, feature_grad)``: the weighted loss of the rows not
    skipped, their count, the gradient summed over rows (float32, row by row as numpy sums an
    axis-0 reduction), and ``sum(grad * feature)`` (0 without a ``(B, W)`` ``feature``).
    """
    batch, cols = logits.shape
    has_feature = feature.shape[0] == batch and feature.shape[1] == cols
    no_feature = np.zeros(0, dtype=np.float32)
    bits = np.empty(cols, dtype=np.int32)
    column_sums = np.zeros(cols, dtype=np.float32)
    loss = 0.0
    skipped = 0
    feature_grad = 0.0
    for i in range(batch):
        f = feature[i] if has_feature else no_feature
        loss_i, skip, grad_f = _softmax_row(
            logits[i],
            targets[i],
            weights[i],
            ex_videos,
            ex_ptr[i],
            ex_ptr[i + 1],
            column_of,
            bits,
            column_sums,
            f,
        )
        loss += loss_i
        skipped += skip
        feature_grad += grad_f
    return loss, skipped, column_sums, feature_grad


@njit(**JIT_OPTIONS)
def rank_softmax(
    scores: np.ndarray,
    width: int,
    n: int,
    rank_targets: np.ndarray,
    learn_targets: np.ndarray,
    weights: np.ndarray,
    ex_ptr: np.ndarray,
    ex_videos: np.ndarray,
    column_of: np.ndarray,
    bias: np.ndarray,
    alpha: np.float32,
    feature: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, int, np.ndarray, float]:
    """:func:`rank_top_n` (targets ``rank_targets``, keeping them) then :func:`softmax_grad`
    (targets ``learn_targets``) on each row while it is in cache: the same arithmetic in the
    same order, so the same results, in one pass over the matrix instead of two.

    ``scores`` must hold every column's dot product (the rows of new videos included).
    Returns ``(top, best, rank, loss, skipped, column_sums, feature_grad)``.
    """
    batch, cols = scores.shape
    width = max(0, min(width, cols))
    mode = (1 if bias.shape[0] == cols else 0) + (
        2 if feature.shape[0] == batch and feature.shape[1] == cols else 0
    )
    top = np.full((batch, n), -1, dtype=np.int64)
    best = np.full((batch, n), _NEG_INF, dtype=np.float32)
    rank = np.full(batch, UNRANKED, dtype=np.int64)
    block_max = np.empty((width + _BLOCK - 1) // _BLOCK, dtype=np.float32)
    groups = np.empty(4 * n, dtype=np.float32)
    cand = np.empty(width, dtype=np.float32)
    cand_cols = np.empty(width, dtype=np.int64)
    bits = np.empty(cols, dtype=np.int32)
    column_sums = np.zeros(cols, dtype=np.float32)
    no_feature = np.zeros(0, dtype=np.float32)
    loss, skipped, feature_grad = 0.0, 0, 0.0
    for i in range(batch):
        row = scores[i]
        f = feature[i] if mode & 2 else no_feature
        start, stop = ex_ptr[i], ex_ptr[i + 1]
        rank[i] = _rank_row(
            row, width, n, rank_targets[i], bias, alpha, f, mode, ex_videos, start, stop,
            column_of, True, block_max, groups, cand, cand_cols, top[i], best[i],
        )  # fmt: skip
        loss_i, skip, grad_f = _softmax_row(
            row, learn_targets[i], weights[i], ex_videos, start, stop, column_of, bits, column_sums, f
        )
        loss += loss_i
        skipped += skip
        feature_grad += grad_f
    return top, best, rank, loss, skipped, column_sums, feature_grad


@njit(**_JIT_IEEE)  # divisors: sqrt(a) + 1e-8 > 0, and a norm above max_norm > 0
def adagrad_rows(
    param: np.ndarray,
    accum: np.ndarray,
    rows: np.ndarray,
    grad: np.ndarray,
    lr: float,
    max_norm: float,
) -> int:
    """Adagrad on rows ``rows`` of ``(R, K)`` float32 ``param`` and ``accum`` (all ``R`` rows
    in order when ``rows`` is empty), from ``(len(rows), K)`` ``grad``; returns how many rows
    were refused.

    As :func:`model.kernels.adagrad_step`: a gradient row is clipped to L2 norm ``max_norm``;
    a row whose new parameters or accumulator would not be finite is not written at all.
    Rows must be distinct.
    """
    n, dim = grad.shape
    whole = rows.shape[0] == 0
    lr32, limit = np.float32(lr), np.float32(max_norm)
    g = np.empty(dim, dtype=np.float32)
    new_p = np.empty(dim, dtype=np.float32)
    new_a = np.empty(dim, dtype=np.float32)
    refused = 0
    for i in range(n):
        r = i if whole else rows[i]
        norm2 = _ZERO
        for k in range(dim):
            g[k] = grad[i, k]
            norm2 += g[k] * g[k]
        if not norm2 <= limit * limit:
            norm = np.sqrt(norm2)
            if norm > limit:
                s = limit / norm
                for k in range(dim):
                    g[k] = g[k] * s
        finite = True
        for k in range(dim):
            a = accum[r, k] + g[k] * g[k]
            p = param[r, k] - (g[k] / (np.sqrt(a) + _EPS)) * lr32
            new_a[k] = a
            new_p[k] = p
            finite &= (a - a == _ZERO) & (p - p == _ZERO)
        if finite:
            for k in range(dim):
                accum[r, k] = new_a[k]
                param[r, k] = new_p[k]
        else:
            refused += 1
    return refused


@njit(**_JIT_IEEE)  # divisors: a row's scale, or 1 where it is 0
def quantized_step(
    delta: np.ndarray,
    top: float,
    q: np.ndarray,
    scale: np.ndarray,
    param: np.ndarray,
    agreed: np.ndarray,
    rows: np.ndarray,
) -> None:
    """Each row of ``(R, K)`` float32 ``delta`` quantised into ``q`` (integers, any signed type)
    and ``scale`` as :func:`model.kernels.quantize_rows` does (``scale = max |row| / top``,
    ``q = rint(delta / scale)`` within ``[-top, top]``), and the rounded step taken: row
    ``rows[i]`` of ``param`` and of ``agreed`` both become ``agreed[rows[i]] + q[i] * scale[i]``
    (:func:`model.kernels.dequantize_rows`' product, so a peer adding it gets the same numbers).
    One pass instead of numpy's nine over the rows."""
    n, dim = delta.shape
    top32 = np.float32(top)
    for i in range(n):
        peak = _ZERO
        for k in range(dim):
            peak = max(peak, abs(delta[i, k]))
        s = peak / top32
        scale[i] = s
        divisor = s if s > _ZERO else _ONE
        r = rows[i]
        for k in range(dim):
            v = min(max(np.rint(delta[i, k] / divisor), -top32), top32)
            q[i, k] = v
            step = np.float32(q[i, k]) * s
            value = agreed[r, k] + step
            param[r, k] = value
            agreed[r, k] = value


@njit(**JIT_OPTIONS)
def mix_histories(
    items: np.ndarray, hist_w: np.ndarray, decay: np.ndarray, Q: np.ndarray, known: int, bound: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each event's mixing weights and viewer vector from its history.

    ``items``/``hist_w`` are ``(B, L)`` histories (video rows, ``-1`` empty; watch weights).
    ``mix[e, a] = decay[a] * hist_w[e, a]`` over non-empty slots, normalised to sum to 1 (a
    row of 0 when empty); ``U[e] = sum_a mix[e, a] * Q[items[e, a]]`` over rows ``< known``
    (newer rows start at zero). Also the distinct history rows (``< bound``), in order of
    first appearance, and each slot's index among them (``-1`` empty): the rows the
    transition gradient (:func:`history_grad`) goes to. Returns ``(mix, U, rows, slot)``.
    """
    batch, length = items.shape
    dim = Q.shape[1]
    mix = np.zeros((batch, length), dtype=np.float32)
    U = np.zeros((batch, dim), dtype=np.float32)
    slot = np.full((batch, length), -1, dtype=np.int64)
    index = np.full(bound, -1, dtype=np.int64)
    rows = np.empty(batch * length, dtype=np.int64)
    distinct = 0
    for e in range(batch):
        norm = _ZERO
        for a in range(length):
            if items[e, a] >= 0:
                mix[e, a] = hist_w[e, a] * decay[a]
                norm += mix[e, a]
        if norm > _ZERO:
            for a in range(length):
                mix[e, a] = mix[e, a] / norm
        for a in range(length):
            v = items[e, a]
            if v < 0:
                continue
            if index[v] < 0:
                index[v] = distinct
                rows[distinct] = v
                distinct += 1
            slot[e, a] = index[v]
            if v < known:
                m = mix[e, a]
                for k in range(dim):
                    U[e, k] += m * Q[v, k]
    return mix, U, rows[:distinct].copy(), slot


@njit(**JIT_OPTIONS)
def history_grad(slot: np.ndarray, mix: np.ndarray, grad_u: np.ndarray, distinct: int) -> np.ndarray:
    """``(distinct, K)``: the gradient of each distinct history row, ``sum_e,a mix[e, a] *
    grad_u[e]`` over the slots that hold it (the transpose of :func:`mix_histories`' ``U``)."""
    batch, length = slot.shape
    dim = grad_u.shape[1]
    out = np.zeros((distinct, dim), dtype=np.float32)
    for e in range(batch):
        for a in range(length):
            d = slot[e, a]
            if d >= 0:
                m = mix[e, a]
                for k in range(dim):
                    out[d, k] += m * grad_u[e, k]
    return out


@njit(**JIT_OPTIONS)
def cooc_feature(
    counts: np.ndarray, inv: np.ndarray, items: np.ndarray, mix: np.ndarray, terms: int, columns: np.ndarray
) -> np.ndarray:
    """``(B, C)`` co-occurrence feature of the first ``terms`` slots of histories ``items``
    (``(B, L)``, weighted ``mix``) at video rows ``columns``, as
    :meth:`model.cooc.CoCounts.feature`: ``f[e, c] = sum_a mix[e, a] inv[h] counts[h, col]
    inv[col]`` with ``h = items[e, a]``.

    ``counts`` is the square count matrix (any capacity), ``inv`` its first ``R`` rows'
    normalisers ``max(n, 1) ** -exponent``; history rows and columns outside ``[0, R)`` read
    0. Each distinct history row's counts at ``columns`` are gathered once (a batch's
    histories share most of their videos), then every event adds its rows four at a time.
    """
    batch = items.shape[0]
    terms = min(terms, items.shape[1])
    width = columns.shape[0]
    counted = inv.shape[0]
    index = np.full(counted, -1, dtype=np.int64)
    rows = np.empty(batch * terms, dtype=np.int64)
    distinct = 0
    for e in range(batch):
        for a in range(terms):
            v = items[e, a]
            if 0 <= v < counted and index[v] < 0:
                index[v] = distinct
                rows[distinct] = v
                distinct += 1
    safe = np.empty(width, dtype=np.int64)  # a column without counts reads row 0, scaled by 0
    scale = np.empty(width, dtype=np.float32)
    for c in range(width):
        col = columns[c]
        inside = 0 <= col < counted
        safe[c] = col if inside else 0
        scale[c] = inv[col] if inside else _ZERO
    gathered = np.empty((distinct, width), dtype=np.float32)
    for d in range(distinct):
        _gather(counts[rows[d]], safe, gathered[d])
    out = np.zeros((batch, width), dtype=np.float32)
    weight = np.empty(terms, dtype=np.float32)
    source = np.empty(terms, dtype=np.int64)
    for e in range(batch):
        k = 0
        for a in range(terms):
            v = items[e, a]
            if 0 <= v < counted:
                weight[k] = mix[e, a] * inv[v]
                source[k] = index[v]
                k += 1
        _mix_rows(out[e], gathered, weight, source, k, scale)
    return out


@njit(**JIT_OPTIONS)
def _gather(source: np.ndarray, columns: np.ndarray, out: np.ndarray) -> None:
    for c in range(columns.shape[0]):
        out[c] = source[columns[c]]


@njit(**JIT_OPTIONS)
def _mix_rows(
    acc: np.ndarray, rows: np.ndarray, weight: np.ndarray, source: np.ndarray, k: int, scale: np.ndarray
) -> None:
    """``acc = scale * sum_q weight[q] * rows[source[q]]`` over ``q < k``, four rows a pass."""
    q = 0
    while q + 4 <= k:
        _add4(
            acc,
            weight[q],
            rows[source[q]],
            weight[q + 1],
            rows[source[q + 1]],
            weight[q + 2],
            rows[source[q + 2]],
            weight[q + 3],
            rows[source[q + 3]],
        )
        q += 4
    while q < k:
        _add1(acc, weight[q], rows[source[q]])
        q += 1
    _scale(acc, scale)


@njit(**JIT_OPTIONS)
def _add4(acc, w0, g0, w1, g1, w2, g2, w3, g3) -> None:  # noqa: ANN001
    for c in range(acc.shape[0]):
        acc[c] += (w0 * g0[c] + w1 * g1[c]) + (w2 * g2[c] + w3 * g3[c])


@njit(**JIT_OPTIONS)
def _add1(acc: np.ndarray, w: np.float32, g: np.ndarray) -> None:
    for c in range(acc.shape[0]):
        acc[c] += w * g[c]


@njit(**JIT_OPTIONS)
def _scale(acc: np.ndarray, scale: np.ndarray) -> None:
    for c in range(acc.shape[0]):
        acc[c] = acc[c] * scale[c]


@njit(**JIT_OPTIONS)
def cooc_add(
    counts: np.ndarray, own: np.ndarray, history: np.ndarray, videos: np.ndarray, window: int
) -> None:
    """Count each event's video with the first ``window`` videos of its history, both ways, and
    each video once in ``own`` (as :meth:`model.cooc.CoCounts.add`'s ``np.add.at``)."""
    batch = videos.shape[0]
    reach = min(window, history.shape[1])
    for e in range(batch):
        i = videos[e]
        for a in range(reach):
            j = history[e, a]
            if j >= 0 and j != i:
                counts[j, i] += _ONE
                counts[i, j] += _ONE
        own[i] += _ONE


@njit(**JIT_OPTIONS)
def exclusion_cells(
    order: np.ndarray,
    start: np.ndarray,
    video_rows: np.ndarray,
    lists: np.ndarray,
    list_ptr: np.ndarray,
    list_of: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Causal exclusions of a batch as compressed rows ``(ptr, videos)``.

    Event ``i`` excludes its viewer's list ``lists[list_ptr[l]:list_ptr[l+1]]`` with
    ``l = list_of[i]`` (``-1``: none; what the viewer watched before the batch), then the
    videos (``>= 0``) of the viewer's earlier events in the batch: with the batch grouped by
    viewer (:func:`model.history.group_positions`' ``order`` and ``start``), sorted position
    ``p`` excludes the videos at sorted positions ``start[p] .. p - 1``.
    """
    batch = order.shape[0]
    position = np.empty(batch, dtype=np.int64)
    for p in range(batch):
        position[order[p]] = p
    ptr = np.zeros(batch + 1, dtype=np.int64)
    for i in range(batch):
        l = list_of[i]  # noqa: E741
        own = list_ptr[l + 1] - list_ptr[l] if l >= 0 else 0
        p = position[i]
        ptr[i + 1] = ptr[i] + own + (p - start[p])
    out = np.empty(ptr[batch], dtype=np.int64)
    for i in range(batch):
        at = ptr[i]
        l = list_of[i]  # noqa: E741
        if l >= 0:
            for k in range(list_ptr[l], list_ptr[l + 1]):
                out[at] = lists[k]
                at += 1
        p = position[i]
        for q in range(start[p], p):
            out[at] = video_rows[order[q]]
            at += 1
    return ptr, out


@njit(**JIT_OPTIONS)
def excluded_targets(ex_ptr: np.ndarray, ex_videos: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per event, whether its own video ``targets[i]`` (a row, ``-1``: unknown) is among its
    exclusions ``ex_videos[ex_ptr[i]:ex_ptr[i+1]]``: a re-watch, which no list may show, so no
    list could have had it. As :func:`model.kernels.excluded_targets`, exactly.
    """
    batch = targets.shape[0]
    out = np.zeros(batch, dtype=np.bool_)
    for i in range(batch):
        t = targets[i]
        if t < 0:
            continue
        for k in range(ex_ptr[i], ex_ptr[i + 1]):
            if ex_videos[k] == t:
                out[i] = True
                break
    return out


@njit(**JIT_OPTIONS)
def batch_histories(
    stored_items: np.ndarray,
    stored_weights: np.ndarray,
    viewers: np.ndarray,
    videos: np.ndarray,
    weights: np.ndarray,
    order: np.ndarray,
    start: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each event's history just before it, and each viewer's after the batch (as
    :meth:`model.history.RecentHistory.for_batch`).

    ``stored_items``/``stored_weights`` are the ``(R, L)`` stored histories (viewer rows
    ``>= R`` start empty); the batch is grouped by viewer (``order``, ``start``: sorted
    position ``p``'s group starts at ``start[p]``). Slot ``a`` of an event's history is its
    viewer's event ``a + 1`` back in the batch when there is one, else the stored history
    shifted by the events before it. Returns ``(items, hist_weights)`` ``(B, L)`` and
    ``(final_rows, final_items, final_weights)``, one row per distinct viewer, in sorted order.
    """
    batch = order.shape[0]
    stored, length = stored_items.shape
    items = np.full((batch, length), -1, dtype=np.int64)
    hist_w = np.zeros((batch, length), dtype=np.float32)
    groups = 0
    for p in range(batch):
        groups += p + 1 == batch or start[p + 1] != start[p]
    final_rows = np.empty(groups, dtype=np.int64)
    final_items = np.full((groups, length), -1, dtype=np.int64)
    final_w = np.zeros((groups, length), dtype=np.float32)
    g = 0
    for p in range(batch + 1):
        # p < batch: the event at sorted position p; then "one past" each group's last event.
        last = p == batch or (p > 0 and start[p] != start[p - 1])
        if p > 0 and last:
            q = p - 1  # the group's last event: its viewer's history after the batch
            _history_row(
                stored_items,
                stored_weights,
                viewers[order[q]],
                videos,
                weights,
                order,
                start[q],
                p,
                final_items[g],
                final_w[g],
            )
            final_rows[g] = viewers[order[q]]
            g += 1
        if p < batch:
            i = order[p]
            _history_row(
                stored_items,
                stored_weights,
                viewers[i],
                videos,
                weights,
                order,
                start[p],
                p,
                items[i],
                hist_w[i],
            )
    return items, hist_w, final_rows, final_items, final_w


@njit(**JIT_OPTIONS)
def _history_row(
    stored_items: np.ndarray,
    stored_weights: np.ndarray,
    viewer: int,
    videos: np.ndarray,
    weights: np.ndarray,
    order: np.ndarray,
    first: int,
    p: int,
    out_items: np.ndarray,
    out_w: np.ndarray,
) -> None:
    """The history before sorted position ``p`` of a group starting at ``first``."""
    length = out_items.shape[0]
    before = p - first  # the viewer's events earlier in the batch
    for a in range(min(before, length)):
        e = order[p - 1 - a]
        out_items[a] = videos[e]
        out_w[a] = weights[e]
    if before < length and 0 <= viewer < stored_items.shape[0]:
        for a in range(before, length):
            out_items[a] = stored_items[viewer, a - before]
            out_w[a] = stored_weights[viewer, a - before]


@njit(**JIT_OPTIONS)
def group_cells(rows: np.ndarray, cols: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Cells ``(rows, cols)`` (any order) as compressed rows ``(ptr, cols)``: row ``i``'s are
    ``cols[ptr[i]:ptr[i+1]]``, in their order (a counting sort); rows outside ``[0, batch)`` go."""
    cells = rows.shape[0]
    ptr = np.zeros(batch + 1, dtype=np.int64)
    for k in range(cells):
        r = rows[k]
        if 0 <= r < batch:
            ptr[r + 1] += 1
    for i in range(batch):
        ptr[i + 1] += ptr[i]
    fill = ptr[:batch].copy()
    grouped = np.empty(ptr[batch], dtype=np.int64)
    for k in range(cells):
        r = rows[k]
        if 0 <= r < batch:
            grouped[fill[r]] = cols[k]
            fill[r] += 1
    return ptr, grouped


@njit(**JIT_OPTIONS)
def shared_top_n_rank(
    clean: np.ndarray,
    prefix: np.ndarray,
    n: int,
    targets: np.ndarray,
    at_least: np.ndarray,
    ex_ptr: np.ndarray,
    ex_items: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``n`` and pessimistic ranks of a batch whose rows all share one score vector.

    ``clean`` is the shared float32 vector (finite or ``-inf``), ``prefix`` the first items of
    its best-first stable order (ties: lower item first), deep enough for every row: at least
    ``n`` plus the row's excluded cells, or every finite item. Row ``i`` excludes the items
    ``ex_items[ex_ptr[i]:ex_ptr[i+1]]`` (repeats allowed; values outside the items ignored).
    ``at_least[i]`` is how many items score at or above row ``i``'s target.

    Per row: each distinct excluded item is marked once (counting those at or above the
    target, and whether the target itself is one), the top-``n`` is the first unmarked items
    of ``prefix``, and the rank is ``at_least`` minus the excluded items at or above the
    target, minus the target (:data:`UNRANKED` for a target ``-1``, excluded, or ``-inf``).
    Returns ``(top, rank)``; ``top`` holds ``-1`` where fewer than ``n`` items remain. As
    :func:`model.kernels.shared_top_n_with_rank`, exactly.
    """
    batch = targets.shape[0]
    items = clean.shape[0]
    mark = np.zeros(items, dtype=np.bool_)
    top = np.full((batch, n), -1, dtype=np.int64)
    rank = np.full(batch, UNRANKED, dtype=np.int64)
    depth = prefix.shape[0]
    for i in range(batch):
        t = targets[i]
        known = 0 <= t < items
        score = clean[t] if known else _NEG_INF
        above = 0
        excluded = False
        for k in range(ex_ptr[i], ex_ptr[i + 1]):
            c = ex_items[k]
            if 0 <= c < items and not mark[c]:
                mark[c] = True
                above += clean[c] >= score
                excluded |= c == t
        if known and score > _NEG_INF and not excluded:
            rank[i] = at_least[i] - above - 1
        filled = 0
        p = 0
        while filled < n and p < depth:
            v = prefix[p]
            if not mark[v]:
                top[i, filled] = v
                filled += 1
            p += 1
        for k in range(ex_ptr[i], ex_ptr[i + 1]):
            c = ex_items[k]
            if 0 <= c < items:
                mark[c] = False
    return top, rank


_warm = False


def warm_up() -> None:
    """Compile (or load from the disk cache) every kernel for the argument types the model
    passes, by one call each on tiny arrays: a model constructed pays this once per process,
    at start-up, instead of its first batch (the first run after an install compiles for a
    few seconds; later ones load the cache in a fraction of a second)."""
    global _warm
    if _warm:
        return
    f32, i64 = np.float32, np.int64
    scores = np.zeros((1, 2), dtype=f32)
    ptr, none = np.zeros(2, dtype=i64), np.zeros(0, dtype=i64)
    targets = np.zeros(1, dtype=i64)
    rank_top_n(
        scores, 2, 1, targets, ptr, none, none, np.zeros(2, f32), f32(0.0), np.zeros((1, 2), f32), True
    )
    softmax_grad(np.zeros((1, 2), f32), targets, np.ones(1, f32), ptr, none, none, np.zeros((1, 2), f32))
    rank_softmax(
        np.zeros((1, 2), f32), 2, 1, targets, targets, np.ones(1, f32), ptr, none, none,
        np.zeros(2, f32), f32(0.0), np.zeros((1, 2), f32),
    )  # fmt: skip
    adagrad_rows(np.zeros((2, 2), f32), np.zeros((2, 2), f32), targets, np.zeros((1, 2), f32), 0.1, 1.0)
    items, weights = np.zeros((1, 2), dtype=i64), np.ones((1, 2), dtype=f32)
    _, U, rows, slot = mix_histories(items, weights, np.ones(2, f32), np.zeros((1, 2), f32), 1, 1)
    history_grad(slot, weights, U, rows.shape[0])
    counts = np.zeros((2, 2), dtype=f32)
    cooc_feature(counts, np.ones(1, f32), items, weights, 1, targets)
    cooc_add(counts, np.zeros(2, f32), items, targets, 1)
    exclusion_cells(targets, targets, targets, none, np.zeros(1, i64), np.full(1, -1, i64))
    excluded_targets(ptr, none, targets)
    batch_histories(items, weights, targets, targets, np.ones(1, f32), targets, targets)
    exp_shifted(np.zeros(1, f32), 0.0)
    cells_ptr, cells = group_cells(targets, targets, 1)
    shared_top_n_rank(np.zeros(2, f32), targets, 1, targets, targets, cells_ptr, cells)
    _warm = True


@njit(**JIT_OPTIONS)
def add_rows_both(param: np.ndarray, agreed: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """:func:`model.kernels.add_rows_both` for 2-D tables: row ``rows[i]`` of ``param`` and of
    ``agreed`` each gets ``values[i]`` added, in one pass over the rows (numpy gathers, adds and
    scatters each table apart: four passes). ``rows`` are distinct, so the sums are numpy's."""
    for i in range(rows.shape[0]):
        r = rows[i]
        for k in range(values.shape[1]):
            v = values[i, k]
            param[r, k] += v
            agreed[r, k] += v


@njit(**JIT_OPTIONS)
def add_rows_both_1d(param: np.ndarray, agreed: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """:func:`add_rows_both` for 1-D tables (biases, counts)."""
    for i in range(rows.shape[0]):
        r = rows[i]
        param[r] += values[i]
        agreed[r] += values[i]


@njit(**JIT_OPTIONS)
def add_pairs_both_ways(matrix: np.ndarray, i: np.ndarray, j: np.ndarray, counts: np.ndarray) -> None:
    """:func:`model.kernels.add_pairs_both_ways`: ``counts[p]`` added at ``(i[p], j[p])`` and at
    ``(j[p], i[p])`` of the square ``matrix``; each unordered pair once, ``i != j``."""
    for p in range(i.shape[0]):
        a, b = i[p], j[p]
        matrix[a, b] += counts[p]
        matrix[b, a] += counts[p]
