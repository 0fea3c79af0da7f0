"""Pacing with a fake clock: exact planned sleeps, --max-gap, max speed; nothing really sleeps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from replay.pacing import (
    MIN_SLEEP_S,
    FakeClock,
    Speed,
    SpeedError,
    pace,
    parse_speed,
    planned_offsets,
    planned_seconds,
)


def reference_offsets(times: list[float], factor: float, max_gap: float | None) -> list[float]:
    """Obviously-correct loop: each gap divided by the factor, capped, summed."""
    offsets, total = [], 0.0
    for previous, current in zip([times[0], *times], times, strict=False):
        gap = (current - previous) / factor
        if max_gap is not None:
            gap = min(gap, max_gap)
        total += gap
        offsets.append(total)
    return offsets


@pytest.mark.parametrize(
    "text,factor", [("100x", 100.0), ("100", 100.0), ("2.5x", 2.5), ("1e5x", 1e5), (" 10X ", 10.0)]
)
def test_parse_speed_factors(text: str, factor: float) -> None:
    assert parse_speed(text).factor == factor


def test_parse_speed_max_and_rejects() -> None:
    assert parse_speed("max").is_max and str(parse_speed("max")) == "max"
    assert math.isinf(parse_speed("MAX").factor)
    for bad in ("0x", "-5x", "fast", "x", "", "1/2"):
        with pytest.raises(SpeedError):
            parse_speed(bad)


def test_planned_offsets_match_the_reference() -> None:
    rng = np.random.default_rng(0)
    times = np.cumsum(rng.exponential(50.0, 1_000) * (rng.random(1_000) < 0.7)) + 9.7e8
    for factor, cap in [(100.0, None), (1000.0, 0.02), (7.0, 1.5)]:
        fast = planned_offsets(times, Speed(factor), cap)
        slow = reference_offsets(times.tolist(), factor, cap)
        np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-9)
    assert planned_seconds(times, parse_speed("max")) == 0.0
    assert planned_seconds([], Speed(10.0)) == 0.0


def test_fake_clock_sleeps_exactly_the_plan() -> None:
    times = [0.0, 100.0, 100.0, 250.0, 1250.0]
    clock = FakeClock(start=50.0)
    offsets = planned_offsets(times, parse_speed("100x"))
    sent = []
    for event in pace(times, offsets, clock):
        sent.append((event, clock.now() - 50.0))
    assert clock.sleeps == pytest.approx([1.0, 1.5, 10.0])  # tie -> no sleep
    assert [at for _, at in sent] == pytest.approx([0.0, 1.0, 1.0, 2.5, 12.5])


def test_max_gap_caps_each_wait() -> None:
    times = [0.0, 10_000.0, 10_100.0, 50_000.0]
    clock = FakeClock()
    list(pace(times, planned_offsets(times, Speed(100.0), max_gap_s=2.0), clock))
    assert clock.sleeps == pytest.approx([2.0, 1.0, 2.0])


def test_short_waits_are_skipped_but_never_accumulate() -> None:
    # 4 ms apart at 1x: waits under 10 ms are skipped, and the anchored schedule catches up
    times = [i * 0.004 for i in range(11)]
    clock = FakeClock()
    list(pace(times, planned_offsets(times, Speed(1.0)), clock))
    assert clock.sleeps == pytest.approx([0.012, 0.012, 0.012])
    assert abs(clock.now() - 0.04) < MIN_SLEEP_S  # the last 4 ms wait is skipped, no more

    long_times = [i * 0.004 for i in range(10_001)]  # 40 s of 4 ms gaps
    clock = FakeClock()
    list(pace(long_times, planned_offsets(long_times, Speed(1.0)), clock))
    assert all(s >= MIN_SLEEP_S for s in clock.sleeps)
    assert abs(clock.now() - 40.0) < MIN_SLEEP_S  # skipped waits did not add up


def test_time_spent_sending_is_absorbed_by_the_schedule() -> None:
    times = [float(i) for i in range(6)]
    clock = FakeClock(work_per_call_s=0.3)  # each clock read costs 0.3 s of "work"
    list(pace(times, planned_offsets(times, Speed(1.0)), clock))
    # plan: one event per second after the anchor (t = 0.3); each wait shrinks by the work
    assert clock.sleeps == pytest.approx([0.7] * 5)
    assert clock.time == pytest.approx(0.3 + 5.0)  # the work did not push the schedule back


def test_max_speed_never_sleeps() -> None:
    times = [0.0, 1e6, 2e6]
    clock = FakeClock()
    assert list(pace(times, planned_offsets(times, parse_speed("max")), clock)) == times
    assert clock.sleeps == []
