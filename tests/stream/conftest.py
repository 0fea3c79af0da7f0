"""Fixtures for the stream tests: a tiny ordered log and tiny registry-model checkpoints."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

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
def one_torch_thread() -> Iterator[None]:
    """Tiny models run faster on one thread, and CI has two cores for everything."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
