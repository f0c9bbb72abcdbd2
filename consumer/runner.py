"""Wiring: a :class:`~consumer.app.StreamrecService` from a config, with metrics and signals.

This is what ``streamrec serve`` and ``python -m consumer`` run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from consumer.app import StreamrecService
from consumer.config import ConfigError, ServiceConfig
from consumer.logs import configure, fields
from contract.errors import UserError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["build_service", "serve", "SHADOW_BASELINE"]

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
    try:
        service = StreamrecService(
            config,
            model_factory=lambda: registry.create(control.model, **control.settings),
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


def serve(config: ServiceConfig) -> int:
    """Run the service until SIGTERM/SIGINT; returns the process exit code."""
    service = build_service(config, with_metrics=config.metrics_port > 0)
    configure(config.log_level)
    if config.metrics_port > 0:
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
    service.install_signal_handlers()
    service.run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    import sys

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
