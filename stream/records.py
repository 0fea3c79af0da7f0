"""Wire format of the ``predictions`` and dead-letter topics (compact, versioned JSON).

A prediction record carries one event's results for every model: the event's fields once, then
one entry per model (``encode_predictions``). In memory and in Parquet the unit stays one
``Prediction`` per (event, model); ``decode_predictions`` gives them back. The worker also
forwards each input partition's end-of-stream marker to ``predictions``, once per model, so the
sink knows when it has everything: ``PredictionEnd`` carries the replayer's counts.

>>> p = Prediction(event_id=3, user=1, item=5, time=10.0, model="pop", rank=2, n_candidates=9)
>>> from dataclasses import replace
>>> q = replace(p, model="sasrec", rank=None, oov_item=True)
>>> decode_predictions(encode_predictions([p, q])) == [p, q]
True
>>> p.hits(10), round(p.ndcg(10), 4), p.rr
(1, 0.6309, 0.5)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from operator import attrgetter
from typing import Any

from replay.schema import load_json_object
from stream.metrics import hit_at, ndcg_at, reciprocal_rank

PREDICTION_VERSION = 2  # 2: one record per event, every model's result in it
HIT_KS = (1, 5, 10, 20)
NDCG_KS = (10, 20)


class MalformedPrediction(ValueError):
    """A predictions-topic value that cannot be decoded."""


@dataclass(frozen=True)
class Prediction:
    event_id: int
    user: int
    item: int
    time: float  # event time, seconds since the epoch
    model: str  # configured model name, e.g. "ttt4rec" or "ttt4rec:frozen"
    rank: int | None  # pessimistic rank among candidates; None = cannot be hit
    n_candidates: int  # candidates ranked, target included
    cold_user: bool = False  # the user had no earlier event in the stream
    cold_item: bool = False  # the item had not been seen before this event
    seen_item: bool = False  # the user already had this item (excluded when exclude_seen)
    oov_item: bool = False  # the item is outside the model's vocabulary
    shift_score: float | None = None  # the model's per-user shift score after the update
    cohort: bool = False  # ground truth from the replayer
    shifted: bool = False  # ground truth from the replayer
    produced_ms: float | None = None  # Kafka timestamp of the interaction record (wall clock)
    predicted_ms: float | None = None  # wall clock when the prediction was computed
    batch_size: int = 0  # events in the micro-batch that produced this record
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def hits(self, k: int) -> int:
        return hit_at(self.rank, k)

    def ndcg(self, k: int) -> float:
        return ndcg_at(self.rank, k)

    @property
    def rr(self) -> float:
        return reciprocal_rank(self.rank)


@dataclass(frozen=True)
class PredictionEnd:
    """End-of-stream of one input partition, forwarded once per model."""

    model: str
    partition: int
    partitions: int
    total_events: int
    partition_events: int


# the event's fields, shared by every model's result (the encoder checks that they agree)
_EVENT = {
    "event_id": "id",
    "user": "u",
    "item": "i",
    "time": "t",
    "n_candidates": "n",
    "cold_user": "cu",
    "cold_item": "ci",
    "seen_item": "si",
    "cohort": "c",
    "shifted": "s",
    "produced_ms": "pt",
    "predicted_ms": "wt",
    "batch_size": "b",
}
# one entry per model
_MODEL = {"model": "m", "rank": "r", "oov_item": "oi", "shift_score": "ss"}
_EVENT_LONG = {v: k for k, v in _EVENT.items()}
_MODEL_LONG = {v: k for k, v in _MODEL.items()}


def encode_predictions(records: Sequence[Prediction]) -> bytes:
    """One event's predictions (every model's) as one record."""
    if not records:
        raise ValueError("no predictions to encode")
    shared = _event_fields(records[0])
    payload: dict[str, Any] = {"v": PREDICTION_VERSION, "k": "pred"}
    payload.update(zip(_EVENT.values(), shared, strict=True))
    entries = []
    for record in records:
        if _event_fields(record) != shared:
            raise ValueError(f"predictions of different events in one record: {records}")
        entry = dict(zip(_MODEL.values(), _model_fields(record), strict=True))
        entry.update(_derived(record.rank))
        entries.append(entry)
    payload["ms"] = entries
    return json.dumps(payload, separators=(",", ":")).encode()


_event_fields = attrgetter(*_EVENT)
_model_fields = attrgetter(*_MODEL)


@lru_cache(maxsize=8192)
def rank_metrics(rank: int | None) -> tuple[float, ...]:
    """HR@k for ``HIT_KS``, NDCG@k for ``NDCG_KS``, then the reciprocal rank, of one rank."""
    hits = (hit_at(rank, k) for k in HIT_KS)
    return (*hits, *(ndcg_at(rank, k) for k in NDCG_KS), reciprocal_rank(rank))


_DERIVED_KEYS = (*(f"h{k}" for k in HIT_KS), *(f"g{k}" for k in NDCG_KS), "rr")


@lru_cache(maxsize=4096)
def _derived(rank: int | None) -> dict[str, float]:
    """The metrics that travel with a rank, so a plain consumer needs no code of ours (read-only:
    shared between calls)."""
    return dict(zip(_DERIVED_KEYS, rank_metrics(rank), strict=True))


def encode_events(predictions: Sequence[Prediction]) -> list[tuple[bytes, bytes]]:
    """(key, value) records, one per event: runs of one event id (as ``prequential_batch`` lists
    them, event by event) become one record."""
    records = []
    start = 0
    for end in range(1, len(predictions) + 1):
        if end == len(predictions) or predictions[end].event_id != predictions[start].event_id:
            group = predictions[start:end]
            records.append((prediction_key(group), encode_predictions(group)))
            start = end
    return records


def encode_end(record: PredictionEnd) -> bytes:
    payload = {"v": PREDICTION_VERSION, "k": "eos", **asdict(record)}
    return json.dumps(payload, separators=(",", ":")).encode()


def decode_predictions(data: bytes | None) -> list[Prediction] | PredictionEnd:
    """-> every model's ``Prediction`` of one event, or an end marker."""
    payload = load_json_object(data, MalformedPrediction)
    if payload.get("v") != PREDICTION_VERSION:
        raise MalformedPrediction(f"not a version-{PREDICTION_VERSION} prediction record")
    kind = payload.pop("k", None)
    payload.pop("v")
    try:
        if kind == "eos":
            return PredictionEnd(**payload)
        if kind == "pred":
            return _decode_event(payload)
    except (TypeError, AttributeError) as error:
        raise MalformedPrediction(f"bad fields: {error}") from error
    raise MalformedPrediction(f"unknown kind {kind!r}")


def _decode_event(payload: dict[str, Any]) -> list[Prediction]:
    entries = payload.get("ms")
    if not isinstance(entries, list) or not entries:
        raise MalformedPrediction("a prediction record without model results")
    shared = {_EVENT_LONG[k]: v for k, v in payload.items() if k in _EVENT_LONG}
    return [
        Prediction(**shared, **{_MODEL_LONG[k]: v for k, v in entry.items() if k in _MODEL_LONG})
        for entry in entries
    ]


def prediction_key(record: Sequence[Prediction] | PredictionEnd) -> bytes:
    """The event id (end markers: the input partition), so records of one event share a key."""
    if isinstance(record, PredictionEnd):
        return f"eos:{record.partition}".encode()
    return str(record[0].event_id).encode()


def encode_dead_letter(
    value: bytes | None, reason: str, topic: str, partition: int, offset: int
) -> bytes:
    """A dead letter keeps the raw value (as text, replacement chars for bad bytes)."""
    payload = {
        "v": 1,
        "reason": reason,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "value": None if value is None else value.decode("utf-8", errors="replace"),
    }
    return json.dumps(payload, separators=(",", ":")).encode()
