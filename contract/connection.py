"""How every Kafka client of streamrec connects: one set of settings, flags and variables.

The service (its consumer, producer and admin client), ``streamrec produce``, ``streamrec recs``,
the demo and the benchmarks all build their clients from one :class:`KafkaConnection`, so a
cluster that needs TLS and SASL (Confluent Cloud, Amazon MSK, Aiven, a company's own) is set up
once, the same way everywhere:

============================  ================================  ==========================================
flag                          environment variable              meaning
============================  ================================  ==========================================
``--bootstrap-servers``       ``STREAMREC_BOOTSTRAP_SERVERS``   ``host:port[,host:port...]``
``--security-protocol``       ``STREAMREC_SECURITY_PROTOCOL``   PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
``--sasl-mechanism``          ``STREAMREC_SASL_MECHANISM``      PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
``--sasl-username``           ``STREAMREC_SASL_USERNAME``
(none: ``ps`` would show it)  ``STREAMREC_SASL_PASSWORD``       the password itself
``--sasl-password-file``      ``STREAMREC_SASL_PASSWORD_FILE``  a file holding the password
``--ssl-cafile``              ``STREAMREC_SSL_CAFILE``          CA certificates to trust (PEM)
``--ssl-certfile``            ``STREAMREC_SSL_CERTFILE``        client certificate, for mutual TLS (PEM)
``--ssl-keyfile``             ``STREAMREC_SSL_KEYFILE``         its private key (PEM)
============================  ================================  ==========================================

The password is never printed: not by ``repr``, not by :meth:`KafkaConnection.describe` (what
logs and config dumps show), not in an error. A client that cannot connect because of its
credentials or a certificate gets one clear sentence from :func:`explain_failure`, not the
time-out kafka-python raises.

>>> c = KafkaConnection("broker:9093", "SASL_SSL", "SCRAM-SHA-512", "alice", "s3cret")
>>> "alice" in repr(c), "s3cret" in repr(c)
(True, False)
>>> c.client_options()["sasl_plain_password"]
's3cret'
>>> c.describe()["sasl_password"]
'***'
>>> KafkaConnection("b:9092", "SASL_SSL")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
contract.connection.ConnectionSettingsError: SASL_SSL needs --sasl-mechanism (PLAIN, ...)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from contract.defaults import DEFAULT_BOOTSTRAP
from contract.errors import UserError

__all__ = [
    "KafkaConnection",
    "ConnectionSettingsError",
    "SECURITY_PROTOCOLS",
    "SASL_MECHANISMS",
    "add_connection_arguments",
    "FailureWatch",
    "explain_failure",
    "kafka_logs_held",
]

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

#: Field -> environment variable (the password has no flag, only a variable or a file).
ENVIRONMENT = {
    "bootstrap_servers": "STREAMREC_BOOTSTRAP_SERVERS",
    "security_protocol": "STREAMREC_SECURITY_PROTOCOL",
    "sasl_mechanism": "STREAMREC_SASL_MECHANISM",
    "sasl_username": "STREAMREC_SASL_USERNAME",
    "sasl_password": "STREAMREC_SASL_PASSWORD",
    "sasl_password_file": "STREAMREC_SASL_PASSWORD_FILE",
    "ssl_cafile": "STREAMREC_SSL_CAFILE",
    "ssl_certfile": "STREAMREC_SSL_CERTFILE",
    "ssl_keyfile": "STREAMREC_SSL_KEYFILE",
}


class ConnectionSettingsError(UserError, ValueError):
    """Connection settings that cannot work together (checked before any connection is tried)."""


@dataclass(frozen=True)
class KafkaConnection:
    """Where the brokers are and how to prove who we are to them."""

    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __post_init__(self) -> None:
        protocol = (self.security_protocol or "PLAINTEXT").upper()
        object.__setattr__(self, "security_protocol", protocol)
        if self.sasl_mechanism:
            object.__setattr__(self, "sasl_mechanism", self.sasl_mechanism.upper())
        if not self.bootstrap_servers.strip():
            raise ConnectionSettingsError("--bootstrap-servers is empty")
        if protocol not in SECURITY_PROTOCOLS:
            raise ConnectionSettingsError(
                f"--security-protocol must be one of {', '.join(SECURITY_PROTOCOLS)}, got {protocol!r}"
            )
        if self.uses_sasl:
            if self.sasl_mechanism not in SASL_MECHANISMS:
                got = f", got {self.sasl_mechanism!r}" if self.sasl_mechanism else ""
                raise ConnectionSettingsError(
                    f"{protocol} needs --sasl-mechanism ({', '.join(SASL_MECHANISMS)}){got}"
                )
            if not self.sasl_username:
                raise ConnectionSettingsError(f"{protocol} needs --sasl-username")
            if not self.sasl_password:
                raise ConnectionSettingsError(
                    f"{protocol} needs a password: set STREAMREC_SASL_PASSWORD or --sasl-password-file"
                )
        elif self.sasl_mechanism or self.sasl_username:
            raise ConnectionSettingsError(
                f"SASL settings are given but --security-protocol is {protocol}: "
                "use SASL_SSL (or SASL_PLAINTEXT)"
            )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ConnectionSettingsError("mutual TLS needs both --ssl-certfile and --ssl-keyfile")
        tls_files = (self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile)
        if any(tls_files) and not self.uses_tls:
            raise ConnectionSettingsError(
                f"TLS files are given but --security-protocol is {protocol}: use SSL or SASL_SSL"
            )
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ConnectionSettingsError(f"--{name.replace('_', '-')} {path}: no such file")

    @classmethod
    def of(cls, where: KafkaConnection | str) -> KafkaConnection:
        """``where`` itself, or a plain connection to the bootstrap address ``where``."""
        return where if isinstance(where, KafkaConnection) else cls(bootstrap_servers=where)

    def unreachable(self, err: BaseException) -> str:
        """The one-line message for a client that could not connect: the security reason
        kafka-python logged (:class:`FailureWatch`), else that no broker answered."""
        clear = explain_failure(self, FailureWatch.install().take())
        if clear:
            return clear
        return (
            f"no Kafka broker answered at {self.bootstrap_servers} ({err}); "
            "start one with `streamrec kafka up` or pass --bootstrap-servers"
        )

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def client_options(self) -> dict[str, object]:
        """Keyword arguments for kafka-python's ``KafkaConsumer``, ``KafkaProducer`` and
        ``KafkaAdminClient`` (they take the same security settings)."""
        options: dict[str, object] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.uses_sasl:
            # kafka-python names them "plain" but uses them for SCRAM too.
            options |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.sasl_password,
            }
        if self.uses_tls:
            options |= {
                "ssl_cafile": self.ssl_cafile,
                "ssl_certfile": self.ssl_certfile,
                "ssl_keyfile": self.ssl_keyfile,
                "ssl_check_hostname": True,
            }
        return options

    def describe(self) -> dict[str, object]:
        """The settings for a log line or a config dump: the password shown only as ``***``."""
        shown: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.sasl_password:
            shown["sasl_password"] = "***"
        return {k: v for k, v in shown.items() if v is not None}

    @classmethod
    def from_arguments(
        cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None
    ) -> KafkaConnection:
        """From the flags :func:`add_connection_arguments` added (their defaults already read the
        environment) and, for the password, ``STREAMREC_SASL_PASSWORD`` or the password file."""
        environ = os.environ if environ is None else environ
        password = environ.get(ENVIRONMENT["sasl_password"]) or None
        password_file = getattr(args, "sasl_password_file", None)
        if password_file:
            try:
                password = Path(password_file).read_text().strip() or None
            except OSError as err:
                # The path is not echoed: a password typed in its place would be printed.
                raise ConnectionSettingsError(
                    f"the file of --sasl-password-file cannot be read ({err.strerror or err})"
                ) from None
            if password is None:
                raise ConnectionSettingsError("the file of --sasl-password-file is empty")
        # An empty value (a variable set to "", as docker-compose passes unset ones) is unset.
        return cls(
            bootstrap_servers=args.bootstrap_servers,
            security_protocol=args.security_protocol or "PLAINTEXT",
            sasl_mechanism=args.sasl_mechanism or None,
            sasl_username=args.sasl_username or None,
            sasl_password=password,
            ssl_cafile=args.ssl_cafile or None,
            ssl_certfile=args.ssl_certfile or None,
            ssl_keyfile=args.ssl_keyfile or None,
        )


def add_connection_arguments(
    parser: argparse.ArgumentParser,
    environ: Mapping[str, str] | None = None,
    default_bootstrap: str | None = DEFAULT_BOOTSTRAP,
) -> None:
    """Add the connection flags (see the module docstring), each defaulting to its variable.

    ``default_bootstrap=None`` leaves ``--bootstrap-servers`` unset unless given (the demo
    starts its own broker then)."""
    env = os.environ if environ is None else environ
    group = parser.add_argument_group("Kafka connection")

    def add(flag: str, name: str, help_: str, default: str | None = None, **kw: object) -> None:
        variable = ENVIRONMENT[name]
        group.add_argument(
            flag, dest=name, default=env.get(variable, default), help=f"{help_} (${variable})", **kw
        )

    default = f"default {default_bootstrap}" if default_bootstrap else "default: a local broker"
    add("--bootstrap-servers", "bootstrap_servers", f"host:port list ({default})",
        default_bootstrap, metavar="HOST:PORT")  # fmt: skip
    add("--security-protocol", "security_protocol", "PLAINTEXT (default), SSL, SASL_PLAINTEXT or SASL_SSL",
        "PLAINTEXT", type=str.upper, metavar="PROTOCOL")  # fmt: skip
    add("--sasl-mechanism", "sasl_mechanism", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
        type=str.upper, metavar="MECHANISM")  # fmt: skip
    add("--sasl-username", "sasl_username", "SASL user name", metavar="USER")
    add("--sasl-password-file", "sasl_password_file",
        "file holding the SASL password (or set $STREAMREC_SASL_PASSWORD)", metavar="PATH")  # fmt: skip
    # Refused on purpose (``ps`` shows flags), and so that argparse cannot take an abbreviation
    # of it for --sasl-password-file and print the password back as a missing file.
    group.add_argument("--sasl-password", action=_RefusePassword, help=argparse.SUPPRESS)
    add("--ssl-cafile", "ssl_cafile", "CA certificates to trust, PEM", metavar="PATH")
    add("--ssl-certfile", "ssl_certfile", "client certificate for mutual TLS, PEM", metavar="PATH")
    add("--ssl-keyfile", "ssl_keyfile", "private key of --ssl-certfile, PEM", metavar="PATH")


class _RefusePassword(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        parser.error(
            "the SASL password is not taken as a flag (other users see flags in `ps`): "
            "set STREAMREC_SASL_PASSWORD or use --sasl-password-file"
        )


class FailureWatch(logging.Handler):
    """Remembers why kafka-python's last connection attempt failed.

    kafka-python only logs why it could not connect (a refused password, a certificate it does
    not trust) and then raises a bare time-out. Installed on its ``kafka`` logger, this keeps
    the last such reason so :func:`explain_failure` can say it in one sentence. Thread-safe,
    and it stores nothing but the reason's text.
    """

    _MARKERS = ("SaslAuthenticationFailed", "CERTIFICATE_VERIFY_FAILED", "certificate verify failed",
                "Handshake failed", "socket disconnected", "UnsupportedSaslMechanism",
                "ECONNREFUSED", "Connection refused")  # fmt: skip

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self._lock = threading.Lock()
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a handler must never raise into the client
            return
        if any(marker in text for marker in self._MARKERS):
            with self._lock:
                # An authentication or certificate failure is the cause; a later "socket
                # disconnected" from the same attempt must not hide it.
                if self.last is None or "socket disconnected" not in text:
                    self.last = text

    def take(self) -> str | None:
        """The last reason seen, forgotten as it is read."""
        with self._lock:
            last, self.last = self.last, None
            return last

    @classmethod
    def fresh(cls) -> FailureWatch:
        """The process's watch, emptied: call it right before a connection attempt, so that a
        reason left by an earlier client of the process is never taken for this one's."""
        watch = cls.install()
        watch.take()
        return watch

    @classmethod
    def install(cls) -> FailureWatch:
        """The process's one watch on the ``kafka`` logger (created on first use)."""
        logger = logging.getLogger("kafka")
        for handler in logger.handlers:
            if isinstance(handler, cls):
                return handler
        watch = cls()
        logger.addHandler(watch)
        return watch


@contextlib.contextmanager
def kafka_logs_held() -> Iterator[FailureWatch]:
    """For a command whose errors are one line of its own: kafka-python's connection logs are
    read by the :class:`FailureWatch` but not printed, wherever the process's logging points.
    The service does not use this: its log keeps them."""
    logger = logging.getLogger("kafka")
    watch = FailureWatch.install()
    propagate = logger.propagate
    logger.propagate = False
    try:
        yield watch
    finally:
        logger.propagate = propagate


def explain_failure(connection: KafkaConnection, reason: str | None) -> str | None:
    """One clear sentence for a connection that failed for a reason of security, else ``None``.

    >>> c = KafkaConnection("h:9093", "SASL_SSL", "SCRAM-SHA-512", "alice", "pw")
    >>> explain_failure(c, "[Error 58] SaslAuthenticationFailedError: ... invalid credentials")
    'authentication failed for user alice at h:9093 (SCRAM-SHA-512): check the user name and password'
    >>> print(explain_failure(KafkaConnection("h:9093", "SSL"), "Handshake failed: [SSL: "
    ...     "CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer "
    ...     "certificate (_ssl.c:1006)"))  # doctest: +NORMALIZE_WHITESPACE
    certificate verify failed: unable to get local issuer certificate, at h:9093:
    is --ssl-cafile the CA that signed the broker certificate?
    """
    if not reason:
        return None
    where = connection.bootstrap_servers
    if "SaslAuthenticationFailed" in reason:
        return (
            f"authentication failed for user {connection.sasl_username} at {where} "
            f"({connection.sasl_mechanism}): check the user name and password"
        )
    if "UnsupportedSaslMechanism" in reason:
        return f"the brokers at {where} do not accept SASL mechanism {connection.sasl_mechanism}"
    if "certificate verify failed" in reason:
        detail = reason.split("certificate verify failed", 1)[1].split("(_ssl")[0].strip(" :")
        detail = f": {detail}" if detail else ""
        return (
            f"certificate verify failed{detail}, at {where}: "
            "is --ssl-cafile the CA that signed the broker certificate?"
        )
    if "Handshake failed" in reason:
        return f"TLS handshake with {where} failed ({reason.split('Handshake failed:', 1)[-1].strip()})"
    if "socket disconnected" in reason:
        if connection.uses_sasl:
            # A broker that refused a login closes later attempts before any answer.
            return (
                f"the brokers at {where} closed the connection while user {connection.sasl_username} "
                f"logged in: check the password, --sasl-mechanism ({connection.sasl_mechanism}) and "
                f"--security-protocol ({connection.security_protocol})"
            )
        return (
            f"the brokers at {where} closed the connection: do they expect TLS or SASL? "
            f"(--security-protocol is {connection.security_protocol})"
        )
    return None
