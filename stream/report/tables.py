"""The report's numbers, computed with polars from the run's Parquet files.

Every function takes the per-event predictions as a ``LazyFrame`` (``PREDICTION_SCHEMA``
columns) and collects only the columns it needs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

from stream.aggregate import WINDOW_METRICS
from stream.report.files import ReportError
from stream.report.measures import recovery, sliding_signed_mcnemar

Z_95 = 1.96
SUMMARY_METRICS = {"hr@10": "hr@10", "ndcg@10": "ndcg@10", "mrr": "rr"}  # label -> column
FROZEN_SUFFIX = ":frozen"


def frozen_pairs(models: list[str]) -> list[tuple[str, str]]:
    """(adaptive, frozen twin) for every ``NAME:frozen`` whose ``NAME`` is also in the run."""
    present = set(models)
    return [
        (m.removesuffix(FROZEN_SUFFIX), m)
        for m in sorted(models)
        if m.endswith(FROZEN_SUFFIX) and m.removesuffix(FROZEN_SUFFIX) in present
    ]


def _processing_stamps() -> tuple[pl.Expr, pl.Expr]:
    """(start, done) wall-clock ms of each row; predicted_ms stands in when nothing was written."""
    done = pl.coalesce("written_ms", "predicted_ms")
    return pl.coalesce("produced_ms", done), done


ALL_SCOPE = "all events"
AFTER_CUTOFF = "after pretraining cutoff"


def summary_table(predictions: pl.LazyFrame, pretrain_cutoff: float | None = None) -> pl.DataFrame:
    """Per model and scope: micro and macro means with 95% CI half-widths, events/s, latency
    p50/p99. Scopes: all events, and with a pretraining cutoff also the events at or after it
    (earlier events trained the checkpoints, so they are in-sample)."""
    tables = [_summary(predictions).with_columns(pl.lit(ALL_SCOPE).alias("scope"))]
    if pretrain_cutoff is not None:
        later = predictions.filter(pl.col("time") >= pretrain_cutoff)
        tables.append(_summary(later).with_columns(pl.lit(AFTER_CUTOFF).alias("scope")))
    summary = pl.concat(tables)
    return summary.select("model", "scope", pl.exclude("model", "scope")).sort(
        "model", "scope", descending=[False, True]
    )


def _summary(predictions: pl.LazyFrame) -> pl.DataFrame:
    start, done = _processing_stamps()
    micro = predictions.group_by("model").agg(
        pl.len().cast(pl.Int64).alias("n_events"),
        pl.col("user").n_unique().cast(pl.Int64).alias("n_users"),
        *[
            pl.col(c).cast(pl.Float64).mean().alias(f"micro_{m}")
            for m, c in SUMMARY_METRICS.items()
        ],
        *[
            (Z_95 * pl.col(c).cast(pl.Float64).std() / pl.len().sqrt()).alias(f"micro_{m}_ci")
            for m, c in SUMMARY_METRICS.items()
        ],
        ((done.max() - start.min()) / 1000.0).alias("_span_s"),
        pl.col("latency_ms").quantile(0.5, "linear").alias("latency_p50_ms"),
        pl.col("latency_ms").quantile(0.99, "linear").alias("latency_p99_ms"),
    )
    per_user = predictions.group_by("model", "user").agg(
        *[pl.col(c).cast(pl.Float64).mean().alias(m) for m, c in SUMMARY_METRICS.items()]
    )
    macro = per_user.group_by("model").agg(
        *[pl.col(m).mean().alias(f"macro_{m}") for m in SUMMARY_METRICS],
        *[
            (Z_95 * pl.col(m).std() / pl.len().sqrt()).alias(f"macro_{m}_ci")
            for m in SUMMARY_METRICS
        ],
    )
    throughput = pl.when(pl.col("_span_s") > 0).then(pl.col("n_events") / pl.col("_span_s"))
    return (
        micro.join(macro, on="model")
        .with_columns(throughput.alias("events_per_s"))
        .select(
            "model",
            "n_events",
            "n_users",
            *[
                f"{kind}_{m}{ci}"
                for m in SUMMARY_METRICS
                for kind in ("micro", "macro")
                for ci in ("", "_ci")
            ],
            "events_per_s",
            "latency_p50_ms",
            "latency_p99_ms",
        )
        .sort("model")
        .collect()
    )


def flagged_windows(
    predictions: pl.LazyFrame, window_s: float, k: float = 3.0, min_events: int = 20
) -> pl.DataFrame:
    """Event-time windows where a model's mean shift score is significantly above its run mean.

    z = (window mean - run mean) / (run sd / sqrt(n)), over the events with a shift score;
    flagged when z > k and n >= ``min_events``. Each model is compared with itself, since shift
    scores of different models have different scales. The z treats events as independent.
    """
    scored = predictions.filter(pl.col("shift_score").is_not_null()).with_columns(
        ((pl.col("time") / window_s).floor() * window_s).alias("window_start")
    )
    overall = scored.group_by("model").agg(
        pl.col("shift_score").mean().alias("_mu"), pl.col("shift_score").std().alias("_sd")
    )
    z = (pl.col("shift_score_mean") - pl.col("_mu")) * pl.col("n").sqrt() / pl.col("_sd")
    return (
        scored.group_by("model", "window_start")
        .agg(pl.col("shift_score").mean().alias("shift_score_mean"), pl.len().alias("n"))
        .join(overall, on="model")
        .with_columns(z.alias("z"), (pl.col("window_start") + window_s).alias("window_end"))
        .filter((pl.col("n") >= min_events) & (pl.col("_sd") > 0) & (pl.col("z") > k))
        .select("model", "window_start", "window_end", "n", "shift_score_mean", "z")
        .sort("model", "window_start")
        .collect()
    )


def paired_hits(
    predictions: pl.LazyFrame, adaptive: str, frozen: str, users: list[int] | None = None
) -> pl.DataFrame:
    """event_id, time, hr@10 of both models (a, b) on the events both scored, in event-id
    order; only ``users``' events when given."""
    if users is not None:
        predictions = predictions.filter(pl.col("user").is_in(users))

    def hits(model: str, name: str) -> pl.LazyFrame:
        return predictions.filter(pl.col("model") == model).select(
            "event_id", "time", pl.col("hr@10").cast(pl.Int8).alias(name)
        )

    return (
        hits(adaptive, "a")
        .join(hits(frozen, "b").drop("time"), on="event_id", how="inner")
        .sort("event_id")
        .collect()
    )


ALL_EVENTS = "all events"
COHORT_EVENTS = "shifted cohort's events"


def mcnemar_series(
    predictions: pl.LazyFrame,
    pairs: list[tuple[str, str]],
    n: int,
    cohort: list[int] | None = None,
    max_points: int = 4000,
) -> pl.DataFrame:
    """Sliding-window signed McNemar (adaptive vs frozen, hits@10) over all events and, with a
    ``cohort``, over the cohort's events alone; thinned to ``max_points`` per line."""
    subsets: list[tuple[str, list[int] | None]] = [(ALL_EVENTS, None)]
    if cohort:
        subsets.append((COHORT_EVENTS, cohort))
    frames = []
    for adaptive, frozen in pairs:
        for subset, users in subsets:
            paired = paired_hits(predictions, adaptive, frozen, users)
            if paired.height == 0:
                continue
            statistic = sliding_signed_mcnemar(paired["a"].to_numpy(), paired["b"].to_numpy(), n)
            stride = max(1, math.ceil(paired.height / max_points))
            keep = np.unique(np.r_[np.arange(0, paired.height, stride), paired.height - 1])
            frames.append(
                pl.DataFrame(
                    {
                        "model": adaptive,
                        "frozen": frozen,
                        "subset": subset,
                        "event_id": paired["event_id"].to_numpy()[keep],
                        "time": paired["time"].to_numpy()[keep],
                        "statistic": statistic[keep],
                    }
                )
            )
    if not frames:
        return pl.DataFrame(
            schema={
                "model": pl.String,
                "frozen": pl.String,
                "subset": pl.String,
                "event_id": pl.Int64,
                "time": pl.Float64,
                "statistic": pl.Float64,
            }
        )
    return pl.concat(frames)


def throughput_series(predictions: pl.LazyFrame, bins: int = 40) -> pl.DataFrame:
    """Per model and processing-time bin: events/s and latency p50/p99 (bin by done time)."""
    start, done = _processing_stamps()
    stamped = (
        predictions.select("model", "latency_ms", start.alias("start"), done.alias("done"))
        .filter(pl.col("done").is_not_null())
        .collect()
    )
    if stamped.height == 0:
        return pl.DataFrame(
            schema={
                "model": pl.String,
                "elapsed_s": pl.Float64,
                "events_per_s": pl.Float64,
                "latency_p50_ms": pl.Float64,
                "latency_p99_ms": pl.Float64,
            }
        )
    origin, first, last = stamped.select(
        pl.col("start").min(), pl.col("done").min().alias("first"), pl.col("done").max()
    ).row(0)
    # bins start at the first prediction written; elapsed time counts from the first produced
    active_s = (last - first) / 1000.0
    bin_s = _nice_step(max(active_s, 1e-3) / bins)
    offset_s = (first - origin) / 1000.0
    n_bins = math.floor(active_s / bin_s) + 1
    grid = pl.DataFrame({"model": stamped["model"].unique().sort()}).join(
        pl.DataFrame({"bin": pl.Series(range(n_bins), dtype=pl.Int64)}), how="cross"
    )
    per_bin = (
        stamped.with_columns(
            ((pl.col("done") - first) / 1000.0 // bin_s).cast(pl.Int64).alias("bin")
        )
        .group_by("model", "bin")
        .agg(
            pl.len().alias("_n"),
            pl.col("latency_ms").quantile(0.5, "linear").alias("latency_p50_ms"),
            pl.col("latency_ms").quantile(0.99, "linear").alias("latency_p99_ms"),
        )
    )
    return (
        grid.join(per_bin, on=["model", "bin"], how="left")
        .with_columns(pl.col("_n").fill_null(0))
        # the last bin is cut short by the end of the run: rate it over the time it covers
        .with_columns(
            pl.min_horizontal(pl.lit(bin_s), active_s - pl.col("bin") * bin_s).alias("_d")
        )
        .filter(pl.col("_d") >= 0.25 * bin_s)
        .with_columns(
            (pl.col("_n") / pl.col("_d")).alias("events_per_s"),
            (offset_s + pl.col("bin") * bin_s + pl.col("_d") / 2).alias("elapsed_s"),
        )
        .select("model", "elapsed_s", "events_per_s", "latency_p50_ms", "latency_p99_ms")
        .sort("model", "elapsed_s")
    )


def _nice_step(raw: float) -> float:
    """The smallest of 1, 2, 5 x 10^k at or above ``raw``."""
    exponent = math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 5.0, 10.0):
        if factor * 10.0**exponent >= raw:
            return factor * 10.0**exponent
    return 10.0 ** (exponent + 1)


@dataclass(frozen=True)
class RecoverySettings:
    metric: str = "hr@10"  # per-event column of PREDICTION_SCHEMA
    window_s: float = 86_400.0  # tumbling windows aligned to the shift time
    pre_span_s: float = 7 * 86_400.0  # pre-level over [shift - pre_span, shift)
    horizon_s: float = 28 * 86_400.0  # post-shift points considered
    epsilon: float = 0.1  # "back within epsilon of the pre-level" ...
    relative: bool = True  # ... as a share of the pre-level (False: in metric units)
    min_events: int = 20  # windows with fewer events are left out (too noisy)
    hold: int = 3  # consecutive windows that must be back within epsilon (noise guard)


def metric_column(name: str) -> str:
    """The per-event column behind a metric name ("mrr" is the mean of column "rr")."""
    column = {"mrr": "rr"}.get(name, name)
    if column not in WINDOW_METRICS:
        raise ReportError(f"unknown metric {name!r}; use mrr or one of {', '.join(WINDOW_METRICS)}")
    return column


def group_windows(
    predictions: pl.LazyFrame,
    shift_time: float,
    cohort: list[int],
    shifted_users: list[int],
    settings: RecoverySettings,
) -> pl.DataFrame:
    """Per model, group and shift-aligned window: mean metric and event count. Groups: the
    ``cohort`` (shifted at ``shift_time``) and the stable users (in no ground-truth row)."""
    group = (
        pl.when(pl.col("user").is_in(cohort))
        .then(pl.lit("shifted cohort"))
        .when(~pl.col("user").is_in(shifted_users))
        .then(pl.lit("stable users"))
    )
    lo = shift_time - settings.pre_span_s
    hi = shift_time + settings.horizon_s
    window = ((pl.col("time") - shift_time) / settings.window_s).floor()
    return (
        predictions.filter((pl.col("time") >= lo) & (pl.col("time") < hi))
        .with_columns(
            group.alias("group"), (window * settings.window_s + shift_time).alias("window_start")
        )
        .filter(pl.col("group").is_not_null())
        .group_by("model", "group", "window_start")
        .agg(
            pl.col(metric_column(settings.metric)).cast(pl.Float64).mean().alias("value"),
            pl.len().alias("n"),
        )
        .filter(pl.col("n") >= settings.min_events)
        .sort("model", "group", "window_start")
        .collect()
    )


def recovery_table(
    predictions: pl.LazyFrame, truth: pl.DataFrame, settings: RecoverySettings
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(one row per shift time x model x group of recovery measures, the windows behind it)."""
    rows: list[dict[str, object]] = []
    series = []
    shifts = (
        truth.group_by("shift_time")
        .agg(pl.col("user"), pl.col("kind").unique().sort().str.join("+"))
        .sort("shift_time")
    )
    shifted_users = truth["user"].unique().to_list()
    for shift_time, users, kind in shifts.iter_rows():
        windows = group_windows(predictions, shift_time, users, shifted_users, settings)
        series.append(windows.with_columns(pl.lit(shift_time).alias("shift_time")))
        for (model, group), part in windows.group_by("model", "group", maintain_order=True):
            measured = recovery(
                part["window_start"].to_numpy(),
                part["value"].to_numpy(),
                shift_time,
                settings.pre_span_s,
                settings.horizon_s,
                settings.epsilon,
                settings.window_s,
                counts=part["n"].to_numpy(),
                hold=settings.hold,
                relative=settings.relative,
            )
            if measured is None:
                continue
            rows.append({"shift_time": shift_time, "kind": kind, "model": model, "group": group})
            rows[-1].update(asdict(measured))
    table = pl.DataFrame(rows) if rows else pl.DataFrame()
    return table, (pl.concat(series) if series else pl.DataFrame())


def shift_score_windows(
    predictions: pl.LazyFrame, cohort: list[int], window_s: float, origin: float
) -> pl.DataFrame:
    """Mean shift score per model, group (shifted cohort / stable users) and event-time window."""
    group = pl.when(pl.col("user").is_in(cohort)).then(pl.lit("shifted cohort"))
    window = ((pl.col("time") - origin) / window_s).floor() * window_s + origin
    return (
        predictions.filter(pl.col("shift_score").is_not_null())
        .with_columns(
            group.otherwise(pl.lit("stable users")).alias("group"), window.alias("window_start")
        )
        .group_by("model", "group", "window_start")
        .agg(pl.col("shift_score").mean().alias("shift_score"), pl.len().alias("n"))
        .with_columns((pl.col("window_start") + window_s).alias("window_end"))
        .sort("model", "group", "window_start")
        .collect()
    )
