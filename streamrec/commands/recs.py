"""``streamrec recs``: read the recommendations topic and print each list readably.

::

    streamrec recs                         # every list in the topic so far, then exit
    streamrec recs --viewer UC2n --latest  # that viewer's current list
    streamrec recs --follow                # lists as they are published, until Ctrl-C
    streamrec recs --follow --from-beginning --max 20 --json

Without ``--follow`` the topic is read from its beginning up to its end at start-up. With
``--follow`` reading starts at the end (only new lists), or at the beginning with
``--from-beginning``, and goes on until ``--max`` lists or Ctrl-C. The reader joins no consumer
group and commits nothing, so it never disturbs the service or other readers; it reads with
``read_committed`` so lists of an aborted exactly-once batch never show.

A list prints as (the age is how long ago the service published it; ``@ p:o`` is the input
record whose event it reflects)::

    UC2nEn-yNA1BtdDNWziphPGA  model streamrec  generated 2026-11-27 09:30:00Z (0.4 s ago)  event ... @ 0:41
       1. WK_Nr4tUtl8  0.931
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime

from contract.connection import FailureWatch, KafkaConnection, kafka_logs_held
from contract.defaults import OUTPUT_TOPIC


def register(subparsers: argparse._SubParsersAction) -> None:
    from contract.connection import add_connection_arguments
    from producer.cli import add_connect_timeout

    parser = subparsers.add_parser(
        "recs",
        help="print the recommendation lists the service publishes",
        description="Read the recommendations topic and print each list (viewer, top videos, scores, age).",
    )
    parser.add_argument("--viewer", help="only this viewer's lists")
    parser.add_argument("--follow", "-f", action="store_true", help="keep printing new lists until Ctrl-C")
    parser.add_argument(
        "--from-beginning", action="store_true", help="with --follow: start at the oldest list, not new ones"
    )
    parser.add_argument("--latest", action="store_true", help="print only the newest list of each viewer")
    parser.add_argument("--max", type=int, metavar="N", help="stop after N lists")
    parser.add_argument("--json", action="store_true", help="print each message's JSON value as it is")
    add_connection_arguments(parser)
    parser.add_argument(
        "--topic",
        default=os.environ.get("STREAMREC_OUTPUT_TOPIC", OUTPUT_TOPIC),
        help="recommendations topic (env STREAMREC_OUTPUT_TOPIC; default %(default)s)",
    )
    add_connect_timeout(parser)
    parser.set_defaults(func=run)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def format_list(message: dict, now: float | None = None) -> str:
    """A published list as a few readable lines.

    >>> msg = {"viewer": "a", "items": [{"video": "x", "score": 0.93}, {"video": "yy", "score": 0.5}],
    ...        "model": "streamrec", "generated_at": 1704067260.5, "event_timestamp": 1704067260.0,
    ...        "source": {"partition": 0, "offset": 41}}
    >>> print(format_list(msg, now=1704067262.5))
    a  model streamrec  generated 2024-01-01 00:01:00Z (2.0 s ago)  event 2024-01-01 00:01:00Z @ 0:41
       1. x   0.930
       2. yy  0.500
    """
    now = time.time() if now is None else now
    generated = message.get("generated_at")
    source = message.get("source") or {}
    head = [str(message.get("viewer", "?")), f"model {message.get('model', '?')}"]
    if isinstance(generated, int | float):
        head.append(f"generated {_when(generated)} ({_age(now - generated)} ago)")
    event_ts = message.get("event_timestamp")
    if isinstance(event_ts, int | float):
        where = f" @ {source.get('partition')}:{source.get('offset')}" if source else ""
        head.append(f"event {_when(event_ts)}{where}")
    items = message.get("items") or []
    width = max((len(str(i.get("video", ""))) for i in items), default=0)
    lines = ["  ".join(head)]
    for rank, item in enumerate(items, start=1):
        score = item.get("score")
        score_text = f"{score:.3f}" if isinstance(score, int | float) else "?"
        lines.append(f"  {rank:>2}. {str(item.get('video')):<{width}}  {score_text}")
    if not items:
        lines.append("  (no videos to recommend yet)")
    return "\n".join(lines)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{max(seconds, 0.0):.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 172800 else f"{seconds / 86400:.0f} days"


class ListReader:
    """The messages of ``topic`` as ``(key, value)`` pairs (see the module docstring for which).

    Positions are fixed when the reader is made (so "from the end" means the end at that
    moment, and a missing topic is reported at once). Iterating stops at the end of the topic
    as it was then, unless ``follow``; :meth:`close` stops a follow. A context manager.
    """

    def __init__(
        self,
        where: KafkaConnection | str,
        topic: str,
        *,
        follow: bool = False,
        from_beginning: bool = False,
        viewer: str | None = None,
        connect_timeout_s: float = 10.0,
        poll_ms: int = 200,
    ) -> None:
        from kafka import KafkaConsumer, TopicPartition
        from kafka.errors import KafkaTimeoutError

        from contract.errors import UserError

        connection = KafkaConnection.of(where)
        FailureWatch.fresh()
        self.poll_ms = poll_ms
        self.wanted = viewer.encode() if viewer is not None else None
        try:
            self.consumer = KafkaConsumer(
                **connection.client_options(),
                group_id=None,
                enable_auto_commit=False,
                isolation_level="read_committed",
                bootstrap_timeout_ms=int(connect_timeout_s * 1000),
                client_id="streamrec-recs",
            )
        except KafkaTimeoutError as err:
            raise UserError(connection.unreachable(err)) from None
        try:
            partitions = self.consumer.partitions_for_topic(topic)
            while not partitions:
                if not follow:
                    raise UserError(f"topic {topic!r} does not exist yet (is `streamrec serve` running?)")
                time.sleep(1.0)  # following a topic the service has not created yet: wait for it
                partitions = self.consumer.partitions_for_topic(topic)
            self.parts = [TopicPartition(topic, p) for p in sorted(partitions)]
            self.consumer.assign(self.parts)
            if follow and not from_beginning:
                self.consumer.seek_to_end(*self.parts)
            else:
                self.consumer.seek_to_beginning(*self.parts)
            for tp in self.parts:  # resolve the positions now, not at the first poll
                self.consumer.position(tp)
            self.end = None if follow else self.consumer.end_offsets(self.parts)
        except BaseException:
            self.consumer.close()
            raise

    def __iter__(self) -> Iterator[tuple[bytes | None, bytes | None]]:
        consumer, end, wanted = self.consumer, self.end, self.wanted
        while True:
            if end is not None and all(consumer.position(tp) >= end[tp] for tp in self.parts):
                return
            for records in consumer.poll(timeout_ms=self.poll_ms).values():
                for record in records:
                    if wanted is None or record.key == wanted:
                        yield record.key, record.value

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> ListReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run(args: argparse.Namespace) -> int:
    with kafka_logs_held():  # errors are one line of ours, not kafka-python's connection logs
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    import orjson

    from contract.errors import UserError

    if args.max is not None and args.max < 1:
        raise UserError("--max must be >= 1")
    if args.latest and args.follow:
        raise UserError("--latest prints the current lists and exits: it cannot be combined with --follow")
    counts = {"shown": 0, "skipped": 0}
    latest: dict[bytes | None, bytes | None] = {}

    def as_list(value: bytes | None) -> dict | None:
        try:
            message = orjson.loads(value) if value is not None else None
        except orjson.JSONDecodeError:
            return None
        ok = isinstance(message, dict) and isinstance(message.get("items"), list) and "viewer" in message
        return message if ok else None

    def show(value: bytes | None) -> None:
        message = as_list(value)
        if message is None:
            if not counts["skipped"]:
                print(
                    f"streamrec recs: skipping messages of {args.topic} that are not recommendation lists "
                    f"(first: {(value or b'')[:80]!r}); is --topic the service's output topic?",
                    file=sys.stderr,
                )
            counts["skipped"] += 1
            return
        print(value.decode("utf-8", "replace") if args.json else format_list(message), flush=True)
        counts["shown"] += 1

    def done() -> bool:
        return args.max is not None and counts["shown"] >= args.max

    reader = ListReader(
        KafkaConnection.from_arguments(args),
        args.topic,
        follow=args.follow,
        from_beginning=args.from_beginning,
        viewer=args.viewer,
        connect_timeout_s=args.connect_timeout,
    )
    try:
        for key, value in reader:
            if args.latest:
                if as_list(value) is not None:
                    latest.pop(key, None)
                    latest[key] = value  # re-inserted, so the dict keeps publication order
                else:
                    show(value)  # counted and reported as skipped
                continue
            show(value)
            if done():
                break
    except KeyboardInterrupt:
        pass
    finally:
        reader.close()
    for value in latest.values():
        if done():
            break
        show(value)
    if counts["skipped"]:
        print(
            f"streamrec recs: skipped {counts['skipped']:,} messages that are not recommendation lists",
            file=sys.stderr,
        )
    if counts["shown"] == 0 and not args.follow:
        who = f" for viewer {args.viewer!r}" if args.viewer else ""
        print(f"no recommendation lists{who} in {args.topic} yet", file=sys.stderr)
    return 0
