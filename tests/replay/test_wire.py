"""Wire details the worker relies on: the fast encoder equals schema.encode, our partitioner
equals Kafka's default one, item records round-trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from kafka.partitioner import murmur2 as kafka_murmur2

from replay.datasets import load_ml1m_dir
from replay.partition import murmur2, partition_for_key, partition_for_user
from replay.schema import (
    Interaction,
    ItemFirstSeen,
    MalformedRecord,
    decode,
    decode_item,
    encode,
    encode_item,
    interaction_encoder,
    user_key,
)


def test_fast_encoder_is_byte_identical_on_the_real_subset(ml1m_subset_dir: Path) -> None:
    events = load_ml1m_dir(ml1m_subset_dir).events.head(50_000)
    fast = interaction_encoder("ml-1m")
    columns = ("event_id", "user", "item", "rating", "time", "cohort", "shifted")
    for row in zip(*(events[c].to_list() for c in columns), strict=True):
        e, u, i, r, t, c, s = row
        assert fast(*row) == encode(Interaction(e, u, i, r, t, "ml-1m", c, s))


@pytest.mark.parametrize(
    "event",
    [
        Interaction(0, 1, 2, None, 1.5e9, 'odd "name"\n', cohort=True, shifted=False),
        Interaction(10**12, 0, 0, 0.1, 0.25, "x", cohort=True, shifted=True),
        Interaction(3, 4, 5, 1e-7, 1e-5, "ünï"),
        Interaction(3, 4, 5, float("nan"), 12.0, "nan-falls-back"),
    ],
)
def test_fast_encoder_edge_cases(event: Interaction) -> None:
    fast = interaction_encoder(event.dataset)
    value = fast(
        event.event_id,
        event.user,
        event.item,
        event.rating,
        event.time,
        event.cohort,
        event.shifted,
    )
    assert value == encode(event)


def test_item_records_round_trip_and_reject_garbage() -> None:
    record = ItemFirstSeen(item=1193, first_event_id=5, first_time=978300760.0, dataset="ml-1m")
    assert decode_item(encode_item(record)) == record
    with pytest.raises(MalformedRecord, match="not an item record"):
        decode_item(encode(Interaction(0, 1, 2, None, 3.0, "x")))
    with pytest.raises(MalformedRecord):
        decode(encode_item(record))


def test_murmur2_matches_kafka_python_and_the_partitioner() -> None:
    rng = np.random.default_rng(1)
    keys = [user_key(u) for u in range(20_000)]
    keys += [bytes(rng.integers(0, 256, n).tolist()) for n in range(0, 40)]
    for key in keys:
        assert murmur2(key) == kafka_murmur2(key)
    for partitions in (1, 3, 4, 8):
        for user in range(2_000):
            key = user_key(user)
            expected = (kafka_murmur2(key) & 0x7FFFFFFF) % partitions
            assert (
                partition_for_user(user, partitions)
                == expected
                == partition_for_key(key, partitions)
            )
    with pytest.raises(ValueError):
        partition_for_key(b"1", 0)
