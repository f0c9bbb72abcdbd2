"""A single-node Apache Kafka broker run from its jars with ``java``: no Docker, no tarball.

The jars come from Maven Central (``scripts/kafka-jars.sh``, version pinned in
``deploy/kafka/pom.xml``). One data folder holds everything about a broker::

    <data dir>/server.properties   written on every start (the port may change)
    <data dir>/data/               log.dirs: topics, offsets, the KRaft metadata log
    <data dir>/broker.log          the broker's stdout and stderr (log4j2 writes to stdout)
    <data dir>/broker.json         pid, ports and start time of the running broker
    <data dir>/broker.pid          its pid alone, for scripts
    <data dir>/tls/                with ``security="sasl_ssl"``: a self-signed CA (``ca.pem``) and
                                   the broker's key and certificate (``broker.pem``), made by openssl

The node is broker and KRaft controller at once, listens on 127.0.0.1 only, and is tuned for a
small machine: a 512 MiB heap, internal topics of one partition with replication factor 1 (the
first group join and the first transaction are then fast), no initial rebalance delay.

With ``security="sasl_ssl"`` the client listener is SASL_SSL (TLS with a certificate from a
self-signed CA written under the data folder, SCRAM-SHA-512 credentials for one user written
into the metadata log when the storage is formatted) and there is no plain client listener: the
broker talks to itself on the same SASL_SSL listener with the same user. Only the KRaft
controller listener stays PLAINTEXT, on 127.0.0.1, where clients cannot produce or consume.

Examples
--------
>>> broker = LocalBroker("/tmp/streamrec-doc-kafka", port=29092)
>>> broker.bootstrap
'127.0.0.1:29092'
>>> broker.properties()["controller.quorum.voters"]
'1@127.0.0.1:29093'
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from contract.defaults import DEFAULT_HOST, DEFAULT_PORT
from contract.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
POM = REPO_ROOT / "deploy" / "kafka" / "pom.xml"
LOG4J2_CONFIG = REPO_ROOT / "deploy" / "kafka" / "log4j2.properties"
JARS_SCRIPT = REPO_ROOT / "scripts" / "kafka-jars.sh"

# DEFAULT_PORT is not 9092, so a broker someone already runs on the usual port is left alone.
#: How the local broker's client listener can be secured.
SECURITY_MODES = ("plaintext", "sasl_ssl")
#: The INFO line kafka.Kafka logs once the broker accepts requests (KafkaRaftServer.startup).
READY_LINE = "Kafka Server started"


class BrokerError(UserError):
    """The local broker cannot be set up or started; the message says what to do."""


def kafka_version() -> str:
    """The Kafka version pinned in ``deploy/kafka/pom.xml``.

    >>> kafka_version().split(".")[0]
    '4'
    """
    if not POM.is_file():  # installed with pip: the broker's build files stay in the repository
        raise BrokerError(
            "the local broker runs from a source checkout of streamrec (it fetches Apache Kafka's "
            f"jars with Maven from deploy/kafka/pom.xml, not installed with the package: no {POM}); "
            "clone the repository and run it there, or give every command --bootstrap-servers of your broker"
        )
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(POM).getroot().find("m:properties/m:kafka.version", ns)
    if node is None or not (node.text or "").strip():
        raise BrokerError(f"no <kafka.version> in {POM}")
    return node.text.strip()


def default_data_dir(security: str = "plaintext") -> Path:
    """``$STREAMREC_HOME/kafka`` when that variable is set, else ``.streamrec/kafka`` in the repo
    (``kafka-sasl_ssl`` for a secured broker: a data folder keeps the security it was made with)."""
    home = os.environ.get("STREAMREC_HOME")
    name = "kafka" if security == "plaintext" else f"kafka-{security}"
    return (Path(home) if home else REPO_ROOT / ".streamrec") / name


def find_java() -> str:
    """Path of the ``java`` to run: ``$JAVA_HOME/bin/java``, else the one on ``PATH``."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home, "bin", "java"), os.X_OK):
        return str(Path(home, "bin", "java"))
    found = shutil.which("java")
    if found:
        return found
    raise BrokerError(
        "Java is not installed (no `java` on PATH and no JAVA_HOME): the local Kafka broker needs "
        "Java 17 or newer, e.g. `apt-get install openjdk-17-jre-headless`"
    )


def jars_dir() -> Path:
    """Folder of the broker jars; ``STREAMREC_KAFKA_LIBS`` points at another copy."""
    override = os.environ.get("STREAMREC_KAFKA_LIBS")
    return Path(override) if override else REPO_ROOT / ".cache" / "kafka" / kafka_version() / "libs"


def ensure_jars() -> Path:
    """Return the jars folder, fetching the jars with Maven (``scripts/kafka-jars.sh``) once."""
    libs = jars_dir()
    if os.environ.get("STREAMREC_KAFKA_LIBS"):
        if not any(libs.glob("kafka_2.13-*.jar")):
            raise BrokerError(f"STREAMREC_KAFKA_LIBS={libs} holds no kafka_2.13 jar")
        return libs
    # The script returns at once when its stamp matches the pom, and re-resolves when the pom changed.
    done = subprocess.run(["bash", str(JARS_SCRIPT)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = done.stderr.strip() or done.stdout.strip()
        raise BrokerError(f"could not fetch the Kafka broker jars with {JARS_SCRIPT.name}: {detail}")
    return libs


#: The lowest port :func:`free_port` hands out, and the ports it has handed out in this process.
_LOWEST_CHOSEN_PORT = 20000
_handed_out: set[int] = set()


def free_port(host: str = DEFAULT_HOST, count: int = 1) -> int:
    """A TCP port nobody listens on now, the first of ``count`` such in a row (a broker's
    listener and controller, or the /metrics ports of ``--workers N``).

    Chosen below the kernel's ephemeral range, so that no client's outgoing connection takes it
    while its server is down: a broker stopped and started again on the same port finds it free.
    Ports handed out once by this process are not handed out again."""
    low = _ephemeral_low()
    first, last = _LOWEST_CHOSEN_PORT, low - count
    if last - first < 1000:  # an unusual range: anywhere unprivileged, as before
        first, last = 1024, 65536 - count
    for _ in range(200):
        # Not the `random` module: a test that seeds it must not make two processes agree.
        port = first + secrets.randbelow(last - first + 1)
        span = range(port, port + count)
        if not _handed_out.intersection(span) and all(_port_free(host, p) for p in span):
            _handed_out.update(span)
            return port
    raise BrokerError(f"found no {count} free TCP ports in a row in {first}-{last + count - 1}")


def _ephemeral_low() -> int:
    """The lowest local port the kernel gives outgoing connections (Linux; elsewhere its default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        # As Java's server sockets do: connections of a stopped broker in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def admin_ready(bootstrap: str, timeout: float = 30.0, **client_options: str) -> bool:
    """True once a real admin request (list topics) succeeds against ``bootstrap``.

    ``client_options`` are kafka-python's security settings (:meth:`LocalBroker.client_options`).
    """
    # Imported here so that `streamrec kafka status` on a stopped broker stays cheap.
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout
    while True:
        # kafka-python waits bootstrap_timeout_ms (30 s by default) for an unreachable broker.
        wait_ms = int(1000 * min(5.0, max(1.0, deadline - time.monotonic())))

        def list_topics(wait_ms: int = wait_ms) -> None:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap,
                request_timeout_ms=5000,
                bootstrap_timeout_ms=wait_ms,
                client_id="streamrec-kafka-ready",
                **client_options,
            )
            try:
                admin.list_topics()
            finally:
                admin.close()

        try:
            # kafka-python 3.0 can wait forever for a bootstrap its IO thread never finishes
            # (seen once while a broker started): each try gets a deadline of its own.
            _within(wait_ms / 1000 + 10.0, list_topics)
            return True
        except (KafkaError, OSError, TimeoutError):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)


def _within(seconds: float, call) -> None:  # noqa: ANN001 - a function of no arguments
    """Run ``call`` in a daemon thread; its exception, or ``TimeoutError`` after ``seconds``
    (the thread is left behind: a stuck kafka-python client cannot be interrupted)."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            failed.append(err)

    thread = threading.Thread(target=run, name="streamrec-admin-ready", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {seconds:.0f} s")
    if failed:
        raise failed[0]


@dataclass
class BrokerStatus:
    """What ``status`` found: a live process (``pid``) and whether it answers requests."""

    running: bool
    ready: bool
    pid: int | None
    bootstrap: str | None


@dataclass
class LocalBroker:
    """One single-node KRaft broker whose files all live under ``data_dir``.

    Parameters
    ----------
    data_dir
        Folder for config, data, log and pid; created when missing.
    port
        Client (PLAINTEXT) port on ``host``.
    controller_port
        KRaft controller port; ``port + 1`` by default.
    heap
        JVM heap size (``-Xmx``).
    die_with_parent
        Linux only: the broker gets SIGTERM when the process that started it dies (test fixtures
        use this, so a crashed test run leaves no broker behind). Applies to starts from the main
        thread only.
    security
        ``"plaintext"`` (default) or ``"sasl_ssl"`` (see the module docstring); a data folder
        keeps the mode it was formatted with.
    user, password
        The SCRAM-SHA-512 credentials of ``"sasl_ssl"`` (the broker uses them for itself too).
    """

    data_dir: Path | str = field(default_factory=default_data_dir)
    port: int = DEFAULT_PORT
    host: str = DEFAULT_HOST
    controller_port: int | None = None
    heap: str = "512m"
    die_with_parent: bool = False
    security: str = "plaintext"
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        if self.controller_port is None:
            self.controller_port = self.port + 1
        if self.security not in SECURITY_MODES:
            raise BrokerError(f"security must be one of {', '.join(SECURITY_MODES)}, got {self.security!r}")

    def _check_credentials(self) -> None:
        if self.security != "sasl_ssl":
            return
        if not self.user or not self.password:
            raise BrokerError("a sasl_ssl broker needs a user and a password")
        if any(c in self.user + self.password for c in '",=[]\n'):
            raise BrokerError('user and password may not contain " , = [ ] or a newline')

    # -- files ---------------------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        """``host:port`` for clients."""
        return f"{self.host}:{self.port}"

    def client_options(self) -> dict[str, str]:
        """kafka-python settings a client needs to connect (the security part; empty in plaintext)."""
        if self.security != "sasl_ssl":
            return {}
        return {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": self.user,
            "sasl_plain_password": self.password,
            "ssl_cafile": str(self.ca_path),
        }

    @property
    def config_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def state_path(self) -> Path:
        return self.data_dir / "broker.json"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def log_dirs(self) -> Path:
        return self.data_dir / "data"

    @property
    def ca_path(self) -> Path:
        """The CA certificate clients trust (``sasl_ssl`` only)."""
        return self.data_dir / "tls" / "ca.pem"

    @property
    def keystore_path(self) -> Path:
        return self.data_dir / "tls" / "broker.pem"

    @property
    def security_marker(self) -> Path:
        return self.data_dir / "security.json"

    def properties(self) -> dict[str, str]:
        """The broker's ``server.properties``: a single node that is broker and controller."""
        h, p, c = self.host, self.port, self.controller_port
        client = "SASL_SSL" if self.security == "sasl_ssl" else "PLAINTEXT"
        return {
            "process.roles": "broker,controller",
            "node.id": "1",
            # Static quorum of one voter: format without --standalone.
            "controller.quorum.voters": f"1@{h}:{c}",
            "listeners": f"{client}://{h}:{p},CONTROLLER://{h}:{c}",
            "advertised.listeners": f"{client}://{h}:{p}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": client,
            "listener.security.protocol.map": f"CONTROLLER:PLAINTEXT,{client}:{client}",
            **(self._sasl_ssl_properties() if client == "SASL_SSL" else {}),
            "log.dirs": str(self.log_dirs),
            "num.partitions": "1",
            # One replica of everything: there is one node.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Default 50 partitions each: creating them makes the first group join and the first
            # init_transactions() take seconds. One is enough on one node.
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.num.partitions": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Transactions left open past their timeout are aborted within a second, not ten: the
            # tests of a stalled exactly-once worker wait that long.
            "transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
            # The cleaner allocates its dedupe buffer (128 MiB by default) up front: too much for a
            # 512 MiB heap. Compacted topics still work, the cleaner just does smaller passes.
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            # Few threads: the machine has 2 cores shared with producer, service and tests.
            "num.network.threads": "2",
            "num.io.threads": "4",
            "background.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            # Allowed, but streamrec creates its topics explicitly with the partitions it wants.
            "auto.create.topics.enable": "true",
        }

    def _sasl_ssl_properties(self) -> dict[str, str]:
        login = "org.apache.kafka.common.security.scram.ScramLoginModule"
        return {
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
            # The broker's own (inter-broker) login on its only client listener.
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                f'{login} required username="{self.user}" password="{self.password}";'
            ),
            # PEM files (KIP-651): no Java keytool, and the same files Python clients read.
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.keystore_path),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca_path),
        }

    def write_config(self) -> Path:
        """Write ``server.properties`` (again: the port may differ from the last start).

        The file holds the SCRAM password in ``sasl_ssl`` mode, so only its owner may read it.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = ["# Written by streamrec.kafka_local on every start; edit LocalBroker.properties instead."]
        lines += [f"{key}={value}" for key, value in self.properties().items()]
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(self.config_path, 0o600)
        return self.config_path

    def _check_security_mode(self) -> None:
        """A data folder keeps the security mode (and SCRAM user) it was formatted with."""
        if not self.is_formatted():
            return
        try:
            formatted = json.loads(self.security_marker.read_text())
        except (OSError, ValueError):
            formatted = {"security": "plaintext", "user": None}
        if (formatted.get("security"), formatted.get("user")) != (self.security, self.user):
            was = formatted.get("security") + (
                f" (user {formatted['user']})" if formatted.get("user") else ""
            )
            raise BrokerError(
                f"{self.data_dir} holds a broker formatted as {was}: "
                f"pass --security {formatted.get('security')}"
                + (f" --user {formatted['user']}" if formatted.get("user") else "")
                + f" to use it, or another --data-dir for {self.security}"
            )
        check = formatted.get("password_check")
        if check and self.password is not None and not _password_matches(self.password, check):
            raise BrokerError(
                f"{self.data_dir}'s broker knows user {self.user} by another password (set when it was "
                "formatted): pass that one, or use another --data-dir"
            )

    # -- processes -----------------------------------------------------------------------------
    def _java_command(self, java: str, libs: Path, main: str, *args: str) -> list[str]:
        return [
            java,
            f"-Xmx{self.heap}",
            "-Xms64m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]

    def is_formatted(self) -> bool:
        return (self.log_dirs / "meta.properties").is_file()

    def format(self, java: str, libs: Path) -> None:
        """Format the storage once with a fresh cluster id (``kafka.tools.StorageTool``)."""
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        scram = []
        if self.security == "sasl_ssl":
            # KIP-900: SCRAM credentials go into the metadata log when the storage is formatted.
            scram = ["--add-scram", f"SCRAM-SHA-512=[name={self.user},password={self.password}]"]
        cmd = self._java_command(
            # "--cluster-id=" form: a base64 id may start with "-", which argparse4j reads as a flag.
            java,
            libs,
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={cluster_id}",
            "-c",
            str(self.config_path),
            *scram,
        )
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip()
            if self.password:
                detail = detail.replace(self.password, "***")
            raise BrokerError(f"formatting {self.log_dirs} failed: {detail}")
        marker = {"security": self.security, "user": self.user}
        if self.password is not None:  # to tell a changed password at once, not after a timeout
            marker["password_check"] = _password_check(self.password)
        self.security_marker.write_text(json.dumps(marker) + "\n")

    def read_state(self) -> dict | None:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None

    def running_pid(self) -> int | None:
        """Pid of this data folder's broker if that process is alive (not a recycled pid)."""
        state = self.read_state()
        pid = state.get("pid") if state else None
        if not isinstance(pid, int) or not _alive(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return pid  # no /proc (not Linux): trust the pid
        return pid if "kafka.Kafka" in cmdline and str(self.config_path) in cmdline else None

    def status(self, timeout: float = 5.0) -> BrokerStatus:
        """Whether the broker of this data folder runs and answers a list-topics request."""
        pid = self.running_pid()
        if pid is None:
            return BrokerStatus(False, False, None, None)
        self._check_security_mode()  # asked in the wrong mode, it would not answer: say why
        state = self.read_state() or {}
        bootstrap = state.get("bootstrap", self.bootstrap)
        return BrokerStatus(
            True, admin_ready(bootstrap, timeout=timeout, **self.client_options()), pid, bootstrap
        )

    def start(self, timeout: float = 120.0) -> str:
        """Start the broker unless it already runs; wait until it serves requests.

        Returns the bootstrap address. Idempotent: a running broker of this data folder is
        reused (its own port wins over ``port``).
        """
        pid = self.running_pid()
        if pid is not None:
            self._check_security_mode()
            state = self.read_state() or {}
            self.port = int(state.get("port", self.port))
            self.controller_port = int(state.get("controller_port", self.controller_port))
            if not admin_ready(self.bootstrap, timeout=timeout, **self.client_options()):
                raise BrokerError(f"a broker runs (pid {pid}) but does not answer on {self.bootstrap}")
            return self.bootstrap
        self._check_credentials()
        java = find_java()
        libs = ensure_jars()
        for port in (self.port, self.controller_port):
            if not _port_free(self.host, port):
                if port == self.port and admin_ready(self.bootstrap, timeout=2.0):
                    raise BrokerError(
                        f"a Kafka broker not started from {self.data_dir} answers on {self.bootstrap}: "
                        f"use it (--bootstrap-servers {self.bootstrap}), or start this one with --port"
                    )
                raise BrokerError(f"port {self.host}:{port} is in use: choose another with --port")
        self._check_security_mode()
        if self.security == "sasl_ssl" and not (self.ca_path.is_file() and self.keystore_path.is_file()):
            make_certificates(self.ca_path.parent, self.host)
        self.write_config()
        if not self.is_formatted():
            self.format(java, libs)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        # The kernel ties PR_SET_PDEATHSIG to the starting *thread*: from any other thread the broker
        # would die when that thread ends, so only the main thread asks for it.
        die_with_parent = self.die_with_parent and threading.current_thread() is threading.main_thread()
        cmd = self._java_command(java, libs, "kafka.Kafka", str(self.config_path))
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,  # detached: Ctrl-C in the terminal does not reach it
                preexec_fn=_die_with_parent if die_with_parent else None,
            )
        state = {
            "pid": self._proc.pid,
            "host": self.host,
            "port": self.port,
            "controller_port": self.controller_port,
            "bootstrap": self.bootstrap,
            "started_at": time.time(),
            "kafka_version": kafka_version(),
        }
        self.state_path.write_text(json.dumps(state, indent=2) + "\n")
        self.pid_path.write_text(f"{self._proc.pid}\n")  # for `kill $(cat broker.pid)` by hand
        self._wait_ready(offset, timeout)
        return self.bootstrap

    def _wait_ready(self, offset: int, timeout: float) -> None:
        """The readiness line in the log, then a real admin request; fail fast if java exits."""
        deadline = time.monotonic() + timeout
        while READY_LINE not in self._log_since(offset):
            if not _alive(self._proc.pid):
                self._proc.wait()
                raise BrokerError(
                    f"the broker exited (code {self._proc.returncode}) while starting; "
                    f"end of {self.log_path}:\n{self._log_tail(offset)}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"the broker did not start within {timeout:.0f} s; see {self.log_path}")
            time.sleep(0.2)
        if not admin_ready(
            self.bootstrap, timeout=max(5.0, deadline - time.monotonic()), **self.client_options()
        ):
            self.stop()
            raise BrokerError(f"the broker logged '{READY_LINE}' but {self.bootstrap} does not answer")

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _log_tail(self, offset: int, lines: int = 20) -> str:
        return "\n".join(self._log_since(offset).splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM (Kafka shuts down cleanly), wait, then SIGKILL. False if nothing ran."""
        pid = self.running_pid()
        if pid is None:
            self._reap()
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._wait_gone(pid, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_gone(pid, 10.0)
        self._reap()
        for path in (self.state_path, self.pid_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return True

    def wipe(self) -> bool:
        """Stop the broker and delete its topics, offsets and metadata (the ``data`` folder),
        so the next start formats an empty broker; the configuration and TLS files stay.
        Whether there was anything to delete."""
        self.stop()
        if not self.log_dirs.is_dir():
            return False
        shutil.rmtree(self.log_dirs)
        with contextlib.suppress(FileNotFoundError):
            self.security_marker.unlink()  # formatted afresh, in whatever mode the next start asks
        return True

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.pid == pid:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=0.2)
                    return True
            elif not _alive(pid):
                return True
            else:
                time.sleep(0.2)
        return not _alive(pid)

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None


def make_certificates(folder: Path, host: str = DEFAULT_HOST) -> None:
    """A self-signed CA (``ca.pem``) and a broker key and certificate for ``host`` signed by it
    (``broker.pem``: unencrypted PKCS#8 key, then the certificate, as Kafka's PEM keystore wants),
    made with openssl. The CA's key is thrown away: nothing else will ever be signed with it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise BrokerError("openssl is not installed: it makes the local broker's certificates")
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    san = f"subjectAltName=IP:{host},DNS:localhost" if host[0].isdigit() else f"subjectAltName=DNS:{host}"
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        work = Path(scratch)

        def run(*args: str) -> None:
            done = subprocess.run([openssl, *args], capture_output=True, text=True, check=False, cwd=work)
            if done.returncode != 0:
                raise BrokerError(f"openssl {args[0]} failed: {done.stderr.strip()}")

        days = "3650"
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", days, "-subj", "/CN=streamrec local broker CA")  # fmt: skip
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr",
            "-subj", f"/CN={host}")  # fmt: skip
        (work / "ext.cnf").write_text(
            f"{san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
        )
        run("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "broker.crt", "-days", days, "-extfile", "ext.cnf")  # fmt: skip
        run("pkcs8", "-topk8", "-nocrypt", "-in", "broker.key", "-out", "broker.pk8")
        keystore = folder / "broker.pem"
        keystore.write_bytes((work / "broker.pk8").read_bytes() + (work / "broker.crt").read_bytes())
        os.chmod(keystore, 0o600)
        shutil.copyfile(work / "ca.pem", folder / "ca.pem")


def _alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _digest(password: str, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 100_000)


def _password_check(password: str) -> str:
    """A salted PBKDF2 of ``password`` (kept beside the data, never the password itself)."""
    salt = secrets.token_bytes(16)
    return f"{salt.hex()}:{_digest(password, salt).hex()}"


def _password_matches(password: str, check: str) -> bool:
    try:
        salt, digest = (bytes.fromhex(part) for part in check.split(":"))
    except ValueError:
        return True  # unreadable: let the broker decide
    return hmac.compare_digest(_digest(password, salt), digest)
