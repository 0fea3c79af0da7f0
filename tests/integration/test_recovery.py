"""kill -9 the worker mid-stream (or stop it with SIGTERM), start a new one: the final
predictions and every user's state are those of an uninterrupted replay (the offline replay of
the same pure function, which the pipeline tests show the uninterrupted Kafka path equals):
predictions exactly, user snapshots exactly in their integer parts (last event id, seen items,
windows) and to float64 rounding in their float parts (batched kernels may change the last bits
with the batch shape)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from replay.pacing import parse_speed
from replay.synthetic import SyntheticConfig, generate
from stream.pipeline import Group, RunningGroup, run_pipeline
from stream.processes import WorkerProcess
from stream.sink import PREDICTIONS_FILE
from stream.testing import tiny_checkpoints

from .test_pipeline import EXACT, _offline, _settings, assert_states_match_offline

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("stop", ["kill -9", "SIGTERM"])
def test_stop_mid_stream_then_restart_gives_identical_results(
    tmp_path: Path, unique_name: Callable[[str], str], kafka_bootstrap: str, stop: str
) -> None:
    """SIGTERM is a clean stop: the worker finishes the batches it has taken (their predictions,
    snapshots and acks) and exits 0."""
    log = generate(SyntheticConfig(users=40, items=50, events=700, topics=4, span_days=6, seed=9))
    checkpoints = tmp_path / "checkpoints"
    tiny_checkpoints(checkpoints, log, ["sasrec", "ttt4rec"])
    settings = _settings(
        unique_name, checkpoints, unique_name("interactions"), batch_size=4, max_wait_ms=20.0
    )
    total = log.events.height
    killed_at: list[int] = []
    exit_codes: list[int | None] = []

    def kill_and_restart(topic: str, running: list[RunningGroup]) -> None:
        group = running[0]

        def watch() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                done = group.sink.state.per_model.get("ttt4rec", 0)
                if done >= total // 4:
                    if stop == "SIGTERM":  # out of the group first: its exit is no failure
                        exit_codes.append(group.processes.pop(0).stop(timeout_s=60))
                    else:
                        group.processes[0].kill()
                    killed_at.append(done)
                    restarted = WorkerProcess(group.settings, tmp_path / "b4" / "workers", "again")
                    group.processes.append(restarted.start())
                    return
                time.sleep(0.02)

        threading.Thread(target=watch, daemon=True).start()

    # paced replay (~6 s): the kill lands while events are still arriving
    result = run_pipeline(
        log,
        [Group(settings, tmp_path / "b4")],
        kafka_bootstrap,
        timeout_s=240,
        replay_options={"speed": parse_speed("90000x")},
        before_replay=kill_and_restart,
    )
    assert killed_at and killed_at[0] < total, "the worker was not stopped mid-stream"
    if stop == "SIGTERM":
        assert exit_codes == [0], (tmp_path / "b4" / "workers" / "worker-0.log").read_text()
    for worker_log in (tmp_path / "b4" / "workers").glob("*.log"):
        assert "never reached the agent" not in worker_log.read_text(errors="replace")
    assert result.state.complete()
    offline, offline_states = _offline(log, settings)
    streamed = pl.read_parquet(tmp_path / "b4" / PREDICTIONS_FILE).sort(["model", "event_id"])
    assert streamed.select(EXACT).equals(offline.sort(["model", "event_id"]).select(EXACT))
    assert_states_match_offline(kafka_bootstrap, settings, offline_states)
