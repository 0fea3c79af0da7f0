"""The model step in child processes: sharded by user it gives what the in-thread core gives,
event for event, and a failing child fails the batch with a message that says why."""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from torch.testing import assert_close

from replay.datasets import InteractionLog
from replay.run import replay_log
from replay.schema import user_key
from stream.modelproc import ModelProcessError, ModelShards
from stream.offline import build_view, interactions
from stream.prequential import ScoringOptions
from stream.records import Prediction, decode_predictions
from stream.runners import SeqRecRunner
from stream.settings import Settings
from stream.userstate import decode_snapshot
from stream.worker import WorkerCore, build_runners

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


@pytest.mark.integration
def test_sharded_model_processes_equal_the_in_thread_core(
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    tiny_log: InteractionLog,
    checkpoint_dir: Path,
) -> None:
    topic = unique_name("interactions")
    replay_log(tiny_log, kafka_bootstrap, topic=topic, partitions=2, items_topic=None)
    settings = Settings(
        interactions_topic=topic, models=MODELS, checkpoint_dir=str(checkpoint_dir),
        device="cpu", view_timeout_s=60.0, model_processes=3,
    )  # fmt: skip
    events = list(interactions(tiny_log))
    runners = build_runners(settings)
    stateful = {r.name: r for r in runners if isinstance(r, SeqRecRunner)}
    reference = WorkerCore(runners, build_view(events, 86_400.0, None), ScoringOptions())
    shards = ModelShards(settings, kafka_bootstrap, settings.model_processes)
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
