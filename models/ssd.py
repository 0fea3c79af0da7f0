"""Mamba-2 (SSD, state space duality) in pure PyTorch: three scans that agree, and a mixer block.

Dao & Gu, "Transformers are SSMs" (2024), ngroups = 1, scalar-times-identity A per head. The scan
computes, per head h and token t (seeds.md §2.3)::

    S_t = exp(dt_t * A_h) * S_{t-1} + dt_t * x_t B_t^T        S in R^{P x N}
    y_t = S_t C_t + D_h x_t

Three forms, which the tests check against each other:

- ``ssd_chunked``: the chunked parallel (dual) form for training: quadratic attention-like
  products inside chunks of ``chunk_size`` tokens, a linear recurrence between chunks.
- ``ssd_step``: one token, for streaming (mamba.py's ``step(x, cache)``).
- ``ssd_sequential``: the plain loop over tokens, the obviously-correct reference.

``Mamba2Mixer`` wraps a scan with the input projection, causal depthwise conv, gated RMSNorm and
output projection. It accepts additive offsets on the Δ path (pre-softplus ``dt`` and ``A_log``) so
a caller can hold per-row parameter deltas (T²ARec's test-time updates) without the mixer knowing.

Shape legend: B batch (or users U), L length, D model width, E = d_inner, H heads, P head dim,
N state size, K conv kernel, C conv channels (E + 2N), T chunk length, Z chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ScanKind = Literal["chunked", "sequential"]


def segment_sum(log_decay: Tensor) -> Tensor:
    """[..., T] -> [..., T, T]: out[i, j] = sum_{k=j+1..i} log_decay[k] for i >= j, else -inf.

    Built by a masked cumsum rather than a difference of cumsums, which loses precision."""
    length = log_decay.shape[-1]
    tiled = log_decay.unsqueeze(-1).expand(*log_decay.shape, length)  # [..., T(k), T(j)]
    strictly_below = torch.tril(
        torch.ones(length, length, dtype=torch.bool, device=log_decay.device), diagonal=-1
    )
    tiled = tiled.masked_fill(~strictly_below, 0.0)
    sums = torch.cumsum(tiled, dim=-2)  # [..., T(i), T(j)]
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=log_decay.device))
    return sums.masked_fill(~causal, float("-inf"))


def ssd_chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int = 32,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Chunked SSD scan, without the D skip.

    x [B, L, H, P], dt [B, L, H] (after softplus; 0 means "no token here"), A [H] or [B, H]
    (negative), B and C [B, L, N], initial_state [B, H, P, N]
    -> (y [B, L, H, P], final state [B, H, P, N]).
    """
    batch, length, heads, head_dim = x.shape
    state_size = B.shape[-1]
    pad = (-length) % chunk_size
    if pad:  # padded tokens have dt = 0: no decay and no input, so the final state is unchanged
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, pad))
    n_chunks = (length + pad) // chunk_size
    A_rows = A if A.dim() == 2 else A.unsqueeze(0).expand(batch, heads)  # [B, H]
    log_alpha = dt * A_rows.unsqueeze(1)  # [B, L', H]
    xs = (x * dt.unsqueeze(-1)).reshape(batch, n_chunks, chunk_size, heads, head_dim)
    Bc = B.reshape(batch, n_chunks, chunk_size, state_size)  # [B, Z, T, N]
    Cc = C.reshape(batch, n_chunks, chunk_size, state_size)  # [B, Z, T, N]
    log_alpha = log_alpha.reshape(batch, n_chunks, chunk_size, heads).permute(0, 3, 1, 2)
    cum = torch.cumsum(log_alpha, dim=-1)  # [B, H, Z, T]

    # 1. within each chunk: y_l = sum_{s<=l} C_l.B_s * exp(sum_{s<k<=l} log_alpha_k) * dt_s x_s
    decay_in = torch.exp(segment_sum(log_alpha))  # [B, H, Z, T, T]
    scores = torch.einsum("bzln,bzsn->bzls", Cc, Bc)  # [B, Z, T, T]
    mixing = scores.unsqueeze(2) * decay_in.transpose(1, 2)  # [B, Z, H, T, T]
    y_diag = torch.matmul(mixing, xs.permute(0, 1, 3, 2, 4))  # [B, Z, H, T, P]
    y_diag = y_diag.permute(0, 1, 3, 2, 4)  # [B, Z, T, H, P]

    # 2. each chunk's own contribution to the state at its end
    decay_to_end = torch.exp(cum[..., -1:] - cum)  # [B, H, Z, T]
    weighted = xs * decay_to_end.permute(0, 2, 3, 1).unsqueeze(-1)  # [B, Z, T, H, P]
    chunk_states = torch.einsum("bzshp,bzsn->bzhpn", weighted, Bc)  # [B, Z, H, P, N]

    # 3. recurrence between chunks (a small segment sum over chunk boundaries)
    if initial_state is None:
        initial_state = x.new_zeros(batch, heads, head_dim, state_size)
    chunk_states = torch.cat([initial_state.unsqueeze(1), chunk_states], dim=1)  # [B, Z+1, ...]
    chunk_decay = torch.exp(segment_sum(F.pad(cum[..., -1], (1, 0))))  # [B, H, Z+1, Z+1]
    states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, chunk_states)  # [B, Z+1, H, P, N]
    final_state = states[:, -1]  # [B, H, P, N]
    states = states[:, :-1]  # state entering each chunk

    # 4. the entering state's contribution inside each chunk
    decay_from_start = torch.exp(cum).permute(0, 2, 3, 1).unsqueeze(-1)  # [B, Z, T, H, 1]
    y_off = torch.einsum("bzln,bzhpn->bzlhp", Cc, states) * decay_from_start  # [B, Z, T, H, P]
    y = (y_diag + y_off).reshape(batch, n_chunks * chunk_size, heads, head_dim)
    return y[:, :length], final_state


def ssd_step(
    state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor
) -> tuple[Tensor, Tensor]:
    """One token: state [U, H, P, N], x [U, H, P], dt [U, H], A [H] or [U, H], B, C [U, N]
    -> (y [U, H, P] without the D skip, state)."""
    alpha = torch.exp(dt * A)  # [U, H]
    update = (dt.unsqueeze(-1) * x).unsqueeze(-1) * B[:, None, None, :]  # [U, H, P, N]
    state = alpha[..., None, None] * state + update
    y = torch.einsum("uhpn,un->uhp", state, C)  # [U, H, P]
    return y, state


def ssd_sequential(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Reference loop, same arguments and results as ``ssd_chunked``."""
    batch, length, heads, head_dim = x.shape
    state = (
        x.new_zeros(batch, heads, head_dim, B.shape[-1]) if initial_state is None else initial_state
    )
    A_rows = A if A.dim() == 2 else A.unsqueeze(0).expand(batch, heads)  # [B, H]
    outputs = []
    for t in range(length):
        alpha = torch.exp(dt[:, t] * A_rows)  # [B, H]
        outer = x[:, t, :, :, None] * B[:, t, None, None, :]  # [B, H, P, N]
        state = alpha[:, :, None, None] * state + dt[:, t, :, None, None] * outer
        outputs.append((state * C[:, t, None, None, :]).sum(-1))  # [B, H, P]
    return torch.stack(outputs, dim=1), state


def final_state_of(x: Tensor, dt: Tensor, log_alpha: Tensor, B: Tensor) -> Tensor:
    """The state after the last token, from zero, without the outputs (one einsum):
    S_L = sum_t exp(sum_{k>t} log_alpha_k) dt_t x_t B_t^T. x [B, L, H, P], dt and log_alpha
    [B, L, H] (log_alpha = dt * A), B [B, L, N] -> [B, H, P, N]."""
    after = torch.flip(torch.cumsum(torch.flip(log_alpha, [1]), dim=1), [1]) - log_alpha
    weighted = x * (torch.exp(after) * dt).unsqueeze(-1)  # [B, L, H, P]
    return torch.einsum("blhp,bln->bhpn", weighted, B)  # [B, H, P, N]


class GatedRMSNorm(nn.Module):
    """RMSNorm(y * SiLU(z)), Mamba-2's norm before the output projection."""

    def __init__(self, width: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        gated = y * F.silu(z)
        scale = torch.rsqrt(gated.pow(2).mean(-1, keepdim=True) + self.eps)
        return gated * scale * self.weight


@dataclass
class SSDTrace:
    """What the alignment losses need from one mixer call. Sequence calls: x [B, L, H, P],
    B [B, L, N], dt [B, L, H], log_alpha [B, L, H], final_state [B, H, P, N]. Step calls have no
    L axis and ``final_state`` is the new state."""

    x: Tensor
    B: Tensor
    dt: Tensor
    log_alpha: Tensor
    final_state: Tensor


class Mamba2Mixer(nn.Module):
    """in_proj -> [z | xBC | dt]; causal depthwise conv + SiLU on xBC; SSD scan; gated RMSNorm;
    out_proj. ``dt_offset`` ([B, L, H] or [U, H]) is added before the softplus and
    ``a_log_offset`` ([B, H]) to ``A_log``: the hooks for per-row Δ-path parameter deltas."""

    def __init__(
        self,
        d_model: int,
        d_inner: int,
        head_dim: int,
        d_state: int,
        d_conv: int,
        chunk_size: int,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
    ) -> None:
        super().__init__()
        if d_inner % head_dim:
            raise ValueError(f"d_inner {d_inner} is not a multiple of head_dim {head_dim}")
        self.d_inner, self.head_dim, self.d_state = d_inner, head_dim, d_state
        self.n_heads = d_inner // head_dim
        self.d_conv, self.chunk_size = d_conv, chunk_size
        self.conv_channels = d_inner + 2 * d_state
        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * d_state + self.n_heads, bias=False)
        self.conv = nn.Conv1d(
            self.conv_channels, self.conv_channels, d_conv, groups=self.conv_channels
        )
        # Mamba-2 init: dt log-uniform in [dt_min, dt_max] via the inverse softplus; A in [1, 16]
        dt = torch.exp(torch.rand(self.n_heads) * (math.log(dt_max) - math.log(dt_min)))
        dt = (dt * dt_min).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # [H]
        self.A_log = nn.Parameter(torch.log(torch.empty(self.n_heads).uniform_(1.0, 16.0)))
        self.D = nn.Parameter(torch.ones(self.n_heads))
        self.norm = GatedRMSNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def dt_rows(self) -> tuple[int, int]:
        """The rows of ``in_proj.weight`` that produce the pre-softplus dt (the Δ path)."""
        start = 2 * self.d_inner + 2 * self.d_state
        return start, start + self.n_heads

    def _split(self, projected: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z, xbc, dt_raw = projected.split([self.d_inner, self.conv_channels, self.n_heads], dim=-1)
        return z, xbc, dt_raw

    def _heads(self, xbc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, B, C = xbc.split([self.d_inner, self.d_state, self.d_state], dim=-1)
        return x.unflatten(-1, (self.n_heads, self.head_dim)), B, C

    def _A(self, a_log_offset: Tensor | None) -> Tensor:
        A_log = self.A_log if a_log_offset is None else self.A_log + a_log_offset
        return -torch.exp(A_log)  # [H] or [B, H]

    def _causal_conv(self, xbc: Tensor) -> Tensor:
        """Depthwise causal conv as K shifted multiply-adds: [B, L, C] -> [B, L, C]. Same result
        as ``F.conv1d`` with left padding, but its backward is much faster on CPU."""
        length = xbc.shape[1]
        padded = F.pad(xbc, (0, 0, self.d_conv - 1, 0))  # [B, K-1+L, C]
        weight = self.conv.weight.squeeze(1)  # [C, K]
        out = cast(Tensor, self.conv.bias)  # the conv has a bias
        for k in range(self.d_conv):
            out = out + padded[:, k : k + length] * weight[:, k]
        return out

    def forward(
        self,
        u: Tensor,
        mask: Tensor | None = None,
        dt_offset: Tensor | None = None,
        a_log_offset: Tensor | None = None,
        scan: ScanKind = "chunked",
    ) -> tuple[Tensor, SSDTrace]:
        """u [B, L, D], mask [B, L] (False = no token: zero input, dt = 0, state untouched)."""
        if mask is not None:
            u = u * mask.unsqueeze(-1).to(u.dtype)
        z, xbc, dt_raw = self._split(self.in_proj(u))  # [B, L, E], [B, L, C], [B, L, H]
        x, B, C = self._heads(F.silu(self._causal_conv(xbc)))  # [B, L, H, P], [B, L, N] x 2
        if dt_offset is not None:
            dt_raw = dt_raw + dt_offset
        dt = F.softplus(dt_raw + self.dt_bias)  # [B, L, H]
        if mask is not None:
            dt = dt * mask.unsqueeze(-1).to(dt.dtype)
        A = self._A(a_log_offset)
        if scan == "chunked":
            y, final = ssd_chunked(x, dt, A, B, C, self.chunk_size)
        else:
            y, final = ssd_sequential(x, dt, A, B, C)
        y = y + self.D[:, None] * x  # [B, L, H, P]
        out = self.out_proj(self.norm(y.flatten(-2), z))  # [B, L, D]
        log_alpha = dt * (A.unsqueeze(-2) if A.dim() == 2 else A)  # [B, L, H]
        return out, SSDTrace(x=x, B=B, dt=dt, log_alpha=log_alpha, final_state=final)

    def step(
        self,
        u: Tensor,
        conv_tail: Tensor,
        ssm: Tensor,
        dt_offset: Tensor | None = None,
        a_log_offset: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, SSDTrace]:
        """u [U, D], conv_tail [U, K-1, C] (the last K-1 conv inputs), ssm [U, H, P, N]
        -> (out [U, D], conv_tail, trace with final_state = the new ssm)."""
        z, xbc, dt_raw = self._split(self.in_proj(u))  # [U, E], [U, C], [U, H]
        window = torch.cat([conv_tail, xbc.unsqueeze(1)], dim=1)  # [U, K, C]
        bias = cast(Tensor, self.conv.bias)  # the conv has a bias
        conv_out = (window * self.conv.weight.squeeze(1).T).sum(1) + bias  # [U, C]
        x, B, C = self._heads(F.silu(conv_out))  # [U, H, P], [U, N], [U, N]
        if dt_offset is not None:
            dt_raw = dt_raw + dt_offset
        dt = F.softplus(dt_raw + self.dt_bias)  # [U, H]
        A = self._A(a_log_offset)
        y, ssm = ssd_step(ssm, x, dt, A, B, C)
        y = y + self.D[:, None] * x  # [U, H, P]
        out = self.out_proj(self.norm(y.flatten(-2), z))  # [U, D]
        trace = SSDTrace(x=x, B=B, dt=dt, log_alpha=dt * A, final_state=ssm)
        return out, window[:, 1:], trace
