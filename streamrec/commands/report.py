"""``streamrec report``: quality vs the baseline, throughput and latency, drawn to one PNG.

From a running service's Prometheus (``--prometheus http://localhost:9090``) or from the JSON
of ``streamrec evaluate --json`` (``--from-json eval.json``). Needs matplotlib, the optional
extra ``pip install 'streamrec[report]'``. When the service runs a live experiment (``serve
--arms``), the readout of each arm against the control is printed as a table too, and drawn.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from contract.errors import UserError


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration such as 90s, 30m, 2h; got {text!r}")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "report",
        help="draw quality vs baseline, throughput and latency to a PNG",
        description="Render the key series to a PNG: from the Prometheus that scrapes a running "
        "service, or from the JSON of `streamrec evaluate --json`.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prometheus", metavar="URL", help="Prometheus base URL, e.g. http://localhost:9090")
    source.add_argument(
        "--from-json", type=Path, metavar="EVAL.json", help="output of streamrec evaluate --json"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("report.png"), help="PNG to write (default %(default)s)"
    )
    parser.add_argument(
        "--since",
        type=_seconds,
        default=3600.0,
        metavar="DURATION",
        help="with --prometheus: how far back (default 1h)",
    )
    parser.add_argument(
        "--window",
        default="1m",
        metavar="DURATION",
        help="with --prometheus: rate window of each point (default 1m)",
    )
    parser.add_argument(
        "--control",
        default="control",  # streamrec.report.CONTROL (imported only when the command runs)
        metavar="ARM",
        help="with --prometheus and a live experiment: the arm the others are compared with "
        "(default %(default)s, the name of a service's first arm when it runs no experiment)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from streamrec import report as rep

    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("drawing needs matplotlib: pip install 'streamrec[report]'") from None
    formats = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if args.out.suffix.lstrip(".").lower() not in formats:  # before any query, not after them all
        raise UserError(f"--out {args.out}: name a file matplotlib writes ({', '.join(sorted(formats))})")
    if args.prometheus:
        try:
            report = rep.from_prometheus(
                args.prometheus, since_s=args.since, window=args.window, control=args.control
            )
        except (ConnectionError, ValueError) as err:
            raise UserError(str(err)) from None
        if report.is_empty():
            raise UserError(
                f"no streamrec series in {args.prometheus} over the last {args.since:g} s: "
                "is it scraping the service's /metrics?"
            )
    else:
        if not args.from_json.is_file():
            raise UserError(f"{args.from_json}: no such file")
        try:
            reports = rep.load_eval_json(args.from_json)
        except ValueError as err:
            raise UserError(str(err)) from None
        report = rep.from_eval_json(reports, title=f"streamrec evaluation ({args.from_json.name})")
    if report.experiment:
        print(rep.readout_table(report.experiment, control=report.control), end="\n\n")
    try:
        out = rep.render(report, args.out)
    except (OSError, ValueError) as err:  # an unwritable folder, a format matplotlib lacks
        raise UserError(f"cannot write {args.out}: {err}") from None
    print(out)
    return 0
