"""``SeqRecRunner.advance``: the batched paths (one forward call over every event's window, or
over one-item sequences for frozen TTT4Rec) against the round-by-round reference built on
``model.step``, with windows that fill, slide and start empty."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models as registry
from models.state import State
from stream.runners import SeqRecRunner
from stream.testing import TINY_CONFIGS

N_ITEMS = 30
VOCAB = [-1, *range(1, N_ITEMS)]  # raw ids 1..29


def _runner(base: str, adapt: bool = True, **overrides: object) -> SeqRecRunner:
    config_type, _ = registry.REGISTRY[base]
    torch.manual_seed(0)
    sizes = {**TINY_CONFIGS[base], **overrides}
    config = config_type(n_items=N_ITEMS, **sizes)  # type: ignore[arg-type]
    model = registry.build(base, config).eval()
    return SeqRecRunner(base, model, VOCAB, "test-hash", adapt=adapt)


def _users(
    runner: SeqRecRunner, seed: int
) -> tuple[list[State], list[np.ndarray], list[np.ndarray]]:
    """Users whose windows are empty, part-filled and full, each with 1..12 new events."""
    rng = np.random.default_rng(seed)
    history = [0, 0, 3, 7, 8, 11, 20]  # events already applied (window length 8)
    states, items, times = [], [], []
    for count in history:
        state = runner.initial_state(1)
        if count:
            past = [rng.integers(1, N_ITEMS, size=count)]
            stamps = [np.sort(rng.uniform(0, 1e5, size=count))]
            state = runner.advance_by_rounds([state], past, stamps)[0].state
        k = int(rng.integers(1, 13))
        states.append(state)
        items.append(rng.integers(1, N_ITEMS, size=k))
        times.append(np.sort(rng.uniform(1e5, 2e5, size=k)))
    return states, items, times


@pytest.mark.parametrize(
    ("base", "adapt", "overrides", "path"),
    [
        ("sasrec", True, {}, "windows"),
        ("sasrec", False, {}, "windows"),
        ("ttt4rec", True, {}, "windows"),
        ("ttt4rec", False, {}, "single"),
        ("ttt4rec", False, {"policy": "recurrent"}, "single"),
        ("ttt4rec", True, {"policy": "recurrent"}, "rounds"),
    ],
)
def test_batched_advance_equals_stepping_round_by_round(
    base: str, adapt: bool, overrides: dict[str, object], path: str
) -> None:
    runner = _runner(base, adapt, **overrides)
    assert runner.step_path == path
    for seed in range(3):
        states, items, times = _users(runner, seed)
        fast = runner.advance(states, items, times)
        slow = runner.advance_by_rounds(states, items, times)
        for user_items, got, want in zip(items, fast, slow, strict=True):
            assert got.hidden.shape == (len(user_items), runner.model.config.d_model)
            torch.testing.assert_close(got.hidden, want.hidden, rtol=0, atol=1e-9)
            assert (got.shift is None) == (want.shift is None)
            for name, tensor in want.state.tensors().items():
                other = got.state.tensors()[name]
                assert other.dtype == tensor.dtype and other.shape == tensor.shape, name
                torch.testing.assert_close(other, tensor, rtol=0, atol=1e-9, msg=name)


def test_rounds_reference_equals_single_steps() -> None:
    """The reference itself: a user advanced in a batch equals that user stepped alone."""
    runner = _runner("ttt4rec", True, policy="recurrent")
    states, items, times = _users(runner, seed=5)
    batched = runner.advance_by_rounds(states, items, times)
    for state, user_items, user_times, got in zip(states, items, times, batched, strict=True):
        hidden = []
        for item, time in zip(user_items, user_times, strict=True):
            state, h, _ = runner.step(state, np.array([item]), np.array([time]))
            hidden.append(h[0])
        torch.testing.assert_close(got.hidden, torch.stack(hidden), rtol=0, atol=1e-9)


def test_advance_rejects_a_user_without_events() -> None:
    runner = _runner("sasrec")
    with pytest.raises(ValueError, match="at least one event"):
        runner.advance([runner.initial_state(1)], [np.array([], dtype=np.int64)], [np.array([])])
