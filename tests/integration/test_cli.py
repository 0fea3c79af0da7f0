"""``python -m stream run`` end to end in a subprocess (embedded broker, tiny checkpoints given),
and its clear failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from replay.synthetic import SyntheticConfig, generate
from stream.cli import app
from stream.testing import tiny_checkpoints

SYNTHETIC = {"users": 30, "items": 40, "events": 400, "seed": 4}


@pytest.mark.integration
def test_run_synthetic_end_to_end(tmp_path: Path) -> None:
    log = generate(SyntheticConfig(**SYNTHETIC))  # type: ignore[arg-type]
    checkpoints = tmp_path / "checkpoints"
    tiny_checkpoints(checkpoints, log, ["sasrec", "ttt4rec", "darec"])
    out = tmp_path / "run"
    options = [f"--{k}={v}" for k, v in SYNTHETIC.items()]
    result = subprocess.run(
        [sys.executable, "-m", "stream", "run", "synthetic", *options, "--out", str(out),
         "--models", "pop,sasrec,ttt4rec:frozen,darec", "--checkpoint-dir", str(checkpoints),
         "--partitions", "2", "--device", "cpu", "--window", "1d", "--no-report",
         "--timeout-s", "240"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["events"]["per_model"] == {
        "pop": 400, "sasrec": 400, "ttt4rec:frozen": 400, "darec": 400
    }  # fmt: skip
    assert manifest["checkpoints"]["sasrec"]["trained_now"] is False
    assert manifest["versions"]["faust-streaming"]
    windows = pl.read_parquet(out / "windows.parquet")
    assert windows.group_by("model").agg(pl.col("n_events").sum()).sort("model").rows() == [
        ("darec", 400), ("pop", 400), ("sasrec", 400), ("ttt4rec:frozen", 400)
    ]  # fmt: skip
    assert (out / "ground_truth.parquet").is_file()


def test_unknown_model_fails_fast_with_its_name(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["run", "synthetic", "--events", "100", "--users", "10", "--items", "20",
              "--models", "pop,nosuchmodel", "--out", str(tmp_path / "x"), "--no-report"],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "nosuchmodel" in result.output


def test_bad_duration_and_settings_are_usage_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    bad_window = runner.invoke(app, ["run", "synthetic", "--out", str(tmp_path), "--window", "x"])
    assert bad_window.exit_code != 0 and "duration" in bad_window.output
    bad_batch = runner.invoke(
        app, ["run", "synthetic", "--out", str(tmp_path), "--batch-size", "0"]
    )
    assert bad_batch.exit_code == 2 and "batch_size" in bad_batch.output
