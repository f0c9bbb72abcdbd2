"""The hot numpy functions of the embedding model: softmax gradient and a guarded Adagrad step.

Everything here works on whole batches (no per-event numpy calls), so its cost is a few
matrix products per poll. The Adagrad step is the one place parameters are written, and it
refuses to write non-finite numbers: a diverging update is clipped, and a row whose gradient
is still not finite is skipped and counted.

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

__all__ = ["softmax_grad", "adagrad_step"]

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
