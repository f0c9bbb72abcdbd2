"""``streamrec demo``: the whole pipeline end to end on this machine (see :mod:`streamrec.demo`)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from contract.connection import add_connection_arguments

    parser = sub.add_parser(
        "demo",
        help="run broker, service and a stream of events end to end, and show what was learned",
        description="Start the local Kafka broker (unless --bootstrap-servers is given), run the "
        "service, stream watch events into it and show live quality and sample recommendations.",
    )
    parser.add_argument("--events", type=int, default=30_000, help="events to send (default %(default)s)")
    parser.add_argument("--rate", type=float, default=3000.0, help="events per second (default %(default)s)")
    parser.add_argument("--viewers", type=int, default=2000, help="synthetic viewers (default %(default)s)")
    parser.add_argument("--videos", type=int, default=2000, help="synthetic videos (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic stream")
    parser.add_argument("--data", metavar="PATH", help="replay this MovieLens or JSON-lines file instead")
    parser.add_argument(
        "--secure",
        action="store_true",
        help="start the local broker with SASL_SSL only (TLS, SCRAM-SHA-512) and connect through it",
    )
    add_connection_arguments(parser, default_bootstrap=None)
    parser.add_argument(
        "--metrics-port", type=int, default=8000, help="port of /metrics (default %(default)s)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from contract.connection import KafkaConnection
    from contract.errors import UserError
    from streamrec.demo import DemoOptions, run_demo

    if args.events <= 0 or args.rate <= 0:
        raise UserError("--events and --rate must be positive")
    # A broker given with --bootstrap-servers (and its security flags) replaces the local one.
    connection = KafkaConnection.from_arguments(args) if args.bootstrap_servers else None
    if connection is not None and args.secure:
        raise UserError("--secure starts a local broker: it cannot go with --bootstrap-servers")
    options = DemoOptions(
        events=args.events,
        rate=args.rate,
        viewers=args.viewers,
        videos=args.videos,
        seed=args.seed,
        data=args.data,
        connection=connection,
        secure=args.secure,
        metrics_port=args.metrics_port,
    )
    return run_demo(options)
