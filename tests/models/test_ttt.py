"""The TTT inner loop: hand-derived gradients vs autograd, dual form vs the sequential reference,
recurrent steps vs the dual form."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from models.ttt import (
    FastWeights,
    autograd_token_gradient,
    gelu_tanh,
    gelu_tanh_backward,
    layer_norm,
    layer_norm_l2_backward,
    token_gradients,
    token_scales,
    ttt_dual_scan,
    ttt_dual_scan_at,
    ttt_recurrent_step,
    ttt_recurrent_step_fast,
    ttt_sequential_reference,
)

EPS = 1e-6
B, H, DH = 3, 2, 8


def make_fast(
    inner: str, generator: torch.Generator, lead: tuple[int, ...] = (B, H)
) -> FastWeights:
    width = 4 * DH if inner == "mlp" else DH

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*lead, *shape, generator=generator, dtype=torch.float64) * 0.3

    if inner == "mlp":
        return FastWeights(rand(DH, width), rand(1, width), rand(width, DH), rand(1, DH))
    return FastWeights(rand(DH, width), rand(1, width))


def make_inputs(length: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    return {
        "xq": rand(B, H, length, DH),
        "xk": rand(B, H, length, DH),
        "xv": rand(B, H, length, DH),
        "sigma": torch.rand(B, H, length, generator=generator, dtype=torch.float64) / DH,
        "gamma": 1.0 + 0.1 * rand(H, 1, DH),
        "beta": 0.1 * rand(H, 1, DH),
    }


def test_layer_norm_l2_backward_matches_autograd() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    target = torch.randn(5, 7, 16, generator=generator, dtype=torch.float64)
    gamma = torch.randn(16, generator=generator, dtype=torch.float64)
    beta = torch.randn(16, generator=generator, dtype=torch.float64)
    loss = 0.5 * (layer_norm(x, gamma, beta, EPS) - target).pow(2).sum()
    (expected,) = torch.autograd.grad(loss, x)
    assert_close(layer_norm_l2_backward(x.detach(), target, gamma, beta, EPS), expected)


def test_gelu_tanh_backward_matches_autograd() -> None:
    x = torch.linspace(-6, 6, 401, dtype=torch.float64, requires_grad=True)
    grad = torch.linspace(-2, 3, 401, dtype=torch.float64)
    (expected,) = torch.autograd.grad(gelu_tanh(x), x, grad)
    assert_close(gelu_tanh_backward(grad, x.detach()), expected)


@pytest.mark.parametrize("inner", ["mlp", "linear"])
def test_hand_derived_token_gradients_match_autograd(inner: str) -> None:
    generator = torch.Generator().manual_seed(1)
    fast = make_fast(inner, generator)
    data = make_inputs(5, generator)
    hand = token_gradients(fast, data["xk"], data["xv"], data["gamma"], data["beta"], EPS)
    for t in range(5):
        token = slice(t, t + 1)
        auto = autograd_token_gradient(
            fast,
            data["xk"][..., token, :],
            data["xv"][..., token, :],
            data["gamma"],
            data["beta"],
            EPS,
        )
        for got, want in zip(hand.parts(), auto.parts(), strict=True):
            assert_close(got[..., t, :, :], want)


@pytest.mark.parametrize("inner", ["mlp", "linear"])
@pytest.mark.parametrize("length", [8, 13, 21])
def test_dual_form_equals_sequential_reference(inner: str, length: int) -> None:
    generator = torch.Generator().manual_seed(2)
    fast = make_fast(inner, generator)
    data = make_inputs(length, generator)
    scales = token_scales(torch.randn(8, generator=generator, dtype=torch.float64) * 0.1)
    args = (data["sigma"], scales, data["gamma"], data["beta"], EPS)
    dual, _ = ttt_dual_scan(fast, data["xq"], data["xk"], data["xv"], *args)
    reference = ttt_sequential_reference(fast, data["xq"], data["xk"], data["xv"], *args)
    assert_close(dual, reference)


@pytest.mark.parametrize("inner", ["mlp", "linear"])
def test_dual_form_with_shared_initial_weights_broadcasts(inner: str) -> None:
    """Training passes W0 without the batch dim; it must broadcast like tiled weights."""
    generator = torch.Generator().manual_seed(3)
    shared = make_fast(inner, generator, lead=(H,))
    tiled = shared.map(lambda p: p.unsqueeze(0).expand(B, *p.shape))
    data = make_inputs(11, generator)
    scales = token_scales(torch.zeros(8, dtype=torch.float64))
    args = (data["sigma"], scales, data["gamma"], data["beta"], EPS)
    out_shared, _ = ttt_dual_scan(shared, data["xq"], data["xk"], data["xv"], *args)
    out_tiled, _ = ttt_dual_scan(tiled, data["xq"], data["xk"], data["xv"], *args)
    assert_close(out_shared, out_tiled)


@pytest.mark.parametrize("inner", ["mlp", "linear"])
@pytest.mark.parametrize(
    ("rows", "positions"),
    [
        ([0, 1, 2], [20, 20, 20]),  # every row at its end
        ([2, 0, 2, 0], [3, 7, 15, 8]),  # several positions per row, one row left out
        ([1], [0]),  # the first token only
        ([0, 1], [13, 16]),  # a partial last mini-batch; rows leave the scan at different times
    ],
)
def test_dual_scan_at_equals_full_scan_picked(
    inner: str, rows: list[int], positions: list[int]
) -> None:
    generator = torch.Generator().manual_seed(6)
    shared = make_fast(inner, generator, lead=(H,))
    data = make_inputs(21, generator)
    scales = token_scales(torch.randn(8, generator=generator, dtype=torch.float64) * 0.1)
    args = (data["sigma"], scales, data["gamma"], data["beta"], EPS)
    full, _ = ttt_dual_scan(shared, data["xq"], data["xk"], data["xv"], *args)
    row_index, position_index = torch.tensor(rows), torch.tensor(positions)
    picked = ttt_dual_scan_at(
        shared, data["xq"], data["xk"], data["xv"], *args, row_index, position_index
    )
    assert_close(picked, full[row_index, :, position_index], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("inner", ["mlp", "linear"])
def test_recurrent_steps_equal_dual_form(inner: str) -> None:
    generator = torch.Generator().manual_seed(4)
    fast = make_fast(inner, generator)
    length, mini_batch = 19, 8
    data = make_inputs(length, generator)
    scales = token_scales(torch.randn(mini_batch, generator=generator, dtype=torch.float64) * 0.1)
    dual, _ = ttt_dual_scan(
        fast,
        data["xq"],
        data["xk"],
        data["xv"],
        data["sigma"],
        scales,
        data["gamma"],
        data["beta"],
        EPS,
    )
    _, after_two = ttt_dual_scan(
        fast, data["xq"][..., :16, :], data["xk"][..., :16, :], data["xv"][..., :16, :],
        data["sigma"][..., :16], scales, data["gamma"], data["beta"], EPS,
    )  # fmt: skip
    accum = fast.map(torch.zeros_like)
    outputs = []
    for t in range(length):
        i = t % mini_batch
        token = slice(t, t + 1)
        fast, accum, out = ttt_recurrent_step(
            fast, accum, data["xq"][..., token, :], data["xk"][..., token, :],
            data["xv"][..., token, :], data["sigma"][..., t, None, None], scales[i],
            torch.tensor(i == mini_batch - 1), data["gamma"], data["beta"], EPS,
        )  # fmt: skip
        outputs.append(out)
        if t == 15:  # two full mini-batches: the carried W_b is the dual form's end weights
            for carried, expected in zip(fast.parts(), after_two.parts(), strict=True):
                assert_close(carried, expected)
    assert_close(torch.cat(outputs, dim=-2), dual)


@pytest.mark.parametrize("inner", ["mlp", "linear"])
def test_fast_recurrent_step_equals_simple_step(inner: str) -> None:
    """The streaming hot path vs the readable step, rows at and off a mini-batch boundary."""
    generator = torch.Generator().manual_seed(5)
    fast = make_fast(inner, generator)
    accum = make_fast(inner, generator).map(lambda p: 0.1 * p)
    data = make_inputs(1, generator)
    scale = torch.rand(B, 1, 1, 1, generator=generator, dtype=torch.float64)
    boundary = torch.tensor([True, False, True])
    tokens = (data["xq"], data["xk"], data["xv"], data["sigma"][..., None], scale)
    norm = (data["gamma"], data["beta"], EPS)
    simple = ttt_recurrent_step(fast, accum, *tokens, boundary.view(B, 1, 1, 1), *norm)
    quick = ttt_recurrent_step_fast(fast, accum, *tokens, boundary, *norm)
    assert_close(quick[2], simple[2])
    for got, want in zip(
        quick[0].parts() + quick[1].parts(), simple[0].parts() + simple[1].parts(), strict=True
    ):
        assert_close(got, want)
    untouched = fast.parts()[0]
    assert torch.equal(untouched, make_fast(inner, torch.Generator().manual_seed(5)).parts()[0])
    donated = ttt_recurrent_step_fast(
        fast.map(torch.clone), accum.map(torch.clone), *tokens, boundary, *norm, in_place=True
    )
    assert_close(donated[2], simple[2])
    for got, want in zip(
        donated[0].parts() + donated[1].parts(), simple[0].parts() + simple[1].parts(), strict=True
    ):
        assert_close(got, want)
