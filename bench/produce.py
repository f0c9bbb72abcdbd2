"""Publishing lists: kafka-python's ``send`` per list against the service's appending, per list.

Usage::

    .venv/bin/python bench/produce.py [--lists 100000] [--batch 256] [--rounds 3]
        [--codecs none,zstd] [--bootstrap-servers HOST:PORT]   # or $KAFKA_BOOTSTRAP; else a local broker

The service's own publishing path (:class:`consumer.publish.Publisher`, as a worker makes it:
acks=all, idempotent, the service's linger and batch size, partitions computed for a whole
batch) hands ``--lists`` recommendation lists as the service writes them (about 570 bytes),
keyed by 5,000 viewers, to a fresh 3-partition topic in batches of ``--batch`` (one ``send``
per batch, as a worker does per learned batch), then waits for every acknowledgement. Two
ways, in alternating order in each round: ``send`` (``batched_send=False``: kafka-python's
``KafkaProducer.send`` per list) and ``appended`` (the default: each partition's run appended
in one step, :mod:`consumer.appending`).

Printed per way and codec (the medians of the rounds): microseconds per list of the calling
thread (what a worker's learning waits for), of the whole process (the producer's IO thread
included: compressing, sending, completing what the brokers acknowledged), and lists per
second; with the ratio appended / send from the same rounds. Writes
``bench/results/produce.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

import contract  # noqa: E402, F401  (first: it makes BLAS single-threaded before numpy loads)

# isort: split

import numpy as np  # noqa: E402
from kafka import KafkaAdminClient, KafkaProducer  # noqa: E402
from kafka.admin import NewTopic  # noqa: E402

from bench.brokers import add_broker_arguments, kafka_for, remove_topics  # noqa: E402
from consumer.clients import make_producer_options  # noqa: E402
from consumer.config import ServiceConfig  # noqa: E402
from consumer.outputs import recommendation_values  # noqa: E402
from consumer.publish import Publisher  # noqa: E402
from contract.connection import KafkaConnection  # noqa: E402
from model.base import Recommendation  # noqa: E402

WAYS = {"send": False, "appended": True}


def lists(n: int, viewers: int = 5000) -> list[tuple[bytes, bytes]]:
    """``n`` (key, value) lists as the service writes them (:func:`consumer.outputs.recommendation_values`):
    a viewer's ten videos with scores, the model, the arm, the times and the source event."""
    rng = np.random.default_rng(0)
    names = [f"viewer-{(i * 7919) % viewers}" for i in range(n)]
    recs = [
        Recommendation([f"video-{v}" for v in rng.integers(0, 10_000, 10)], np.sort(rng.random(10))[::-1])
        for _ in range(n)
    ]
    values = recommendation_values(
        names, recs, "streamrec", 1.7e9, [1.7e9 - i for i in range(n)], [(i % 3, i) for i in range(n)]
    )
    return [(name.encode(), value) for name, value in zip(names, values, strict=True)]


def publish(options: dict, topic: str, records: list, batch: int, batched: bool) -> dict[str, float]:
    """Publish ``records`` through a service Publisher; the time per list it took."""
    producer = KafkaProducer(**options)
    try:
        producer.partitions_for(topic)
        publisher = Publisher(producer, consumer=None, exactly_once=False, batched_send=batched)
        assert publisher._appends is batched, "this kafka-python cannot be appended to"
        messages = [(topic, key, value, None) for key, value in records]
        thread0, cpu0, wall0 = time.thread_time(), time.process_time(), time.perf_counter()
        for start in range(0, len(messages), batch):
            publisher.send(messages[start : start + batch])
        caller = time.thread_time() - thread0
        publisher._until_acknowledged()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        producer.close(timeout=10)
    n = len(records)
    return {"caller_us": 1e6 * caller / n, "process_us": 1e6 * cpu / n, "lists_per_s": n / wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lists", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=256, help="lists per send (a worker's learned batch)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--codecs", default="none,zstd", help="output compressions to measure")
    parser.add_argument("--json", type=Path, default=HERE / "bench" / "results" / "produce.json")
    add_broker_arguments(parser)
    args = parser.parse_args(argv)
    with kafka_for(parser, args) as connection:
        return run(args, connection)


def run(args: argparse.Namespace, connection: KafkaConnection) -> int:
    config = ServiceConfig(bootstrap_servers=connection.bootstrap_servers, security=connection)
    stem = f"bench-produce-{uuid.uuid4().hex[:8]}"
    records = lists(args.lists)
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    admin = KafkaAdminClient(**config.kafka.client_options())
    try:
        for codec in args.codecs.split(","):
            options = make_producer_options(dataclasses.replace(config, output_compression=codec))
            results[codec] = {way: [] for way in WAYS}
            for round_ in range(args.rounds):
                order = list(WAYS) if round_ % 2 == 0 else list(reversed(WAYS))
                for way in order:
                    topic = f"{stem}-{codec}-{way}-{round_}"
                    admin.create_topics([NewTopic(topic, 3, 1)])
                    time.sleep(0.5)
                    results[codec][way].append(publish(options, topic, records, args.batch, WAYS[way]))
    finally:
        admin.close()
        remove_topics(connection, stem)
    summary = {}
    size = statistics.mean(len(v) for _, v in records)
    print(f"{args.lists:,} lists of {size:.0f} bytes, batches of {args.batch}")
    print(f"{'codec':<6}{'way':<10}{'caller us/list':>16}{'process us/list':>17}{'lists/s':>11}")
    for codec, ways in results.items():
        medians = {
            way: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for way, runs in ways.items()
        }
        for way, m in medians.items():
            print(
                f"{codec:<6}{way:<10}{m['caller_us']:>16.2f}{m['process_us']:>17.2f}{m['lists_per_s']:>11,.0f}"
            )
        ratios = {k: medians["appended"][k] / medians["send"][k] for k in medians["send"]}
        print(
            f"{codec:<6}{'ratio':<10}{ratios['caller_us']:>16.2f}{ratios['process_us']:>17.2f}"
            f"{ratios['lists_per_s']:>11.2f}"
        )
        summary[codec] = {"median": medians, "appended_vs_send": ratios, "rounds": ways}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"lists": args.lists, "batch": args.batch, "codecs": summary}, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
