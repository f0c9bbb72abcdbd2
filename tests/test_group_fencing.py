"""A static member another process of the same ``group.instance.id`` replaced stops polling.

kafka-python 3.0 swallows the heartbeat's ``FENCED_INSTANCE_ID`` (see
:mod:`contract.group_fencing`): the replaced member went on fetching partitions the group gave
to the other process and never heard of it while it had nothing to commit. On the real broker.
"""

from __future__ import annotations

import time

import pytest
from kafka import ConsumerRebalanceListener
from kafka.errors import FencedInstanceIdError

from consumer.clients import make_consumer
from consumer.config import ServiceConfig


class Quiet(ConsumerRebalanceListener):
    def on_partitions_revoked(self, revoked):
        pass

    def on_partitions_assigned(self, assigned):
        pass


def test_a_static_member_replaced_by_a_same_named_process_hears_of_it_from_poll(kafka_bootstrap, new_topic):
    topic = new_topic("fenced", 2)
    config = ServiceConfig(
        bootstrap_servers=kafka_bootstrap,
        input_topic=topic,
        group_id=f"g-{topic}",
        static_membership=True,
        session_timeout_ms=6000,
    )
    first = make_consumer(config, Quiet())
    second = None
    try:
        end = time.monotonic() + 30
        while not first.assignment() and time.monotonic() < end:
            first.poll(timeout_ms=50)
        assert len(first.assignment()) == 2
        second = make_consumer(config, Quiet())  # the same worker name: the same group.instance.id
        end = time.monotonic() + 30
        while not second.assignment() and time.monotonic() < end:
            second.poll(timeout_ms=50)
        assert len(second.assignment()) == 2, "the newcomer takes the name's partitions"
        with pytest.raises(FencedInstanceIdError):
            end = time.monotonic() + 20  # the next heartbeat, 2 s on (a third of the session)
            while time.monotonic() < end:
                first.poll(timeout_ms=50)
                second.poll(timeout_ms=0)
    finally:
        for consumer in (first, second):
            if consumer is not None:
                consumer.close()
