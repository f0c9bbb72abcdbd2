"""A group member gets the partitions its group leader assigns, however short its polls.

kafka-python 3.0 drops a group join that finishes after ``poll`` returned when the join was
caused by a change of the topic's partitions (see :mod:`contract.group_join`): the member then
never receives its assignment. A service whose first join raced a just-created topic's metadata
learned nothing and was expelled from its group. On the real broker, every time here without
the fix: partitions added while the member polls with 1 ms timeouts never reach it.
"""

from __future__ import annotations

import time

from kafka import ConsumerRebalanceListener, KafkaAdminClient
from kafka.admin import NewPartitions

from consumer.clients import make_consumer
from consumer.config import ServiceConfig


class Quiet(ConsumerRebalanceListener):
    def on_partitions_revoked(self, revoked):
        pass

    def on_partitions_assigned(self, assigned):
        pass


def assigned_within(consumer, count: int, seconds: float, timeout_ms: int) -> list[int]:
    """Poll ``consumer`` with ``timeout_ms`` until it holds ``count`` partitions or time is up."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and len(consumer.assignment()) < count:
        consumer.poll(timeout_ms=timeout_ms)
    return sorted(tp.partition for tp in consumer.assignment())


def test_partitions_added_to_the_input_reach_a_member_polling_with_short_timeouts(kafka_bootstrap, new_topic):
    topic = new_topic("grow", 1)
    config = ServiceConfig(bootstrap_servers=kafka_bootstrap, input_topic=topic, group_id=f"g-{topic}")
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    consumer = make_consumer(config, Quiet())
    try:
        assert assigned_within(consumer, 1, 30, timeout_ms=100) == [0]
        for rounds in range(3):  # each growth makes the leader rejoin; each join must land
            admin.create_partitions({topic: NewPartitions(total_count=rounds + 2)})
            assert assigned_within(consumer, rounds + 2, 30, timeout_ms=1) == list(range(rounds + 2))
    finally:
        consumer.close()
        admin.close()


class Recorded(ConsumerRebalanceListener):
    """Every assignment the member was given, in order."""

    def __init__(self) -> None:
        self.assignments: list[list[int]] = []

    def on_partitions_revoked(self, revoked):
        pass

    def on_partitions_assigned(self, assigned):
        self.assignments.append(sorted(tp.partition for tp in assigned))


def test_a_member_is_given_an_existing_topics_partitions_at_its_first_join(kafka_bootstrap, new_topic):
    """Not an empty assignment first and the partitions at a second join: under static
    membership, a same-named process taking over between the two joins inherits the empty one
    and is never told to rejoin (see :func:`consumer.clients.make_consumer`)."""
    topic = new_topic("first-join", 4)
    for attempt in range(5):  # the empty first join was a race: several fresh groups
        group = f"g-{topic}-{attempt}"
        config = ServiceConfig(bootstrap_servers=kafka_bootstrap, input_topic=topic, group_id=group)
        listener = Recorded()
        consumer = make_consumer(config, listener)
        try:
            end = time.monotonic() + 30
            while not listener.assignments and time.monotonic() < end:
                consumer.poll(timeout_ms=50)
        finally:
            consumer.close()
        assert listener.assignments[:1] == [[0, 1, 2, 3]], (attempt, listener.assignments)
