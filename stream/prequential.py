"""The one prequential step: predict, then score, then update, for a micro-batch of events.

Pure and synchronous (no Faust, no Kafka, no clock unless one is passed): the Faust agent and the
offline evaluator (``stream.offline``) both call ``prequential_batch``.

Semantics (docs/streaming.md has the long form):

- Each user's events are applied in order: the result is defined as processing the batch in
  *rounds* (round r = every user's r-th event of the batch), so no user's event is scored with
  a state that has not yet seen that user's earlier events. The computation does not loop over
  rounds: each model advances every user through all of the user's events of the batch at once
  (``SeqRecRunner.advance``: one forward call for window models, rounds only for recurrent
  ones), then the whole batch is scored in one pass.
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
from torch import Tensor

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


def plan_events(
    events: Sequence[Interaction], last_applied: Mapping[int, int]
) -> tuple[list[Interaction], list[int]]:
    """The events to apply, in batch order, and the redelivered event ids (not above the
    user's last applied id, counting earlier events of the batch).

    >>> from replay.schema import Interaction as I
    >>> evs = [I(0, 1, 9, None, 0.0, "x"), I(1, 2, 9, None, 0.0, "x"), I(2, 1, 8, None, 1.0, "x")]
    >>> applied, skipped = plan_events(evs, {2: 1})
    >>> [e.event_id for e in applied], skipped
    ([0, 2], [1])
    """
    last = dict(last_applied)
    applied: list[Interaction] = []
    redelivered: list[int] = []
    for event in events:
        if event.event_id <= last.get(event.user, -1):
            redelivered.append(event.event_id)
            continue
        last[event.user] = event.event_id
        applied.append(event)
    return applied, redelivered


def prequential_batch(
    events: Sequence[Interaction],
    snapshots: Mapping[int, UserSnapshot],
    runners: Sequence[Runner],
    view: GlobalView,
    options: ScoringOptions = ScoringOptions(),
    produced_ms: Mapping[int, float] | None = None,
    clock_ms: Callable[[], float] | None = None,
    batch_size: int | None = None,
) -> BatchResult:
    """Predict -> score -> update for ``events``; inputs are not modified. ``batch_size`` is
    recorded in the predictions: the micro-batch the events came in (default: all of them).

    ``view`` must be complete through ``max(event ids) - 1`` (see ``GlobalView``).

    Every event is ranked with its user's state before it, and each model advances every user
    through the user's events of the batch in order (``SeqRecRunner.advance``): the same
    results as the round-by-round definition in the module docstring, computed with one model
    call per batch where the model allows it and one scoring pass over the whole batch.
    """
    work = {user: _copy(snapshot) for user, snapshot in snapshots.items()}
    applied, redelivered = plan_events(events, {u: s.last_event_id for u, s in work.items()})
    if not applied:
        return BatchResult({}, [], redelivered)
    for event in applied:
        work.setdefault(event.user, UserSnapshot(user=event.user))
    frame = _frame(applied, work, runners, view, options)
    n_candidates = frame.valid.sum(axis=1) + frame.rankable  # target counted when rankable
    per_model: list[tuple[str, np.ndarray, np.ndarray | None, np.ndarray]] = []
    for runner in runners:
        if isinstance(runner, SeqRecRunner):
            before, shift = _advance(runner, frame, work)
            scores = frame.popularity
            rows = np.nonzero([h is not None for h in before])[0]
            if rows.size:
                scores = frame.popularity.copy()
                hidden = torch.stack([before[row] for row in rows])  # type: ignore[misc]
                scores[rows] = runner.scores(hidden, frame.popularity.shape[1])  # [U', M]
            oov = runner.vocab_index(frame.items) < 0
        else:
            scores, shift, oov = frame.popularity, None, np.zeros(len(applied), dtype=bool)
        ranks = pessimistic_ranks(scores, frame.items, frame.valid)
        per_model.append((runner.name, ranks, shift, oov))
    for event in applied:
        snapshot = work[event.user]
        snapshot.seen.append(event.item)
        snapshot.last_event_id = event.event_id
    now = None if clock_ms is None else clock_ms()
    predictions: list[Prediction] = []
    rank_lists = [
        (name, ranks.tolist(), shift, oov.tolist()) for name, ranks, shift, oov in per_model
    ]
    counts = n_candidates.tolist()
    rankable = frame.rankable.tolist()
    cold_user = frame.cold_user.tolist()
    cold_item = frame.cold_item.tolist()
    seen_item = frame.seen_item.tolist()
    for row, event in enumerate(applied):
        produced = None
        if now is not None and produced_ms is not None:
            produced = produced_ms.get(event.event_id)
        for name, ranks, shift, oov in rank_lists:
            shift_value = None if shift is None or np.isnan(shift[row]) else float(shift[row])
            predictions.append(
                Prediction(
                    event_id=event.event_id,
                    user=event.user,
                    item=event.item,
                    time=event.time,
                    model=name,
                    rank=int(ranks[row]) if rankable[row] else None,
                    n_candidates=int(counts[row]),
                    cold_user=bool(cold_user[row]),
                    cold_item=bool(cold_item[row]),
                    seen_item=bool(seen_item[row]),
                    oov_item=bool(oov[row]),
                    shift_score=shift_value,
                    cohort=event.cohort,
                    shifted=event.shifted,
                    produced_ms=produced,
                    predicted_ms=now,
                    batch_size=len(events) if batch_size is None else batch_size,
                )
            )
    touched = {event.user for event in applied}
    return BatchResult({u: work[u] for u in touched}, predictions, redelivered)


def _copy(snapshot: UserSnapshot) -> UserSnapshot:
    return UserSnapshot(
        user=snapshot.user,
        last_event_id=snapshot.last_event_id,
        seen=list(snapshot.seen),
        states=dict(snapshot.states),
        hidden=dict(snapshot.hidden),
    )


@dataclass
class _BatchFrame:
    """What every model's ranking shares in one batch: N applied events, M raw item ids."""

    events: list[Interaction]
    ids: np.ndarray  # [N]
    items: np.ndarray  # [N]
    times: np.ndarray  # [N]
    valid: np.ndarray  # [N, M] candidate mask, target excluded
    rankable: np.ndarray  # [N] the target may be hit
    cold_user: np.ndarray  # [N]
    cold_item: np.ndarray  # [N]
    seen_item: np.ndarray  # [N]
    popularity: np.ndarray  # [N, M] snapshot counts in force at each event
    rows_of_user: dict[int, list[int]]  # user -> its rows, in order


def _frame(
    applied: list[Interaction],
    work: Mapping[int, UserSnapshot],
    runners: Sequence[Runner],
    view: GlobalView,
    options: ScoringOptions,
) -> _BatchFrame:
    ids = np.array([e.event_id for e in applied], dtype=np.int64)
    items = np.array([e.item for e in applied], dtype=np.int64)
    times = np.array([e.time for e in applied], dtype=np.float64)
    vocab_sizes = [r.index_of_raw.shape[0] for r in runners if isinstance(r, SeqRecRunner)]
    size = max([view.n_item_ids, int(items.max()) + 1, *vocab_sizes])
    first_seen = view.first_seen_ids(size)  # [M]
    before = first_seen[None, :] < ids[:, None]  # [N, M]
    if options.candidates == "all":
        catalogue = np.zeros(size, dtype=bool)
        for runner in runners:
            if isinstance(runner, SeqRecRunner):
                catalogue[: runner.index_of_raw.shape[0]] |= runner.index_of_raw >= 0
        valid = before | catalogue[None, :]
    else:
        valid = before  # a fresh array, ours to modify
    rows = np.arange(len(applied))
    target_candidate = valid[rows, items].copy()
    cold_item = ~before[rows, items]
    # each event's seen items: the user's stored ones plus the user's earlier events here
    rows_of_user: dict[int, list[int]] = {}
    for row, event in enumerate(applied):
        rows_of_user.setdefault(event.user, []).append(row)
    seen_item = np.zeros(len(applied), dtype=bool)
    cold_user = np.zeros(len(applied), dtype=bool)
    mask_rows: list[np.ndarray] = []
    mask_items: list[np.ndarray] = []
    for user, user_rows in rows_of_user.items():
        stored = work[user].seen
        seen = set(stored)
        for row in user_rows:
            seen_item[row] = int(items[row]) in seen
            seen.add(int(items[row]))
        cold_user[user_rows[0]] = not stored
        if not options.exclude_seen:
            continue
        user_rows_array = np.asarray(user_rows, dtype=np.int64)
        if stored:
            stored_array = np.asarray(stored, dtype=np.int64)
            mask_rows.append(np.repeat(user_rows_array, len(stored_array)))
            mask_items.append(np.tile(stored_array, len(user_rows_array)))
        if len(user_rows) > 1:
            earlier, later = np.triu_indices(len(user_rows), 1)  # earlier < later
            mask_rows.append(user_rows_array[later])
            mask_items.append(items[user_rows_array[earlier]])
    if mask_rows:
        valid[np.concatenate(mask_rows), np.concatenate(mask_items)] = False
    valid[rows, items] = False
    rankable = target_candidate & ~(seen_item & options.exclude_seen)
    first_time_of: dict[int, float] = {}  # bucket -> a time in it (asked as the events ask)
    buckets = []
    for time in times.tolist():
        bucket = view.bucket(time)
        first_time_of.setdefault(bucket, time)
        buckets.append(bucket)
    distinct = sorted(first_time_of)
    snapshots = np.stack([view.popularity(first_time_of[b], size) for b in distinct])  # [B, M]
    if len(distinct) == 1:
        popularity = np.broadcast_to(snapshots[0], (len(applied), size))  # read-only view
    else:
        popularity = snapshots[np.searchsorted(np.asarray(distinct), np.asarray(buckets))]
    return _BatchFrame(
        events=applied,
        ids=ids,
        items=items,
        times=times,
        valid=valid,
        rankable=rankable,
        cold_user=cold_user,
        cold_item=cold_item,
        seen_item=seen_item,
        popularity=popularity,
        rows_of_user=rows_of_user,
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


def _advance(
    runner: SeqRecRunner, frame: _BatchFrame, work: dict[int, UserSnapshot]
) -> tuple[list[Tensor | None], np.ndarray]:
    """Step every user through its in-vocabulary events of the batch; -> per row the hidden
    vector *before* the event ([D], None: popularity fallback) and [N] shift scores after it
    (nan: none). An out-of-vocabulary event leaves the user's state and hidden vector as they
    are."""
    name = runner.name
    known = runner.vocab_index(frame.items) >= 0  # [N]
    before: list[Tensor | None] = [None] * len(frame.events)
    shift = np.full(len(frame.events), np.nan)
    users = [u for u, rows in frame.rows_of_user.items() if known[rows].any()]
    steps = [[row for row in frame.rows_of_user[u] if known[row]] for u in users]
    advanced = []
    if users:
        states = [
            work[u].states[name] if name in work[u].states else runner.initial_state(1)
            for u in users
        ]
        items = [frame.items[rows] for rows in steps]
        times = [frame.times[rows] for rows in steps]
        advanced = runner.advance(states, items, times)
    after = dict(zip(users, advanced, strict=True))
    for user, rows in frame.rows_of_user.items():
        hidden = work[user].hidden.get(name)
        current = None if hidden is None else hidden[0]
        result = after.get(user)
        step = 0
        for row in rows:
            before[row] = current
            if known[row] and result is not None:
                current = result.hidden[step]
                if result.shift is not None:
                    shift[row] = result.shift[step]
                step += 1
        if result is not None:
            work[user].states[name] = result.state
            work[user].hidden[name] = result.hidden[-1:].clone()
    return before, shift
