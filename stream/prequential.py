"""The one prequential step: predict, then score, then update, for a micro-batch of events.

Pure and synchronous (no Faust, no Kafka, no clock unless one is passed): the Faust agent and the
offline evaluator (``stream.offline``) both call ``prequential_batch``.

Semantics (docs/streaming.md has the long form):

- Each user's events are applied in order. The batch is processed in *rounds*: round r holds
  every user's r-th event of the batch, so users are batched together and no user's event is
  scored with a state that has not yet seen that user's earlier events.
- Event t of user u is ranked with the state *before* t: the hidden vector left by u's previous
  event. A user with no previous event (cold user), or whose model has not stepped yet, is scored
  with the popularity snapshot in force at the event's time (the popularity fallback).
- Candidates: items first seen before t in the global event-id order (``candidates="seen"``) or
  the full catalogue (``"all"``: the models' vocabularies plus items seen so far); minus the
  user's already-seen items when ``exclude_seen``; the target itself is ranked against them.
- Pessimistic ties: rank = 1 + |{j in C, j != i : s_j >= s_i}|.
- rank is ``None`` (a miss at every K) when the target cannot be a candidate: a cold item under
  ``candidates="seen"``, or an item the user already saw under ``exclude_seen``.
- Then every stateful model steps with event t (``adapt=False`` for ``:frozen`` entries). An item
  outside a model's vocabulary leaves that model's state unchanged (it cannot be represented).
- An event whose id is not above the user's last applied id is a redelivery: skipped, reported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from models.state import State
from replay.schema import Interaction
from stream.globalview import GlobalView
from stream.records import Prediction
from stream.runners import Runner, SeqRecRunner
from stream.userstate import UserSnapshot

CandidateMode = Literal["seen", "all"]


@dataclass(frozen=True)
class ScoringOptions:
    candidates: CandidateMode = "seen"  # "seen": first seen before the event; "all": catalogue
    exclude_seen: bool = True  # drop the user's already-seen items from the candidates


@dataclass
class BatchResult:
    snapshots: dict[int, UserSnapshot]  # every touched user's new snapshot
    predictions: list[Prediction]  # in batch order, one per (applied event, model)
    redelivered: list[int] = field(default_factory=list)  # event ids skipped as already applied


def plan_rounds(
    events: Sequence[Interaction], last_applied: Mapping[int, int]
) -> tuple[list[list[Interaction]], list[int]]:
    """Split a batch into rounds (round r = each user's r-th new event) and redeliveries.

    >>> from replay.schema import Interaction as I
    >>> evs = [I(0, 1, 9, None, 0.0, "x"), I(1, 2, 9, None, 0.0, "x"), I(2, 1, 8, None, 1.0, "x")]
    >>> rounds, skipped = plan_rounds(evs, {2: 1})
    >>> [[e.event_id for e in r] for r in rounds], skipped
    ([[0], [2]], [1])
    """
    queues: dict[int, list[Interaction]] = {}
    last = dict(last_applied)
    redelivered: list[int] = []
    for event in events:
        if event.event_id <= last.get(event.user, -1):
            redelivered.append(event.event_id)
            continue
        last[event.user] = event.event_id
        queues.setdefault(event.user, []).append(event)
    depth = max((len(q) for q in queues.values()), default=0)
    rounds = [[q[r] for q in queues.values() if len(q) > r] for r in range(depth)]
    return rounds, redelivered


def prequential_batch(
    events: Sequence[Interaction],
    snapshots: Mapping[int, UserSnapshot],
    runners: Sequence[Runner],
    view: GlobalView,
    options: ScoringOptions = ScoringOptions(),
    produced_ms: Mapping[int, float] | None = None,
    clock_ms: Callable[[], float] | None = None,
) -> BatchResult:
    """Predict -> score -> update for ``events``; inputs are not modified.

    ``view`` must be complete through ``max(event ids) - 1`` (see ``GlobalView``).
    """
    work = {user: _copy(snapshot) for user, snapshot in snapshots.items()}
    rounds, redelivered = plan_rounds(events, {u: s.last_event_id for u, s in work.items()})
    predictions: list[Prediction] = []
    for round_events in rounds:
        for event in round_events:
            work.setdefault(event.user, UserSnapshot(user=event.user))
        predictions += _run_round(round_events, work, runners, view, options, len(events))
        if clock_ms is not None:
            now = clock_ms()
            predictions[-len(round_events) * len(runners) :] = [
                _stamp(p, produced_ms, now)
                for p in predictions[-len(round_events) * len(runners) :]
            ]
    order = {event.event_id: position for position, event in enumerate(events)}
    predictions.sort(key=lambda p: order[p.event_id])
    touched = {event.user for round_events in rounds for event in round_events}
    return BatchResult({u: work[u] for u in touched}, predictions, redelivered)


def _copy(snapshot: UserSnapshot) -> UserSnapshot:
    return UserSnapshot(
        user=snapshot.user,
        last_event_id=snapshot.last_event_id,
        seen=list(snapshot.seen),
        states=dict(snapshot.states),
        hidden=dict(snapshot.hidden),
    )


def _stamp(p: Prediction, produced_ms: Mapping[int, float] | None, now: float) -> Prediction:
    from dataclasses import replace

    produced = None if produced_ms is None else produced_ms.get(p.event_id)
    return replace(p, produced_ms=produced, predicted_ms=now)


@dataclass
class _RoundFrame:
    """What every model's ranking shares in one round: U events, M raw item ids."""

    events: list[Interaction]
    ids: np.ndarray  # [U]
    items: np.ndarray  # [U]
    times: np.ndarray  # [U]
    valid: np.ndarray  # [U, M] candidate mask, target excluded
    rankable: np.ndarray  # [U] the target may be hit
    cold_user: np.ndarray  # [U]
    cold_item: np.ndarray  # [U]
    seen_item: np.ndarray  # [U]
    popularity: np.ndarray  # [U, M] snapshot counts in force at each event


def _frame(
    round_events: list[Interaction],
    work: Mapping[int, UserSnapshot],
    runners: Sequence[Runner],
    view: GlobalView,
    options: ScoringOptions,
) -> _RoundFrame:
    ids = np.array([e.event_id for e in round_events], dtype=np.int64)
    items = np.array([e.item for e in round_events], dtype=np.int64)
    times = np.array([e.time for e in round_events], dtype=np.float64)
    seen_lists = [work[e.user].seen for e in round_events]
    vocab_sizes = [r.index_of_raw.shape[0] for r in runners if isinstance(r, SeqRecRunner)]
    size = max([view.n_item_ids, int(items.max()) + 1, *vocab_sizes])
    first_seen = view.first_seen_ids(size)  # [M]
    before = first_seen[None, :] < ids[:, None]  # [U, M]
    if options.candidates == "all":
        catalogue = np.zeros(size, dtype=bool)
        for runner in runners:
            if isinstance(runner, SeqRecRunner):
                catalogue[: runner.index_of_raw.shape[0]] |= runner.index_of_raw >= 0
        valid = before | catalogue[None, :]
    else:
        valid = before.copy()
    rows = np.arange(len(round_events))
    target_candidate = valid[rows, items].copy()
    cold_item = ~before[rows, items]
    seen_item = np.array([item in set(seen) for item, seen in zip(items, seen_lists, strict=True)])
    if options.exclude_seen:
        for row, seen in enumerate(seen_lists):
            if seen:
                valid[row, np.asarray(seen, dtype=np.int64)] = False
    valid[rows, items] = False
    rankable = target_candidate & ~(seen_item & options.exclude_seen)
    popularity = np.empty((len(round_events), size), dtype=np.float64)
    cache: dict[int, np.ndarray] = {}
    for row, time in enumerate(times):
        bucket = view.bucket(float(time))
        if bucket not in cache:
            cache[bucket] = view.popularity(float(time), size)
        popularity[row] = cache[bucket]
    return _RoundFrame(
        events=round_events,
        ids=ids,
        items=items,
        times=times,
        valid=valid,
        rankable=rankable,
        cold_user=np.array([not seen for seen in seen_lists]),
        cold_item=cold_item,
        seen_item=seen_item,
        popularity=popularity,
    )


def pessimistic_ranks(scores: np.ndarray, targets: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """scores [U, M], targets [U] (column), valid [U, M] (target excluded) -> ranks [U].

    >>> pessimistic_ranks(np.array([[3.0, 1.0, 3.0, 2.0]]), np.array([2]),
    ...                   np.array([[True, True, False, True]])).tolist()
    [2]
    """
    target_scores = scores[np.arange(scores.shape[0]), targets]  # [U]
    beaten_or_tied = valid & (scores >= target_scores[:, None])  # [U, M]
    return 1 + beaten_or_tied.sum(axis=1)


def _run_round(
    round_events: list[Interaction],
    work: dict[int, UserSnapshot],
    runners: Sequence[Runner],
    view: GlobalView,
    options: ScoringOptions,
    batch_size: int,
) -> list[Prediction]:
    frame = _frame(round_events, work, runners, view, options)
    n_candidates = frame.valid.sum(axis=1) + frame.rankable  # target counted when rankable
    per_model: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    for runner in runners:
        scores = _scores(runner, frame, work)
        ranks = pessimistic_ranks(scores, frame.items, frame.valid)
        shift = _update(runner, frame, work) if isinstance(runner, SeqRecRunner) else None
        per_model.append((runner.name, ranks, shift))
    for event in round_events:
        snapshot = work[event.user]
        snapshot.seen.append(event.item)
        snapshot.last_event_id = event.event_id
    predictions: list[Prediction] = []
    for row, event in enumerate(round_events):
        for name, ranks, shift in per_model:
            shift_value = None if shift is None or np.isnan(shift[row]) else float(shift[row])
            oov = False
            runner = next(r for r in runners if r.name == name)
            if isinstance(runner, SeqRecRunner):
                oov = bool(runner.vocab_index(frame.items[row : row + 1])[0] < 0)
            predictions.append(
                Prediction(
                    event_id=event.event_id,
                    user=event.user,
                    item=event.item,
                    time=event.time,
                    model=name,
                    rank=int(ranks[row]) if frame.rankable[row] else None,
                    n_candidates=int(n_candidates[row]),
                    cold_user=bool(frame.cold_user[row]),
                    cold_item=bool(frame.cold_item[row]),
                    seen_item=bool(frame.seen_item[row]),
                    oov_item=oov,
                    shift_score=shift_value,
                    cohort=event.cohort,
                    shifted=event.shifted,
                    batch_size=batch_size,
                )
            )
    return predictions


def _scores(runner: Runner, frame: _RoundFrame, work: Mapping[int, UserSnapshot]) -> np.ndarray:
    """[U, M] scores before the update; users without a hidden vector get popularity."""
    if not isinstance(runner, SeqRecRunner):
        return frame.popularity
    scores = frame.popularity.copy()
    rows = [row for row, e in enumerate(frame.events) if runner.name in work[e.user].hidden]
    if rows:
        hidden = torch.cat([work[frame.events[row].user].hidden[runner.name] for row in rows])
        scores[rows] = runner.scores(hidden, frame.popularity.shape[1])  # [U', M]
    return scores


def _update(runner: SeqRecRunner, frame: _RoundFrame, work: dict[int, UserSnapshot]) -> np.ndarray:
    """Step the users whose item the model knows; return [U] shift scores (nan: none)."""
    shift = np.full(len(frame.events), np.nan)
    rows = np.nonzero(runner.vocab_index(frame.items) >= 0)[0]
    if rows.size == 0:
        return shift
    users = [frame.events[row].user for row in rows]
    states: list[State] = [
        work[u].states[runner.name] if runner.name in work[u].states else runner.initial_state(1)
        for u in users
    ]
    state = states[0] if len(states) == 1 else type(states[0]).cat(states)
    new_state, hidden, shift_rows = runner.step(state, frame.items[rows], frame.times[rows])
    for j, user in enumerate(users):
        work[user].states[runner.name] = new_state if len(users) == 1 else new_state.index([j])
        work[user].hidden[runner.name] = hidden[j : j + 1].clone()
    if shift_rows is not None:
        shift[rows] = shift_rows
    return shift
