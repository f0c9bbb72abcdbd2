"""One way to wait for Kafka: try, and on a retriable error wait twice as long as last time.

Connecting, publishing and committing all meet brokers that are away for a while (a restart,
a network cut). Each calls :func:`retry` with what to try; the service never hand-writes a loop.

>>> from kafka.errors import KafkaConnectionError
>>> tries = []
>>> def flaky():
...     tries.append(1)
...     if len(tries) < 3:
...         raise KafkaConnectionError("broker away")
...     return "done"
>>> waits = []
>>> retry(flaky, message="demo failed; retrying", wait=waits.append)
'done'
>>> waits  # 0.2 s, then twice that
[0.2, 0.4]

"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from kafka.errors import KafkaError

from consumer.logs import fields

__all__ = ["retry", "Interrupted", "FIRST_DELAY_S", "MAX_DELAY_S"]

log = logging.getLogger(__name__)

#: The first wait after a failure; each next one doubles, up to :data:`MAX_DELAY_S`.
FIRST_DELAY_S = 0.2
MAX_DELAY_S = 10.0

T = TypeVar("T")


class Interrupted(Exception):
    """Raised by :func:`retry` when its ``wait`` says to stop trying (the service is stopping)."""


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


def _is_retriable(err: KafkaError) -> bool:
    return err.retriable


def retry(
    attempt: Callable[[], T],
    *,
    message: str,
    retriable: Callable[[KafkaError], bool] = _is_retriable,
    first: float = FIRST_DELAY_S,
    wait: Callable[[float], bool | None] = _sleep,
    **context: object,
) -> T:
    """``attempt()``'s result, calling it again after each retriable :class:`KafkaError`.

    Between tries it logs ``message`` (with the error, the delay and ``context`` as fields) and
    calls ``wait(delay)``; the delay starts at ``first`` and doubles up to :data:`MAX_DELAY_S`.
    An error ``retriable`` refuses (by default, one Kafka does not mark retriable, such as
    ``CommitFailedError``) is raised at once. When ``wait`` returns true (an ``Event.wait``
    whose event is set), :class:`Interrupted` is raised from the last error.
    """
    delay = first
    while True:
        try:
            return attempt()
        except KafkaError as err:
            if not retriable(err):
                raise
            log.warning(message, extra=fields(**context, error=err, retry_in_s=delay))
            if wait(delay):
                raise Interrupted(message) from err
            delay = min(2 * delay, MAX_DELAY_S)
