"""TTT4Rec-specific checks: both streaming policies on sequences longer than max_len, the frozen
step, the paper's sizes (parameters, state bytes per user)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.testing import assert_close

from models.ttt4rec import TTT4Rec, TTT4RecConfig, TTTMLPState, WindowState

N_ITEMS, MAX_LEN, LENGTH = 50, 10, 27


def model_for(**overrides: Any) -> TTT4Rec:
    torch.manual_seed(0)
    config = TTT4RecConfig(**{"n_items": N_ITEMS, "d_model": 16, "max_len": MAX_LEN, **overrides})
    return TTT4Rec(config).eval()


def long_batch(users: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    items = torch.randint(1, N_ITEMS, (users, LENGTH), generator=generator)  # [U, T]
    times = torch.arange(LENGTH, dtype=torch.float64).expand(users, -1) * 60.0  # [U, T]
    return items, times


@pytest.mark.parametrize(
    ("inner", "in_place", "n_layers"),
    [
        ("mlp", False, 1),
        ("linear", False, 1),
        ("mlp", True, 1),
        ("mlp", False, 2),
        ("mlp", True, 2),
    ],
)
def test_recurrent_policy_equals_forward_over_the_whole_sequence(
    inner: str, in_place: bool, n_layers: int
) -> None:
    model = model_for(policy="recurrent", inner=inner, in_place=in_place, n_layers=n_layers)
    items, times = long_batch()
    with torch.no_grad():
        expected = model(items, times)  # [U, T, D], longer than max_len
        state = model.init_state(3)
        for t in range(LENGTH):
            state, hidden = model.step(state, items[:, t], times[:, t])
            assert_close(hidden, expected[:, t], atol=1e-5, rtol=1e-5)


def test_windowed_policy_equals_forward_over_the_last_window() -> None:
    model = model_for(policy="windowed")
    items, times = long_batch()
    state = model.init_state(3)
    with torch.no_grad():
        for t in range(LENGTH):
            state, hidden = model.step(state, items[:, t], times[:, t])
            start = max(0, t + 1 - MAX_LEN)
            expected = model(items[:, start : t + 1], times[:, start : t + 1])[:, -1]
            assert_close(hidden, expected, atol=1e-5, rtol=1e-5)
    assert isinstance(state, WindowState)
    assert torch.equal(state.items, items[:, -MAX_LEN:]) and (state.length == MAX_LEN).all()


def test_users_at_different_positions_step_together() -> None:
    """A batch mixes users at different in-mini-batch indices; each must match its own run."""
    model = model_for(policy="recurrent")
    items, times = long_batch(2)
    with torch.no_grad():
        alone = model.init_state(1)
        for t in range(5):  # user 1 gets a 5-event head start
            alone, _ = model.step(alone, items[1:, t], times[1:, t])
        both = model.init_state(2).put(torch.tensor([1]), alone)
        expected = model(items[:1, :12], times[:1, :12])
        for t in range(12):
            both, hidden = model.step(
                both, torch.stack([items[0, t], items[1, t + 5]]), times[:, t]
            )
            assert_close(hidden[0], expected[0, t], atol=1e-5, rtol=1e-5)
        reference = model(items[1:, :17], times[1:, :17])[0, -1]
    assert_close(hidden[1], reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("policy", ["windowed", "recurrent"])
def test_frozen_step_never_carries_updates(policy: str) -> None:
    model = model_for(policy=policy)
    items, times = long_batch()
    state = model.init_state(3)
    with torch.no_grad():
        for t in range(LENGTH):
            before = state
            state, hidden = model.step(state, items[:, t], times[:, t], adapt=False)
            single = model(items[:, t : t + 1], times[:, t : t + 1])[:, 0]
            assert_close(hidden, single, atol=1e-5, rtol=1e-5)
            if policy == "recurrent":
                assert state is before


def test_paper_sizes() -> None:
    model = TTT4Rec(TTT4RecConfig(n_items=3707, policy="recurrent"))
    non_embedding = sum(p.numel() for p in model.parameters()) - model.item_embedding.weight.numel()
    assert non_embedding == 74_764 + 128  # seeds.md §1.2 (+ the input LayerNorm)
    state = model.init_state(2)
    assert isinstance(state, TTTMLPState)
    assert state.nbytes_per_user() == 2 * 8_512 * 4 + 8  # W_b and G in float32, plus i
    assert state.nbytes_per_user() <= 70_000


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="policy"):
        TTT4RecConfig(policy="sometimes")
    with pytest.raises(ValueError, match="inner"):
        TTT4RecConfig(inner="conv")
    with pytest.raises(ValueError, match="even heads"):
        TTT4RecConfig(d_model=20, n_heads=4)
