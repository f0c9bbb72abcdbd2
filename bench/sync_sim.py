"""Many workers, one model: does exchanging additive video updates recover one worker's quality?

Usage::

    .venv/bin/python bench/sync_sim.py [--ml100k PATH] [--workers 1,2,4] [--intervals 0,1024,4096,16384]

Issue 12's design question, answered in one process before any Kafka is involved. The stream is
split by viewer, as a consumer group splits a topic keyed by viewer across its workers: each
simulated worker holds the default model, learns test-then-train only from its own viewers'
events (in batches of 256, in time order), and owns those viewers' state (histories, watched
sets). The video state (video and transition vectors with their Adagrad accumulators, biases,
watch counts, co-occurrence counts, the co-occurrence weight) is replicated: every ``interval``
events of the whole stream, each worker's additive change since the last exchange, keyed by
video *id* (rows differ between workers), is summed and applied by every worker, so the
replicas agree again, exactly as if each had read the others' updates from a topic. New video
vectors start from a function of the video id, so replicas agree on them before any update.
``interval 0`` is no exchange at all: today's service, each worker a private model.

The group's HR@10 is summed over workers (hits over evaluated events), as the service's
metrics sum over instances. Also printed: the bytes one exchange would put on the topic per
worker, if each changed video's row is sent as float32 (dim 32: 4 vectors of 32 and 2 scalars,
plus co-occurrence pairs as (id, id, float32)).

What it leaves out (the service must solve them, the quality question does not depend on them):
updates arrive at every worker at the same moment here, while on Kafka each worker applies its
peers' updates a little later; the decayed popularity that picks the shortlist stays local (a
worker's viewers are a random sample of everyone's, so its popularity estimates the group's).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import contract  # noqa: E402, F401  (first: it makes BLAS single-threaded before numpy loads)

# isort: split

import numpy as np  # noqa: E402
from kafka.partitioner.default import murmur2  # noqa: E402

from bench.results import write_results  # noqa: E402
from model.evaluate import StreamingEvaluator  # noqa: E402
from model.replica import SHARED_TABLES, ReplicatedRanker, initial_vectors  # noqa: E402
from producer.readers import read_events  # noqa: E402
from producer.synth import synth_events  # noqa: E402

BATCH = 256
#: The per-video tables exchanged, but the watch counts (exchanged apart, in float64).
SHARED = tuple(name for name in SHARED_TABLES if name != "watch_counts")


class Group:
    """``workers`` replicas; :meth:`exchange` makes their video state the sum of all updates."""

    def __init__(self, workers: int, catalogue: list[str], combine: str = "sum") -> None:
        self.combine = combine
        settings = {"viewer_ttl": None, "video_ttl": None}
        self.replicas = [ReplicatedRanker(**settings) for _ in range(workers)]
        self.evaluators = [StreamingEvaluator("streamrec", n=10) for _ in range(workers)]
        self.ids = catalogue
        self.index = {v: i for i, v in enumerate(catalogue)}
        dim, g = self.replicas[0].dim, len(catalogue)
        init = initial_vectors(catalogue, dim, self.replicas[0].init_scale, self.replicas[0].seed or 0)
        # The group's agreed state by global video index (what every replica had after the last
        # exchange); a video nobody has met starts at its agreed vector and zeros elsewhere.
        self.agreed = {
            name: np.zeros((g, dim) if "vectors" in name or "transitions" in name else g, np.float32)
            for name in SHARED
        }
        self.agreed["video_vectors"][:] = init
        self.agreed_counts = np.zeros(g, np.float64)
        self.agreed_cooc = np.zeros((g, g), np.float32)
        self.agreed_cooc_own = np.zeros(g, np.float32)
        self.agreed_alpha = np.zeros(2, np.float32)  # alpha, its accumulator
        self.agreed_alpha[0] = self.replicas[0].cooc_weight
        self.bytes_sent: list[int] = []

    def _rows(self, replica: ReplicatedRanker) -> tuple[np.ndarray, np.ndarray]:
        """Global index and local row of every video the replica knows."""
        local = replica.videos.get_many(self.ids)
        known = np.flatnonzero(local >= 0)
        return known, local[known]

    def exchange(self, cooc: bool = True) -> None:
        """One exchange of every video update since the last; ``cooc``: the co-occurrence counts
        too (counts move slowly, so they may be exchanged less often than vectors)."""
        deltas = {name: np.zeros_like(a) for name, a in self.agreed.items()}
        d_counts = np.zeros_like(self.agreed_counts)
        d_cooc, d_own = np.zeros_like(self.agreed_cooc), np.zeros_like(self.agreed_cooc_own)
        d_alpha = np.zeros(2, np.float32)
        sent = []
        for r in self.replicas:
            g, rows = self._rows(r)
            parts = r.state_parts()
            changed = np.zeros(len(self.ids), dtype=bool)
            for name in SHARED:
                here = parts[name].array[rows]
                d = here - self.agreed[name][g]
                deltas[name][g] += d
                if len(g):
                    changed[g] |= (d != 0).reshape(len(g), -1).any(axis=1)
            d_counts[g] += r._counts.array[rows] - self.agreed_counts[g]
            pairs = 0
            if cooc and r._cooc.rows:
                r._cooc.ensure(len(r.videos))  # videos adopted since the last exchange of counts
                pair_delta = r._cooc.array[np.ix_(rows, rows)] - self.agreed_cooc[np.ix_(g, g)]
                d_cooc[np.ix_(g, g)] += pair_delta
                d_own[g] += r._cooc.counts[rows] - self.agreed_cooc_own[g]
                pairs = int(np.count_nonzero(pair_delta))
            d_alpha += np.array([r._alpha[0], r._alpha_acc[0]]) - self.agreed_alpha
            # One changed video: 2 vectors and 2 accumulators of dim floats, bias and its
            # accumulator, a count, and its id (say 16 bytes); a co-occurrence pair: 2 ids, a float.
            sent.append(int(changed.sum()) * (4 * r.dim * 4 + 3 * 4 + 16) + pairs * (2 * 16 + 4))
        self.bytes_sent.append(int(np.mean(sent)))
        # sum: every worker's step counts in full (sequential SGD when exchanges are frequent);
        # mean: the steps are averaged (federated averaging), which cannot overshoot when
        # workers step on stale vectors between exchanges far apart.
        scale = 1.0 if self.combine == "sum" else 1.0 / len(self.replicas)
        for name in SHARED:
            self.agreed[name] += deltas[name] * (scale if not name.endswith("_acc") else 1.0)
        self.agreed_counts += d_counts
        self.agreed_cooc += d_cooc
        self.agreed_cooc_own += d_own
        self.agreed_alpha += d_alpha
        met = np.flatnonzero(self.agreed_counts > 0)
        for r in self.replicas:
            local = r.videos.get_many([self.ids[i] for i in met])
            missing = [self.ids[i] for i in met[local < 0]]
            if missing:
                r.adopt(missing)
            g, rows = self._rows(r)
            parts = r.state_parts()
            for name in SHARED:
                parts[name].array[rows] = self.agreed[name][g]
            r._counts.array[rows] = self.agreed_counts[g]
            if cooc and r._use_cooc(len(r.videos)):
                r._cooc.ensure(len(r.videos))
                r._cooc.array[np.ix_(rows, rows)] = self.agreed_cooc[np.ix_(g, g)]
                r._cooc.counts[rows] = self.agreed_cooc_own[g]
            r._alpha[0], r._alpha_acc[0] = self.agreed_alpha
            r._changed()


def worker_of(viewer: str, workers: int) -> int:
    """The partition of the viewer's key as Kafka's default partitioner computes it, one
    partition per worker."""
    return (murmur2(viewer.encode()) & 0x7FFFFFFF) % workers


def run(events: list, workers: int, interval: int, cooc_every: int = 1, combine: str = "sum") -> dict:
    catalogue = list(dict.fromkeys(e.video for e in events))
    group = Group(workers, catalogue, combine)
    owner = np.array([worker_of(e.viewer, workers) for e in events])
    pending: list[list] = [[] for _ in range(workers)]
    since = exchanges = 0
    started = time.perf_counter()
    for i, e in enumerate(events):
        w = owner[i]
        pending[w].append(e)
        if len(pending[w]) == BATCH:
            batch, pending[w] = pending[w], []
            group.evaluators[w].observe(batch, group.replicas[w].rank_and_learn(batch, 10))
        since += 1
        if interval and since >= interval:
            exchanges += 1
            group.exchange(cooc=exchanges % cooc_every == 0)
            since = 0
    for w in range(workers):
        if pending[w]:
            group.evaluators[w].observe(pending[w], group.replicas[w].rank_and_learn(pending[w], 10))
    hits = sum(ev.report.hits for ev in group.evaluators)
    evaluated = sum(ev.report.evaluated for ev in group.evaluators)
    return {
        "workers": workers,
        "interval": interval,
        "cooc_every": cooc_every,
        "combine": combine,
        "hr_at_10": hits / evaluated,
        "evaluated": evaluated,
        "seconds": time.perf_counter() - started,
        "bytes_per_exchange_per_worker": float(np.mean(group.bytes_sent)) if group.bytes_sent else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ml100k", type=Path, help="MovieLens 100K u.data (default: the synthetic stream)")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--intervals", default="0,256,1024,4096,16384")
    parser.add_argument(
        "--cooc-every",
        default="1",
        help="exchange co-occurrence counts every k-th exchange (comma-separated)",
    )
    parser.add_argument("--combine", default="sum", choices=("sum", "mean"))
    parser.add_argument("--json", type=Path, default=REPO / "bench/results/sync_sim.json")
    args = parser.parse_args(argv)
    if args.ml100k:
        events = read_events(args.ml100k)[: args.events]
    else:
        events = list(synth_events(viewers=2000, videos=3000, events=args.events, seed=1))
    rows = []
    for workers in (int(w) for w in args.workers.split(",")):
        for interval in (int(s) for s in args.intervals.split(",")):
            for cooc_every in (int(k) for k in args.cooc_every.split(",")):
                if (workers == 1 or not interval) and (interval or cooc_every > 1):
                    continue  # one worker has nobody to exchange with
                rows.append(run(events, workers, interval, cooc_every, args.combine))
                r = rows[-1]
                print(
                    f"workers {workers}  interval {interval or 'none':>6}  cooc every {cooc_every:>2}  "
                    f"HR@10 {r['hr_at_10']:.4f}  "
                    f"exchange {r['bytes_per_exchange_per_worker'] / 1e3:8.1f} kB/worker  "
                    f"{r['seconds']:.0f} s",
                    flush=True,
                )
    write_results(args.json, {"args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
