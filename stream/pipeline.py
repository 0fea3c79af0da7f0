"""One streaming evaluation end to end: topics, workers, sinks, replay, bounded waits, cleanup.

Used by ``python -m stream run``, the integration tests and the benchmark. Several *groups* may
evaluate the same replay side by side (each its own Faust app id, predictions topic, workers and
sink), e.g. batch size 1 with two workers next to batch size 256 with one. Everything started
here is stopped here (workers by PID, sink threads by a stop flag), on success or failure.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from replay.datasets import InteractionLog
from stream.processes import WorkerProcess
from stream.runners import ModelSpec
from stream.settings import Settings
from stream.sink import KafkaSink, SinkConfig, SinkIncomplete, SinkState

log = logging.getLogger(__name__)


class PipelineError(RuntimeError):
    """A part of the pipeline failed; the message says which and shows its log tail."""


@dataclass
class Group:
    settings: Settings  # app_id / predictions_topic must differ between groups
    out_dir: Path
    workers: int = 1


@dataclass
class GroupResult:
    state: SinkState
    exit_codes: list[int | None]


@dataclass
class PipelineResult:
    groups: list[GroupResult]
    replay: dict[str, Any]
    wall_s: float
    replay_s: float
    drain_s: float  # replay finished -> every sink complete
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def state(self) -> SinkState:
        return self.groups[0].state


class RunningGroup:
    """A group's worker processes and sink thread while the pipeline runs."""

    def __init__(self, group: Group, bootstrap: str, timeout_s: float) -> None:
        self.group = group
        self.settings = replace(group.settings, bootstrap=bootstrap)
        self.processes = [
            WorkerProcess(self.settings, group.out_dir / "workers", f"worker-{i}")
            for i in range(group.workers)
        ]
        expected = None if self.settings.passthrough else self.settings.models
        self.sink = KafkaSink(
            bootstrap,
            self.settings.predictions_topic,
            SinkConfig(
                group.out_dir,
                self.settings.window_s,
                self.settings.half_life_s,
                self.settings.sink_flush_s,
            ),
            expected_models=[ModelSpec.parse(m).name for m in expected] if expected else None,
        )
        self.error: list[BaseException] = []
        self.thread = threading.Thread(target=self._consume, args=(timeout_s,), daemon=True)

    def _consume(self, timeout_s: float) -> None:
        try:
            self.sink.run(timeout_s)
        except BaseException as error:
            self.error.append(error)

    def start(self) -> None:
        self.group.out_dir.mkdir(parents=True, exist_ok=True)
        for process in self.processes:
            process.start()
        self.thread.start()

    def check_workers(self) -> None:
        for process in self.processes:
            code = process.returncode()
            if code is not None and code != -9:  # -9: killed on purpose (recovery tests)
                raise PipelineError(
                    f"worker {process.datadir.name} of {self.settings.app_id} exited with code "
                    f"{code}:\n{process.log_tail()}"
                )

    def stop(self) -> list[int | None]:
        self.sink.stop_requested.set()
        codes = [process.stop() for process in self.processes]
        if self.thread.is_alive():
            self.thread.join(timeout=30)
        return codes


def ensure_topics(bootstrap: str, settings: Settings) -> None:
    from replay.producer import ensure_topic

    ensure_topic(bootstrap, settings.interactions_topic, settings.partitions)
    ensure_topic(bootstrap, settings.predictions_topic, settings.partitions)
    ensure_topic(bootstrap, settings.dead_letter_topic, 1)


def run_pipeline(
    log_: InteractionLog,
    groups: Sequence[Group],
    bootstrap: str,
    timeout_s: float = 600.0,
    replay_options: dict[str, Any] | None = None,
    before_replay: Callable[[str, list[RunningGroup]], None] | None = None,
    progress: Callable[[list[RunningGroup]], None] | None = None,
    progress_interval_s: float = 0.1,
) -> PipelineResult:
    """Replay ``log_`` once through every group; return when every sink is complete.
    ``progress`` is called about every ``progress_interval_s`` while the sinks drain."""
    from replay.run import replay_log

    if not groups:
        raise ValueError("no worker group configured")
    first = groups[0].settings
    topics = {g.settings.interactions_topic for g in groups}
    partitions = {g.settings.partitions for g in groups}
    if len(topics) != 1 or len(partitions) != 1:
        raise ValueError("all groups must read the same interactions topic and partition count")
    started = time.monotonic()
    for group in groups:
        ensure_topics(bootstrap, replace(group.settings, bootstrap=bootstrap))
    running = [RunningGroup(group, bootstrap, timeout_s) for group in groups]
    try:
        for item in running:
            item.start()
        if before_replay is not None:
            before_replay(first.interactions_topic, running)
        replay_started = time.monotonic()
        result = replay_log(
            log_,
            bootstrap,
            topic=first.interactions_topic,
            partitions=first.partitions,
            items_topic=None,
            **(replay_options or {}),
        )
        replay_done = time.monotonic()
        deadline = started + timeout_s
        while not all(item.sink.finished.wait(progress_interval_s) for item in running):
            if progress is not None:
                progress(running)
            for item in running:
                item.check_workers()
            if time.monotonic() > deadline:
                for item in running:
                    item.sink.stop_requested.set()
        drained = time.monotonic()
        for item in running:
            if item.error:
                tails = "\n".join(p.log_tail(2000) for p in item.processes)
                raise PipelineError(
                    f"sink of {item.settings.app_id}: {item.error[0]}\nworker logs:\n{tails}"
                ) from item.error[0]
        return PipelineResult(
            groups=[GroupResult(item.sink.state, item.stop()) for item in running],
            replay=result.as_dict(),
            wall_s=time.monotonic() - started,
            replay_s=replay_done - replay_started,
            drain_s=drained - replay_done,
        )
    finally:
        for item in running:
            item.stop()


__all__ = ["Group", "PipelineError", "PipelineResult", "SinkIncomplete", "run_pipeline"]
