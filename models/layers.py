"""Shared building blocks for the models in ``models/`` (RecBole's ``recbole/model/layers.py``).

Shape legend (see ``models/base.py``): B batch, L sequence length, D model width, H heads,
Dh head width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """Root-mean-square norm as in LLaMA / ttt-lm-pytorch (computed in at least float32)."""

    def __init__(self, width: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: Tensor) -> Tensor:
        wide = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        normed = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)  # [..., D]
        return (self.weight * normed).to(x.dtype)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), bias-free (ttt-lm-pytorch ``SwiGluMLP``)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(width, hidden, bias=False)
        self.up = nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))  # [..., D]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with biases, RecBole ``MultiHeadAttention`` style
    (post-LN residual is applied by the caller)."""

    def __init__(self, width: int, n_heads: int, attn_dropout: float) -> None:
        super().__init__()
        if width % n_heads:
            raise ValueError(f"width {width} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)
        self.attn_dropout = attn_dropout

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (self._heads(project(x)) for project in (self.query, self.key, self.value))
        dropout = self.attn_dropout if self.training else 0.0
        context = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        return self.out(self._merge(context))  # [B, L, D]

    def forward_at(self, x: Tensor, rows: Tensor, positions: Tensor) -> Tensor:
        """``forward(x)[rows, positions]`` ([N, D]) with queries only at those positions. Each
        row's queries sit side by side ([B, Q], padded with position 0), so a row's keys and
        values serve all its queries instead of being copied once per query."""
        batch, length, _ = x.shape
        slots, width = slots_in_rows(rows, batch)
        query_positions = positions.new_zeros(batch, width)
        query_positions[rows, slots] = positions  # [B, Q]
        row_index = torch.arange(batch, device=x.device).unsqueeze(1)  # [B, 1]
        q = self._heads(self.query(x[row_index, query_positions]))  # [B, H, Q, Dh]
        k, v = self._heads(self.key(x)), self._heads(self.value(x))  # [B, H, L, Dh]
        key_positions = torch.arange(length, device=x.device)  # [L]
        visible = key_positions <= query_positions.unsqueeze(-1)  # [B, Q, L]
        dropout = self.attn_dropout if self.training else 0.0
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=visible.unsqueeze(1), dropout_p=dropout
        )  # [B, H, Q, Dh]
        return self.out(self._merge(context)[rows, slots])  # [N, D]

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.n_heads, -1)).transpose(-3, -2)  # [B, L, D] -> [B, H, L, Dh]

    @staticmethod
    def _merge(context: Tensor) -> Tensor:
        return context.transpose(-3, -2).flatten(-2)  # [B, H, L, Dh] -> [B, L, D]


def slots_in_rows(rows: Tensor, n_rows: int) -> tuple[Tensor, int]:
    """Each entry's index among the entries of its row, in the given order, and the most
    entries any row has: rows [N] -> slots [N], Q.

    >>> slots_in_rows(torch.tensor([2, 0, 2, 1, 2]), 4)
    (tensor([0, 0, 1, 0, 2]), 3)
    """
    counts = torch.bincount(rows, minlength=n_rows)  # [B]
    order = torch.argsort(rows, stable=True)  # [N] entries row by row
    first = torch.cumsum(counts, 0) - counts  # [B] where each row starts in ``order``
    slots = torch.empty_like(rows)
    slots[order] = torch.arange(rows.numel(), device=rows.device) - first[rows[order]]
    return slots, int(counts.max())


class PostNormTransformerLayer(nn.Module):
    """RecBole ``TransformerLayer``: attention -> dropout -> LN(x + .) -> FFN -> LN(x + .)."""

    def __init__(
        self, width: int, n_heads: int, inner: int, dropout: float, attn_dropout: float, eps: float
    ) -> None:
        super().__init__()
        self.attention = CausalSelfAttention(width, n_heads, attn_dropout)
        self.attn_norm = nn.LayerNorm(width, eps=eps)
        self.ffn_in = nn.Linear(width, inner)
        self.ffn_out = nn.Linear(inner, width)
        self.ffn_norm = nn.LayerNorm(width, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.attn_norm(x + self.dropout(self.attention(x)))  # [B, L, D]
        ffn = self.ffn_out(F.gelu(self.ffn_in(x)))  # [B, L, D]
        return self.ffn_norm(x + self.dropout(ffn))  # [B, L, D]

    def forward_at(self, x: Tensor, rows: Tensor, positions: Tensor) -> Tensor:
        """``forward(x)[rows, positions]`` ([N, D]); attention queries and FFN only there."""
        attended = self.attention.forward_at(x, rows, positions)  # [N, D]
        x_at = self.attn_norm(x[rows, positions] + self.dropout(attended))  # [N, D]
        ffn = self.ffn_out(F.gelu(self.ffn_in(x_at)))  # [N, D]
        return self.ffn_norm(x_at + self.dropout(ffn))  # [N, D]


def rope_angles(positions: Tensor, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """cos, sin of RoPE angles ``position * base^(-2m/Dh)``: positions [...] -> [..., Dh/2]."""
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32)
    inv_freq = 1.0 / (base ** (exponents / head_dim))  # [Dh/2]
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq  # [..., Dh/2]
    return angles.cos(), angles.sin()


def apply_rope_interleaved(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate dimension pairs (2m, 2m+1) by the given angles: x [..., Dh], cos/sin [..., Dh/2].

    ttt-lm-pytorch permutes Q/K to the JAX layout, applies HF ``rotate_half`` RoPE and permutes
    back; the composition is exactly this interleaved rotation.
    """
    pairs = x.unflatten(-1, (-1, 2))  # [..., Dh/2, 2]
    even, odd = pairs[..., 0], pairs[..., 1]  # [..., Dh/2]
    rotated = torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1)
    return rotated.flatten(-2)  # [..., Dh]


def init_normal_(module: nn.Module, std: float) -> None:
    """RecBole / TTT4Rec init: Linear and Embedding N(0, std), biases 0, norms weight 1 bias 0."""
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, nn.Embedding)):
            nn.init.normal_(sub.weight, mean=0.0, std=std)
            if isinstance(sub, nn.Linear) and sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)
