"""Wiring: a :class:`~consumer.app.StreamrecService` from a config, with metrics and signals.

This is what ``streamrec serve`` and ``python -m consumer`` run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from consumer.app import StreamrecService
from consumer.config import ConfigError, ServiceConfig, worker_count
from consumer.logs import configure, fields
from consumer.topics import keep_legacy_names
from contract.errors import UserError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["build_service", "held_by", "serve", "supervise", "worker_config", "SHADOW_BASELINE"]

log = logging.getLogger("consumer")

#: The baseline scored beside the served model when ``shadow_baseline`` is on (its registry name).
SHADOW_BASELINE = "recent_popular"


def build_service(
    config: ServiceConfig, with_metrics: bool = True, registry: CollectorRegistry | None = None
) -> StreamrecService:
    """The service for ``config``: model and shadow baseline from the registry, metrics if asked
    (in ``registry``, by default prometheus-client's global one: one service per process)."""
    metrics_registry = registry
    from model import registry

    if config.model not in registry.names():
        raise ConfigError(f"unknown model {config.model!r}; choose one of {', '.join(registry.names())}")
    control, *others = config.arm_specs
    # A shadow is named for what it is; beside itself it would measure nothing (and share its labels).
    shadow = config.shadow_baseline and control.model != SHADOW_BASELINE
    make_control = lambda: registry.create(control.model, **control.settings)  # noqa: E731
    if config.sync_every:  # one model over the group: video vectors that start from the video id
        if control.model != registry.DEFAULT_MODEL:
            raise ConfigError(f"sync_every needs the {registry.DEFAULT_MODEL} model, not {control.model!r}")
        from model.replica import ReplicatedRanker

        make_control = lambda: ReplicatedRanker(**control.settings)  # noqa: E731
        if others:
            log.warning(
                "only the control arm is one model over the group; the other arms learn from this "
                "worker's partitions alone, so the experiment compares unlike models",
                extra=fields(control=control.name, others=[spec.name for spec in others]),
            )
    try:
        service = StreamrecService(
            config,
            model_factory=make_control,
            shadow_factory=(lambda: registry.create(SHADOW_BASELINE)) if shadow else None,
            arm_factories={
                spec.name: (lambda spec=spec: registry.create(spec.model, **spec.settings)) for spec in others
            },
        )
    except registry.BadSetting as err:
        flag = "arm_settings" if config.arms else "model_settings"
        raise ConfigError(f"{flag}: {err}") from None
    if with_metrics:
        from consumer.metrics import ServiceMetrics

        service.metrics = ServiceMetrics(
            models=service.model_names, registry=metrics_registry, arms=service.arm_labels
        )
    return service


@contextlib.contextmanager
def held_by(config: ServiceConfig) -> Iterator[StreamrecService]:
    """The state worker ``config`` would start with now, not running: its last checkpoint (if
    any), then, with one model over the group, the update topic's records after it, read as at
    start. For comparing what workers hold (the tests, ``bench/handover.py``); the worker's
    checkpoint folder is claimed meanwhile, so the worker itself must not be running."""
    service = build_service(config, with_metrics=False)
    try:
        service.restore()
        if service.exchange is not None:
            service.exchange.connect()
        yield service
    finally:
        if service.exchange is not None:
            service.exchange.close()
        if service.claim is not None:
            service.claim.release()


def serve(config: ServiceConfig) -> int:
    """Run the service until SIGTERM/SIGINT; returns the process exit code. With ``workers``
    other than 1, run that many worker processes in the group instead (:func:`supervise`)."""
    if config.workers != 1:
        return supervise(config)
    # `kill -USR1 <pid>` prints every thread's stack to stderr and the worker goes on: what a
    # worker that seems stuck is waiting for.
    with contextlib.suppress(ValueError, OSError):  # no real stderr (captured in tests): no dumps
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    configure(config.log_level)
    if config.metrics_port > 0:  # first: a port another process holds stops the worker before it joins
        from consumer.metrics import start_http_server

        _, port = start_http_server(
            config.metrics_port,
            config.metrics_address,
            certfile=config.metrics_certfile or None,
            keyfile=config.metrics_keyfile or None,
        )
        scheme = "https" if config.metrics_certfile else "http"
        url = f"{scheme}://{config.metrics_address}:{port}/metrics"
        log.info("metrics endpoint up", extra=fields(url=url))
    config = keep_legacy_names(config)  # a group keeps the topic names it has been using
    service = build_service(config, with_metrics=config.metrics_port > 0)
    service.install_signal_handlers()
    service.run()
    return 0


#: Exit code of a worker that cannot run as configured: restarting it would fail again.
CONFIG_EXIT = 2


def worker_config(config: ServiceConfig, index: int) -> ServiceConfig:
    """Worker ``index``'s settings: one process, its own /metrics port; a worker the user named
    gets the name with its number (each folder claims itself otherwise, see
    :func:`consumer.checkpoint.claim_worker`)."""
    return dataclasses.replace(
        config,
        workers=1,
        # one of several: the partitions move between them (auto would see a lone worker)
        changelog_topic=config.changelog_topic or "on",
        metrics_port=config.metrics_port + index if config.metrics_port else 0,
        worker_id=f"{config.worker_id}-{index + 1}" if config.worker_id else "",
    )


def _run_worker(config: ServiceConfig, supervisor: int) -> None:
    import contract  # noqa: F401  (first in a fresh interpreter: single-threaded BLAS)

    _die_with(supervisor)
    try:
        code = serve(config)
    except (ConfigError, UserError) as err:
        print(f"streamrec serve: error: {err}", file=sys.stderr)
        code = CONFIG_EXIT
    raise SystemExit(code)


def _die_with(supervisor: int) -> None:
    """Linux: SIGTERM this worker when its supervisor dies, even by kill -9 (no orphans that
    go on consuming); a worker whose supervisor is already gone stops at once."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != supervisor:
        raise SystemExit(0)


def supervise(config: ServiceConfig, restart_after_s: float = 1.0) -> int:
    """Run ``config.workers`` worker processes (0: one per core) in one consumer group until
    SIGTERM or SIGINT, then stop them all (each finishes its poll, checkpoints and commits).

    A worker that dies is started again after a pause that doubles, to 30 s, while it keeps
    dying; one that cannot run as configured stops the whole set with its exit code. Kafka's
    group gives each worker its share of the partitions and moves them when one stops.
    """
    import multiprocessing

    configure(config.log_level)
    count = worker_count(config.workers)
    spawn = multiprocessing.get_context("spawn")  # no fork of a process holding Kafka sockets
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    # Every worker's settings first: one that cannot run stops the set before any is started.
    settings = [worker_config(config, index) for index in range(count)]

    def start(index: int):
        process = spawn.Process(
            target=_run_worker, args=(settings[index], os.getpid()), name=f"worker-{index}"
        )
        process.start()
        return process

    workers = {i: start(i) for i in range(count)}
    pause = dict.fromkeys(workers, restart_after_s)
    log.info(
        "workers started",
        # sync_every 0: each worker learns a model of its own from its partitions
        extra=fields(workers=count, group=config.group_id, sync_every=config.sync_every),
    )
    code = 0
    while not stop.wait(0.5):
        for index, process in list(workers.items()):
            if process.is_alive():
                continue
            if process.exitcode == CONFIG_EXIT:
                log.error("a worker cannot run as configured: stopping", extra=fields(worker=index))
                stop.set()
                code = CONFIG_EXIT
                break
            log.warning(
                "worker died; starting it again",
                extra=fields(worker=index, exit_code=process.exitcode, after_s=pause[index]),
            )
            if stop.wait(pause[index]):
                break
            pause[index] = min(30.0, pause[index] * 2)
            workers[index] = start(index)
    for process in workers.values():
        if process.is_alive():
            process.terminate()  # SIGTERM: the worker finishes its poll, checkpoints and commits
    for process in workers.values():
        process.join(90)
        if process.is_alive():
            process.kill()
    log.info("workers stopped", extra=fields(workers=count))
    return code


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = ServiceConfig.from_args(sys.argv[1:] if argv is None else argv)
    except ConfigError as err:
        print(f"streamrec serve: error: {err}", file=sys.stderr)
        return 2
    try:
        return serve(config)
    except (ConfigError, UserError) as err:  # UserError: e.g. records kafka-python cannot read
        print(f"streamrec serve: error: {err}", file=sys.stderr)
        return 2
