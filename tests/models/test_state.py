"""``State`` guards: a field must not hide a ``State`` method."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from models.state import State


@dataclass
class Shadowing(State):
    index: Tensor  # type: ignore[assignment]  # hides State.index(users): rejected


@dataclass
class Fine(State):
    position: Tensor


def test_field_hiding_a_method_is_rejected() -> None:
    with pytest.raises(TypeError, match=r"\['index'\] hide State methods"):
        Shadowing(torch.zeros(2))
    assert Fine(torch.arange(3)).index([0, 2]).position.tolist() == [0, 2]
