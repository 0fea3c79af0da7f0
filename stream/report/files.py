"""Where a run folder keeps its outputs: the one place the report's file names live."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl


class ReportError(ValueError):
    """The report cannot be made as asked; the message says why."""


class RunFolderError(ReportError):
    """The run folder lacks something the report needs; the message names it."""


def _parquet_source(run_dir: Path, stem: str) -> Path | None:
    """``stem.parquet``, or a ``stem/`` folder of Parquet parts (one per window x partition)."""
    single = run_dir / f"{stem}.parquet"
    if single.is_file():
        return single
    folder = run_dir / stem
    if folder.is_dir() and any(folder.rglob("*.parquet")):
        return folder
    return None


def scan(source: Path) -> pl.LazyFrame:
    if source.is_dir():
        return pl.scan_parquet(source / "**" / "*.parquet")
    return pl.scan_parquet(source)


@dataclass(frozen=True)
class RunFiles:
    run_dir: Path
    predictions: Path  # per (event, model) rows, stream.aggregate.PREDICTION_SCHEMA
    windows: Path | None  # per (model, window) rows, stream.aggregate.WINDOW_SCHEMA
    manifest: Path | None  # JSON: run settings (window size, half-life, models, ...)
    ground_truth: Path | None  # replay.datasets.GROUND_TRUTH_SCHEMA, one row per shifted user
    sink_summary: Path | None  # the sink's JSON: completeness, duplicates dropped, malformed

    @property
    def report_dir(self) -> Path:
        return self.run_dir / "report"

    @classmethod
    def from_dir(cls, run_dir: Path) -> RunFiles:
        if not run_dir.is_dir():
            raise RunFolderError(f"run folder {run_dir} does not exist")
        predictions = _parquet_source(run_dir, "predictions")
        if predictions is None:
            raise RunFolderError(
                f"no predictions in {run_dir}: expected predictions.parquet or a predictions/ "
                "folder of Parquet files"
            )
        manifest_path = _file(run_dir / "manifest.json")
        return cls(
            run_dir=run_dir,
            predictions=predictions,
            windows=_parquet_source(run_dir, "windows"),
            manifest=manifest_path,
            ground_truth=_ground_truth(run_dir, read_manifest(manifest_path)),
            sink_summary=_file(run_dir / "sink.json"),
        )


def _file(path: Path) -> Path | None:
    return path if path.is_file() else None


def read_manifest(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RunFolderError(f"manifest {path} is not valid JSON: {error}") from error
    if not isinstance(document, dict):
        raise RunFolderError(f"manifest {path} is not a JSON object")
    return document


def _ground_truth(run_dir: Path, manifest: dict[str, Any]) -> Path | None:
    """The run folder's copy first, else the replayer's file named in the manifest."""
    local = run_dir / "ground_truth.parquet"
    if local.is_file():
        return local
    named = manifest.get("ground_truth")
    if isinstance(named, str) and named:
        path = Path(named) if Path(named).is_absolute() else run_dir / named
        if path.is_file():
            return path
    return None
