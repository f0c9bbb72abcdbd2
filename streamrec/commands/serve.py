"""``streamrec serve``: run the consumer service (flags and environment in ``consumer.config``)."""

from __future__ import annotations

import argparse

from contract.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    from consumer.config import ConfigError, add_arguments

    parser = sub.add_parser(
        "serve",
        help="learn from watch events and publish recommendations",
        description="Consume watch events, learn from each batch, publish fresh top-N lists, "
        "export metrics. Every flag can also be set with the environment variable shown.",
    )
    try:
        add_arguments(parser)
    except ConfigError as err:
        raise SystemExit(f"streamrec serve: error: {err}") from None
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from consumer.config import ConfigError, ServiceConfig
    from consumer.runner import serve

    try:
        config = ServiceConfig.from_namespace(args)  # the password: $STREAMREC_SASL_PASSWORD or a file
        return serve(config)
    except ConfigError as err:
        raise UserError(str(err)) from None
