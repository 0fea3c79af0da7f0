"""The replayer as a library: load -> inject -> select -> pace -> produce.

``python -m replay`` is a thin CLI over these functions, and ``python -m stream run`` can call them
directly::

    log = load(ML1M(data_dir=Path("../shared/data/ml-1m-subset")))
    log = prepare(log, inject=InjectConfig("genre-swap"), limit=10_000)
    result = replay_log(log, bootstrap="127.0.0.1:9092", speed=parse_speed("max"))
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from replay.datasets import InteractionLog, MalformedLines, load_ml1m_dir
from replay.download import Fetch, ensure_ml1m, urllib_fetch
from replay.files import Columns, TimeUnit, load_file
from replay.inject import InjectConfig, inject
from replay.pacing import Clock, Speed, SystemClock, pace, planned_offsets
from replay.partition import partition_for_user
from replay.producer import (
    FailureCounter,
    ProducerSettings,
    ensure_topic,
    make_producer,
    publish_items,
    send_end_markers,
)
from replay.progress import NoProgress, ProgressSink
from replay.schema import SCHEMA_VERSION, ItemFirstSeen, encode_interaction, user_key
from replay.select import iso, select_events
from replay.synthetic import SyntheticConfig, generate
from stream.bootstrap import ensure_reachable

PROGRESS_EVERY = 1024  # events between progress updates
DEFAULT_ITEMS_TOPIC = "items"


class MalformedInput(ValueError):
    """``--strict`` and the input had malformed lines."""


@dataclass(frozen=True)
class ML1M:
    data_dir: Path | None = None  # None: the download cache
    url: str | None = None  # None: $SHIFTSTREAM_ML1M_URL, else GroupLens
    cache: Path | None = None  # None: $SHIFTSTREAM_CACHE, else the user cache dir


@dataclass(frozen=True)
class LogFile:
    path: Path
    columns: Columns = field(default_factory=Columns)
    time_unit: TimeUnit = "s"


DatasetSpec = ML1M | LogFile | SyntheticConfig


def load(spec: DatasetSpec, strict: bool = False, fetch: Fetch = urllib_fetch) -> InteractionLog:
    """Load a dataset into an ordered ``InteractionLog`` (malformed lines counted, or fatal)."""
    if isinstance(spec, ML1M):
        folder = spec.data_dir or ensure_ml1m(cache=spec.cache, url=spec.url, fetch=fetch)
        log = load_ml1m_dir(folder)
    elif isinstance(spec, LogFile):
        log = load_file(spec.path, spec.columns, spec.time_unit)
    else:
        log = generate(spec)
    if strict and log.malformed.count:
        raise MalformedInput(f"--strict: {describe_malformed(log.malformed)}")
    return log


def describe_malformed(malformed: MalformedLines) -> str:
    shown = "; ".join(f"line {n}: {text[:80]!r}" for n, text in malformed.examples)
    return f"{malformed.count} malformed line(s) skipped; first: {shown}"


def prepare(
    log: InteractionLog,
    inject_config: InjectConfig | None = None,
    start: float | None = None,
    end: float | None = None,
    limit: int | None = None,
) -> InteractionLog:
    """The selection that defines the stream, then the optional shift injection on it.

    Selecting first makes ``--inject-at 0.5`` mean halfway through the events that are replayed
    (and a shift date outside the selection an error), whatever --start/--end/--limit cut."""
    selected = select_events(log, start, end, limit)
    if inject_config is None:
        return selected
    return inject(selected, inject_config)


def summarize(
    log: InteractionLog, speed: Speed, max_gap_s: float | None = None, from_event: int = 0
) -> dict[str, Any]:
    """What ``--dry-run --json`` prints: sizes, time range, planned replay seconds."""
    events = log.events
    times = events["time"].to_numpy()
    pending = times[from_event:]
    summary: dict[str, Any] = {
        "dataset": log.name,
        "events": events.height,
        "users": events["user"].n_unique(),
        "items": events["item"].n_unique(),
        "first_event_time": _moment(times[0]) if times.size else None,
        "last_event_time": _moment(times[-1]) if times.size else None,
        "speed": str(speed),
        "max_gap_s": max_gap_s,
        "from_event": from_event,
        "events_to_send": int(pending.size),
        "planned_replay_s": round(float(planned_offsets(pending, speed, max_gap_s)[-1]), 6)
        if pending.size
        else 0.0,
        "malformed": log.malformed.count,
        "cohort_users": int(events.filter(pl.col("cohort"))["user"].n_unique()),
        "shifted_events": int(events["shifted"].sum()),
    }
    return summary


def _moment(seconds: float) -> dict[str, Any]:
    return {"epoch": float(seconds), "iso": iso(float(seconds))}


def first_seen_items(log: InteractionLog) -> list[ItemFirstSeen]:
    """Each item's first event in the stream, in event order."""
    first = (
        log.events.group_by("item")
        .agg(pl.col("event_id").min().alias("first_event_id"), pl.col("time").min().alias("t"))
        .sort("first_event_id")
    )
    return [
        ItemFirstSeen(item=item, first_event_id=event_id, first_time=t, dataset=log.name)
        for item, event_id, t in first.select("item", "first_event_id", "t").iter_rows()
    ]


def partition_counts(users: np.ndarray, partitions: int) -> tuple[np.ndarray, np.ndarray]:
    """(partition of every event, event count per partition), with the replay's partitioner."""
    distinct, inverse = np.unique(users, return_inverse=True)
    of_user = np.array([partition_for_user(int(u), partitions) for u in distinct], dtype=np.int64)
    of_event = of_user[inverse] if users.size else np.zeros(0, dtype=np.int64)
    return of_event, np.bincount(of_event, minlength=partitions)


@dataclass
class ReplayResult:
    topic: str
    partitions: int
    total_events: int  # events in the stream (ids 0..total-1)
    from_event: int  # first event id this run sent
    sent: int  # events this run handed to the producer and flushed
    next_event_id: int  # resume point: pass as --from-event after an interruption
    interrupted: bool
    end_markers_sent: bool
    partition_events: list[int]  # per-partition counts of the whole stream (as in the markers)
    items_published: int
    wall_s: float  # whole call: topic checks, items, events, flush, end markers
    send_s: float  # first event handed over -> all events flushed (what pacing is measured on)
    send_cpu_s: float  # process CPU time (all threads) over the same span, for benchmarks
    planned_s: float  # planned duration of the paced part (0 at max speed)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def replay_log(
    log: InteractionLog,
    bootstrap: str,
    topic: str = "interactions",
    partitions: int = 4,
    speed: Speed = Speed(float("inf")),
    max_gap_s: float | None = None,
    clock: Clock | None = None,
    from_event: int = 0,
    items_topic: str | None = DEFAULT_ITEMS_TOPIC,
    settings: ProducerSettings | None = None,
    progress: ProgressSink | None = None,
    connect_timeout_s: float = 10.0,
) -> ReplayResult:
    """Publish ``log`` to Kafka; Ctrl-C stops cleanly (flushes) and reports the resume point."""
    clock = clock or SystemClock()
    progress = progress or NoProgress()
    events = log.events
    total = events.height
    if not 0 <= from_event <= total:
        raise ValueError(f"--from-event {from_event} is outside the stream (0..{total})")
    ensure_reachable(bootstrap, timeout_s=connect_timeout_s)
    ensure_topic(bootstrap, topic, partitions)
    if items_topic:
        ensure_topic(bootstrap, items_topic, 1, {"cleanup.policy": "compact"})
    of_event, per_partition = partition_counts(events["user"].to_numpy(), partitions)
    pending = events.slice(from_event)
    offsets = planned_offsets(pending["time"].to_numpy(), speed, max_gap_s)
    planned_s = float(offsets[-1]) if offsets.size else 0.0
    producer = make_producer(bootstrap, settings)
    items_published = 0
    sent = 0
    send_s = send_cpu_s = 0.0
    interrupted = False
    markers = False
    started = clock.now()
    try:
        if items_topic:
            items_published = publish_items(producer, items_topic, first_seen_items(log))
        progress.start(pending.height, None if speed.is_max else planned_s)
        send_started, cpu_started = clock.now(), time.process_time()
        try:
            sent = _send_events(
                producer,
                topic,
                log.name,
                pending,
                of_event[from_event:],
                speed,
                offsets,
                clock,
                progress,
            )
        except _Interrupted as stop:
            sent, interrupted = stop.sent, True
        finally:
            progress.stop()
        send_s = clock.now() - send_started
        send_cpu_s = time.process_time() - cpu_started
        producer.flush()
        if not interrupted:
            send_end_markers(producer, topic, per_partition.tolist(), total)
            markers = True
    except KeyboardInterrupt:
        # Ctrl-C while publishing items or end markers: what was handed over is flushed below;
        # resuming at next_event_id re-sends the markers (and items, idempotently)
        interrupted, markers = True, False
        producer.flush()
    finally:
        producer.close(timeout=30)
    return ReplayResult(
        topic=topic,
        partitions=partitions,
        total_events=total,
        from_event=from_event,
        sent=sent,
        next_event_id=from_event + sent,
        interrupted=interrupted,
        end_markers_sent=markers,
        partition_events=per_partition.tolist(),
        items_published=items_published,
        wall_s=clock.now() - started,
        send_s=send_s,
        send_cpu_s=send_cpu_s,
        planned_s=planned_s,
    )


class _Interrupted(Exception):
    def __init__(self, sent: int) -> None:
        super().__init__(f"interrupted after {sent} events")
        self.sent = sent


def _send_events(
    producer: Any,
    topic: str,
    dataset: str,
    pending: pl.DataFrame,
    partitions_of: np.ndarray,
    speed: Speed,
    offsets: np.ndarray,
    clock: Clock,
    progress: ProgressSink,
) -> int:
    """The hot loop; returns how many events were handed to the producer."""
    columns = ("event_id", "user", "item", "rating", "time", "cohort", "shifted")
    rows: Any = zip(*(pending[c].to_list() for c in columns), partitions_of.tolist(), strict=True)
    paced = not speed.is_max
    if paced:
        rows = pace(rows, offsets, clock)
    failures = FailureCounter()
    keys: dict[int, bytes] = {}
    send = producer.send
    sent = 0
    try:
        for event_id, user, item, rating, time_s, cohort, shifted, partition in rows:
            key = keys.get(user)
            if key is None:
                key = keys[user] = user_key(user)
            value = encode_interaction(
                event_id, user, item, rating, time_s, dataset, cohort, shifted
            )
            send(topic, key=key, value=value, partition=partition).add_errback(failures)
            sent += 1
            if paced or sent % PROGRESS_EVERY == 0:  # paced replays can be slow: every event
                progress.update(sent, time_s)
    except KeyboardInterrupt:
        producer.flush()
        raise _Interrupted(sent) from None
    if sent:
        progress.update(sent, float(pending["time"][-1]))
    producer.flush()
    failures.check("events")
    return sent


def write_description(
    path: Path,
    log: InteractionLog,
    config: dict[str, Any],
    result: ReplayResult | None,
    ground_truth_path: Path | None,
) -> None:
    """The stream description (JSON) beside the ground truth: what was replayed, and how."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "schema_version": SCHEMA_VERSION,
        "dataset": log.name,
        "created_unix": time.time(),
        "partitioner": "murmur2(user key) & 0x7fffffff % partitions (explicit partition)",
        "config": config,
        "ground_truth": str(ground_truth_path) if ground_truth_path else None,
        "result": result.as_dict() if result else None,
    }
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(document, indent=2, default=str) + "\n")
    temporary.replace(path)


def write_ground_truth(log: InteractionLog, path: Path) -> bool:
    """Write the ground truth Parquet (atomically); ``False`` when the log has none."""
    if log.ground_truth is None:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    log.ground_truth.write_parquet(temporary)
    temporary.replace(path)
    return True
