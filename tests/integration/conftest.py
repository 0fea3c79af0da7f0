"""Integration tests run torch with one thread (``one_torch_thread`` in the root conftest)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _torch_on_one_thread(one_torch_thread: None) -> None:
    """Every integration test runs torch on one thread."""
