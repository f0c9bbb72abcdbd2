"""The service's one typed configuration, read from flags and environment variables in one place.

Every setting has a default, a flag and an environment variable ``STREAMREC_<NAME>``; a flag
beats the environment, which beats the default. Values are validated when the config is
built, so a bad value fails at start-up with a message naming the setting. How to reach a
secured cluster (TLS, SASL) is :class:`contract.connection.KafkaConnection`, the same flags and
variables as every other command; the SASL password is read from ``STREAMREC_SASL_PASSWORD`` or
``--sasl-password-file``, never from a flag, and never shown (``describe()``).

Batch sizes follow the load, within three settings (the whole story is in :mod:`consumer.app`):

* ``max_batch_events`` (256): the most events scored, learned and published as one batch. A
  caught-up service takes what has arrived, a few events, and answers them at once; a service
  that is behind learns full batches. 256 is ``streamrec evaluate``'s batch, so the live
  quality is measured as offline;
* ``poll_budget_ms`` (100): one poll takes no more events than the service processes in this
  time, by its measured cost per event and per commit, so an event that arrives while a poll is
  processed waits about this long for its turn, however far behind the service is;
* ``max_poll_records`` (4000): the most events of one poll whatever the budget says. A poll's
  batches are published as they are made; its offsets are committed once, when every list is
  acknowledged, so a larger poll spreads the cost of a commit over more events.

>>> cfg = ServiceConfig.from_args(["--input-topic", "views", "--top-n", "5"], environ={})
>>> cfg.input_topic, cfg.top_n, cfg.output_topic
('views', 5, 'recommendations')
>>> ServiceConfig.from_args([], environ={"STREAMREC_TOP_N": "0"})
Traceback (most recent call last):
...
consumer.config.ConfigError: top_n must be between 1 and 1000, got 0

"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from consumer.arms import LEARN_FROM, ArmSpec, parse_arms
from contract.connection import ConnectionSettingsError, KafkaConnection, add_connection_arguments
from contract.defaults import DEFAULT_BOOTSTRAP, DLQ_TOPIC, INPUT_TOPIC, OUTPUT_TOPIC

__all__ = [
    "ServiceConfig",
    "ConfigError",
    "add_arguments",
    "COMPRESSIONS",
    "LISTS_PER",
    "OUTPUT_COMPRESSION",
    "SYNC_PRECISIONS",
    "SYNC_AUTO",
    "SYNC_EVERY",
    "DEFAULT_MODEL",
]

#: When a backlog's lists are made (``lists_per``; :mod:`consumer.coalesce`).
LISTS_PER = ("auto", "poll", "batch")

#: Codecs of the output topics (kafka-python's ``compression_type``; ``none`` is no codec).
COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")
#: The default output codec. bench/e2e.py, 40,000 events, each codec twice (one run each way
#: round): bytes a list on the broker's disk none 616, snappy 216, lz4 198, zstd 137, gzip 136;
#: service events/s none 10.3-10.4k, gzip 10.3-12.1k, snappy 10.9-12.9k, zstd 11.0-12.3k, lz4
#: 12.1-12.7k (the spread is the shared machine's). zstd: gzip's size at a twentieth of its
#: CPU (compressing 2,000 lists: 1.7 us a list, gzip 37, lz4 0.9), with no measurable cost to
#: the service. Every Kafka client since 2018 (Kafka 2.1) reads it.
OUTPUT_COMPRESSION = "zstd"
#: How the vector tables' changes travel on the update topic (``model.replica.PRECISIONS``).
#: int16 is the default: on ML-100K and the synthetic stream (``bench/sync_cost.py``) a send is
#: 38% smaller than float32 at the same HR@10 (to 0.0002), and each row's rounding is at most
#: 1/65,534 of its largest change; int8 halves the vectors again (59% smaller than float32),
#: also at the same HR@10 there.
SYNC_PRECISIONS = ("float32", "int16", "int8")
SYNC_PRECISION = "int16"
#: ``sync_every`` left to the service (``--sync-every auto``, the default): one model over the
#: group for the workers of ``--workers N`` (N other than 1) serving the default model, sending
#: every :data:`SYNC_EVERY` events; off for a lone worker, whose exchange would cost it a third
#: of its events/s with nobody to hear it (ML-100K: 0.62-0.74x, 1.4-1.6x the CPU per event,
#: the changelog on or off; ``bench/group.py --runs 1,1s``).
SYNC_AUTO = -1
#: What ``auto`` sends every, when on: within 0.002 of one worker's HR@10 with 2 and 4 workers on
#: MovieLens (docs/scaling.md), where every 4,096 events lost 0.004 to 0.025.
SYNC_EVERY = 1024
#: The model the group can share (:class:`model.replica.ReplicatedRanker` is its replica).
DEFAULT_MODEL = "streamrec"


class ConfigError(ValueError):
    """A setting with a value the service cannot run with."""


@dataclass(frozen=True)
class ServiceConfig:
    """Settings of ``streamrec serve``. Field names are the flag names with ``-`` for ``_``."""

    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    input_topic: str = INPUT_TOPIC
    output_topic: str = OUTPUT_TOPIC
    dlq_topic: str = DLQ_TOPIC
    group_id: str = "streamrec"
    metrics_port: int = 8000
    #: Address the /metrics endpoint binds to ("127.0.0.1": this machine only).
    metrics_address: str = "0.0.0.0"
    #: With both: /metrics is served over HTTPS with this certificate and key (PEM).
    metrics_certfile: str = ""
    metrics_keyfile: str = ""
    #: Where a new consumer group starts: "earliest" learns the history already in the topic.
    auto_offset_reset: str = "earliest"
    top_n: int = 10
    #: The model to serve, by registry name.
    model: str = DEFAULT_MODEL
    #: Settings of a fresh model, ``key=value[,key=value]`` (values read as JSON); a model
    #: restored from a checkpoint keeps the settings it was saved with.
    model_settings: str = ""
    #: A live experiment (see :mod:`consumer.arms`): ``NAME=MODEL[,NAME=MODEL...]``, the first
    #: arm the control; empty: one arm, ``control``, serving ``model`` with ``model_settings``.
    arms: str = ""
    #: Each arm's share of the viewers, ``W,W`` in arm order or ``NAME=W,...``; empty: equal.
    arm_weights: str = ""
    #: ``NAME:KEY=VALUE[,KEY=VALUE]`` settings of one arm's fresh model (the flag repeats; the
    #: environment variable separates them with ``;``).
    arm_settings: tuple[str, ...] = ()
    #: Names the experiment in the viewers' assignment: a new salt reshuffles every viewer.
    experiment_salt: str = "streamrec"
    #: ``all``: every arm learns every event (compares models); ``own``: each arm learns from its
    #: own viewers only (compares feedback loops).
    arms_learn_from: str = "all"
    #: A popularity model (``recent_popular``) scored on the same stream, so dashboards show the
    #: lift of learning; none when that baseline is the served model.
    shadow_baseline: bool = True
    #: Batches follow the load (see the module docstring): a poll takes what has arrived, up to
    #: ``max_poll_records`` and no more than the service processes in ``poll_budget_ms``; it is
    #: learned in batches of at most ``max_batch_events``, each published as soon as it is made,
    #: and its offsets are committed once, when all its lists are acknowledged.
    max_poll_records: int = 4000
    max_batch_events: int = 256
    #: When a poll of several batches (a backlog) makes its lists: ``poll``, once after its last
    #: batch, one per viewer (:mod:`consumer.coalesce`); ``batch``, after every batch for its
    #: viewers; ``auto``, ``poll`` but in a live experiment, whose readout is the online hit rate
    #: of the lists shown (see :attr:`lists_once_a_poll`).
    lists_per: str = "auto"
    #: Record batches (the input's, and the service's own topics' it restores from) read by the
    #: compiled reader (:mod:`consumer.records`), at about half of kafka-python's cost per
    #: record; off: kafka-python's own reader.
    compiled_records: bool = True
    #: Each partition's lists (and other plain keyed records) appended to the output producer's
    #: batches in one step (:mod:`consumer.appending`), at about a tenth of kafka-python's
    #: ``send`` per record; off: one ``send`` per record.
    batched_send: bool = True
    poll_budget_ms: float = 100.0
    poll_timeout_ms: int = 100
    #: Codec of the outputs (recommendations, dead letters): none, gzip, snappy, lz4 or zstd.
    output_compression: str = OUTPUT_COMPRESSION
    #: How long the group waits for a silent worker (crashed, not stopped) before moving its
    #: partitions; a worker restarted after a crash waits as long to get them back.
    session_timeout_ms: int = 45_000
    #: Rejoin the group as the same member after a restart (Kafka static membership: the
    #: consumer's group.instance.id is ``streamrec-<worker>``): a worker restarted within the
    #: session timeout gets its partitions back at once, with no rebalance; a stopped one's
    #: partitions move only after the session timeout. Worker ids must be unique in the group.
    static_membership: bool = False
    #: Folder for checkpoints of model state and offsets (one subfolder per worker);
    #: "none" disables them, and then a restart starts from an empty model.
    checkpoint_dir: str = ".streamrec/checkpoints"
    checkpoint_interval_s: float = 30.0
    checkpoint_every_events: int = 100_000
    #: Publish outputs and commit offsets in one Kafka transaction per batch.
    exactly_once: bool = False
    #: Names this worker in commit metadata and the transactional id. Default: the group id with a
    #: random suffix, kept in the worker's checkpoint folder (:func:`consumer.checkpoint.claim_worker`).
    worker_id: str = ""
    #: One model over the group (see :mod:`consumer.sync`): send this worker's video updates to
    #: the update topic every this many learned events (0: off, each worker its own model;
    #: :data:`SYNC_AUTO`: on for the workers of ``--workers N``, see :meth:`_auto_sync_every`)...
    sync_every: int = SYNC_AUTO
    #: ... or this often when fewer have been learned since.
    sync_interval_s: float = 1.0
    #: The update topic; empty: ``<group>-<input topic>-video-updates`` (a group that used
    #: ``<input topic>-video-updates`` before keeps it: :func:`consumer.topics.keep_legacy_names`).
    sync_topic: str = ""
    #: How the vectors' changes travel (:data:`SYNC_PRECISIONS`); the sender keeps what it sends.
    sync_precision: str = SYNC_PRECISION
    #: Snapshots of the group's video state (see :mod:`consumer.snapshot`): one worker publishes
    #: the agreed state this often, and a worker without a checkpoint starts from the newest
    #: instead of reading the whole update topic (0: off).
    snapshot_every_s: float = 60.0
    #: The snapshot topic (compacted); empty: ``<update topic>-snapshots``.
    snapshot_topic: str = ""
    #: How long the update topic keeps records when snapshots are on (-1: everything; with
    #: snapshots off it always keeps everything, the only way to start a new worker).
    sync_retention_s: float = 86400.0
    #: The viewer-state changelog (see :mod:`consumer.changelog`): a partition's new owner
    #: restores its viewers from it. Empty (auto): ``<group>-<input topic>-viewer-state`` when this
    #: service is one of several workers (``workers`` other than 1, or ``sync_every``), else
    #: off, since a lone worker's own checkpoint already holds its viewers and the changelog
    #: costs it 7-25% of its events per second; ``on``: that topic always; ``none``: off;
    #: any other value: that topic.
    changelog_topic: str = ""
    #: Worker processes this command runs in the group (0: one per core); each has its own
    #: checkpoint folder and /metrics port (``metrics_port`` + its index).
    workers: int = 1
    log_level: str = "INFO"
    #: TLS and SASL for every Kafka client of the service (``None``: plaintext); its bootstrap
    #: address is ``bootstrap_servers``. Built from the connection flags by :meth:`from_args`.
    security: KafkaConnection | None = None

    def __post_init__(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        for name in ("bootstrap_servers", "input_topic", "output_topic", "dlq_topic", "group_id"):
            check(bool(getattr(self, name).strip()), f"{name} must not be empty")
        if self.sync_every == SYNC_AUTO:  # resolved once, so every reader sees a number
            object.__setattr__(self, "sync_every", self._auto_sync_every())
        check(len({self.input_topic, self.output_topic, self.dlq_topic}) == 3, "topics must be distinct")
        check(0 <= self.metrics_port <= 65535, f"metrics_port must be 0..65535, got {self.metrics_port}")
        last_port = self.metrics_port + worker_count(self.workers) - 1
        check(
            not self.metrics_port or last_port <= 65535,
            f"metrics_port {self.metrics_port}: worker i of --workers serves on metrics_port + i, "
            f"up to {last_port}",
        )
        check(
            self.auto_offset_reset in ("earliest", "latest"),
            f"auto_offset_reset must be earliest or latest, got {self.auto_offset_reset!r}",
        )
        check(1 <= self.top_n <= 1000, f"top_n must be between 1 and 1000, got {self.top_n}")
        check(self.max_poll_records >= 1, "max_poll_records must be at least 1")
        check(self.max_batch_events >= 1, "max_batch_events must be at least 1")
        check(
            0 < self.poll_budget_ms < math.inf,
            f"poll_budget_ms must be > 0 and finite, got {self.poll_budget_ms}",
        )
        check(
            self.output_compression in COMPRESSIONS,
            f"output_compression must be one of {', '.join(COMPRESSIONS)}, got {self.output_compression!r}",
        )
        check(
            codec_available(self.output_compression),
            f"output_compression {self.output_compression}: kafka-python finds no library for it "
            "(lz4, python-snappy and zstandard are dependencies of streamrec: reinstall it)",
        )
        check(self.poll_timeout_ms >= 0, "poll_timeout_ms must be >= 0")
        check(0 <= self.workers <= 256, f"workers must be 0 (one per core) to 256, got {self.workers}")
        check(
            "/" not in self.worker_id and "\\" not in self.worker_id and self.worker_id not in (".", ".."),
            f"worker_id names a checkpoint folder: no path separators, got {self.worker_id!r}",
        )
        check(self.sync_every >= 0, f"sync_every must be auto ({SYNC_AUTO}) or >= 0, got {self.sync_every}")
        check(
            self.sync_precision in SYNC_PRECISIONS,
            f"sync_precision must be one of {', '.join(SYNC_PRECISIONS)}, got {self.sync_precision!r}",
        )
        check(self.sync_interval_s > 0, f"sync_interval_s must be > 0, got {self.sync_interval_s}")
        check(
            self.sync_topic_name not in (self.input_topic, self.output_topic, self.dlq_topic),
            "sync_topic must differ from the other topics",
        )
        check(self.snapshot_every_s >= 0, f"snapshot_every_s must be >= 0, got {self.snapshot_every_s}")
        check(
            self.snapshot_topic_name
            not in (self.input_topic, self.output_topic, self.dlq_topic, self.sync_topic_name),
            "snapshot_topic must differ from the other topics",
        )
        check(
            self.sync_retention_s == -1 or self.sync_retention_s > 0,
            f"sync_retention_s must be -1 (keep everything) or > 0, got {self.sync_retention_s}",
        )
        check(
            not self.snapshot_every_s
            or self.sync_retention_s == -1
            or self.sync_retention_s >= 2 * self.snapshot_every_s,
            f"sync_retention_s ({self.sync_retention_s:g}) must be at least twice snapshot_every_s "
            f"({self.snapshot_every_s:g}): a new worker reads the updates since the newest snapshot, "
            "or since the one before when the newest is torn",
        )
        check(
            self.changelog_topic_name
            not in (
                self.input_topic,
                self.output_topic,
                self.dlq_topic,
                self.sync_topic_name,
                self.snapshot_topic_name,
            ),
            "changelog_topic must differ from the other topics",
        )
        check(
            SESSION_TIMEOUT_MS[0] <= self.session_timeout_ms <= SESSION_TIMEOUT_MS[1],
            f"session_timeout_ms must be {SESSION_TIMEOUT_MS[0]}..{SESSION_TIMEOUT_MS[1]} (what brokers "
            f"accept by default: group.min/max.session.timeout.ms), got {self.session_timeout_ms}",
        )
        check(self.checkpoint_interval_s > 0, "checkpoint_interval_s must be > 0")
        check(self.checkpoint_every_events >= 1, "checkpoint_every_events must be >= 1")
        check(self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"), "log_level is not a level")
        check(
            bool(self.metrics_certfile) == bool(self.metrics_keyfile),
            "HTTPS for /metrics needs both metrics_certfile and metrics_keyfile",
        )
        for name in ("metrics_certfile", "metrics_keyfile"):
            path = getattr(self, name)
            check(not path or Path(path).is_file(), f"{name} {path}: no such file")
        try:
            self.kafka  # noqa: B018 - built here so conflicting settings fail at start-up
        except ConnectionSettingsError as err:
            raise ConfigError(str(err)) from None
        try:
            self.model_params  # noqa: B018 - parsed here so a malformed value fails at start-up
        except ValueError as err:
            raise ConfigError(f"model_settings: {err}") from None
        check(
            self.arms_learn_from in LEARN_FROM,
            f"arms_learn_from must be one of {', '.join(LEARN_FROM)}, got {self.arms_learn_from!r}",
        )
        check(bool(self.experiment_salt), "experiment_salt must not be empty")
        check(
            self.lists_per in LISTS_PER,
            f"lists_per must be one of {', '.join(LISTS_PER)}, got {self.lists_per!r}",
        )
        try:
            self.arm_specs  # noqa: B018 - parsed here so a malformed experiment fails at start-up
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def _auto_sync_every(self) -> int:
        """``sync_every`` when left to the service: :data:`SYNC_EVERY` for the workers of
        ``--workers N`` serving the default model when N is more than one (``0``: one per core,
        so one on a machine of one core), else 0. Not in a live experiment: only the control's
        model can be one over the group, and the other arms, each learning from its worker's
        share of the stream, would be compared with a model that learns from all of it.

        >>> ServiceConfig(workers=2).sync_every, ServiceConfig().sync_every
        (1024, 0)
        >>> ServiceConfig(workers=2, model="cooccurrence").sync_every  # only the default model syncs
        0
        """
        if worker_count(self.workers) == 1:
            return 0
        try:
            return SYNC_EVERY if self.model_shareable else 0
        except ValueError:  # a malformed experiment, reported by the checks that follow
            return 0

    @property
    def lists_once_a_poll(self) -> bool:
        """Whether a poll of several batches makes its lists once, after its last batch
        (``lists_per``). ``auto`` does so but in a live experiment: there the online hit rate
        of the lists shown is the readout, and on a replay (a backlog, polled thousands of
        events at a time) lists made once a poll would be shown too late to measure it.

        >>> ServiceConfig().lists_once_a_poll
        True
        >>> ServiceConfig(arms="a=streamrec,b=most_popular").lists_once_a_poll
        False
        >>> ServiceConfig(lists_per="batch").lists_once_a_poll
        False
        """
        if self.lists_per == "auto":
            return len(self.arm_specs) == 1
        return self.lists_per == "poll"

    @property
    def model_shareable(self) -> bool:
        """Whether the workers of a group can be one model: one arm, serving the default model
        (in an experiment only the control could be, unlike the arms it is compared with)."""
        arms = self.arm_specs
        return len(arms) == 1 and arms[0].model == DEFAULT_MODEL

    @property
    def model_params(self) -> dict[str, object]:
        """``model_settings`` as keyword arguments of the model's constructor."""
        from model.registry import parse_settings

        return parse_settings([self.model_settings])

    @property
    def internal_prefix(self) -> str:
        """What the group's own topics are named from, as Kafka Streams names an application's
        internal topics after its ``application.id``: two groups reading one input topic (a
        second deployment, a staging copy) must not read each other's video updates or viewer
        states. Grant them by this prefix (``docs/security.md``).

        >>> ServiceConfig(group_id="recs", input_topic="views").internal_prefix
        'recs-views'
        """
        return f"{self.group_id}-{self.input_topic}"

    def internal_topic(self, what: str, legacy: bool = False) -> str:
        """The group's own topic ``what`` (``video-updates``, ``viewer-state``) by default:
        ``<group>-<input topic>-<what>``; ``legacy``: as named before 2026-12-01, after the
        input topic alone (:func:`consumer.topics.keep_legacy_names`).

        >>> c = ServiceConfig(group_id="recs", input_topic="views")
        >>> c.internal_topic("viewer-state"), c.internal_topic("viewer-state", legacy=True)
        ('recs-views-viewer-state', 'views-viewer-state')
        """
        return f"{self.input_topic if legacy else self.internal_prefix}-{what}"

    @property
    def sync_topic_name(self) -> str:
        """The update topic (``--sync-topic``), by default ``<group>-<input topic>-video-updates``.

        >>> ServiceConfig().sync_topic_name
        'streamrec-watch-events-video-updates'
        """
        return self.sync_topic or self.internal_topic("video-updates")

    @property
    def snapshot_topic_name(self) -> str:
        return self.snapshot_topic or f"{self.sync_topic_name}-snapshots"

    @property
    def sync_retention_ms(self) -> int:
        """The update topic's ``retention.ms``: -1 (everything) unless snapshots are on."""
        if not self.snapshot_every_s or self.sync_retention_s == -1:
            return -1
        return int(self.sync_retention_s * 1000)

    @property
    def changelog_topic_name(self) -> str | None:
        """The viewer-state changelog's topic, ``None`` when it is off (see ``changelog_topic``).

        >>> ServiceConfig().changelog_topic_name is None  # one worker on its own
        True
        >>> ServiceConfig(sync_every=1024).changelog_topic_name
        'streamrec-watch-events-viewer-state'
        >>> ServiceConfig(changelog_topic="on").changelog_topic_name
        'streamrec-watch-events-viewer-state'
        >>> ServiceConfig(changelog_topic="auto", workers=2).changelog_topic_name  # as empty
        'streamrec-watch-events-viewer-state'
        """
        if self.changelog_topic_given:
            return self.changelog_topic.strip()
        chosen = self.changelog_topic.strip().lower()
        if chosen == "none":
            return None
        several = worker_count(self.workers) != 1 or self.sync_every > 0
        return self.internal_topic("viewer-state") if chosen == "on" or several else None

    @property
    def changelog_topic_given(self) -> bool:
        """Whether ``changelog_topic`` names a topic rather than saying one of its words
        (empty, ``auto``, ``on``, ``none``)."""
        return self.changelog_topic.strip().lower() not in ("", "auto", "on", "none")

    @property
    def arm_specs(self) -> list[ArmSpec]:
        """The arms to serve (one, ``control``, without ``arms``), the control first."""
        return parse_arms(self.arms, self.arm_weights, self.arm_settings, self.model, self.model_params)

    @property
    def kafka(self) -> KafkaConnection:
        """How every Kafka client of the service connects (``client_options()`` for kafka-python)."""
        base = self.security or KafkaConnection()
        return dataclasses.replace(base, bootstrap_servers=self.bootstrap_servers)

    def describe(self) -> dict[str, object]:
        """Every setting for a log line or a config dump, the password shown only as ``***``."""
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "security"}
        return shown | {"kafka": self.kafka.describe()}

    @property
    def worker(self) -> str:
        return self.worker_id or self.group_id

    @property
    def checkpoint_path(self) -> Path | None:
        if self.checkpoint_dir.strip().lower() in ("", "none"):
            return None
        return Path(self.checkpoint_dir)

    @classmethod
    def from_namespace(
        cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None
    ) -> ServiceConfig:
        try:
            security = KafkaConnection.from_arguments(args, environ)
        except ConnectionSettingsError as err:
            raise ConfigError(str(err)) from None
        settings = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        return cls(**settings | {"security": security})

    @classmethod
    def from_args(cls, argv: Sequence[str], environ: Mapping[str, str] | None = None) -> ServiceConfig:
        parser = argparse.ArgumentParser(prog="streamrec serve")
        add_arguments(parser, environ)
        try:
            return cls.from_namespace(parser.parse_args(list(argv)), environ)
        except TypeError as err:  # pragma: no cover - argparse already typed every value
            raise ConfigError(str(err)) from None


#: The session timeouts brokers accept by default (``group.min.session.timeout.ms`` and
#: ``group.max.session.timeout.ms``): others are refused when the worker joins its group.
SESSION_TIMEOUT_MS = (6_000, 1_800_000)


def worker_count(workers: int) -> int:
    """How many worker processes ``--workers`` runs: ``workers``, or one per core for 0."""
    return workers or os.cpu_count() or 1


def codec_available(codec: str) -> bool:
    """Whether kafka-python can compress with ``codec`` here (its library is installed)."""
    from kafka import codec as codecs

    checks = {"gzip": codecs.has_gzip, "snappy": codecs.has_snappy, "lz4": codecs.has_lz4}
    return codec == "none" or (checks | {"zstd": codecs.has_zstd})[codec]()


def _to_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"not a boolean: {text!r}")


_HELP = {
    "bootstrap_servers": "Kafka bootstrap servers, host:port[,host:port]",
    "input_topic": "topic of watch events (keyed by viewer)",
    "output_topic": "topic the recommendations are published to (keyed by viewer)",
    "dlq_topic": "dead-letter topic for events that cannot be used",
    "group_id": "Kafka consumer group",
    "metrics_port": "port of the Prometheus /metrics endpoint (0 disables it)",
    "metrics_address": "address the /metrics endpoint binds to (127.0.0.1: this machine only)",
    "metrics_certfile": "serve /metrics over HTTPS with this certificate (PEM; with --metrics-keyfile)",
    "metrics_keyfile": "private key of --metrics-certfile (PEM)",
    "auto_offset_reset": "where a new consumer group starts: earliest or latest",
    "top_n": "length of each published recommendation list",
    "model": "model to serve (see `streamrec evaluate --help` for names)",
    "model_settings": "settings of a fresh model, KEY=VALUE[,KEY=VALUE] (JSON values, e.g. dim=16); "
    "a model restored from a checkpoint keeps its own",
    "arms": "a live experiment: NAME=MODEL[,NAME=MODEL...], the first arm the control (see README)",
    "arm_weights": "each arm's share of the viewers: W,W in arm order or NAME=W,... (default: equal)",
    "arm_settings": "settings of one arm's fresh model, NAME:KEY=VALUE[,KEY=VALUE] (repeatable)",
    "experiment_salt": "names the experiment in the viewers' assignment to arms (a new salt reshuffles them)",
    "arms_learn_from": "all: every arm learns every event (compares models); own: each arm learns only "
    "from its viewers (compares feedback loops)",
    "shadow_baseline": "also score a popularity baseline on the stream, for the dashboards",
    "max_poll_records": "most events taken by one poll: learned in batches, their lists acknowledged and "
    "their offsets committed together",
    "compiled_records": "read record batches with the compiled reader (off: kafka-python's own, record "
    "by record, twice the time)",
    "batched_send": "append each partition's lists to the output producer's batches in one step (off: "
    "kafka-python's send, one call per list, ten times the time)",
    "lists_per": "when a poll of several batches (a backlog) makes its lists: poll (once, after its last "
    "batch, one per viewer: earlier ones would be overwritten within the poll), batch (after every batch), "
    "or auto (poll, but batch in a live experiment, whose readout is the online hit rate of lists shown)",
    "max_batch_events": "most events scored, learned and published as one batch (fewer when fewer "
    "have arrived: a caught-up service answers each event at once)",
    "poll_budget_ms": "a poll takes no more events than the service processes in this time (by its "
    "measured cost per event), so an event that arrives meanwhile waits about this long for its turn",
    "poll_timeout_ms": "how long one poll waits for events when none have arrived",
    "output_compression": "codec of the published lists and dead letters: none, gzip, snappy, lz4, zstd",
    "session_timeout_ms": "how long the group waits for a crashed worker before moving its partitions",
    "static_membership": "rejoin the group as the same member after a restart (group.instance.id "
    "streamrec-<worker>): a worker restarted within --session-timeout-ms gets its partitions back at "
    "once, without a rebalance; a stopped worker's partitions move only after that timeout; worker ids "
    "must be unique in the group",
    "checkpoint_dir": "folder for checkpoints of model state and offsets ('none': no checkpoints)",
    "checkpoint_interval_s": "checkpoint at least this often, in seconds",
    "checkpoint_every_events": "checkpoint at least every this many events",
    "exactly_once": "publish and commit offsets in one Kafka transaction per batch",
    "worker_id": "this worker's name (commit metadata, transactional id); default: the group id with a "
    "random suffix, made at the first start and kept in the worker's checkpoint folder",
    "sync_every": "one model over the group: send this worker's video updates to the update topic every "
    f"this many learned events (0: off, each worker learns its own model; needs --model {DEFAULT_MODEL}); "
    f"auto: {SYNC_EVERY} for the workers of --workers N (N other than 1) outside a live experiment, "
    "else 0. Give every `streamrec serve` of a group the same value",
    "sync_interval_s": "... or this often when fewer events were learned since",
    "sync_topic": "the update topic (default: <group>-<input topic>-video-updates)",
    "sync_precision": "how the vectors' changes travel on the update topic: float32, int16 or int8 "
    "(integers with a scale per row; the sender keeps exactly what it sends, so replicas agree)",
    "snapshot_every_s": "publish a snapshot of the group's video state this often, in seconds (0: off); "
    "a worker without a checkpoint starts from the newest instead of the whole update topic",
    "snapshot_topic": "the compacted snapshot topic (default: <update topic>-snapshots)",
    "sync_retention_s": "how long the update topic keeps records when snapshots are on, in seconds "
    "(-1: everything; at least twice --snapshot-every-s)",
    "changelog_topic": "the viewer-state changelog a partition's new owner restores its viewers from: "
    "auto (or empty) keeps <group>-<input topic>-viewer-state for the workers of --workers N and with "
    "--sync-every, none for a lone worker (its checkpoint holds its viewers); 'on': always; 'none': off, "
    "a moved partition's viewers start afresh; or a topic name",
    "workers": "worker processes to run in the group on this machine (0: one per core); worker i serves "
    "/metrics on --metrics-port + i",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
}


def _sync_every(text: str) -> int:
    """``--sync-every``: ``auto`` or a count of events (0: off)."""
    if text.strip().lower() == "auto":
        return SYNC_AUTO
    value = int(text)
    if value < 0:
        raise ValueError(f"must be auto or >= 0, got {text!r}")
    return value


_sync_every.__name__ = "auto or a count"  # argparse names the type in its error
#: Flags read by a function of their own rather than by their default's type.
_PARSERS = {"sync_every": _sync_every}


class _Extend(argparse.Action):
    """Each use of the flag adds a value to the tuple; the first replaces the default."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        before = getattr(namespace, self.dest)
        fresh = getattr(namespace, f"_{self.dest}_given", False)
        setattr(namespace, self.dest, (*before, value) if fresh else (value,))
        setattr(namespace, f"_{self.dest}_given", True)


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None) -> None:
    """Add one flag per setting, each defaulting to ``STREAMREC_<NAME>`` or the built-in default."""
    environ = os.environ if environ is None else environ
    add_connection_arguments(parser, environ)  # --bootstrap-servers and TLS/SASL, as everywhere
    defaults = ServiceConfig.__dataclass_fields__
    for name, field in defaults.items():
        if name in ("bootstrap_servers", "security"):
            continue
        env = f"STREAMREC_{name.upper()}"
        kind = _PARSERS.get(name, type(field.default))
        default = field.default
        if env in environ:
            raw = environ[env]
            try:
                if kind is tuple:  # repeatable: the environment separates values with ';'
                    default = tuple(v for v in raw.split(";") if v.strip())
                else:
                    default = _to_bool(raw) if kind is bool else kind(raw)
            except ValueError as err:
                raise ConfigError(f"{env}={raw!r}: {err}") from None
        flag = "--" + name.replace("_", "-")
        shown = "auto" if name == "sync_every" and default == SYNC_AUTO else repr(default)
        help_ = f"{_HELP[name]} (env {env}; default: {shown})"
        if kind is bool:
            parser.add_argument(flag, default=default, action=argparse.BooleanOptionalAction, help=help_)
        elif kind is tuple:
            parser.add_argument(flag, default=default, action=_Extend, metavar=name.upper(), help=help_)
        else:
            parser.add_argument(flag, default=default, type=kind, metavar=name.upper(), help=help_)
