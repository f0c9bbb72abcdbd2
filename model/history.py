"""Each viewer's last ``L`` watches, and exact-causal histories for a batch of events.

The default model represents a viewer by what they watched most recently, so it keeps, per
viewer row, the last ``length`` video rows (most recent first, ``-1`` = empty slot) and the
weight of each of those watches. For a batch, :meth:`RecentHistory.for_batch` gives every
event the history its viewer had *just before that event*: the stored history shifted by the
viewer's earlier events in the same batch. So a batch of one and a batch of many see exactly
the same histories, and a viewer arriving in a burst is fresh at every event.

>>> h = RecentHistory(length=3)
>>> h.ensure(1)
>>> hist, hist_weights, *final = h.for_batch(
...     viewers=np.array([0, 0, 0, 0]), videos=np.array([7, 8, 9, 5]),
...     weights=np.ones(4, dtype=np.float32))
>>> hist.tolist()
[[-1, -1, -1], [7, -1, -1], [8, 7, -1], [9, 8, 7]]
>>> h.store(*final); h.items.array.tolist()
[[5, 9, 8]]

"""

from __future__ import annotations

import numpy as np

from model.compiled import batch_histories
from model.ids import GrowableTable

__all__ = ["RecentHistory", "group_positions"]


def group_positions(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stable grouping of a batch by key.

    Returns ``order`` (positions sorted by key, stable), ``start`` (for each sorted position, the
    sorted position where its group starts) and ``within`` (its 0-based position in the group,
    i.e. how many earlier events of the same key the batch holds).

    >>> order, start, within = group_positions(np.array([5, 3, 5, 5]))
    >>> order.tolist(), start.tolist(), within.tolist()
    ([1, 0, 2, 3], [0, 1, 1, 1], [0, 0, 1, 2])
    """
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    n = keys.shape[0]
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = sorted_keys[1:] != sorted_keys[:-1]
    start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    within = np.arange(n) - start
    return order, start, within


class RecentHistory:
    """Per-viewer ring of the last ``length`` watched video rows and their weights."""

    def __init__(self, length: int, capacity: int = 1024) -> None:
        self.length = length
        self.items = GrowableTable(dim=length, capacity=capacity, dtype=np.int64, fill=-1)
        self.weights = GrowableTable(dim=length, capacity=capacity, dtype=np.float32)

    def __len__(self) -> int:
        return self.items.rows

    def ensure(self, rows: int) -> None:
        self.items.ensure(rows)
        self.weights.ensure(rows)

    def of_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stored histories of viewer ``rows`` (``-1`` or rows not stored yet: empty)."""
        rows = np.asarray(rows, dtype=np.int64)
        known = (rows >= 0) & (rows < self.items.rows)
        items = np.full((rows.shape[0], self.length), -1, dtype=np.int64)
        weights = np.zeros((rows.shape[0], self.length), dtype=np.float32)
        items[known] = self.items.array[rows[known]]
        weights[known] = self.weights.array[rows[known]]
        return items, weights

    def for_batch(
        self,
        viewers: np.ndarray,
        videos: np.ndarray,
        weights: np.ndarray,
        grouping: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Causal histories for a batch, and each viewer's history after it.

        ``viewers`` are viewer rows (rows not stored yet start empty), ``videos`` the events'
        video rows, ``weights`` their watch weights. Returns ``(items, weights)`` of shape
        ``(B, length)``, the history before each event (most recent first), then
        ``(final_rows, final_items, final_weights)``: one row per distinct viewer, to
        :meth:`store` once the batch is learned. ``grouping`` is ``group_positions(viewers)``
        when the caller has it already.
        """
        order, start, _ = group_positions(viewers) if grouping is None else grouping
        return batch_histories(
            self.items.array,
            self.weights.array,
            viewers,
            videos,
            weights.astype(np.float32, copy=False),
            order,
            start,
        )

    def store(self, rows: np.ndarray, items: np.ndarray, weights: np.ndarray) -> None:
        """Write the histories returned by :meth:`for_batch` (rows must exist)."""
        self.items.array[rows] = items
        self.weights.array[rows] = weights

    def clear(self, rows: np.ndarray) -> None:
        """Empty the histories of viewer ``rows`` (released viewers; a reused row starts empty)."""
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows[rows < self.items.rows]
        self.items.array[rows] = -1
        self.weights.array[rows] = 0.0

    def discard_videos(self, video_rows: np.ndarray) -> None:
        """Blank released ``video_rows`` out of every history (empty slot, weight 0).

        >>> h = RecentHistory(length=3); h.ensure(2)
        >>> h.store(np.array([0, 1]), np.array([[4, 5, -1], [5, 6, 7]]), np.ones((2, 3), np.float32))
        >>> h.discard_videos(np.array([5])); h.items.array.tolist()
        [[4, -1, -1], [-1, 6, 7]]
        """
        items = self.items.array
        hit = np.isin(items, np.asarray(video_rows, dtype=np.int64))
        if hit.any():
            items[hit] = -1
            self.weights.array[hit] = 0.0

    def nbytes_per_viewer(self) -> int:
        return self.length * (8 + 4)

    # -- persistence (a part, see :mod:`model.persist`) -----------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """``items`` and ``weights``, ``(viewer rows, length)`` each.

        >>> h = RecentHistory(length=2); h.ensure(1)
        >>> h.store(np.array([0]), np.array([[3, -1]]), np.ones((1, 2)))
        >>> back = RecentHistory(length=2); back.load_arrays(h.to_arrays()); back.items.array.tolist()
        [[3, -1]]
        """
        return {"items": self.items.array, "weights": self.weights.array}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`to_arrays` wrote, in place; ``ValueError`` if it is malformed.

        Whether the video rows exist is the model's to check (:meth:`max_video`)."""
        items, weights = arrays["items"], arrays["weights"]
        if items.shape != weights.shape:
            raise ValueError(f"history items {items.shape} and weights {weights.shape} differ in shape")
        self.items.load_arrays({"rows": items})
        self.weights.load_arrays({"rows": weights})
        if self.items.array.min(initial=-1) < -1:
            raise ValueError("history holds negative video rows")

    def max_video(self) -> int:
        """The largest video row in any history (``-1`` when none): for checks after loading."""
        return int(self.items.array.max(initial=-1))
