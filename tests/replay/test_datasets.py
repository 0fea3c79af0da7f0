"""Loading logs: the real ML-1M subset, ordering and tie-breaking, malformed lines, log files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from replay.datasets import load_ml1m_dir, order_events
from replay.files import Columns, LogFileError, load_file
from replay.run import ML1M, LogFile, MalformedInput, load
from replay.select import parse_when, select_events


def test_real_subset_counts_and_global_order(ml1m_subset_dir: Path) -> None:
    log = load_ml1m_dir(ml1m_subset_dir)
    events = log.events
    assert events.height == 487_650
    assert events["user"].n_unique() == 2_999
    assert events["item"].n_unique() == 3_615
    assert log.malformed.count == 0
    assert events["event_id"].to_list() == list(range(events.height))
    assert events["time"].min() == 970620734 and events["time"].max() == 1046388675
    keys = events.select("time", "user").to_numpy()
    # (time, user) never decreases along the event ids
    assert bool(
        np.all(
            (np.diff(keys[:, 0]) > 0) | ((np.diff(keys[:, 0]) == 0) & (np.diff(keys[:, 1]) >= 0))
        )
    )
    assert log.items is not None and log.items.height == 3_883
    assert "Toy Story (1995)" in log.items["title"].to_list()  # Latin-1 titles decoded
    assert log.users is not None and log.users.height == 6_040  # users.dat lists every user
    assert log.users.row(0) == (1, "F", 1, 10, "48067")


def test_malformed_metadata_lines_are_counted_with_their_file(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text("1::10::5::100\n2::11::4::101\n")
    (tmp_path / "movies.dat").write_bytes(
        "10::Caf\xe9 (1999)::Drama\nnot a movie line\n11::Other (2000)::Comedy|Drama\n".encode(
            "latin-1"
        )
    )
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n2::M::25\n")
    log = load_ml1m_dir(tmp_path)
    assert log.items is not None and log.items["title"].to_list() == [
        "Caf\xe9 (1999)",
        "Other (2000)",
    ]
    assert log.users is not None and log.users["user"].to_list() == [1]
    assert log.malformed.count == 2
    assert log.malformed.examples == [
        (2, "(movies.dat) not a movie line"),
        (2, "(users.dat) 2::M::25"),
    ]


def test_ties_break_by_user_then_original_row(tiny_ml1m_dir: Path) -> None:
    events = load_ml1m_dir(tiny_ml1m_dir).events
    assert events.select("user", "item", "time").rows() == [
        (3, 13, 999.0),
        (1, 11, 1000.0),  # user 1 before user 2 in the same second
        (1, 12, 1000.0),  # same user and second: file order
        (2, 10, 1000.0),
        (2, 14, 1005.0),
        (1, 10, 1010.0),
        (3, 11, 1010.0),
        (2, 12, 1020.0),
    ]
    assert events["event_id"].to_list() == list(range(8))


def test_order_events_is_stable_and_idempotent() -> None:
    rng = np.random.default_rng(3)
    frame = pl.DataFrame(
        {
            "user": rng.integers(0, 5, 500),
            "item": np.arange(500),
            "time": rng.integers(0, 20, 500).astype(float),
        }
    )
    ordered = order_events(frame)
    # reference: Python's stable sort on (time, user) keeps the row order within ties
    expected = sorted(range(500), key=lambda i: (frame["time"][i], frame["user"][i]))
    assert ordered["item"].to_list() == expected
    again = order_events(ordered.drop("event_id"))
    assert again.equals(ordered)


def test_malformed_lines_are_counted_with_line_numbers(malformed_ml1m_dir: Path) -> None:
    log = load_ml1m_dir(malformed_ml1m_dir)
    assert log.events.height == 8
    assert log.malformed.count == 3
    assert [n for n, _ in log.malformed.examples] == [3, 6, 11]
    assert log.malformed.examples[1][1] == "garbage"
    with pytest.raises(MalformedInput, match="3 malformed line.*line 3"):
        load(ML1M(data_dir=malformed_ml1m_dir), strict=True)


def test_selection_renumbers_and_respects_bounds(tiny_ml1m_dir: Path) -> None:
    log = load_ml1m_dir(tiny_ml1m_dir)
    part = select_events(log, start=1000, end=1010)
    assert part.events["time"].to_list() == [1000.0, 1000.0, 1000.0, 1005.0]
    assert part.events["event_id"].to_list() == [0, 1, 2, 3]
    assert select_events(log, limit=3).events["item"].to_list() == [13, 11, 12]
    assert parse_when("2000-10-04") == 970617600.0
    assert parse_when("2000-10-04T00:52:14Z") == 970620734.0
    with pytest.raises(ValueError, match="not a date"):
        parse_when("yesterday")


ROWS = [(7, 100, 4.5, 1_000_000), (8, 101, None, 999_999), (7, 102, 2.0, 1_000_000)]


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_log_files_in_every_format(tmp_path: Path, suffix: str) -> None:
    frame = pl.DataFrame(
        ROWS,
        schema={"uid": pl.Int64, "iid": pl.Int64, "stars": pl.Float64, "ts": pl.Int64},
        orient="row",
    )
    path = tmp_path / f"log{suffix}"
    if suffix == ".csv":
        frame.write_csv(path)
    elif suffix == ".parquet":
        frame.write_parquet(path)
    else:
        frame.write_ndjson(path)
    columns = Columns(user="uid", item="iid", time="ts", rating="stars")
    log = load(LogFile(path, columns, "ms"))
    assert log.name == "log"
    assert log.events.select("user", "item", "rating", "time").rows() == [
        (8, 101, None, 999.999),
        (7, 100, 4.5, 1000.0),
        (7, 102, 2.0, 1000.0),
    ]


def test_log_file_iso_times_and_malformed_rows(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        "user,item,when\n"
        "1,5,2000-01-01T00:00:10\n"
        "2,6,not a time\n"  # line 3
        "x,7,2000-01-01T00:00:00\n"  # line 4
        "3,8,2000-01-01 00:00:05+01:00\n"  # another ISO layout: slow path
    )
    log = load_file(path, Columns(time="when"), "iso")
    assert log.events.select("user", "time").rows() == [(3, 946681205.0), (1, 946684810.0)]
    assert log.malformed.count == 2
    assert [n for n, _ in log.malformed.examples] == [3, 4]
    rated = tmp_path / "rated.csv"
    rated.write_text("user,item,time,stars\n1,2,10,4.5\n1,3,11,\n1,4,12,five\n")
    log = load_file(rated, Columns(rating="stars"))
    assert log.events["rating"].to_list() == [4.5, None]  # an empty rating is no rating
    assert log.malformed.examples == [(4, "1,4,five,12")]  # "five" is malformed


def test_jsonl_bad_json_is_malformed_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    lines = [json.dumps({"user": 1, "item": 2, "time": 5}), "{not json", json.dumps({"user": 1})]
    path.write_text("\n".join(lines) + "\n")
    log = load_file(path)
    assert log.events.height == 1
    assert log.malformed.count == 2
    assert log.malformed.examples[0] == (2, "{not json")


def test_log_file_errors_name_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("u,i,t\n1,2,3\n")
    with pytest.raises(LogFileError, match="no column.*'user'.*its columns are 'u', 'i', 't'"):
        load_file(path)
    with pytest.raises(LogFileError, match="suffix"):
        load_file(tmp_path / "log.xlsx")
