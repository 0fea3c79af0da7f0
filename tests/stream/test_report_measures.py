"""The report's pure measures on hand-built inputs with hand-computed answers."""

from __future__ import annotations

import numpy as np
import pytest

from stream.report.measures import Recovery, recovery, signed_mcnemar, sliding_signed_mcnemar

A = np.array([1, 1, 1, 0, 0, 1, 1, 0, 1, 1])
B = np.array([0, 1, 0, 0, 1, 0, 0, 0, 0, 1])
# pairs: 10 11 10 00 01 10 10 00 10 11 -> whole run n10 = 5, n01 = 1


def test_signed_mcnemar_whole_sequence() -> None:
    assert signed_mcnemar(5, 1) == pytest.approx(16 / 6)
    assert signed_mcnemar(1, 5) == pytest.approx(-16 / 6)
    assert signed_mcnemar(0, 0) == 0.0
    assert signed_mcnemar(9, 1) == pytest.approx(6.4)


def test_sliding_signed_mcnemar_by_hand() -> None:
    # window of 4: t0..t3 grow (n10 = 1, 1, 2, 2), then e.g. t5 covers pairs 2..5: 10 00 01 10
    expected = [1.0, 1.0, 2.0, 2.0, 0.0, 1 / 3, 1 / 3, 1 / 3, 3.0, 2.0]
    np.testing.assert_allclose(sliding_signed_mcnemar(A, B, 4), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sliding_signed_mcnemar(B, A, 4), -np.array(expected), atol=1e-12)
    whole = sliding_signed_mcnemar(A, B, 100)
    assert whole[-1] == pytest.approx(16 / 6)


def test_sliding_mcnemar_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        sliding_signed_mcnemar(A, B, 0)
    with pytest.raises(ValueError, match="shape"):
        sliding_signed_mcnemar(A, B[:-1], 3)


# time 0..9 (step 1), shift at 4, pre-level over [1, 4): values 0.4, 0.5, 0.6 with 10, 20, 10
# events -> (4 + 10 + 6) / 40 = 0.5. After: 0.2, 0.3, 0.44 (all below 0.5 - 0.05), 0.47 (back
# within epsilon at t = 7), 0.6, 0.4.
TIMES = np.arange(10, dtype=float)
VALUES = np.array([0.9, 0.4, 0.5, 0.6, 0.2, 0.3, 0.44, 0.47, 0.6, 0.4])
COUNTS = np.array([99, 10, 20, 10, 10, 20, 10, 10, 10, 10])


def measure(**overrides: object) -> Recovery:
    arguments: dict[str, object] = dict(
        times=TIMES, values=VALUES, shift_time=4.0, pre_span_s=3.0, horizon_s=6.0,
        epsilon=0.05, step_s=1.0, counts=COUNTS,
    )  # fmt: skip
    arguments.update(overrides)
    result = recovery(**arguments)  # type: ignore[arg-type]
    assert result is not None
    return result


def test_recovery_known_drop_and_recovery() -> None:
    r = measure()
    assert r.pre_level == pytest.approx(0.5, abs=1e-12)
    assert r.min_value == pytest.approx(0.2)
    assert r.max_drop == pytest.approx(0.3, abs=1e-12)
    assert r.dipped and r.recovered
    assert r.recovery_s == pytest.approx(3.0)  # t = 7 minus the shift at 4
    assert r.recovery_events == 40  # windows at t = 4, 5, 6: 10 + 20 + 10
    # deficits 0.3, 0.2, 0.06, 0.03, 0, 0.1 over t = 4..9
    assert r.degradation_area == pytest.approx(0.69, abs=1e-12)
    assert r.lost_events == pytest.approx(3 + 4 + 0.6 + 0.3 + 0 + 1.0, abs=1e-12)


def test_recovery_relative_epsilon() -> None:
    # 10% of the pre-level 0.5 is the absolute tolerance 0.05 of the test above
    assert measure(epsilon=0.1, relative=True) == measure()
    # 1% (0.005): day 7 (0.47) is still below 0.495 and day 8 (0.6) is the first one back
    strict = measure(epsilon=0.01, relative=True)
    assert strict.recovery_s == pytest.approx(4.0)
    assert strict.recovery_events == 50


def test_recovery_horizon_and_hold() -> None:
    shorter = measure(horizon_s=5.0)  # t = 9 left out
    assert shorter.degradation_area == pytest.approx(0.59, abs=1e-12)
    assert shorter.lost_events == pytest.approx(7.9, abs=1e-12)
    held = measure(hold=2)  # t = 7 and 8 are both within epsilon
    assert held.recovery_s == pytest.approx(3.0)
    never = measure(hold=3)  # t = 9 dips again, nothing holds for 3 points
    assert not never.recovered
    assert never.recovery_s is None and never.recovery_events is None


def test_recovery_unweighted_pre_level_and_no_dip() -> None:
    unweighted = measure(counts=None)
    assert unweighted.pre_level == pytest.approx(0.5)
    assert unweighted.recovery_events == 3  # points, not events
    flat = recovery(TIMES, np.full(10, 0.5), 4.0, 3.0, 6.0, 0.05, 1.0)
    assert flat is not None
    assert flat.recovered and not flat.dipped
    assert (flat.recovery_s, flat.recovery_events, flat.max_drop) == (0.0, 0, 0.0)


def test_recovery_needs_points_on_both_sides() -> None:
    assert recovery(TIMES, VALUES, 1.0, 0.5, 6.0, 0.05, 1.0) is None  # nothing in [0.5, 1)
    assert recovery(TIMES, VALUES, 20.0, 3.0, 6.0, 0.05, 1.0) is None  # nothing after


def test_doctests() -> None:
    import doctest

    import stream.report.measures

    assert doctest.testmod(stream.report.measures).failed == 0
