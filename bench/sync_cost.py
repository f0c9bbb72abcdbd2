"""What one exchange of video updates costs: take, encode, decode, apply (issue 12).

Usage::

    .venv/bin/python bench/sync_cost.py [--ml100k PATH] [--events N] [--workers 2]
        [--every 1024] [--videos 3000] [--profile] [--set shortlist_budget=null]

The workers of a group are simulated in one process, as the service runs them: the stream is
split by viewer with Kafka's partitioner, each worker learns its own viewers' events in batches
of 256 (test then train, :meth:`rank_and_learn`), and once it has learned ``--every`` events
since it last sent (the service's ``--sync-every``) it *takes* its updates
(:meth:`model.replica.VideoReplica.take`) and *encodes* them as update records
(:meth:`~model.replica.VideoUpdates.records`, as the service sends them); every other worker
*decodes* each record and *applies* it. Each phase is timed per exchange (one worker's send;
its apply is the time of one peer), beside the time the sender took to learn the events the
exchange carries: the sync's share of a worker's time is ``(take + encode + (N - 1) * (decode +
apply)) / learn``. ``--profile`` adds the functions take and apply spend their time in.

Prints a table and writes ``bench/results/sync_cost.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import contract  # noqa: E402, F401  (first: it makes BLAS single-threaded before numpy loads)

# isort: split

from kafka.partitioner.default import murmur2  # noqa: E402

from bench.results import write_results  # noqa: E402
from consumer.sync import RECORD_BUDGET  # noqa: E402
from model.registry import parse_settings  # noqa: E402
from model.replica import ReplicatedRanker, VideoReplica, VideoUpdates  # noqa: E402
from producer.readers import read_events  # noqa: E402
from producer.synth import synth_events  # noqa: E402

BATCH = 256
PHASES = ("learn", "take", "encode", "decode", "apply")


def worker_of(viewer: str, workers: int) -> int:
    return (murmur2(viewer.encode()) & 0x7FFFFFFF) % workers


class Timed:
    """Seconds per phase, summed; optionally a profile of the phases asked for."""

    def __init__(self, profiled: tuple[str, ...] = ()) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.profiles = {name: cProfile.Profile() for name in profiled}

    def run(self, phase: str, fn, *args):  # noqa: ANN001, ANN202 - any callable
        profile = self.profiles.get(phase)
        started = time.perf_counter()
        if profile is not None:
            profile.enable()
        out = fn(*args)
        if profile is not None:
            profile.disable()
        self.seconds[phase] += time.perf_counter() - started
        return out

    def top(self, phase: str, n: int = 12) -> str:
        text = io.StringIO()
        pstats.Stats(self.profiles[phase], stream=text).sort_stats("tottime").print_stats(n)
        return text.getvalue()


def simulate(events: list, workers: int, every: int, timed: Timed, settings: dict | None = None) -> dict:
    """Learn ``events`` over ``workers`` replicas exchanging every ``every`` learned events each;
    ``settings``: the model's (``ReplicatedRanker``'s constructor arguments)."""
    replicas = [VideoReplica(ReplicatedRanker(**(settings or {}))) for _ in range(workers)]
    pending: list[list] = [[] for _ in range(workers)]
    unsent = [0] * workers
    exchanges = records = bytes_sent = videos = pairs = 0

    def send(w: int) -> None:
        nonlocal exchanges, records, bytes_sent, videos, pairs
        updates = timed.run("take", replicas[w].take)
        parts = timed.run("encode", updates.records, RECORD_BUDGET)
        exchanges += 1
        records += len(parts)
        bytes_sent += sum(len(p) for p in parts)
        videos += len(updates)
        pairs += updates.pairs[2].size
        for other, replica in enumerate(replicas):
            if other == w:
                continue
            for part in parts:
                decoded = timed.run("decode", VideoUpdates.from_bytes, part)
                if other == (w + 1) % workers:  # one peer's apply is timed: each applies the same
                    timed.run("apply", replica.apply, decoded)
                else:
                    replica.apply(decoded)

    for e in events:
        w = worker_of(e.viewer, workers)
        pending[w].append(e)
        if len(pending[w]) == BATCH:
            timed.run("learn", replicas[w].model.rank_and_learn, pending[w], 10)
            unsent[w] += len(pending[w])
            pending[w] = []
            if unsent[w] >= every:
                send(w)
                unsent[w] = 0
    return {
        "exchanges": exchanges,
        "records": records,
        "bytes_per_exchange": bytes_sent / max(exchanges, 1),
        "videos_per_exchange": videos / max(exchanges, 1),
        "pairs_per_exchange": pairs / max(exchanges, 1),
        "catalogue": len(replicas[0].model.videos),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ml100k", type=Path, help="MovieLens 100K u.data (default: the synthetic stream)")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--videos", type=int, default=3000, help="the synthetic stream's catalogue")
    parser.add_argument("--viewers", type=int, default=2000, help="the synthetic stream's viewers")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--every", type=int, default=1024)
    parser.add_argument("--profile", action="store_true", help="print where take and apply spend time")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a model setting (JSON value)"
    )
    parser.add_argument("--json", type=Path, default=REPO / "bench/results/sync_cost.json")
    args = parser.parse_args(argv)
    if args.ml100k:
        events = read_events(args.ml100k)[: args.events]
    else:
        events = list(synth_events(viewers=args.viewers, videos=args.videos, events=args.events, seed=1))
    timed = Timed(("take", "apply") if args.profile else ())
    shape = simulate(events, args.workers, args.every, timed, parse_settings(args.set))
    n = max(shape["exchanges"], 1)
    per_exchange_ms = {phase: 1000 * s / n for phase, s in timed.seconds.items()}
    # The learn time an exchange carries: the sender's events (every), at the mean learn rate.
    per_exchange_ms["learn"] = 1000 * timed.seconds["learn"] / len(events) * args.every
    peers = args.workers - 1
    sync_ms = (
        per_exchange_ms["take"] + per_exchange_ms["encode"]
        + peers * (per_exchange_ms["decode"] + per_exchange_ms["apply"])
    )  # fmt: skip
    share = sync_ms / per_exchange_ms["learn"]
    print(
        f"{len(events):,} events, {args.workers} workers, each sends every {args.every} events: "
        f"{shape['exchanges']} exchanges, catalogue {shape['catalogue']:,}, per exchange "
        f"{shape['videos_per_exchange']:,.0f} videos, {shape['pairs_per_exchange']:,.0f} pairs, "
        f"{shape['bytes_per_exchange'] / 1e3:,.0f} kB in {shape['records'] / n:.1f} records"
    )
    print(f"{'phase':<8} {'ms per exchange':>16}")
    for phase in PHASES:
        print(f"{phase:<8} {per_exchange_ms[phase]:16.2f}")
    print(f"sync (take + encode + {peers} x (decode + apply)) / learn = {share:.3f}")
    if args.profile:
        for phase in ("take", "apply"):
            print(f"--- {phase} ---\n{timed.top(phase)}")
    write_results(
        args.json,
        {
            "args": {k: str(v) for k, v in vars(args).items()},
            "events": len(events),
            **shape,
            "ms_per_exchange": per_exchange_ms,
            "sync_ms_per_exchange": sync_ms,
            "sync_vs_learn": share,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
