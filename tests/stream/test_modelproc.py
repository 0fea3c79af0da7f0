"""The model step in child processes: sharded by user it gives what the in-thread core gives,
event for event (batches handed over one after another and pipelined, users moving between
shards), the split evens out the shards' work, and a failing child fails the batch with a
message that says why."""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from torch.testing import assert_close

from replay.datasets import InteractionLog
from replay.run import replay_log
from replay.schema import Interaction, user_key
from stream.modelproc import ModelProcess, ModelProcessError, ModelShards, assign_shards
from stream.offline import build_view, interactions
from stream.prequential import ScoringOptions
from stream.records import Prediction, decode_predictions
from stream.runners import SeqRecRunner
from stream.settings import Settings
from stream.userstate import decode_snapshot
from stream.worker import IN_FLIGHT, WorkerCore, build_runners

MODELS = ["pop", "sasrec", "ttt4rec", "ttt4rec:frozen"]


def _comparable(records: list[tuple[bytes, bytes]]) -> list[Prediction]:
    """Decoded predictions without the wall-clock stamp, in event order."""
    rows: list[Prediction] = []
    for _, value in records:
        decoded = decode_predictions(value)
        assert isinstance(decoded, list)
        rows += [dataclasses.replace(row, predicted_ms=None) for row in decoded]
    return sorted(rows, key=lambda row: (row.event_id, row.model))


def _assert_same_snapshot(got: bytes, want: bytes, stateful: dict[str, SeqRecRunner]) -> None:
    """Same events, seen items and windows; hidden vectors and states equal up to the float
    rounding of differently shaped batches (the shards batch fewer users together)."""
    a, b = decode_snapshot(got, stateful), decode_snapshot(want, stateful)
    assert (a.user, a.last_event_id, a.seen) == (b.user, b.last_event_id, b.seen)
    assert a.states.keys() == b.states.keys() and a.hidden.keys() == b.hidden.keys()
    for name in a.states:
        for key, tensor in a.states[name].tensors().items():
            assert_close(tensor, b.states[name].tensors()[key], atol=1e-12, rtol=1e-12)
        assert_close(a.hidden[name], b.hidden[name], atol=1e-12, rtol=1e-12)


def _shards_beside_a_reference(
    bootstrap: str, topic: str, log: InteractionLog, checkpoint_dir: Path, processes: int
) -> tuple[list[Interaction], dict[str, SeqRecRunner], WorkerCore, ModelShards]:
    """The log replayed to ``topic``; -> its events, the stateful runners, an in-thread core
    over the whole log, and ``processes`` model processes reading the topic."""
    replay_log(log, bootstrap, topic=topic, partitions=2, items_topic=None)
    settings = Settings(
        interactions_topic=topic, models=MODELS, checkpoint_dir=str(checkpoint_dir),
        device="cpu", view_timeout_s=60.0, model_processes=processes,
    )  # fmt: skip
    events = list(interactions(log))
    runners = build_runners(settings)
    stateful = {r.name: r for r in runners if isinstance(r, SeqRecRunner)}
    reference = WorkerCore(runners, build_view(events, 86_400.0, None), ScoringOptions())
    return events, stateful, reference, ModelShards(settings, bootstrap, processes)


@pytest.mark.integration
def test_sharded_model_processes_equal_the_in_thread_core(
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    tiny_log: InteractionLog,
    checkpoint_dir: Path,
) -> None:
    events, stateful, reference, shards = _shards_beside_a_reference(
        kafka_bootstrap, unique_name("interactions"), tiny_log, checkpoint_dir, processes=3
    )
    try:
        shards.start_view()
        stored: dict[int, bytes] = {}
        for start in range(0, len(events), 50):
            batch = events[start : start + 50]
            blobs = {e.user: stored.get(e.user) for e in batch}
            expected = reference.process(batch, blobs)
            got = shards.process(batch, blobs)
            assert got.blobs.keys() == expected.blobs.keys()
            for key, blob in got.blobs.items():
                _assert_same_snapshot(blob, expected.blobs[key], stateful)
            assert _comparable(got.records) == _comparable(expected.records)
            for user in {e.user for e in batch}:
                stored[user] = got.blobs[user_key(user)]
    finally:
        shards.stop()


def _events(users: list[int]) -> list[Interaction]:
    return [
        Interaction(event_id=i + 1, user=user, item=1, rating=None, time=float(i), dataset="t")
        for i, user in enumerate(users)
    ]


def test_the_split_evens_out_the_shards_when_one_user_holds_most_of_a_batch() -> None:
    # user 2 has 6 events, users 4, 6, 8 two each: by user id modulo 2 one shard would get all 12
    events = _events([2, 4, 2, 6, 2, 8, 2, 4, 2, 6, 2, 8])
    chosen = assign_shards(events, {}, {}, 2)
    loads = [sum(1 for e in events if chosen[e.user] == shard) for shard in (0, 1)]
    assert sorted(loads) == [6, 6]
    assert chosen[4] == chosen[6] == chosen[8] != chosen[2]


def test_an_in_flight_user_stays_with_the_shard_that_has_its_snapshot() -> None:
    events = _events([1, 1, 1, 3, 5, 7])
    # the newest snapshots of users 1 and 3 are still in flight from shard 1: only shard 1 has
    # them, even if that makes shard 1 the busier one; user 5 is stored, so it can move
    owner = {1: 1, 3: 1, 5: 1}
    stored = {1: IN_FLIGHT, 3: IN_FLIGHT, 5: b"stored", 7: None}
    assert assign_shards(events, stored, owner, 2) == {1: 1, 3: 1, 5: 0, 7: 0}


def test_a_stored_user_stays_with_its_shard_while_that_shard_has_room() -> None:
    events = _events([1, 2, 3, 4])
    owner = {1: 1, 2: 1, 3: 0, 4: 1}
    chosen = assign_shards(events, {u: b"stored" for u in owner}, owner, 2)
    assert chosen[1] == chosen[2] == 1 and chosen[3] == 0  # where their decoded snapshots are
    assert chosen[4] == 0  # shard 1 has its even share of 2 already


@pytest.mark.integration
def test_pipelined_batches_with_users_in_flight_equal_the_in_thread_core(
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    tiny_log: InteractionLog,
    checkpoint_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As the agent hands batches over: the next batch goes out before the last is collected,
    its users from the batch before marked IN_FLIGHT, so they must stay on their shard while
    the others move to even out the load; a shard a user leaves is told to forget it."""
    events, stateful, reference, shards = _shards_beside_a_reference(
        kafka_bootstrap, unique_name("interactions"), tiny_log, checkpoint_dir, processes=2
    )
    forgotten: list[list[int]] = [[] for _ in shards.shards]
    left: list[list[int]] = [[] for _ in shards.shards]
    for index, process in enumerate(shards.shards):

        def spy(users: list[int], _index: int = index, _forget: Any = process.forget) -> None:
            forgotten[_index] += users
            _forget(users)

        monkeypatch.setattr(process, "forget", spy)
    try:
        shards.start_view()
        written: dict[int, bytes] = {}  # the table: snapshots of collected batches
        expected_blobs: dict[int, bytes] = {}
        pending: list[tuple[list[ModelProcess], set[int]]] = []
        moved = 0
        got_records: list[tuple[bytes, bytes]] = []
        expected_records: list[tuple[bytes, bytes]] = []
        batches = [events[start : start + 30] for start in range(0, len(events), 30)]
        for batch in batches:
            users = {e.user for e in batch}
            in_flight = set().union(*(flight for _, flight in pending))
            stored = {u: IN_FLIGHT if u in in_flight else written.get(u) for u in users}
            before = dict(shards.owner)
            pending.append((shards.submit(batch, stored), users))
            for user in users:
                if user in before and shards.owner[user] != before[user]:
                    assert user not in in_flight
                    left[before[user]].append(user)
                    moved += 1
            expected = reference.process(batch, {u: expected_blobs.get(u) for u in users})
            expected_blobs.update({u: expected.blobs[user_key(u)] for u in users})
            expected_records += expected.records
            if len(pending) == 2:  # the agent's pipeline depth
                busy, done = pending.pop(0)
                output = shards.collect(busy)
                got_records += output.records
                written.update({u: output.blobs[user_key(u)] for u in done})
        for busy, done in pending:
            output = shards.collect(busy)
            got_records += output.records
            written.update({u: output.blobs[user_key(u)] for u in done})
        assert moved > 0, "no user changed shard: the test does not cover moving"
        assert [sorted(users) for users in forgotten] == [sorted(users) for users in left]
        assert written.keys() == expected_blobs.keys()
        for user, blob in written.items():
            _assert_same_snapshot(blob, expected_blobs[user], stateful)
        assert _comparable(got_records) == _comparable(expected_records)
    finally:
        shards.stop()


def test_a_forgotten_user_is_no_longer_resident(
    tiny_log: InteractionLog, checkpoint_dir: Path
) -> None:
    settings = Settings(models=MODELS, checkpoint_dir=str(checkpoint_dir), device="cpu")
    events = list(interactions(tiny_log))[:40]
    core = WorkerCore(build_runners(settings), build_view(events, 86_400.0, None), ScoringOptions())
    core.process(events, {})
    user = events[0].user
    assert core.snapshot(user, IN_FLIGHT) is not None
    resident = core.users_resident()
    core.forget([user])
    assert core.users_resident() == resident - 1
    with pytest.raises(RuntimeError, match="never made"):
        core.snapshot(user, IN_FLIGHT)


def test_a_missing_checkpoint_fails_the_start_and_names_the_file(tmp_path: Path) -> None:
    settings = Settings(models=["pop", "sasrec"], checkpoint_dir=str(tmp_path), device="cpu")
    with pytest.raises(ModelProcessError, match="sasrec.safetensors"):
        ModelShards(settings, "127.0.0.1:1", 1)


def test_a_killed_model_process_fails_the_batch(
    tiny_log: InteractionLog, checkpoint_dir: Path
) -> None:
    settings = Settings(models=["pop", "sasrec"], checkpoint_dir=str(checkpoint_dir), device="cpu")
    shards = ModelShards(settings, "127.0.0.1:1", 1)
    try:
        pid = shards.shards[0].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        batch = list(interactions(tiny_log))[:5]
        with pytest.raises(ModelProcessError, match="gone|died|closed"):
            shards.process(batch, {})
    finally:
        shards.stop()
