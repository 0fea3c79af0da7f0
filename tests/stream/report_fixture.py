"""A synthetic run folder for the report tests: predictions of three models with a known shift.

Not a real model run: ranks are drawn so that after the shift the cohort's frozen twin loses hit
rate for good while the adaptive model loses it and then recovers over ``recover_days``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from replay.datasets import GROUND_TRUTH_SCHEMA
from stream.aggregate import prediction_rows, window_table
from stream.records import Prediction

DAY_S = 86_400.0
START = 9.6e8  # 2000-06-03, event time
MODELS = ("pop", "ttt4rec", "ttt4rec:frozen")


def _hit_probability(model: str, shifted: bool, days_after: float, recover_days: float) -> float:
    base = {"pop": 0.2, "ttt4rec": 0.45, "ttt4rec:frozen": 0.4}[model]
    if not shifted:
        return base
    if model == "ttt4rec":
        return base * (0.3 + 0.7 * min(1.0, days_after / recover_days))
    return base * 0.3


def make_run(
    folder: Path,
    n_users: int = 40,
    n_events: int = 4000,
    days: float = 40.0,
    shift_day: float = 20.0,
    cohort_size: int = 12,
    recover_days: float = 6.0,
    seed: int = 0,
    with_windows: bool = True,
    pretrain_day: float | None = 4.0,
) -> Path:
    rng = np.random.default_rng(seed)
    users = rng.integers(1, n_users + 1, size=n_events)
    times = START + np.sort(rng.uniform(0, days * DAY_S, size=n_events)).round()
    cohort = set(range(1, cohort_size + 1))
    shift_time = START + shift_day * DAY_S
    produced = 1.7e12 + np.arange(n_events) * 2.0  # 500 events/s of wall clock
    predictions, written = [], []
    for event_id in range(n_events):
        user, time = int(users[event_id]), float(times[event_id])
        shifted = user in cohort and time >= shift_time
        for model in MODELS:
            p = _hit_probability(model, shifted, (time - shift_time) / DAY_S, recover_days)
            rank = int(rng.integers(1, 11)) if rng.random() < p else int(rng.integers(11, 200))
            unrankable = rng.random() < 0.02
            predictions.append(
                Prediction(
                    event_id=event_id,
                    user=user,
                    item=int(rng.integers(1, 300)),
                    time=time,
                    model=model,
                    rank=None if unrankable else rank,
                    n_candidates=300,
                    cold_user=event_id < n_users,
                    shift_score=None
                    if model == "pop"
                    else float(
                        rng.gamma(2.0, 1.0) + (3.0 if shifted and time < shift_time + DAY_S else 0)
                    ),
                    cohort=user in cohort,
                    shifted=shifted,
                    produced_ms=float(produced[event_id]),
                    predicted_ms=float(produced[event_id] + 3.0),
                    batch_size=8,
                )
            )
            written.append(float(produced[event_id] + rng.gamma(2.0, 5.0)))
    rows = prediction_rows(predictions, written)
    rows.write_parquet(folder / "predictions.parquet")
    if with_windows:
        window_table(rows, size_s=DAY_S, half_life_s=3 * DAY_S).write_parquet(
            folder / "windows.parquet"
        )
    truth = pl.DataFrame(
        {
            "user": sorted(cohort),
            "shift_time": [shift_time] * len(cohort),
            "kind": ["genre-swap"] * len(cohort),
            "width": [0.0] * len(cohort),
            "old_topics": [["Drama"]] * len(cohort),
            "new_topics": [["Horror"]] * len(cohort),
            "details": ["{}"] * len(cohort),
        },
        schema=GROUND_TRUTH_SCHEMA,
    )
    truth.write_parquet(folder / "ground_truth.parquet")
    manifest: dict[str, object] = {
        "settings": {"window_s": DAY_S, "half_life_s": 3 * DAY_S, "models": list(MODELS)},
        "ground_truth": "ground_truth.parquet",
    }
    if pretrain_day is not None:
        manifest["pretrain_cutoff_time"] = START + pretrain_day * DAY_S
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder
