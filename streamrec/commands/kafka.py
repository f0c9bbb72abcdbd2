"""``streamrec kafka up|down|status``: the local single-node Kafka broker (no Docker).

``up`` fetches the broker jars with Maven once, starts the broker detached and waits until it
serves requests; its last output line is the bootstrap address ``host:port``, so scripts can do
``BOOTSTRAP=$(streamrec kafka up | tail -n1)``. ``status`` exits 0 when the broker answers and 3
when it does not. ``down`` stops it (its data stays in the data folder for the next ``up``;
``down --wipe`` deletes it: the next ``up`` starts an empty broker).

``up --security sasl_ssl --user U --password-file F`` starts it with a SASL_SSL client listener
only (SCRAM-SHA-512, a self-signed CA written under the data folder) and prints ``ca: PATH``
before the bootstrap address; clients then connect with ``--security-protocol SASL_SSL
--sasl-mechanism SCRAM-SHA-512 --sasl-username U --ssl-cafile PATH`` and the password in
``STREAMREC_SASL_PASSWORD`` or ``--sasl-password-file F``. A data folder keeps the security it
was first formatted with (the default folder for ``sasl_ssl`` is ``kafka-sasl_ssl``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

#: Exit code of ``status`` when no broker answers (like ``systemctl status``).
EXIT_DOWN = 3


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "kafka",
        help="start, stop or check the local Kafka broker",
        description="The local single-node Apache Kafka broker (KRaft), run with java from Maven jars.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, help_ in (
        ("up", "start the broker (if needed) and print its bootstrap address last"),
        ("down", "stop the broker; its data is kept"),
        ("status", "exit 0 if the broker answers, 3 if not"),
    ):
        action = actions.add_parser(name, help=help_, description=help_)
        action.add_argument(
            "--data-dir",
            help="folder for the broker's config, data and log "
            "(default: $STREAMREC_HOME/kafka, else .streamrec/kafka in the repo)",
        )
        action.add_argument(
            "--security",
            choices=("plaintext", "sasl_ssl"),
            default="plaintext",
            help="plaintext (default) or sasl_ssl: TLS and SCRAM-SHA-512, no plain listener",
        )
        action.add_argument("--user", help="with sasl_ssl: the SCRAM user (the broker uses it too)")
        action.add_argument(
            "--password-file",
            help="with sasl_ssl: file holding the user's password (or set $STREAMREC_SASL_PASSWORD)",
        )
        if name == "down":
            action.add_argument(
                "--wipe",
                action="store_true",
                help="also delete the broker's topics and data: the next up starts an empty broker",
            )
        if name == "up":
            action.add_argument(
                "--port",
                type=_client_port,
                help="client port on 127.0.0.1 (default 19092; the controller takes the next one)",
            )
            action.add_argument(
                "--timeout", type=float, default=120.0, help="seconds to wait for readiness (default 120)"
            )
    parser.set_defaults(func=run)


def _credentials(args: argparse.Namespace) -> tuple[str | None, str | None]:
    from contract.errors import UserError

    if args.security == "plaintext":
        if args.user or args.password_file:
            raise UserError("--user and --password-file go with --security sasl_ssl")
        return None, None
    if args.action == "down":
        return args.user, None  # stopping needs no credentials
    if not args.user:
        raise UserError("--security sasl_ssl needs --user")
    password = os.environ.get("STREAMREC_SASL_PASSWORD")
    if args.password_file:
        try:
            password = Path(args.password_file).read_text().strip()
        except OSError as err:
            raise UserError(f"--password-file {args.password_file}: {err.strerror or err}") from None
    if not password:
        raise UserError("--security sasl_ssl needs --password-file (or $STREAMREC_SASL_PASSWORD)")
    return args.user, password


def run(args: argparse.Namespace) -> int:
    from streamrec import kafka_local

    user, password = _credentials(args)
    data_dir = args.data_dir or kafka_local.default_data_dir(args.security)
    port = getattr(args, "port", None)
    port = kafka_local.DEFAULT_PORT if port is None else port
    broker = kafka_local.LocalBroker(
        data_dir, port=port, security=args.security, user=user, password=password
    )
    if args.action == "up":
        return _up(broker, args)
    if args.action == "down":
        stopped = broker.stop()
        print(
            f"stopped the broker of {broker.data_dir}" if stopped else f"no broker runs in {broker.data_dir}"
        )
        if args.wipe:
            wiped = broker.wipe()
            print(f"deleted its topics and data in {broker.log_dirs}" if wiped else "no data to delete")
        return 0
    status = broker.status()
    if status.ready:
        print(f"up: pid {status.pid}, data {broker.data_dir}")
        print(status.bootstrap)
        return 0
    if status.running:
        print(f"starting or stuck: pid {status.pid} does not answer on {status.bootstrap}")
    else:
        print(f"down: no broker runs in {broker.data_dir}")
    return EXIT_DOWN


def _up(broker, args: argparse.Namespace) -> int:
    from streamrec.kafka_local import find_java

    already = broker.running_pid()
    if already is None:
        find_java()  # say "no Java" before "starting"
        print(f"starting Kafka in {broker.data_dir} (log: {broker.log_path}) ...", file=sys.stderr)
    bootstrap = broker.start(timeout=args.timeout)
    if already is not None:
        if args.port and args.port != broker.port:
            print(f"already running on port {broker.port} (--port {args.port} ignored)", file=sys.stderr)
        print(f"already up: pid {already}, data {broker.data_dir}")
    else:
        print(f"up: pid {broker.running_pid()}, data {broker.data_dir}")
    if broker.security == "sasl_ssl":
        print(f"ca: {broker.ca_path}")
    print(bootstrap)
    return 0


def _client_port(text: str) -> int:
    """argparse type of ``--port``: 1..65534 (the controller listens on the next port)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= port <= 65534:
        raise argparse.ArgumentTypeError(
            f"expected 1..65534 (the controller takes the next port), got {port}"
        )
    return port
