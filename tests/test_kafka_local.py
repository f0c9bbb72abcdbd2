"""The local Kafka broker and its command, against the real broker the session fixtures provide."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from streamrec import kafka_local
from streamrec.commands.kafka import EXIT_DOWN


def streamrec(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the real command line in a child process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "streamrec", *args], capture_output=True, text=True, env=env, timeout=180
    )


def consume_all(bootstrap: str, topic: str, **config) -> list[tuple[bytes | None, bytes]]:
    """Every (key, value) of ``topic`` from the start, reading until the end of the topic."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, **config
    )
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(partitions)
        end = consumer.end_offsets(partitions)
        out = []
        # Under read_committed, end_offsets is the last stable offset: stop when every partition is there.
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            for records in consumer.poll(timeout_ms=1000).values():
                out += [(r.key, r.value) for r in records]
        return out
    finally:
        consumer.close()


def test_produce_then_consume_roundtrip(kafka_bootstrap: str, new_topic) -> None:
    topic = new_topic("roundtrip", partitions=2)
    sent = [(f"viewer-{i % 3}".encode(), f"event-{i}".encode()) for i in range(30)]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for key, value in sent:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()

    got = consume_all(kafka_bootstrap, topic)

    assert sorted(got) == sorted(sent)
    # Keyed messages keep their order per key (one key, one partition).
    for key in {k for k, _ in sent}:
        assert [v for k, v in got if k == key] == [v for k, v in sent if k == key]


def test_transactional_producer_commits_offsets_and_hides_aborted(kafka_bootstrap: str, new_topic) -> None:
    """The exactly-once path of kafka-python (KIP-447) works against this broker."""
    source, sink, group = new_topic("tx-in"), new_topic("tx-out"), f"tx-group-{os.getpid()}"
    plain = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for i in range(4):
        plain.send(source, key=b"v1", value=f"e{i}".encode())
    plain.close()
    consumer = KafkaConsumer(
        source,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    tx = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"{sink}-tx")
    try:
        batch = []
        while len(batch) < 4:
            for records in consumer.poll(timeout_ms=1000).values():
                batch += records
        tx.init_transactions()

        tx.begin_transaction()
        for record in batch:
            tx.send(sink, key=record.key, value=b"rec-" + record.value)
        tp = TopicPartition(source, 0)
        tx.send_offsets_to_transaction(
            {tp: OffsetAndMetadata(batch[-1].offset + 1, "", -1)}, consumer.group_metadata()
        )
        tx.commit_transaction()

        tx.begin_transaction()
        tx.send(sink, key=b"v1", value=b"never-seen")
        tx.flush()
        tx.abort_transaction()

        committed_values = [
            v for _, v in consume_all(kafka_bootstrap, sink, isolation_level="read_committed")
        ]
        all_values = [v for _, v in consume_all(kafka_bootstrap, sink, isolation_level="read_uncommitted")]
        assert committed_values == [b"rec-e0", b"rec-e1", b"rec-e2", b"rec-e3"]
        assert b"never-seen" in all_values  # it was written, and read_committed hid it
        assert consumer.committed(tp) == 4  # the input offsets committed with the transaction
    finally:
        tx.close()
        consumer.close()


def test_up_status_down_are_idempotent_and_keep_data(
    local_broker: kafka_local.LocalBroker, new_topic
) -> None:
    topic = new_topic("survives-restart")
    producer = KafkaProducer(bootstrap_servers=local_broker.bootstrap)
    producer.send(topic, value=b"before-restart").get(timeout=30)
    producer.close()
    data, port = str(local_broker.data_dir), str(local_broker.port)
    pid = local_broker.running_pid()

    up = streamrec("kafka", "up", "--data-dir", data)
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip().splitlines()[-1] == local_broker.bootstrap
    assert local_broker.running_pid() == pid  # reused, not a second broker
    assert streamrec("kafka", "status", "--data-dir", data).returncode == 0

    assert streamrec("kafka", "down", "--data-dir", data).returncode == 0
    assert local_broker.running_pid() is None
    assert streamrec("kafka", "status", "--data-dir", data).returncode == EXIT_DOWN
    assert streamrec("kafka", "down", "--data-dir", data).returncode == 0

    again = streamrec("kafka", "up", "--data-dir", data, "--port", port)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == local_broker.bootstrap
    assert consume_all(local_broker.bootstrap, topic) == [(None, b"before-restart")]


@pytest.mark.slow
def test_down_wipe_leaves_the_next_broker_empty(tmp_path: Path) -> None:
    """A broker of its own (wiping the session's would take the other tests' topics with it)."""
    data, port = str(tmp_path / "kafka"), str(kafka_local.free_port(count=2))
    up = streamrec("kafka", "up", "--data-dir", data, "--port", port)
    assert up.returncode == 0, up.stderr
    bootstrap = up.stdout.strip().splitlines()[-1]
    try:
        producer = KafkaProducer(bootstrap_servers=bootstrap)
        producer.send("made-before-the-wipe", value=b"x").get(timeout=30)
        producer.close()
        down = streamrec("kafka", "down", "--data-dir", data, "--wipe")
        assert down.returncode == 0, down.stderr
        assert "deleted its topics" in down.stdout
        assert streamrec("kafka", "status", "--data-dir", data).returncode == EXIT_DOWN
        again = streamrec("kafka", "up", "--data-dir", data, "--port", port)
        assert again.returncode == 0, again.stderr
        consumer = KafkaConsumer(bootstrap_servers=bootstrap)
        try:
            assert "made-before-the-wipe" not in consumer.topics()
        finally:
            consumer.close()
    finally:
        streamrec("kafka", "down", "--data-dir", data)


def test_up_without_java_says_so(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env.update(PATH=str(tmp_path), STREAMREC_HOME=str(tmp_path / "home"))

    done = streamrec("kafka", "up", "--port", str(kafka_local.free_port()), env=env)

    assert done.returncode == 2
    assert "Java" in done.stderr and "install" in done.stderr
    assert not (tmp_path / "home" / "kafka" / "broker.json").exists()


def test_status_of_a_folder_without_broker_is_down(tmp_path: Path) -> None:
    done = streamrec("kafka", "status", "--data-dir", str(tmp_path))
    assert done.returncode == EXIT_DOWN
    assert "down" in done.stdout


def test_a_folder_asked_in_another_mode_or_with_another_password_says_so_at_once(tmp_path: Path) -> None:
    """A SASL_SSL folder asked about as plaintext, or started with a password other than the
    one it was formatted with, answered nothing: a wait of up to two minutes, then 'does not
    answer'. The folder's record of its mode (and a salted hash of the password) says why."""
    formatted = kafka_local.LocalBroker(tmp_path, security="sasl_ssl", user="rev", password="right-one")
    formatted.log_dirs.mkdir(parents=True)
    (formatted.log_dirs / "meta.properties").write_text("formatted\n")
    marker = {
        "security": "sasl_ssl",
        "user": "rev",
        "password_check": kafka_local._password_check("right-one"),
    }
    formatted.security_marker.write_text(json.dumps(marker))
    assert "right-one" not in formatted.security_marker.read_text()

    formatted._check_security_mode()  # the same mode, user and password
    with pytest.raises(kafka_local.BrokerError, match="pass --security sasl_ssl --user rev to use it"):
        kafka_local.LocalBroker(tmp_path)._check_security_mode()
    other = kafka_local.LocalBroker(tmp_path, security="sasl_ssl", user="rev", password="another")
    with pytest.raises(kafka_local.BrokerError, match="knows user rev by another password"):
        other._check_security_mode()


@pytest.mark.parametrize("port", ["0", "65535", "http"])
def test_a_port_the_broker_cannot_listen_on_is_a_usage_error(tmp_path: Path, port: str) -> None:
    done = streamrec("kafka", "up", "--data-dir", str(tmp_path), "--port", port)
    assert (
        done.returncode == 2 and "argument --port: expected" in done.stderr and "Traceback" not in done.stderr
    )


def test_installed_without_the_repository_kafka_up_says_it_needs_a_checkout(
    tmp_path: Path, monkeypatch
) -> None:
    """``pip install .`` leaves deploy/ behind: ``kafka up`` said so with a FileNotFoundError traceback."""
    monkeypatch.setattr(kafka_local, "POM", tmp_path / "site-packages" / "deploy" / "kafka" / "pom.xml")
    with pytest.raises(kafka_local.BrokerError, match="runs from a source checkout of streamrec"):
        kafka_local.LocalBroker(tmp_path / "data", port=kafka_local.free_port(count=2)).start(timeout=5)


def test_free_ports_stay_out_of_the_way_of_outgoing_connections() -> None:
    """A broker stopped and started on its port again must find it free: the ports handed out lie
    below the kernel's range for outgoing connections, each run of them bindable, none twice."""
    import socket

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    firsts = [kafka_local.free_port(count=3) for _ in range(20)]
    ports = [first + i for first in firsts for i in range(3)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= port < low for port in ports)
    for port in ports[:6]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
