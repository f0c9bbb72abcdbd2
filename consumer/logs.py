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

__all__ = ["LogfmtFormatter", "configure", "fields"]


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


def configure(level: str = "INFO") -> None:
    """Send logs to stderr in logfmt; quiet kafka-python's own INFO chatter."""
    handler = _StderrHandler()
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("kafka").setLevel(logging.WARNING)
