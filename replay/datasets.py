"""Interaction logs as polars frames, in the one global event order every model sees.

Every loader returns an ``InteractionLog`` whose ``events`` frame has the columns of
``EVENT_SCHEMA``, already ordered by (event time, user, original row order) with ``event_id``
0..N-1 assigned in that order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

EVENT_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.Int64(),
    "user": pl.Int64(),
    "item": pl.Int64(),
    "rating": pl.Float64(),  # null when the log has no ratings
    "time": pl.Float64(),  # event time, seconds since the epoch
    "cohort": pl.Boolean(),  # ground truth: user in a shifted cohort
    "shifted": pl.Boolean(),  # ground truth: event after the user's shift
}

ML1M_FIELDS = ("user", "item", "rating", "time")

GROUND_TRUTH_SCHEMA: dict[str, pl.DataType] = {
    "user": pl.Int64(),
    "shift_time": pl.Float64(),  # event time of the shift (midpoint for gradual), epoch seconds
    "kind": pl.String(),  # abrupt | gradual | genre-swap | item-permute | user-splice | ...
    "width": pl.Float64(),  # sigmoid width in seconds for gradual shifts, 0 for abrupt ones
    "old_topics": pl.List(pl.String()),  # topics/genres before the shift, when known
    "new_topics": pl.List(pl.String()),  # topics/genres after the shift, when known
    "details": pl.String(),  # JSON object with kind-specific facts (donor user, shock items, ...)
}


@dataclass
class MalformedLines:
    """Lines that could not be parsed: counted, the first few kept with their line numbers."""

    count: int = 0
    examples: list[tuple[int, str]] = field(default_factory=list)  # (line number, text)


@dataclass
class InteractionLog:
    name: str
    events: pl.DataFrame  # EVENT_SCHEMA, ordered, event_id assigned
    items: pl.DataFrame | None = None  # item, title, genres (list[str]) when known
    users: pl.DataFrame | None = None  # user, gender, age, occupation, zip when known
    malformed: MalformedLines = field(default_factory=MalformedLines)
    ground_truth: pl.DataFrame | None = None  # GROUND_TRUTH_SCHEMA, one row per shifted user


def order_events(frame: pl.DataFrame) -> pl.DataFrame:
    """Stable order by (time, user, original row order); assign ``event_id`` in that order."""
    defaults = {"rating": None, "cohort": False, "shifted": False}
    for column, value in defaults.items():
        if column not in frame.columns:
            frame = frame.with_columns(pl.lit(value).alias(column))
    return (
        frame.with_row_index("_row")
        .sort(["time", "user", "_row"], maintain_order=True)
        .drop("_row")
        .with_row_index("event_id")
        .select([pl.col(name).cast(dtype) for name, dtype in EVENT_SCHEMA.items()])
    )


def read_ml1m_ratings(path: Path, examples: int = 5) -> tuple[pl.DataFrame, MalformedLines]:
    """Parse ``UserID::MovieID::Rating::Timestamp``; malformed lines are counted, not fatal."""
    raw = pl.read_csv(
        path,
        has_header=False,
        separator="\x1f",  # a byte that never occurs: one column per line
        quote_char=None,
        new_columns=["line"],
        schema={"line": pl.String()},
    ).with_row_index("line_no", offset=1)
    fields = pl.col("line").str.split("::")
    parsed = raw.with_columns(
        fields.list.len().alias("_n"),
        *[
            fields.list.get(i, null_on_oob=True)
            .str.strip_chars()
            .cast(pl.Int64, strict=False)
            .alias(name)
            for i, name in enumerate(ML1M_FIELDS)
        ],
    )
    valid = (
        (pl.col("_n") == 4)
        & pl.all_horizontal(pl.col(list(ML1M_FIELDS)).is_not_null())
        & (pl.col("user") >= 0)
        & (pl.col("item") >= 0)
    )
    bad = parsed.filter(~valid)
    malformed = MalformedLines(
        count=bad.height,
        examples=[
            (int(n), str(line)) for n, line in bad.select("line_no", "line").head(examples).rows()
        ],
    )
    good = parsed.filter(valid).select(
        pl.col("user"),
        pl.col("item"),
        pl.col("rating").cast(pl.Float64),
        pl.col("time").cast(pl.Float64),
    )
    return good, malformed


def split_dat_lines(
    path: Path, n_fields: int, examples: int = 5
) -> tuple[list[list[str]], MalformedLines]:
    """``::``-separated Latin-1 lines with ``n_fields`` fields, the first an integer id; other
    non-blank lines are counted (with the file name and line number), never silently dropped."""
    rows: list[list[str]] = []
    malformed = MalformedLines()
    text = path.read_bytes().decode("latin-1")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("::")
        if len(fields) == n_fields and fields[0].strip().isdigit():
            rows.append(fields)
            continue
        malformed.count += 1
        if len(malformed.examples) < examples:
            malformed.examples.append((number, f"({path.name}) {line}"))
    return rows, malformed


def read_ml1m_movies(path: Path) -> tuple[pl.DataFrame, MalformedLines]:
    """``MovieID::Title::Genres`` (Latin-1) -> item, title, genres (list of str)."""
    rows, malformed = split_dat_lines(path, 3)
    frame = pl.DataFrame(
        {
            "item": [int(row[0]) for row in rows],
            "title": [row[1] for row in rows],
            "genres": [row[2].split("|") for row in rows],
        },
        schema={"item": pl.Int64(), "title": pl.String(), "genres": pl.List(pl.String())},
    )
    return frame, malformed


def read_ml1m_users(path: Path) -> tuple[pl.DataFrame, MalformedLines]:
    """``UserID::Gender::Age::Occupation::Zip-code`` -> user, gender, age, occupation, zip."""
    rows, malformed = split_dat_lines(path, 5)
    frame = pl.DataFrame(
        {
            "user": [int(row[0]) for row in rows],
            "gender": [row[1] for row in rows],
            "age": [int(row[2]) if row[2].isdigit() else None for row in rows],
            "occupation": [int(row[3]) if row[3].isdigit() else None for row in rows],
            "zip": [row[4] for row in rows],
        },
        schema={
            "user": pl.Int64(),
            "gender": pl.String(),
            "age": pl.Int64(),
            "occupation": pl.Int64(),
            "zip": pl.String(),
        },
    )
    return frame, malformed


def load_ml1m_dir(data_dir: Path, name: str = "ml-1m") -> InteractionLog:
    """ML-1M from a folder holding ``ratings.dat`` (and optionally ``movies.dat``, ``users.dat``).

    Malformed lines of all three files are counted together; the examples name their file
    when it is not ``ratings.dat``."""
    ratings = data_dir / "ratings.dat"
    if not ratings.is_file():
        raise FileNotFoundError(f"{data_dir} has no ratings.dat (expected the ML-1M layout)")
    events, malformed = read_ml1m_ratings(ratings)
    log = InteractionLog(name=name, events=order_events(events), malformed=malformed)
    if (data_dir / "movies.dat").is_file():
        log.items, bad_movies = read_ml1m_movies(data_dir / "movies.dat")
        malformed = _merge(malformed, bad_movies)
    if (data_dir / "users.dat").is_file():
        log.users, bad_users = read_ml1m_users(data_dir / "users.dat")
        malformed = _merge(malformed, bad_users)
    log.malformed = malformed
    return log


def _merge(first: MalformedLines, second: MalformedLines, examples: int = 5) -> MalformedLines:
    return MalformedLines(
        count=first.count + second.count,
        examples=(first.examples + second.examples)[:examples],
    )
