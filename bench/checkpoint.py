"""Checkpoint cost: time and size per million viewers, and what the video side adds.

Usage::

    .venv/bin/python bench/checkpoint.py [--viewers 50000,100000,200000] [--videos 1000]
        [--video-sizes 1000,5000,10000] [--repeat 3] [--dir DIR]

Models are the service's default (``registry.create("streamrec")``), grown with ``learn_many``
from seeded synthetic events: every viewer watches ``--per-viewer`` random videos. The timed
path is the service's own (:meth:`consumer.app.StreamrecService.checkpoint`):
``LocalCheckpointStore.save`` with the model's ``save`` as the writer (write the ``.npz``,
fsync, SHA-256 of every file, manifest, rename), and the restore path: ``store.latest()``
(verifies every checksum) then ``registry.load``. Each figure is the median of ``--repeat``.

Two sweeps:

* **viewers** (``--viewers``, with ``--videos`` videos): a least-squares line through
  (viewers, seconds) and (viewers, bytes) gives the cost *per million viewers* (the slope)
  and the rest (the intercept);
* **videos** (``--video-sizes``, 1,000 viewers with enough watches to see every video): what
  the video side costs on its own, since a model's shared state (video vectors, and the dense
  co-occurrence counts of up to ``cooc_max_videos`` videos, ``4 * videos**2`` bytes) does not
  grow with viewers.

The disk is the one under ``--dir`` (a temporary folder by default); the table goes to stdout,
the JSON to ``bench/results/checkpoint.json``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import contract  # noqa: E402, F401  (first: it makes BLAS single-threaded before numpy loads)

# isort: split

import numpy as np  # noqa: E402

from bench.results import write_results  # noqa: E402
from consumer.checkpoint import LocalCheckpointStore  # noqa: E402
from contract.events import WatchEvent  # noqa: E402
from model import registry  # noqa: E402

RESULTS = REPO / "bench" / "results" / "checkpoint.json"
MODEL = "streamrec"


def build(viewers: int, videos: int, per_viewer: int, seed: int = 0, batch: int = 4096):
    """The default model after ``viewers * per_viewer`` synthetic watches over ``videos`` videos."""
    rng = np.random.default_rng(seed)
    model = registry.create(MODEL)
    n = viewers * per_viewer
    who = np.repeat(np.arange(viewers), per_viewer)
    rng.shuffle(who)
    # Every video at least once, so the catalogue really has ``videos`` videos.
    what = np.concatenate([np.arange(min(videos, n)), rng.integers(0, videos, max(0, n - videos))])
    events = [
        WatchEvent(1.7e9 + i, f"v{w}", f"m{m}", 60.0) for i, (w, m) in enumerate(zip(who, what, strict=True))
    ]
    started = time.perf_counter()
    for i in range(0, n, batch):
        model.learn_many(events[i : i + batch])
    return model, time.perf_counter() - started


def time_checkpoint(model, root: Path, repeat: int) -> dict:
    """Median save and restore seconds through the checkpoint store, and the checkpoint's size."""
    saves, restores, size = [], [], 0
    for _ in range(repeat):
        shutil.rmtree(root, ignore_errors=True)
        store = LocalCheckpointStore(root)
        started = time.perf_counter()
        checkpoint = store.save(
            lambda folder: model.save(folder / "model.npz"), {("watch-events", 0): 1}, model.events_learned
        )
        saves.append(time.perf_counter() - started)
        size = checkpoint.size_bytes
        started = time.perf_counter()
        restored = LocalCheckpointStore(root).latest()
        loaded = registry.load(MODEL, restored.path / "model.npz")
        restores.append(time.perf_counter() - started)
        assert loaded.n_viewers == model.n_viewers and loaded.events_learned == model.events_learned
    shutil.rmtree(root, ignore_errors=True)
    return {"save_s": statistics.median(saves), "restore_s": statistics.median(restores), "bytes": size}


def fit(x: list[float], y: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b x``: (a, b)."""
    b, a = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    return float(a), float(b)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewers", default="50000,100000,200000")
    parser.add_argument("--videos", type=int, default=1000, help="catalogue of the viewer sweep")
    parser.add_argument("--video-sizes", default="1000,5000,10000")
    parser.add_argument("--per-viewer", type=int, default=2, help="watches per viewer")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where checkpoints are written (default: a temp dir)")
    args = parser.parse_args(argv)
    base = Path(args.dir or tempfile.mkdtemp(prefix="streamrec-bench-ckpt-"))

    rows = []
    sweeps = [("viewers", int(v), args.videos) for v in args.viewers.split(",") if v]
    sweeps += [("videos", 1000, int(m)) for m in args.video_sizes.split(",") if m]
    for sweep, viewers, videos in sweeps:
        per_viewer = max(args.per_viewer, -(-videos // viewers))  # enough watches to see every video
        model, build_s = build(viewers, videos, per_viewer)
        cost = time_checkpoint(model, base / f"{sweep}-{viewers}-{videos}", args.repeat)
        memory = model.memory_bytes()
        row = {
            "sweep": sweep,
            "viewers": model.n_viewers,
            "videos": model.n_videos,
            "events": model.events_learned,
            "build_s": build_s,
            "memory_bytes": int(memory["total"] if isinstance(memory, dict) else memory),
            **cost,
        }
        rows.append(row)
        print(
            f"{sweep:<8}{row['viewers']:>10,}{row['videos']:>8,}  save {row['save_s']:.3f} s  "
            f"restore {row['restore_s']:.3f} s  {row['bytes'] / 1e6:,.1f} MB",
            flush=True,
        )
    del model

    by_viewers = [r for r in rows if r["sweep"] == "viewers"]
    summary = {}
    if len(by_viewers) >= 2:
        x = [r["viewers"] for r in by_viewers]
        for key in ("save_s", "restore_s", "bytes"):
            a, b = fit(x, [r[key] for r in by_viewers])
            summary[f"{key}_per_million_viewers"] = b * 1e6
            summary[f"{key}_intercept"] = a

    print()
    print(f"{'sweep':<8}{'viewers':>10}{'videos':>8}{'events':>10}{'save s':>9}{'restore s':>11}{'MB':>9}")
    for r in rows:
        print(
            f"{r['sweep']:<8}{r['viewers']:>10,}{r['videos']:>8,}{r['events']:>10,}{r['save_s']:>9.3f}"
            f"{r['restore_s']:>11.3f}{r['bytes'] / 1e6:>9.1f}"
        )
    if summary:
        print(
            f"\nper million viewers ({args.per_viewer} watches each): save "
            f"{summary['save_s_per_million_viewers']:.2f} s, restore "
            f"{summary['restore_s_per_million_viewers']:.2f} s, "
            f"{summary['bytes_per_million_viewers'] / 1e6:,.0f} MB"
        )
    write_results(RESULTS, {"args": vars(args) | {"dir": str(base)}, "rows": rows, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
