"""Where one worker's time goes without Kafka: the service's batch path, profiled.

Usage::

    .venv/bin/python bench/profile_answer.py                    # e2e.py's stream: 60k events, 10k videos
    .venv/bin/python bench/profile_answer.py --ml100k ../shared/data/ml-100k/u.data
    .venv/bin/python bench/profile_answer.py --profile 30        # + cProfile, the 30 costliest functions
    .venv/bin/python bench/profile_answer.py --repo /tmp/old-checkout   # another checkout's code
    .venv/bin/python bench/profile_answer.py --steps --skip 30000       # each step, steady state
    .venv/bin/python bench/profile_answer.py --profile 20 --callers get_many   # + who calls it

Drives :meth:`consumer.app.StreamrecService.answer` batch by batch and its metrics
(``_record``) a poll's worth of batches at a time (``max_poll_records``), as
:meth:`~consumer.app.StreamrecService.process` does for a backlog's polls (a viewer's list after
the poll's last batch, where the checkout does so; ``--every-batch-lists``: after each
batch), on the service's
defaults (the served model, the shadow baseline, both live evaluators, metrics in a registry of
its own; no checkpoints, no Kafka): the records are made as the consumer hands them over
(:func:`bench.arms.records`). Prints the service's own per-stage seconds
(``stage_seconds``: decode, test_learn, recommend, metrics) in microseconds per event, with the
process's CPU per event, and with ``--profile`` the functions that take the time (cProfile, by
own time; cProfile's own overhead inflates the many small calls). ``--repo`` runs another
checkout's service on the same stream, so two versions compare in one run. ``--no-freeze``
leaves out the ``gc.freeze()`` the service does after start-up, where that code has it.
``--steps`` times the named steps of the batch path (:data:`STEPS`: the service's, the served
model's, the shadow's, the evaluators') with a clock around each call, a few hundred calls a
batch, so without cProfile's cost on every small call; steps nest (the served model's learning
step holds its products), so their times do not add up.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

#: What ``--steps`` times: (module, class or ``None``, function); missing ones are skipped, so an
#: older checkout (``--repo``) reports what it has.
STEPS = (
    ("consumer.app", "StreamrecService", "_test_and_learn"),
    ("consumer.app", "StreamrecService", "_online"),
    ("consumer.app", "StreamrecService", "_recommend"),
    ("consumer.app", "StreamrecService", "_record"),
    ("consumer.app", None, "decode"),
    ("consumer.app", None, "recommendation_values"),
    ("model.embedding", "EmbeddingRanker", "_batch"),
    ("model.embedding", "EmbeddingRanker", "_dots"),
    ("model.embedding", None, "rank_softmax"),
    ("model.embedding", "EmbeddingRanker", "_update"),
    ("model.embedding", None, "adagrad_rows"),
    ("model.embedding", "EmbeddingRanker", "_shortlist"),
    ("model.embedding", "EmbeddingRanker", "recommend_many"),
    ("model.embedding", "EmbeddingRanker", "_top_n"),
    ("model.baselines.popular", "MostPopular", "rank_and_learn"),
    ("model.evaluate", "StreamingEvaluator", "observe"),
    ("model.evaluate", "StreamingEvaluator", "warm_mask"),
    ("model.seen", "SeenVideos", "exclusions_of"),
    ("model.seen", "SeenVideos", "add_many"),
    ("model.ids", "IdIndex", "get_many"),
)


def time_steps(steps: tuple = STEPS) -> dict[str, float]:
    """Wrap each of ``steps`` with a clock; returns the seconds spent in each, by name, growing
    as they are called (clear it to start over)."""
    import functools
    import importlib

    spent: dict[str, float] = {}
    for module_name, owner_name, name in steps:
        module = importlib.import_module(module_name)
        owner = module if owner_name is None else getattr(module, owner_name, None)
        step = getattr(owner, name, None)
        if step is None:
            continue
        label = f"{owner_name}.{name}" if owner_name else name
        spent[label] = 0.0

        def timed(*args, _step=step, _label=label, **kwargs):  # noqa: ANN002, ANN003, ANN202
            started = time.perf_counter()
            try:
                return _step(*args, **kwargs)
            finally:
                spent[_label] += time.perf_counter() - started

        setattr(owner, name, functools.wraps(step)(timed))
    return spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--viewers", type=int, default=5000)
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--ml100k", type=Path, help="replay this MovieLens u.data (never commit it)")
    parser.add_argument("--batch", type=int, default=256, help="events per answer (the service's batch)")
    parser.add_argument("--model", default="streamrec")
    parser.add_argument("--no-shadow", action="store_true", help="without the shadow baseline")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile; print the N costliest")
    parser.add_argument(
        "--callers", metavar="NAME", help="with --profile: who calls the functions whose name matches NAME"
    )
    parser.add_argument("--skip", type=int, default=2000, help="events answered before the timing starts")
    parser.add_argument("--repo", type=Path, default=HERE, help="the checkout whose service runs")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    parser.add_argument("--no-freeze", action="store_true", help="no gc.freeze() after start-up")
    parser.add_argument("--steps", action="store_true", help="time each step of STEPS (us/event)")
    parser.add_argument(
        "--every-batch-lists",
        action="store_true",
        help="lists after every batch, not once a poll",
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.repo.resolve()))

    import contract  # noqa: F401  (first: it makes BLAS single-threaded before numpy loads)

    # isort: split

    from prometheus_client import CollectorRegistry

    from bench.arms import records
    from consumer.config import ServiceConfig
    from consumer.metrics import ServiceMetrics
    from consumer.runner import build_service
    from producer.readers import read_events
    from producer.synth import synth_events

    if args.ml100k:
        events = read_events(args.ml100k)[: args.events]
    else:
        events = list(synth_events(args.viewers, args.videos, args.events, seed=0))
    stream = records(events)
    batches = [stream[i : i + args.batch] for i in range(0, len(stream), args.batch)]
    config = ServiceConfig(
        model=args.model, checkpoint_dir="none", metrics_port=0, shadow_baseline=not args.no_shadow
    )
    coalescing = getattr(config, "lists_once_a_poll", False) and not args.every_batch_lists
    if coalescing:
        from consumer.coalesce import ListCoalescer
    service = build_service(config, with_metrics=False)
    service.metrics = ServiceMetrics(
        models=service.model_names, registry=CollectorRegistry(), arms=service.arm_labels
    )
    import consumer.app

    freeze = getattr(consumer.app, "freeze_start_up", None)
    if freeze is not None and not args.no_freeze:
        freeze()  # as StreamrecService.run does once started
    collecting = {"seconds": 0.0, "since": 0.0, "full": 0, "on": False}
    # The batches of one backlog's poll (max_poll_records) are recorded together.
    measured, poll = getattr(consumer.app, "Measured", None), []
    per_poll = max(1, config.max_poll_records // args.batch)

    def gc_timer(phase: str, info: dict) -> None:
        if not collecting["on"]:
            return
        if phase == "start":
            collecting["since"] = time.perf_counter()
        else:
            collecting["seconds"] += time.perf_counter() - collecting["since"]
            collecting["full"] += info["generation"] == 2

    gc.callbacks.append(gc_timer)

    profiler = cProfile.Profile() if args.profile else None
    spent = time_steps() if args.steps else None
    skip = max(0, args.skip // args.batch)
    before = wall0 = cpu0 = None
    events_timed = 0
    for i, batch in enumerate(batches):
        if i == skip:
            before = dict(service.stage_seconds)
            wall0, cpu0 = time.perf_counter(), time.process_time()
            collecting["on"] = True
            if profiler is not None:
                profiler.enable()
            if spent is not None:
                spent.update(dict.fromkeys(spent, 0.0))
        if coalescing and i % per_poll == 0:  # the poll's viewers get a list each, as process() does
            in_poll = len(batches[i : i + per_poll])
            coalescer = ListCoalescer(batches=in_poll) if in_poll > 1 else None
        started = time.perf_counter()
        answer = service.answer(batch, coalescer) if coalescing else service.answer(batch)
        seconds = time.perf_counter() - started
        if measured is None:  # an older checkout records each batch
            service._record(len(batch), answer.intake, answer.tested, answer.recommended, seconds)
        else:  # the metrics of a poll's batches at once, as process() records them
            poll.append(measured(len(batch), answer.intake, answer.tested, answer.recommended, seconds))
            if len(poll) == per_poll or i == len(batches) - 1:
                service._record(poll)
                poll = []
        if i >= skip:
            events_timed += len(batch)
    collecting["on"] = False
    if profiler is not None:
        profiler.disable()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    stages = {k: 1e6 * (v - before[k]) / events_timed for k, v in service.stage_seconds.items()}
    stages = {k: v for k, v in stages.items() if v > 0}
    hr = {arm.name: arm.evaluator.report.hr for arm in service.arms}
    if service.shadow_evaluator is not None:
        hr[service.shadow.name] = service.shadow_evaluator.report.hr
    result = {
        "repo": str(args.repo),
        "events": events_timed,
        "wall_us_per_event": 1e6 * wall / events_timed,
        "cpu_us_per_event": 1e6 * cpu / events_timed,
        "stages_us_per_event": stages,
        "gc_us_per_event": 1e6 * collecting["seconds"] / events_timed,
        "full_collections": collecting["full"],
        "hr_at_10": hr,
    }
    if spent is not None:
        result["steps_us_per_event"] = {k: 1e6 * v / events_timed for k, v in spent.items()}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.repo}: {events_timed:,} events, batches of {args.batch}")
        wall, cpu = result["wall_us_per_event"], result["cpu_us_per_event"]
        print(f"  wall {wall:.1f} us/event, CPU {cpu:.1f} us/event")
        for stage, us in stages.items():
            print(f"  {stage:<12}{us:>8.2f} us/event")
        print(
            f"  (of which garbage collection {result['gc_us_per_event']:.2f} us/event, "
            f"{collecting['full']} full collections)"
        )
        print(f"  live HR@10 {', '.join(f'{k} {v:.4f}' for k, v in hr.items())}")
        if spent is not None:
            print("  steps (nested; with the clocks' own cost):")
            for step, us in sorted(result["steps_us_per_event"].items(), key=lambda kv: -kv[1]):
                print(f"    {step:<40}{us:>8.2f} us/event")
    if profiler is not None:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).sort_stats(os.environ.get("PROFILE_SORT", "tottime"))
        if args.callers:
            stats.print_callers(args.callers)
        stats.print_stats(args.profile)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
