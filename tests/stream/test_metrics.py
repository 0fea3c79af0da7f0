"""Metric objects (hand-computed values), windows, fading, and the polars fast path agreeing
with them."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from stream.aggregate import prediction_rows, window_table
from stream.metrics import (
    MRR,
    NDCG,
    Cumulative,
    EventTimeFading,
    HitRate,
    Mean,
    TumblingWindows,
    hit_at,
    ndcg_at,
    reciprocal_rank,
)
from stream.records import Prediction


def test_hand_computed_values() -> None:
    ranks = [1, 2, 5, 11, None, 20]
    hr5, hr10, hr20 = HitRate(5), HitRate(10), HitRate(20)
    ndcg10, mrr = NDCG(10), MRR()
    for rank in ranks:
        for metric in (hr5, hr10, hr20, ndcg10, mrr):
            metric.update(rank)
    assert hr5.get() == pytest.approx(3 / 6)
    assert hr10.get() == pytest.approx(3 / 6)
    assert hr20.get() == pytest.approx(5 / 6)
    # NDCG@10: 1/log2(2) + 1/log2(3) + 1/log2(6), over 6 events
    assert ndcg10.get() == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 6)
    assert mrr.get() == pytest.approx((1 + 0.5 + 0.2 + 1 / 11 + 0 + 0.05) / 6)


def test_boundaries_and_unrankable() -> None:
    assert hit_at(10, 10) == 1 and hit_at(11, 10) == 0 and hit_at(None, 10) == 0
    assert ndcg_at(1, 1) == 1.0 and ndcg_at(2, 1) == 0.0 and ndcg_at(None, 5) == 0.0
    assert reciprocal_rank(None) == 0.0 and reciprocal_rank(4) == 0.25


def test_revert_undoes_update() -> None:
    metric = NDCG(10)
    metric.update(3)
    metric.update(1)
    metric.revert(1)
    assert metric.get() == pytest.approx(1 / math.log2(4))
    mean = Mean()
    assert mean.get() == 0.0


def test_tumbling_windows_ignore_arrival_order() -> None:
    pairs = [(5.0, 1), (25.0, 3), (12.0, None), (19.9, 2), (20.0, 1)]
    forward = TumblingWindows(lambda: HitRate(2), size_s=10.0)
    backward = TumblingWindows(lambda: HitRate(2), size_s=10.0)
    for time, rank in pairs:
        forward.update(time, rank)
    for time, rank in reversed(pairs):
        backward.update(time, rank)
    expected = [(0.0, 10.0, 1.0), (10.0, 20.0, 0.5), (20.0, 30.0, 0.5)]
    for windows in (forward, backward):
        assert [(w.start, w.end, w.metric.get()) for w in windows.windows()] == expected


def test_event_time_fading_halves_weight_per_half_life() -> None:
    fading = EventTimeFading(lambda rank: float(hit_at(rank, 1)), half_life_s=100.0)
    fading.update(0.0, 1)  # hit
    fading.update(100.0, 5)  # miss, one half-life later: the hit weighs 0.5
    assert fading.get() == pytest.approx(0.5 / 1.5)
    fading.update(100.0, 1)  # same time: no decay
    assert fading.get() == pytest.approx(1.5 / 2.5)
    with pytest.raises(ValueError, match="backwards"):
        fading.update(50.0, 1)


def _random_predictions(n: int, seed: int) -> list[Prediction]:
    rng = np.random.default_rng(seed)
    times = np.sort(rng.uniform(0, 10 * 86_400, size=n))
    out = []
    for event_id, time in enumerate(times):
        for model in ("a", "b"):
            rank = None if rng.random() < 0.1 else int(rng.integers(1, 40))
            out.append(
                Prediction(
                    event_id=event_id,
                    user=int(rng.integers(0, 15)),
                    item=int(rng.integers(0, 50)),
                    time=float(time),
                    model=model,
                    rank=rank,
                    n_candidates=40,
                    cold_user=bool(rng.random() < 0.1),
                    cold_item=rank is None,
                )
            )
    return out


def test_window_table_equals_the_metric_objects() -> None:
    predictions = _random_predictions(500, seed=1)
    size, half_life = 86_400.0, 2 * 86_400.0
    table = window_table(prediction_rows(predictions), size_s=size, half_life_s=half_life)
    for model in ("a", "b"):
        mine = [p for p in predictions if p.model == model]
        rows = table.filter(pl.col("model") == model).sort("window")
        hr10 = TumblingWindows(lambda: HitRate(10), size)
        ndcg20 = TumblingWindows(lambda: NDCG(20), size)
        mrr = TumblingWindows(MRR, size)
        cumulative = Cumulative(HitRate(10))
        fading = EventTimeFading(lambda r: ndcg_at(r, 10), half_life)
        cum_expected, fading_expected = [], []
        for p in sorted(mine, key=lambda p: (p.time, p.event_id)):
            hr10.update(p.time, p.rank)
            ndcg20.update(p.time, p.rank)
            mrr.update(p.time, p.rank)
        # cumulative / fading values at each window's end
        by_window: dict[int, list[Prediction]] = {}
        for p in sorted(mine, key=lambda p: (p.time, p.event_id)):
            by_window.setdefault(hr10.index(p.time), []).append(p)
        for k in sorted(by_window):
            for p in by_window[k]:
                cumulative.update(p.time, p.rank)
                fading.update(p.time, p.rank)
            cum_expected.append(cumulative.get())
            fading_expected.append(fading.get())
        windows = hr10.windows()
        assert rows["window_start"].to_list() == [w.start for w in windows]
        assert rows["n_events"].to_list() == [w.metric.n for w in windows]  # type: ignore[attr-defined]
        np.testing.assert_allclose(rows["hr@10"], [w.metric.get() for w in windows], atol=1e-12)
        np.testing.assert_allclose(
            rows["ndcg@20"], [w.metric.get() for w in ndcg20.windows()], atol=1e-12
        )
        np.testing.assert_allclose(rows["mrr"], [w.metric.get() for w in mrr.windows()], atol=1e-12)
        np.testing.assert_allclose(rows["cum_hr@10"], cum_expected, atol=1e-12)
        np.testing.assert_allclose(rows["fading_ndcg@10"], fading_expected, atol=1e-9)
        users = {k: {p.user for p in ps} for k, ps in by_window.items()}
        assert rows["n_users"].to_list() == [len(users[k]) for k in sorted(users)]
        cold = [sum(p.cold_user for p in by_window[k]) for k in sorted(by_window)]
        assert rows["n_cold_user"].to_list() == cold


def test_macro_average_weighs_each_user_once() -> None:
    predictions = [
        Prediction(event_id=i, user=1, item=1, time=1.0, model="m", rank=1, n_candidates=5)
        for i in range(3)
    ] + [Prediction(event_id=3, user=2, item=1, time=2.0, model="m", rank=50, n_candidates=60)]
    row = window_table(prediction_rows(predictions), size_s=100.0).row(0, named=True)
    assert row["hr@10"] == pytest.approx(0.75)
    assert row["macro_hr@10"] == pytest.approx(0.5)
