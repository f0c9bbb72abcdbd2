"""The service's output topics, created when missing so a first run needs no setup.

The recommendations topic is compacted: it is keyed by viewer, so compaction keeps each viewer's
latest list and the topic stays the size of the audience, not of the history. The dead-letter
topic keeps everything (delete policy, the broker's retention). With ``--sync-every``, the update
topic keeps everything (``retention.ms=-1``), or ``--sync-retention-s`` when snapshots are on, and
the snapshot topic is compacted (:mod:`consumer.snapshot`); the viewer-state changelog is
created by :mod:`consumer.changelog`. The input topic belongs to the producers and is never
created here.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from consumer.backoff import retry
from consumer.config import ServiceConfig
from consumer.logs import fields
from consumer.outputs import MAX_RECORD_BYTES

__all__ = [
    "OutputTopics",
    "keep_legacy_names",
    "ensure_output_topics",
    "record_limits",
    "settings_that_differ",
    "warn_settings_that_differ",
]

log = logging.getLogger(__name__)


class OutputTopics(NamedTuple):
    """What :func:`ensure_output_topics` did and found."""

    #: The topics it created.
    created: list[str]
    #: The largest dead letter the dead-letter topic takes, framing included: its
    #: ``max.message.bytes`` when the broker tells it, and never above what the producer sends.
    dead_letter_bytes: int
    #: The largest record batch every topic the output producer writes takes (the smallest of
    #: their ``max.message.bytes`` the broker tells), ``None`` when it tells none.
    batch_limit: int | None = None


def ensure_output_topics(config: ServiceConfig, timeout_ms: int = 10_000) -> OutputTopics:
    """Create the recommendations and dead-letter topics if they do not exist; what it did, and
    how large a dead letter may be (a topic made with a smaller ``max.message.bytes`` refuses
    larger ones, and a refused dead letter would hold up its poll for good)."""
    admin = KafkaAdminClient(
        **config.kafka.client_options(),
        client_id=f"streamrec-{config.worker}-admin",
        bootstrap_timeout_ms=timeout_ms,
    )
    try:
        existing = set(admin.list_topics())
        wanted = {
            config.output_topic: {"cleanup.policy": "compact"},
            config.dlq_topic: {},
        }
        if config.sync_every:
            # The updates add up to the group's video state: kept whole unless snapshots hold it.
            wanted[config.sync_topic_name] = {"retention.ms": str(config.sync_retention_ms)}
            if config.snapshot_every_s:  # the newest two snapshots of each publishing worker
                wanted[config.snapshot_topic_name] = {"cleanup.policy": "compact", "segment.ms": "3600000"}
        missing = [
            NewTopic(name, num_partitions=1, replication_factor=-1, topic_configs=configs)
            for name, configs in wanted.items()
            if name not in existing
        ]
        created = []
        for topic in missing:
            try:
                admin.create_topics([topic], timeout_ms=timeout_ms)
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass  # another worker created it in between
        if created:
            log.info("created topics", extra=fields(topics=",".join(created)))
        warn_settings_that_differ(admin, wanted, existing)
        if config.input_topic not in existing:
            log.warning(
                "input topic does not exist yet; waiting for it", extra=fields(topic=config.input_topic)
            )
        # What the output producer writes to, as far as it exists now (the changelog is made later,
        # with the brokers' default limit).
        written = [config.output_topic, config.dlq_topic, config.sync_topic_name, config.changelog_topic_name]
        limits = record_limits(admin, [t for t in written if t and (t in existing or t in created)])
        limit = limits.get(config.dlq_topic)
        dead_letters = min(MAX_RECORD_BYTES, limit or MAX_RECORD_BYTES)
        return OutputTopics(created, dead_letters, min(limits.values()) if limits else None)
    finally:
        admin.close()


def record_limits(admin: KafkaAdminClient, topics: list[str]) -> dict[str, int]:
    """``max.message.bytes`` of each of ``topics`` the broker describes, in one request (a topic
    it does not say, as when not authorised to describe its configs, is left out)."""
    if not topics:
        return {}
    resources = [ConfigResource(ConfigResourceType.TOPIC, t, {"max.message.bytes": None}) for t in topics]
    try:
        described = admin.describe_configs(resources, config_filter="all").get("topic", {})
    except KafkaError as err:
        log.debug("record size limits not known", extra=fields(topics=",".join(topics), error=str(err)))
        return {}
    limits = {}
    for topic in topics:
        try:
            limits[topic] = int(described[topic]["max.message.bytes"]["value"])
        except (KeyError, TypeError, ValueError) as err:
            log.debug("record size limit not known", extra=fields(topic=topic, error=str(err)))
    return limits


def warn_settings_that_differ(
    admin: KafkaAdminClient, wanted: dict[str, dict[str, str]], existing: set[str]
) -> None:
    """Log :func:`settings_that_differ`, each with the ``kafka-configs.sh`` command that sets it."""
    for topic, setting, found, value in settings_that_differ(admin, wanted, existing):
        log.warning(
            "a topic exists with another setting than the service creates it with; not changed",
            extra=fields(
                topic=topic,
                setting=setting,
                found=found,
                wanted=value,
                fix=f"kafka-configs.sh --alter --entity-type topics --entity-name {topic} "
                f"--add-config {setting}={value}",
            ),
        )


def settings_that_differ(
    admin: KafkaAdminClient, wanted: dict[str, dict[str, str]], existing: set[str]
) -> list[tuple[str, str, str, str]]:
    """``(topic, setting, found, wanted)`` for each topic that already existed with another
    value of a setting the service creates it with (the lists' compaction, the updates'
    retention): as Kafka Streams checks its internal topics, the service says so rather than
    change a topic someone else made. A broker that refuses to describe configs is not asked."""
    names = [name for name, configs in wanted.items() if configs and name in existing]
    if not names:
        return []
    topic = ConfigResourceType.TOPIC
    resources = [ConfigResource(topic, name, dict.fromkeys(wanted[name])) for name in names]
    try:
        described = admin.describe_configs(resources, config_filter="all").get("topic", {})
    except KafkaError as err:  # e.g. not authorised to describe configs: nothing to say
        log.debug("topic settings not checked", extra=fields(error=str(err)))
        return []
    differ = []
    for name in names:
        for setting, value in wanted[name].items():
            found = described.get(name, {}).get(setting, {}).get("value")
            if found is not None and found != value:
                differ.append((name, setting, found, value))
    return differ


def keep_legacy_names(
    config: ServiceConfig, timeout_ms: int = 10_000, wait: Callable[[float], bool | None] = time.sleep
) -> ServiceConfig:
    """``config`` with the group's own topics under the names they had before 2026-12-01
    (``<input>-video-updates``, ``<input>-viewer-state``) when this group used them: it has
    committed offsets on the input and that update topic exists. Names the user gave stay.

    The names moved to ``<group>-<input>-...`` so that two groups reading one input keep to
    their own topics; a group already exchanging under the old ones must go on there, every
    worker of it (a fresh one included), or its workers would split between two topics and
    learn the same events twice. A fresh group takes the new names. The group says so in
    its log, with how to move. While Kafka is unreachable this waits for it (``wait(seconds)``
    between tries, as the service's connection does): deciding without it would give an old
    group's worker the new names. Refused the answer (an ACL), the group takes the new names.
    """
    if not config.sync_every or config.sync_topic:
        return config
    legacy = config.internal_topic("video-updates", legacy=True)

    def used_legacy_names() -> bool:
        admin = KafkaAdminClient(
            **config.kafka.client_options(),
            client_id=f"streamrec-{config.worker}-admin",
            bootstrap_timeout_ms=timeout_ms,
        )
        try:
            if legacy not in admin.list_topics():
                return False
            committed = admin.list_group_offsets(config.group_id).get(config.group_id, {})
            return any(tp.topic == config.input_topic for tp in committed)  # else a new group
        finally:
            admin.close()

    try:
        used = retry(
            used_legacy_names,
            message="Kafka unreachable; retrying (to check the group's topic names)",
            wait=wait,
        )
    except KafkaError as err:  # not told (an ACL): the new names, as for a new group
        log.warning(
            "legacy topic names not checked; the group's own names are used", extra=fields(error=str(err))
        )
        return config
    if not used:
        return config
    changelog = config.changelog_topic  # a name given, or "none", stays
    if config.changelog_topic_name is not None and not config.changelog_topic_given:
        changelog = config.internal_topic("viewer-state", legacy=True)
    kept = dataclasses.replace(config, sync_topic=legacy, changelog_topic=changelog)
    log.warning(
        "this group exchanges on the topics it used before they were named after the group: kept",
        extra=fields(
            sync_topic=kept.sync_topic_name,
            changelog_topic=kept.changelog_topic_name,
            to_move="stop every worker of the group, then start them with --sync-topic and "
            "--changelog-topic naming new topics (or delete the old ones)",
        ),
    )
    return kept
