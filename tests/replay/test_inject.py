"""Shift injection: deterministic, ground truth right, only the cohort changes, only after t*."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from replay.datasets import InteractionLog, load_ml1m_dir, order_events
from replay.inject import (
    INJECT_KINDS,
    InjectConfig,
    InjectionError,
    inject,
    item_clusters,
    item_permutation,
    shift_time,
)

ROW = ["user", "item", "rating", "time"]


@pytest.fixture(scope="module")
def subset(ml1m_subset_dir: Path) -> InteractionLog:
    # users 1-600 (all their events) keep the tests fast; plenty of users on both sides of t*
    log = load_ml1m_dir(ml1m_subset_dir)
    events = order_events(log.events.filter(pl.col("user") <= 600).drop("event_id"))
    return InteractionLog(name=log.name, events=events, items=log.items)


def rows(frame: pl.DataFrame) -> list[tuple[object, ...]]:
    return sorted(frame.select(ROW).rows(), key=lambda r: (r[0], r[3], r[1]))


@pytest.mark.parametrize("kind", INJECT_KINDS)
def test_injection_changes_only_the_cohort_after_t_star(subset: InteractionLog, kind: str) -> None:
    config = InjectConfig(kind=kind, at="0.6", cohort_frac=0.3, seed=11)  # type: ignore[arg-type]
    shifted = inject(subset, config)
    again = inject(subset, config)
    assert shifted.events.equals(again.events)  # deterministic
    assert shifted.ground_truth is not None and again.ground_truth is not None
    assert shifted.ground_truth.equals(again.ground_truth)

    truth = shifted.ground_truth
    at = shift_time(subset.events["time"].to_numpy(), "0.6")
    assert set(truth["shift_time"].to_list()) == {at}
    assert set(truth["kind"].to_list()) == {kind}
    cohort = truth["user"].to_list()
    assert len(cohort) > 10
    events = shifted.events
    assert set(events.filter(pl.col("cohort"))["user"].unique().to_list()) == set(cohort)
    assert events.filter(pl.col("shifted")).equals(
        events.filter(pl.col("cohort") & (pl.col("time") >= at))
    )
    # the global order rule still holds, ids are 0..N-1
    assert events["event_id"].to_list() == list(range(events.height))
    times, users = events["time"].to_numpy(), events["user"].to_numpy()
    assert bool(np.all((np.diff(times) > 0) | ((np.diff(times) == 0) & (np.diff(users) >= 0))))

    in_cohort = pl.col("user").is_in(cohort)
    before = pl.col("time") < at
    original = subset.events
    assert rows(events.filter(~in_cohort)) == rows(original.filter(~in_cohort))
    assert rows(events.filter(in_cohort & before)) == rows(original.filter(in_cohort & before))
    changed = rows(events.filter(in_cohort & ~before)) != rows(original.filter(in_cohort & ~before))
    assert changed

    other_seed = inject(subset, InjectConfig(kind=kind, at="0.6", cohort_frac=0.3, seed=12))  # type: ignore[arg-type]
    assert not other_seed.events.equals(shifted.events)


def post(log: InteractionLog, user: int, at: float) -> pl.DataFrame:
    return log.events.filter((pl.col("user") == user) & (pl.col("time") >= at))


def test_genre_swap_moves_to_the_new_genre(subset: InteractionLog) -> None:
    shifted = inject(subset, InjectConfig(kind="genre-swap", at="0.6", seed=3))
    assert subset.items is not None and shifted.ground_truth is not None
    genres = {i: set(g) for i, g in subset.items.select("item", "genres").iter_rows()}
    for user, at, old, new, details in shifted.ground_truth.select(
        "user", "shift_time", "old_topics", "new_topics", "details"
    ).iter_rows():
        assert json.loads(details) == {"genres": "movies.dat"}
        assert len(old) == len(new) == 1 and old != new
        mine_before = subset.events.filter((pl.col("user") == user) & (pl.col("time") < at))
        counts: dict[str, int] = {}
        for item in mine_before["item"].to_list():
            for genre in genres[item]:
                counts[genre] = counts.get(genre, 0) + 1
        assert counts[old[0]] == max(counts.values())  # old = the dominant pre-shift genre
        for item in post(shifted, user, at)["item"].to_list():
            assert new[0] in genres[item] and old[0] not in genres[item]


def test_item_permute_applies_one_cyclic_permutation(subset: InteractionLog) -> None:
    shifted = inject(subset, InjectConfig(kind="item-permute", at="0.6", seed=5))
    permutation = item_permutation(subset.events["item"].to_numpy(), 5)
    assert all(a != b for a, b in permutation.items())
    assert sorted(permutation.values()) == sorted(permutation)
    assert shifted.ground_truth is not None
    for user, at in shifted.ground_truth.select("user", "shift_time").iter_rows():
        before = post(subset, user, at).sort("time", "item")
        after = post(shifted, user, at)
        assert sorted(after["item"].to_list()) == sorted(
            permutation[i] for i in before["item"].to_list()
        )


def test_user_splice_takes_the_donors_future(subset: InteractionLog) -> None:
    shifted = inject(subset, InjectConfig(kind="user-splice", at="0.6", seed=5))
    assert shifted.ground_truth is not None
    cohort = set(shifted.ground_truth["user"].to_list())
    for user, at, details in shifted.ground_truth.select(
        "user", "shift_time", "details"
    ).iter_rows():
        donor = json.loads(details)["donor"]
        assert donor not in cohort
        expected = post(subset, donor, at).select("item", "time").rows()
        assert sorted(post(shifted, user, at).select("item", "time").rows()) == sorted(expected)
        # the donor keeps its own history
        assert post(shifted, donor, at).select("item", "time").rows() == expected


def test_popularity_shock_replaces_a_share_with_shock_items(subset: InteractionLog) -> None:
    config = InjectConfig(kind="popularity-shock", at="0.6", seed=5, shock_items=10, shock_frac=0.5)
    shifted = inject(subset, config)
    assert shifted.ground_truth is not None
    details = json.loads(shifted.ground_truth["details"][0])
    shock = set(details["shock_items"])
    assert len(shock) == 10 and details["fraction"] == 0.5
    at = shifted.ground_truth["shift_time"][0]
    after = shifted.events.filter(pl.col("shifted"))
    share = after["item"].is_in(list(shock)).cast(pl.Float64).mean()
    assert isinstance(share, float) and 0.4 < share < 0.65  # 0.5 replaced, plus natural hits
    untouched = subset.events.filter(pl.col("time") >= at)["item"].is_in(list(shock))
    before_share = untouched.cast(pl.Float64).mean()
    assert isinstance(before_share, float) and before_share < 0.1


def test_shift_time_forms_and_errors(subset: InteractionLog) -> None:
    times = subset.events["time"].to_numpy()
    assert shift_time(times, "0.5") == times[times.size // 2]
    assert shift_time(times, "2000-12-01") == 975628800.0
    with pytest.raises(InjectionError, match="between 0 and 1"):
        shift_time(times, "1.5")
    with pytest.raises(InjectionError, match="unknown injection"):
        InjectConfig(kind="teleport")  # type: ignore[arg-type]
    with pytest.raises(InjectionError, match="no user has events both before and after"):
        inject(subset, InjectConfig(kind="item-permute", at="2010-01-01"))


def test_genre_swap_without_genres_uses_item_clusters(subset: InteractionLog) -> None:
    bare = InteractionLog(name="bare", events=subset.events, items=None)
    shifted = inject(bare, InjectConfig(kind="genre-swap", at="0.6", seed=2))
    assert shifted.ground_truth is not None
    assert json.loads(shifted.ground_truth["details"][0]) == {"genres": "item clusters"}
    clusters = item_clusters(subset.events)
    assert clusters["item"].n_unique() == subset.events["item"].n_unique()
    assert 2 <= len({g[0] for g in clusters["genres"].to_list()}) <= 8
    assert clusters.equals(item_clusters(subset.events))
