"""Interest-shift injection with known ground truth, on any log (evaluation-and-streaming.md §2.5).

From the shift time t* on, a cohort of users (``cohort_frac`` of the users active both before and
after t*, drawn with ``seed``) changes, in one of four ways:

- ``genre-swap``: each post-shift item is resampled, by popularity, from a new genre that the user
  did not favour (items that carry the user's dominant pre-shift genre are excluded). Genres come
  from ``movies.dat``; for logs without genres, from item clusters (``item_clusters``).
- ``item-permute``: item ids pass through one fixed cyclic permutation of the catalog
  (``item_permutation``): the same tastes, a "new catalog".
- ``user-splice``: the cohort user's post-shift history is replaced by a donor's post-shift history
  (a user outside the cohort, whose own events stay as they are): an abrupt identity change.
- ``popularity-shock``: a set of ``shock_items`` items becomes popular: a ``shock_frac`` share of
  the cohort's post-shift events is replaced by a uniformly drawn shock item.

Only the cohort's events at or after t* change; the result is re-ordered by ``order_events``
(the global order rule), ``cohort``/``shifted`` are set, and one ground-truth row per cohort user
is attached (``GROUND_TRUTH_SCHEMA``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import polars as pl

from replay.datasets import GROUND_TRUTH_SCHEMA, InteractionLog, order_events
from replay.select import parse_when

InjectKind = Literal["genre-swap", "item-permute", "user-splice", "popularity-shock"]
INJECT_KINDS: tuple[str, ...] = ("genre-swap", "item-permute", "user-splice", "popularity-shock")
CLUSTERS = 8  # item clusters stand in for genres in logs without them


class InjectionError(ValueError):
    """The injection cannot be applied to this log; the message says why."""


@dataclass(frozen=True)
class InjectConfig:
    kind: InjectKind
    at: str = "0.5"  # shift time: a date / ISO datetime, or a fraction of the events (0-1)
    cohort_frac: float = 0.2  # share of the users active both before and after t*
    seed: int = 0
    shock_items: int = 20  # popularity-shock: how many items become popular
    shock_frac: float = 0.5  # popularity-shock: share of the cohort's post-shift events replaced

    def __post_init__(self) -> None:
        if self.kind not in INJECT_KINDS:
            raise InjectionError(f"unknown injection {self.kind!r}; use {', '.join(INJECT_KINDS)}")
        if not 0.0 < self.cohort_frac <= 1.0:
            raise InjectionError(f"cohort fraction must be in (0, 1], got {self.cohort_frac}")
        if not 0.0 <= self.shock_frac <= 1.0:
            raise InjectionError(f"shock fraction must be in [0, 1], got {self.shock_frac}")


def shift_time(times: np.ndarray, at: str) -> float:
    """``at`` as epoch seconds: a fraction picks the event time at that position of the order."""
    try:
        fraction = float(at)
    except ValueError:
        return parse_when(at)
    if not 0.0 < fraction < 1.0:
        raise InjectionError(f"--inject-at fraction must be strictly between 0 and 1, got {at}")
    if times.size == 0:
        raise InjectionError("cannot inject a shift into an empty log")
    return float(times[min(int(fraction * times.size), times.size - 1)])


def item_permutation(items: np.ndarray, seed: int) -> dict[int, int]:
    """A cyclic permutation of the distinct ``items`` (no item maps to itself when there are >1)."""
    distinct = np.unique(items)
    order = np.random.default_rng([seed, 1]).permutation(distinct)
    return {int(a): int(b) for a, b in zip(order, np.roll(order, -1), strict=True)}


def item_clusters(events: pl.DataFrame, clusters: int = CLUSTERS, seed: int = 0) -> pl.DataFrame:
    """Items grouped by who interacts with them: random projection of the item-user incidence,
    then a few k-means rounds. Returns item, genres (``[cluster-K]``) like ``read_ml1m_movies``."""
    rng = np.random.default_rng([seed, 2])
    items, item_index = np.unique(events["item"].to_numpy(), return_inverse=True)
    users, user_index = np.unique(events["user"].to_numpy(), return_inverse=True)
    user_vectors = rng.standard_normal((users.size, 16))  # [U, 16]
    item_vectors = np.zeros((items.size, 16))  # [I, 16]
    np.add.at(item_vectors, item_index, user_vectors[user_index])
    item_vectors /= np.linalg.norm(item_vectors, axis=1, keepdims=True) + 1e-12
    k = min(clusters, items.size)
    centers = item_vectors[rng.choice(items.size, size=k, replace=False)]  # [K, 16]
    for _ in range(10):
        assignment = np.argmax(item_vectors @ centers.T, axis=1)
        for c in range(k):
            members = item_vectors[assignment == c]
            if members.size:
                center = members.mean(axis=0)
                centers[c] = center / (np.linalg.norm(center) + 1e-12)
    assignment = np.argmax(item_vectors @ centers.T, axis=1)
    return pl.DataFrame(
        {"item": items.astype(np.int64), "genres": [[f"cluster-{c}"] for c in assignment]},
        schema={"item": pl.Int64(), "genres": pl.List(pl.String())},
    )


def choose_cohort(
    users: np.ndarray, times: np.ndarray, at: float, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Sorted cohort among the users with events both before and at/after ``at``."""
    before = np.unique(users[times < at])
    after = np.unique(users[times >= at])
    eligible = np.intersect1d(before, after)
    if eligible.size == 0:
        raise InjectionError(
            "no user has events both before and after the shift time; choose another --inject-at"
        )
    size = max(1, round(fraction * eligible.size))
    return np.sort(rng.choice(eligible, size=size, replace=False))


def inject(log: InteractionLog, config: InjectConfig) -> InteractionLog:
    """Apply the injection; returns a new, re-ordered log with flags and ground truth."""
    events = log.events
    users = events["user"].to_numpy()
    times = events["time"].to_numpy()
    at = shift_time(times, config.at)
    # the cohort depends on the seed only, so every kind shifts the same users
    cohort_rng = np.random.default_rng([config.seed, 0])
    cohort = choose_cohort(users, times, at, config.cohort_frac, cohort_rng)
    rng = np.random.default_rng([config.seed, 10 + INJECT_KINDS.index(config.kind)])
    in_cohort = np.isin(users, cohort)
    post = in_cohort & (times >= at)
    if config.kind == "genre-swap":
        frame, truth = _genre_swap(log, cohort, post, at, rng)
    elif config.kind == "item-permute":
        frame, truth = _item_permute(events, cohort, post, at, config.seed)
    elif config.kind == "user-splice":
        frame, truth = _user_splice(events, cohort, at, rng)
    else:
        frame, truth = _popularity_shock(events, cohort, post, at, config, rng)
    frame = frame.with_columns(
        pl.col("user").is_in(cohort.tolist()).alias("cohort"),
    ).with_columns((pl.col("cohort") & (pl.col("time") >= at)).alias("shifted"))
    truth_frame = pl.DataFrame(truth, schema=GROUND_TRUTH_SCHEMA)
    return replace(log, events=order_events(frame.drop("event_id")), ground_truth=truth_frame)


def _rows_by_user(users: np.ndarray, wanted: np.ndarray) -> dict[int, np.ndarray]:
    """Row indices (ascending) of each wanted user."""
    rows = np.flatnonzero(np.isin(users, wanted))
    order = np.argsort(users[rows], kind="stable")
    rows = rows[order]
    bounds = np.flatnonzero(np.diff(users[rows])) + 1
    return {int(users[group[0]]): group for group in np.split(rows, bounds) if group.size}


def _truth(
    user: int, at: float, kind: str, old: list[str], new: list[str], details: Mapping[str, object]
) -> dict[str, object]:
    return {
        "user": int(user),
        "shift_time": at,
        "kind": kind,
        "width": 0.0,
        "old_topics": old,
        "new_topics": new,
        "details": json.dumps(details, sort_keys=True),
    }


def _genre_swap(
    log: InteractionLog, cohort: np.ndarray, post: np.ndarray, at: float, rng: np.random.Generator
) -> tuple[pl.DataFrame, list[dict[str, object]]]:
    events = log.events
    source = "movies.dat" if log.items is not None else "item clusters"
    genre_table = log.items if log.items is not None else item_clusters(events)
    genres_of: dict[int, list[str]] = {
        int(item): list(genres) for item, genres in genre_table.select("item", "genres").iter_rows()
    }
    popularity = Counter(events["item"].to_list())
    catalog = np.array(sorted(popularity), dtype=np.int64)
    weights = np.array([popularity[int(i)] for i in catalog], dtype=np.float64)
    all_genres = sorted({g for i in catalog for g in genres_of.get(int(i), [])})
    if len(all_genres) < 2:
        raise InjectionError("genre-swap needs at least two genres (or item clusters) in the log")
    users = events["user"].to_numpy()
    times = events["time"].to_numpy()
    items = events["item"].to_numpy().copy()
    rows_of = _rows_by_user(users, cohort)
    pools: dict[tuple[str, str], np.ndarray] = {}
    truth = []
    for user in cohort:
        rows = rows_of[int(user)]
        seen = items[rows[times[rows] < at]]
        counts = Counter(g for i in seen for g in genres_of.get(int(i), []))
        dominant = min(counts, key=lambda g: (-counts[g], g)) if counts else all_genres[0]
        choices = [g for g in all_genres if g != dominant]
        new_genre = choices[int(rng.integers(len(choices)))]
        if (dominant, new_genre) not in pools:
            pools[(dominant, new_genre)] = np.array(
                [
                    new_genre in genres_of.get(int(i), [])
                    and dominant not in genres_of.get(int(i), [])
                    for i in catalog
                ]
            )
        fits = pools[(dominant, new_genre)]
        if not fits.any():
            raise InjectionError(f"genre {new_genre!r} has no items outside genre {dominant!r}")
        fresh = fits & ~np.isin(catalog, seen)
        pool = fresh if fresh.any() else fits
        targets = rows[post[rows]]
        candidates, p = catalog[pool], weights[pool] / weights[pool].sum()
        unique = targets.size <= candidates.size
        picks = rng.choice(candidates.size, size=targets.size, replace=not unique, p=p)
        items[targets] = candidates[picks]
        truth.append(_truth(user, at, "genre-swap", [dominant], [new_genre], {"genres": source}))
    return events.with_columns(pl.Series("item", items, dtype=pl.Int64)), truth


def _item_permute(
    events: pl.DataFrame, cohort: np.ndarray, post: np.ndarray, at: float, seed: int
) -> tuple[pl.DataFrame, list[dict[str, object]]]:
    permutation = item_permutation(events["item"].to_numpy(), seed)
    items = events["item"].to_numpy().copy()
    items[post] = [permutation[int(i)] for i in items[post]]
    details = {"permutation_seed": seed, "items": len(permutation), "cyclic": True}
    truth = [_truth(user, at, "item-permute", [], [], details) for user in cohort]
    return events.with_columns(pl.Series("item", items, dtype=pl.Int64)), truth


def _user_splice(
    events: pl.DataFrame, cohort: np.ndarray, at: float, rng: np.random.Generator
) -> tuple[pl.DataFrame, list[dict[str, object]]]:
    after = events.filter(pl.col("time") >= at)
    donors = np.setdiff1d(np.unique(after["user"].to_numpy()), cohort)
    if donors.size == 0:
        raise InjectionError("user-splice needs users outside the cohort active after the shift")
    picked = rng.choice(donors, size=cohort.size, replace=cohort.size > donors.size)
    donor_of = dict(zip(cohort.tolist(), picked.tolist(), strict=True))
    kept = events.filter(~(pl.col("user").is_in(cohort.tolist()) & (pl.col("time") >= at)))
    spliced = [
        after.filter(pl.col("user") == donor).with_columns(
            pl.lit(user, dtype=pl.Int64).alias("user")
        )
        for user, donor in donor_of.items()
    ]
    frame = pl.concat([kept, *spliced], how="vertical")
    truth = [_truth(u, at, "user-splice", [], [], {"donor": d}) for u, d in donor_of.items()]
    return frame, truth


def _popularity_shock(
    events: pl.DataFrame,
    cohort: np.ndarray,
    post: np.ndarray,
    at: float,
    config: InjectConfig,
    rng: np.random.Generator,
) -> tuple[pl.DataFrame, list[dict[str, object]]]:
    catalog = np.unique(events["item"].to_numpy())
    count = min(config.shock_items, catalog.size)
    shock = np.sort(rng.choice(catalog, size=count, replace=False))
    items = events["item"].to_numpy().copy()
    rows = np.flatnonzero(post)
    replaced = rows[rng.random(rows.size) < config.shock_frac]
    items[replaced] = shock[rng.integers(count, size=replaced.size)]
    details = {"shock_items": shock.tolist(), "fraction": config.shock_frac}
    truth = [_truth(u, at, "popularity-shock", [], [], details) for u in cohort]
    return events.with_columns(pl.Series("item", items, dtype=pl.Int64)), truth
