"""The Parquet sink: ``predictions`` topic -> per-event and windowed Parquet files.

Reads every partition of the predictions topic (group-less kafka-python consumer, from the
start), splits each record (one per event) into its per-model predictions, drops duplicates by
(event id, model) (at-least-once delivery and recomputation after a crash both produce them),
and writes, each atomically (temporary file, then rename):

- ``predictions.parquet``: one row per (event, model), ``stream.aggregate.PREDICTION_SCHEMA``;
- ``windows.parquet``: one row per (model, event-time tumbling window) with cumulative and
  event-time fading columns, ``stream.aggregate.WINDOW_SCHEMA``;
- ``sink.json``: counts, duplicates, malformed records, end markers, completeness.

It is finished when, for every model, it has the end marker of every input partition and as
many distinct events as the markers announce (``total_events``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from stream.aggregate import rows_frame, table_row, window_table
from stream.records import (
    ROW_EVENT_ID,
    ROW_MODEL,
    MalformedPrediction,
    Prediction,
    PredictionEnd,
    decode_rows,
    row_of,
)

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.parquet"
WINDOWS_FILE = "windows.parquet"
SINK_SUMMARY_FILE = "sink.json"


class SinkIncomplete(RuntimeError):
    """The stream did not complete within the time allowed."""


def write_parquet_atomic(frame: pl.DataFrame, path: Path) -> None:
    """Write with pyarrow to a temporary name in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(frame.to_arrow(), temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json_atomic(document: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(document, indent=2, default=str) + "\n")
    os.replace(temporary, path)


@dataclass
class SinkState:
    """Deduplicated per-event rows and the end markers seen; no I/O.

    Rows arrive as tuples (``table_row``) and become a polars chunk when the frame is asked for,
    so a flush converts only the rows that came since the last one, and the table lives in
    typed columns rather than Python objects."""

    expected_models: set[str] | None = None
    seen: dict[str, set[int]] = field(default_factory=dict)  # event ids per model
    ends: dict[tuple[str, int], PredictionEnd] = field(default_factory=dict)
    duplicates: int = 0
    malformed: int = 0
    pending: list[tuple[Any, ...]] = field(default_factory=list)  # rows not in a chunk yet
    chunks: list[pl.DataFrame] = field(default_factory=list)

    def add_value(self, value: bytes | None, written_ms: float | None) -> None:
        try:
            decoded = decode_rows(value)
        except MalformedPrediction as error:
            self.malformed += 1
            log.warning("malformed prediction record: %s", error)
            return
        if isinstance(decoded, PredictionEnd):
            self.add(decoded)
            return
        for row in decoded:
            self.add_row(row, written_ms)

    def add(self, record: Prediction | PredictionEnd, written_ms: float | None = None) -> None:
        if isinstance(record, PredictionEnd):
            self.ends[(record.model, record.partition)] = record
            return
        self.add_row(row_of(record), written_ms)

    def add_row(self, row: tuple[Any, ...], written_ms: float | None) -> None:
        """One decoded row (``ROW_FIELDS``), unless its (event, model) was seen before."""
        seen = self.seen.setdefault(row[ROW_MODEL], set())
        if row[ROW_EVENT_ID] in seen:
            self.duplicates += 1
            return
        seen.add(row[ROW_EVENT_ID])
        self.pending.append(table_row(row, written_ms))

    @property
    def per_model(self) -> dict[str, int]:
        return {model: len(events) for model, events in self.seen.items()}

    def models(self) -> set[str]:
        if self.expected_models is not None:
            return set(self.expected_models)
        return {model for model, _ in self.ends} | set(self.seen)

    def complete(self) -> bool:
        models = self.models()
        if not models:
            return False
        for model in models:
            ends = [end for (m, _), end in self.ends.items() if m == model]
            if not ends:
                return False
            if len({end.partition for end in ends}) < ends[0].partitions:
                return False
            if len(self.seen.get(model, ())) < ends[0].total_events:
                return False
        return True

    def frame(self) -> pl.DataFrame:
        if self.pending:
            self.chunks.append(rows_frame(self.pending))
            self.pending = []
        if len(self.chunks) > 1:
            self.chunks = [pl.concat(self.chunks)]
        table = self.chunks[0] if self.chunks else rows_frame([])
        return table.sort(["model", "event_id"])

    def summary(self) -> dict[str, Any]:
        announced = {m: e.total_events for (m, _), e in self.ends.items()}
        return {
            "complete": self.complete(),
            "events_per_model": dict(sorted(self.per_model.items())),
            "announced_events": dict(sorted(announced.items())),
            "end_markers": sorted(f"{m}:{p}" for m, p in self.ends),
            "duplicates_dropped": self.duplicates,
            "malformed_records": self.malformed,
        }


@dataclass
class SinkConfig:
    out_dir: Path
    window_s: float = 7 * 86_400.0
    half_life_s: float = 7 * 86_400.0
    flush_s: float = 10.0


def write_outputs(state: SinkState, config: SinkConfig) -> pl.DataFrame:
    frame = state.frame()
    write_parquet_atomic(frame, config.out_dir / PREDICTIONS_FILE)
    windows = window_table(frame, size_s=config.window_s, half_life_s=config.half_life_s)
    write_parquet_atomic(windows, config.out_dir / WINDOWS_FILE)
    write_json_atomic(state.summary(), config.out_dir / SINK_SUMMARY_FILE)
    return windows


class FlushSchedule:
    """When to rewrite the output files while the stream runs.

    Each rewrite covers the whole table, so its cost grows with the run (3.8 s at 1.8 M rows):
    after a rewrite the next one waits ``every_s``, or ``1 / max_share`` times as long as the
    rewrite took if that is longer, so rewrites take at most ``max_share`` of the sink's time
    however long the run. The clock is injected."""

    def __init__(self, every_s: float, clock: Callable[[], float], max_share: float = 0.1) -> None:
        self.every_s = every_s
        self.clock = clock
        self.max_share = max_share
        self.next_at = clock() + every_s

    def maybe_write(self, write: Callable[[], object]) -> bool:
        """Call ``write`` if a rewrite is due; -> whether it was."""
        started = self.clock()
        if started < self.next_at:
            return False
        write()
        finished = self.clock()
        self.next_at = finished + max(self.every_s, (finished - started) / self.max_share)
        return True


class KafkaSink:
    """Consume ``predictions`` until complete (or timeout), flushing Parquet as it goes."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        config: SinkConfig,
        expected_models: Iterable[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.config = config
        self.state = SinkState(set(expected_models) if expected_models is not None else None)
        self.clock = clock
        self.stop_requested = threading.Event()
        self.finished = threading.Event()

    def run(self, timeout_s: float, topic_timeout_s: float = 120.0) -> SinkState:
        """Return once complete; raise ``SinkIncomplete`` after ``timeout_s`` or a stop request.

        The files are written in both cases (marked incomplete in ``sink.json``).
        """
        from kafka import KafkaConsumer, TopicPartition

        deadline = self.clock() + timeout_s
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            max_poll_records=10_000,
            fetch_max_bytes=32 * 1024 * 1024,
        )
        try:
            partitions = consumer.partitions_for_topic(self.topic)
            topic_deadline = self.clock() + min(timeout_s, topic_timeout_s)
            while not partitions:
                if self.clock() > topic_deadline or self.stop_requested.is_set():
                    raise SinkIncomplete(f"topic {self.topic!r} did not appear")
                time.sleep(0.2)
                consumer.topics(exclude_internal_topics=True)
                partitions = consumer.partitions_for_topic(self.topic)
            assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(assigned)
            consumer.seek_to_beginning(*assigned)
            schedule = FlushSchedule(self.config.flush_s, self.clock)
            while not self.state.complete():
                if self.clock() > deadline or self.stop_requested.is_set():
                    write_outputs(self.state, self.config)
                    raise SinkIncomplete(
                        f"sink incomplete after {timeout_s:.0f} s: {self.state.summary()}"
                    )
                for messages in consumer.poll(timeout_ms=200).values():
                    for message in messages:
                        self.state.add_value(message.value, float(message.timestamp))
                schedule.maybe_write(lambda: write_outputs(self.state, self.config))
            write_outputs(self.state, self.config)
            return self.state
        finally:
            consumer.close()
            self.finished.set()
