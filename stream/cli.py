"""``python -m stream``: the whole pipeline in one command, plus its parts.

    python -m stream run ml-1m --data-dir ../shared/data/ml-1m-subset --out runs/demo
    python -m stream run synthetic --events 20000 --models pop,sasrec,ttt4rec:frozen --out runs/s
    python -m stream worker            # = faust -A stream.app worker --without-web
    python -m stream sink --out DIR    # the Parquet sink on its own
    python -m stream offline ml-1m --data-dir ... --out DIR   # same metrics, no Kafka

``run`` starts the embedded broker unless ``--bootstrap`` is given, trains missing checkpoints
(bounded budget, events before the pretraining cutoff), starts the worker(s) and the sink, replays
the stream, waits for every end-of-stream marker, writes the Parquet outputs and a manifest, calls
``python -m stream.report RUN_DIR`` when that module exists, and stops everything it started.
Any failure exits non-zero.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from contextlib import ExitStack
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from stream.settings import Settings, SettingsError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])

DAY = 86_400.0


class DatasetName(str, Enum):
    ml_1m = "ml-1m"
    synthetic = "synthetic"


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _duration_s(text: str) -> float:
    """``7d``, ``12h``, ``30m``, ``45s`` or plain seconds."""
    units = {"d": DAY, "h": 3600.0, "m": 60.0, "s": 1.0}
    cleaned = text.strip().lower()
    try:
        if cleaned and cleaned[-1] in units:
            return float(cleaned[:-1]) * units[cleaned[-1]]
        return float(cleaned)
    except ValueError as error:
        raise typer.BadParameter(f"{text!r} is not a duration like 7d, 12h, 30m or 45s") from error


ModelsOpt = Annotated[
    str | None,
    typer.Option(help="Comma-separated models, e.g. pop,sasrec,ttt4rec,ttt4rec:frozen,t2arec."),
]
ConfigOpt = Annotated[Path | None, typer.Option(help="Settings file (TOML or YAML).")]
BootstrapOpt = Annotated[
    str | None, typer.Option(help="Kafka HOST:PORT; default: start the embedded broker.")
]


def _load_log(
    dataset: DatasetName,
    data_dir: Path | None,
    limit: int | None,
    start: str | None,
    end: str | None,
    inject: str | None,
    inject_at: str,
    cohort_frac: float,
    seed: int,
    users: int,
    items: int,
    events: int,
) -> Any:
    from replay.inject import InjectConfig
    from replay.run import ML1M, load, prepare
    from replay.select import parse_when
    from replay.synthetic import SyntheticConfig

    spec: Any
    if dataset is DatasetName.synthetic:
        spec = SyntheticConfig(users=users, items=items, events=events, seed=seed)
    else:
        spec = ML1M(data_dir=data_dir)
    log = load(spec)
    inject_config = InjectConfig(inject, inject_at, cohort_frac, seed) if inject else None  # type: ignore[arg-type]
    return prepare(
        log,
        inject_config,
        start=parse_when(start) if start else None,
        end=parse_when(end) if end else None,
        limit=limit,
    )


@app.command()
def run(
    dataset: Annotated[DatasetName, typer.Argument(help="ml-1m or synthetic")],
    out: Annotated[Path, typer.Option(help="Run folder for Parquet files and the manifest.")],
    data_dir: Annotated[Path | None, typer.Option(help="ML-1M folder (ratings.dat).")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Replay the first N events.")] = None,
    start: Annotated[str | None, typer.Option(help="Events at/after this date.")] = None,
    end: Annotated[str | None, typer.Option(help="Events before this date.")] = None,
    inject: Annotated[str | None, typer.Option(help="Inject a shift: genre-swap, ...")] = None,
    inject_at: Annotated[str, typer.Option(help="Shift time: date or fraction.")] = "0.5",
    cohort_frac: Annotated[float, typer.Option(help="Shifted share of users.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed for injection, generator, training.")] = 0,
    users: Annotated[int, typer.Option(help="synthetic: users")] = 1_000,
    items: Annotated[int, typer.Option(help="synthetic: items")] = 2_000,
    events: Annotated[int, typer.Option(help="synthetic: events")] = 100_000,
    speed: Annotated[str, typer.Option(help="Replay speed: max or a factor like 10000x.")] = "max",
    partitions: Annotated[int, typer.Option(min=1, help="Interactions topic partitions.")] = 4,
    models: ModelsOpt = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    batch_size: Annotated[int | None, typer.Option(help="Micro-batch size.")] = None,
    max_wait_ms: Annotated[float | None, typer.Option(help="Micro-batch max wait.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    dtype: Annotated[str | None, typer.Option(help="float64 (exact) or float32.")] = None,
    window: Annotated[str, typer.Option(help="Tumbling window size, e.g. 7d.")] = "7d",
    half_life: Annotated[str, typer.Option(help="Fading half-life, e.g. 7d.")] = "7d",
    checkpoint_dir: Annotated[
        Path | None, typer.Option(help="Checkpoints (default: OUT/checkpoints).")
    ] = None,
    pretrain_frac: Annotated[
        float, typer.Option(help="Train missing checkpoints on events before this share.")
    ] = 0.3,
    train_budget_s: Annotated[float, typer.Option(help="Training seconds per model.")] = 120.0,
    bootstrap: BootstrapOpt = None,
    config: ConfigOpt = None,
    timeout_s: Annotated[float, typer.Option(help="Longest wait for the stream to end.")] = 3600.0,
    report: Annotated[bool, typer.Option(help="Run python -m stream.report at the end.")] = True,
) -> None:
    """Replay DATASET through the worker(s) into Parquet under OUT."""
    from stream.orchestrate import RunRequest, execute_run

    # SIGTERM unwinds like Ctrl-C, so everything started below is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    try:
        overrides = {
            "models": models.split(",") if models else None,
            "batch_size": batch_size,
            "max_wait_ms": max_wait_ms,
            "device": device,
            "dtype": dtype,
            "partitions": partitions,
            "window_s": _duration_s(window),
            "half_life_s": _duration_s(half_life),
        }
        settings = Settings.load(config, overrides=overrides)
    except SettingsError as error:
        _fail(str(error), 2)
    try:
        log = _load_log(
            dataset, data_dir, limit, start, end, inject, inject_at, cohort_frac, seed,
            users, items, events,
        )  # fmt: skip
    except (ValueError, OSError) as error:
        _fail(f"cannot load {dataset.value}: {error}", 2)
    request = RunRequest(
        log=log,
        settings=settings,
        out_dir=out,
        workers=workers,
        bootstrap=bootstrap,
        speed=speed,
        checkpoint_dir=checkpoint_dir or out / "checkpoints",
        pretrain_frac=pretrain_frac,
        train_budget_s=train_budget_s,
        seed=seed,
        timeout_s=timeout_s,
        argv=sys.argv,
    )
    with ExitStack() as stack:
        try:
            manifest = execute_run(request, stack)
        except Exception as error:  # every failure: clear message, non-zero exit
            _fail(f"{type(error).__name__}: {error}")
    typer.echo(f"run complete: {manifest['events']['per_model']} -> {out}")
    if report:
        _report_hook(out)


def _report_hook(out: Path) -> None:
    """``python -m stream.report RUN_DIR`` when the report module is installed."""
    if importlib.util.find_spec("stream.report") is None:
        typer.echo("no stream.report module: skipping the report step", err=True)
        return
    result = subprocess.run([sys.executable, "-m", "stream.report", str(out)], check=False)
    if result.returncode != 0:
        _fail(f"python -m stream.report {out} exited with code {result.returncode}")


@app.command()
def worker(
    datadir: Annotated[Path, typer.Option(help="Faust data folder (one per worker).")] = Path(
        "runs/worker-data"
    ),
    config: ConfigOpt = None,
) -> None:
    """Run one evaluation worker (faust -A stream.app worker --without-web)."""
    env = dict(os.environ)
    if config is not None:
        env["SHIFTSTREAM_CONFIG"] = str(config)
    command = [sys.executable, "-m", "faust", "-A", "stream.app", "--datadir", str(datadir),
               "-l", "warn", "worker", "--without-web"]  # fmt: skip
    raise typer.Exit(subprocess.call(command, env=env))


@app.command()
def sink(
    out: Annotated[Path, typer.Option(help="Folder for the Parquet files.")],
    bootstrap: BootstrapOpt = None,
    config: ConfigOpt = None,
    timeout_s: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 3600.0,
) -> None:
    """Consume the predictions topic into Parquet until every end marker arrived."""
    from stream.bootstrap import resolve_bootstrap
    from stream.runners import ModelSpec
    from stream.sink import KafkaSink, SinkConfig, SinkIncomplete

    settings = Settings.load(config)
    address = resolve_bootstrap(bootstrap or settings.bootstrap or None)
    kafka_sink = KafkaSink(
        address,
        settings.predictions_topic,
        SinkConfig(out, settings.window_s, settings.half_life_s, settings.sink_flush_s),
        expected_models=[ModelSpec.parse(m).name for m in settings.models],
    )
    try:
        state = kafka_sink.run(timeout_s)
    except SinkIncomplete as error:
        _fail(str(error))
    typer.echo(f"sink complete: {state.summary()['events_per_model']} -> {out}")


@app.command()
def offline(
    dataset: Annotated[DatasetName, typer.Argument(help="ml-1m or synthetic")],
    out: Annotated[Path, typer.Option(help="Folder for the Parquet files.")],
    data_dir: Annotated[Path | None, typer.Option(help="ML-1M folder (ratings.dat).")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="The first N events.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic generator.")] = 0,
    events: Annotated[int, typer.Option(help="synthetic: events")] = 100_000,
    models: ModelsOpt = None,
    config: ConfigOpt = None,
) -> None:
    """The same prequential metrics without Kafka (the reference the stream must equal)."""
    from stream.aggregate import window_table
    from stream.offline import evaluate_offline, interactions, predictions_frame
    from stream.prequential import ScoringOptions
    from stream.sink import PREDICTIONS_FILE, WINDOWS_FILE, write_parquet_atomic
    from stream.worker import build_runners

    settings = Settings.load(config, overrides={"models": models.split(",") if models else None})
    log = _load_log(
        dataset, data_dir, limit, None, None, None, "0.5", 0.2, seed, 1000, 2000, events
    )
    runners = build_runners(settings)
    options = ScoringOptions(settings.candidates, settings.exclude_seen)  # type: ignore[arg-type]
    predictions, _ = evaluate_offline(
        list(interactions(log)), runners, options, settings.batch_size,
        settings.popularity_refresh_s, settings.popularity_window_s or None,
    )  # fmt: skip
    frame = predictions_frame(predictions)
    write_parquet_atomic(frame, out / PREDICTIONS_FILE)
    windows = window_table(frame, settings.window_s, half_life_s=settings.half_life_s)
    write_parquet_atomic(windows, out / WINDOWS_FILE)
    typer.echo(f"{frame.height} prediction rows -> {out}")


def main() -> None:
    app()
