"""``streamrec evaluate``: test-then-train evaluation of one or more models on a file of events.

Reads MovieLens (``u.data``, ``ratings.dat``, ``ratings.csv``) or JSON-lines watch events with
:func:`producer.readers.read_events` (each rating is one watch of unknown watch time, i.e. a
plain positive of weight 1), runs :func:`model.evaluate.progressive_evaluate` for each model
and prints a table; ``--json OUT`` writes the reports (one object, or a list for several
models). Besides the whole-stream figures, every report carries ``tail``: the same metrics over
the last ``--tail`` fraction of the stream (default 0.2), where models are judged after
warming up and where settings tuned on the first 80% are tested.

Example::

    streamrec evaluate ../shared/data/ml-100k/u.data --model all --json results.json
    streamrec evaluate ../shared/data/ml-100k/u.data --set dim=16,shortlist=null
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from contract.arguments import positive_int
from contract.errors import UserError
from contract.events import WatchEvent
from model.base import StreamRanker
from model.evaluate import EvalReport, progressive_evaluate

__all__ = ["register", "run", "evaluate_model", "format_table"]

N = 10


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    from model.registry import DEFAULT_BATCH_SIZE, DEFAULT_MODEL, names
    from producer.readers import FORMATS

    p = subparsers.add_parser(
        "evaluate",
        help="test-then-train evaluation of models on a file of events",
        description=(
            "Replay a file of watch events in time order; for each event, ask each model for its "
            f"top {N} (watched videos excluded) before it learns the event, and report HR@{N}, "
            f"NDCG@{N}, MRR, coverage and throughput. Events whose viewer or video is new are "
            "learned but not evaluated."
        ),
    )
    p.add_argument("path", help="u.data, ratings.dat, ratings.csv, a .jsonl file, or a folder holding one")
    p.add_argument("--format", choices=FORMATS, default="auto", help="file format (default: by name)")
    p.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help=f"model(s) to evaluate, repeatable or comma-separated: {', '.join(names())}, or all "
        f"(default: {DEFAULT_MODEL})",
    )
    p.add_argument("--limit", type=positive_int, metavar="N", help="only the first N events (in time order)")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="B",
        default=DEFAULT_BATCH_SIZE,
        help=f"events scored with the state before the batch, then learned (default: {DEFAULT_BATCH_SIZE})",
    )
    p.add_argument(
        "--tail",
        type=_fraction,
        default=0.2,
        metavar="F",
        help="also report the last F of the stream (default: 0.2; 0 turns it off)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model setting (repeatable, or comma-separated; values read as JSON, e.g. dim=16, "
        "shortlist=null); it applies to each evaluated model that has it",
    )
    p.add_argument("--json", metavar="OUT", help="write the report(s) as JSON to OUT")
    p.add_argument("--skip-bad-rows", action="store_true", help="count and skip malformed rows")
    p.set_defaults(func=run)


# -- evaluation --------------------------------------------------------------------------------


def evaluate_model(
    model: StreamRanker,
    events: Sequence[WatchEvent],
    *,
    batch_size: int,
    tail: float = 0.2,
    progress: Callable[[EvalReport], None] | None = None,
) -> dict:
    """Evaluate ``model`` on ``events`` and return the ``--json`` report, with ``tail`` figures.

    The tail starts at the first batch boundary at or after ``(1 - tail) * len(events)``; its
    first event (0-based) is reported as ``tail.from_event``. ``progress`` is called with the
    running report after every batch.
    """
    total = len(events)
    # Yielding after every batch costs nothing (the same report object comes back), gives the
    # progress bar its ticks, and lets the tail start exactly on a batch boundary.
    cut = min(total, math.ceil((1.0 - tail) * total / batch_size) * batch_size) if tail > 0 else None
    snapshot: tuple[int, int, int, float, float] | None = None
    report = None
    for report in progressive_evaluate(model, events, n=N, batch_size=batch_size, step=batch_size):
        if cut is not None and snapshot is None and report.events >= cut:
            snapshot = (report.events, report.evaluated, report.hits, report.ndcg_sum, report.rr_sum)
        if progress is not None:
            progress(report)
    assert report is not None
    out = report.to_json()
    memory = getattr(model, "memory_bytes", None)
    if callable(memory):
        # Models that can say how big they are (bytes per viewer, per video, in total).
        out["memory_bytes"] = memory()
    if cut is not None and snapshot is not None and snapshot[0] < report.events:
        # (A stream shorter than one batch has no tail to speak of: none is reported.)
        start, evaluated, hits, ndcg_sum, rr_sum = snapshot
        tail_evaluated = report.evaluated - evaluated
        out["tail"] = {
            "fraction": tail,
            "from_event": start,
            "events": report.events - start,
            "evaluated": tail_evaluated,
            f"hr_at_{N}": (report.hits - hits) / tail_evaluated if tail_evaluated else 0.0,
            f"ndcg_at_{N}": (report.ndcg_sum - ndcg_sum) / tail_evaluated if tail_evaluated else 0.0,
            "mrr": (report.rr_sum - rr_sum) / tail_evaluated if tail_evaluated else 0.0,
        }
    return out


class _ProgressBar:
    """A one-line progress bar on stderr, redrawn at most ten times a second."""

    def __init__(self, label: str, total: int, stream=sys.stderr) -> None:
        self.label, self.total, self.stream = label, max(1, total), stream
        self._last = 0.0

    def __call__(self, report: EvalReport) -> None:
        now = time.monotonic()
        done = report.events >= self.total
        if not done and now - self._last < 0.1:
            return
        self._last = now
        share = min(1.0, report.events / self.total)
        bar = "#" * int(share * 30)
        self.stream.write(
            f"\r{self.label:<15} [{bar:<30}] {share:4.0%} {report.events:,}/{self.total:,} events "
            f"{report.events_per_s:,.0f} ev/s  HR@{N} {report.hr:.4f}"
        )
        if done:
            self.stream.write("\n")
        self.stream.flush()


def format_table(results: Sequence[dict], extra: Sequence[tuple[str, str, str]] = ()) -> str:
    """The reports as an aligned text table; ``extra`` adds ``(header, key, format)`` columns."""
    columns = [
        ("model", "model", "{}"),
        (f"HR@{N}", f"hr_at_{N}", "{:.4f}"),
        (f"NDCG@{N}", f"ndcg_at_{N}", "{:.4f}"),
        ("MRR", "mrr", "{:.4f}"),
        (f"tail HR@{N}", "tail_hr", "{:.4f}"),
        ("coverage", "coverage", "{:.3f}"),
        ("evaluated", "evaluated", "{:,}"),
        ("events/s", "events_per_s", "{:,.0f}"),
        *extra,
        ("batch", "batch_size", "{}"),
    ]
    rows = []
    for r in results:
        values = r | {"tail_hr": r.get("tail", {}).get(f"hr_at_{N}")}
        rows.append(
            [fmt.format(values[key]) if values.get(key) is not None else "-" for _, key, fmt in columns]
        )
    headers = [h for h, _, _ in columns]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        # The model name left-aligned, numbers right-aligned.
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [line(headers), *(line(row) for row in rows)]
    return "\n".join(lines)


def _settings_per_model(model_names: Sequence[str], items: Sequence[str]) -> dict[str, dict]:
    """``--set`` values split by model: each model gets the settings it has; a setting no
    evaluated model has is an error (a typo must not go unnoticed)."""
    from model.registry import BadSetting, parse_settings, settings_of

    given = parse_settings(items)
    if len(model_names) == 1:  # create() names the model's settings if one is unknown
        return {model_names[0]: given}
    known = {name: settings_of(name) for name in model_names}
    for key in given:
        if not any(key in k for k in known.values()):
            raise BadSetting(f"no evaluated model has a setting {key!r} ({', '.join(model_names)})")
    return {name: {k: v for k, v in given.items() if k in known[name]} for name in model_names}


def run(args: argparse.Namespace) -> int:
    from model.registry import BadSetting, UnknownModel, create, resolve
    from producer.readers import DataFormatError, ReadStats, read_events

    try:
        model_names = resolve(args.model)
        settings = _settings_per_model(model_names, args.set)
        # Every model made before any is evaluated: a value one of them refuses is an error
        # now, not after the others have run for hours.
        models = [create(name, **settings[name]) for name in model_names]
    except (UnknownModel, BadSetting) as err:
        raise UserError(str(err)) from None
    stats = ReadStats()
    try:
        events = read_events(args.path, args.format, skip_bad_rows=args.skip_bad_rows, stats=stats)
    except DataFormatError as err:
        hint = " (--skip-bad-rows counts and skips malformed rows)" if stats.bad_rows else ""
        raise UserError(f"{err}{hint}") from None
    except OSError as err:
        raise UserError(f"{args.path}: {err.strerror or err}") from None
    if args.limit is not None:
        events = events[: args.limit]
    if not events:
        raise UserError(f"{args.path}: no events to evaluate")
    if stats.bad_rows:
        print(f"skipped {stats.bad_rows:,} malformed row(s) of {stats.rows:,}", file=sys.stderr)

    results = []
    for name, model in zip(model_names, models, strict=True):
        progress = _ProgressBar(name, len(events)) if sys.stderr.isatty() else None
        try:
            result = evaluate_model(
                model, events, batch_size=args.batch_size, tail=args.tail, progress=progress
            )
        except MemoryError as err:
            if progress is not None:
                sys.stderr.write("\n")
            raise UserError(f"model {name!r} ran out of memory: {err or 'no detail'}") from None
        result["source"] = str(args.path)
        result["bad_rows_skipped"] = stats.bad_rows
        result["settings"] = settings[name]
        results.append(result)

    print(format_table(results))
    for name in model_names:
        if settings[name]:
            listed = ", ".join(f"{k}={json.dumps(v)}" for k, v in settings[name].items())
            print(f"settings of {name}: {listed}")
    print(
        f"protocol: {results[0]['protocol']}"
        + (f"; tail = last {args.tail:.0%} of events" if args.tail > 0 else "")
    )
    if args.json:
        payload = results[0] if len(results) == 1 else results
        try:
            Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        except OSError as err:
            raise UserError(f"cannot write {args.json}: {err.strerror or err}") from None
    return 0
