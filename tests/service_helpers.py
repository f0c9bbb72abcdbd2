"""Helpers for tests that run the service as real processes against a real broker.

Nothing here fakes Kafka: events go to real topics, the service runs as ``python -m consumer``
(so ``kill -9`` is a real kill), and what it learned is read from its ``/metrics`` endpoint and
from the manifests of the checkpoints it wrote.

>>> parse_metrics("# HELP x y\\n# TYPE x gauge\\nx 3.0\\nc_total{reason=\\"a\\"} 2.0\\n")
{'x': 3.0, 'c_total{reason="a"}': 2.0}

"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.serializer import Serializer

from consumer.config import ServiceConfig, worker_count
from contract.events import WatchEvent
from model.base import ModelStats, Ranking, Recommendation, StreamRanker
from streamrec.kafka_local import free_port

__all__ = [
    "REPO",
    "ML100K",
    "ContractOnly",
    "ContractOnlyModel",
    "ContractOnlyShadow",
    "ServiceProcess",
    "end_offsets",
    "latest_manifest",
    "parse_metrics",
    "produce",
    "read_all",
    "replay_events",
    "topics",
    "wait_for",
]

REPO = Path(__file__).resolve().parents[1]
ML100K = Path(os.environ.get("STREAMREC_ML100K", REPO.parent / "shared" / "data" / "ml-100k" / "u.data"))


def replay_events(n: int, seed: int = 0) -> tuple[list[WatchEvent], str]:
    """The first ``n`` ML-100K events in time order, or a seeded synthetic stream when it is absent.

    Returns the events and where they came from (for messages).
    """
    if ML100K.exists():
        from producer.readers import read_events

        return read_events(ML100K)[:n], "ml-100k"
    from producer.synth import synth_events

    return list(synth_events(viewers=300, videos=800, events=n, seed=seed)), "synthetic"


def topics(new_topic: Callable[..., str], partitions: int = 1) -> dict[str, str]:
    """Fresh input, output and dead-letter topics, named as ``ServiceConfig`` fields."""
    return {
        "input_topic": new_topic("watch", partitions),
        "output_topic": new_topic("recs"),
        "dlq_topic": new_topic("dlq"),
    }


def update_topic(names: dict[str, str], group: str) -> str:
    """The update topic the service names for ``group`` reading ``names``' input topic."""
    return ServiceConfig(input_topic=names["input_topic"], group_id=group).sync_topic_name


def changelog_topic(names: dict[str, str], group: str) -> str:
    """The viewer-state changelog the service names for ``group`` reading ``names``' input."""
    return ServiceConfig(
        input_topic=names["input_topic"], group_id=group, changelog_topic="on"
    ).changelog_topic_name


_NULL = object()


class _Raw(Serializer):
    """Bytes as they are, and ``_NULL`` as a null value."""

    def serialize(self, topic: str, headers: list, data: object) -> bytes | None:
        return None if data is _NULL else data


def produce(
    bootstrap: str, topic: str, values: Iterable[tuple[bytes | None, bytes | None]], **options
) -> int:
    """Send ``(key, value)`` pairs, wait for every acknowledgement; returns how many were sent.

    A ``None`` value is sent as a null value even with a ``None`` key (a record other clients
    can write; kafka-python's ``send`` refuses both null unless a serializer makes the null).
    """
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, value_serializer=_Raw(), **options
    )
    futures = [
        producer.send(topic, key=key, value=_NULL if value is None else value) for key, value in values
    ]
    producer.flush()
    producer.close()
    for f in futures:
        f.get(timeout=0)  # raises if a send failed: a test must know what it really produced
    return len(futures)


def read_all(bootstrap: str, topic: str, expect: int, timeout: float = 60.0) -> list:
    """Every record of ``topic`` once at least ``expect`` are there (or the timeout passes)."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        consumer_timeout_ms=1000,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    records: list = []
    deadline = time.monotonic() + timeout
    while len(records) < expect and time.monotonic() < deadline:
        records.extend(consumer)
    consumer.close()
    return records


def end_offsets(bootstrap: str, topic: str) -> int:
    """How many records ``topic`` holds, summed over its partitions (its end offsets)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return sum(ends.values())
    finally:
        consumer.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 90.0, interval: float = 0.2) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition to ``{"name{labels}": value}`` (comments skipped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        out[name] = float(value)
    return out


def latest_manifest(checkpoints: Path, worker: str = "*") -> dict:
    """The manifest of the newest checkpoint of ``worker`` (any worker by default)."""
    folders = sorted(checkpoints.glob(f"{worker}/ckpt-*"))
    assert folders, f"no checkpoint was written under {checkpoints}/{worker}"
    return orjson.loads((folders[-1] / "MANIFEST.json").read_bytes())


#: Every service child started by a test: one a failed test left running is killed after it
#: (see ``kill_leftovers``), or it would go on loading the machine and the broker for the rest
#: of the run, and spin once its topics are deleted.
_RUNNING: weakref.WeakSet = weakref.WeakSet()


@contextlib.contextmanager
def in_thread(service) -> Iterator:
    """Run ``service`` (a StreamrecService) in a thread for the ``with`` block, then stop it;
    a service thread that died fails the test, and ``service.failed`` says why meanwhile."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            service.run()
        except BaseException as err:  # a dead service thread must fail the test, loudly
            failed.append(err)
            raise

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    service.failed = failed
    try:
        yield service
    finally:
        service.stop()
        thread.join(60)
    assert not failed, failed


def kill_leftovers() -> int:
    """Kill -9 the service children still running; how many there were."""
    left = [p for p in list(_RUNNING) if p.alive]
    for service in left:
        service.kill()
    _RUNNING.clear()
    return len(left)


class ServiceProcess:
    """``python -m consumer`` as a child process with its own metrics port and a log file.

    The log goes to a file, not a pipe: a long run logs more than a pipe buffers, and a child
    blocked on a full pipe would look like a hung service.
    """

    def __init__(
        self,
        bootstrap: str,
        names: dict[str, str],
        group: str,
        checkpoints: Path,
        log: Path,
        worker: str = "",
        extra: Sequence[str] = (),
    ) -> None:
        # ``--workers N`` serves /metrics on N ports in a row: all free, or the set stops.
        workers = int(extra[list(extra).index("--workers") + 1]) if "--workers" in extra else 1
        self.metrics_port = free_port(count=worker_count(workers))
        self.log_path = log
        args = [
            sys.executable,
            "-m",
            "consumer",
            "--bootstrap-servers",
            bootstrap,
            "--input-topic",
            names["input_topic"],
            "--output-topic",
            names["output_topic"],
            "--dlq-topic",
            names["dlq_topic"],
            "--group-id",
            group,
            "--metrics-port",
            str(self.metrics_port),
            "--checkpoint-dir",
            str(checkpoints),
            *(["--worker-id", worker] if worker else []),
            *extra,
        ]
        self._log = open(log, "ab")  # noqa: SIM115 - closed in wait()/kill()
        self.proc = subprocess.Popen(args, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)
        _RUNNING.add(self)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def metrics(self) -> dict[str, float] | None:
        """The current /metrics sample values, or ``None`` while the endpoint is not up."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
                return parse_metrics(r.read().decode())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def gauge(self, name: str) -> float | None:
        found = self.metrics()
        return None if found is None else found.get(name)

    def model_events(self) -> int | None:
        """``streamrec_model_events``: events learned into the model state, across restarts."""
        value = self.gauge("streamrec_model_events")
        return None if value is None else int(value)

    def kill(self) -> None:
        """``kill -9``: no handler runs, nothing is flushed or checkpointed."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._log.close()

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful: finish the batch, checkpoint, commit) and wait; the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class ContractOnly(StreamRanker):
    """A real model (``inner``) reachable only through the :class:`~model.base.StreamRanker` contract.

    Whatever else the service reaches for (a model's own attributes, with or without a default:
    ``getattr(model, "n_viewers", 0)``, ``hasattr(model, "save")``) fails the test with an
    ``AssertionError``, which neither ``getattr`` nor ``hasattr`` swallows.
    """

    inner: type[StreamRanker]

    def __init__(self) -> None:
        self._model = self.inner()
        self.viewer_ttl = self._model.viewer_ttl

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise AssertionError(f"the service reached for {name!r}, which is not in the model contract")

    # -- what a service needs
    def stats(self) -> ModelStats:
        return self._model.stats()

    @property
    def clock(self) -> float | None:
        return self._model.clock

    def video_counts(self):
        return self._model.video_counts()

    def state_parts(self) -> dict:
        return self._model.state_parts()

    def save(self, path) -> None:
        self._model.save(path)

    @classmethod
    def load(cls, path):
        wrapper = cls()
        wrapper._model = cls.inner.load(path)
        wrapper.viewer_ttl = wrapper._model.viewer_ttl
        return wrapper

    # -- the batched paths
    def learn_many(self, events) -> None:
        self._model.learn_many(events)

    def rank_events(self, events, n: int = 10) -> Ranking:
        return self._model.rank_events(events, n)

    def rank_and_learn(self, events, n: int = 10) -> Ranking:
        return self._model.rank_and_learn(events, n)

    def recommend_many(self, viewers, n: int = 10, exclude_seen: bool = True) -> list[Recommendation]:
        return self._model.recommend_many(viewers, n, exclude_seen)

    def score_videos(self, viewer, videos):
        return self._model.score_videos(viewer, videos)


def _contract_only(cls: type[StreamRanker]) -> type[ContractOnly]:
    return type(f"ContractOnly{cls.__name__}", (ContractOnly,), {"inner": cls, "name": cls.name})


def _registered(name: str) -> type[StreamRanker]:
    from model.registry import model_class

    return model_class(name)


#: The served model and the service's shadow, each behind :class:`ContractOnly`.
ContractOnlyModel = _contract_only(_registered("streamrec"))
ContractOnlyShadow = _contract_only(_registered("recent_popular"))


def on_machine(
    bootstrap: str, names: dict[str, str], group: str, folder: Path, worker: str, options: list[str]
) -> ServiceProcess:
    """One ``streamrec serve`` as on a machine of its own: its checkpoints in ``folder`` (no other
    worker's), its log beside it; ``worker`` is its --worker-id (``""``: none given)."""
    return ServiceProcess(bootstrap, names, group, folder, folder.with_suffix(".log"), worker, options)
