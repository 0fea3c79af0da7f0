"""The pure prequential step against a slow, obviously-correct reference, plus the properties
the streaming path relies on: batch-size invariance, redelivery, state bytes round trip, no
label leakage."""

from __future__ import annotations

import dataclasses
import doctest
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from replay.datasets import InteractionLog
from replay.schema import Interaction
from stream import aggregate, globalview, metrics, prequential, records, settings, userstate
from stream.globalview import GlobalView
from stream.offline import build_view, evaluate_offline, interactions
from stream.prequential import ScoringOptions, pessimistic_ranks, prequential_batch
from stream.records import Prediction
from stream.runners import ModelSpec, Runner, SeqRecRunner, load_runner
from stream.testing import assert_same_snapshot
from stream.userstate import decode_snapshot, encode_snapshot

DAY = 86_400.0


def _runners(checkpoint_dir: Path, entries: Sequence[str]) -> list[Runner]:
    out = []
    for entry in entries:
        spec = ModelSpec.parse(entry)
        path = checkpoint_dir / f"{spec.base}.safetensors" if spec.stateful else None
        out.append(load_runner(spec, path))
    return out


def _comparable(predictions: Sequence[Prediction]) -> list[Prediction]:
    return [dataclasses.replace(p, batch_size=0) for p in predictions]


def reference(
    events: Sequence[Interaction], runner: Runner, exclude_seen: bool = True
) -> list[tuple[int, int | None, int, bool, bool]]:
    """Per event, from scratch: (event id, rank, n candidates, cold user, cold item).

    Uses only events before t: candidates, popularity (complete days before the event's day),
    and the user's earlier items, stepped one at a time from the model's initial state.
    """
    out = []
    for t, event in enumerate(events):
        past = events[:t]
        history = [e for e in past if e.user == event.user]
        known = {e.item for e in past}
        seen = {e.item for e in history}
        candidates = known - (seen if exclude_seen else set()) - {event.item}
        counts: dict[int, float] = {}
        for e in past:
            if math.floor(e.time / DAY) < math.floor(event.time / DAY):
                counts[e.item] = counts.get(e.item, 0.0) + 1.0
        size = max([event.item, *known]) + 1
        scores = np.array([counts.get(j, 0.0) for j in range(size)])
        if isinstance(runner, SeqRecRunner):
            steps = [e for e in history if runner.vocab_index(np.array([e.item]))[0] >= 0]
            if steps:
                state = runner.initial_state(1)
                for e in steps:
                    state, hidden, _ = runner.step(state, np.array([e.item]), np.array([e.time]))
                scores = runner.scores(hidden, size)[0]
        rankable = event.item in known and not (exclude_seen and event.item in seen)
        target = scores[event.item]
        rank = 1 + sum(1 for j in candidates if scores[j] >= target) if rankable else None
        out.append(
            (event.event_id, rank, len(candidates) + rankable, not history, event.item not in known)
        )
    return out


@pytest.fixture(scope="module")
def events(tiny_log: InteractionLog) -> list[Interaction]:
    return list(interactions(tiny_log))[:150]


@pytest.mark.parametrize("entry", ["pop", "sasrec", "ttt4rec", "ttt4rec:frozen"])
@pytest.mark.parametrize("batch_size", [16, 150])  # 150: one batch, windows slide inside it
def test_matches_the_from_scratch_reference(
    events: list[Interaction], checkpoint_dir: Path, entry: str, batch_size: int
) -> None:
    (runner,) = _runners(checkpoint_dir, [entry])
    predictions, _ = evaluate_offline(events, [runner], batch_size=batch_size)
    got = [(p.event_id, p.rank, p.n_candidates, p.cold_user, p.cold_item) for p in predictions]
    assert got == reference(events, runner)
    assert any(p.rank is not None and p.rank > 1 for p in predictions)  # not trivial


def test_without_exclude_seen(events: list[Interaction], checkpoint_dir: Path) -> None:
    (runner,) = _runners(checkpoint_dir, ["sasrec"])
    options = ScoringOptions(exclude_seen=False)
    predictions, _ = evaluate_offline(events, [runner], options, batch_size=5)
    got = [(p.event_id, p.rank, p.n_candidates, p.cold_user, p.cold_item) for p in predictions]
    assert got == reference(events, runner, exclude_seen=False)


def test_results_do_not_depend_on_the_batch_size(
    tiny_log: InteractionLog, checkpoint_dir: Path
) -> None:
    runners = _runners(checkpoint_dir, ["pop", "sasrec", "ttt4rec", "ttt4rec:frozen"])
    events = list(interactions(tiny_log))
    runs = [evaluate_offline(events, runners, batch_size=b) for b in (1, 13, 256)]
    base_predictions, base_snapshots = runs[0]
    assert len(base_predictions) == 4 * len(events)
    for predictions, snapshots in runs[1:]:
        assert _comparable(predictions) == _comparable(base_predictions)
        assert snapshots.keys() == base_snapshots.keys()
        for user, snapshot in snapshots.items():
            assert_same_snapshot(snapshot, base_snapshots[user])


def test_redelivered_events_are_skipped_and_change_nothing(
    events: list[Interaction], checkpoint_dir: Path
) -> None:
    runners = _runners(checkpoint_dir, ["pop", "ttt4rec"])
    view = build_view(events, DAY, None)
    first = prequential_batch(events[:40], {}, runners, view)
    again = prequential_batch(events[:40], first.snapshots, runners, view)
    assert again.predictions == []
    assert sorted(again.redelivered) == [e.event_id for e in events[:40]]
    # a batch that overlaps the applied prefix applies only the new events
    overlap = prequential_batch(events[30:60], first.snapshots, runners, view)
    fresh = prequential_batch(events[40:60], first.snapshots, runners, view)
    assert _comparable(overlap.predictions) == _comparable(fresh.predictions)
    assert len(overlap.redelivered) == 10


def test_state_bytes_round_trip_mid_stream(events: list[Interaction], checkpoint_dir: Path) -> None:
    runners = _runners(checkpoint_dir, ["pop", "sasrec", "ttt4rec"])
    by_name = {r.name: r for r in runners if isinstance(r, SeqRecRunner)}
    view = build_view(events, DAY, None)
    head = prequential_batch(events[:80], {}, runners, view)
    restored = {
        u: decode_snapshot(encode_snapshot(s, by_name), by_name) for u, s in head.snapshots.items()
    }
    for user, snapshot in head.snapshots.items():
        assert_same_snapshot(restored[user], snapshot, exact=True)
    tail_from_bytes = prequential_batch(events[80:], restored, runners, view)
    tail_direct = prequential_batch(events[80:], head.snapshots, runners, view)
    assert tail_from_bytes.predictions == tail_direct.predictions


def test_inputs_are_not_modified(events: list[Interaction], checkpoint_dir: Path) -> None:
    runners = _runners(checkpoint_dir, ["sasrec"])
    view = build_view(events, DAY, None)
    head = prequential_batch(events[:50], {}, runners, view)
    before = {u: (s.last_event_id, list(s.seen), dict(s.states)) for u, s in head.snapshots.items()}
    prequential_batch(events[50:100], head.snapshots, runners, view)
    after = {u: (s.last_event_id, list(s.seen), dict(s.states)) for u, s in head.snapshots.items()}
    assert before == after


def test_the_future_never_changes_a_prediction(
    events: list[Interaction], checkpoint_dir: Path
) -> None:
    """Label leakage check: the record of event t is the same whether the log ends at t or goes
    on, and whatever item event t itself carries, its candidates and the other scores stay."""
    runners = _runners(checkpoint_dir, ["pop", "sasrec", "ttt4rec"])
    full, _ = evaluate_offline(events, runners, batch_size=32)
    cut = next(  # an event whose user has history, so the models (not popularity) rank it
        t for t in range(60, len(events)) if sum(e.user == events[t].user for e in events[:t]) >= 2
    )
    prefix, _ = evaluate_offline(events[: cut + 1], runners, batch_size=32)
    assert _comparable(prefix) == _comparable(full[: len(prefix)])
    # Replace event t's item by another warm item j: the rank of j must be what the *original*
    # state ranks j at, i.e. the prediction only used the state before t.
    target = events[cut]
    known = {e.item for e in events[:cut]}
    seen = {e.item for e in events[:cut] if e.user == target.user}
    alternatives = sorted(known - seen - {target.item})[:2]
    view_events = list(events)
    for j in alternatives:
        view_events[cut] = dataclasses.replace(target, item=j)
        changed, _ = evaluate_offline(view_events[: cut + 1], runners, batch_size=32)
        ref = {r.name: reference(view_events[: cut + 1], r)[-1] for r in runners}
        for p in changed[-len(runners) :]:
            assert (p.event_id, p.rank, p.n_candidates, p.cold_user, p.cold_item) == ref[p.model]


def test_popularity_uses_only_complete_refresh_intervals() -> None:
    """Items consumed earlier on the same day do not yet count for popularity."""
    day0, day1 = 10 * DAY, 11 * DAY
    events = [Interaction(i, 100 + i, 1, None, day0 + i, "t") for i in range(3)]  # item 1
    events += [Interaction(3 + i, 200 + i, 2, None, day1 + i, "t") for i in range(5)]  # item 2
    events += [Interaction(8, 300, 2, None, day1 + 10, "t")]  # cold user, item 2
    predictions, _ = evaluate_offline(events, [load_runner(ModelSpec.parse("pop"), None)])
    last = predictions[-1]
    assert last.cold_user and not last.cold_item
    assert last.rank == 1 + 1  # item 1 (3 counts yesterday) beats item 2 (0 counts before today)


def test_pessimistic_ties_rank_a_constant_scorer_last() -> None:
    scores = np.zeros((1, 6))
    valid = np.array([[False, True, True, True, True, False]])
    assert pessimistic_ranks(scores, np.array([5]), valid).tolist() == [5]


def test_cold_item_and_seen_item_cannot_be_hit(checkpoint_dir: Path) -> None:
    events = [
        Interaction(0, 1, 3, None, 0.0, "t"),
        Interaction(1, 2, 4, None, 1.0, "t"),  # item 4 is new: cold item
        Interaction(2, 1, 3, None, 2.0, "t"),  # user 1 repeats item 3
    ]
    runners = _runners(checkpoint_dir, ["pop", "sasrec"])
    for options, repeat_rank in [(ScoringOptions(), None), (ScoringOptions(exclude_seen=False), 1)]:
        predictions, _ = evaluate_offline(events, runners, options)
        by_event = {(p.event_id, p.model): p for p in predictions}
        assert by_event[(1, "pop")].cold_item and by_event[(1, "pop")].rank is None
        assert by_event[(2, "pop")].seen_item
        if repeat_rank is None:
            assert by_event[(2, "pop")].rank is None
        else:
            assert by_event[(2, "pop")].rank == 2  # vs item 4, both tied (pessimistic)


def test_full_catalogue_candidates_rank_cold_items(
    events: list[Interaction], checkpoint_dir: Path
) -> None:
    runners = _runners(checkpoint_dir, ["sasrec"])
    predictions, _ = evaluate_offline(events, runners, ScoringOptions(candidates="all"))
    cold = [p for p in predictions if p.cold_item]
    assert cold and all(p.rank is not None for p in cold)
    catalogue = int((runners[0].index_of_raw >= 0).sum())  # type: ignore[union-attr]
    first = predictions[0]
    assert first.n_candidates == catalogue  # nothing seen yet: the whole catalogue


def test_view_waits_for_every_partition() -> None:
    view = GlobalView()
    view.set_partitions(2)
    view.observe(0, 0, 1, 0.0)
    view.observe(0, 2, 1, 0.0)
    assert view.complete_through() == -1  # partition 1 has shown nothing yet
    view.observe(1, 1, 2, 0.0)
    assert view.complete_through() == 1
    assert not view.wait_complete_through(2, timeout_s=0.01)
    view.end_partition(1)
    assert view.complete_through() == 2
    assert view.wait_complete_through(2, timeout_s=0.01)


@pytest.mark.parametrize(
    "module", [metrics, globalview, records, prequential, userstate, aggregate, settings]
)
def test_doctests(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.failed == 0


@pytest.mark.parametrize("window_s", [None, 3 * DAY])
def test_incremental_popularity_snapshots_equal_from_scratch(window_s: float | None) -> None:
    rng = np.random.default_rng(0)
    view = GlobalView(refresh_s=DAY, window_s=window_s)
    view.set_partitions(1)
    times = np.sort(rng.uniform(0, 20 * DAY, size=400))
    for event_id, time in enumerate(times):
        view.observe(0, event_id, int(rng.integers(0, 30)), float(time))
    for day in [2, 3, 4, 9, 10, 15, 19, 7, 20]:  # forward, with a jump back
        incremental = view.popularity(day * DAY + 5.0)
        with view._lock:
            scratch = view.snapshot_from_scratch(day)
        np.testing.assert_array_equal(incremental[: scratch.shape[0]], scratch)


def test_a_view_fed_in_chunks_answers_as_one_fed_event_by_event() -> None:
    """The reader hands over one poll at a time (``observe_many``); a snapshot built between
    two chunks must not survive a later event of its interval."""
    rng = np.random.default_rng(1)
    ids, items = np.arange(300), rng.integers(1, 40, size=300)
    times = np.sort(rng.uniform(0, 10 * DAY, size=300))
    one_by_one, chunked = GlobalView(refresh_s=DAY), GlobalView(refresh_s=DAY)
    for view in (one_by_one, chunked):
        view.set_partitions(1)
    for event_id, item, time in zip(ids.tolist(), items.tolist(), times.tolist(), strict=True):
        one_by_one.observe(0, event_id, item, time)
    for start in range(0, 300, 37):
        part = slice(start, start + 37)
        chunked.observe_many(0, ids[part].tolist(), items[part].tolist(), times[part].tolist())
        chunked.popularity(10 * DAY + 1.0)  # a snapshot of all days, ahead of the events
    assert chunked.complete_through() == one_by_one.complete_through() == 299
    np.testing.assert_array_equal(chunked.first_seen_ids(40), one_by_one.first_seen_ids(40))
    for day in [10, *range(10)]:  # day 10 first: the snapshot built ahead is still cached
        np.testing.assert_array_equal(
            chunked.popularity(day * DAY + 1.0, 40), one_by_one.popularity(day * DAY + 1.0, 40)
        )
