"""Fixtures for the stream tests: a tiny ordered log and tiny registry-model checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from replay.datasets import InteractionLog
from stream.testing import make_tiny_log, tiny_checkpoints


@pytest.fixture(scope="session")
def tiny_log() -> InteractionLog:
    return make_tiny_log(n_users=24, n_items=40, n_events=360, seed=3)


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory, tiny_log: InteractionLog) -> Path:
    folder = tmp_path_factory.mktemp("checkpoints")
    tiny_checkpoints(folder, tiny_log, ["sasrec", "ttt4rec"])
    return folder


@pytest.fixture(autouse=True)
def _torch_on_one_thread(one_torch_thread: None) -> None:
    """Every stream test runs torch on one thread (``one_torch_thread`` in the root conftest)."""
