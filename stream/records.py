"""Wire format of the ``predictions`` and dead-letter topics (compact, versioned JSON).

A prediction record is one (event, model) result. The worker also forwards each input
partition's end-of-stream marker to ``predictions``, once per model, so the sink knows when it
has everything: ``PredictionEnd`` carries the replayer's counts.

>>> p = Prediction(event_id=3, user=1, item=5, time=10.0, model="pop", rank=2, n_candidates=9)
>>> decode_prediction(encode_prediction(p)) == p
True
>>> p.hits(10), round(p.ndcg(10), 4), p.rr
(1, 0.6309, 0.5)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from replay.schema import load_json_object
from stream.metrics import hit_at, ndcg_at, reciprocal_rank

PREDICTION_VERSION = 1
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


_SHORT = {
    "event_id": "id",
    "user": "u",
    "item": "i",
    "time": "t",
    "model": "m",
    "rank": "r",
    "n_candidates": "n",
    "cold_user": "cu",
    "cold_item": "ci",
    "seen_item": "si",
    "oov_item": "oi",
    "shift_score": "ss",
    "cohort": "c",
    "shifted": "s",
    "produced_ms": "pt",
    "predicted_ms": "wt",
    "batch_size": "b",
}
_LONG = {v: k for k, v in _SHORT.items()}


def encode_prediction(record: Prediction | PredictionEnd) -> bytes:
    if isinstance(record, PredictionEnd):
        payload: dict[str, Any] = {"v": PREDICTION_VERSION, "k": "eos", **asdict(record)}
    else:
        payload = {"v": PREDICTION_VERSION, "k": "pred"}
        for name, short in _SHORT.items():
            payload[short] = getattr(record, name)
        # derived metrics travel too, so a plain consumer needs no code of ours
        for k in HIT_KS:
            payload[f"h{k}"] = record.hits(k)
        for k in NDCG_KS:
            payload[f"g{k}"] = record.ndcg(k)
        payload["rr"] = record.rr
    return json.dumps(payload, separators=(",", ":")).encode()


def decode_prediction(data: bytes | None) -> Prediction | PredictionEnd:
    payload = load_json_object(data, MalformedPrediction)
    if payload.get("v") != PREDICTION_VERSION:
        raise MalformedPrediction(f"not a version-{PREDICTION_VERSION} prediction record")
    kind = payload.pop("k", None)
    payload.pop("v")
    try:
        if kind == "eos":
            return PredictionEnd(**payload)
        if kind == "pred":
            fields = {_LONG[k]: v for k, v in payload.items() if k in _LONG}
            return Prediction(**fields)
    except TypeError as error:
        raise MalformedPrediction(f"bad fields: {error}") from error
    raise MalformedPrediction(f"unknown kind {kind!r}")


def prediction_key(record: Prediction | PredictionEnd) -> bytes:
    """Records of one event share a key, so its models' records land together."""
    if isinstance(record, PredictionEnd):
        return f"eos:{record.partition}".encode()
    return str(record.event_id).encode()


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
