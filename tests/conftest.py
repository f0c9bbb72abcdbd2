"""Shared fixtures: one real Kafka broker per test session, and helpers around it.

Where the broker comes from, first match wins:

1. ``KAFKA_BOOTSTRAP=host:port``: a broker you run (``streamrec kafka up``, a container, a cluster).
2. A Docker engine that answers within a few seconds: an ``apache/kafka`` container (testcontainers).
3. Otherwise the local broker of :mod:`streamrec.kafka_local`, on free ports under a temporary
   data folder (so concurrent test runs never share or clash), stopped at the end of the session.

Fixtures
--------
``kafka_bootstrap``   (session) ``"host:port"`` of the broker.
``kafka_broker``      (session) a :class:`Broker`: bootstrap, source ("env", "container", "local"),
                      and the :class:`~streamrec.kafka_local.LocalBroker` when local.
``new_topic``         factory ``new_topic(prefix, partitions=1, config=None) -> name``: creates a uniquely
                      named topic (``<prefix>-<8 hex>``), ready for use; deleted after the test.
``local_broker``      the :class:`~streamrec.kafka_local.LocalBroker` itself, for fault tests
                      (``stop()``, ``start()``: same port, same data). Skips unless the broker is local.
                      Restarted after the test if the test left it down. Call ``start()`` from the
                      test's main thread.

Every test that uses ``kafka_bootstrap`` (directly or through another fixture) gets the ``kafka``
marker, so ``pytest -m "not kafka"`` runs without a broker.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

import pytest

from streamrec import kafka_local


@dataclass
class Broker:
    """The session's broker: where to reach it and, when we run it, the process handle."""

    bootstrap: str
    source: str  # "env", "container" or "local"
    local: kafka_local.LocalBroker | None = None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "kafka_bootstrap" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kafka)


def _docker_answers(timeout: float = 3.0) -> bool:
    """A cheap check that a Docker engine is there: no socket, no wait; else one short ping."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host and not os.path.exists("/var/run/docker.sock"):
        return False
    if host.startswith("unix://") and not os.path.exists(host[len("unix://") :]):
        return False
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # any failure means "no usable engine": fall back to the local broker
        return False


def _container_env(port: int, host: str) -> dict[str, str]:
    """KAFKA_* variables for apache/kafka: the local broker's tuning, the container's listeners."""
    props = kafka_local.LocalBroker("/unused", port=port, host=host).properties()
    for key in ("log.dirs", "listeners", "controller.quorum.voters"):
        props.pop(key)
    props["listeners"] = f"PLAINTEXT://0.0.0.0:{port},CONTROLLER://localhost:9093"
    props["controller.quorum.voters"] = "1@localhost:9093"
    # The image's rule: "_" -> "__", "-" -> "___", then "." -> "_", upper case, prefix KAFKA_.
    env = {}
    for key, value in props.items():
        name = key.replace("_", "__").replace("-", "___").replace(".", "_").upper()
        env[f"KAFKA_{name}"] = value
    return env


def _start_container() -> tuple[str, Callable[[], None]]:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    docker_host = os.environ.get("DOCKER_HOST", "")
    host = urlparse(docker_host).hostname if docker_host.startswith("tcp://") else "127.0.0.1"
    # The advertised address must be the one clients use, so the host port equals the container port.
    port = kafka_local.free_port()
    container = DockerContainer(f"apache/kafka:{kafka_local.kafka_version()}")
    container.with_bind_ports(port, port)
    for name, value in _container_env(port, host).items():
        container.with_env(name, value)
    container.start()
    try:
        wait_for_logs(container, kafka_local.READY_LINE, timeout=120)
        bootstrap = f"{host}:{port}"
        if not kafka_local.admin_ready(bootstrap, timeout=60):
            raise RuntimeError(f"the apache/kafka container does not answer on {bootstrap}")
    except BaseException:
        container.stop()
        raise
    return bootstrap, container.stop


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """The session's broker (see the module docstring for where it comes from)."""
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield Broker(os.environ["KAFKA_BOOTSTRAP"], "env")
        return
    if _docker_answers():
        bootstrap, stop = _start_container()
        try:
            yield Broker(bootstrap, "container")
        finally:
            stop()
        return
    try:
        kafka_local.find_java()
    except kafka_local.BrokerError as err:
        pytest.skip(f"no Kafka broker: KAFKA_BOOTSTRAP unset, no Docker, and {err}")
    if not kafka_local.jars_dir().is_dir() and shutil.which("mvn") is None:
        pytest.skip(
            "no Kafka broker: KAFKA_BOOTSTRAP unset, no Docker, no cached jars and no `mvn` to fetch them"
        )
    broker = kafka_local.LocalBroker(
        tmp_path_factory.mktemp("kafka"), port=kafka_local.free_port(count=2), die_with_parent=True
    )
    broker.start()
    try:
        yield Broker(broker.bootstrap, "local", broker)
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: Broker) -> str:
    """``host:port`` of the session's real Kafka broker."""
    return kafka_broker.bootstrap


@pytest.fixture
def local_broker(kafka_broker: Broker) -> Iterator[kafka_local.LocalBroker]:
    """The broker process itself, for tests that stop and restart it (same port, same data)."""
    if kafka_broker.local is None:
        pytest.skip(f"the broker came from {kafka_broker.source}, not started here: cannot stop/start it")
    yield kafka_broker.local
    kafka_broker.local.start()  # a no-op when the test left it running


@pytest.fixture
def new_topic(kafka_bootstrap: str, kafka_broker: Broker) -> Iterator[Callable[..., str]]:
    """Factory: ``new_topic(prefix, partitions=1, config=None)`` creates a fresh topic, returns its name."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=10000)
    created: list[str] = []

    def make(name_prefix: str, partitions: int = 1, config: dict[str, str] | None = None) -> str:
        name = f"{name_prefix}-{uuid.uuid4().hex[:8]}"
        topic = NewTopic(name, num_partitions=partitions, replication_factor=1, topic_configs=config or {})
        admin.create_topics([topic], wait_for_metadata=True)
        created.append(name)
        return name

    yield make
    try:
        if kafka_broker.local is not None:
            kafka_broker.local.start()  # a fault test may have left it down; deleting needs it up
        if created:
            admin.delete_topics(created, timeout_ms=5000, raise_errors=False)
    except Exception:  # best effort: a broker a fault test left down must not fail the test
        pass
    finally:
        admin.close()


@pytest.fixture(autouse=True)
def _no_service_outlives_its_test() -> Iterator[None]:
    """A test that fails before stopping its service children must not leave them running."""
    yield
    from tests.service_helpers import kill_leftovers

    kill_leftovers()
