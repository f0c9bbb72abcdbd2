"""Many workers on a real broker: quality and speed of a group, with and without one shared model.

Usage::

    .venv/bin/python bench/group.py [--ml100k PATH] [--events N] [--partitions 4]
        [--runs 1,2,2s,4,4s] [--sync-every 1024] [--bootstrap HOST:PORT]

Each run replays the same events (MovieLens 100K with ``--ml100k``, else the synthetic stream),
keyed by viewer, into a fresh topic of ``--partitions`` partitions, then starts
``python -m consumer --workers N`` (a run named ``Ns`` adds ``--sync-every``: the workers
exchange video updates, one model over the group; plain ``N``: each worker its own model, as
without it) in a fresh group and measures, from the workers' ``/metrics``:

* the group's test-then-train HR@10 (hits over evaluated events, summed over the workers);
* the time from start until every worker holds partitions (joining the group, restoring,
  connecting); the events are produced only then, so every worker takes its share;
* events/s: events over the time from the first produced to the last learned (the
  producer's time is in it, the same in every run: compare runs as ratios).

Prints a table and writes ``bench/results/group.json``. Speeds are ratios to the one-worker
run of the same invocation: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import contract  # noqa: E402, F401  (first: it makes BLAS single-threaded before numpy loads)

# isort: split

from kafka import KafkaAdminClient, KafkaProducer  # noqa: E402
from kafka.admin import NewTopic  # noqa: E402

from bench.brokers import add_broker_arguments, connection_from, local_broker  # noqa: E402
from bench.results import write_results  # noqa: E402
from contract.schema import event_to_json  # noqa: E402
from producer.readers import read_events  # noqa: E402
from producer.synth import synth_events  # noqa: E402


def scrape(port: int) -> dict[str, float]:
    """Sample values of one worker's /metrics, summed over label sets by name (none: {})."""
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
    return out


def members_with_partitions(options: dict, group: str) -> int:
    """Members of ``group`` holding at least one partition, once the group is stable."""
    admin = KafkaAdminClient(**options)
    try:
        described = admin.describe_groups([group]).get(group, {})
    except Exception:  # noqa: BLE001 - the group may not exist yet
        return 0
    finally:
        admin.close()
    if described.get("group_state") != "Stable":
        return 0
    members = described.get("members", [])
    return sum(1 for m in members if (m.get("member_assignment") or {}).get("assigned_partitions"))


def produce(connection, topic: str, events: list) -> None:
    producer = KafkaProducer(**connection.client_options(), acks="all", linger_ms=20, batch_size=1 << 20)
    for e in events:
        producer.send(topic, key=e.viewer.encode(), value=event_to_json(e))
    producer.flush()
    producer.close()


def run_group(connection, events: list, workers: int, sync_every: int, partitions: int) -> dict:
    admin_options = connection.client_options()
    admin = KafkaAdminClient(**admin_options)
    topic = f"group-bench-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, partitions, 1)])
    port = 20000 + int(uuid.uuid4().int % 20000)
    folder = tempfile.mkdtemp(prefix="streamrec-group-bench-")
    args = [
        sys.executable, "-m", "consumer",
        "--bootstrap-servers", connection.bootstrap_servers,
        "--input-topic", topic,
        "--output-topic", f"{topic}-recs",
        "--dlq-topic", f"{topic}-dlq",
        "--group-id", f"g-{topic}",
        "--metrics-port", str(port),
        "--checkpoint-dir", folder,
        "--no-shadow-baseline",
        "--workers", str(workers),
        "--sync-every", str(sync_every),
        "--log-level", "WARNING",
    ]  # fmt: skip
    ports = [port + i for i in range(workers)]
    with open(Path(folder) / "workers.log", "wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        first = last = None
        learned = 0
        try:
            # Every worker in the group before the stream starts: else the first to join learns
            # a backlog alone and the run measures one worker.
            group = f"g-{topic}"
            while (
                time.monotonic() - started < 120 and members_with_partitions(admin_options, group) < workers
            ):
                time.sleep(0.2)
            joined = time.monotonic() - started
            producing = time.monotonic()
            produce(connection, topic, events)
            while time.monotonic() - started < 900:
                samples = [scrape(p) for p in ports]
                learned = sum(int(s.get("streamrec_model_events", 0)) for s in samples)
                now = time.monotonic()
                if learned and first is None:
                    first = now
                if learned >= len(events):
                    last = now
                    break
                time.sleep(0.1)
            if sync_every:
                time.sleep(3)  # the last updates go out when the workers go idle
            samples = [scrape(p) for p in ports]
        finally:
            proc.terminate()
            proc.wait(120)
    hits = sum(s.get("streamrec_quality_hits_total", 0.0) for s in samples)
    evaluated = sum(s.get("streamrec_quality_evaluated_total", 0.0) for s in samples)
    return {
        "workers": workers,
        "sync_every": sync_every,
        "learned": learned,
        "hr_at_10": hits / evaluated if evaluated else float("nan"),
        "to_first_event_s": (first - started) if first else float("nan"),
        "to_all_joined_s": joined,
        # From the first event produced to the last learned: the producer's time is in it (the
        # same for every run), since events learned as they arrive cannot be timed apart.
        "events_per_s": len(events) / (last - producing) if last else float("nan"),
        "exit_code": proc.returncode,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_broker_arguments(parser)
    parser.add_argument("--ml100k", type=Path, help="MovieLens 100K u.data (default: the synthetic stream)")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--runs", default="1,2,2s,4,4s", help="worker counts; 's': with --sync-every")
    parser.add_argument("--sync-every", type=int, default=1024)
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
        rows = []
        for run in args.runs.split(","):
            workers, shared = int(run.rstrip("s")), run.endswith("s")
            rows.append(
                run_group(connection, events, workers, args.sync_every if shared else 0, args.partitions)
            )
            r = rows[-1]
            print(
                f"workers {workers} {'one model' if shared else 'own models':<10} HR@10 {r['hr_at_10']:.4f}  "
                f"all joined after {r['to_all_joined_s']:5.1f} s  {r['events_per_s']:8,.0f} events/s",
                flush=True,
            )
        base = next((r for r in rows if r["workers"] == 1), None)
        if base:
            for r in rows:
                r["speed_vs_one"] = r["events_per_s"] / base["events_per_s"]
                r["hr_vs_one"] = r["hr_at_10"] - base["hr_at_10"]
        write_results(args.json, {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows})
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
