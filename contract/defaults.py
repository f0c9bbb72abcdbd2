"""Where every command starts when it is told nothing: the local broker and the topic names.

Defined once here, so ``streamrec kafka up``, ``streamrec produce``, ``streamrec serve`` and
``streamrec recs`` agree without importing each other.

>>> DEFAULT_BOOTSTRAP
'127.0.0.1:19092'
"""

from __future__ import annotations

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "DEFAULT_BOOTSTRAP", "INPUT_TOPIC", "OUTPUT_TOPIC", "DLQ_TOPIC"]

#: The local broker of ``streamrec kafka up`` listens here.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 19092
DEFAULT_BOOTSTRAP = f"{DEFAULT_HOST}:{DEFAULT_PORT}"

#: Watch events in (:mod:`contract.schema`).
INPUT_TOPIC = "watch-events"
#: Recommendation lists out, keyed by viewer.
OUTPUT_TOPIC = "recommendations"
#: Events that could not be used, unchanged, with the reason in headers.
DLQ_TOPIC = "watch-events-dlq"
