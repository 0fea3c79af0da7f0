"""``python -m replay DATASET [options]``: publish a time-ordered interaction log to Kafka.

DATASET is ``ml-1m``, ``file PATH`` or ``synthetic``; the options after it are shared.
Exit codes: 0 done, 1 runtime error (broker, data, topic), 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import json
import re
import signal
import sys
from dataclasses import asdict, dataclass, fields
from enum import Enum
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn

import polars as pl
import typer
from typer.core import TyperGroup

from replay.datasets import InteractionLog
from replay.download import DatasetUnavailable
from replay.files import Columns, LogFileError
from replay.inject import InjectConfig, InjectionError
from replay.pacing import Speed, SpeedError, parse_speed
from replay.producer import PublishError, TopicMismatch
from replay.progress import choose_progress
from replay.run import (
    DEFAULT_ITEMS_TOPIC,
    ML1M,
    DatasetSpec,
    LogFile,
    MalformedInput,
    describe_malformed,
    load,
    prepare,
    replay_log,
    summarize,
    write_description,
    write_ground_truth,
)
from replay.select import parse_when
from replay.synthetic import SyntheticConfig
from stream.bootstrap import BrokerUnreachable, resolve_bootstrap

DATASETS = "ml-1m, file PATH, synthetic"


class DatasetGroup(TyperGroup):
    """Subcommands are datasets: an unknown one gets a message that lists the known ones."""

    def resolve_command(  # type: ignore[override]
        self, ctx: typer.Context, args: list[str]
    ) -> tuple[str | None, Any, list[str]]:
        if args and not args[0].startswith("-") and self.get_command(ctx, args[0]) is None:
            ctx.fail(f"unknown dataset {args[0]!r}; choose one of: {DATASETS}")
        return super().resolve_command(ctx, args)


app = typer.Typer(
    cls=DatasetGroup,
    name="replay",
    help=(
        "Replay an interaction log through Kafka in event-time order, optionally with injected "
        "interest shifts. DATASET is one of: ml-1m, file PATH, synthetic; run "
        "`python -m replay DATASET --help` for its options. --speed 100x DIVIDES every "
        "event-time gap by 100; --speed max sends as fast as possible. "
        "Example: python -m replay ml-1m --speed 10000x --max-gap 2s"
    ),
    subcommand_metavar="DATASET [OPTIONS]",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


class InjectKindChoice(str, Enum):
    genre_swap = "genre-swap"
    item_permute = "item-permute"
    user_splice = "user-splice"
    popularity_shock = "popularity-shock"


class TimeUnitChoice(str, Enum):
    s = "s"
    ms = "ms"
    iso = "iso"


class ShiftKindChoice(str, Enum):
    abrupt = "abrupt"
    gradual = "gradual"
    mixed = "mixed"


def _speed(value: str) -> str:
    try:
        parse_speed(value)
    except SpeedError as error:
        raise typer.BadParameter(str(error)) from error
    return value


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``2``, ``2s``, ``500ms``, ``1.5m``, ``1h`` -> seconds."""
    match = _DURATION.match(text.lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration; use e.g. 2s, 500ms, 1m")
    return float(match.group(1)) * _UNIT_S[match.group(2) or "s"]


def _duration(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parse_duration(value)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    return value


def _when(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parse_when(value)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    return value


# --- options shared by every dataset command ---------------------------------------------------
Bootstrap = Annotated[
    str | None,
    typer.Option(help="Kafka HOST:PORT; default $KAFKA_BOOTSTRAP, else 127.0.0.1:9092."),
]
Topic = Annotated[str, typer.Option(help="Topic for the interactions.")]
ItemsTopic = Annotated[
    str,
    typer.Option(help="Compacted topic for each item's first appearance; '' to skip it."),
]
Partitions = Annotated[
    int,
    typer.Option(min=1, help="Partition count of the topic (the worker must use the same)."),
]
SpeedOpt = Annotated[
    str,
    typer.Option(
        callback=_speed,
        help=(
            "Replay speed. A factor like 100x DIVIDES every event-time gap by 100 (100x = one "
            "hour of event time in 36 s); 'max' sends as fast as possible without waiting."
        ),
    ),
]
MaxGap = Annotated[
    str | None,
    typer.Option(
        callback=_duration,
        help="Cap on any single wait between events, e.g. 2s or 500ms (paced speeds only).",
    ),
]
Start = Annotated[
    str | None,
    typer.Option(callback=_when, help="Replay events at or after this date (YYYY-MM-DD, UTC)."),
]
End = Annotated[
    str | None,
    typer.Option(callback=_when, help="Replay events before this date (exclusive, UTC)."),
]
Limit = Annotated[int | None, typer.Option(min=0, help="Replay only the first N events.")]
FromEvent = Annotated[
    int,
    typer.Option(min=0, help="Resume: start at this event id (the stream keeps its ids)."),
]
Inject = Annotated[
    InjectKindChoice | None,
    typer.Option(case_sensitive=False, help="Inject an interest shift into a cohort."),
]
InjectAt = Annotated[
    str | None,
    typer.Option(
        help="Shift time for --inject: a date, or a fraction of the events (default 0.5)."
    ),
]
CohortFrac = Annotated[
    float | None,
    typer.Option(min=0.0, max=1.0, help="Share of users in the shifted cohort (default 0.2)."),
]
Seed = Annotated[int, typer.Option(help="Seed for injection and the synthetic generator.")]
DryRun = Annotated[
    bool, typer.Option("--dry-run", help="Load and plan only; never contact the broker.")
]
JsonOut = Annotated[bool, typer.Option("--json", help="With --dry-run: print one JSON object.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")]
Strict = Annotated[
    bool, typer.Option("--strict", help="Fail on malformed input lines instead of skipping them.")
]
GroundTruth = Annotated[
    Path | None,
    typer.Option(
        help="Where to write the shift ground truth (Parquet); default: ground_truth.parquet "
        "beside the stream description."
    ),
]
Describe = Annotated[
    Path | None,
    typer.Option(
        help="Where to write the stream description (JSON); default runs/replay/TOPIC/stream.json."
    ),
]
ConnectTimeout = Annotated[
    float, typer.Option(min=0.1, help="Seconds to keep retrying an unreachable broker.")
]


@dataclass
class Shared:
    bootstrap: str | None
    topic: str
    items_topic: str
    partitions: int
    speed: str
    max_gap: str | None
    start: str | None
    end: str | None
    limit: int | None
    from_event: int
    inject: InjectKindChoice | None
    inject_at: str | None
    cohort_frac: float | None
    seed: int
    dry_run: bool
    json_out: bool
    quiet: bool
    strict: bool
    ground_truth: Path | None
    describe: Path | None
    connect_timeout: float

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Shared:
        """The shared options out of a command's parameters (its ``locals()``)."""
        return cls(**{f.name: options[f.name] for f in fields(cls)})


def _usage(message: str) -> typer.BadParameter:
    return typer.BadParameter(message)


def _check_conflicts(shared: Shared, synthetic: bool) -> None:
    speed = parse_speed(shared.speed)
    if shared.json_out and not shared.dry_run:
        raise _usage("--json only goes with --dry-run (a real replay prints a summary line)")
    if shared.max_gap is not None and speed.is_max:
        raise _usage("--max-gap caps waits, but --speed max never waits; drop one of them")
    if shared.start and shared.end and parse_when(shared.start) >= parse_when(shared.end):
        raise _usage(f"--start {shared.start} is not before --end {shared.end}")
    if synthetic and shared.inject is not None:
        raise _usage("the synthetic dataset has its own shifts; --inject is for ml-1m and file")
    if not synthetic and shared.inject is None:
        if shared.inject_at is not None:
            raise _usage("--inject-at needs --inject KIND")
        if shared.cohort_frac is not None:
            raise _usage("--cohort-frac needs --inject KIND (or the synthetic dataset)")
    if shared.inject is not None and shared.cohort_frac == 0.0:
        raise _usage("--cohort-frac must be above 0 with --inject")


def _execute(shared: Shared, spec: DatasetSpec) -> None:
    _check_conflicts(shared, synthetic=isinstance(spec, SyntheticConfig))
    speed = parse_speed(shared.speed)
    max_gap_s = _parse_gap(shared.max_gap)
    try:
        log = load(spec, strict=shared.strict)
        if log.malformed.count:
            typer.echo(f"warning: {describe_malformed(log.malformed)}", err=True)
        inject_config = _inject_config(shared)
        log = prepare(
            log,
            inject_config,
            start=parse_when(shared.start) if shared.start else None,
            end=parse_when(shared.end) if shared.end else None,
            limit=shared.limit,
        )
    except (MalformedInput, DatasetUnavailable, LogFileError, InjectionError, OSError) as error:
        _fail(str(error))
    except pl.exceptions.PolarsError as error:  # e.g. a corrupt Parquet file
        _fail(f"cannot read the log: {type(error).__name__}: {error}")
    if shared.from_event > log.events.height:
        raise _usage(
            f"--from-event {shared.from_event} is past the end of the stream "
            f"({log.events.height} events)"
        )
    if shared.dry_run:
        _dry_run(shared, log, speed, max_gap_s)
        return
    _replay(shared, spec, log, speed, max_gap_s, inject_config)


def _parse_gap(text: str | None) -> float | None:
    return parse_duration(text) if text is not None else None


def _inject_config(shared: Shared) -> InjectConfig | None:
    if shared.inject is None:
        return None
    return InjectConfig(
        kind=shared.inject.value,
        at=shared.inject_at or "0.5",
        cohort_frac=shared.cohort_frac if shared.cohort_frac is not None else 0.2,
        seed=shared.seed,
    )


def _dry_run(shared: Shared, log: InteractionLog, speed: Speed, max_gap_s: float | None) -> None:
    summary = summarize(log, speed, max_gap_s, shared.from_event)
    if shared.ground_truth is not None and write_ground_truth(log, shared.ground_truth):
        summary["ground_truth"] = str(shared.ground_truth)
    if shared.json_out:
        typer.echo(json.dumps(summary))
        return
    first, last = summary["first_event_time"], summary["last_event_time"]
    typer.echo(
        f"{summary['dataset']}: {summary['events']:,} events, {summary['users']:,} users, "
        f"{summary['items']:,} items, {first['iso'] if first else '-'} .. "
        f"{last['iso'] if last else '-'}; planned replay {summary['planned_replay_s']:.1f} s at "
        f"{summary['speed']}; {summary['malformed']} malformed"
    )


def _replay(
    shared: Shared,
    spec: DatasetSpec,
    log: InteractionLog,
    speed: Speed,
    max_gap_s: float | None,
    inject_config: InjectConfig | None,
) -> None:
    bootstrap = resolve_bootstrap(shared.bootstrap)
    description = shared.describe or Path("runs") / "replay" / shared.topic / "stream.json"
    truth_path = shared.ground_truth or description.parent / "ground_truth.parquet"
    wrote_truth = write_ground_truth(log, truth_path)
    try:
        result = replay_log(
            log,
            bootstrap,
            topic=shared.topic,
            partitions=shared.partitions,
            speed=speed,
            max_gap_s=max_gap_s,
            from_event=shared.from_event,
            items_topic=shared.items_topic or None,
            progress=choose_progress(shared.quiet),
            connect_timeout_s=shared.connect_timeout,
        )
    except (BrokerUnreachable, TopicMismatch, PublishError) as error:
        _fail(str(error))
    config: dict[str, Any] = {
        "dataset": _spec_dict(spec),
        "bootstrap": bootstrap,
        "topic": shared.topic,
        "items_topic": shared.items_topic or None,
        "partitions": shared.partitions,
        "speed": str(speed),
        "max_gap_s": max_gap_s,
        "start": shared.start,
        "end": shared.end,
        "limit": shared.limit,
        "from_event": shared.from_event,
        "inject": _asdict_or_none(inject_config),
        "seed": shared.seed,
    }
    write_description(description, log, config, result, truth_path if wrote_truth else None)
    if result.interrupted:
        typer.echo(
            f"interrupted: sent {result.sent:,} events (ids {result.from_event}.."
            f"{result.next_event_id - 1}) to {result.topic!r}, flushed; resume with "
            f"--from-event {result.next_event_id}",
            err=True,
        )
        raise typer.Exit(130)
    typer.echo(
        f"sent {result.sent:,} events to {result.topic!r} ({result.partitions} partitions) in "
        f"{result.wall_s:.1f} s (planned {result.planned_s:.1f} s), end markers on every "
        f"partition; description {description}"
        + (f"; ground truth {truth_path}" if wrote_truth else "")
    )


def _spec_dict(spec: DatasetSpec) -> dict[str, Any]:
    if isinstance(spec, SyntheticConfig):
        return {"name": "synthetic", **asdict(spec)}
    if isinstance(spec, ML1M):
        return {"name": "ml-1m", "data_dir": str(spec.data_dir) if spec.data_dir else None}
    return {
        "name": "file",
        "path": str(spec.path),
        "columns": _asdict_or_none(spec.columns),
        "time_unit": spec.time_unit,
    }


def _asdict_or_none(value: Any) -> dict[str, Any] | None:
    return asdict(value) if value is not None else None


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


# --- the dataset commands --------------------------------------------------------------------


@app.command("ml-1m")
def ml_1m(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Folder holding ratings.dat (and movies.dat); default: download to the cache "
            "($SHIFTSTREAM_CACHE or the user cache dir) on first use."
        ),
    ] = None,
    bootstrap: Bootstrap = None,
    topic: Topic = "interactions",
    items_topic: ItemsTopic = DEFAULT_ITEMS_TOPIC,
    partitions: Partitions = 4,
    speed: SpeedOpt = "max",
    max_gap: MaxGap = None,
    start: Start = None,
    end: End = None,
    limit: Limit = None,
    from_event: FromEvent = 0,
    inject: Inject = None,
    inject_at: InjectAt = None,
    cohort_frac: CohortFrac = None,
    seed: Seed = 0,
    dry_run: DryRun = False,
    json_out: JsonOut = False,
    quiet: Quiet = False,
    strict: Strict = False,
    ground_truth: GroundTruth = None,
    describe: Describe = None,
    connect_timeout: ConnectTimeout = 10.0,
) -> None:
    """MovieLens-1M (UserID::MovieID::Rating::Timestamp), downloaded once or from --data-dir."""
    shared = Shared.from_options(locals())
    _execute(shared, ML1M(data_dir=data_dir))


@app.command("file")
def file(
    path: Annotated[Path, typer.Argument(help="A .csv/.tsv, .parquet or .jsonl/.ndjson log.")],
    user_col: Annotated[str, typer.Option(help="Column with the user id.")] = "user",
    item_col: Annotated[str, typer.Option(help="Column with the item id.")] = "item",
    time_col: Annotated[str, typer.Option(help="Column with the event time.")] = "time",
    rating_col: Annotated[str | None, typer.Option(help="Column with a rating, if any.")] = None,
    time_unit: Annotated[
        TimeUnitChoice, typer.Option(help="Event time in seconds, milliseconds or ISO datetimes.")
    ] = TimeUnitChoice.s,
    bootstrap: Bootstrap = None,
    topic: Topic = "interactions",
    items_topic: ItemsTopic = DEFAULT_ITEMS_TOPIC,
    partitions: Partitions = 4,
    speed: SpeedOpt = "max",
    max_gap: MaxGap = None,
    start: Start = None,
    end: End = None,
    limit: Limit = None,
    from_event: FromEvent = 0,
    inject: Inject = None,
    inject_at: InjectAt = None,
    cohort_frac: CohortFrac = None,
    seed: Seed = 0,
    dry_run: DryRun = False,
    json_out: JsonOut = False,
    quiet: Quiet = False,
    strict: Strict = False,
    ground_truth: GroundTruth = None,
    describe: Describe = None,
    connect_timeout: ConnectTimeout = 10.0,
) -> None:
    """Any CSV, Parquet or JSON-lines log (format from the suffix, read lazily with polars)."""
    shared = Shared.from_options(locals())
    columns = Columns(user=user_col, item=item_col, time=time_col, rating=rating_col)
    _execute(shared, LogFile(path=path, columns=columns, time_unit=time_unit.value))


@app.command("synthetic")
def synthetic(
    users: Annotated[int, typer.Option(min=1, help="Number of users.")] = 1_000,
    items: Annotated[int, typer.Option(min=2, help="Number of items.")] = 2_000,
    events: Annotated[int, typer.Option(min=1, help="Number of events.")] = 100_000,
    topics: Annotated[int, typer.Option(min=2, help="Latent topics (genres).")] = 8,
    shift_kind: Annotated[
        ShiftKindChoice,
        typer.Option(help="How the cohort shifts: abrupt, gradual (sigmoid), mixed."),
    ] = ShiftKindChoice.mixed,
    shift_at: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Shift time as a fraction of the time span.")
    ] = 0.5,
    span_days: Annotated[float, typer.Option(min=0.001, help="Event-time span in days.")] = 180.0,
    bootstrap: Bootstrap = None,
    topic: Topic = "interactions",
    items_topic: ItemsTopic = DEFAULT_ITEMS_TOPIC,
    partitions: Partitions = 4,
    speed: SpeedOpt = "max",
    max_gap: MaxGap = None,
    start: Start = None,
    end: End = None,
    limit: Limit = None,
    from_event: FromEvent = 0,
    inject: Inject = None,
    inject_at: InjectAt = None,
    cohort_frac: CohortFrac = None,
    seed: Seed = 0,
    dry_run: DryRun = False,
    json_out: JsonOut = False,
    quiet: Quiet = False,
    strict: Strict = False,
    ground_truth: GroundTruth = None,
    describe: Describe = None,
    connect_timeout: ConnectTimeout = 10.0,
) -> None:
    """Generated users whose interests shift at known times (ground truth written to Parquet)."""
    shared = Shared.from_options(locals())
    _check_conflicts(shared, synthetic=True)
    try:
        config = SyntheticConfig(
            users=users,
            items=items,
            events=events,
            topics=topics,
            cohort_frac=cohort_frac if cohort_frac is not None else 0.2,
            shift_at=shift_at,
            shift_kind=shift_kind.value,
            span_days=span_days,
            seed=seed,
        )
    except ValueError as error:
        raise _usage(str(error)) from error
    _execute(shared, config)


def _stop_like_ctrl_c(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``shiftstream-replay``); SIGTERM stops cleanly like Ctrl-C."""
    signal.signal(signal.SIGTERM, _stop_like_ctrl_c)
    app(args=argv if argv is not None else sys.argv[1:], prog_name="python -m replay")


__all__ = ["app", "main", "parse_duration"]
