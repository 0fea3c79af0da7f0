"""Wire details the worker relies on: interactions and item records round-trip, non-finite
floats are handled as documented, our partitioner equals Kafka's default one."""

from __future__ import annotations

import pickle
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
    encode_interaction,
    encode_item,
    user_key,
)


def test_interactions_round_trip_on_the_real_subset(ml1m_subset_dir: Path) -> None:
    events = load_ml1m_dir(ml1m_subset_dir).events.head(50_000)
    columns = ("event_id", "user", "item", "rating", "time", "cohort", "shifted")
    for row in zip(*(events[c].to_list() for c in columns), strict=True):
        e, u, i, r, t, c, s = row
        value = encode_interaction(e, u, i, r, t, "ml-1m", c, s)
        assert decode(value) == Interaction(e, u, i, r, t, "ml-1m", c, s)


@pytest.mark.parametrize(
    "event",
    [
        Interaction(0, 1, 2, None, 1.5e9, 'odd "name"\n', cohort=True, shifted=False),
        Interaction(10**12, 0, 0, 0.1, 0.25, "x", cohort=True, shifted=True),
        Interaction(3, 4, 5, 1e-7, 1e-5, "ünï"),
        Interaction(2**63 - 1, 4, 5, 3.0, 1e300, "largest"),
    ],
)
def test_interaction_edge_cases_round_trip(event: Interaction) -> None:
    assert decode(encode(event)) == event


def test_interactions_pickle_to_equal_values() -> None:
    # the worker pickles events to its model processes (``Interaction.__reduce__``)
    events = [Interaction(0, 1, 2, None, 1.5e9, "x"), Interaction(3, 4, 5, 4.0, 2.0, "y", True)]
    assert pickle.loads(pickle.dumps(events, protocol=pickle.HIGHEST_PROTOCOL)) == events


def test_non_finite_floats_travel_as_null() -> None:
    no_rating = decode(encode(Interaction(3, 4, 5, float("nan"), 12.0, "x")))
    assert isinstance(no_rating, Interaction) and no_rating.rating is None
    with pytest.raises(MalformedRecord, match="'t'"):
        decode(encode(Interaction(3, 4, 5, 1.0, float("inf"), "x")))
    with pytest.raises(MalformedRecord, match="not JSON"):
        decode(b'{"v":1,"k":"ev","id":3,"u":4,"i":5,"r":NaN,"t":12.0,"ds":"x"}')


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
