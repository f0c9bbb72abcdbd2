"""The messages the service publishes: recommendation lists and dead letters.

Recommendations (topic ``recommendations``), keyed by viewer id so a compacted topic keeps the
latest list per viewer::

    {"viewer": "UC2n", "items": [{"video": "WK_N", "score": 0.93}, ...], "model": "streamrec",
     "generated_at": 1700000000.123, "event_timestamp": 1616963421.0,
     "source": {"partition": 0, "offset": 41}}

Dead letters (topic ``watch-events-dlq``) carry the original key and value *unchanged*, so they
can be fixed and replayed as they are; the reason travels in headers:

* ``streamrec.error.reason``: a code from :data:`streamrec.schema.REASONS`;
* ``streamrec.error.detail``: a human-readable sentence;
* ``streamrec.source``: ``topic/partition/offset`` of the original record.

>>> value = recommendation_value("a", ["x", "y"], [0.5, 0.25], "m", 10.0, 5.0, 0, 7)
>>> orjson.loads(value)["items"]
[{'video': 'x', 'score': 0.5}, {'video': 'y', 'score': 0.25}]

"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from consumer.intake import DeadLetter

__all__ = ["recommendation_value", "dead_letter_headers"]


def recommendation_value(
    viewer: str,
    videos: Sequence[str],
    scores: Sequence[float],
    model: str,
    generated_at: float,
    event_timestamp: float,
    partition: int,
    offset: int,
) -> bytes:
    """The JSON value of one published recommendation list."""
    return orjson.dumps(
        {
            "viewer": viewer,
            "items": [{"video": v, "score": round(float(s), 6)} for v, s in zip(videos, scores, strict=True)],
            "model": model,
            "generated_at": generated_at,
            "event_timestamp": event_timestamp,
            "source": {"partition": partition, "offset": offset},
        }
    )


def dead_letter_headers(dead: DeadLetter) -> list[tuple[str, bytes]]:
    """Kafka headers that explain why ``dead`` was not used and where it came from."""
    return [
        ("streamrec.error.reason", dead.reason.encode()),
        ("streamrec.error.detail", dead.detail.encode()),
        ("streamrec.source", f"{dead.topic}/{dead.partition}/{dead.offset}".encode()),
    ]
