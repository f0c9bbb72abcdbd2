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

import pytest
from kafka import KafkaConsumer

from contract.connection import KafkaConnection
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
        port=kafka_local.free_port(pair=True),
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
