"""``State`` guards: a field must not hide a ``State`` method; bad state bytes are named."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from models.state import State, StateFormatError, decode_state, encode_state


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


def test_bad_state_bytes_raise_an_error_naming_the_problem() -> None:
    good = encode_state(Fine(position=torch.arange(3)), model="m", checkpoint="c0")
    assert decode_state(good, Fine, model="m", checkpoint="c0").position.tolist() == [0, 1, 2]
    with pytest.raises(StateFormatError, match="too short"):
        decode_state(good[:5], Fine)
    with pytest.raises(StateFormatError, match="magic"):
        decode_state(b"XXXX" + good[4:], Fine)
    with pytest.raises(StateFormatError, match="format version 2, this reader knows 1"):
        decode_state(good[:4] + (2).to_bytes(2, "little") + good[6:], Fine)
    with pytest.raises(StateFormatError, match="checkpoint 'c0'"):
        decode_state(good, Fine, checkpoint="c1")
