"""Structured logs: one line per record, ``key=value`` pairs (logfmt), easy to grep and to parse.

>>> import logging
>>> record = logging.LogRecord("consumer.app", logging.INFO, "", 0, "checkpoint written", None, None)
>>> record.fields = {"events": 1200, "path": "/tmp/a b"}
>>> LogfmtFormatter().format(record).split(" ", 1)[1]
'level=info logger=consumer.app msg="checkpoint written" events=1200 path="/tmp/a b"'

"""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["KafkaNoiseFilter", "LogfmtFormatter", "configure", "fields"]


def _quote(value: object) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=... logger=... msg=... k=v ...``; extra fields come from ``extra={"fields": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        parts = [
            f"ts={ts}",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_quote(record.getMessage())}",
        ]
        for key, value in getattr(record, "fields", {}).items():
            parts.append(f"{key}={_quote(value)}")
        if record.exc_info:
            parts.append(f"error={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def fields(**kwargs: object) -> dict:
    """``log.info("msg", extra=fields(k=v))``: attach key=value pairs to one log line."""
    return {"fields": kwargs}


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is when a record is emitted.

    ``logging.StreamHandler(sys.stderr)`` keeps the stream it was given; if that stream is later
    replaced and closed (an embedding application, a test harness capturing output), every
    record after that is a "Logging error" traceback.
    """

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # noqa: D102 - logging.StreamHandler's attribute, resolved at emit time
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class KafkaNoiseFilter(logging.Filter):
    """kafka-python's warnings and errors, without its floods and its known harmless tracebacks.

    * A line kafka-python repeats (``Topic t not found in cluster metadata`` every 100 ms while
      a topic does not exist, ``NotCoordinatorError`` while a new group's coordinator loads) is
      written once per ``window`` seconds; the next one written says how many were held back.
    * ``Topic t not found in cluster metadata``, an error to kafka-python, is a warning here:
      the service waits for a topic its producers have not made yet.
    * A group's assignment that found no metadata for a topic (``No partition metadata``) is
      dropped: just after the topic was created, the group rejoins once the metadata comes; if
      it does not exist, the service's own warning says so once.
    * kafka-python 3.0 closes a connection from one thread while its network thread may still be
      reading it: the reader then finds the socket or protocol gone and logs an ``AttributeError``
      on ``None`` with a traceback, on many clean shutdowns. Only a closed connection has them
      set to ``None``, so those records are dropped.

    Other loggers pass untouched.

    >>> f, now = KafkaNoiseFilter(window=30.0, clock=lambda: now), 0.0
    >>> def rec(msg):
    ...     return logging.LogRecord("kafka.cluster", logging.ERROR, "", 0, msg, None, None)
    >>> [f.filter(rec("Topic t not found")) for now in (0.0, 1.0, 2.0)]
    [True, False, False]
    >>> now = 31.0; r = rec("Topic t not found"); f.filter(r), r.fields
    (True, {'repeated': 2})
    """

    def __init__(self, window: float = 30.0, clock=time.monotonic) -> None:  # noqa: ANN001
        super().__init__()
        self.window = window
        self.clock = clock
        # (logger, level, message, error) -> (when last written, how many held back since)
        self._last: dict[tuple[str, int, str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("kafka"):
            return True
        if _closed_connection_race(record) or _topic_just_made(record):
            return False
        if _waiting_for_a_topic(record):  # a topic not made yet is a wait, not an error
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        error = record.exc_info[1] if record.exc_info else None
        key = (record.name, record.levelno, record.getMessage(), repr(error))
        now = self.clock()
        written = self._last.get(key)
        if written is not None and now - written[0] < self.window:
            self._last[key] = (written[0], written[1] + 1)
            return False
        if written is not None and written[1]:
            record.fields = {**getattr(record, "fields", {}), "repeated": written[1]}
        if len(self._last) > 1000:  # ids in messages must not grow it without bound
            self._last.clear()
        self._last[key] = (now, 0)
        return True


def _waiting_for_a_topic(record: logging.LogRecord) -> bool:
    return (
        record.name == "kafka.cluster"
        and record.levelno > logging.WARNING
        and record.getMessage().endswith("not found in cluster metadata")
    )


def _topic_just_made(record: logging.LogRecord) -> bool:
    """The group's first assignment ran before the metadata of a just-created topic arrived: the
    group rejoins when it does. A topic that does not exist is the service's own warning."""
    return record.name.startswith("kafka.coordinator.assignors") and record.getMessage().startswith(
        "No partition metadata for topic"
    )


def _closed_connection_race(record: logging.LogRecord) -> bool:
    """A traceback of kafka-python reading a connection another thread just closed."""
    error = record.exc_info[1] if record.exc_info else None
    if not isinstance(error, AttributeError) or not record.name.startswith("kafka.net"):
        return False
    return str(error) in (
        "'NoneType' object has no attribute 'data_received'",
        "'NoneType' object has no attribute 'recv'",
    )


def configure(level: str = "INFO") -> None:
    """Send logs to stderr in logfmt; quiet kafka-python's own INFO chatter, floods and close races."""
    handler = _StderrHandler()
    handler.setFormatter(LogfmtFormatter())
    handler.addFilter(KafkaNoiseFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("kafka").setLevel(logging.WARNING)
