"""The floor of the default model: what one batch costs when only its arithmetic runs.

Usage::

    .venv/bin/python bench/floor.py [DATA] [--batch-size 512] [--repeats 200]

Figures from one run, each in microseconds per event (test and train together):

* the plain per-event numpy ISGD loop (the issue's speed reference), on ``DATA``;
* the default model through the evaluator at ``--batch-size``, on ``DATA``;
* two floors: the seven operations no implementation of that model can skip, timed alone on
  arrays of the shapes the model had on ``DATA`` (batch, distinct history videos, ranked
  columns, catalogue, dimension; read from its batches), best of ``--repeats``: no id mapping,
  history bookkeeping, exclusions, new rows, guards or Python glue. Once in plain numpy
  (:mod:`model.kernels`: the *numpy floor*) and once with the model's compiled kernels
  (:mod:`model.compiled`: the *compiled floor*); the matrix products are numpy's (BLAS) in both.

The operations, one line each in the table: mixing the history, the scores (``U @ E.T``, plus
``b`` in numpy; the compiled ranking adds it), the co-occurrence feature (one count row per
event at the ranked columns, the least it reads), rank and top-10 (``model.topk``; compiled:
:func:`~model.compiled.rank_top_n`, which also adds bias and feature and masks), the softmax
gradient, the two gradient products, and Adagrad on the ranked rows. A speed target whose budget
per event is below a floor cannot be met by tuning the Python around it. Prints a table and
writes ``bench/results/floor.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import contract  # noqa: E402, F401  (first: it makes BLAS single-threaded before numpy loads)

# isort: split

import numpy as np  # noqa: E402

from bench.data import ml100k  # noqa: E402
from bench.results import write_results  # noqa: E402
from model import compiled  # noqa: E402
from model.baselines.isgd import ISGD, plain_test_then_train  # noqa: E402
from model.cooc import CoCounts  # noqa: E402
from model.embedding import EmbeddingRanker  # noqa: E402
from model.kernels import adagrad_step, softmax_grad  # noqa: E402
from model.topk import top_n_with_rank  # noqa: E402
from producer.readers import read_events  # noqa: E402
from streamrec.commands.evaluate import evaluate_model  # noqa: E402


def _shapes(model: EmbeddingRanker, events, batch_size: int) -> dict[str, int]:
    """Median shapes of the model's batches over the second half of ``events``."""
    seen: list[tuple[int, int]] = []
    prepare = model._batch

    def recording(batch_events):
        batch = prepare(batch_events)
        columns = batch.n_videos if batch.columns is None else batch.columns.size
        seen.append((batch.in_history.size, columns))
        return batch

    model._batch = recording
    result = evaluate_model(model, events, batch_size=batch_size, tail=0.0)
    del model._batch
    history, columns = np.median(np.array(seen[len(seen) // 2 :]), axis=0).astype(int)
    shapes = {"history_videos": int(history), "columns": int(columns), "videos": model.n_videos}
    return shapes | {"events_per_s": result["events_per_s"], "hr_at_10": result["hr_at_10"]}


def _floor(batch: int, history: int, columns: int, videos: int, dim: int, terms: int, repeats: int):
    """Best time of each floor operation, in seconds per batch: ``(numpy, compiled)`` dicts."""
    rng = np.random.default_rng(0)
    Q = rng.standard_normal((videos, dim), dtype=np.float32) * 0.1
    E = rng.standard_normal((videos, dim), dtype=np.float32) * 0.1
    E_acc = np.ones_like(E)
    b = np.zeros(videos, dtype=np.float32)
    counts = rng.random((videos, videos), dtype=np.float32)
    cooc = CoCounts(capacity=videos)
    cooc.ensure(videos)
    cooc.array[:] = counts
    ranked = np.sort(rng.choice(videos, columns, replace=False))
    in_history = rng.choice(videos, min(history, videos), replace=False)
    items = in_history[rng.integers(0, in_history.size, (batch, terms))]
    hist_w = np.ones((batch, terms), dtype=np.float32)
    decay = (0.8 ** np.arange(terms)).astype(np.float32)
    mix = np.zeros((batch, in_history.size), dtype=np.float32)
    mix[np.arange(batch)[:, None], rng.integers(0, in_history.size, (batch, terms))] = 1.0 / terms
    own = rng.integers(0, videos, batch)
    targets = rng.integers(0, columns, batch)
    weights = np.ones(batch, dtype=np.float32)
    no_exclusions = np.zeros(batch + 1, dtype=np.int64), compiled.NO_COLUMNS
    best_numpy: dict[str, float] = {}
    best_compiled: dict[str, float] = {}

    def timed(best: dict[str, float], name: str, start: float) -> float:
        now = time.perf_counter()
        best[name] = min(best.get(name, np.inf), now - start)
        return now

    for _ in range(repeats):
        # numpy
        t = time.perf_counter()
        U = mix @ Q[in_history]
        t = timed(best_numpy, MIX, t)
        E_cols = E[ranked]
        scores = U @ E_cols.T
        scores += b[ranked]
        t = timed(best_numpy, SCORES, t)
        feature = np.take(counts[own], ranked, axis=1)
        scores += feature
        t = timed(best_numpy, COOC, t)
        top_n_with_rank(scores.copy(), 10, targets)
        t = timed(best_numpy, RANK, t)
        grad, _, _ = softmax_grad(scores, targets, weights)
        grad.sum(axis=0)
        t = timed(best_numpy, SOFTMAX, t)
        grad_U, grad_E = grad @ E_cols, grad.T @ U
        t = timed(best_numpy, PRODUCTS, t)
        adagrad_step(E, E_acc, ranked, grad_E, 0.1, 10.0)
        timed(best_numpy, ADAGRAD, t)
        del grad_U
        # compiled: the same arithmetic through model.compiled (matrix products: numpy's BLAS)
        t = time.perf_counter()
        _, U, _, _ = compiled.mix_histories(items, hist_w, decay, Q, videos, videos)
        t = timed(best_compiled, MIX, t)
        E_cols = E[ranked]
        scores = U @ E_cols.T
        t = timed(best_compiled, SCORES, t)
        feature = cooc.features(own[:, None], hist_w[:, :1], 1, 0.45, ranked)
        t = timed(best_compiled, COOC, t)
        compiled.rank_top_n(
            scores,
            columns,
            10,
            targets,
            *no_exclusions,
            compiled.NO_COLUMNS,
            b[ranked],
            np.float32(1.0),
            feature,
            True,
        )
        t = timed(best_compiled, RANK, t)
        compiled.softmax_grad(scores, targets, weights, *no_exclusions, compiled.NO_COLUMNS, feature)
        t = timed(best_compiled, SOFTMAX, t)
        _, grad_E = scores @ E_cols, scores.T @ U
        t = timed(best_compiled, PRODUCTS, t)
        compiled.adagrad_rows(E, E_acc, ranked, grad_E, 0.1, 10.0)
        timed(best_compiled, ADAGRAD, t)
    return best_numpy, best_compiled


MIX, SCORES, COOC = "mix the history", "scores (U @ E.T)", "co-occurrence (a count row per event)"
RANK, SOFTMAX = "rank and top-10", "softmax gradient"
PRODUCTS, ADAGRAD = "gradient products", "Adagrad on the ranked rows"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=ml100k())
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", type=Path, default=REPO / "bench/results/floor.json")
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"{args.data}: no such file (set STREAMREC_ML100K)", file=sys.stderr)
        return 2
    events = read_events(args.data)
    reference = plain_test_then_train(ISGD(k=10, lr=0.05, reg=0.01, seed=0), events)
    isgd_us = 1e6 * reference["elapsed_s"] / reference["events"]
    model = EmbeddingRanker()
    shapes = _shapes(model, events, args.batch_size)
    model_us = 1e6 / shapes["events_per_s"]
    best_numpy, best_compiled = _floor(
        args.batch_size,
        shapes["history_videos"],
        shapes["columns"],
        shapes["videos"],
        model.dim,
        min(model.cooc_terms, model.history),
        args.repeats,
    )
    numpy_us = {name: 1e6 * seconds / args.batch_size for name, seconds in best_numpy.items()}
    compiled_us = {name: 1e6 * seconds / args.batch_size for name, seconds in best_compiled.items()}
    numpy_floor, compiled_floor = sum(numpy_us.values()), sum(compiled_us.values())
    budget_us = isgd_us / 10

    print(
        f"batch {args.batch_size}: {shapes['history_videos']} distinct history videos, "
        f"{shapes['columns']} ranked columns, {shapes['videos']} videos, dim {model.dim}"
    )
    print(f"{'operation (us/event)':<42} {'numpy':>9} {'compiled':>9}")
    for name, us in numpy_us.items():
        print(f"{name:<42} {us:9.2f} {compiled_us[name]:9.2f}")
    rows = [
        ("the floor in numpy (the operations above)", numpy_floor),
        ("the floor compiled (the operations above)", compiled_floor),
        (f"the default model (HR@10 {shapes['hr_at_10']:.4f})", model_us),
        ("plain per-event ISGD (reference)", isgd_us),
        ("budget of 10x ISGD", budget_us),
    ]
    print(f"\n{'':<42} {'us/event':>9} {'x budget':>9} {'xISGD speed':>12}")
    for label, us in rows:
        print(f"{label:<42} {us:9.2f} {us / budget_us:9.2f} {isgd_us / us:12.2f}")
    print(
        f"the model runs at {model_us / compiled_floor:.1f}x its compiled floor "
        f"and {model_us / numpy_floor:.1f}x the numpy floor"
    )
    write_results(
        args.json,
        {
            "data": str(args.data),
            "batch_size": args.batch_size,
            "shapes": shapes,
            "floor_us_per_event": numpy_us,
            "floor_total_us": numpy_floor,
            "compiled_floor_us_per_event": compiled_us,
            "compiled_floor_total_us": compiled_floor,
            "model_us": model_us,
            "isgd_us": isgd_us,
            "budget_10x_isgd_us": budget_us,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
