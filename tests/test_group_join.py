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
