"""Tiny ML-1M-format folders and a CLI helper for the training and search tests (logs are
written to tmp dirs, never committed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from typer.testing import CliRunner

GENRES = ["Action", "Comedy", "Drama", "Horror"]
runner = CliRunner()


def write_drifting_ml1m(
    folder: Path, users: int, per_user: int, items: int, stride: int, seed: int, titled: bool
) -> Path:
    """``users`` x ``per_user`` ratings one minute apart over ``items`` movies; user u's t-th
    item is 1 + (u * stride + t + noise in 0..2) mod ``items``, so users drift through the
    catalogue. ``titled`` adds a ``movies.dat`` with a title, a year and two genres per movie."""
    rng = np.random.default_rng(seed)
    ratings = []
    for user in range(1, users + 1):
        start = 978_300_000 + user * 1000
        for t in range(per_user):
            item = 1 + (user * stride + t + int(rng.integers(0, 3))) % items
            ratings.append(f"{user}::{item}::{int(rng.integers(1, 6))}::{start + t * 60}")
    (folder / "ratings.dat").write_text("\n".join(ratings) + "\n")
    if titled:
        movies = [
            f"{item}::Movie number {item} ({1960 + item})::"
            f"{GENRES[item % 4]}|{GENRES[(item + 1) % 4]}"
            for item in range(1, items + 1)
        ]
        (folder / "movies.dat").write_text("\n".join(movies) + "\n", encoding="latin-1")
    return folder


def invoke(app: typer.Typer, args: list[str]) -> str:
    """Run a CLI in-process; fail with its output and exception unless it exits 0."""
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output
