"""A fix for kafka-python 3.0's group join: a join that finishes after ``poll`` returned is used.

kafka-python 3.0 runs a group's JoinGroup and SyncGroup as one task on its IO thread. When
``poll(timeout_ms)`` returns before the task finishes, the task is left running and the next
poll waits for it again, but only while the coordinator still reports that a rejoin is needed.
A group leader rejoining because the topic's metadata changed (its first assignment saw no
partitions of a just-created topic, or partitions were added) reports that through a snapshot
the task itself updates: once the task has run, no rejoin is reported, the finished task is
never awaited, and its assignment is never applied. The member sits in the group with no
partitions and no heartbeats until the broker expels it (45 s later by default; a service
then learns nothing). Measured here: 1 in 60 to 100 service starts on a fresh topic, and
every time when partitions are added to a topic while the consumer polls with short timeouts.

:func:`install` makes the coordinator report a rejoin as needed while a join task is pending,
so the next poll finishes it (a task already done is replaced by a fresh join, which the
library does in any case when its own flag is set). Installed once per process, by the
clients that join groups; a kafka-python whose coordinator has no join task is left alone.

>>> install()
True
>>> install()  # once is enough
True
"""

from __future__ import annotations

from kafka.coordinator.consumer import ConsumerCoordinator

__all__ = ["install"]

_MARK = "_streamrec_collects_pending_joins"


def install() -> bool:
    """Patch :class:`kafka.coordinator.consumer.ConsumerCoordinator`; whether it is patched."""
    if getattr(ConsumerCoordinator, _MARK, False):
        return True
    if not _has_join_task():
        return False  # another kafka-python: this bug is not there, and neither is the attribute
    needs_rejoin = ConsumerCoordinator.need_rejoin

    def need_rejoin(self: ConsumerCoordinator) -> bool:
        return getattr(self, "_join_task", None) is not None or needs_rejoin(self)

    need_rejoin.__doc__ = needs_rejoin.__doc__
    ConsumerCoordinator.need_rejoin = need_rejoin
    setattr(ConsumerCoordinator, _MARK, True)
    return True


def _has_join_task() -> bool:
    """Whether kafka-python's base coordinator keeps a pending join task (3.0 does)."""
    from kafka.coordinator.base import BaseCoordinator

    return "_join_task" in BaseCoordinator.__init__.__code__.co_names
