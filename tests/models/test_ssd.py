"""The three SSD scans (chunked, step, sequential) and the Mamba-2 mixer's two paths agree."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from models.ssd import (
    Mamba2Mixer,
    final_state_of,
    segment_sum,
    ssd_chunked,
    ssd_sequential,
    ssd_step,
)


def scan_inputs(
    dtype: torch.dtype,
    batch: int = 2,
    length: int = 23,
    heads: int = 3,
    head_dim: int = 4,
    state: int = 5,
    per_row_A: bool = False,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator, dtype=dtype)

    x = normal(batch, length, heads, head_dim)
    dt = F.softplus(normal(batch, length, heads))
    A_shape = (batch, heads) if per_row_A else (heads,)
    A = -torch.rand(*A_shape, generator=generator, dtype=dtype) * 4 - 0.1
    return x, dt, A, normal(batch, length, state), normal(batch, length, state)


def test_segment_sum_matches_its_definition() -> None:
    values = torch.randn(6, dtype=torch.float64)
    sums = segment_sum(values)
    for i in range(6):
        for j in range(6):
            expected = values[j + 1 : i + 1].sum() if i >= j else torch.tensor(float("-inf"))
            torch.testing.assert_close(sums[i, j], expected.to(torch.float64))


@pytest.mark.parametrize("chunk_size", [1, 4, 8, 32])
@pytest.mark.parametrize("per_row_A", [False, True])
def test_chunked_equals_sequential_float64(chunk_size: int, per_row_A: bool) -> None:
    x, dt, A, B, C = scan_inputs(torch.float64, per_row_A=per_row_A)
    start = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    y_chunk, final_chunk = ssd_chunked(x, dt, A, B, C, chunk_size, start)
    y_seq, final_seq = ssd_sequential(x, dt, A, B, C, start)
    torch.testing.assert_close(y_chunk, y_seq, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(final_chunk, final_seq, atol=1e-10, rtol=1e-10)


def test_chunked_equals_sequential_float32() -> None:
    x, dt, A, B, C = scan_inputs(torch.float32, length=50)
    y_chunk, final_chunk = ssd_chunked(x, dt, A, B, C, 16)
    y_seq, final_seq = ssd_sequential(x, dt, A, B, C)
    torch.testing.assert_close(y_chunk, y_seq, atol=5e-5, rtol=1e-4)
    torch.testing.assert_close(final_chunk, final_seq, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_step_loop_equals_sequential(dtype: torch.dtype) -> None:
    x, dt, A, B, C = scan_inputs(dtype, per_row_A=True)
    state = torch.zeros(2, 3, 4, 5, dtype=dtype)
    outputs = []
    for t in range(x.shape[1]):
        y, state = ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t])
        outputs.append(y)
    y_seq, final_seq = ssd_sequential(x, dt, A, B, C)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(torch.stack(outputs, 1), y_seq, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(state, final_seq, atol=tolerance, rtol=tolerance)


def test_final_state_of_equals_the_scans_final_state() -> None:
    x, dt, A, B, C = scan_inputs(torch.float64, per_row_A=True)
    _, final_seq = ssd_sequential(x, dt, A, B, C)
    log_alpha = dt * A.unsqueeze(1)
    torch.testing.assert_close(final_state_of(x, dt, log_alpha, B), final_seq)


def test_zero_dt_tokens_leave_the_state_untouched() -> None:
    x, dt, A, B, C = scan_inputs(torch.float64)
    dt_holes = dt.clone()
    dt_holes[:, 5:9] = 0.0
    _, with_holes = ssd_chunked(x, dt_holes, A, B, C, 8)
    keep = torch.ones(x.shape[1], dtype=torch.bool)
    keep[5:9] = False
    _, without = ssd_sequential(x[:, keep], dt[:, keep], A, B[:, keep], C[:, keep])
    torch.testing.assert_close(with_holes, without)


def make_mixer(dtype: torch.dtype, seed: int = 0) -> Mamba2Mixer:
    torch.manual_seed(seed)
    mixer = Mamba2Mixer(d_model=8, d_inner=16, head_dim=4, d_state=6, d_conv=4, chunk_size=8)
    with torch.no_grad():  # spread dt so decays differ a lot between heads
        mixer.dt_bias.copy_(torch.tensor([-3.0, -1.0, 0.0, 1.0]))
    return mixer.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mixer_chunked_sequential_and_step_agree(dtype: torch.dtype) -> None:
    mixer = make_mixer(dtype)
    u = torch.randn(3, 19, 8, dtype=dtype)
    dt_offset = 0.3 * torch.randn(3, 19, 4, dtype=dtype)
    a_log_offset = 0.1 * torch.randn(3, 4, dtype=dtype)
    with torch.no_grad():
        out_chunk, trace_chunk = mixer(u, None, dt_offset, a_log_offset)
        out_seq, trace_seq = mixer(u, None, dt_offset, a_log_offset, scan="sequential")
        tail = torch.zeros(3, 3, mixer.conv_channels, dtype=dtype)
        ssm = torch.zeros(3, 4, 4, 6, dtype=dtype)
        outs = []
        for t in range(19):
            out, tail, trace = mixer.step(u[:, t], tail, ssm, dt_offset[:, t], a_log_offset)
            ssm = trace.final_state
            outs.append(out)
    tolerance = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out_chunk, out_seq, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(torch.stack(outs, 1), out_chunk, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(ssm, trace_chunk.final_state, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(trace_seq.final_state, trace_chunk.final_state)


def test_mixer_mask_equals_a_shorter_sequence() -> None:
    """Masked (left-padded) positions act like nothing happened: the real suffix's outputs and
    final state equal those of the suffix alone."""
    mixer = make_mixer(torch.float64)
    u = torch.randn(2, 12, 8, dtype=torch.float64)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[:, :5] = False
    with torch.no_grad():
        padded, padded_trace = mixer(u, mask)
        alone, alone_trace = mixer(u[:, 5:])
    torch.testing.assert_close(padded[:, 5:], alone)
    torch.testing.assert_close(padded_trace.final_state, alone_trace.final_state)


def test_mixer_rejects_a_head_dim_that_does_not_divide() -> None:
    with pytest.raises(ValueError, match="not a multiple of head_dim"):
        Mamba2Mixer(d_model=8, d_inner=16, head_dim=5, d_state=4, d_conv=4, chunk_size=8)
