"""What ``python -m stream run`` does, as a library: broker, checkpoints, pipeline, manifest.

Checkpoints that are missing are trained with ``models.train.run`` on the events before the
pretraining cutoff (the time of the event at ``pretrain_frac`` of the stream), with a time
budget. The trainer reads ML-1M-layout folders, so the stream's log is written to one first
(``ratings.dat``, integer seconds): the vocabulary is then exactly the stream's items.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from replay.datasets import InteractionLog
from stream.pipeline import Group, RunningGroup, run_pipeline
from stream.runners import ModelSpec
from stream.settings import Settings
from stream.sink import write_json_atomic

MANIFEST_FILE = "manifest.json"
GROUND_TRUTH_FILE = "ground_truth.parquet"
PACKAGES = ("torch", "faust-streaming", "kafka-python", "aiokafka", "polars", "pyarrow", "numpy")


@dataclass
class RunRequest:
    log: InteractionLog
    settings: Settings
    out_dir: Path
    workers: int = 1
    bootstrap: str | None = None
    speed: str = "max"
    checkpoint_dir: Path = Path("checkpoints")
    pretrain_frac: float = 0.3
    train_budget_s: float = 120.0
    seed: int = 0
    timeout_s: float = 3600.0
    argv: list[str] = field(default_factory=list)


def pretrain_cutoff(log: InteractionLog, fraction: float) -> float:
    """Event time of the event at ``fraction`` of the stream: training uses events before it."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"pretraining fraction must be in (0, 1), got {fraction}")
    times = log.events["time"]
    return float(times[min(int(fraction * times.len()), times.len() - 1)])


def write_ml1m_layout(log: InteractionLog, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = log.events.select(
        pl.format(
            "{}::{}::{}::{}",
            pl.col("user"),
            pl.col("item"),
            pl.col("rating").fill_null(1.0).round(0).cast(pl.Int64),
            pl.col("time").round(0).cast(pl.Int64),
        ).alias("line")
    )["line"]
    (folder / "ratings.dat").write_text("\n".join(lines.to_list()) + "\n")
    if log.items is not None:  # titles and genres, for models that read item text (DARec)
        movies = log.items.select(
            pl.format(
                "{}::{}::{}", pl.col("item"), pl.col("title"), pl.col("genres").list.join("|")
            ).alias("line")
        )["line"]
        (folder / "movies.dat").write_text("\n".join(movies.to_list()) + "\n", encoding="latin-1")
    return folder


def ensure_checkpoints(request: RunRequest) -> dict[str, dict[str, Any]]:
    """Train every missing checkpoint; return {model: {path, hash, trained}}."""
    from models import REGISTRY
    from models.checkpoint import file_hash

    bases = sorted({ModelSpec.parse(m).base for m in request.settings.models} - {"pop"})
    unknown = [base for base in bases if base not in REGISTRY]
    if unknown:
        raise ValueError(
            f"unknown model(s) {', '.join(unknown)}; known: pop, {', '.join(sorted(REGISTRY))}"
        )
    cutoff = pretrain_cutoff(request.log, request.pretrain_frac)
    info: dict[str, dict[str, Any]] = {}
    for base in bases:
        path = Path(
            request.settings.checkpoints.get(base) or request.checkpoint_dir / f"{base}.safetensors"
        )
        trained = False
        if not path.is_file():
            from models.train import TrainOptions
            from models.train import run as train

            # a temporary copy of the stream in ML-1M layout (never left in the run folder)
            with tempfile.TemporaryDirectory(prefix="shiftstream-pretrain-") as folder:
                data = write_ml1m_layout(request.log, Path(folder))
                train(
                    TrainOptions(
                        model=base,
                        out=path,
                        dataset="ml-1m",
                        data_dir=data,
                        until=str(cutoff),
                        epochs=50,
                        device=request.settings.device,
                        seed=request.seed,
                        max_train_seconds=request.train_budget_s,
                        quiet=True,
                    )
                )
            if not path.is_file():
                raise RuntimeError(f"training {base} produced no checkpoint at {path}")
            trained = True
        info[base] = {"path": str(path.resolve()), "hash": file_hash(path), "trained_now": trained}
    return info


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except OSError:
        return None
    return result.stdout.strip() or None


class ProgressPrinter:
    """Every ``every_s`` seconds: events evaluated so far (slowest model) and the rate."""

    def __init__(self, total: int, every_s: float = 10.0) -> None:
        self.total = total
        self.every_s = every_s
        self.started = time.monotonic()
        self.last = self.started

    def __call__(self, running: list[RunningGroup]) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last = now
        counts = running[0].sink.state.per_model
        done = min(counts.values()) if counts else 0
        rate = done / max(now - self.started, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        print(
            f"evaluated {done:,}/{self.total:,} events per model ({rate:,.0f} ev/s, "
            f"~{eta:,.0f} s left)",
            file=sys.stderr,
            flush=True,
        )


def execute_run(request: RunRequest, stack: ExitStack) -> dict[str, Any]:
    """Run the pipeline; everything started is registered on ``stack`` for cleanup."""
    from replay.pacing import parse_speed
    from replay.run import write_ground_truth
    from stream.bootstrap import ensure_reachable
    from stream.broker import EmbeddedBroker

    started = time.time()
    out = request.out_dir
    out.mkdir(parents=True, exist_ok=True)
    for entry in request.settings.models:
        ModelSpec.parse(entry)  # a bad entry fails here, before anything starts
    if request.bootstrap:
        bootstrap = request.bootstrap
        ensure_reachable(bootstrap, timeout_s=10.0)
    else:
        bootstrap = stack.enter_context(EmbeddedBroker(port=0))
    checkpoints = ensure_checkpoints(request)
    run_id = f"run-{int(started)}"
    settings = dataclasses.replace(
        request.settings,
        bootstrap=bootstrap,
        app_id=f"shiftstream-{run_id}",
        interactions_topic=f"interactions-{run_id}",
        predictions_topic=f"predictions-{run_id}",
        dead_letter_topic=f"interactions-dead-{run_id}",
        checkpoints={base: item["path"] for base, item in checkpoints.items()},
    )
    has_truth = write_ground_truth(request.log, out / GROUND_TRUTH_FILE)
    result = run_pipeline(
        request.log,
        [Group(settings, out, workers=request.workers)],
        bootstrap,
        timeout_s=request.timeout_s,
        replay_options={"speed": parse_speed(request.speed)},
        progress=ProgressPrinter(request.log.events.height),
    )
    summary = result.state.summary()
    manifest = {
        "run_id": run_id,
        "created_unix": started,
        "command": request.argv,
        "dataset": request.log.name,
        "settings": dataclasses.asdict(settings),
        "workers": request.workers,
        "speed": request.speed,
        "seed": request.seed,
        "pretrain_cutoff_time": pretrain_cutoff(request.log, request.pretrain_frac),
        "pretrain_frac": request.pretrain_frac,
        "checkpoints": checkpoints,
        "versions": _versions(),
        "git_commit": _git_commit(),
        "ties": "pessimistic",
        "events": {
            "stream": request.log.events.height,
            "users": request.log.events["user"].n_unique(),
            "items": request.log.events["item"].n_unique(),
            "per_model": summary["events_per_model"],
            "duplicates_dropped": summary["duplicates_dropped"],
        },
        "replay": result.replay,
        "timings_s": {"wall": result.wall_s, "replay": result.replay_s, "drain": result.drain_s},
        "ground_truth": GROUND_TRUTH_FILE if has_truth else None,
        "files": {"predictions": "predictions.parquet", "windows": "windows.parquet"},
    }
    write_json_atomic(manifest, out / MANIFEST_FILE)
    (out / "settings.json").write_text(json.dumps(dataclasses.asdict(settings), indent=2) + "\n")
    return manifest
