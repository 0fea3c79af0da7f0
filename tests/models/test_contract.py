"""Contract tests over every registered model (river ``test_estimators.py`` style): shapes,
causality, ``step`` == ``forward``, state bytes round-trip, seeded determinism.

Models join automatically when they register; ``VARIANTS`` adds config variants of a model that
change its streaming path (e.g. TTT4Rec's recurrent policy).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.testing import assert_close

import models
from models.base import SeqRecModel
from models.registry import REGISTRY, build
from models.state import decode_state, encode_state

TINY: dict[str, Any] = {"n_items": 50, "d_model": 16, "max_len": 12}
# Per-model settings every test config gets (DARec: the tiny random backbone, no download).
TEST_SETTINGS: dict[str, dict[str, Any]] = {"darec": {"backbone": "tiny"}}
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "darec": [
        {"context_masking": False},
        {"knowledge_injection": False},
        {"adapters": "none,lora4,serial16,parallel32,lora16,serial64"},
    ],
    "ttt4rec": [
        {"policy": "recurrent"},
        {"policy": "recurrent", "inner": "linear"},
        {"policy": "recurrent", "in_place": True},
    ],
}
# Test-time updates of parameters (T²ARec's alignment steps) legitimately move ``step`` off
# ``forward``, which runs the slow weights; the equivalence holds with them switched off.
WITHOUT_WEIGHT_UPDATES: dict[str, dict[str, Any]] = {"t2arec": {"tta_trigger": "never"}}
CASES = [
    pytest.param(name, overrides, id="-".join([name, *map(str, overrides.values())]))
    for name in sorted(REGISTRY)
    for overrides in [{}, *VARIANTS.get(name, [])]
]
assert models.REGISTRY is REGISTRY


def tiny_model(name: str, overrides: dict[str, Any], seed: int = 0) -> SeqRecModel:
    torch.manual_seed(seed)
    config_type, _ = REGISTRY[name]
    settings = {**TINY, **TEST_SETTINGS.get(name, {}), **overrides}
    return build(name, config_type(**settings)).eval()


def batch(n: int, length: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    items = torch.randint(1, TINY["n_items"], (n, length), generator=generator)  # [B, L]
    gaps = torch.randint(1, 100_000, (n, length), generator=generator).double()
    times = 9.7e8 + gaps.cumsum(dim=1)  # [B, L] increasing event times
    return items, times


@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_shapes(name: str, overrides: dict[str, Any]) -> None:
    model = tiny_model(name, overrides)
    items, times = batch(3, 7)
    with torch.no_grad():
        hidden = model(items, times)
        scores = model.score(hidden)
        state, step_hidden = model.step(model.init_state(3), items[:, 0], times[:, 0])
    assert hidden.shape == (3, 7, TINY["d_model"])
    assert scores.shape == (3, 7, TINY["n_items"])
    assert torch.isneginf(scores[..., 0]).all() and torch.isfinite(scores[..., 1:]).all()
    assert step_hidden.shape == (3, TINY["d_model"])
    assert isinstance(state, model.state_type) and state.n_users == 3
    loss = model.loss(items, times, torch.roll(items, -1, dims=1))
    assert loss.ndim == 0 and torch.isfinite(loss)


@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_causality(name: str, overrides: dict[str, Any]) -> None:
    model = tiny_model(name, overrides)
    items, times = batch(2, TINY["max_len"])
    changed = items.clone()
    changed[:, 6] = (items[:, 6] % (TINY["n_items"] - 1)) + 1  # a different real item
    with torch.no_grad():
        before, after = model(items, times), model(changed, times)
    assert_close(before[:, :6], after[:, :6])
    assert not torch.allclose(before[:, 6], after[:, 6])


@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_step_equals_forward(name: str, overrides: dict[str, Any]) -> None:
    model = tiny_model(name, {**overrides, **WITHOUT_WEIGHT_UPDATES.get(name, {})})
    items, times = batch(4, TINY["max_len"])
    with torch.no_grad():
        expected = model(items, times)  # [U, L, D]
        state = model.init_state(4)
        for t in range(items.shape[1]):
            state, hidden = model.step(state, items[:, t], times[:, t])
            assert_close(hidden, expected[:, t], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_hidden_at_equals_forward_picked(name: str, overrides: dict[str, Any]) -> None:
    """The streaming read-out (outputs at chosen positions only) against the full forward."""
    model = tiny_model(name, overrides).double()
    items, times = batch(4, TINY["max_len"])
    items[1, 5:] = 0  # a right-padded row
    rows = torch.tensor([0, 1, 1, 3, 0, 2])
    positions = torch.tensor([11, 4, 0, 7, 2, 11])
    with torch.no_grad():
        expected = model(items, times)[rows, positions]  # [N, D]
        picked = model.hidden_at(items, times, rows, positions)
    assert_close(picked, expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_state_bytes_round_trip(name: str, overrides: dict[str, Any]) -> None:
    model = tiny_model(name, overrides)
    items, times = batch(3, 9)
    state = model.init_state(3)
    with torch.no_grad():
        for t in range(9):
            state, _ = model.step(state, items[:, t], times[:, t])
    data = encode_state(state, model.name, "0123abcd")
    restored = decode_state(data, model.state_type, model=model.name, checkpoint="0123abcd")
    for field, tensor in state.tensors().items():
        got = restored.tensors()[field]
        assert got.dtype == tensor.dtype and torch.equal(got, tensor), field
    assert encode_state(restored, model.name, "0123abcd") == data


@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_seeded_determinism(name: str, overrides: dict[str, Any]) -> None:
    first, second = tiny_model(name, overrides, seed=5), tiny_model(name, overrides, seed=5)
    other = tiny_model(name, overrides, seed=6)
    items, times = batch(2, 10)
    with torch.no_grad():
        assert torch.equal(first(items, times), second(items, times))
        assert not torch.equal(first(items, times), other(items, times))
        state_a, out_a = first.step(first.init_state(2), items[:, 0], times[:, 0])
        state_b, out_b = second.step(second.init_state(2), items[:, 0], times[:, 0])
    assert torch.equal(out_a, out_b)
    assert encode_state(state_a, first.name, "x") == encode_state(state_b, second.name, "x")
