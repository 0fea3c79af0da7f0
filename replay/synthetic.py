"""A synthetic interaction log whose users shift interest at known times.

Model of the log (all draws from one ``numpy.random.Generator`` seeded by ``seed``):

- items belong to ``topics`` latent topics (exposed as genres ``topic-K``); within a topic,
  popularity is Zipf-like (weight 1 / rank^``zipf_exponent``, ranks shuffled);
- each user has a topic mixture drawn from a Dirichlet(``dirichlet_alpha``); user activity is
  log-normal, so a few users are heavy, as in real logs;
- timestamps are bursty: a user's events come in sessions (a new session with probability
  1 / ``session_events``) that start at uniform times over ``span_days``; inside a session the gaps
  are exponential with mean ``session_gap_s``. Times are whole seconds, so ties occur as in ML-1M;
- a cohort (``cohort_frac`` of users) switches to a new mixture that puts no weight on its old
  dominant topics, at ``shift_at`` (fraction of the time span): abruptly, or gradually with
  sigmoid mixing p(new) = sigmoid((t - shift_time) / width) (MOA's ConceptDriftStream form).

Ground truth: one row per cohort user (``GROUND_TRUTH_SCHEMA``); ``shifted`` marks the cohort's
events at or after the shift time (the sigmoid midpoint for gradual shifts).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import polars as pl

from replay.datasets import GROUND_TRUTH_SCHEMA, InteractionLog, order_events

ShiftKind = Literal["abrupt", "gradual", "mixed"]
SHIFT_KINDS: tuple[str, ...] = ("abrupt", "gradual", "mixed")
DOMINANT_MASS = 0.7  # a user's dominant topics: the fewest covering this much of the mixture
MAX_DOMINANT = 3


@dataclass(frozen=True)
class SyntheticConfig:
    users: int = 1_000
    items: int = 2_000
    events: int = 100_000
    topics: int = 8
    cohort_frac: float = 0.2  # share of users whose interests shift
    shift_at: float = 0.5  # shift time as a fraction of the time span
    shift_kind: ShiftKind = "mixed"  # abrupt, gradual, or half of each
    shift_width_frac: float = 0.02  # sigmoid width of gradual shifts, fraction of the span
    seed: int = 0
    start_epoch: float = 1_577_836_800.0  # 2020-01-01T00:00:00Z
    span_days: float = 180.0
    dirichlet_alpha: float = 0.3  # < 1: users concentrate on a few topics
    zipf_exponent: float = 1.0
    session_events: float = 8.0  # mean events per session
    session_gap_s: float = 60.0  # mean gap between events inside a session

    def __post_init__(self) -> None:
        problems = []
        if self.users < 1 or self.items < 1 or self.topics < 2:
            problems.append("users and items must be >= 1 and topics >= 2")
        if self.items < self.topics:
            problems.append(f"items ({self.items}) must be at least topics ({self.topics})")
        if self.events < self.users:
            problems.append(f"events ({self.events}) must be at least users ({self.users})")
        if not 0.0 <= self.cohort_frac <= 1.0:
            problems.append(f"cohort fraction must be in [0, 1], got {self.cohort_frac}")
        if not 0.0 < self.shift_at < 1.0:
            problems.append(f"shift time must be a fraction in (0, 1), got {self.shift_at}")
        if self.shift_kind not in SHIFT_KINDS:
            problems.append(f"shift kind must be one of {', '.join(SHIFT_KINDS)}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def span_s(self) -> float:
        return self.span_days * 86_400.0


def topic_name(topic: int) -> str:
    return f"topic-{topic}"


def _item_topics(config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(config.items) % config.topics)  # every topic non-empty


def _topic_catalogs(
    config: SyntheticConfig, item_topic: np.ndarray, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per topic: (item indices, Zipf-like probabilities over them)."""
    catalogs = []
    for topic in range(config.topics):
        members = np.flatnonzero(item_topic == topic)
        ranks = rng.permutation(members.size) + 1.0
        weights = ranks ** (-config.zipf_exponent)
        catalogs.append((members, weights / weights.sum()))
    return catalogs


def _events_per_user(config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    floor = min(5, config.events // config.users)
    activity = rng.lognormal(0.0, 1.0, config.users)
    extra = rng.multinomial(config.events - floor * config.users, activity / activity.sum())
    return floor + extra


def _bursty_times(
    config: SyntheticConfig, owner: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Event times (whole seconds) for events grouped by ``owner`` (sorted user index)."""
    n = owner.size
    first_of_user = np.ones(n, dtype=bool)
    first_of_user[1:] = owner[1:] != owner[:-1]
    new_session = first_of_user | (rng.random(n) < 1.0 / config.session_events)
    session = np.cumsum(new_session) - 1  # global session index, sessions grouped by user
    session_owner = owner[new_session]
    starts = rng.uniform(0.0, config.span_s, session.max() + 1)
    # a user's sessions happen in index order: sort each user's start times
    order = np.lexsort((starts, session_owner))
    starts = starts[order]
    gaps = rng.exponential(config.session_gap_s, n)
    gaps[new_session] = 0.0
    within = np.cumsum(gaps)
    session_base = within[new_session][session]
    offsets = starts[session] + (within - session_base)
    return np.floor(config.start_epoch + offsets)


def _dominant(mixture: np.ndarray) -> np.ndarray:
    order = np.argsort(-mixture, kind="stable")
    mass = np.cumsum(mixture[order])
    count = min(int(np.searchsorted(mass, DOMINANT_MASS) + 1), MAX_DOMINANT)
    return np.sort(order[:count])


def _new_mixture(
    config: SyntheticConfig, old: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A mixture with no weight on ``old``'s dominant topics; returns (mixture, old dominant)."""
    old_dominant = _dominant(old)
    allowed = np.setdiff1d(np.arange(config.topics), old_dominant)
    mixture = np.zeros(config.topics)
    mixture[allowed] = rng.dirichlet(np.full(allowed.size, config.dirichlet_alpha))
    return mixture, old_dominant


def generate(config: SyntheticConfig) -> InteractionLog:
    """The log, ordered, with ``cohort``/``shifted`` set and ground truth attached."""
    rng = np.random.default_rng(config.seed)
    item_topic = _item_topics(config, rng)
    catalogs = _topic_catalogs(config, item_topic, rng)
    counts = _events_per_user(config, rng)
    owner = np.repeat(np.arange(config.users), counts)
    times = _bursty_times(config, owner, rng)

    old = rng.dirichlet(np.full(config.topics, config.dirichlet_alpha), config.users)
    new = old.copy()
    cohort_size = round(config.cohort_frac * config.users)
    cohort = np.sort(rng.choice(config.users, size=cohort_size, replace=False))
    in_cohort = np.zeros(config.users, dtype=bool)
    in_cohort[cohort] = True
    shift_time = config.start_epoch + config.shift_at * config.span_s
    width = config.shift_width_frac * config.span_s
    if config.shift_kind == "mixed":
        gradual = rng.random(cohort_size) < 0.5
    else:
        gradual = np.full(cohort_size, config.shift_kind == "gradual")
    user_width = np.zeros(config.users)
    user_width[cohort[gradual]] = width
    truth_rows = []
    for position, user in enumerate(cohort):
        new[user], old_dominant = _new_mixture(config, old[user], rng)
        truth_rows.append(
            {
                "user": int(user) + 1,
                "shift_time": shift_time,
                "kind": "gradual" if gradual[position] else "abrupt",
                "width": width if gradual[position] else 0.0,
                "old_topics": [topic_name(int(t)) for t in old_dominant],
                "new_topics": [topic_name(int(t)) for t in _dominant(new[user])],
                "details": json.dumps(
                    {
                        "old_mixture": [round(float(w), 6) for w in old[user]],
                        "new_mixture": [round(float(w), 6) for w in new[user]],
                    }
                ),
            }
        )

    relative = (times - shift_time) / np.where(user_width[owner] > 0, user_width[owner], 1.0)
    p_new = np.where(
        user_width[owner] > 0,
        1.0 / (1.0 + np.exp(-np.clip(relative, -60, 60))),
        (times >= shift_time).astype(np.float64),
    )
    p_new = np.where(in_cohort[owner], p_new, 0.0)
    use_new = rng.random(owner.size) < p_new
    mixture = np.where(use_new[:, None], new[owner], old[owner])  # [E, K]
    cumulative = np.cumsum(mixture, axis=1)
    draws = rng.random(owner.size)
    topic = np.minimum((draws[:, None] > cumulative).sum(axis=1), config.topics - 1)
    item = np.empty(owner.size, dtype=np.int64)
    for k, (members, probabilities) in enumerate(catalogs):
        rows = np.flatnonzero(topic == k)
        item[rows] = members[rng.choice(members.size, size=rows.size, p=probabilities)]

    events = pl.DataFrame(
        {
            "user": owner + 1,
            "item": item + 1,
            "rating": pl.Series([None] * owner.size, dtype=pl.Float64),
            "time": times,
            "cohort": in_cohort[owner],
            "shifted": in_cohort[owner] & (times >= shift_time),
        }
    )
    items = pl.DataFrame(
        {
            "item": np.arange(config.items, dtype=np.int64) + 1,
            "title": [f"item-{i + 1}" for i in range(config.items)],
            "genres": [[topic_name(int(t))] for t in item_topic],
        },
        schema={"item": pl.Int64(), "title": pl.String(), "genres": pl.List(pl.String())},
    )
    truth = pl.DataFrame(truth_rows, schema=GROUND_TRUTH_SCHEMA)
    return InteractionLog(
        name="synthetic", events=order_events(events), items=items, ground_truth=truth
    )


def describe(config: SyntheticConfig) -> dict[str, object]:
    return asdict(config)
