"""The ``streamrec`` command: one entry point, a subcommand per job.

Each subcommand lives in its own module under :mod:`streamrec.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a function taking the
parsed arguments and returning an exit code. Modules are imported only when the command line
names them, so ``streamrec evaluate`` never pays for importing Kafka.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from contract import __version__
from contract.errors import UserError

#: subcommand -> (module under streamrec.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "evaluate": ("evaluate", "test-then-train evaluation of models on a file of events"),
    "kafka": ("kafka", "start, stop or check the local Kafka broker (no Docker needed)"),
    "produce": ("produce", "send watch events to Kafka: replay a file, a synthetic stream, or one event"),
    "data": ("data", "download MovieLens data sets from GroupLens into a local cache"),
    "recs": ("recs", "print the recommendation lists the service publishes"),
    "demo": ("demo", "run broker, service and a stream of events end to end (the quick start)"),
    "serve": ("serve", "learn from watch events and publish recommendations (the service)"),
    "report": ("report", "draw quality vs baseline, throughput and latency to a PNG"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamrec", description="A streaming, online-learning recommender on Kafka."
    )
    parser.add_argument("--version", action="version", version=f"streamrec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(f"streamrec.commands.{module}").register(sub)
        else:
            sub.add_parser(name, help=help_)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    wanted = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=wanted if wanted in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"streamrec {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
