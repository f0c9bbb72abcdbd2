"""How a benchmark reaches Kafka: the project's connection flags, or a local broker of its own.

Every benchmark that talks to Kafka takes the same flags as the service and the CLI
(:func:`contract.connection.add_connection_arguments`: ``--bootstrap-servers``,
``--security-protocol``, ``--sasl-mechanism``, ``--sasl-username``, the password from
``$STREAMREC_SASL_PASSWORD`` or ``--sasl-password-file``, ``--ssl-cafile``, ``--ssl-certfile``,
``--ssl-keyfile``), plus ``--bootstrap`` (the benchmarks' older name for ``--bootstrap-servers``)
and ``$KAFKA_BOOTSTRAP``. With no address at all, the benchmark starts a throwaway local broker
(:func:`local_broker`) in a temporary folder and stops it at the end.

(Not named ``kafka.py``: ``python bench/x.py`` puts ``bench/`` first on ``sys.path``, and the
file would hide kafka-python.)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator

from kafka import KafkaAdminClient

from contract.connection import KafkaConnection, add_connection_arguments
from contract.errors import UserError

__all__ = ["add_broker_arguments", "connection_from", "kafka_for", "local_broker"]

#: Flags that only mean something with a broker given by address.
_SECURITY_FLAGS = ("security_protocol", "sasl_mechanism", "sasl_username", "sasl_password_file",
                   "ssl_cafile", "ssl_certfile", "ssl_keyfile")  # fmt: skip


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    """The connection flags (no default address: a local broker then), and ``--bootstrap``."""
    add_connection_arguments(parser, default_bootstrap=None)
    parser.add_argument(
        "--bootstrap",
        dest="bootstrap_servers",
        default=argparse.SUPPRESS,  # --bootstrap-servers' default (its variable) stays
        metavar="HOST:PORT",
        help="the same as --bootstrap-servers ($KAFKA_BOOTSTRAP is read too)",
    )


def connection_from(args: argparse.Namespace) -> KafkaConnection | None:
    """The connection the flags describe, or ``None`` when none is given (start a local broker).

    The address is ``--bootstrap-servers``/``--bootstrap``, else ``$STREAMREC_BOOTSTRAP_SERVERS``,
    else ``$KAFKA_BOOTSTRAP``; security settings without an address are an error (the local
    broker a benchmark starts is plaintext).
    """
    if not args.bootstrap_servers:
        args.bootstrap_servers = os.environ.get("KAFKA_BOOTSTRAP") or None
    if args.bootstrap_servers:
        return KafkaConnection.from_arguments(args)
    given = [name for name in _SECURITY_FLAGS if getattr(args, name, None) not in (None, "", "PLAINTEXT")]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UserError(
            f"{flags} given without --bootstrap-servers: the local broker a benchmark starts is plaintext"
        )
    return None


def local_broker(security: str = "plaintext"):
    """Start a throwaway local broker (temporary folder, free ports); returns it and how to connect.

    With ``security="sasl_ssl"`` the broker has only a SASL_SSL client listener (TLS with its own
    self-signed CA, SCRAM-SHA-512) and a fresh user and random password for this run.
    """
    from streamrec import kafka_local

    folder = tempfile.mkdtemp(prefix=f"streamrec-bench-kafka-{security}-")
    port = kafka_local.free_port(count=2)
    if security == "plaintext":
        broker = kafka_local.LocalBroker(folder, port=port)
        return broker, KafkaConnection(broker.start())
    user, password = "streamrec-bench", secrets.token_urlsafe(18)
    broker = kafka_local.LocalBroker(folder, port=port, security=security, user=user, password=password)
    bootstrap = broker.start()
    connection = KafkaConnection(
        bootstrap, "SASL_SSL", "SCRAM-SHA-512", user, password, ssl_cafile=str(broker.ca_path)
    )
    return broker, connection


@contextlib.contextmanager
def kafka_for(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Iterator[KafkaConnection]:
    """The connection the flags describe (a flag error is the parser's), or a local broker
    started for the ``with`` block and stopped after it."""
    try:
        connection = connection_from(args)
    except UserError as err:
        parser.error(str(err))
    if connection is not None:
        yield connection
        return
    broker, connection = local_broker()
    try:
        yield connection
    finally:
        broker.stop()


def members_with_partitions(options: dict, group: str) -> int:
    """Members of ``group`` holding at least one partition, once the group is stable (0 before)."""
    admin = KafkaAdminClient(**options)
    try:
        described = admin.describe_groups([group]).get(group, {})
    except Exception:  # noqa: BLE001 - the group may not exist yet
        return 0
    finally:
        admin.close()
    if described.get("group_state") != "Stable":
        return 0
    members = described.get("members", [])
    return sum(1 for m in members if (m.get("member_assignment") or {}).get("assigned_partitions"))


def remove_topics(where: KafkaConnection | str, stem: str) -> list[str]:
    """Delete the topics a benchmark run named after ``stem``: ``stem`` itself, ``stem-...``
    (its outputs) and ``...-stem-...`` (a group's internal topics, named after the group and
    the input); returns their names. A run must not leave its topics on a shared cluster."""
    admin = KafkaAdminClient(**KafkaConnection.of(where).client_options())
    try:
        names = [t for t in admin.list_topics() if t == stem or t.startswith(f"{stem}-") or f"-{stem}-" in t]
        if names:
            admin.delete_topics(names, timeout_ms=30_000)
        return names
    finally:
        admin.close()
