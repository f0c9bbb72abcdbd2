"""How much a watch counts: watch time (and duration, when known) to a bounded weight.

A watch is a positive; how much of the video was watched says how strong a positive it is.
The weight is bounded to ``[floor, 1]`` so that one long watch can never dominate a batch
(bounded weights also keep the SGD step bounded):

* duration known: ``floor + (1 - floor) * min(1, watch_time / duration)`` (fraction watched);
* only watch time known: ``floor + (1 - floor) * (1 - exp(-watch_time / saturation_s))``: a
  saturating curve, so 5 minutes of a 5-minute default saturation weigh about 0.68;
* no watch time (a rating, a click: every MovieLens event): weight 1, a plain positive.

>>> import numpy as np
>>> [round(float(w), 3) for w in watch_weights([None, 30.0, 30.0, 0.0], [None, 60.0, None, None])]
[1.0, 0.55, 0.186, 0.1]

"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["watch_weights"]


def watch_weights(
    watch_time: Sequence[float | None],
    duration: Sequence[float | None],
    *,
    floor: float = 0.1,
    saturation_s: float = 300.0,
) -> np.ndarray:
    """Per-event weights in ``[floor, 1]`` (float32); see the module docstring for the curve."""
    if watch_time.count(None) == len(watch_time):  # ratings, clicks: plain positives (common)
        return np.ones(len(watch_time), dtype=np.float32)
    if None not in watch_time and None not in duration:  # both always known (common too)
        wt, du = np.array(watch_time, dtype=np.float64), np.array(duration, dtype=np.float64)
        if np.isfinite(wt).all() and (du > 0).all() and np.isfinite(du).all():
            # The fraction watched, as below for each event, in four array operations.
            strength = np.minimum(1.0, np.maximum(wt, 0.0) / du)
            return (floor + (1.0 - floor) * strength).astype(np.float32)
    wt = np.array(_none_to_nan(watch_time), dtype=np.float64)
    du = np.array(_none_to_nan(duration), dtype=np.float64)
    out = np.ones(wt.shape[0], dtype=np.float64)
    known = np.isfinite(wt)
    if not known.any():
        return out.astype(np.float32)
    wt = np.clip(np.where(known, wt, 0.0), 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = np.where(np.isfinite(du) & (du > 0), np.minimum(1.0, wt / du), np.nan)
    saturating = 1.0 - np.exp(-wt / saturation_s)
    strength = np.where(np.isfinite(fraction), fraction, saturating)
    out[known] = floor + (1.0 - floor) * strength[known]
    return out.astype(np.float32)


def _none_to_nan(values: Sequence[float | None]) -> Sequence[float]:
    """``values`` with ``None`` as NaN (the sequence itself when it holds none)."""
    if values.count(None) == 0:
        return values
    return [np.nan if v is None else v for v in values]
