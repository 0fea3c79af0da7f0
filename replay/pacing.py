"""Replay pacing: when should each event leave, measured from the replay start?

The replay clock is R(event) = start_wall + offset(event), where offsets are the event-time gaps
divided by the speed factor, each gap capped by ``max_gap`` wall seconds, and summed. The schedule
is anchored to the replay start: a wait that is skipped because it is too short (under
``MIN_SLEEP_S``) is folded into the next wait, so rounding never accumulates.

>>> parse_speed("100x").factor
100.0
>>> parse_speed("max").is_max
True
>>> planned_offsets([0.0, 100.0, 100.0, 400.0], parse_speed("100x"), max_gap_s=2.0).tolist()
[0.0, 1.0, 1.0, 3.0]
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

MIN_SLEEP_S = 0.010  # waits shorter than this are skipped (and caught up by the next wait)

T = TypeVar("T")


class Clock(Protocol):
    """Wall clock of the replay; injected so tests never sleep."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: monotonic time and ``time.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class FakeClock:
    """A clock for tests: ``sleep`` advances ``now`` and records the requested duration.

    ``work_per_call_s`` lets a test model time spent between clock reads (sending).
    """

    def __init__(self, start: float = 0.0, work_per_call_s: float = 0.0) -> None:
        self.time = start
        self.sleeps: list[float] = []
        self.work_per_call_s = work_per_call_s

    def now(self) -> float:
        self.time += self.work_per_call_s
        return self.time

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.time += seconds


class SpeedError(ValueError):
    """A ``--speed`` value that is not ``NUMBERx`` (positive) or ``max``."""


@dataclass(frozen=True)
class Speed:
    """Replay speed: event-time gaps are DIVIDED by ``factor``; ``factor = inf`` means max."""

    factor: float

    @property
    def is_max(self) -> bool:
        return math.isinf(self.factor)

    def __str__(self) -> str:
        return "max" if self.is_max else f"{self.factor:g}x"


_SPEED = re.compile(r"^\s*(?P<number>\d+(?:\.\d*)?|\.\d+)(?:e(?P<exp>[+-]?\d+))?\s*x?\s*$", re.I)


def parse_speed(text: str) -> Speed:
    """``"100x"`` (or ``"100"``, ``"1e5x"``) divides event-time gaps by 100; ``"max"``: no waits."""
    cleaned = text.strip().lower()
    if cleaned in ("max", "inf", "infx"):
        return Speed(math.inf)
    match = _SPEED.match(cleaned)
    if match is None:
        raise SpeedError(
            f"{text!r} is not a speed; use a factor like 100x (event-time gaps are divided by it) "
            "or max (as fast as possible)"
        )
    factor = float(match.group("number")) * 10.0 ** int(match.group("exp") or 0)
    if not math.isfinite(factor) or factor <= 0:
        raise SpeedError(
            f"speed factor must be a positive number (event-time gaps are divided by it), "
            f"got {text!r}"
        )
    return Speed(factor)


def planned_offsets(
    times: Sequence[float] | np.ndarray, speed: Speed, max_gap_s: float | None = None
) -> np.ndarray:
    """Wall-clock send offset of every event from the replay start (the first event is at 0)."""
    event_times = np.asarray(times, dtype=np.float64)
    if event_times.size == 0 or speed.is_max:
        return np.zeros(event_times.size, dtype=np.float64)
    gaps = np.diff(event_times, prepend=event_times[0]) / speed.factor
    gaps = np.maximum(gaps, 0.0)  # input is ordered; guard against a caller's unordered slice
    if max_gap_s is not None:
        gaps = np.minimum(gaps, max_gap_s)
    return np.cumsum(gaps)


def planned_seconds(
    times: Sequence[float] | np.ndarray, speed: Speed, max_gap_s: float | None = None
) -> float:
    """How long the replay of these events is planned to take (last event's offset)."""
    offsets = planned_offsets(times, speed, max_gap_s)
    return float(offsets[-1]) if offsets.size else 0.0


def pace(
    events: Iterable[T],
    offsets: Sequence[float] | np.ndarray,
    clock: Clock,
    min_sleep_s: float = MIN_SLEEP_S,
) -> Iterator[T]:
    """Yield each event once the clock reaches its planned offset from the first yield.

    ``offsets`` is ``planned_offsets(...)`` for exactly these events. Waits under ``min_sleep_s``
    are skipped; because every target is measured from the anchor, the next wait absorbs them.
    """
    start: float | None = None
    for event, offset in zip(events, offsets, strict=True):
        if start is None:
            start = clock.now()
        else:
            wait = start + float(offset) - clock.now()
            if wait >= min_sleep_s:
                clock.sleep(wait)
        yield event
