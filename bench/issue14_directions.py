"""Issue 14's directions, each measured as a small variant of the default model, in one run.

Usage::

    .venv/bin/python bench/issue14_directions.py [DATA] [--variants default,lag,...] [--repeats 1]

Every variant is the default model (:class:`~model.embedding.EmbeddingRanker`, or a registered
model with other settings) with one idea added, run by the progressive evaluator (test then
train, batch 256, watched videos excluded) on ML-100K's first 80% (the tuning part), on all of
ML-100K with its last 20% apart, and on the synthetic demo stream. Speeds are ratios to the
default's events/s in the same run (the variants take turns, best of ``--repeats``). Writes
``bench/results/issue14_directions.json``; the table and what it says are in
``bench/README.md`` (issue 14).

These are experiments, not models: they reach into the default model's private batch
machinery (``_update``, ``_dots``, ``_mixing``), handle neither expiry nor save and load of
their own state, and none is registered. What paid would have been rebuilt as a model of its
own in ``model/``; nothing did.

* ``set history``: the last 20 watches with equal weights (``recency`` 1.0) against the
  default's ``0.8 ** age``: does the order of the history matter at all?
* ``lag``: position-aware pooling, a transition table of its own for the most recent watch
  (the others share the default's), so the last watch can say something else than older ones.
* ``gru``: a GRU over the last ``steps`` watches (oldest first), its final state through a
  learned map (zero at first, so it starts as the default) added to the viewer vector, trained
  by backpropagation through time from the same softmax (Adagrad at ``gru_lr``): GRU4Rec's
  network blended with the default's pooled history.
* ``rehearsal``: experience replay, one more Adagrad step per batch on past events (each with
  the history it had) drawn from a ring of recent events: is one pass too few steps?
* ``blend``: a learned blend of popularity, all-time count and example age (events since the
  video's first watch), each weighted by a function of the viewer's history length (one and
  ``log(1 + watched)``), added to the score and learned through the same softmax.
* ``band bias``: a bias per video for each band of the viewer's history length (under 20
  watches, 20-99, 100 and more) added to the score: light and heavy viewers may favour
  different films.
* ``averaged``: ranking with an exponential moving average of the parameters (Polyak-style),
  learning with the raw ones.
* ``timed cooc``: co-occurrence counts weighted by how close in time two watches were (same
  session), not only by how close in the history.
* ``long knn``: a second co-occurrence term over *everything* the viewer watched (the last 200,
  equal weights, a quarter of the recent term's weight): a full-rank long-term item-kNN.
* ``bias floor``: the biases' Adagrad accumulators capped at 10, so popularity keeps
  moving at ``lr / sqrt(10)`` instead of freezing as a film gets watched.
* ``dim 24``: a smaller embedding (the default is 32; 48 and 64 were no better).
* ``stacked``: ``streamrec_profile`` with ``rehearsal`` and ``long knn``, the three that gained
  alone (the rehearsal pools the transitions only, not the profile).
* ``genres``: video vectors plus a learned map of ML-100K's genres and release decade
  (``u.item`` beside ``u.data``): how much side information the stream does not carry would
  be worth. ML-100K only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import contract  # noqa: E402, F401  (first: it makes BLAS single-threaded before numpy loads)

# isort: split

import numpy as np  # noqa: E402

from bench.data import ml100k  # noqa: E402
from bench.model_search import DEMO, streams  # noqa: E402
from bench.results import write_results  # noqa: E402
from model.base import StreamRanker  # noqa: E402
from model.compiled import NO_COLUMNS, NO_FEATURE, adagrad_rows, history_grad, softmax_grad  # noqa: E402
from model.embedding import EmbeddingRanker  # noqa: E402
from model.ids import GrowableTable  # noqa: E402
from model.profile import ProfileRanker  # noqa: E402
from model.registry import create  # noqa: E402
from streamrec.commands.evaluate import evaluate_model  # noqa: E402


def _grown(array: np.ndarray, rows: int, fill: float) -> np.ndarray:
    """``array`` with at least ``rows`` rows (doubling; new rows hold ``fill``)."""
    if rows <= array.shape[0]:
        return array
    out = np.full((max(rows, 2 * array.shape[0]), *array.shape[1:]), fill, dtype=array.dtype)
    out[: array.shape[0]] = array
    return out


def _pooled(items: np.ndarray, mix: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``sum_a mix[:, a] * table[items[:, a]]`` over slots holding a row of ``table``."""
    ok = (items >= 0) & (items < table.shape[0])
    if not table.shape[0] or not ok.any():
        return np.zeros((items.shape[0], table.shape[1]), dtype=np.float32)
    vectors = np.where(ok[:, :, None], table[np.where(ok, items, 0)], 0.0)
    return (mix[:, :, None] * vectors).sum(axis=1, dtype=np.float32)


def _slots(items: np.ndarray, bound: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows ``< bound`` of ``items`` and each slot's index among them (-1: none)."""
    ok = (items >= 0) & (items < bound)
    rows, inverse = np.unique(items[ok], return_inverse=True)
    slot = np.full(items.shape, -1, dtype=np.int64)
    slot[ok] = inverse
    return rows, slot


class LagTransitions(EmbeddingRanker):
    """Position-aware pooling: the most recent watch pools a transition table of its own."""

    def _init_state(self) -> None:
        super()._init_state()
        self._Q_last = GrowableTable(self.dim)
        self._Q_last_acc = GrowableTable(self.dim)

    def _video_tables(self) -> dict[str, GrowableTable]:
        return {**super()._video_tables(), "q_last": self._Q_last, "q_last_acc": self._Q_last_acc}

    def _mixing(self, items, weights, bound):  # noqa: ANN001, ANN202
        mix, _, in_history, slot = super()._mixing(items, weights, bound)
        U = _pooled(items[:, :1], mix[:, :1], self._Q_last.array)
        U += _pooled(items[:, 1:], mix[:, 1:], self._Q.array)
        return mix, U, in_history, slot

    def _update(self, events, batch, grad, targets, *rest) -> None:  # noqa: ANN001
        grad_u = grad @ self._E.array[batch.columns]
        rows, slot = _slots(batch.history[:, :1], self._Q_last.rows)
        if rows.size:
            g = history_grad(slot, np.ascontiguousarray(batch.mix[:, :1]), grad_u, rows.size)
            adagrad_rows(self._Q_last.array, self._Q_last_acc.array, rows, g, self.lr, self.max_grad_norm)
        batch.mix = batch.mix.copy()
        batch.mix[:, 0] = 0.0  # the shared table learns from the older slots only
        super()._update(events, batch, grad, targets, *rest)


class GRUSequence(EmbeddingRanker):
    """The default model's viewer vector plus ``h_T W_o``: ``h_T`` the final state of a GRU run
    over the last ``steps`` watches' input vectors ``x`` (a table of their own), oldest first;
    every weight learned by backpropagation through time from the softmax's viewer gradient.

    >>> gru_gradient_error() < 1e-6   # the hand-written backward pass against finite differences
    True
    """

    def __init__(self, steps: int = 10, gru_lr: float = 0.05, **kw) -> None:
        self.steps, self.gru_lr = steps, gru_lr
        super().__init__(**kw)
        k = self.dim
        self._gru_rng = np.random.default_rng(self.seed)
        self._X = self._gru_rng.normal(0.0, self.init_scale, (1024, k)).astype(np.float32)
        self._X_acc = np.zeros_like(self._X)
        scale = 0.3 / np.sqrt(k)
        self._net = {
            "Wx": self._gru_rng.normal(0.0, scale, (k, 3 * k)).astype(np.float32),
            "Wh": self._gru_rng.normal(0.0, scale, (k, 3 * k)).astype(np.float32),
            "b": np.zeros((1, 3 * k), dtype=np.float32),
            "Wo": np.zeros((k, k), dtype=np.float32),
        }
        self._net_acc = {key: np.zeros_like(value) for key, value in self._net.items()}

    def _inputs(self, rows: int) -> None:
        """Input vectors for video rows up to ``rows`` (new ones small and random)."""
        have = self._X.shape[0]
        if rows > have:
            more = self._gru_rng.normal(0.0, self.init_scale, (max(rows, 2 * have) - have, self.dim))
            self._X = np.concatenate([self._X, more.astype(self._X.dtype)])
            self._X_acc = np.concatenate([self._X_acc, np.zeros_like(more, dtype=self._X_acc.dtype)])

    def forward(self, history: np.ndarray) -> tuple[np.ndarray, list]:
        """The final states ``(B, dim)`` for histories ``(B, L)`` (most recent first, -1
        empty: an empty slot leaves the state as it is), and what :meth:`backward` needs."""
        k, net = self.dim, self._net
        sequence = history[:, : self.steps][:, ::-1]
        h = np.zeros((sequence.shape[0], k), dtype=self._X.dtype)
        tape = []
        for rows in sequence.T:
            present = (rows >= 0)[:, None]
            x = np.where(present, self._X[np.maximum(rows, 0)], 0.0).astype(self._X.dtype)
            a = x @ net["Wx"] + net["b"]
            gates = a[:, : 2 * k] + h @ net["Wh"][:, : 2 * k]
            z, r = _sigmoid(gates[:, :k]), _sigmoid(gates[:, k:])
            rh = r * h
            n = np.tanh(a[:, 2 * k :] + rh @ net["Wh"][:, 2 * k :])
            tape.append((rows, present, x, h, z, r, rh, n))
            h = np.where(present, (1.0 - z) * n + z * h, h).astype(self._X.dtype)
        return h, tape

    def backward(self, h: np.ndarray, tape: list, grad_u: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray]:
        """Gradients of ``sum(grad_u * (h @ Wo))``: per weight, and per input row read (rows
        repeated; their gradients summed by the caller)."""
        k, net = self.dim, self._net
        grads = {key: np.zeros_like(value) for key, value in net.items()}
        grads["Wo"] = h.T @ grad_u
        dh = grad_u @ net["Wo"].T
        rows_read, grad_x = [], []
        for rows, present, x, h_prev, z, r, rh, n in reversed(tape):
            mask = present.astype(dh.dtype)
            d_new = dh * mask
            dn = d_new * (1.0 - z) * (1.0 - n * n)
            d_prev = d_new * z
            d_rh = dn @ net["Wh"][:, 2 * k :].T
            grads["Wh"][:, 2 * k :] += rh.T @ dn
            d_prev += d_rh * r
            d_gates = np.concatenate([d_new * (h_prev - n) * z * (1.0 - z), d_rh * h_prev * r * (1.0 - r)], 1)
            grads["Wh"][:, : 2 * k] += h_prev.T @ d_gates
            d_prev += d_gates @ net["Wh"][:, : 2 * k].T
            da = np.concatenate([d_gates, dn], 1)
            grads["Wx"] += x.T @ da
            grads["b"] += da.sum(axis=0, keepdims=True)
            rows_read.append(rows[present[:, 0]])
            grad_x.append((da @ net["Wx"].T)[present[:, 0]])
            dh = d_prev + dh * (1.0 - mask)
        return grads, np.concatenate(rows_read), np.concatenate(grad_x)

    def _batch(self, events):  # noqa: ANN001, ANN202
        batch = super()._batch(events)
        self._inputs(int(max(batch.video_rows.max(initial=0), batch.history.max(initial=0))) + 1)
        batch.gru = self.forward(batch.history)
        batch.U = batch.U + batch.gru[0] @ self._net["Wo"]
        return batch

    def _update(self, events, batch, grad, targets, *rest) -> None:  # noqa: ANN001
        grad_u = grad @ self._E.array[batch.columns]
        grads, rows, grad_x = self.backward(*batch.gru, grad_u)
        lr, clip = self.gru_lr, self.max_grad_norm
        for key, value in self._net.items():
            adagrad_rows(value, self._net_acc[key], NO_COLUMNS, grads[key].astype(np.float32), lr, clip)
        if rows.size:
            distinct, slot = np.unique(rows, return_inverse=True)
            g = np.zeros((distinct.size, self.dim), dtype=np.float32)
            np.add.at(g, slot, grad_x)
            adagrad_rows(self._X, self._X_acc, distinct, g, lr, clip)
        super()._update(events, batch, grad, targets, *rest)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def gru_gradient_error() -> float:
    """The largest relative difference between :meth:`GRUSequence.backward` and central
    finite differences, in float64, on a small random network and ragged histories."""
    model = GRUSequence(dim=4, steps=3)
    rng = np.random.default_rng(1)
    model._net = {key: rng.normal(0.0, 0.5, value.shape) for key, value in model._net.items()}
    model._X = rng.normal(0.0, 0.5, (3, 4))
    history = np.array([[2, 1, 0, -1], [1, -1, -1, -1], [0, 2, -1, -1]])
    grad_u = rng.normal(size=(3, 4))

    def loss() -> float:
        return float((grad_u * (model.forward(history)[0] @ model._net["Wo"])).sum())

    grads, rows, grad_x = model.backward(*model.forward(history), grad_u)
    grads["X"] = np.zeros_like(model._X)
    np.add.at(grads["X"], rows, grad_x)
    worst = 0.0
    for key, param in [*model._net.items(), ("X", model._X)]:
        for index in np.ndindex(param.shape):
            old = param[index]
            param[index] = old + 1e-6
            up = loss()
            param[index] = old - 1e-6
            down = loss()
            param[index] = old
            numeric = (up - down) / 2e-6
            worst = max(worst, abs(numeric - grads[key][index]) / max(1e-3, abs(numeric)))
    return float(worst)


class Rehearsal(EmbeddingRanker):
    """After each batch, one more step on ``replay * B`` past events drawn from a ring of the
    last ``buffer`` events, each with the history it had, at learning rate ``replay_lr``."""

    def __init__(self, replay: float = 0.5, buffer: int = 50_000, replay_lr: float = 0.05, **kw) -> None:
        self.replay, self.buffer, self.replay_lr = replay, buffer, replay_lr
        super().__init__(**kw)
        self._ring = {
            "items": np.full((buffer, self.history), -1, dtype=np.int64),
            "mix": np.zeros((buffer, self.history), dtype=np.float32),
            "viewer": np.zeros(buffer, dtype=np.int64),
            "video": np.zeros(buffer, dtype=np.int64),
            "weight": np.zeros(buffer, dtype=np.float32),
        }
        self._stored = 0
        self._draws = np.random.default_rng(self.seed)

    def _update(self, events, batch, grad, targets, *rest) -> None:  # noqa: ANN001
        super()._update(events, batch, grad, targets, *rest)
        at = (self._stored + np.arange(len(events))) % self.buffer
        for key, value in (
            ("items", batch.history),
            ("mix", batch.mix),
            ("viewer", batch.viewer_rows),
            ("video", batch.video_rows),
            ("weight", batch.weights),
        ):
            self._ring[key][at] = value
        self._stored += len(events)
        draws = int(round(self.replay * len(events)))
        if draws:
            self._rehearse(self._draws.integers(0, min(self._stored, self.buffer), draws))

    def _rehearse(self, index: np.ndarray) -> None:
        ring = {key: value[index] for key, value in self._ring.items()}
        items, mix, videos = ring["items"], ring["mix"], ring["video"]
        n_videos = len(self.videos)
        shortlist = self._shortlist(n_videos)
        if shortlist is None:
            columns, column_of, targets = np.arange(n_videos), NO_COLUMNS, videos
        else:
            column_of = np.full(n_videos, -1, dtype=np.int64)
            column_of[shortlist] = np.arange(shortlist.size)
            others = np.unique(videos[column_of[videos] < 0])
            columns = np.concatenate([shortlist, others])
            column_of[others] = np.arange(shortlist.size, columns.size)
            targets = column_of[videos]
        U = _pooled(items, mix, self._Q.array)
        cooc = self._feature(items, mix, columns) if self._use_cooc(n_videos) else None
        vectors = self._E.array[columns]
        grad = self._finish(U @ vectors.T, columns, cooc)
        exclude = self.seen.exclusions_of(ring["viewer"])
        feature = NO_FEATURE if cooc is None else cooc
        _, _, grad_b, grad_alpha = softmax_grad(grad, targets, ring["weight"], *exclude, column_of, feature)
        lr, clip = self.replay_lr, self.max_grad_norm
        grad_u = grad @ vectors
        adagrad_rows(self._E.array, self._E_acc.array, columns, grad.T @ U, lr, clip)
        bias, bias_acc = self._b.array.reshape(-1, 1), self._b_acc.array.reshape(-1, 1)
        adagrad_rows(bias, bias_acc, columns, grad_b.reshape(-1, 1), lr, clip)
        if cooc is not None:
            g = np.full((1, 1), grad_alpha, dtype=np.float32)
            adagrad_rows(self._alpha.reshape(1, 1), self._alpha_acc.reshape(1, 1), NO_COLUMNS, g, lr, clip)
        rows, slot = _slots(items, self._Q.rows)
        if rows.size:
            g = history_grad(slot, mix, grad_u, rows.size)
            adagrad_rows(self._Q.array, self._Q_acc.array, rows, g, lr, clip)
        self._changed()


class SignalBlend(EmbeddingRanker):
    """Score plus ``phi(viewer) W psi(video)``: ``psi`` = log popularity (decayed), log count,
    log example age; ``phi`` = (1, log(1 + watched) / 5); ``W`` learned by the softmax."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._W = np.zeros((2, 3), dtype=np.float32)
        self._W_acc = np.zeros_like(self._W)
        self._first_seen = np.full(1024, -1.0)  # events learned when each video row came

    def _dots(self, batch):  # noqa: ANN001, ANN202
        scores = super()._dots(batch)
        batch.blend = None
        if batch.n_videos:
            rows = np.minimum(batch.columns, batch.n_videos - 1)
            first = self._first_seen[rows]
            age = np.where(first >= 0, self.events_learned - first, 0.0)
            trend = self._trend.array[rows] / self._trend_scale
            psi = np.stack([np.log1p(trend), np.log1p(self._counts.array[rows]), np.log1p(age) / 5], axis=1)
            psi[batch.columns >= batch.n_videos] = 0.0
            watched = np.diff(batch.exclude[0]).astype(np.float32)
            phi = np.stack([np.ones_like(watched), np.log1p(watched) / 5], axis=1)
            batch.blend = (phi, psi.astype(np.float32))
            scores += (phi @ self._W) @ batch.blend[1].T
        return scores

    def _update(self, events, batch, grad, targets, *rest) -> None:  # noqa: ANN001
        if batch.blend is not None:
            phi, psi = batch.blend
            g = (phi.T @ (grad @ psi)).astype(np.float32)
            adagrad_rows(self._W, self._W_acc, NO_COLUMNS, g, self.lr, self.max_grad_norm)
        self._first_seen = _grown(self._first_seen, int(batch.video_rows.max()) + 1, -1.0)
        new = batch.video_rows[self._first_seen[batch.video_rows] < 0]
        super()._update(events, batch, grad, targets, *rest)
        self._first_seen[new] = self.events_learned


class BandBias(EmbeddingRanker):
    """The score plus ``c[i, band]``: a learned bias per video and band of history length."""

    def __init__(self, bands: tuple[int, ...] = (20, 100), **kw) -> None:
        self.bands = np.asarray(bands)
        super().__init__(**kw)
        self._c = np.zeros((1024, len(bands) + 1), dtype=np.float32)
        self._c_acc = np.zeros_like(self._c)

    def _dots(self, batch):  # noqa: ANN001, ANN202
        scores = super()._dots(batch)
        self._c = _grown(self._c, int(batch.columns.max(initial=0)) + 1, 0.0)
        self._c_acc = _grown(self._c_acc, self._c.shape[0], 0.0)
        batch.band = np.searchsorted(self.bands, np.diff(batch.exclude[0]), side="right")
        band_bias = self._c[batch.columns][:, batch.band].T
        band_bias[:, batch.columns >= batch.n_videos] = 0.0  # rows not created yet: rescored
        scores += band_bias
        return scores

    def _update(self, events, batch, grad, targets, *rest) -> None:  # noqa: ANN001
        g = np.zeros((batch.columns.size, self._c.shape[1]), dtype=np.float32)
        for band in np.unique(batch.band).tolist():
            g[:, band] = grad[batch.band == band].sum(axis=0)
        adagrad_rows(self._c, self._c_acc, batch.columns, g, self.lr, self.max_grad_norm)
        super()._update(events, batch, grad, targets, *rest)


class AveragedRanking(EmbeddingRanker):
    """Ranks with an exponential moving average (``beta`` per batch) of the video vectors,
    transitions and biases; learns with the raw ones (a test step and a train step apart)."""

    def __init__(self, beta: float = 0.8, **kw) -> None:
        self.beta = beta
        super().__init__(**kw)
        self._average: dict[str, np.ndarray] = {}

    def rank_and_learn(self, events, n=10):  # noqa: ANN001, ANN201
        tables = {"E": self._E, "Q": self._Q, "b": self._b}
        raw = {}
        for key, table in tables.items():
            average = self._average.get(key)
            if average is not None and average.shape == table.array.shape:
                raw[key] = table.array.copy()
                table.array[:] = average
        ranking = self.rank_events(events, n)
        for key, values in raw.items():
            tables[key].array[:] = values
        self.learn_many(events)
        for key, table in tables.items():
            current, average = table.array, self._average.get(key)
            if average is None or average.shape != current.shape:  # new rows start at their values
                grown = current.copy()
                if average is not None:
                    grown[: average.shape[0]] = average[: current.shape[0]]
                average = grown
            average *= self.beta
            average += (1.0 - self.beta) * current
            self._average[key] = average
        return ranking


class TimedCooc(EmbeddingRanker):
    """Co-occurrence pairs weighted ``base + (1 - base) * exp(-dt / tau)`` by their time apart."""

    def __init__(self, tau: float = 600.0, base: float = 0.3, **kw) -> None:
        self.tau, self.base = tau, base
        super().__init__(**kw)
        self._times = np.full((1024, self.history), np.nan)  # per viewer, most recent first

    def _update(self, events, batch, grad, targets, *rest) -> None:  # noqa: ANN001
        self._times = _grown(self._times, int(batch.viewer_rows.max()) + 1, np.nan)
        then = np.empty((len(events), self.history))
        for e, (viewer, t) in enumerate(zip(batch.viewer_rows.tolist(), batch.times.tolist(), strict=True)):
            ring = self._times[viewer]
            then[e] = ring
            ring[1:] = ring[:-1].copy()
            ring[0] = t
        counts, plain_add = self._cooc, self._cooc.add

        def timed_add(history: np.ndarray, videos: np.ndarray, window: int) -> None:
            counts.ensure(int(max(videos.max(initial=-1), history.max(initial=-1))) + 1)
            h = history[:, :window]
            apart = np.nan_to_num(np.abs(batch.times[:, None] - then[:, :window]), nan=np.inf)
            weight = self.base + (1.0 - self.base) * np.exp(-apart / self.tau)
            ok = (h >= 0) & (h != videos[:, None])
            i, j = np.broadcast_to(videos[:, None], h.shape)[ok], h[ok]
            np.add.at(counts._buffer, (j, i), weight[ok].astype(np.float32))
            np.add.at(counts._buffer, (i, j), weight[ok].astype(np.float32))
            np.add.at(counts._counts, videos, 1.0)

        counts.add = timed_add
        try:
            super()._update(events, batch, grad, targets, *rest)
        finally:
            counts.add = plain_add


class LongTermKNN(EmbeddingRanker):
    """The co-occurrence feature plus ``beta`` times the same feature over the last ``limit``
    watches of the viewer, equally weighted (the kernels read one feature: their sum)."""

    def __init__(self, beta: float = 0.25, limit: int = 200, **kw) -> None:
        self.beta, self.limit = beta, limit
        super().__init__(**kw)

    def _batch(self, events):  # noqa: ANN001, ANN202
        batch = super()._batch(events)
        ptr, videos = batch.exclude
        lengths = np.minimum(np.diff(ptr), self.limit)
        if batch.cooc is None or not lengths.any():
            return batch
        items = np.full((lengths.size, int(lengths.max())), -1, dtype=np.int64)
        mix = np.zeros(items.shape, dtype=np.float32)
        for e, k in enumerate(lengths.tolist()):
            if k:
                items[e, :k] = videos[ptr[e + 1] - k : ptr[e + 1]][::-1]
                mix[e, :k] = 1.0 / k
        long_term = self._cooc.features(items, mix, items.shape[1], self.cooc_exponent, batch.columns)
        batch.cooc = batch.cooc + self.beta * long_term
        return batch


class BiasFloor(EmbeddingRanker):
    """Adagrad whose bias accumulators never pass ``cap``: a floor under the biases' step size."""

    def __init__(self, cap: float = 10.0, **kw) -> None:
        self.cap = cap
        super().__init__(**kw)

    def _update(self, *args) -> None:  # noqa: ANN002
        np.minimum(self._b_acc.array, self.cap, out=self._b_acc.array)
        super()._update(*args)


class Stacked(Rehearsal, LongTermKNN, ProfileRanker):
    """:class:`~model.profile.ProfileRanker` with :class:`Rehearsal` and :class:`LongTermKNN`."""


def genre_features(item_file: Path) -> dict[str, np.ndarray]:
    """ML-100K's ``u.item``: per film id, its genres (summing to 1), release decade (one-hot)
    and whether it came out in 1997 or 1998 (the stream's own years)."""
    features = {}
    for line in item_file.read_text(encoding="latin-1").splitlines():
        fields = line.split("|")
        genres = np.array(fields[5:24], dtype=np.float32)
        year = int(fields[2][-4:]) if fields[2] else 1995
        decade = np.zeros(8, dtype=np.float32)
        decade[min(max((year - 1920) // 10, 0), 7)] = 1.0
        recent = np.array([year >= 1997, year == 1998], dtype=np.float32)
        features[fields[0]] = np.concatenate([genres / max(genres.sum(), 1.0), decade, recent])
    return features


class GenreVectors(EmbeddingRanker):
    """Video vectors ``e_i + G g_i`` with ``g_i`` the film's side information and ``G`` learned."""

    def __init__(self, features: dict[str, np.ndarray], **kw) -> None:
        self.features = features
        self.width = len(next(iter(features.values())))
        super().__init__(**kw)
        self._G = np.zeros((self.width, self.dim), dtype=np.float32)
        self._G_acc = np.zeros_like(self._G)
        self._g = np.zeros((1024, self.width), dtype=np.float32)  # per video row

    def _dots(self, batch):  # noqa: ANN001, ANN202
        batch.side = None
        if not batch.n_videos:
            return super()._dots(batch)
        rows = np.minimum(batch.columns, batch.n_videos - 1)
        batch.side = self._g[rows]
        batch.vectors = self._E.array[rows] + batch.side @ self._G  # the learning step's too
        return batch.U @ batch.vectors.T

    def _update(self, events, batch, grad, targets, *rest) -> None:  # noqa: ANN001
        if batch.side is not None:
            g = ((grad @ batch.side).T @ batch.U).astype(np.float32)
            adagrad_rows(self._G, self._G_acc, NO_COLUMNS, g, self.lr, self.max_grad_norm)
        self._g = _grown(self._g, int(batch.video_rows.max()) + 1, 0.0)
        for row, video in zip(batch.video_rows.tolist(), batch.video_ids, strict=True):
            self._g[row] = self.features.get(video, 0.0)
        super()._update(events, batch, grad, targets, *rest)


def variants(item_file: Path) -> dict[str, Callable[[], StreamRanker] | None]:
    """Name -> a fresh model (``None``: not available here)."""
    genres = genre_features(item_file) if item_file.exists() else None
    return {
        "default": lambda: create("streamrec"),
        "profile": lambda: create("streamrec_profile"),
        "set history": lambda: create("streamrec", recency=1.0),
        "lag": LagTransitions,
        "gru": GRUSequence,
        "rehearsal": Rehearsal,
        "rehearsal 1x": lambda: Rehearsal(replay=1.0, buffer=20_000, replay_lr=0.15),
        "blend": SignalBlend,
        "band bias": BandBias,
        "averaged": AveragedRanking,
        "timed cooc": TimedCooc,
        "long knn": LongTermKNN,
        "bias floor": BiasFloor,
        "dim 24": lambda: create("streamrec", dim=24),
        "stacked": Stacked,
        "genres": None if genres is None else (lambda: GenreVectors(genres)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=ml100k())
    parser.add_argument("--variants", default=None, help="comma-separated; default: all")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json", type=Path, default=REPO / "bench/results/issue14_directions.json")
    args = parser.parse_args(argv)
    available = variants(args.data.parent / "u.item")
    names = args.variants.split(",") if args.variants else list(available)
    if names[0] != "default":
        names.insert(0, "default")  # every speed is a ratio to it

    rows = []
    for stream, events in streams(args.data, {"synthetic demo": DEMO}).items():
        best: dict[str, dict] = {}
        for _ in range(args.repeats):
            for name in names:  # taking turns: the machine's load hits every variant alike
                make = available[name]
                if make is None or (name == "genres" and not stream.startswith("ml100k")):
                    continue
                result = evaluate_model(make(), events, batch_size=args.batch_size)
                if name not in best or result["events_per_s"] > best[name]["events_per_s"]:
                    best[name] = result
        base = best["default"]
        for name, r in best.items():
            tail = r.get("tail", {}) if stream == "ml100k whole" else {}
            row = {
                "stream": stream,
                "variant": name,
                "hr_at_10": r["hr_at_10"],
                "ndcg_at_10": r["ndcg_at_10"],
                "hr_at_10_last_20": tail.get("hr_at_10"),
                "events_per_s": r["events_per_s"],
                "speed_vs_default": r["events_per_s"] / base["events_per_s"],
            }
            rows.append(row)
            last = f"  last 20%: {row['hr_at_10_last_20']:.4f}" if tail else ""
            gain = row["hr_at_10"] - base["hr_at_10"]
            print(
                f"{stream:17} {name:13} HR@10 {row['hr_at_10']:.4f} ({gain:+.4f})"
                f"{last}  {row['events_per_s']:,.0f} events/s ({row['speed_vs_default']:.2f}x)",
                flush=True,
            )
    write_results(args.json, {"data": str(args.data), "batch_size": args.batch_size, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
