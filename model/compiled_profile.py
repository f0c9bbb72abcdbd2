"""Compiled kernels of the long-term profile (:mod:`model.profile`), numba like
:mod:`model.compiled`, each equal to its plain numpy reference in :mod:`model.profile`
(``profile_means``, ``profile_grad``) up to the order of float sums (``tests/test_model_profile.py``).

The numpy references scatter with ``np.add.at``, which cost ten times the whole default
model's batch on ML-100K (thousands of watched videos per batch, each a ``dim``-wide row).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["profile_means_compiled", "profile_grad_compiled"]


@njit(cache=True, nogil=True)
def profile_means_compiled(P, ptr, videos, limit):  # noqa: ANN001, ANN201
    """``(means, inv)`` of :func:`model.profile.profile_means`: per event, the mean of the rows
    of ``P`` at the last ``limit`` of its videos (rows ``< 0`` or ``>= len(P)`` count as zero
    vectors), and ``1 / count`` (0 for an event without videos)."""
    B = ptr.shape[0] - 1
    rows, dim = P.shape
    means = np.zeros((B, dim), dtype=np.float32)
    inv = np.zeros(B, dtype=np.float32)
    for e in range(B):
        stop = ptr[e + 1]
        start = max(ptr[e], stop - limit)
        if stop <= start:
            continue
        scale = np.float32(1.0) / np.float32(stop - start)
        inv[e] = scale
        acc = means[e]
        for k in range(start, stop):
            v = videos[k]
            if v >= 0 and v < rows:
                src = P[v]
                for d in range(dim):
                    acc[d] += src[d]
        for d in range(dim):
            acc[d] *= scale
    return means, inv


@njit(cache=True, nogil=True)
def profile_grad_compiled(grad_u, ptr, videos, limit, rows, weight):  # noqa: ANN001, ANN201
    """``(rows touched, grad)`` of :func:`model.profile.profile_grad` for the videos
    :func:`profile_means_compiled` read: each gets ``weight / count`` of its event's row of
    ``grad_u``, summed per video row (``rows``: how many video rows exist); rows sorted."""
    B, dim = grad_u.shape
    dense = np.zeros((rows, dim), dtype=np.float32)
    touched = np.zeros(rows, dtype=np.bool_)
    for e in range(B):
        stop = ptr[e + 1]
        start = max(ptr[e], stop - limit)
        if stop <= start:
            continue
        scale = np.float32(weight) / np.float32(stop - start)
        g = grad_u[e]
        for k in range(start, stop):
            v = videos[k]
            if v >= 0 and v < rows:
                touched[v] = True
                dst = dense[v]
                for d in range(dim):
                    dst[d] += scale * g[d]
    out_rows = np.flatnonzero(touched)
    out = np.empty((out_rows.shape[0], dim), dtype=np.float32)
    for i in range(out_rows.shape[0]):
        out[i] = dense[out_rows[i]]
    return out_rows.astype(np.int64), out


_warm = False


def warm_up() -> None:
    """Compile (or load from numba's cache) both kernels, once per process."""
    global _warm
    if _warm:
        return
    P = np.zeros((2, 2), dtype=np.float32)
    ptr = np.array([0, 1], dtype=np.int64)
    videos = np.array([1], dtype=np.int64)
    profile_means_compiled(P, ptr, videos, 1)
    profile_grad_compiled(P[:1], ptr, videos, 1, 2, 1.0)
    _warm = True
