"""Shared layers: what the contract tests do not reach directly."""

from __future__ import annotations

import doctest

import torch

from models import layers
from models.layers import CausalSelfAttention, slots_in_rows


def test_doctests() -> None:
    assert doctest.testmod(layers).failed == 0


def test_slots_follow_the_given_order_within_each_row() -> None:
    rows = torch.tensor([3, 3, 0, 3, 1, 0])
    slots, width = slots_in_rows(rows, 5)  # row 2 and row 4 have none
    assert slots.tolist() == [0, 1, 0, 2, 0, 1]
    assert width == 3


def test_attention_read_out_equals_the_full_forward_picked() -> None:
    torch.manual_seed(0)
    attention = CausalSelfAttention(16, 4, attn_dropout=0.0).double().eval()
    x = torch.randn(3, 9, 16, dtype=torch.float64)
    rows = torch.tensor([2, 0, 2, 2, 1])
    positions = torch.tensor([8, 0, 3, 5, 8])
    with torch.no_grad():
        expected = attention(x)[rows, positions]
        got = attention.forward_at(x, rows, positions)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)
