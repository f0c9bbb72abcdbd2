"""``streamrec data fetch NAME``: download a MovieLens data set from GroupLens into the cache.

The path of the ratings file is the only line on stdout, so scripts can do
``streamrec evaluate "$(streamrec data fetch movielens-1m)"``; the licence reminder and the
download progress go to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from streamrec.datasets import DATASETS

    parser = subparsers.add_parser(
        "data",
        help="download MovieLens data sets into a local cache",
        description="Data sets the project may not ship: fetched from their publisher into a cache.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    fetch = actions.add_parser(
        "fetch",
        help="download, verify and unpack a data set; print its ratings file",
        description="Download, verify and unpack a MovieLens data set; print the path of its ratings file.",
    )
    fetch.add_argument("name", choices=sorted(DATASETS), metavar="NAME", help=", ".join(sorted(DATASETS)))
    fetch.add_argument(
        "--cache-dir",
        type=Path,
        help="where archives are unpacked (default $STREAMREC_CACHE, else ~/.cache/streamrec)",
    )
    fetch.add_argument(
        "--url", help="download from this address instead of GroupLens (a mirror, a local copy)"
    )
    fetch.add_argument("--force", action="store_true", help="download again even if already in the cache")
    fetch.add_argument(
        "--timeout", type=float, default=60.0, metavar="S", help="network timeout in seconds (default 60)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from contract.errors import UserError
    from streamrec.datasets import LICENCE_NOTE, FetchError, fetch, print_progress

    progress = print_progress if sys.stderr.isatty() else None
    try:
        path = fetch(
            args.name,
            args.cache_dir,
            url=args.url,
            timeout_s=args.timeout,
            force=args.force,
            progress=progress,
        )
    except FetchError as err:
        raise UserError(str(err)) from None
    finally:
        if progress:
            sys.stderr.write("\n")
    print(LICENCE_NOTE, file=sys.stderr)
    print(path)
    return 0
