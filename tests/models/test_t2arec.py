"""T²ARec beyond the registry contract: time gaps, the two alignment losses, the streaming shift
score, and the batched test-time updates of the per-user Δ-path delta."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch
from torch import Tensor

from models.base import last_positions
from models.registry import REGISTRY
from models.state import decode_state, encode_state
from models.t2arec import (
    T2ARec,
    T2ARecConfig,
    T2ARecState,
    interest_state_residual,
    interest_state_residual_reference,
    log_gaps,
    t2arec_config,
    time_interval_alignment,
)

N_ITEMS = 40
HOUR = 3600.0


def tiny_model(seed: int = 0, **overrides: Any) -> T2ARec:
    torch.manual_seed(seed)
    model = T2ARec(t2arec_config("tiny", n_items=N_ITEMS, **overrides))
    with torch.no_grad():  # trained-looking Δ path: a real dependence of dt on the time gap
        model.gap_weight.normal_(0.0, 0.5)
        model.reverse_A_log.normal_(0.0, 0.5)
    return model.eval()


def event_log(users: int = 4, length: int = 16, seed: int = 0) -> tuple[Tensor, Tensor]:
    """items [U, L] in 1..N_ITEMS-1 and increasing times [U, L] float64 (seconds since 2000)."""
    generator = torch.Generator().manual_seed(seed)
    items = torch.randint(1, N_ITEMS, (users, length), generator=generator)
    gaps = torch.rand(users, length, generator=generator, dtype=torch.float64) * 5 * HOUR
    gaps[:, ::5] = 0.0  # some simultaneous events
    return items, 9.5e8 + torch.cumsum(gaps, dim=1)


def stream(
    model: T2ARec,
    items: Tensor,
    times: Tensor,
    adapt: bool = True,
    state: T2ARecState | None = None,
) -> tuple[T2ARecState, Tensor]:
    state = model.init_state(items.shape[0]) if state is None else state
    hidden = []
    for t in range(items.shape[1]):
        state, h = model.step(state, items[:, t], times[:, t], adapt=adapt)
        hidden.append(h)
    return state, torch.stack(hidden, dim=1)


def test_registered_and_sized_like_seeds_6_2() -> None:
    assert REGISTRY["t2arec"] == (T2ARecConfig, T2ARec)
    config = T2ARecConfig()
    assert (config.d_model, config.d_inner, config.head_dim, config.n_heads) == (64, 128, 32, 4)
    assert (config.d_state, config.d_conv, config.n_layers) == (32, 4, 2)
    state = T2ARec(config).init_state(1)
    assert state.ssm[0, 0].numel() == 4 * 32 * 32  # 4,096 floats per layer
    assert state.conv[0, 0].numel() == 3 * (128 + 64)  # 576 floats per layer
    assert state.delta.shape[1] == 2 * (4 * 64 + 4 + 4 + 4)  # dt rows, dt bias, A_log, gap weight


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("head_dim", 7, "not a multiple of head_dim"),
        ("tta_trigger", "sometimes", "tta_trigger"),
        ("tta_reset", "weekly", "tta_reset"),
        ("tia_block", 0, "tia_block"),
    ],
)
def test_config_rejects_bad_values(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        t2arec_config("tiny", **{field: value})


def test_step_equals_forward_without_updates() -> None:
    items, times = event_log()
    frozen = tiny_model()
    never = tiny_model(tta_trigger="never")
    with torch.no_grad():
        offline = frozen(items, times)
    _, streamed = stream(frozen, items, times, adapt=False)
    torch.testing.assert_close(streamed, offline, atol=1e-5, rtol=1e-5)
    state, streamed_never = stream(never, items, times, adapt=True)
    torch.testing.assert_close(streamed_never, offline, atol=1e-5, rtol=1e-5)
    assert int(state.n_updates.sum()) == 0


def test_forward_chunked_equals_sequential_scan_and_ignores_right_padding() -> None:
    model = tiny_model()
    items, times = event_log()
    items[1, 11:] = 0
    times[1, 11:] = 0.0  # padding times may be anything, including earlier
    mask = items != 0
    gaps, _ = log_gaps(times, mask, model.config.time_unit, model.config.max_gap)
    with torch.no_grad():
        chunked, _ = model._encode(items, gaps, mask)
        sequential, _ = model._encode(items, gaps, mask, scan="sequential")
        alone = model(items[1:2, :11], times[1:2, :11])
    torch.testing.assert_close(chunked, sequential, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked[1:2, :11], alone, atol=1e-5, rtol=1e-5)


def test_log_gaps_first_zero_and_huge() -> None:
    times = torch.tensor([[100.0, 100.0, 100.0 + HOUR, 1e12]], dtype=torch.float64)
    mask = torch.ones_like(times, dtype=torch.bool)
    feature, clock = log_gaps(times, mask, time_unit=HOUR, max_gap=10 * HOUR)
    expected = torch.tensor([[0.0, 0.0, math.log(2.0), math.log(11.0)]])
    torch.testing.assert_close(feature, expected)
    torch.testing.assert_close(
        clock, torch.tensor([[0.0, 0.0, HOUR, 11 * HOUR]], dtype=torch.float64)
    )


def test_negative_gaps_are_rejected_offline_and_online() -> None:
    model = tiny_model()
    items, times = event_log(users=3, length=6)
    times[1, 3] = times[1, 2] - 5.0
    with pytest.raises(ValueError, match="negative time gap.*row 1 position 3"):
        model(items, times)
    state = model.init_state(3)
    state, _ = model.step(state, items[:, 0], times[:, 0])
    earlier = times[:, 1].clone()
    earlier[2] = times[2, 0] - 1.0
    with pytest.raises(ValueError, match="negative time gap.*user row 2"):
        model.step(state, items[:, 1], earlier)


def test_zero_and_huge_gaps_give_finite_losses_and_gradients() -> None:
    model = tiny_model().train()
    items, _ = event_log(users=2, length=12)
    zero = torch.full((2, 12), 1e9, dtype=torch.float64)
    huge = 1e9 + torch.cumsum(torch.full((2, 12), 1e11, dtype=torch.float64), dim=1)
    targets = torch.roll(items, -1, dims=1)
    for times in (zero, huge):
        model.zero_grad()
        terms = model.loss_terms(items, times, targets)
        terms["loss"].backward()
        assert all(torch.isfinite(value) for value in terms.values())
        for name, parameter in model.named_parameters():
            assert parameter.grad is None or torch.isfinite(parameter.grad).all(), name
    with torch.no_grad():
        state, hidden = stream(model.eval(), items, huge)
    assert torch.isfinite(hidden).all() and torch.isfinite(state.delta).all()


def tia_by_pairs(
    dt: list[float], clock: list[float], block: int, abs_weight: float, unit: float
) -> float:
    """Reference: loop over blocks and pairs, as written in seeds.md §2.4."""
    errors = []
    for start in range(0, len(dt), block):
        index = range(start, min(start + block, len(dt)))
        pairs = [(i, j) for i in index for j in index if i < j]
        if not pairs:
            continue
        M = {(i, j): sum(dt[i + 1 : j + 1]) for i, j in pairs}
        T = {(i, j): math.log1p((clock[j] - clock[i]) / unit) for i, j in pairs}
        R = {(i, j): float(j - i) for i, j in pairs}
        m_max, t_max, r_max = (max(d.values()) for d in (M, T, R))
        for pair in pairs:
            target = abs_weight * T[pair] / (t_max + 1e-8) + (1 - abs_weight) * R[pair] / r_max
            errors.append((M[pair] / (m_max + 1e-8) - target) ** 2)
    return sum(errors) / len(errors)


def test_time_interval_alignment_matches_the_pairwise_definition() -> None:
    dt = torch.rand(1, 11, dtype=torch.float64)
    clock = torch.cumsum(torch.rand(1, 11, dtype=torch.float64) * 7200, dim=1)
    clock[0, 4] = clock[0, 3]  # a zero gap
    total, count = time_interval_alignment(
        dt, clock, torch.ones(1, 11, dtype=torch.bool), block=4, abs_weight=0.3, time_unit=HOUR
    )
    expected = tia_by_pairs(dt[0].tolist(), clock[0].tolist(), 4, 0.3, HOUR)
    assert count.item() == 6 + 6 + 3
    assert total.item() / count.item() == pytest.approx(expected, rel=1e-9)


def test_time_interval_alignment_is_blockwise_causal() -> None:
    """Changing the last block (the newest events) does not change earlier blocks' errors."""
    dt = torch.rand(1, 12, dtype=torch.float64)
    clock = torch.cumsum(torch.rand(1, 12, dtype=torch.float64) * 7200, dim=1)
    mask = torch.ones(1, 12, dtype=torch.bool)
    first_two = time_interval_alignment(dt[:, :8], clock[:, :8], mask[:, :8], 4, 0.5, HOUR)
    changed = dt.clone()
    changed[0, 8:] = 5.0
    full = time_interval_alignment(changed, clock, mask, 4, 0.5, HOUR)
    last = time_interval_alignment(changed[:, 8:], clock[:, 8:], mask[:, 8:], 4, 0.5, HOUR)
    torch.testing.assert_close(full[0], first_two[0] + last[0])


def test_interest_state_residual_is_zero_without_a_window_and_bounded() -> None:
    state = torch.randn(3, 2, 4, 5)
    x, B = torch.randn(3, 6, 2, 4), torch.randn(3, 6, 5)
    none = torch.zeros(3, 6, 2)
    reverse_A = torch.ones(2)
    zero = interest_state_residual(state, state, x, B, none, none, reverse_A)
    torch.testing.assert_close(zero, torch.zeros(3))
    dt = torch.rand(3, 6, 2)
    some = interest_state_residual(torch.randn(3, 2, 4, 5), state, x, B, dt, -dt, reverse_A)
    assert ((some > 0) & (some <= 2)).all()


def test_interest_state_residual_closed_form_equals_the_step_by_step_round_trip() -> None:
    generator = torch.Generator().manual_seed(7)

    def normal(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    dt = torch.rand(3, 6, 2, generator=generator, dtype=torch.float64)
    dt[0, :2] = 0.0  # absent events at the start of a window
    log_alpha = -dt * torch.tensor([0.5, 3.0], dtype=torch.float64)
    args = (normal(3, 2, 4, 5), normal(3, 2, 4, 5), normal(3, 6, 2, 4), normal(3, 6, 5), dt)
    reverse_A = torch.tensor([0.3, 2.0], dtype=torch.float64)
    torch.testing.assert_close(
        interest_state_residual(*args, log_alpha, reverse_A),
        interest_state_residual_reference(*args, log_alpha, reverse_A),
    )


@pytest.mark.parametrize("length", [3, 16])  # shorter and longer than the ISA window (4)
def test_streaming_shift_score_equals_the_offline_residual(length: int) -> None:
    model = tiny_model()
    items, times = event_log(length=length)
    state, _ = stream(model, items, times, adapt=False)
    mask = torch.ones_like(items, dtype=torch.bool)
    gaps, clock = log_gaps(times, mask, model.config.time_unit, model.config.max_gap)
    with torch.no_grad():
        _, traces = model._encode(items, gaps, mask)
        _, isa = model.alignment_losses(traces, clock, mask)
    torch.testing.assert_close(model.shift_score(state), isa, atol=1e-5, rtol=1e-4)
    assert model.shift_score(state).shape == (items.shape[0],)


def streamed_state(model: T2ARec, users: int = 5, length: int = 14) -> T2ARecState:
    items, times = event_log(users=users, length=length, seed=3)
    state, _ = stream(model, items, times, adapt=False)
    return state


def test_a_test_time_update_lowers_the_alignment_loss() -> None:
    model = tiny_model(tta_lr=0.05, tta_steps=2)
    state = streamed_state(model)
    before = model.tta_loss(state)
    updated = model.test_time_update(state, torch.ones(5, dtype=torch.bool))
    after = model.tta_loss(updated)
    assert (after < before).all(), (before, after)
    assert (updated.delta != 0).any(dim=1).all()
    assert updated.n_updates.tolist() == [1] * 5


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_batched_updates_equal_updates_one_user_at_a_time(momentum: float) -> None:
    model = tiny_model(tta_lr=0.05, tta_steps=3, tta_momentum=momentum)
    state = streamed_state(model)
    due = torch.tensor([True, False, True, True, True])
    batched = model.test_time_update(state, due)
    for user in range(5):
        alone = model.test_time_update(state.index([user]), due[[user]])
        torch.testing.assert_close(batched.index([user]).delta, alone.delta, atol=1e-7, rtol=1e-6)
        torch.testing.assert_close(batched.index([user]).momentum, alone.momentum)
    torch.testing.assert_close(batched.delta[1], state.delta[1])  # not due: untouched


def test_trigger_every_n_events_and_delta_changes_predictions() -> None:
    model = tiny_model(tta_trigger="every", tta_every=4, tta_lr=0.05)
    items, times = event_log(users=3, length=13)
    state, adapted = stream(model, items, times)
    # updates fire at events 4, 8, 12 (the first needs >= 2 events, satisfied)
    assert state.n_updates.tolist() == [3, 3, 3]
    assert state.since_update.tolist() == [1, 1, 1]
    _, frozen = stream(model, items, times, adapt=False)
    torch.testing.assert_close(adapted[:, :3], frozen[:, :3])
    assert not torch.allclose(adapted[:, 3:], frozen[:, 3:])


def test_trigger_on_shift_score_threshold() -> None:
    model = tiny_model(tta_trigger="shift", tta_shift_threshold=-1.0)  # always above
    items, times = event_log(users=2, length=5)
    state, _ = stream(model, items, times)
    assert state.n_updates.tolist() == [4, 4]  # every event from the second on
    high = tiny_model(tta_trigger="shift", tta_shift_threshold=2.5)  # residual is <= 2
    state, _ = stream(high, items, times)
    assert state.n_updates.tolist() == [0, 0]


def test_adapt_false_and_use_tta_false_never_update() -> None:
    items, times = event_log(users=2, length=10)
    state, _ = stream(tiny_model(), items, times, adapt=False)
    assert int(state.n_updates.sum()) == 0 and not state.delta.any()
    state, _ = stream(tiny_model(use_tta=False), items, times)
    assert int(state.n_updates.sum()) == 0 and not state.delta.any()


def test_inactivity_reset_zeroes_the_delta() -> None:
    model = tiny_model(tta_every=2, tta_lr=0.05, tta_reset="inactivity", tta_reset_gap=86400.0)
    items, times = event_log(users=2, length=6)
    state, _ = stream(model, items, times)
    assert state.delta.abs().sum() > 0
    later = times[:, -1].clone()
    later[0] += 2 * 86400.0  # user 0 comes back after two days, user 1 an hour later
    later[1] += HOUR
    after, _ = model.step(state, items[:, 0], later, adapt=False)
    assert not after.delta[0].any()
    torch.testing.assert_close(after.delta[1], state.delta[1])


def test_each_update_reset_starts_from_zero() -> None:
    model = tiny_model(tta_lr=0.05, tta_reset="each_update")
    state = streamed_state(model)
    due = torch.ones(5, dtype=torch.bool)
    once = model.test_time_update(state, due)
    twice = model.test_time_update(once, due)
    torch.testing.assert_close(twice.delta, once.delta)


def test_state_round_trips_through_bytes_and_continues_identically() -> None:
    model = tiny_model(tta_every=3, tta_lr=0.05, tta_momentum=0.5)
    items, times = event_log(users=3, length=12)
    state, _ = stream(model, items[:, :7], times[:, :7])
    data = encode_state(state, "t2arec", "abc")
    restored = decode_state(data, T2ARecState, model="t2arec", checkpoint="abc")
    for field in dataclasses.fields(T2ARecState):
        original, copy = getattr(state, field.name), getattr(restored, field.name)
        assert copy.dtype == original.dtype and torch.equal(copy, original), field.name
    _, continued = stream(model, items[:, 7:], times[:, 7:], state=state)
    _, resumed = stream(model, items[:, 7:], times[:, 7:], state=restored)
    torch.testing.assert_close(resumed, continued)


def test_loss_weights_and_ablation_switches() -> None:
    items, times = event_log(users=3, length=12)
    targets = torch.roll(items, -1, dims=1)
    targets[:, -1] = 0
    full = tiny_model(tia_weight=0.3, isa_weight=0.7)
    terms = full.loss_terms(items, times, targets)
    torch.testing.assert_close(terms["loss"], terms["ce"] + 0.3 * terms["tia"] + 0.7 * terms["isa"])
    no_tia = tiny_model(tia_weight=0.3, isa_weight=0.7, use_tia=False)
    torch.testing.assert_close(no_tia.loss(items, times, targets), terms["ce"] + 0.7 * terms["isa"])
    no_isa = tiny_model(tia_weight=0.3, isa_weight=0.7, use_isa=False)
    torch.testing.assert_close(no_isa.loss(items, times, targets), terms["ce"] + 0.3 * terms["tia"])
    full.train()
    full.loss(items, times, targets).backward()
    assert full.gap_weight.grad is not None and full.gap_weight.grad.abs().sum() > 0
    assert full.reverse_A_log.grad is not None and full.reverse_A_log.grad.abs().sum() > 0


def test_the_alignment_losses_shape_the_delta_they_are_switched_on_for() -> None:
    """With only TIA (only ISA) on, the update follows that loss alone."""
    state_model = tiny_model(tta_lr=0.05)
    state = streamed_state(state_model)
    due = torch.ones(5, dtype=torch.bool)
    only_tia = tiny_model(tta_lr=0.05, use_isa=False)
    only_isa = tiny_model(tta_lr=0.05, use_tia=False)
    a = only_tia.test_time_update(state, due).delta
    b = only_isa.test_time_update(state, due).delta
    assert a.abs().sum() > 0 and b.abs().sum() > 0 and not torch.allclose(a, b)
    neither = tiny_model(tta_lr=0.05, use_isa=False, use_tia=False)
    assert not neither.test_time_update(state, due).delta.any()


def right_padded_rows() -> tuple[Tensor, Tensor, Tensor]:
    items, times = event_log(users=4, length=20, seed=5)
    lengths = torch.tensor([20, 13, 6, 1])
    for row, n in enumerate(lengths.tolist()):
        items[row, n:], times[row, n:] = 0, 0.0
    return items, times, lengths


def test_offline_adapted_hidden_without_tta_is_forward_at_the_last_event() -> None:
    model = tiny_model(use_tta=False)
    items, times, lengths = right_padded_rows()
    with torch.no_grad():
        expected = last_positions(model(items, times), lengths)
    torch.testing.assert_close(model.adapted_last_hidden(items, times, lengths), expected)


def test_offline_adapted_hidden_equals_a_streamed_window_update() -> None:
    """Offline: adapt a zero delta on each history, predict with it. Same as streaming the
    history into a state whose window holds it, one each-update-reset update, re-encoding."""
    model = tiny_model(tta_window=20, tta_lr=0.05, tta_steps=2, tta_reset="each_update")
    items, times, lengths = right_padded_rows()
    adapted = model.adapted_last_hidden(items, times, lengths, chunk=3)
    for row, n in enumerate(lengths.tolist()):
        state, _ = stream(model, items[row : row + 1, :n], times[row : row + 1, :n], adapt=False)
        state = model.test_time_update(state, torch.ones(1, dtype=torch.bool))
        mask = state.window_items != 0
        with torch.no_grad():
            encoded, _ = model._encode(state.window_items, state.window_gaps, mask, state.delta)
        torch.testing.assert_close(adapted[row], encoded[0, -1], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        frozen = last_positions(model(items, times), lengths)
    assert not torch.allclose(adapted[:3], frozen[:3])
