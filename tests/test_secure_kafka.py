"""streamrec against a secured Kafka: the local broker in SASL_SSL mode, as a managed cluster is.

The broker is real (``streamrec kafka up --security sasl_ssl``: TLS with a self-signed CA,
SCRAM-SHA-512, no plain listener). Every client of the project connects with the same flags;
wrong credentials, a missing CA and a client that skips TLS each get one clear line, and the
password never shows up in what the project prints or writes.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer
from service_helpers import ServiceProcess, wait_for

from contract.connection import KafkaConnection
from producer.sink import KafkaSink
from producer.synth import synth_events
from streamrec import kafka_local
from streamrec.cli import main

pytestmark = pytest.mark.kafka

USER = "streamrec-test"
PASSWORD = "s3cret-Pa55word-nobody-guesses"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kafka_local.LocalBroker]:
    """A local broker with only a SASL_SSL client listener, for this module."""
    try:
        kafka_local.find_java()
    except kafka_local.BrokerError as err:
        pytest.skip(f"no Java for the local broker: {err}")
    folder = tmp_path_factory.mktemp("kafka-secure")
    broker = kafka_local.LocalBroker(
        folder / "broker",
        port=kafka_local.free_port(count=2),
        security="sasl_ssl",
        user=USER,
        password=PASSWORD,
        die_with_parent=True,
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "password"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


def secure_flags(broker: kafka_local.LocalBroker, password_file: Path) -> list[str]:
    return [
        "--bootstrap-servers", broker.bootstrap,
        "--security-protocol", "SASL_SSL",
        "--sasl-mechanism", "SCRAM-SHA-512",
        "--sasl-username", USER,
        "--sasl-password-file", str(password_file),
        "--ssl-cafile", str(broker.ca_path),
    ]  # fmt: skip


def connection(broker: kafka_local.LocalBroker, **changes: str) -> KafkaConnection:
    settings = {
        "bootstrap_servers": broker.bootstrap,
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": USER,
        "sasl_password": PASSWORD,
        "ssl_cafile": str(broker.ca_path),
    }
    return KafkaConnection(**(settings | changes))


def read_topic(conn: KafkaConnection, topic: str, expect: int) -> list:
    consumer = KafkaConsumer(
        topic,
        **conn.client_options(),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=2000,
    )
    records = []
    for _ in range(30):
        records.extend(consumer)
        if len(records) >= expect:
            break
    consumer.close()
    return records


def test_kafka_up_secured_prints_the_ca_and_the_bootstrap_last(secured, password_file, capsys):
    argv = ["kafka", "up", "--data-dir", str(secured.data_dir), "--security", "sasl_ssl"]
    assert main([*argv, "--user", USER, "--password-file", str(password_file)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == secured.bootstrap
    assert f"ca: {secured.ca_path}" in lines
    assert secured.ca_path.read_text().startswith("-----BEGIN CERTIFICATE-----")


def test_the_secured_broker_has_no_plain_listener(secured):
    props = secured.properties()
    assert "PLAINTEXT://" not in props["listeners"].replace("CONTROLLER://", "")
    assert props["advertised.listeners"].startswith("SASL_SSL://")


def test_produce_and_recs_work_over_sasl_ssl(secured, password_file, capsys):
    topic = "secure-events"
    argv = ["produce", "synth", "--events", "50", "--viewers", "5", "--videos", "20", "--topic", topic]
    assert main([*argv, *secure_flags(secured, password_file)]) == 0
    assert "sent 50 events" in capsys.readouterr().out
    records = read_topic(connection(secured), topic, expect=50)
    assert len(records) == 50
    # recs reads the same way (here: a topic of events, which it says are not lists).
    code = main(["recs", "--topic", topic, *secure_flags(secured, password_file)])
    captured = capsys.readouterr()
    assert code == 0 and "not recommendation lists" in captured.err


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def test_a_wrong_password_is_one_clear_line(secured, tmp_path, capsys):
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password")
    flags = secure_flags(secured, wrong)
    argv = ["produce", "send", "--viewer", "a", "--video", "b", "--topic", "t", "--connect-timeout", "3"]
    assert main([*argv, *flags]) == 2
    err = one_line_error(capsys)
    assert f"user {USER}" in err and secured.bootstrap in err
    assert "authentication failed" in err or "closed the connection while" in err
    assert "not-the-password" not in err


def test_a_client_that_skips_tls_cannot_connect(secured, capsys):
    argv = ["produce", "send", "--viewer", "a", "--video", "b", "--topic", "t", "--connect-timeout", "3"]
    assert main([*argv, "--bootstrap-servers", secured.bootstrap]) == 2
    err = one_line_error(capsys)
    assert "closed the connection" in err and "--security-protocol is PLAINTEXT" in err


def test_an_untrusted_certificate_is_one_clear_line(secured, password_file, capsys):
    flags = secure_flags(secured, password_file)
    flags = flags[: flags.index("--ssl-cafile")]  # trust only the system's CAs
    argv = ["produce", "send", "--viewer", "a", "--video", "b", "--topic", "t", "--connect-timeout", "3"]
    assert main([*argv, *flags]) == 2
    assert "certificate verify failed" in one_line_error(capsys)


@pytest.mark.parametrize("flag", ["--sasl-password", "--sasl-pass"])
def test_the_password_is_never_a_flag(flag, capsys):
    with pytest.raises(SystemExit):
        main(["produce", "send", "--viewer", "a", "--video", "b", flag, PASSWORD])
    err = capsys.readouterr().err
    assert PASSWORD not in err
    assert "STREAMREC_SASL_PASSWORD" in err or "ambiguous option" in err


def test_the_port_refuses_plain_kafka_but_speaks_tls(secured):
    # Below the clients: the listener's first bytes are a TLS handshake, not Kafka's protocol.
    import ssl

    context = ssl.create_default_context(cafile=str(secured.ca_path))
    with (
        socket.create_connection((secured.host, secured.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=secured.host) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


# -- the service ------------------------------------------------------------------------------


def secure_topics(broker: kafka_local.LocalBroker, prefix: str) -> dict[str, str]:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    names = {
        "input_topic": f"{prefix}-watch",
        "output_topic": f"{prefix}-recs",
        "dlq_topic": f"{prefix}-dlq",
    }
    admin = KafkaAdminClient(**connection(broker).client_options())
    admin.create_topics([NewTopic(names["input_topic"], 2, 1)])
    admin.close()
    return names


def service_flags(broker: kafka_local.LocalBroker, password_file: Path) -> list[str]:
    flags = secure_flags(broker, password_file)
    return flags[2:]  # ServiceProcess gives --bootstrap-servers itself


def test_the_service_learns_and_publishes_over_sasl_ssl_and_never_writes_the_password(
    secured, password_file, tmp_path
):
    names = secure_topics(secured, "svc")
    events = list(synth_events(viewers=40, videos=150, events=800, seed=3))
    sink = KafkaSink(connection(secured), names["input_topic"], partitions=None)
    for e in events:
        sink.send(e)
    assert sink.close().acked == len(events)
    checkpoints = tmp_path / "checkpoints"
    service = ServiceProcess(
        secured.bootstrap,
        names,
        group="secure-group",
        checkpoints=checkpoints,
        log=tmp_path / "service.log",
        extra=[*service_flags(secured, password_file), "--log-level", "DEBUG"],
    )
    try:
        assert wait_for(lambda: (service.model_events() or 0) >= len(events)), service.log()[-3000:]
    finally:
        assert service.stop() == 0
    lists = read_topic(connection(secured), names["output_topic"], expect=1)
    viewers = {orjson.loads(r.value)["viewer"] for r in lists}
    assert viewers == {e.viewer for e in events}
    # Nothing the service printed or wrote holds the password, in any encoding we would use.
    written = [tmp_path / "service.log", *(p for p in checkpoints.rglob("*") if p.is_file())]
    assert len(written) > 2, "the service wrote no checkpoint"
    for path in written:
        data = path.read_bytes()
        assert PASSWORD.encode() not in data, f"{path} holds the password"
    assert "SASL_SSL" in service.log()  # the connection was logged, without its secret


def test_a_service_with_a_wrong_password_says_so_and_keeps_retrying(secured, tmp_path, monkeypatch):
    names = {"input_topic": "wrong-pw-watch", "output_topic": "wrong-pw-recs", "dlq_topic": "wrong-pw-dlq"}
    monkeypatch.setenv("STREAMREC_SASL_PASSWORD", "definitely-wrong-password")
    flags = secure_flags(secured, Path("unused"))
    at = flags.index("--sasl-password-file")
    flags = flags[2:at] + flags[at + 2 :]  # the password comes from the environment here
    service = ServiceProcess(
        secured.bootstrap, names, group="wrong-pw", checkpoints=tmp_path / "c", log=tmp_path / "s.log",
        extra=flags,
    )  # fmt: skip
    try:
        refused = f"authentication failed for user {USER}"

        def retried_twice() -> bool:
            log = service.log()
            return log.count("Kafka unreachable; retrying") >= 2 and (
                refused in log or "closed the connection while" in log
            )

        assert wait_for(retried_twice, timeout=60), service.log()[-3000:]
        assert service.alive, "the service gave up instead of retrying"
    finally:
        assert service.stop() == 0
    log = service.log()
    assert "Traceback" not in log
    assert "definitely-wrong-password" not in log


def test_metrics_can_be_served_over_https_on_a_chosen_address(secured):
    import ssl
    import urllib.request

    from prometheus_client import CollectorRegistry, Counter

    from consumer.metrics import start_http_server

    registry = CollectorRegistry()
    Counter("streamrec_demo_total", "a counter", registry=registry).inc(3)
    pem = str(secured.keystore_path)  # the broker's key and certificate, signed by its CA
    server, port = start_http_server(0, "127.0.0.1", registry, certfile=pem, keyfile=pem)
    try:
        context = ssl.create_default_context(cafile=str(secured.ca_path))
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=context, timeout=5) as r:
            assert "streamrec_demo_total 3.0" in r.read().decode()
        with pytest.raises(OSError):  # plain HTTP gets no metrics from a TLS endpoint
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        server.shutdown()


def test_a_reason_left_by_an_earlier_client_is_not_taken_for_a_later_one(secured, capsys):
    # A client that skipped TLS leaves "socket disconnected" behind; the next command, against
    # a port where nothing listens, must say that no broker answered, not blame TLS.
    skip_tls = ["produce", "send", "--viewer", "a", "--video", "b", "--topic", "t", "--connect-timeout", "2"]
    assert main([*skip_tls, "--bootstrap-servers", secured.bootstrap]) == 2
    assert "closed the connection" in one_line_error(capsys)
    assert main([*skip_tls, "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert "no Kafka broker answered at 127.0.0.1:1" in one_line_error(capsys)
