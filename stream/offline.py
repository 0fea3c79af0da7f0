"""Offline prequential replay: the same pure step as the Faust agent, without Kafka.

Events go through ``prequential_batch`` in global event-id order, in micro-batches of
``batch_size``. The global view is fed with every event up front; its answers are as-of each
event, so that is equivalent to (and simpler than) feeding it as the stream advances. Tests
compare the result with the Kafka path event by event.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import polars as pl

from replay.datasets import InteractionLog
from replay.schema import Interaction
from stream.globalview import GlobalView
from stream.prequential import ScoringOptions, prequential_batch
from stream.records import Prediction
from stream.runners import Runner
from stream.userstate import UserSnapshot


def interactions(log: InteractionLog | pl.DataFrame) -> Iterator[Interaction]:
    frame = log.events if isinstance(log, InteractionLog) else log
    name = log.name if isinstance(log, InteractionLog) else "log"
    for row in frame.iter_rows(named=True):
        yield Interaction(
            event_id=int(row["event_id"]),
            user=int(row["user"]),
            item=int(row["item"]),
            rating=row["rating"],
            time=float(row["time"]),
            dataset=name,
            cohort=bool(row["cohort"]),
            shifted=bool(row["shifted"]),
        )


def build_view(
    events: Sequence[Interaction], refresh_s: float, window_s: float | None
) -> GlobalView:
    view = GlobalView(refresh_s=refresh_s, window_s=window_s)
    view.set_partitions(1)
    view.observe_many(
        0, [e.event_id for e in events], [e.item for e in events], [e.time for e in events]
    )
    view.end_partition(0)
    return view


def evaluate_offline(
    events: Sequence[Interaction],
    runners: Sequence[Runner],
    options: ScoringOptions = ScoringOptions(),
    batch_size: int = 256,
    refresh_s: float = 86_400.0,
    window_s: float | None = None,
) -> tuple[list[Prediction], dict[int, UserSnapshot]]:
    """-> (predictions in event order, every user's final snapshot)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    view = build_view(events, refresh_s, window_s)
    snapshots: dict[int, UserSnapshot] = {}
    predictions: list[Prediction] = []
    for start in range(0, len(events), batch_size):
        batch = events[start : start + batch_size]
        touched = {e.user: snapshots[e.user] for e in batch if e.user in snapshots}
        result = prequential_batch(batch, touched, runners, view, options)
        snapshots.update(result.snapshots)
        predictions += result.predictions
    return predictions, snapshots


def predictions_frame(predictions: Sequence[Prediction]) -> pl.DataFrame:
    """Per-event rows with the sink's column names (``stream.aggregate.PREDICTION_SCHEMA``)."""
    from stream.aggregate import prediction_rows

    return prediction_rows(predictions)
