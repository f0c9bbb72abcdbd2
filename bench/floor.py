"""The numpy floor of the default model: what one batch costs when only its arithmetic runs.

Usage::

    .venv/bin/python bench/floor.py [DATA] [--batch-size 512] [--repeats 200]

Three figures from one run, each in microseconds per event (test and train together):

* the plain per-event numpy ISGD loop (the issue's speed reference), on ``DATA``;
* the default model through the evaluator at ``--batch-size``, on ``DATA``;
* the floor: the seven numpy operations no implementation of that model can skip, timed alone
  on arrays of the shapes the model had on ``DATA`` (batch, distinct history videos, ranked
  columns, catalogue, dimension; read from its batches), best of ``--repeats``: no id mapping,
  history bookkeeping, exclusions, new rows, guards or Python glue.

The floor bounds what any numpy version of this model can reach on this machine: a speed
target whose budget per event is below the floor cannot be met by tuning the Python around
it. The operations, one line each in the table: mixing the history (``mix @ Q``), the scores
(``U @ E.T + b``), the co-occurrence feature (one count row per event at the ranked columns,
the least it reads), rank and top-10 (``model.topk``), the softmax gradient
(``model.kernels.softmax_grad``), the two gradient products, and Adagrad on the ranked rows.
Prints a table and writes ``bench/results/floor.json``.
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
from model.baselines.isgd import ISGD, plain_test_then_train  # noqa: E402
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
    """Best time of each floor operation, in seconds per batch."""
    rng = np.random.default_rng(0)
    Q = rng.standard_normal((videos, dim), dtype=np.float32) * 0.1
    E = rng.standard_normal((videos, dim), dtype=np.float32) * 0.1
    E_acc = np.ones_like(E)
    b = np.zeros(videos, dtype=np.float32)
    counts = rng.random((videos, videos), dtype=np.float32)
    ranked = np.sort(rng.choice(videos, columns, replace=False))
    in_history = rng.choice(videos, min(history, videos), replace=False)
    mix = np.zeros((batch, in_history.size), dtype=np.float32)
    mix[np.arange(batch)[:, None], rng.integers(0, in_history.size, (batch, terms))] = 1.0 / terms
    own = rng.integers(0, videos, batch)
    targets = rng.integers(0, columns, batch)
    weights = np.ones(batch, dtype=np.float32)
    best: dict[str, float] = {}

    def timed(name: str, start: float) -> float:
        now = time.perf_counter()
        best[name] = min(best.get(name, np.inf), now - start)
        return now

    for _ in range(repeats):
        t = time.perf_counter()
        U = mix @ Q[in_history]
        t = timed("mix the history (mix @ Q)", t)
        E_cols = E[ranked]
        scores = U @ E_cols.T
        scores += b[ranked]
        t = timed("scores (U @ E.T + b)", t)
        scores += np.take(counts[own], ranked, axis=1)
        t = timed("co-occurrence (a count row per event)", t)
        top_n_with_rank(scores.copy(), 10, targets)
        t = timed("rank and top-10 (model.topk)", t)
        grad, _, _ = softmax_grad(scores, targets, weights)
        t = timed("softmax gradient", t)
        grad_U, grad_E = grad @ E_cols, grad.T @ U
        t = timed("gradient products", t)
        adagrad_step(E, E_acc, ranked, grad_E, 0.1, 10.0)
        timed("Adagrad on the ranked rows", t)
        del grad_U
    return best


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
    best = _floor(
        args.batch_size,
        shapes["history_videos"],
        shapes["columns"],
        shapes["videos"],
        model.dim,
        min(model.cooc_terms, model.history),
        args.repeats,
    )
    per_event = {name: 1e6 * seconds / args.batch_size for name, seconds in best.items()}
    floor_us = sum(per_event.values())
    budget_us = isgd_us / 10

    print(
        f"batch {args.batch_size}: {shapes['history_videos']} distinct history videos, "
        f"{shapes['columns']} ranked columns, {shapes['videos']} videos, dim {model.dim}"
    )
    print(f"{'operation':<42} {'us/event':>9}")
    for name, us in per_event.items():
        print(f"{name:<42} {us:9.2f}")
    rows = [
        ("the floor (the operations above)", floor_us),
        (f"the default model (HR@10 {shapes['hr_at_10']:.4f})", model_us),
        ("plain per-event ISGD (reference)", isgd_us),
        ("budget of 10x ISGD", budget_us),
    ]
    print(f"\n{'':<42} {'us/event':>9} {'x budget':>9} {'xISGD speed':>12}")
    for label, us in rows:
        print(f"{label:<42} {us:9.2f} {us / budget_us:9.2f} {isgd_us / us:12.2f}")
    write_results(
        args.json,
        {
            "data": str(args.data),
            "batch_size": args.batch_size,
            "shapes": shapes,
            "floor_us_per_event": per_event,
            "floor_total_us": floor_us,
            "model_us": model_us,
            "isgd_us": isgd_us,
            "budget_10x_isgd_us": budget_us,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
