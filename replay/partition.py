"""Where a user's events land: Kafka's default key partitioner, computed by us.

The replayer sends every record with an explicit partition = ``toPositive(murmur2(key)) % n``,
which is what the Java client's and kafka-python's default partitioners compute for a non-null key.
Computing it here means the per-partition counts in the end-of-stream markers are exact, and a
worker or a test can know where each user lands without asking the broker.

>>> partition_for_key(b"1", 4) == partition_for_user(1, 4)
True
"""

from __future__ import annotations

from replay.schema import user_key

_MASK32 = 0xFFFFFFFF
_SEED = 0x9747B28C
_M = 0x5BD1E995
_R = 24


def murmur2(data: bytes) -> int:
    """32-bit MurmurHash2 as in Kafka's ``Utils.murmur2`` (Java client), as an unsigned int."""
    length = len(data)
    h = (_SEED ^ length) & _MASK32
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK32
        k ^= k >> _R
        k = (k * _M) & _MASK32
        h = (h * _M) & _MASK32
        h ^= k
    tail = length % 4
    if tail == 3:
        h ^= data[whole + 2] << 16
    if tail >= 2:
        h ^= data[whole + 1] << 8
    if tail >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    return h


def partition_for_key(key: bytes, partitions: int) -> int:
    if partitions < 1:
        raise ValueError(f"partition count must be at least 1, got {partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def partition_for_user(user: int, partitions: int) -> int:
    return partition_for_key(user_key(user), partitions)
