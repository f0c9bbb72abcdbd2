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

``wire`` is kafka-python's own CPU for the bytes, without a network: building each record into
a batch with the service's output codec (zstd: compression and CRC) and reading it back
(decompression, CRC check), as the sender's producer and one peer's reader do. ``--precision
float32,int8`` runs the whole simulation once per precision of the vectors' changes
(``--sync-precision``), taking turns, and reports the group's test-then-train HR@10 (hits over
evaluated events, summed over the workers) beside each: quantising must not cost quality.

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
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder  # noqa: E402

from bench.results import write_results  # noqa: E402
from consumer.sync import RECORD_BUDGET  # noqa: E402
from model.evaluate import StreamingEvaluator  # noqa: E402
from model.registry import parse_settings  # noqa: E402
from model.replica import PRECISIONS, ReplicatedRanker, VideoReplica, VideoUpdates  # noqa: E402
from producer.readers import read_events  # noqa: E402
from producer.synth import synth_events  # noqa: E402

BATCH = 256
PHASES = ("learn", "take", "encode", "wire", "decode", "apply")
#: kafka-python's code of the service's output codec (zstd), as in a record batch's attributes.
ZSTD = 4


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


def through_kafka_python(record: bytes) -> bytes:
    """``record`` built into a zstd batch by kafka-python and read back: the client-side work a
    producer and a consumer do for it."""
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=ZSTD, is_transactional=False, producer_id=-1,
        producer_epoch=-1, base_sequence=-1, batch_size=len(record) + 1024,
    )  # fmt: skip
    builder.append(0, timestamp=None, key=b"worker", value=record, headers=[])
    batch = DefaultRecordBatch(bytes(builder.build()))
    if not batch.validate_crc():
        raise AssertionError("CRC mismatch")
    return next(iter(batch)).value


def simulate(
    events: list,
    workers: int,
    every: int,
    timed: Timed,
    settings: dict | None = None,
    precision: str = "float32",
) -> dict:
    """Learn ``events`` over ``workers`` replicas exchanging every ``every`` learned events each;
    ``settings``: the model's (``ReplicatedRanker``'s constructor arguments)."""
    replicas = [VideoReplica(ReplicatedRanker(**(settings or {})), precision) for _ in range(workers)]
    evaluators = [StreamingEvaluator("streamrec", n=10) for _ in range(workers)]
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
        parts = [timed.run("wire", through_kafka_python, part) for part in parts]
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
            ranking = timed.run("learn", replicas[w].model.rank_and_learn, pending[w], 10)
            evaluators[w].observe(pending[w], ranking)
            unsent[w] += len(pending[w])
            pending[w] = []
            if unsent[w] >= every:
                send(w)
                unsent[w] = 0
    hits, evaluated = (sum(getattr(e.report, k) for e in evaluators) for k in ("hits", "evaluated"))
    return {
        "exchanges": exchanges,
        "records": records,
        "bytes_per_exchange": bytes_sent / max(exchanges, 1),
        "videos_per_exchange": videos / max(exchanges, 1),
        "pairs_per_exchange": pairs / max(exchanges, 1),
        "catalogue": len(replicas[0].model.videos),
        "hr_at_10": hits / max(evaluated, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ml100k", type=Path, help="MovieLens 100K u.data (default: the synthetic stream)")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--videos", type=int, default=3000, help="the synthetic stream's catalogue")
    parser.add_argument("--viewers", type=int, default=2000, help="the synthetic stream's viewers")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--every", type=int, default=1024)
    parser.add_argument(
        "--precision", default="float32", help=f"comma-separated, of {', '.join(PRECISIONS)}: one run each"
    )
    parser.add_argument("--profile", action="store_true", help="print where take and apply spend time")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a model setting (JSON value)"
    )
    parser.add_argument("--json", type=Path, default=REPO / "bench/results/sync_cost.json")
    args = parser.parse_args(argv)
    precisions = args.precision.split(",")
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        parser.error(f"unknown precision {', '.join(unknown)}; known: {', '.join(PRECISIONS)}")
    if args.ml100k:
        events = read_events(args.ml100k)[: args.events]
    else:
        events = list(synth_events(viewers=args.viewers, videos=args.videos, events=args.events, seed=1))
    peers = args.workers - 1
    runs = {}
    for precision in precisions:
        timed = Timed(("take", "apply") if args.profile else ())
        shape = simulate(events, args.workers, args.every, timed, parse_settings(args.set), precision)
        n = max(shape["exchanges"], 1)
        ms = {phase: 1000 * s / n for phase, s in timed.seconds.items()}
        # The learn time an exchange carries: the sender's events (every), at the mean learn rate.
        ms["learn"] = 1000 * timed.seconds["learn"] / len(events) * args.every
        sync_ms = ms["take"] + ms["encode"] + ms["wire"] + peers * (ms["decode"] + ms["apply"])
        runs[precision] = {
            **shape,
            "ms_per_exchange": ms,
            "sync_ms_per_exchange": sync_ms,
            "sync_vs_learn": sync_ms / ms["learn"],
        }
        print(
            f"{precision}: {len(events):,} events, {args.workers} workers, each sends every {args.every} "
            f"events: {shape['exchanges']} exchanges, catalogue {shape['catalogue']:,}, per exchange "
            f"{shape['videos_per_exchange']:,.0f} videos, {shape['pairs_per_exchange']:,.0f} pairs, "
            f"{shape['bytes_per_exchange'] / 1e3:,.0f} kB in {shape['records'] / n:.1f} records; "
            f"HR@10 {shape['hr_at_10']:.4f}"
        )
        if args.profile:
            for phase in ("take", "apply"):
                print(f"--- {phase} ---\n{timed.top(phase)}")
    print(f"\nms per exchange ({peers} peer{'s' if peers != 1 else ''} decode and apply each send)")
    print(f"{'phase':<8}" + "".join(f"{p:>10}" for p in precisions))
    for phase in PHASES:
        print(f"{phase:<8}" + "".join(f"{runs[p]['ms_per_exchange'][phase]:10.2f}" for p in precisions))
    print(f"{'kB':<8}" + "".join(f"{runs[p]['bytes_per_exchange'] / 1e3:10.0f}" for p in precisions))
    print(f"{'HR@10':<8}" + "".join(f"{runs[p]['hr_at_10']:10.4f}" for p in precisions))
    print(f"{'sync/learn':<8}" + "".join(f"{runs[p]['sync_vs_learn']:8.3f}" for p in precisions))
    print(f"(sync = take + encode + wire + {peers} x (decode + apply))")
    first = runs[precisions[0]]
    write_results(
        args.json,
        {
            "args": {k: str(v) for k, v in vars(args).items()},
            "events": len(events),
            **{k: v for k, v in first.items()},
            "runs": runs,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
