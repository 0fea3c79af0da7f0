"""Pure numeric measures behind the report: signed McNemar and shift-recovery analysis.

Both work on plain arrays so they can be checked on hand-built inputs; the report feeds them
series computed from the run's Parquet files (``stream.report.tables``).

>>> signed_mcnemar(n10=9, n01=1)  # (9 - 1)^2 / (9 + 1), A better
6.4
>>> sliding_signed_mcnemar(np.array([1, 1, 0, 1]), np.array([0, 1, 1, 0]), n=2).tolist()
[1.0, 1.0, -1.0, 0.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CHI2_1DF_05 = 3.84  # |M| above: paired difference significant at p < 0.05
CHI2_1DF_01 = 6.63  # p < 0.01


def signed_mcnemar(n10: int, n01: int) -> float:
    """sign(n10 - n01) (n10 - n01)^2 / (n10 + n01); 0 when the two never disagree."""
    disagreements = n10 + n01
    if disagreements == 0:
        return 0.0
    difference = n10 - n01
    return math.copysign(difference * difference / disagreements, difference)


def sliding_signed_mcnemar(a_hits: np.ndarray, b_hits: np.ndarray, n: int) -> np.ndarray:
    """Signed McNemar of A vs B over the last ``n`` paired events, at every event.

    ``a_hits`` and ``b_hits`` are aligned 0/1 arrays (same events, same order). The first
    ``n - 1`` values use every event so far. Positive: A hits where B misses more often.
    """
    if n < 1:
        raise ValueError(f"McNemar window must hold at least 1 event, got {n}")
    if a_hits.shape != b_hits.shape:
        raise ValueError(f"paired hit arrays differ in shape: {a_hits.shape} vs {b_hits.shape}")
    a = a_hits.astype(bool)
    b = b_hits.astype(bool)
    n10 = _trailing_sums((a & ~b).astype(np.int64), n)
    n01 = _trailing_sums((~a & b).astype(np.int64), n)
    disagreements = n10 + n01
    difference = (n10 - n01).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = np.sign(difference) * difference**2 / disagreements
    return np.where(disagreements > 0, statistic, 0.0)


def _trailing_sums(values: np.ndarray, n: int) -> np.ndarray:
    totals = np.cumsum(values)
    shifted = np.concatenate([np.zeros(min(n, totals.size), np.int64), totals[:-n]])
    return totals - shifted[: totals.size]


@dataclass(frozen=True)
class Recovery:
    """Recovery of a windowed metric after a shift at ``shift_time`` (§2.5)."""

    pre_level: float  # mean value over [shift - pre_span, shift)
    min_value: float  # lowest value in [shift, shift + horizon)
    max_drop: float  # pre_level - min_value (negative: it only went up)
    dipped: bool  # some post-shift value fell below pre_level - epsilon
    recovered: bool  # back within epsilon (and held) before the horizon ended
    recovery_s: float | None  # event time from the shift to the recovery point
    recovery_events: int | None  # events from the shift to the recovery point
    degradation_area: float  # sum of max(0, pre - v) * step_s over post points (metric x s)
    lost_events: float  # sum of max(0, pre - v) * count (HR: expected hits lost)


def recovery(
    times: np.ndarray,
    values: np.ndarray,
    shift_time: float,
    pre_span_s: float,
    horizon_s: float,
    epsilon: float,
    step_s: float,
    counts: np.ndarray | None = None,
    hold: int = 1,
    relative: bool = False,
) -> Recovery | None:
    """Recovery measures of a windowed series; ``None`` if it has no point before or after.

    ``times`` are the window starts (sorted, windows aligned so none straddles the shift),
    ``values`` the windowed metric, ``counts`` the events per window (the pre-level is then the
    per-event mean, and event counts are reported; without counts every point counts 1).
    Recovery: the first post-shift point, after the first dip below ``pre - epsilon``, that starts
    ``hold`` consecutive points all at or above ``pre - epsilon``; its time minus the shift is the
    recovery time and the events in the post-shift windows before it are the recovery events.
    No dip at all: recovered at once (0 s, 0 events). ``relative``: the tolerance is
    ``epsilon * pre_level`` instead of ``epsilon``.
    """
    weights = np.ones_like(values, dtype=np.float64) if counts is None else counts.astype(float)
    pre = (times >= shift_time - pre_span_s) & (times < shift_time)
    post = (times >= shift_time) & (times < shift_time + horizon_s)
    if not pre.any() or not post.any() or weights[pre].sum() == 0:
        return None
    pre_level = float(np.average(values[pre], weights=weights[pre]))
    post_times, post_values, post_weights = times[post], values[post], weights[post]
    tolerance = epsilon * pre_level if relative else epsilon
    below = post_values < pre_level - tolerance
    deficit = np.maximum(pre_level - post_values, 0.0)
    recovery_s: float | None = None
    recovery_events: int | None = None
    if not below.any():
        recovery_s, recovery_events = 0.0, 0
    else:
        first_dip = int(np.argmax(below))
        for index in range(first_dip + 1, len(post_values) - hold + 1):
            if not below[index : index + hold].any():
                recovery_s = float(post_times[index] - shift_time)
                recovery_events = int(post_weights[:index].sum())
                break
    return Recovery(
        pre_level=pre_level,
        min_value=float(post_values.min()),
        max_drop=float(pre_level - post_values.min()),
        dipped=bool(below.any()),
        recovered=recovery_s is not None,
        recovery_s=recovery_s,
        recovery_events=recovery_events,
        degradation_area=float(deficit.sum() * step_s),
        lost_events=float((deficit * post_weights).sum()),
    )
