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

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from operator import attrgetter, itemgetter
from typing import Any

import orjson

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


@dataclass(frozen=True)
class WireField:
    """One field of a prediction record: its ``Prediction`` name, its short key on the wire, the
    JSON types it may take, and its value when absent (a required field must be there)."""

    name: str
    key: str
    types: frozenset[type]
    default: Any = None
    required: bool = False


def _field(name: str, key: str, *types: type, default: Any = None) -> WireField:
    return WireField(name, key, frozenset(types), default)


def _required(name: str, key: str, *types: type) -> WireField:
    return WireField(name, key, frozenset(types), required=True)


_NONE = type(None)
# the event's fields, shared by every model's result (the encoder checks that they agree)
EVENT_FIELDS = (
    _required("event_id", "id", int),
    _required("user", "u", int),
    _required("item", "i", int),
    _required("time", "t", float, int),
    _required("n_candidates", "n", int),
    _field("cold_user", "cu", bool, default=False),
    _field("cold_item", "ci", bool, default=False),
    _field("seen_item", "si", bool, default=False),
    _field("cohort", "c", bool, default=False),
    _field("shifted", "s", bool, default=False),
    _field("produced_ms", "pt", float, int, _NONE),
    _field("predicted_ms", "wt", float, int, _NONE),
    _field("batch_size", "b", int, default=0),
)
# one entry per model
MODEL_FIELDS = (
    _required("model", "m", str),
    _required("rank", "r", int, _NONE),
    _field("oov_item", "oi", bool, default=False),
    _field("shift_score", "ss", float, int, _NONE),
)
# the sink's unit: one tuple per (event, model), the model's fields first (``decode_rows``)
ROW_FIELDS = tuple(f.name for f in (*MODEL_FIELDS, *EVENT_FIELDS))
ROW_MODEL, ROW_RANK, ROW_EVENT_ID, ROW_PRODUCED_MS = (
    ROW_FIELDS.index(name) for name in ("model", "rank", "event_id", "produced_ms")
)
row_of = attrgetter(*ROW_FIELDS)  # Prediction -> its row


class WireReader:
    """Reads a group of fields out of a decoded JSON object in one pass: a tuple of their values
    in the group's order, defaults filled in, every type checked (a value of the wrong type would
    otherwise surface much later, when the sink builds its Parquet columns)."""

    def __init__(self, fields: tuple[WireField, ...], what: str) -> None:
        self.fields = fields
        self.what = what
        self.defaults = {f.key: f.default for f in fields if not f.required}
        self.pick = itemgetter(*(f.key for f in fields))

    def __call__(self, payload: Any) -> tuple[Any, ...]:
        if not isinstance(payload, dict):
            raise MalformedPrediction(f"{self.what} is not a JSON object: {payload!r}")
        try:
            values: tuple[Any, ...] = self.pick({**self.defaults, **payload})
        except KeyError as missing:
            raise MalformedPrediction(f"{self.what} lacks field {missing}") from None
        for value, wire in zip(values, self.fields, strict=True):
            if type(value) not in wire.types:
                raise MalformedPrediction(
                    f"{self.what}: field {wire.key!r} ({wire.name}) has the wrong type: {value!r}"
                )
        return values


_read_event = WireReader(EVENT_FIELDS, "a prediction record")
_read_model = WireReader(MODEL_FIELDS, "a model result")
_END_COUNTS = ("partition", "partitions", "total_events", "partition_events")
_read_end = WireReader(
    (_required("model", "model", str), *(_required(name, name, int) for name in _END_COUNTS)),
    "an end marker",
)


def encode_predictions(records: Sequence[Prediction]) -> bytes:
    """One event's predictions (every model's) as one record."""
    if not records:
        raise ValueError("no predictions to encode")
    shared = _event_values(records[0])
    payload: dict[str, Any] = {"v": PREDICTION_VERSION, "k": "pred"}
    payload.update(zip(_EVENT_KEYS, shared, strict=True))
    entries = []
    for record in records:
        if _event_values(record) != shared:
            raise ValueError(f"predictions of different events in one record: {records}")
        entry = dict(zip(_MODEL_KEYS, _model_values(record), strict=True))
        entry.update(_derived(record.rank))
        entries.append(entry)
    payload["ms"] = entries
    return orjson.dumps(payload)


_event_values = attrgetter(*(f.name for f in EVENT_FIELDS))
_model_values = attrgetter(*(f.name for f in MODEL_FIELDS))
_EVENT_KEYS = tuple(f.key for f in EVENT_FIELDS)
_MODEL_KEYS = tuple(f.key for f in MODEL_FIELDS)


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
    return orjson.dumps(payload)


def decode_predictions(data: bytes | None) -> list[Prediction] | PredictionEnd:
    """-> every model's ``Prediction`` of one event, or an end marker."""
    rows = decode_rows(data)
    if isinstance(rows, PredictionEnd):
        return rows
    return [Prediction(**dict(zip(ROW_FIELDS, row, strict=True))) for row in rows]


def decode_rows(data: bytes | None) -> list[tuple[Any, ...]] | PredictionEnd:
    """``decode_predictions`` without a ``Prediction`` per model (the sink's hot path): one tuple
    per model in ``ROW_FIELDS`` order, or an end marker. Raises ``MalformedPrediction`` naming
    the missing or mistyped field."""
    payload = load_json_object(data, MalformedPrediction)
    if payload.get("v") != PREDICTION_VERSION:
        raise MalformedPrediction(f"not a version-{PREDICTION_VERSION} prediction record")
    kind = payload.get("k")
    if kind == "eos":
        return PredictionEnd(*_read_end(payload))
    if kind != "pred":
        raise MalformedPrediction(f"unknown kind {kind!r}")
    entries = payload.get("ms")
    if not isinstance(entries, list) or not entries:
        raise MalformedPrediction("a prediction record without model results")
    shared = _read_event(payload)
    return [_read_model(entry) + shared for entry in entries]


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
    return orjson.dumps(payload)
