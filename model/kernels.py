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

__all__ = ["softmax_grad", "adagrad_step", "scatter_rows"]

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
    logits -= top[:, None]
    target_logit -= top
    np.exp(logits, out=logits)
    total = logits.sum(axis=1)
    loss = float(np.sum((weights * (np.log(total) - target_logit))[~bad]))
    logits /= total[:, None]
    logits[rows, targets] -= 1.0
    logits *= np.where(bad, 0.0, weights).astype(logits.dtype)[:, None]
    return logits, loss, skipped


def scatter_rows(rows: np.ndarray, values: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum ``values`` rows that share a row index: ``(unique_rows, summed)``.

    >>> r, v = scatter_rows(np.array([2, 0, 2]), np.array([[1.0], [2.0], [3.0]]), 3)
    >>> r.tolist(), v.tolist()
    ([0, 2], [[2.0], [4.0]])
    """
    unique, inverse = np.unique(rows, return_inverse=True)
    summed = np.zeros((unique.shape[0], values.shape[1]), dtype=values.dtype)
    np.add.at(summed, inverse, values)
    return unique, summed


def adagrad_step(
    param: np.ndarray,
    accum: np.ndarray,
    rows: np.ndarray | None,
    grad: np.ndarray,
    lr: float,
    max_norm: float,
    decay: float = 1.0,
) -> int:
    """Adagrad on ``param[rows]`` (all rows when ``rows`` is None, else unique rows); returns
    how many rows were refused.

    ``decay < 1`` forgets old squared gradients (RMSprop-style), so the step size does not
    shrink forever on a drifting stream; ``decay = 1`` is plain Adagrad.

    Each gradient row is clipped to L2 norm ``max_norm`` first (large steps are how online
    models diverge). A row whose new parameters or accumulator would not be finite (a NaN
    gradient, an overflow) is not written at all.
    """
    n = grad.shape[0]
    grad = grad.reshape(n, -1)
    if rows is None:
        rows = slice(None)
    p = param[rows].reshape(n, -1)
    a = accum[rows].reshape(n, -1)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        norm = np.sqrt(np.einsum("ij,ij->i", grad, grad))
        scale = np.where(norm > max_norm, max_norm / norm, 1.0).astype(grad.dtype)
        grad = grad * scale[:, None]
        a = (
            a * decay if decay != 1.0 else a
        ) + grad * grad  # new arrays: nothing is written before the check
        p = p - lr * grad / (np.sqrt(a) + _EPS)
    ok = np.isfinite(p).all(axis=1) & np.isfinite(a).all(axis=1)
    refused = int(n - ok.sum())
    if refused:
        keep = np.flatnonzero(ok)
        rows = keep if isinstance(rows, slice) else rows[keep]
        p, a = p[keep], a[keep]
    shape = param.shape[1:]
    param[rows] = p.reshape((-1, *shape))
    accum[rows] = a.reshape((-1, *shape))
    return refused
