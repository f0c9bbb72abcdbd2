"""``streamrec produce replay|synth|send``: send watch events to the input topic.

The work is done by :mod:`producer.cli` (also reachable as ``python -m producer``); this module
only plugs it into the ``streamrec`` command.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from producer.cli import add_arguments

    parser = subparsers.add_parser(
        "produce",
        help="send watch events to Kafka: replay a file, a synthetic stream, or one event",
        description="Send watch events to the input topic, keyed by viewer, as JSON.",
    )
    add_arguments(parser)
