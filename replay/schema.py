"""The wire format of the ``interactions`` topic: compact, versioned JSON.

Every value carries ``"v"`` (schema version) and ``"k"`` (kind): ``"ev"`` for an interaction,
``"eos"`` for the end-of-stream marker the replayer sends to every partition after the last
event. Keys are the user id as ASCII bytes, so a user's events share a partition and stay in order.
Event time travels in the payload (seconds since the epoch), never as the Kafka record timestamp:
year-2000 record timestamps would make time-based retention delete the log.

>>> event = Interaction(7, user=3, item=1193, rating=5.0, time=978300760.0, dataset="ml-1m")
>>> decode(encode(event)) == event
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any

import orjson

SCHEMA_VERSION = 1


class MalformedRecord(ValueError):
    """A record that cannot be decoded; the message names what is wrong."""


@dataclass(frozen=True, slots=True)
class Interaction:
    event_id: int  # position in the one global (event time, user, row) order
    user: int  # dataset user id
    item: int  # dataset item id
    rating: float | None  # explicit rating when the log has one
    time: float  # event time, seconds since the epoch
    dataset: str  # dataset name, e.g. "ml-1m"
    cohort: bool = False  # ground truth: the user belongs to an injected/synthetic shift cohort
    shifted: bool = False  # ground truth: this event comes after the user's shift

    def __reduce__(self) -> tuple[type[Interaction], tuple[Any, ...]]:
        # The worker pickles every event to its model processes; the default for a frozen
        # dataclass with slots goes through a state list and a setattr per field (2x slower).
        return Interaction, _interaction_fields(self)


_interaction_fields = attrgetter(*(f.name for f in fields(Interaction)))


@dataclass(frozen=True, slots=True)
class EndOfStream:
    partition: int  # the partition this marker was sent to
    partitions: int  # partition count of the topic
    total_events: int  # events in the whole replay, all partitions
    partition_events: int  # events this replay sent to this partition


Record = Interaction | EndOfStream


def user_key(user: int) -> bytes:
    return str(user).encode("ascii")


def encode(record: Record) -> bytes:
    """One value of the interactions topic. Non-finite floats are written as ``null`` (orjson):
    a NaN rating arrives as "no rating", a NaN time as a malformed record."""
    if isinstance(record, Interaction):
        return encode_interaction(
            record.event_id, record.user, record.item, record.rating, record.time,
            record.dataset, record.cohort, record.shifted,
        )  # fmt: skip
    payload = {
        "v": SCHEMA_VERSION,
        "k": "eos",
        "p": record.partition,
        "np": record.partitions,
        "n": record.total_events,
        "pn": record.partition_events,
    }
    return orjson.dumps(payload)


def encode_interaction(
    event_id: int,
    user: int,
    item: int,
    rating: float | None,
    time: float,
    dataset: str,
    cohort: bool = False,
    shifted: bool = False,
) -> bytes:
    """``encode(Interaction(...))`` without building the dataclass: the replayer's hot path."""
    payload: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "k": "ev",
        "id": event_id,
        "u": user,
        "i": item,
        "r": rating,
        "t": time,
        "ds": dataset,
    }
    if cohort or shifted:
        payload["c"] = int(cohort)
        payload["s"] = int(shifted)
    return orjson.dumps(payload)


def load_json_object(data: bytes | str | None, error: type[ValueError]) -> dict[str, Any]:
    """A topic value as a JSON object; raise ``error`` naming what is wrong with it."""
    if data is None:
        raise error("empty value (tombstone)")
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError as cause:  # also invalid UTF-8
        raise error(f"not JSON: {cause}") from cause
    if not isinstance(payload, dict):
        raise error(f"expected a JSON object, got {type(payload).__name__}")
    return payload


def decode(data: bytes | str | None) -> Record:
    """Decode one value; raise ``MalformedRecord`` naming the problem."""
    payload = load_json_object(data, MalformedRecord)
    version = payload.get("v")
    if version != SCHEMA_VERSION:
        raise MalformedRecord(f"unsupported schema version {version!r} (expected {SCHEMA_VERSION})")
    kind = payload.get("k")
    if kind == "ev":
        return _decode_interaction(payload)
    if kind == "eos":
        return EndOfStream(
            partition=_int(payload, "p"),
            partitions=_int(payload, "np"),
            total_events=_int(payload, "n"),
            partition_events=_int(payload, "pn"),
        )
    raise MalformedRecord(f"unknown record kind {kind!r}")


def _decode_interaction(payload: dict[str, Any]) -> Interaction:
    rating = payload.get("r")
    if rating is not None and not isinstance(rating, int | float):
        raise MalformedRecord(f"field 'r' (rating) must be a number or null, got {rating!r}")
    time = _finite_time(payload, "event time")
    dataset = _dataset(payload)
    return Interaction(
        event_id=_int(payload, "id"),
        user=_int(payload, "u"),
        item=_int(payload, "i"),
        rating=None if rating is None else float(rating),
        time=time,
        dataset=dataset,
        cohort=bool(payload.get("c", 0)),
        shifted=bool(payload.get("s", 0)),
    )


def _finite_time(payload: dict[str, Any], meaning: str) -> float:
    time = payload.get("t")
    if not isinstance(time, int | float) or isinstance(time, bool) or not math.isfinite(time):
        raise MalformedRecord(f"field 't' ({meaning}) must be a finite number, got {time!r}")
    return float(time)


def _dataset(payload: dict[str, Any]) -> str:
    dataset = payload.get("ds")
    if not isinstance(dataset, str):
        raise MalformedRecord(f"field 'ds' (dataset) must be a string, got {dataset!r}")
    return dataset


def _int(payload: dict[str, Any], field: str) -> int:
    value = payload.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedRecord(f"field {field!r} must be a non-negative integer, got {value!r}")
    return value


# --- the compacted ``items`` topic: each item's first appearance in the stream -----------------


@dataclass(frozen=True, slots=True)
class ItemFirstSeen:
    """First event of an item in the replayed stream; keyed by the item id (compacted topic).

    A worker builds the candidate set of event ``t`` as the items whose ``first_event_id < t``.
    """

    item: int
    first_event_id: int
    first_time: float  # event time of that first event, seconds since the epoch
    dataset: str


def item_key(item: int) -> bytes:
    return str(item).encode("ascii")


def encode_item(record: ItemFirstSeen) -> bytes:
    payload = {
        "v": SCHEMA_VERSION,
        "k": "item",
        "i": record.item,
        "id": record.first_event_id,
        "t": record.first_time,
        "ds": record.dataset,
    }
    return orjson.dumps(payload)


def decode_item(data: bytes | str | None) -> ItemFirstSeen:
    """Decode one value of the items topic; raise ``MalformedRecord`` naming the problem."""
    payload = load_json_object(data, MalformedRecord)
    if payload.get("v") != SCHEMA_VERSION or payload.get("k") != "item":
        raise MalformedRecord(
            f"not an item record of schema {SCHEMA_VERSION}: v={payload.get('v')!r} "
            f"k={payload.get('k')!r}"
        )
    time = _finite_time(payload, "first event time")
    dataset = _dataset(payload)
    return ItemFirstSeen(
        item=_int(payload, "i"),
        first_event_id=_int(payload, "id"),
        first_time=time,
        dataset=dataset,
    )
