"""A fix for kafka-python 3.0's static membership: a member fenced by a heartbeat finds out.

With ``group_instance_id`` set (static membership), a second process joining under the same
id takes the member's place, and the broker answers the first one's next heartbeat with
``FENCED_INSTANCE_ID``. The Java consumer raises ``FencedInstanceIdException`` from its next
``poll``. kafka-python 3.0's heartbeat task logs the error and stops heartbeating, and
``poll`` goes on returning records: the fenced process keeps fetching and learning partitions
the group gave to the other one, and hears of it only when it next commits. A worker with
nothing to commit (caught up, idle) never does. Measured here: 4 runs in 13 of two same-named
static members on a busy machine left both running past 120 s.

:func:`install` keeps the heartbeat's fencing error on the coordinator and raises it from
every later ``poll``, as the Java client does. Installed once per process, by the clients that
join groups; a kafka-python whose coordinator lacks the patched methods is left alone.

>>> install()
True
>>> install()  # once is enough
True
"""

from __future__ import annotations

from kafka.coordinator.base import BaseCoordinator
from kafka.errors import FencedInstanceIdError

__all__ = ["install"]

_MARK = "_streamrec_raises_heartbeat_fencing"
_FENCED = "_streamrec_fenced_by_heartbeat"


def install() -> bool:
    """Patch :class:`kafka.coordinator.base.BaseCoordinator`; whether it is patched."""
    if getattr(BaseCoordinator, _MARK, False):
        return True
    handle = getattr(BaseCoordinator, "_handle_heartbeat_response", None)
    poll_heartbeat = getattr(BaseCoordinator, "poll_heartbeat", None)
    if handle is None or poll_heartbeat is None:
        return False  # another kafka-python: nothing here to patch

    def handle_heartbeat_response(self: BaseCoordinator, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        try:
            return handle(self, *args, **kwargs)
        except FencedInstanceIdError as err:
            setattr(self, _FENCED, err)  # the heartbeat task swallows it; poll raises it
            raise

    def poll_heartbeat_or_raise_fencing(self: BaseCoordinator) -> None:
        fenced = getattr(self, _FENCED, None)
        if fenced is not None:
            raise fenced
        poll_heartbeat(self)

    handle_heartbeat_response.__doc__ = handle.__doc__
    poll_heartbeat_or_raise_fencing.__doc__ = poll_heartbeat.__doc__
    BaseCoordinator._handle_heartbeat_response = handle_heartbeat_response
    BaseCoordinator.poll_heartbeat = poll_heartbeat_or_raise_fencing
    setattr(BaseCoordinator, _MARK, True)
    return True
