"""Per-event rows and windowed aggregates with polars: the sink's fast path.

``prediction_rows`` turns prediction records into the per-event table (fixed schema
``PREDICTION_SCHEMA``); ``window_table`` aggregates it per (model, event-time tumbling window)
with cumulative and event-time fading columns (``WINDOW_SCHEMA``). The metric objects in
``stream.metrics`` are the reference; tests check both give the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from stream.records import HIT_KS, NDCG_KS, Prediction, rank_metrics

PREDICTION_SCHEMA: dict[str, pl.DataType] = {
    "model": pl.String(),
    "event_id": pl.Int64(),
    "user": pl.Int64(),
    "item": pl.Int64(),
    "time": pl.Float64(),
    "rank": pl.Int64(),  # null: the target could not be hit
    "n_candidates": pl.Int64(),
    **{f"hr@{k}": pl.Int8() for k in HIT_KS},
    **{f"ndcg@{k}": pl.Float64() for k in NDCG_KS},
    "rr": pl.Float64(),
    "cold_user": pl.Boolean(),
    "cold_item": pl.Boolean(),
    "seen_item": pl.Boolean(),
    "oov_item": pl.Boolean(),
    "shift_score": pl.Float64(),
    "cohort": pl.Boolean(),
    "shifted": pl.Boolean(),
    "batch_size": pl.Int64(),
    "produced_ms": pl.Float64(),  # wall clock, interaction record's Kafka timestamp
    "predicted_ms": pl.Float64(),  # wall clock, prediction computed
    "written_ms": pl.Float64(),  # wall clock, prediction record's Kafka timestamp
    "latency_ms": pl.Float64(),  # written - produced
}

WINDOW_METRICS = [*(f"hr@{k}" for k in HIT_KS), *(f"ndcg@{k}" for k in NDCG_KS), "rr"]
FADING_METRICS = ["hr@10", "ndcg@10", "rr"]

WINDOW_SCHEMA: dict[str, pl.DataType] = {
    "model": pl.String(),
    "window": pl.Int64(),
    "window_start": pl.Float64(),  # event time, seconds since the epoch
    "window_end": pl.Float64(),
    "n_events": pl.Int64(),
    "n_users": pl.Int64(),
    "n_cold_user": pl.Int64(),
    "n_cold_item": pl.Int64(),
    "n_unrankable": pl.Int64(),
    **{f"hr@{k}": pl.Float64() for k in HIT_KS},
    **{f"ndcg@{k}": pl.Float64() for k in NDCG_KS},
    "mrr": pl.Float64(),
    "hr@10_warm": pl.Float64(),  # events whose user and item were both seen before
    "macro_hr@10": pl.Float64(),  # per-user mean, then mean over the window's users
    "macro_ndcg@10": pl.Float64(),
    "shift_score_mean": pl.Float64(),
    "latency_p50_ms": pl.Float64(),
    "latency_p99_ms": pl.Float64(),
    "cum_n_events": pl.Int64(),
    "cum_hr@10": pl.Float64(),
    "cum_ndcg@10": pl.Float64(),
    "cum_mrr": pl.Float64(),
    "fading_hr@10": pl.Float64(),
    "fading_ndcg@10": pl.Float64(),
    "fading_mrr": pl.Float64(),
}


def prediction_rows(
    predictions: Sequence[Prediction], written_ms: Sequence[float | None] | None = None
) -> pl.DataFrame:
    columns: dict[str, list[Any]] = {name: [] for name in PREDICTION_SCHEMA}
    for position, p in enumerate(predictions):
        append_row(columns, p, None if written_ms is None else written_ms[position])
    return pl.DataFrame(columns, schema=PREDICTION_SCHEMA)


def append_row(columns: dict[str, list[Any]], p: Prediction, written_ms: float | None) -> None:
    """Append one prediction to per-column lists (``PREDICTION_SCHEMA`` names): the sink does
    this for every (event, model), so the row is one tuple and the metrics of a rank are
    computed once per distinct rank."""
    latency = None if written_ms is None or p.produced_ms is None else written_ms - p.produced_ms
    row = (
        p.model, p.event_id, p.user, p.item, p.time, p.rank, p.n_candidates, p.cold_user,
        p.cold_item, p.seen_item, p.oov_item, p.shift_score, p.cohort, p.shifted, p.batch_size,
        p.produced_ms, p.predicted_ms, written_ms, latency, *rank_metrics(p.rank),
    )  # fmt: skip
    for name, value in zip(_ROW_COLUMNS, row, strict=True):
        columns[name].append(value)


# ``rank_metrics`` order
_RANK_COLUMNS = [*(f"hr@{k}" for k in HIT_KS), *(f"ndcg@{k}" for k in NDCG_KS), "rr"]
_ROW_COLUMNS = [
    "model", "event_id", "user", "item", "time", "rank", "n_candidates", "cold_user",
    "cold_item", "seen_item", "oov_item", "shift_score", "cohort", "shifted", "batch_size",
    "produced_ms", "predicted_ms", "written_ms", "latency_ms", *_RANK_COLUMNS,
]  # fmt: skip  # the order of ``append_row``'s tuple


def window_table(
    events: pl.DataFrame,
    size_s: float = 86_400.0,
    origin: float = 0.0,
    half_life_s: float = 7 * 86_400.0,
) -> pl.DataFrame:
    """Per (model, tumbling event-time window) rows of ``WINDOW_SCHEMA``, in time order."""
    if events.height == 0:
        return pl.DataFrame(schema=WINDOW_SCHEMA)
    frame = events.sort(["model", "time", "event_id"]).with_columns(
        ((pl.col("time") - origin) / size_s).floor().cast(pl.Int64).alias("window")
    )
    per_user = frame.group_by(["model", "window", "user"]).agg(
        pl.col("hr@10").mean().alias("u_hr"), pl.col("ndcg@10").mean().alias("u_ndcg")
    )
    macro = per_user.group_by(["model", "window"]).agg(
        pl.col("u_hr").mean().alias("macro_hr@10"), pl.col("u_ndcg").mean().alias("macro_ndcg@10")
    )
    warm = ~pl.col("cold_user") & ~pl.col("cold_item")
    windows = (
        frame.group_by(["model", "window"])
        .agg(
            pl.len().cast(pl.Int64).alias("n_events"),
            pl.col("user").n_unique().cast(pl.Int64).alias("n_users"),
            pl.col("cold_user").sum().cast(pl.Int64).alias("n_cold_user"),
            pl.col("cold_item").sum().cast(pl.Int64).alias("n_cold_item"),
            pl.col("rank").is_null().sum().cast(pl.Int64).alias("n_unrankable"),
            *[pl.col(m).cast(pl.Float64).mean().alias(m) for m in WINDOW_METRICS],
            pl.col("hr@10").filter(warm).cast(pl.Float64).mean().alias("hr@10_warm"),
            pl.col("shift_score").mean().alias("shift_score_mean"),
            pl.col("latency_ms").quantile(0.5, "linear").alias("latency_p50_ms"),
            pl.col("latency_ms").quantile(0.99, "linear").alias("latency_p99_ms"),
            *[pl.col(m).cast(pl.Float64).sum().alias(f"_sum_{m}") for m in FADING_METRICS],
        )
        .join(macro, on=["model", "window"])
        .sort(["model", "window"])
        .with_columns(
            (pl.col("window").cast(pl.Float64) * size_s + origin).alias("window_start"),
            ((pl.col("window") + 1).cast(pl.Float64) * size_s + origin).alias("window_end"),
            pl.col("n_events").cum_sum().over("model").alias("cum_n_events"),
        )
        .with_columns(
            *[
                (pl.col(f"_sum_{m}").cum_sum().over("model") / pl.col("cum_n_events")).alias(
                    f"cum_{'mrr' if m == 'rr' else m}"
                )
                for m in FADING_METRICS
            ]
        )
        .rename({"rr": "mrr"})
    )
    fading = _fading(frame, math.log(2.0) / half_life_s)
    windows = windows.join(fading, on=["model", "window"])
    return windows.select([pl.col(name).cast(dtype) for name, dtype in WINDOW_SCHEMA.items()])


def _fading(frame: pl.DataFrame, rate: float) -> pl.DataFrame:
    """Event-time fading estimate at each window's last event (see ``EventTimeFading``)."""
    last = pl.col("time").max().over(["model", "window"])
    decayed = frame.with_columns((-rate * (last - pl.col("time"))).exp().alias("_decay"))
    sums = (
        decayed.group_by(["model", "window"])
        .agg(
            pl.col("time").max().alias("_last"),
            pl.col("_decay").sum().alias("_weight"),
            *[
                (pl.col(m).cast(pl.Float64) * pl.col("_decay")).sum().alias(m)
                for m in FADING_METRICS
            ],
        )
        .sort(["model", "window"])
    )
    out: dict[str, list[object]] = {"model": [], "window": []}
    out.update({f"fading_{'mrr' if m == 'rr' else m}": [] for m in FADING_METRICS})
    for (model,), group in sums.group_by(["model"], maintain_order=True):
        weight = 0.0
        totals = dict.fromkeys(FADING_METRICS, 0.0)
        previous: float | None = None
        for row in group.iter_rows(named=True):
            carry = 1.0 if previous is None else float(np.exp(-rate * (row["_last"] - previous)))
            weight = weight * carry + row["_weight"]
            for m in FADING_METRICS:
                totals[m] = totals[m] * carry + row[m]
            previous = row["_last"]
            out["model"].append(model)
            out["window"].append(row["window"])
            for m in FADING_METRICS:
                out[f"fading_{'mrr' if m == 'rr' else m}"].append(totals[m] / weight)
    return pl.DataFrame(out, schema_overrides={"window": pl.Int64()})
