"""Choose the part of a log to replay: ``--start``/``--end`` (event time), ``--limit N``.

Selection defines the stream: the selected events get event ids 0..N-1 again, in the same global
order. ``--from-event`` is not a selection but a resume point inside that stream (ids are kept),
so a resumed replay sends exactly the records the interrupted one did not.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timezone

import polars as pl

from replay.datasets import InteractionLog


def parse_when(text: str) -> float:
    """``2000-12-31`` or an ISO datetime (naive = UTC) -> epoch seconds."""
    cleaned = text.strip()
    try:
        if len(cleaned) == 10:
            day = date.fromisoformat(cleaned)
            moment = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
        else:
            moment = datetime.fromisoformat(cleaned.replace("Z", "+00:00"))
    except ValueError as error:
        raise ValueError(
            f"{text!r} is not a date; use YYYY-MM-DD or an ISO datetime like 2000-12-31T12:00:00"
        ) from error
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def select_events(
    log: InteractionLog,
    start: float | None = None,
    end: float | None = None,
    limit: int | None = None,
) -> InteractionLog:
    """Events with ``start <= time < end``, at most the first ``limit``; event ids renumbered."""
    if start is None and end is None and limit is None:
        return log
    events = log.events
    if start is not None:
        events = events.filter(pl.col("time") >= start)
    if end is not None:
        events = events.filter(pl.col("time") < end)
    if limit is not None:
        events = events.head(limit)
    events = events.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("event_id"))
    return replace(log, events=events)
