"""Many workers on a real broker: quality and speed of a group, with and without one shared model.

Usage::

    .venv/bin/python bench/group.py [--ml100k PATH] [--events N] [--passes 1] [--partitions 4]
        [--runs 1,2,2s,4s,2s4096,2s@int8] [--sync-every 1024] [--modes live,backlog]
        [--worker-args "--changelog-topic none"] [--bootstrap HOST:PORT]

Each run replays the same events (MovieLens 100K with ``--ml100k``, else the synthetic stream),
keyed by viewer, into a fresh topic of ``--partitions`` partitions, and starts
``python -m consumer --workers N`` (a run named ``Ns`` adds ``--sync-every``: the workers
exchange video updates, one model over the group; plain ``N``: each worker its own model; a
suffix ``@float32``, ``@int16`` or ``@int8`` sets ``--sync-precision``) in a fresh group. Two
modes:

* ``live``: every worker joins the group before the first event is produced (else the first to
  join learns a backlog alone), then the events are produced (in a thread of this process)
  while the workers learn: quality as a user sees it, and events/s from the first produced to
  the last learned (the producer's time is in it, the same in every run);
* ``backlog``: the events are produced first, then the workers start: the steady-state rate,
  with nothing waiting on the producer, and the time from start to the first learned event.

From the workers' ``/metrics`` (scraped every 0.2 s) it reports the group's test-then-train
HR@10 (hits over evaluated events, summed over workers), the times from start until every
worker holds partitions and until the first event is learned, the **steady-state** events/s
(learned events over time, from when every worker holds partitions, or 10% of the stream, to
90% of it), the workers' CPU seconds per 1,000 events (from ``/proc``: what the group costs
whatever the sharing of the two cores; from the first learned event to the last, and over the
steady state alone, without the joins and the hand-overs they bring), and where the workers'
time went (stages of the loop, steps of the sync). ``--passes N`` replays the stream N times,
each pass later in time, for a steady state longer than the joins (a single pass of ML-100K
lasts about two seconds at one worker's speed).

Prints a table and writes ``bench/results/group.json``. Speeds are ratios to the one-worker
run of the same mode in the same invocation: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import contract  # noqa: E402, F401  (first: it makes BLAS single-threaded before numpy loads)

# isort: split

from kafka import KafkaAdminClient, KafkaProducer  # noqa: E402
from kafka.admin import NewTopic  # noqa: E402

from bench.brokers import (  # noqa: E402
    add_broker_arguments,
    connection_from,
    local_broker,
    members_with_partitions,
    remove_topics,
)
from bench.results import write_results  # noqa: E402
from contract.schema import event_to_json  # noqa: E402
from producer.cli import looped  # noqa: E402
from producer.readers import read_events  # noqa: E402
from producer.synth import synth_events  # noqa: E402
from streamrec.kafka_local import free_port  # noqa: E402

#: Labelled series kept apart (by their label) rather than summed: where the time goes.
BY_LABEL = {
    "streamrec_stage_seconds_total": "stage",
    "streamrec_sync_seconds_total": "step",
    "streamrec_sync_bytes_total": "direction",
    "streamrec_sync_records_total": "direction",
}
TICK = os.sysconf("SC_CLK_TCK")


def scrape(port: int) -> dict[str, float]:
    """Sample values of one worker's /metrics, summed over label sets by name (none: {}); the
    series of :data:`BY_LABEL` also by ``name:label``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        labels = name_labels[len(name) :]
        if name.startswith("streamrec_quality_") and 'arm=""' in labels:
            continue  # the shadow baseline is not the group's model
        out[name] = out.get(name, 0.0) + float(value)
        if name in BY_LABEL:
            label = labels.split(f'{BY_LABEL[name]}="', 1)[1].split('"', 1)[0]
            out[f"{name}:{label}"] = float(value)
    return out


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of process ``pid`` and its live children (the workers)."""
    total = 0.0
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    for p in [str(pid), *children]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
    return total


def broker_pid() -> int | None:
    """The local Kafka broker's process (``kafka.Kafka`` on its command line), if it runs here."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"kafka.Kafka" in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    return None


class Cores:
    """CPU use over a window, in cores: the workers, the broker, this process (the producer and
    the scraping) and the whole machine (other users of the box included), from ``/proc``."""

    def __init__(self, workers_pid: int, broker: int | None) -> None:
        self.workers_pid, self.broker = workers_pid, broker
        self._start = self._read()

    def _read(self) -> tuple[float, ...]:
        busy, total = _machine()
        broker = cpu_seconds(self.broker) if self.broker else 0.0
        return time.monotonic(), cpu_seconds(self.workers_pid), broker, time.process_time(), busy, total

    def stop(self) -> dict[str, float]:
        end = self._read()
        wall, workers, broker, bench, busy, total = (b - a for a, b in zip(self._start, end, strict=True))
        return {
            "seconds": wall,
            "workers_cpu_s": workers,
            "workers_cores": workers / wall,
            "broker_cores": broker / wall,
            "bench_cores": bench / wall,
            "machine_cores": busy / total * os.cpu_count() if total else float("nan"),
        }


def _machine() -> tuple[float, float]:
    """Busy and total CPU seconds of the machine since boot (``/proc/stat``)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values) - idle) / TICK, sum(values) / TICK


def produce(connection, topic: str, events: list) -> None:
    producer = KafkaProducer(**connection.client_options(), acks="all", linger_ms=20, batch_size=1 << 20)
    for e in events:
        producer.send(topic, key=e.viewer.encode(), value=event_to_json(e))
    producer.flush()
    producer.close()


def steady_window(
    samples: list[tuple[float, int, float]], total: int, start_at: float
) -> tuple[float, float]:
    """Events/s learned, and the workers' CPU seconds per 1,000 of those events, from
    ``start_at`` (or 10% of ``total``, whichever is later) to 90%: the steady state, without
    start-up, joins and the last stragglers."""

    def crossing(fraction: float) -> tuple[float, int, float] | None:
        return next((s for s in samples if s[1] >= fraction * total), None)

    first, last = crossing(0.1), crossing(0.9)
    if first is not None and first[0] < start_at:
        first = next((s for s in samples if s[0] >= start_at), None)
    if first is None or last is None or last[1] <= first[1] or last[0] <= first[0]:
        return float("nan"), float("nan")
    events = last[1] - first[1]
    return events / (last[0] - first[0]), 1000 * (last[2] - first[2]) / events


def run_group(
    connection,
    events: list,
    workers: int,
    sync_every: int,
    partitions: int,
    mode: str,
    precision: str = "",
    worker_args: Sequence[str] = (),
) -> dict:
    admin_options = connection.client_options()
    admin = KafkaAdminClient(**admin_options)
    topic = f"group-bench-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, partitions, 1)])
    admin.close()
    group = f"g-{topic}"
    port = free_port(count=workers)  # /metrics of each worker
    folder = tempfile.mkdtemp(prefix="streamrec-group-bench-")
    args = [
        sys.executable, "-m", "consumer",
        "--bootstrap-servers", connection.bootstrap_servers,
        "--input-topic", topic,
        "--output-topic", f"{topic}-recs",
        "--dlq-topic", f"{topic}-dlq",
        "--group-id", group,
        "--metrics-port", str(port),
        "--checkpoint-dir", folder,
        "--no-shadow-baseline",
        "--workers", str(workers),
        "--sync-every", str(sync_every),
        "--log-level", "WARNING",
        *(["--sync-precision", precision] if precision else []),
        *worker_args,
    ]  # fmt: skip
    ports = [port + i for i in range(workers)]
    if mode == "backlog":
        produce(connection, topic, events)
    samples: list[tuple[float, int, float]] = []
    per_worker, last_learned = [0] * workers, [float("nan")] * workers
    with open(Path(folder) / "workers.log", "wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        first = last = joined = None
        producing = cores = None
        try:
            if mode == "live":
                # Every worker in the group before the stream starts: else the first to join
                # learns a backlog alone and the run measures one worker.
                while (
                    time.monotonic() - started < 120
                    and members_with_partitions(admin_options, group) < workers
                ):
                    time.sleep(0.2)
                joined = time.monotonic()
                producing, cores = time.monotonic(), Cores(proc.pid, broker_pid())
                # In a thread: the workers learn while the events arrive, and are watched doing it.
                producer = threading.Thread(target=produce, args=(connection, topic, events), daemon=True)
                producer.start()
            else:
                producing = started
            while time.monotonic() - started < 900:
                if proc.poll() is not None:  # they cannot run: say why rather than wait it out
                    log.flush()
                    tail = (Path(folder) / "workers.log").read_text()[-2000:]
                    raise RuntimeError(f"the workers stopped (exit status {proc.returncode}):\n{tail}")
                each = [int(s.get("streamrec_model_events", 0)) for s in map(scrape, ports)]
                learned = sum(each)
                now = time.monotonic()
                for i, count in enumerate(each):  # when each worker last learned: who waits on whom
                    if count > per_worker[i]:
                        per_worker[i], last_learned[i] = count, now
                samples.append((now, learned, cpu_seconds(proc.pid)))
                if learned and first is None:
                    first = now
                    cores = cores or Cores(proc.pid, broker_pid())
                if joined is None and members_with_partitions(admin_options, group) >= workers:
                    joined = now
                if learned >= len(events):
                    last = now
                    break
                time.sleep(0.2)
            used = cores.stop() if cores else {"workers_cpu_s": float("nan")}
            if mode == "live":
                producer.join()
            if sync_every:
                time.sleep(3)  # the last updates go out when the workers go idle
            final = [scrape(p) for p in ports]
        finally:
            proc.terminate()
            proc.wait(120)
            shutil.rmtree(folder, ignore_errors=True)
            remove_topics(connection, topic)
    steady = steady_window(samples, len(events), joined or started)
    hits = sum(s.get("streamrec_quality_hits_total", 0.0) for s in final)
    evaluated = sum(s.get("streamrec_quality_evaluated_total", 0.0) for s in final)
    wall = (last - (first if mode == "backlog" else producing)) if last and first else float("nan")
    if not wall > 0:  # all learned between two scrapes (a small --events): no rate to give
        wall = float("nan")
    by_label = {
        key: sum(s.get(key, 0.0) for s in final) for key in sorted({k for s in final for k in s if ":" in k})
    }
    seconds = {k.split(":", 1)[1]: v for k, v in by_label.items() if "_seconds_" in k}
    sync = {k.removeprefix("streamrec_sync_"): v for k, v in by_label.items() if "_seconds_" not in k}
    return {
        "mode": mode,
        "workers": workers,
        "sync_every": sync_every,
        "precision": precision,
        "worker_args": list(worker_args),
        "learned": samples[-1][1] if samples else 0,
        "hr_at_10": hits / evaluated if evaluated else float("nan"),
        "to_all_joined_s": (joined - started) if joined else float("nan"),
        "to_first_learned_s": (first - started) if first else float("nan"),
        # Per worker: events learned, and when it last learned one (s after the first learned
        # by any): a worker done long before the last is idle while the group finishes.
        "worker_events": per_worker,
        "worker_done_s": [t - first if first else float("nan") for t in last_learned],
        # live: from the first event produced to the last learned (the producer's time is in
        # it); backlog: from the first learned to the last.
        "events_per_s": len(events) / wall,
        "steady_events_per_s": steady[0],
        "cpu_s_per_1k_events": 1000 * used["workers_cpu_s"] / len(events),
        "steady_cpu_s_per_1k_events": steady[1],
        "cores": used,
        "worker_seconds": seconds,
        # Summed over the workers: sync_{bytes,records}_total by direction (sent, applied).
        "sync": sync,
        "sync_bytes_sent_per_s_per_worker": sync.get("bytes_total:sent", 0.0) / wall / workers,
        "exit_code": proc.returncode,
    }


def label_of(row: dict) -> str:
    every, precision = row["sync_every"], row.get("precision")
    shared = f"one model /{every}" + (f" {precision}" if precision else "")
    return f"{row['workers']} " + (shared if every else "own models")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_broker_arguments(parser)
    parser.add_argument("--ml100k", type=Path, help="MovieLens 100K u.data (default: the synthetic stream)")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument(
        "--passes",
        type=int,
        default=1,
        help="the stream this many times, each pass later in time (a longer steady state; HR@10 past "
        "the first pass is not a quality figure: viewers watch again what they watched)",
    )
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--runs",
        default="1,2,2s,4s",
        help="worker counts; 's': with --sync-every ('2s4096': every 4,096; '2s@int8': that precision)",
    )
    parser.add_argument("--modes", default="live,backlog", help="live, backlog or both (see the docstring)")
    parser.add_argument("--sync-every", type=int, default=1024)
    parser.add_argument(
        "--worker-args", default="", help="`streamrec serve` flags for every run: '--changelog-topic none'"
    )
    parser.add_argument("--json", type=Path, default=REPO / "bench/results/group.json")
    args = parser.parse_args(argv)
    connection = connection_from(args)
    broker = None
    if connection is None:
        broker, connection = local_broker()
    try:
        if args.ml100k:
            events = read_events(args.ml100k)[: args.events]
        else:
            events = list(synth_events(viewers=2000, videos=3000, events=args.events, seed=1))
        events = list(looped(events, args.passes))
        rows = []
        print(
            f"{'mode':<8} {'workers':<22} {'HR@10':>7} {'joined s':>9} {'1st learned s':>14} "
            f"{'events/s':>9} {'steady/s':>9} {'CPU s/1k':>9} {'steady':>7}"
            "  cores: workers broker bench machine"
        )
        for mode in args.modes.split(","):
            for run in args.runs.split(","):
                workers, shared, every, precision = re.fullmatch(r"(\d+)(s?)(\d*)(?:@(\w+))?", run).groups()
                sync_every = (int(every) if every else args.sync_every) if shared else 0
                r = run_group(
                    connection,
                    events,
                    int(workers),
                    sync_every,
                    args.partitions,
                    mode,
                    precision or "",
                    shlex.split(args.worker_args),
                )
                rows.append(r)
                c = r["cores"]
                print(
                    f"{mode:<8} {label_of(r):<22} {r['hr_at_10']:7.4f} {r['to_all_joined_s']:9.1f} "
                    f"{r['to_first_learned_s']:14.1f} {r['events_per_s']:9,.0f} "
                    f"{r['steady_events_per_s']:9,.0f} {r['cpu_s_per_1k_events']:9.3f} "
                    f"{r['steady_cpu_s_per_1k_events']:7.3f}  "
                    f"{c.get('workers_cores', 0):14.2f} {c.get('broker_cores', 0):6.2f} "
                    f"{c.get('bench_cores', 0):5.2f} {c.get('machine_cores', 0):7.2f}",
                    flush=True,
                )
                if r["workers"] > 1:
                    each = zip(r["worker_events"], r["worker_done_s"], strict=True)
                    done = ", ".join(f"{n:,} events, last at {t:.1f} s" for n, t in each)
                    print(f"{'':<8} workers: {done}", flush=True)
        for mode in args.modes.split(","):
            base = next(
                (r for r in rows if r["mode"] == mode and r["workers"] == 1 and not r["sync_every"]), None
            )
            if base:
                for r in (r for r in rows if r["mode"] == mode):
                    r["speed_vs_one"] = r["events_per_s"] / base["events_per_s"]
                    r["steady_vs_one"] = r["steady_events_per_s"] / base["steady_events_per_s"]
                    r["cpu_vs_one"] = r["cpu_s_per_1k_events"] / base["cpu_s_per_1k_events"]
                    r["steady_cpu_vs_one"] = (
                        r["steady_cpu_s_per_1k_events"] / base["steady_cpu_s_per_1k_events"]
                    )
                    r["hr_vs_one"] = r["hr_at_10"] - base["hr_at_10"]
        print(
            f"{'mode':<8} {'workers':<22} {'events/s':>9} {'steady':>7} {'CPU':>6} {'steady':>7} {'HR@10':>8}"
            "  (vs one worker)"
        )
        for r in rows:
            if "speed_vs_one" in r:
                print(
                    f"{r['mode']:<8} {label_of(r):<22} {r['speed_vs_one']:9.2f} {r['steady_vs_one']:7.2f} "
                    f"{r['cpu_vs_one']:6.2f} {r['steady_cpu_vs_one']:7.2f} {r['hr_vs_one']:+8.4f}"
                )
        write_results(args.json, {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows})
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
