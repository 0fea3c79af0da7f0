"""Per-event rows and windowed aggregates with polars: the sink's fast path.

``prediction_rows`` turns prediction records into the per-event table (fixed schema
``PREDICTION_SCHEMA``; the sink builds it from decoded rows with ``table_row`` and
``rows_frame``); ``window_table`` aggregates it per (model, event-time tumbling window)
with cumulative and event-time fading columns (``WINDOW_SCHEMA``). The metric objects in
``stream.metrics`` are the reference; tests check both give the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from stream.records import (
    HIT_KS,
    NDCG_KS,
    ROW_FIELDS,
    ROW_PRODUCED_MS,
    ROW_RANK,
    Prediction,
    rank_metrics,
    row_of,
)

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
    """Predictions (and the Kafka timestamps of their records) -> the per-event table."""
    written = [None] * len(predictions) if written_ms is None else written_ms
    return rows_frame([table_row(row_of(p), w) for p, w in zip(predictions, written, strict=True)])


def table_row(row: tuple[Any, ...], written_ms: float | None) -> tuple[Any, ...]:
    """A decoded row (``ROW_FIELDS``) with what the sink adds to it, in ``TABLE_ROW_COLUMNS``
    order: the record's Kafka timestamp, the latency, and the metrics of the rank (computed once
    per distinct rank)."""
    produced = row[ROW_PRODUCED_MS]
    latency = None if written_ms is None or produced is None else written_ms - produced
    return (*row, written_ms, latency, *rank_metrics(row[ROW_RANK]))


# the last columns in ``rank_metrics`` order
TABLE_ROW_COLUMNS = (*ROW_FIELDS, "written_ms", "latency_ms", *WINDOW_METRICS)


def rows_frame(rows: Sequence[tuple[Any, ...]]) -> pl.DataFrame:
    """``table_row`` tuples -> a frame of ``PREDICTION_SCHEMA`` (columns in its order)."""
    if not rows:
        return pl.DataFrame(schema=PREDICTION_SCHEMA)
    columns = dict(zip(TABLE_ROW_COLUMNS, map(list, zip(*rows, strict=True)), strict=True))
    schema = {name: PREDICTION_SCHEMA[name] for name in TABLE_ROW_COLUMNS}
    return pl.DataFrame(columns, schema=schema).select(list(PREDICTION_SCHEMA))


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
