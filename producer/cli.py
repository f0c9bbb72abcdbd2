"""``streamrec produce`` (also ``python -m producer``): put watch events on the input topic.

Three sources::

    streamrec produce replay PATH [--format F] [--rate N | --speedup X] [--limit N] [--loop N]
    streamrec produce synth [--viewers N] [--videos N] [--events N] [--seed S] [--rate N | --speedup X]
    streamrec produce synth --output synth.jsonl ...   (a file for `streamrec evaluate`, no Kafka)
    streamrec produce send --viewer V --video W --watch-time S [--duration D] [--timestamp T]

Common flags: the connection flags of :mod:`contract.connection` (``--bootstrap-servers``,
default the local broker of ``streamrec kafka up``; ``--security-protocol``, SASL and TLS),
``--topic`` (env ``STREAMREC_INPUT_TOPIC``, default ``watch-events``), ``--partitions`` (used
only when the topic has to be created).

A progress bar goes to stderr when it is a terminal; the summary line goes to stdout (``--json``
makes it one JSON object, for scripts and benchmarks). The exit code is 0 when every event was
acknowledged, 1 when some failed, 2 on a user error (broker unreachable, bad file, bad flag).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from contract.arguments import finite_float, positive_float, positive_int
from contract.connection import KafkaConnection, add_connection_arguments, kafka_logs_held
from contract.defaults import INPUT_TOPIC
from contract.errors import UserError
from contract.events import WatchEvent
from producer.pacing import paced
from producer.progress import Progress

__all__ = [
    "add_arguments",
    "add_connect_timeout",
    "run",
    "main",
    "looped",
]


def add_connect_timeout(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The ``--connect-timeout`` flag of every command that talks to Kafka."""
    parser.add_argument(
        "--connect-timeout",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="seconds to wait for the broker to answer (default %(default)s)",
    )


def _common(parser: argparse.ArgumentParser) -> None:
    add_connection_arguments(parser)
    kafka = parser.add_argument_group("Kafka")
    kafka.add_argument(
        "--topic",
        default=os.environ.get("STREAMREC_INPUT_TOPIC", INPUT_TOPIC),
        help="input topic (env STREAMREC_INPUT_TOPIC; default %(default)s)",
    )
    kafka.add_argument(
        "--partitions",
        type=positive_int,
        default=3,
        help="partitions when the topic has to be created (default %(default)s)",
    )
    add_connect_timeout(kafka)
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def _pacing(parser: argparse.ArgumentParser) -> None:
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=positive_float, metavar="N", help="events per second")
    pace.add_argument(
        "--speedup",
        type=positive_float,
        metavar="X",
        help="replay the events' own timestamps X times faster (default: as fast as possible)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``replay``, ``synth`` and ``send`` subcommands to ``parser``."""
    sub = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)

    replay = sub.add_parser("replay", help="send a file of events (MovieLens or JSON lines) in time order")
    replay.add_argument("path", type=Path, help="u.data, ratings.dat, ratings.csv, a .jsonl file or a folder")
    replay.add_argument("--format", default="auto", choices=("auto", "movielens", "jsonl"))
    replay.add_argument("--limit", type=positive_int, metavar="N", help="send only the first N events")
    replay.add_argument(
        "--loop",
        type=positive_int,
        default=1,
        metavar="N",
        help="send the file N times, each pass shifted after the previous one in time (default 1)",
    )
    _pacing(replay)
    _common(replay)

    synth = sub.add_parser("synth", help="send a seeded synthetic stream with planted structure")
    synth.add_argument("--viewers", type=positive_int, default=2000, help="default %(default)s")
    synth.add_argument("--videos", type=positive_int, default=5000, help="default %(default)s")
    synth.add_argument("--events", type=positive_int, default=100_000, help="default %(default)s")
    synth.add_argument("--seed", type=int, default=0, help="default %(default)s")
    synth.add_argument(
        "--start",
        type=finite_float,
        default=None,
        metavar="T",
        help="timestamp of the first event (default 2024-01-01T00:00:00Z)",
    )
    synth.add_argument(
        "--output",
        type=Path,
        metavar="PATH",
        help="write the events to PATH as JSON lines instead of sending them (for `streamrec evaluate`)",
    )
    _pacing(synth)
    _common(synth)

    send = sub.add_parser("send", help="send one event, for trying things by hand")
    send.add_argument("--viewer", required=True)
    send.add_argument("--video", required=True)
    send.add_argument(
        "--watch-time", type=finite_float, metavar="S", help="seconds watched (default: unknown)"
    )
    send.add_argument("--duration", type=finite_float, metavar="D", help="video length in seconds")
    send.add_argument(
        "--timestamp", type=finite_float, metavar="T", help="Unix seconds of the watch (default: now)"
    )
    send.add_argument("--event-id", help="an id for the event (optional)")
    _common(send)
    parser.set_defaults(func=run)


def looped(events: Sequence[WatchEvent], passes: int) -> Iterator[WatchEvent]:
    """``events`` ``passes`` times, each pass shifted to start one second after the previous ends.

    Time order is preserved, so a looped replay still looks like one stream moving forward.

    >>> evs = [WatchEvent(10.0, "a", "x"), WatchEvent(12.0, "b", "y")]
    >>> [e.timestamp for e in looped(evs, 3)]
    [10.0, 12.0, 13.0, 15.0, 16.0, 18.0]
    """
    if not events:
        return
    span = events[-1].timestamp - events[0].timestamp + 1.0
    for n in range(passes):
        shift = n * span
        for e in events:
            yield e._replace(timestamp=e.timestamp + shift) if shift else e


def _source(args: argparse.Namespace) -> tuple[Iterable[WatchEvent], int]:
    """The events to send and their count."""
    if args.source == "replay":
        from producer.readers import DataFormatError, read_events

        try:
            events = read_events(args.path, args.format)
        except DataFormatError as err:
            raise UserError(str(err)) from None
        if args.limit is not None:
            events = events[: args.limit]
        _check_loop(events, args.loop)
        return looped(events, args.loop), len(events) * args.loop
    if args.source == "synth":
        from contract.schema import MAX_TIMESTAMP, MIN_TIMESTAMP
        from producer.synth import DEFAULT_START, SyntheticStream

        start = DEFAULT_START if args.start is None else args.start
        stream = SyntheticStream(args.viewers, args.videos, args.events, args.seed, start=start)
        if not MIN_TIMESTAMP <= start <= start + stream.span_days * 86400 <= MAX_TIMESTAMP:
            raise UserError(
                f"--start {start:g}: the stream's {stream.span_days:g} days from there must lie within "
                "1970..2100 in Unix seconds (not milliseconds)"
            )
        return _checked(stream, "synthetic event"), len(stream)
    return [_one_event(args)], 1


def _check_loop(events: Sequence[WatchEvent], passes: int) -> None:
    """Refuse a ``--loop`` whose last passes would carry timestamps the service refuses."""
    from contract.schema import MAX_TIMESTAMP

    if not events or passes == 1:
        return
    span = events[-1].timestamp - events[0].timestamp + 1.0
    if events[-1].timestamp + (passes - 1) * span > MAX_TIMESTAMP:
        fit = int((MAX_TIMESTAMP - events[-1].timestamp) // span) + 1
        raise UserError(
            f"--loop {passes} would carry timestamps past 2100, which the service refuses: each pass "
            f"moves the file {span:,.0f} s later; at most {fit} passes fit"
        )


def _checked(events: Iterable[WatchEvent], what: str) -> Iterator[WatchEvent]:
    """``events``, each held to the consumer's rules: one it would dead-letter stops the
    command with the reason (the start of a synthetic stream out of range, say) before it is
    sent, instead of a run that reports success and feeds the dead-letter topic."""
    from contract.schema import EventError, check_event

    for number, event in enumerate(events, start=1):
        try:
            yield check_event(event)
        except EventError as err:
            raise UserError(f"{what} {number:,} is invalid: {err}") from None


def _one_event(args: argparse.Namespace) -> WatchEvent:
    from contract.schema import EventError, check_event

    event = WatchEvent(
        timestamp=time.time() if args.timestamp is None else args.timestamp,
        viewer=args.viewer,
        video=args.video,
        watch_time=args.watch_time,
        duration=args.duration,
        event_id=args.event_id,
    )
    try:  # the consumer's own rules: refuse here what it would dead-letter
        return check_event(event)
    except EventError as err:
        raise UserError(f"invalid event: {err}") from None


def _write_jsonl(events: Iterable[WatchEvent], path: Path) -> int:
    """Write ``events`` to ``path`` in the input topic's JSON, one per line."""
    from contract.schema import event_to_json

    try:
        with path.open("wb") as out:
            count = 0
            for event in events:
                out.write(event_to_json(event) + b"\n")
                count += 1
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror}") from None
    print(f"wrote {count:,} events to {path}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Send the chosen source to Kafka; print the summary. Returns the exit code."""
    with kafka_logs_held():  # errors are one line of ours, not kafka-python's connection logs
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from producer.sink import BrokerUnavailable, KafkaSink

    events, total = _source(args)
    if getattr(args, "output", None) is not None:
        return _write_jsonl(events, args.output)
    try:
        sink = KafkaSink(
            KafkaConnection.from_arguments(args),
            args.topic,
            partitions=args.partitions,
            connect_timeout_s=args.connect_timeout,
        )
    except BrokerUnavailable as err:
        raise UserError(str(err)) from None

    progress = Progress(total=total)
    start = time.perf_counter()
    interrupted = False
    last = None
    try:
        pace = {"rate": getattr(args, "rate", None), "speedup": getattr(args, "speedup", None)}
        send, update = sink.send, progress.update
        for event in paced(events, **pace):
            last = send(event)
            update()
    except KeyboardInterrupt:
        interrupted = True  # stop sending, but still deliver what was queued and report it
    finally:
        stats = sink.close()
        progress.close()
    elapsed = time.perf_counter() - start

    summary = {
        "topic": args.topic,
        "bootstrap_servers": args.bootstrap_servers,
        "sent": stats.acked,
        "failed": stats.failed,
        "elapsed_s": round(elapsed, 3),
        "events_per_s": round(stats.acked / elapsed, 1) if elapsed > 0 else 0.0,
        "interrupted": interrupted,
    }
    if stats.first_error:
        summary["first_error"] = stats.first_error
    if args.source == "send" and last is not None and last.succeeded():
        summary["partition"], summary["offset"] = last.value.partition, last.value.offset
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"sent {stats.acked:,} event{'s' if stats.acked != 1 else ''} to {args.topic} "
            f"at {args.bootstrap_servers} in {elapsed:.2f} s ({summary['events_per_s']:,.0f} events/s); "
            f"{stats.failed:,} failed" + (" (interrupted)" if interrupted else "")
        )
        if "offset" in summary:
            print(f"partition {summary['partition']}, offset {summary['offset']}")
        if stats.first_error:
            print(f"first delivery error: {stats.first_error}", file=sys.stderr)
    if interrupted:
        return 130
    return 1 if stats.failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m producer", description="Send watch events to the streamrec input topic."
    )
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m producer``: the same as ``streamrec produce``."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UserError as err:
        print(f"python -m producer: error: {err}", file=sys.stderr)
        return 2
