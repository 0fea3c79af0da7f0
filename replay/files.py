"""Any interaction log in a file: CSV/TSV, Parquet or JSON lines, read lazily with polars.

The format is chosen by the file suffix. Columns are named by the caller (``--user-col`` ...).
User and item ids must be non-negative integers; event time is seconds (``s``), milliseconds
(``ms``) or an ISO-8601 datetime (``iso``; naive datetimes are taken as UTC). A row whose user,
item or time cannot be parsed is malformed: counted, the first few kept with their line numbers
(row numbers for Parquet), and left out of the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import polars as pl

from replay.datasets import InteractionLog, MalformedLines, order_events

TimeUnit = Literal["s", "ms", "iso"]
TIME_UNITS: tuple[str, ...] = ("s", "ms", "iso")

CSV_SUFFIXES = (".csv", ".tsv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


class LogFileError(ValueError):
    """The file cannot be read as an interaction log; the message names the problem."""


@dataclass(frozen=True)
class Columns:
    user: str = "user"
    item: str = "item"
    time: str = "time"
    rating: str | None = None


def file_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    raise LogFileError(
        f"cannot tell the format of {path.name!r} from its suffix {suffix!r}; use one of "
        f"{', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES + JSONL_SUFFIXES)}"
    )


def _raw_lines(path: Path) -> pl.LazyFrame:
    """One string column ``line`` per physical line (a separator byte that never occurs)."""
    return pl.scan_csv(
        path,
        has_header=False,
        separator="\x1f",
        quote_char=None,
        schema={"line": pl.String()},
    )


def _scan(path: Path, columns: Columns) -> tuple[pl.LazyFrame, str]:
    """Lazy frame with a ``_line`` number column and the needed columns; plus "line" or "row"."""
    wanted = [c for c in (columns.user, columns.item, columns.time, columns.rating) if c]
    kind = file_format(path)
    if not path.is_file():
        raise LogFileError(f"{path} does not exist or is not a file")
    if kind == "csv":
        separator = "\t" if path.suffix.lower() == ".tsv" else ","
        frame = pl.scan_csv(path, separator=separator, infer_schema=False)
        available = frame.collect_schema().names()
        offset, unit = 2, "line"  # line 1 is the header
    elif kind == "parquet":
        frame = pl.scan_parquet(path)
        available = frame.collect_schema().names()
        offset, unit = 1, "row"
    else:
        lines = _raw_lines(path)
        frame = lines.select(
            pl.col("line").alias("_jsonl_line"),
            *[pl.col("line").str.json_path_match(f"$.{name}").alias(name) for name in wanted],
        )
        available = wanted  # JSON keys are looked up per line; a missing key is a null
        offset, unit = 1, "line"
    missing = [name for name in wanted if name not in available]
    if missing:
        raise LogFileError(
            f"{path.name} has no column(s) {', '.join(map(repr, missing))}; its columns are "
            f"{', '.join(map(repr, available))} (choose them with --user-col/--item-col/"
            "--time-col/--rating-col)"
        )
    return frame.with_row_index("_line", offset=offset), unit


def _as_int(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if dtype == pl.String():
        return expr.str.strip_chars().cast(pl.Int64, strict=False)
    if dtype.is_float():
        return pl.when(expr == expr.floor()).then(expr).cast(pl.Int64, strict=False)
    return expr.cast(pl.Int64, strict=False)


def _as_float(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if dtype == pl.String():
        return expr.str.strip_chars().cast(pl.Float64, strict=False)
    return expr.cast(pl.Float64, strict=False)


def _as_seconds(expr: pl.Expr, dtype: pl.DataType, unit: TimeUnit) -> pl.Expr:
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            expr = expr.dt.replace_time_zone("UTC")
        return expr.dt.epoch("us").cast(pl.Float64) / 1e6
    if isinstance(dtype, pl.Date):
        return expr.cast(pl.Datetime("us")).dt.epoch("us").cast(pl.Float64) / 1e6
    if unit == "iso":
        parsed = (
            expr.cast(pl.String)
            .str.strip_chars()
            .str.to_datetime(strict=False, time_unit="us", time_zone="UTC")
        )
        return parsed.dt.epoch("us").cast(pl.Float64) / 1e6
    seconds = _as_float(expr, dtype)
    return seconds / 1000.0 if unit == "ms" else seconds


def _iso_seconds(text: str | None) -> float | None:
    """Slow path for ISO strings polars could not parse with one inferred format."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def load_file(
    path: Path,
    columns: Columns | None = None,
    time_unit: TimeUnit = "s",
    name: str | None = None,
    examples: int = 5,
) -> InteractionLog:
    """Read a log file into an ordered ``InteractionLog``; malformed rows counted and skipped."""
    columns = columns or Columns()
    if time_unit not in TIME_UNITS:
        raise LogFileError(f"time unit must be one of {', '.join(TIME_UNITS)}, got {time_unit!r}")
    frame, unit = _scan(path, columns)
    schema = frame.collect_schema()
    parsed = frame.select(
        pl.col("_line"),
        _as_int(pl.col(columns.user), schema[columns.user]).alias("user"),
        _as_int(pl.col(columns.item), schema[columns.item]).alias("item"),
        (
            _as_float(pl.col(columns.rating), schema[columns.rating])
            if columns.rating
            else pl.lit(None, dtype=pl.Float64)
        ).alias("rating"),
        _as_seconds(pl.col(columns.time), schema[columns.time], time_unit).alias("time"),
        (
            pl.col("_jsonl_line")
            if "_jsonl_line" in schema
            else pl.concat_str(
                [pl.col(c).cast(pl.String).fill_null("") for c in _shown(columns)],
                separator=",",
            )
        ).alias("_raw"),
        pl.col(columns.time).cast(pl.String).alias("_time_text"),
        (
            pl.col(columns.rating).cast(pl.String).str.strip_chars().fill_null("") != ""
            if columns.rating
            else pl.lit(False)
        ).alias("_has_rating"),
    ).collect()
    if time_unit == "iso" and parsed["time"].null_count():
        fallback = [
            t if t is not None else _iso_seconds(text)
            for t, text in zip(
                parsed["time"].to_list(), parsed["_time_text"].to_list(), strict=True
            )
        ]
        parsed = parsed.with_columns(pl.Series("time", fallback, dtype=pl.Float64))
    valid = (
        pl.col("user").is_not_null()
        & pl.col("item").is_not_null()
        & pl.col("time").is_not_null()
        & pl.col("time").is_finite()
        & (pl.col("user") >= 0)
        & (pl.col("item") >= 0)
        & (pl.col("rating").is_not_null() | ~pl.col("_has_rating"))  # a rating that is not a number
    )
    bad = parsed.filter(~valid)
    malformed = MalformedLines(
        count=bad.height,
        examples=[
            (int(n), f"{raw}") for n, raw in bad.select("_line", "_raw").head(examples).rows()
        ],
    )
    good = parsed.filter(valid).select("user", "item", "rating", "time")
    log_name = name or path.stem
    log = InteractionLog(name=log_name, events=order_events(good), malformed=malformed)
    if unit == "row":
        log.malformed = MalformedLines(
            count=malformed.count, examples=[(n, f"(row) {raw}") for n, raw in malformed.examples]
        )
    return log


def _shown(columns: Columns) -> list[str]:
    return [c for c in (columns.user, columns.item, columns.rating, columns.time) if c]
