"""Kafka's default partition of many keys at once: murmur2 in numpy, the same as every client.

kafka-python hashes each key in pure Python when ``send`` is not told the partition: 3.6 us
for the hash of a 24-byte viewer id, and with its partitioner's other work about 10 us a
message, as much as the rest of ``send`` (measured here: 24 us of CPU a 590-byte list against
13.5 us with the partition given). :func:`partitions` computes Kafka's default partition of a
whole batch of keys with whole-array numpy operations (0.3 us a key for a batch of 500 viewer
ids) and the service passes each to ``send(partition=...)``. The hash is
the Java client's ``Utils.murmur2`` (seed ``0x9747b28c``), taken positive and modulo the
partition count, so every key lands where the Java client, librdkafka's ``murmur2_random`` and
kafka-python put it: a compacted topic keeps one list per viewer whichever client wrote it.

>>> from kafka.partitioner.default import murmur2
>>> keys = [b"", b"a", b"viewer-42", "\\u00fc".encode()]
>>> murmur2_many(keys).tolist() == [murmur2(k) for k in keys]
True
>>> partitions(keys, 3).tolist()
[0, 1, 0, 2]

"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from kafka.partitioner.default import murmur2

__all__ = ["murmur2_many", "partitions", "SMALL_BATCH"]

_SEED = np.uint32(0x9747B28C)
_M = np.uint32(0x5BD1E995)


def murmur2_many(keys: Sequence[bytes]) -> np.ndarray:
    """The Java client's murmur2 of each key, as ``uint32`` (one pass per 4-byte block)."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.uint32)
    lengths = np.fromiter((len(k) for k in keys), dtype=np.int64, count=n)
    # One row per key, zero-padded to a whole number of 4-byte blocks plus a spare one, so the
    # tail bytes of every key can be read from its row without bounds checks.
    width = (int(lengths.max()) // 4 + 1) * 4
    padded = b"".join(k.ljust(width, b"\0") for k in keys)
    rows = np.frombuffer(padded, dtype=np.uint8).reshape(n, width)
    blocks = rows.view("<u4").astype(np.uint32)  # little-endian 4-byte words, as Java reads them
    full = lengths // 4
    with np.errstate(over="ignore"):
        h = _SEED ^ lengths.astype(np.uint32)
        for j in range(int(full.max())):
            k = blocks[:, j] * _M
            k ^= k >> np.uint32(24)
            k *= _M
            mixed = (h * _M) ^ k
            h = np.where(full > j, mixed, h)
        tail = lengths % 4
        at = full * 4
        idx = np.arange(n)
        b0 = rows[idx, at].astype(np.uint32)
        b1 = rows[idx, np.minimum(at + 1, width - 1)].astype(np.uint32)
        b2 = rows[idx, np.minimum(at + 2, width - 1)].astype(np.uint32)
        h = np.where(tail >= 3, h ^ (b2 << np.uint32(16)), h)
        h = np.where(tail >= 2, h ^ (b1 << np.uint32(8)), h)
        h = np.where(tail >= 1, (h ^ b0) * _M, h)
        h ^= h >> np.uint32(13)
        h *= _M
        h ^= h >> np.uint32(15)
    return h


#: Below this many keys, the per-key hash is cheaper than the whole-array operations' setup
#: (about 45 us for any batch; 3.6 us a key for the plain hash).
SMALL_BATCH = 12


def partitions(keys: Sequence[bytes], count: int) -> np.ndarray:
    """Kafka's default partition of each key among ``count`` partitions (``int64``)."""
    if count == 1:
        return np.zeros(len(keys), dtype=np.int64)
    if len(keys) < SMALL_BATCH:
        return np.asarray([(murmur2(k) & 0x7FFFFFFF) % count for k in keys], dtype=np.int64)
    return (murmur2_many(keys) & np.uint32(0x7FFFFFFF)).astype(np.int64) % count
