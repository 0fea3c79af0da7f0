"""Fixtures for the replayer tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from replay_fixtures import TINY_RATINGS, write_ml1m


@pytest.fixture
def tiny_ml1m_dir(tmp_path: Path) -> Path:
    return write_ml1m(tmp_path / "tiny", [f"{u}::{i}::{r}::{t}" for u, i, r, t in TINY_RATINGS])


@pytest.fixture
def malformed_ml1m_dir(tmp_path: Path) -> Path:
    lines = [f"{u}::{i}::{r}::{t}" for u, i, r, t in TINY_RATINGS]
    lines.insert(2, "1::oops::3::1000")  # line 3: item not a number
    lines.insert(5, "garbage")  # line 6: wrong field count
    lines.append("4::10::5")  # line 11: missing timestamp
    return write_ml1m(tmp_path / "bad", lines)
