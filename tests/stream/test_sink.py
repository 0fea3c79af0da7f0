"""The sink without Kafka: de-duplication, completion rule, atomic Parquet written with pyarrow
and read back with polars."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from stream.aggregate import PREDICTION_SCHEMA, TABLE_ROW_COLUMNS, WINDOW_SCHEMA, prediction_rows
from stream.records import (
    MalformedPrediction,
    Prediction,
    PredictionEnd,
    decode_predictions,
    encode_events,
    encode_predictions,
)
from stream.sink import (
    PREDICTIONS_FILE,
    WINDOWS_FILE,
    FlushSchedule,
    SinkConfig,
    SinkState,
    write_outputs,
    write_parquet_atomic,
)


def _prediction(event_id: int, model: str, rank: int | None = 3) -> Prediction:
    return Prediction(
        event_id=event_id, user=event_id % 3, item=7, time=1000.0 + 60 * event_id, model=model,
        rank=rank, n_candidates=10, produced_ms=5.0,
    )  # fmt: skip


def test_one_record_per_event_carries_every_model_and_decodes_back() -> None:
    predictions = [
        _prediction(0, "pop"),
        replace(_prediction(0, "sasrec", rank=None), oov_item=True, shift_score=0.25),
        _prediction(0, "ttt4rec", rank=12),
        _prediction(1, "pop", rank=1),
    ]
    records = encode_events(predictions)
    assert [key for key, _ in records] == [b"0", b"1"]
    assert decode_predictions(records[0][1]) == predictions[:3]
    assert decode_predictions(records[1][1]) == predictions[3:]
    payload = json.loads(records[0][1])
    assert [entry["m"] for entry in payload["ms"]] == ["pop", "sasrec", "ttt4rec"]
    assert payload["ms"][0]["h5"] == 1 and payload["ms"][1]["h20"] == 0  # metrics travel too


def test_the_rows_fill_the_prediction_table_exactly() -> None:
    assert sorted(TABLE_ROW_COLUMNS) == sorted(PREDICTION_SCHEMA)
    frame = prediction_rows([_prediction(0, "pop"), _prediction(1, "pop", rank=None)], [9.0, None])
    assert frame.schema == pl.Schema(PREDICTION_SCHEMA)
    assert frame["latency_ms"].to_list() == [4.0, None]
    assert frame["rr"].to_list() == [1 / 3, 0.0]


def test_event_fields_must_agree_within_a_record() -> None:
    with pytest.raises(ValueError, match="different events"):
        encode_predictions([_prediction(0, "pop"), replace(_prediction(0, "a"), n_candidates=3)])
    with pytest.raises(ValueError, match="different events"):
        encode_predictions([_prediction(0, "pop"), _prediction(1, "pop")])


@pytest.mark.parametrize(
    "value",
    [
        b'{"v":1,"k":"pred","id":0,"u":0,"i":7,"t":1.0,"m":"pop","r":1,"n":3}',  # version 1
        b'{"v":2,"k":"pred","id":0,"u":0,"i":7,"t":1.0,"n":3,"ms":[]}',
        b'{"v":2,"k":"pred","id":0,"u":0,"i":7,"t":1.0,"n":3,"ms":[7]}',
        b'{"v":2,"k":"pred","id":0,"u":0,"t":1.0,"n":3,"ms":[{"m":"pop","r":1}]}',
        # mistyped fields would otherwise break the Parquet columns at the next flush
        b'{"v":2,"k":"pred","id":0,"u":"0","i":7,"t":1.0,"n":3,"ms":[{"m":"pop","r":1}]}',
        b'{"v":2,"k":"pred","id":0,"u":0,"i":7,"t":1.0,"n":3,"ms":[{"m":"pop","r":1.5}]}',
        b'{"v":2,"k":"pred","id":0,"u":0,"i":7,"t":1.0,"n":3,"cu":1,"ms":[{"m":"pop","r":1}]}',
        b'{"v":2,"k":"pred","id":0,"u":0,"i":7,"t":1.0,"n":3,"pt":"x","ms":[{"m":"pop","r":1}]}',
        b'{"v":2,"k":"eos","model":"pop","partition":"0","partitions":1,"total_events":1,'
        b'"partition_events":1}',
    ],
)
def test_malformed_prediction_records_are_rejected(value: bytes) -> None:
    with pytest.raises(MalformedPrediction):
        decode_predictions(value)


def test_duplicates_are_dropped_by_event_and_model(tmp_path: Path) -> None:
    state = SinkState()
    for event_id in range(4):
        both = [_prediction(event_id, "pop"), _prediction(event_id, "sasrec")]
        state.add_value(encode_predictions(both), written_ms=9.0)
    # redelivery: the same records again (possibly recomputed), and garbage
    for event_id in (1, 3):
        state.add_value(encode_predictions([_prediction(event_id, "sasrec", rank=99)]), 50.0)
    state.add_value(b"{broken", 1.0)
    state.add_value(b'{"v":2,"k":"pred","id":9,"u":"x","i":7,"t":1.0,"n":3,"ms":[{"m":"pop"}]}', 1)
    assert state.duplicates == 2 and state.malformed == 2
    frame = state.frame()
    assert frame.height == 8
    assert frame.filter(pl.col("model") == "sasrec")["rank"].to_list() == [3, 3, 3, 3]
    assert frame["latency_ms"].to_list() == [4.0] * 8


def test_complete_needs_every_partition_marker_and_every_announced_event() -> None:
    state = SinkState(expected_models={"pop"})
    assert not state.complete()
    state.add(_prediction(0, "pop"))
    state.add(PredictionEnd("pop", partition=0, partitions=2, total_events=2, partition_events=1))
    assert not state.complete()  # partition 1's marker is missing
    state.add(PredictionEnd("pop", partition=1, partitions=2, total_events=2, partition_events=1))
    assert not state.complete()  # one announced event is missing
    state.add(_prediction(1, "pop"))
    assert state.complete()


def test_outputs_round_trip_through_parquet(tmp_path: Path) -> None:
    state = SinkState()
    predictions = [_prediction(i, m, rank=None if i == 2 else i + 1) for i in range(6)
                   for m in ("a", "b")]  # fmt: skip
    for p in predictions:
        state.add(p, written_ms=6.0)
    windows = write_outputs(state, SinkConfig(tmp_path, window_s=120.0, half_life_s=300.0))
    read_back = pl.read_parquet(tmp_path / PREDICTIONS_FILE)
    expected = prediction_rows(predictions, [6.0] * len(predictions)).sort(["model", "event_id"])
    assert_frame_equal(read_back, expected)
    assert dict(read_back.schema) == PREDICTION_SCHEMA
    windows_back = pl.read_parquet(tmp_path / WINDOWS_FILE)
    assert_frame_equal(windows_back, windows)
    assert dict(windows_back.schema) == WINDOW_SCHEMA
    assert windows_back.group_by("model").agg(pl.col("n_events").sum())["n_events"].to_list() == [
        6,
        6,
    ]


def test_atomic_write_never_leaves_a_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.parquet"
    first = pl.DataFrame({"x": [1, 2, 3]})
    write_parquet_atomic(first, target)

    def failing_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_parquet_atomic(pl.DataFrame({"x": [9]}), target)
    monkeypatch.undo()
    assert_frame_equal(pl.read_parquet(target), first)  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]  # no temporary left


def test_a_prediction_row_puts_every_field_in_its_own_column() -> None:
    """Field by field, with the six flags given distinct 3-bit codes over three rows, so that
    any two columns swapped in the row builder differ somewhere."""
    flags = ["cold_user", "cold_item", "seen_item", "oov_item", "cohort", "shifted"]

    def flag_values(row: int) -> dict[str, Any]:
        return {flag: bool((code >> row) & 1) for code, flag in enumerate(flags, start=1)}

    predictions = [
        Prediction(
            event_id=10 + row,
            user=20 + row,
            item=30 + row,
            time=40.5 + row,
            model=f"m{row}",
            rank=3,
            n_candidates=50 + row,
            shift_score=0.25 + row,
            produced_ms=100.0 + row,
            predicted_ms=150.0 + row,
            batch_size=64 + row,
            **flag_values(row),
        )  # fmt: skip
        for row in range(3)
    ]
    rows = prediction_rows(predictions, [175.0, None, 177.0]).rows(named=True)
    for row, (p, got) in enumerate(zip(predictions, rows, strict=True)):
        written = [175.0, None, 177.0][row]
        expected = {
            "model": p.model, "event_id": p.event_id, "user": p.user, "item": p.item,
            "time": p.time, "rank": 3, "n_candidates": p.n_candidates,
            "hr@1": 0, "hr@5": 1, "hr@10": 1, "hr@20": 1, "ndcg@10": 0.5, "ndcg@20": 0.5,
            "rr": 1 / 3, "shift_score": p.shift_score, "batch_size": p.batch_size,
            "produced_ms": p.produced_ms, "predicted_ms": p.predicted_ms, "written_ms": written,
            "latency_ms": None if written is None else written - 100.0 - row,
            **{flag: getattr(p, flag) for flag in flags},
        }  # fmt: skip
        assert got == pytest.approx(expected)


def test_rewrites_wait_longer_as_they_grow_slower() -> None:
    now = [0.0]
    schedule = FlushSchedule(every_s=10.0, clock=lambda: now[0], max_share=0.1)
    durations = iter([0.5, 5.0, 0.2])
    written_at: list[float] = []

    def write() -> None:  # a rewrite that takes the next duration on the clock
        written_at.append(now[0])
        now[0] += next(durations)

    for second in range(80):
        now[0] = max(now[0], float(second))
        schedule.maybe_write(write)
    # 10 s after the start; 10 s after a 0.5 s rewrite; 50 s after a 5 s one (a tenth of the time)
    assert written_at == [10.0, 21.0, 76.0]
