"""TTT4Rec (Yang, Wang, Ge; arXiv 2409.19142), computed as the authors' code computes it
(``ZhaoqiZachYang/TTT4Rec`` on RecBole 1.2.0 + ttt-lm-pytorch). See ../shared/docs/seeds.md §1
and §6.1; the inner loop lives in ``models/ttt.py``.

    item embedding -> dropout(0.2) -> LayerNorm(eps 1e-12)
    -> n_layers x [x + TTT(RMSNorm(x)); x + SwiGLU(RMSNorm(x))] -> RMSNorm

Streaming policies (``TTT4RecConfig.policy``):

* ``windowed``: the state is the last ``max_len`` items; each step resets the fast weights to the
  learned W0 and re-scans the window (exactly the paper's evaluation, one row per event);
* ``recurrent``: the state is (W_b, G, i) per layer and is carried forever.

``step(adapt=False)`` (the frozen variant) never carries fast-weight updates across events: each
event's output is the model's output for a one-item sequence made of that event (fast weights
W0, in-mini-batch index 0, the token's own update included), whatever the state holds. The
windowed state still records the event; the recurrent state is returned unchanged.

Shape legend: B batch, L length, D width, U users, N layers, H heads, Dh head width, F inner width.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import torch
from torch import Tensor, nn

from models.base import SeqRecConfig, SeqRecModel, last_positions
from models.layers import RMSNorm, SwiGLU, apply_rope_interleaved, init_normal_, rope_angles
from models.registry import register
from models.state import State
from models.ttt import (
    FastWeights,
    token_scales,
    ttt_dual_scan,
    ttt_dual_scan_at,
    ttt_recurrent_step_fast,
)

POLICIES = ("windowed", "recurrent")
INNER_MODELS = ("mlp", "linear")


@dataclass
class TTT4RecConfig(SeqRecConfig):
    n_layers: int = 1  # residual blocks (TTT layer + SwiGLU)
    n_heads: int = 4  # TTT heads; head width = d_model / n_heads
    inner: str = "mlp"  # inner model: "mlp" (TTT-MLP, width 4 Dh) or "linear" (TTT-Linear)
    mini_batch: int = 8  # TTT mini-batch size K (also the RoPE period)
    inner_base_lr: float = 1.0  # eta_0 of the per-token learning rate eta_0/Dh * sigmoid(.)
    rope_base: float = 1000.0  # RoPE theta
    ffn_dim: int = 256  # SwiGLU hidden width
    dropout: float = 0.2  # on the item embeddings only
    init_std: float = 0.02  # N(0, std) init of linears, embeddings and W0
    policy: str = "windowed"  # streaming: "windowed" (paper) or "recurrent" (carry W forever)
    in_place: bool = False  # recurrent step updates the given state's tensors (caller donates it)

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model {self.d_model} must split into {self.n_heads} even heads")
        if self.inner not in INNER_MODELS:
            raise ValueError(f"inner must be one of {INNER_MODELS}, got {self.inner!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def inner_width(self) -> int:
        return 4 * self.head_dim if self.inner == "mlp" else self.head_dim


@dataclass
class WindowState(State):
    """Last ``max_len`` events per user, oldest first, right-padded with item 0."""

    items: Tensor  # [U, L] int64
    times: Tensor  # [U, L] float64 seconds
    length: Tensor  # [U] int64, number of real items in the window


@dataclass
class TTTMLPState(State):
    """Recurrent TTT-MLP state per user: W_b and the accumulator G per layer and head."""

    W1: Tensor  # [U, N, H, Dh, F]
    b1: Tensor  # [U, N, H, 1, F]
    W2: Tensor  # [U, N, H, F, Dh]
    b2: Tensor  # [U, N, H, 1, Dh]
    G_W1: Tensor  # [U, N, H, Dh, F]
    G_b1: Tensor  # [U, N, H, 1, F]
    G_W2: Tensor  # [U, N, H, F, Dh]
    G_b2: Tensor  # [U, N, H, 1, Dh]
    position: Tensor  # [U] int64, in-mini-batch index i of the next token


@dataclass
class TTTLinearState(State):
    W1: Tensor  # [U, N, H, Dh, Dh]
    b1: Tensor  # [U, N, H, 1, Dh]
    G_W1: Tensor  # [U, N, H, Dh, Dh]
    G_b1: Tensor  # [U, N, H, 1, Dh]
    position: Tensor  # [U] int64, in-mini-batch index i of the next token


RecurrentState = TTTMLPState | TTTLinearState


def window_push(state: WindowState, items: Tensor, times: Tensor) -> WindowState:
    """Append one event per user, dropping the oldest when the window is full."""
    full = (state.length >= state.items.shape[1]).unsqueeze(1)  # [U, 1]
    slot = state.length.clamp(max=state.items.shape[1] - 1).unsqueeze(1)  # [U, 1]
    shifted_items = torch.cat([state.items[:, 1:], items.unsqueeze(1)], dim=1)  # [U, L]
    shifted_times = torch.cat([state.times[:, 1:], times.unsqueeze(1).to(state.times)], dim=1)
    placed_items = state.items.scatter(1, slot, items.unsqueeze(1))  # [U, L]
    placed_times = state.times.scatter(1, slot, times.unsqueeze(1).to(state.times))
    return WindowState(
        items=torch.where(full, shifted_items, placed_items),
        times=torch.where(full, shifted_times, placed_times),
        length=(state.length + 1).clamp(max=state.items.shape[1]),
    )


def empty_window(n_users: int, max_len: int, device: torch.device) -> WindowState:
    return WindowState(
        items=torch.zeros(n_users, max_len, dtype=torch.long, device=device),
        times=torch.zeros(n_users, max_len, dtype=torch.float64, device=device),
        length=torch.zeros(n_users, dtype=torch.long, device=device),
    )


class WindowModel(SeqRecModel):
    """A model that re-reads its window at every event (SASRec, DARec): its per-user state is
    the last ``max_len`` items, and a step pushes each user's event, then reads the window out
    at its last item. It does not adapt: ``adapt`` has no effect."""

    state_type: type[State] = WindowState

    def init_state(self, n_users: int) -> State:
        return empty_window(n_users, self.config.max_len, self.device)

    def step(
        self, state: State, items: Tensor, times: Tensor, adapt: bool = True
    ) -> tuple[State, Tensor]:
        if not isinstance(state, WindowState):
            raise TypeError(f"{self.name} cannot step a {type(state).__name__}")
        window = window_push(state, items, times)
        return window, self.last_hidden(window.items, window.times, window.length)


class TTTLayer(nn.Module):
    """TTT layer, "Transformer backbone" (separate Q/K/V, no gate, no conv)."""

    def __init__(self, config: TTT4RecConfig) -> None:
        super().__init__()
        d, h, dh, f = config.d_model, config.n_heads, config.head_dim, config.inner_width
        self.config = config
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.lr_weight = nn.Parameter(torch.randn(h, d) * config.init_std)  # a_h
        self.lr_bias = nn.Parameter(torch.zeros(h))  # c_h
        self.token_offsets = nn.Parameter(torch.zeros(config.mini_batch))  # eps_i
        self.ttt_norm_weight = nn.Parameter(torch.ones(h, 1, dh))  # gamma_h
        self.ttt_norm_bias = nn.Parameter(torch.zeros(h, 1, dh))  # beta_h
        self.W1 = nn.Parameter(torch.randn(h, dh, f) * config.init_std)
        self.b1 = nn.Parameter(torch.zeros(h, 1, f))
        if config.inner == "mlp":
            self.W2 = nn.Parameter(torch.randn(h, f, dh) * config.init_std)
            self.b2 = nn.Parameter(torch.zeros(h, 1, dh))
        self.post_norm = nn.LayerNorm(d, eps=1e-6)
        self.inner_eps = 1e-6

    def initial_fast(self) -> FastWeights:
        if self.config.inner == "mlp":
            return FastWeights(self.W1, self.b1, self.W2, self.b2)
        return FastWeights(self.W1, self.b1)

    def views(self, xn: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """xn [..., T, D], positions [..., T] (in-mini-batch index) -> q, k, v [..., H, T, Dh]
        and sigma [..., H, T]."""
        h, dh = self.config.n_heads, self.config.head_dim

        def heads(x: Tensor) -> Tensor:
            return x.unflatten(-1, (h, dh)).transpose(-3, -2)  # [..., H, T, Dh]

        cos, sin = rope_angles(positions, dh, self.config.rope_base)  # [..., T, Dh/2]
        cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)  # [..., 1, T, Dh/2]
        q = apply_rope_interleaved(heads(self.q_proj(xn)), cos, sin)  # [..., H, T, Dh]
        k = apply_rope_interleaved(heads(self.k_proj(xn)), cos, sin)  # [..., H, T, Dh]
        v = heads(self.v_proj(xn))  # [..., H, T, Dh]
        gate = torch.sigmoid(xn @ self.lr_weight.T + self.lr_bias)  # [..., T, H]
        sigma = (self.config.inner_base_lr / dh) * gate.transpose(-1, -2)  # [..., H, T]
        return q, k, v, sigma

    def output(self, z: Tensor) -> Tensor:
        """Head outputs z [..., H, T, Dh] -> o_proj(post_norm(concat)) [..., T, D]."""
        return self.o_proj(self.post_norm(z.transpose(-3, -2).flatten(-2)))

    def sequence_views(self, xn: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``views`` of whole sequences xn [B, L, D], each token at its in-mini-batch index:
        q, k, v [B, H, L, Dh] and sigma [B, H, L]."""
        positions = torch.arange(xn.shape[1], device=xn.device) % self.config.mini_batch  # [L]
        return self.views(xn, positions)

    def forward(self, xn: Tensor) -> Tensor:
        """Dual form over a whole batch of sequences: xn [B, L, D] -> [B, L, D]."""
        q, k, v, sigma = self.sequence_views(xn)
        scales = token_scales(self.token_offsets)  # [K]
        z, _ = ttt_dual_scan(
            self.initial_fast(), q, k, v, sigma, scales,
            self.ttt_norm_weight, self.ttt_norm_bias, self.inner_eps,
        )  # fmt: skip
        return self.output(z)

    def forward_at(self, xn: Tensor, rows: Tensor, positions: Tensor) -> Tensor:
        """``forward(xn)[rows, positions]`` ([N, D]), scanning each row only as far as needed."""
        q, k, v, sigma = self.sequence_views(xn)
        z = ttt_dual_scan_at(
            self.initial_fast(), q, k, v, sigma, token_scales(self.token_offsets),
            self.ttt_norm_weight, self.ttt_norm_bias, self.inner_eps, rows, positions,
        )  # fmt: skip
        return self.output(z.unsqueeze(-2)).squeeze(-2)  # [N, H, Dh] -> [N, D]

    def step(
        self, xn: Tensor, fast: FastWeights, accum: FastWeights, index: Tensor
    ) -> tuple[FastWeights, FastWeights, Tensor]:
        """One token per user: xn [U, D]; fast/accum [U, H, ...]; index [U] -> [U, D]."""
        q, k, v, sigma = self.views(xn.unsqueeze(1), index.unsqueeze(1))  # [U, H, 1, Dh]
        scale = token_scales(self.token_offsets)[index].view(-1, 1, 1, 1)  # [U, 1, 1, 1]
        boundary = index == self.config.mini_batch - 1  # [U]
        fast, accum, z = ttt_recurrent_step_fast(
            fast, accum, q, k, v, sigma.unsqueeze(-1), scale, boundary,
            self.ttt_norm_weight, self.ttt_norm_bias, self.inner_eps, self.config.in_place,
        )  # fmt: skip
        return fast, accum, self.output(z).squeeze(1)


class TTTBlock(nn.Module):
    def __init__(self, config: TTT4RecConfig) -> None:
        super().__init__()
        self.seq_norm = RMSNorm(config.d_model, eps=1e-6)
        self.ttt = TTTLayer(config)
        self.ffn_norm = RMSNorm(config.d_model, eps=1e-6)
        self.ffn = SwiGLU(config.d_model, config.ffn_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ttt(self.seq_norm(x))  # [B, L, D]
        return x + self.ffn(self.ffn_norm(x))

    def forward_at(self, x: Tensor, rows: Tensor, positions: Tensor) -> Tensor:
        """``forward(x)[rows, positions]`` ([N, D]); the FFN runs at those positions only."""
        x_at = x[rows, positions] + self.ttt.forward_at(self.seq_norm(x), rows, positions)
        return x_at + self.ffn(self.ffn_norm(x_at))

    def step(
        self, x: Tensor, fast: FastWeights, accum: FastWeights, index: Tensor
    ) -> tuple[FastWeights, FastWeights, Tensor]:
        fast, accum, mixed = self.ttt.step(self.seq_norm(x), fast, accum, index)
        x = x + mixed  # [U, D]
        return fast, accum, x + self.ffn(self.ffn_norm(x))


@register(TTT4RecConfig)
class TTT4Rec(SeqRecModel):
    name: ClassVar[str] = "ttt4rec"
    state_type: type[State] = WindowState
    config: TTT4RecConfig

    def __init__(self, config: TTT4RecConfig) -> None:
        super().__init__()
        self.config = config
        self.item_embedding = nn.Embedding(config.n_items, config.d_model, padding_idx=0)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.input_norm = nn.LayerNorm(config.d_model, eps=1e-12)
        blocks = [TTTBlock(config) for _ in range(config.n_layers)]
        self.blocks = nn.ModuleList(blocks)
        self.ttt_blocks = blocks  # typed view of the same modules
        self.final_norm = RMSNorm(config.d_model, eps=1e-6)
        init_normal_(self, config.init_std)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        self.state_type = self.state_type_for(config)

    @staticmethod
    def state_type_for(config: TTT4RecConfig) -> type[State]:
        if config.policy == "windowed":
            return WindowState
        return TTTMLPState if config.inner == "mlp" else TTTLinearState

    def embed(self, items: Tensor) -> Tensor:
        return self.input_norm(self.embedding_dropout(self.item_embedding(items)))  # [..., D]

    def forward(self, items: Tensor, times: Tensor) -> Tensor:
        x = self.embed(items)  # [B, L, D]
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)  # [B, L, D]

    def hidden_at(self, items: Tensor, times: Tensor, rows: Tensor, positions: Tensor) -> Tensor:
        *early, last = self.ttt_blocks
        x = self.embed(items)  # [B, L, D]
        for block in early:
            x = block(x)
        return self.final_norm(last.forward_at(x, rows, positions))  # [N, D]

    # -- streaming ---------------------------------------------------------------------------

    def init_state(self, n_users: int) -> State:
        if self.config.policy == "windowed":
            return empty_window(n_users, self.config.max_len, self.device)
        return self.fresh_recurrent(n_users)

    def fresh_recurrent(self, n_users: int) -> RecurrentState:
        """Every user at the learned W0, empty accumulators, in-mini-batch index 0."""
        per_layer = [block.ttt.initial_fast().parts() for block in self.ttt_blocks]
        fast = [
            torch.stack(list(parts)).detach() for parts in zip(*per_layer, strict=True)
        ]  # [N, H, ...]
        tiled = [p.unsqueeze(0).expand(n_users, *p.shape).clone() for p in fast]  # [U, N, H, ..]
        zeros = [torch.zeros_like(p) for p in tiled]
        position = torch.zeros(n_users, dtype=torch.long, device=self.device)
        return self._recurrent_state([*tiled, *zeros, position])

    def _recurrent_state(self, tensors: list[Tensor]) -> RecurrentState:
        """Fast parts, accumulator parts, position -> the state type of the inner model."""
        kind = TTTMLPState if self.config.inner == "mlp" else TTTLinearState
        return kind(**dict(zip([f.name for f in fields(kind)], tensors, strict=True)))

    def step(
        self, state: State, items: Tensor, times: Tensor, adapt: bool = True
    ) -> tuple[State, Tensor]:
        if not adapt:
            return self._window_push_if_windowed(state, items, times), self._frozen_hidden(
                items, times
            )
        if isinstance(state, WindowState):
            window = window_push(state, items, times)
            hidden = last_positions(self.forward(window.items, window.times), window.length)
            return window, hidden
        if isinstance(state, (TTTMLPState, TTTLinearState)):
            return self._recurrent_step(state, items)
        raise TypeError(f"TTT4Rec cannot step a {type(state).__name__}")

    def _window_push_if_windowed(self, state: State, items: Tensor, times: Tensor) -> State:
        return window_push(state, items, times) if isinstance(state, WindowState) else state

    def _frozen_hidden(self, items: Tensor, times: Tensor) -> Tensor:
        """The output for the one-item sequence [item]: W0, index 0, own update included."""
        return self.forward(items.unsqueeze(1), times.unsqueeze(1))[:, 0]  # [U, D]

    def _recurrent_step(
        self, state: RecurrentState, items: Tensor
    ) -> tuple[RecurrentState, Tensor]:
        tensors = list(state.tensors().values())
        n_parts = (len(tensors) - 1) // 2
        fast_all, accum_all = tensors[:n_parts], tensors[n_parts : 2 * n_parts]  # [U, N, H, ...]
        x = self.embed(items)  # [U, D]
        new_fast: list[list[Tensor]] = []
        new_accum: list[list[Tensor]] = []
        for layer, block in enumerate(self.ttt_blocks):
            fast = FastWeights.from_parts([p[:, layer] for p in fast_all])  # [U, H, ...]
            accum = FastWeights.from_parts([p[:, layer] for p in accum_all])
            fast, accum, x = block.step(x, fast, accum, state.position)
            new_fast.append(fast.parts())
            new_accum.append(accum.parts())
        position = (state.position + 1) % self.config.mini_batch
        new_state = self._recurrent_state(
            [*_stack_layers(new_fast), *_stack_layers(new_accum), position]
        )
        return new_state, self.final_norm(x)


def _stack_layers(per_layer: list[list[Tensor]]) -> list[Tensor]:
    """[layer][part] tensors [U, H, ...] -> per part [U, N, H, ...] (a view when N = 1)."""
    if len(per_layer) == 1:
        return [part.unsqueeze(1) for part in per_layer[0]]
    return [torch.stack(parts, dim=1) for parts in zip(*per_layer, strict=True)]
