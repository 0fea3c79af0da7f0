"""The synthetic generator: identical bytes per seed, shifts exactly as its ground truth says."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from replay.datasets import InteractionLog
from replay.schema import Interaction, encode
from replay.synthetic import SyntheticConfig, generate

SMALL = SyntheticConfig(users=300, items=400, events=30_000, topics=6, seed=7)


def stream_bytes(log: InteractionLog) -> bytes:
    columns = ("event_id", "user", "item", "rating", "time", "cohort", "shifted")
    return b"\n".join(
        encode(Interaction(e, u, i, r, t, log.name, c, s))
        for e, u, i, r, t, c, s in log.events.select(columns).iter_rows()
    )


def test_same_seed_gives_identical_bytes() -> None:
    first, second = generate(SMALL), generate(SMALL)
    assert stream_bytes(first) == stream_bytes(second)
    assert first.ground_truth is not None and second.ground_truth is not None
    assert first.ground_truth.equals(second.ground_truth)
    other = generate(SyntheticConfig(**{**SMALL.__dict__, "seed": 8}))
    assert stream_bytes(other) != stream_bytes(first)


def test_sizes_order_and_bursty_times() -> None:
    log = generate(SMALL)
    events = log.events
    assert events.height == SMALL.events
    assert events["user"].n_unique() == SMALL.users
    assert events["item"].is_between(1, SMALL.items).all()
    assert events["event_id"].to_list() == list(range(events.height))
    assert (events["time"].diff().drop_nulls() >= 0).all()
    gaps = events.sort("user", "time").group_by("user").agg(pl.col("time").diff().drop_nulls())
    gaps_s = np.concatenate([np.asarray(g) for g in gaps["time"].to_list()])
    # sessions: most gaps are short, a few are very long (bursty, not Poisson)
    assert np.median(gaps_s) < 600 and np.percentile(gaps_s, 99) > 86_400
    counts = events.group_by("item").len()["len"].to_numpy()
    assert counts.max() > 10 * np.median(counts)  # skewed popularity


def topics_of(log: InteractionLog) -> dict[int, str]:
    assert log.items is not None
    return {item: genres[0] for item, genres in log.items.select("item", "genres").iter_rows()}


@pytest.mark.parametrize("kind", ["abrupt", "gradual"])
def test_ground_truth_matches_the_generated_shifts(kind: str) -> None:
    config = SyntheticConfig(**{**SMALL.__dict__, "shift_kind": kind})
    log = generate(config)
    truth = log.ground_truth
    assert truth is not None
    events = log.events
    topic = topics_of(log)
    cohort = set(events.filter(pl.col("cohort"))["user"].unique().to_list())
    assert cohort == set(truth["user"].to_list())
    assert len(cohort) == round(config.cohort_frac * config.users)
    assert set(truth["kind"].to_list()) == {kind}
    shift = truth["shift_time"][0]
    assert events.filter(pl.col("shifted")).equals(
        events.filter(pl.col("cohort") & (pl.col("time") >= shift))
    )
    old_share, total_before = 0, 0
    for user, width, old_topics, new_topics, details in truth.select(
        "user", "width", "old_topics", "new_topics", "details"
    ).iter_rows():
        mixtures = json.loads(details)
        new = np.array(mixtures["new_mixture"])
        assert all(new[int(t.split("-")[1])] == 0 for t in old_topics)
        assert new_topics and not set(new_topics) & set(old_topics)
        mine = events.filter(pl.col("user") == user)
        late = mine.filter(pl.col("time") >= shift + 20 * width)  # p(new) > 1 - 2e-9
        assert not {topic[i] for i in late["item"].to_list()} & set(old_topics)
        early = mine.filter(pl.col("time") < shift - 20 * width)
        old_share += sum(topic[i] in old_topics for i in early["item"].to_list())
        total_before += early.height
    assert old_share / total_before > 0.6  # dominant topics cover >= 70% of the old mixture
    assert not events.filter(~pl.col("cohort"))["shifted"].any()


def test_gradual_shift_mixes_around_the_midpoint() -> None:
    config = SyntheticConfig(
        **{
            **SMALL.__dict__,
            "shift_kind": "gradual",
            "users": 600,
            "events": 60_000,
            "shift_width_frac": 0.05,
        }
    )
    log = generate(config)
    truth = log.ground_truth
    assert truth is not None
    topic = topics_of(log)
    shift, width = truth["shift_time"][0], truth["width"][0]
    old_of = {u: set(t) for u, t in truth.select("user", "old_topics").iter_rows()}
    near = log.events.filter(pl.col("cohort") & ((pl.col("time") - shift).abs() < 0.5 * width))
    in_old = np.mean([topic[i] in old_of[u] for u, i in near.select("user", "item").iter_rows()])
    assert 0.15 < in_old < 0.85  # neither all-old nor all-new inside the sigmoid's core


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="events .* must be at least users"):
        SyntheticConfig(users=10, events=5)
    with pytest.raises(ValueError, match="shift time"):
        SyntheticConfig(shift_at=1.5)
