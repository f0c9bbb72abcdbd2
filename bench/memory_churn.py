"""Memory under endless new ids: the streamrec model with expiry off vs on.

Usage::

    .venv/bin/python bench/memory_churn.py [--events N] [--ttl SECONDS] [--every N]

The stream never stops bringing new ids: one event per second of event time; each event's
viewer is new with probability 0.2, else one of the 1,000 newest viewers (so a viewer is active
for about 5,000 s and never returns); its video is new with probability 0.02, else one of the
500 newest videos, recent ones more often (a video lives about 25,000 s). Each setting runs in
its own process, as the service does (test, then learn, batches of 256, with the streaming
evaluator: unbounded when expiry is off, bounded by the same TTL when on), and every ``--every``
events records the ids the model holds, the rows its tables hold, ``memory_bytes()["total"]``
and the process's resident memory (VmRSS from /proc/self/status). Only one setting runs at a
time. Table to stdout, JSON to ``bench/results/memory_churn.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import contract  # noqa: E402, F401  (first: it makes BLAS single-threaded before numpy loads)

# isort: split

import numpy as np  # noqa: E402

from bench.results import write_results  # noqa: E402
from contract.events import WatchEvent  # noqa: E402
from model.embedding import EmbeddingRanker  # noqa: E402
from model.evaluate import StreamingEvaluator  # noqa: E402
from model.registry import DEFAULT_BATCH_SIZE  # noqa: E402

START = 1_704_067_200.0  # 2024-01-01, like the synthetic producer


def churn_stream(n: int, seed: int = 0, chunk: int = 10_000) -> Iterator[WatchEvent]:
    """``n`` events, one per second, with endless new viewers and videos (see the module doc)."""
    rng = np.random.default_rng(seed)
    viewers = videos = 0  # ids created so far
    for lo in range(0, n, chunk):
        size = min(chunk, n - lo)
        new_viewer = rng.random(size) < 0.2
        new_video = rng.random(size) < 0.02
        back_viewer = rng.integers(0, 1000, size)
        back_video = (500 * rng.random(size) ** 2).astype(np.int64)  # recent videos more often
        for i in range(size):
            if new_viewer[i] or viewers == 0:
                viewers += 1
            if new_video[i] or videos == 0:
                videos += 1
            v = viewers - 1 - min(int(back_viewer[i]), viewers - 1) * (not new_viewer[i])
            x = videos - 1 - min(int(back_video[i]), videos - 1) * (not new_video[i])
            yield WatchEvent(START + lo + i, f"viewer-{v:08d}", f"video-{x:08d}")


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def run_setting(events: int, ttl: float | None, every: int, seed: int) -> dict:
    """One setting, in this process: test-then-train over the churn stream, sampling memory."""
    model = EmbeddingRanker(viewer_ttl=ttl, video_ttl=ttl)
    evaluator = StreamingEvaluator(model.name, batch_size=DEFAULT_BATCH_SIZE, id_ttl=ttl)
    expire_s = 0.0
    if ttl is not None:  # time the expiry runs themselves
        expire = model._expire

        def timed_expire() -> None:
            nonlocal expire_s
            t0 = time.perf_counter()
            expire()
            expire_s += time.perf_counter() - t0

        model._expire = timed_expire
    samples = []
    batch: list[WatchEvent] = []
    seen = 0
    start = time.perf_counter()
    for e in churn_stream(events, seed):
        batch.append(e)
        if len(batch) < DEFAULT_BATCH_SIZE and seen + len(batch) < events:
            continue
        evaluator.observe(batch, model.rank_and_learn(batch))
        before, seen = seen, seen + len(batch)
        batch = []
        if seen // every > before // every or seen == events:
            samples.append(
                {
                    "events": seen,
                    "viewers": model.n_viewers,
                    "videos": model.n_videos,
                    "viewer_rows": len(model.viewers),
                    "video_rows": len(model.videos),
                    "model_bytes": model.memory_bytes()["total"],
                    "rss_bytes": rss_bytes(),
                    "evaluator_ids": len(evaluator._viewers) + len(evaluator._videos),
                    "elapsed_s": time.perf_counter() - start,
                }
            )
    elapsed = time.perf_counter() - start
    return {
        "ttl_s": ttl,
        "samples": samples,
        "events_per_s": events / elapsed,
        "expire_s": expire_s,
        "expired_viewers": model.expired[0],
        "expired_videos": model.expired[1],
        "hr_at_10": evaluator.report.hr,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--ttl", type=float, default=3600.0, help="viewer and video TTL when on (s)")
    parser.add_argument("--every", type=int, default=20_000, help="events between samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "memory_churn.json")
    parser.add_argument("--child", choices=["off", "on"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        ttl = args.ttl if args.child == "on" else None
        print(json.dumps(run_setting(args.events, ttl, args.every, args.seed)))
        return 0

    runs = {}
    for mode in ("off", "on"):  # one at a time: the machine is shared
        cmd = [sys.executable, __file__, "--child", mode, "--events", str(args.events)]
        cmd += ["--ttl", str(args.ttl), "--every", str(args.every), "--seed", str(args.seed)]
        print(f"running expiry {mode} ...", file=sys.stderr, flush=True)
        runs[mode] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)

    mb = 1 / 2**20
    print(f"endless new ids, {args.events:,} events, batch {DEFAULT_BATCH_SIZE}; on = TTL {args.ttl:.0f} s")
    print(
        f"{'events':>8} | {'viewers':>8} {'videos':>7} {'model MB':>8} {'RSS MB':>7} | "
        f"{'viewers':>7} {'videos':>6} {'rows v/i':>11} {'model MB':>8} {'RSS MB':>7} | {'RSS on/off':>10}"
    )
    for off, on in zip(runs["off"]["samples"], runs["on"]["samples"], strict=True):
        print(
            f"{off['events']:>8,} | {off['viewers']:>8,} {off['videos']:>7,} {off['model_bytes'] * mb:>8.1f} "
            f"{off['rss_bytes'] * mb:>7.0f} | {on['viewers']:>7,} {on['videos']:>6,} "
            f"{on['viewer_rows']:>5,}/{on['video_rows']:<5,} {on['model_bytes'] * mb:>8.1f} "
            f"{on['rss_bytes'] * mb:>7.0f} | {on['rss_bytes'] / off['rss_bytes']:>10.2f}"
        )
    for mode in ("off", "on"):
        r = runs[mode]
        print(
            f"expiry {mode}: {r['events_per_s']:,.0f} events/s, HR@10 {r['hr_at_10']:.4f}, "
            f"expired {r['expired_viewers']:,} viewers / {r['expired_videos']:,} videos, "
            f"{r['expire_s']:.2f} s in expiry runs"
        )
    write_results(
        args.json, {"events": args.events, "ttl_s": args.ttl, "batch_size": DEFAULT_BATCH_SIZE, "runs": runs}
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
