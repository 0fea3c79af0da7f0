"""T²ARec: a Mamba-2 recommender whose Δ path adapts per user at test time through two
self-supervised alignment losses.

Zhang et al., "Test-Time Alignment for Tracking User Interest Shifts in Sequential
Recommendation" (arXiv 2504.01489, RecSys 2025). No code is public and the paper's formulas could
not be read: the backbone (Mamba-2), the two losses' published descriptions and the test-time
self-supervised updates are the paper's; every formula here is our reconstruction (seeds.md
§2.4-2.6, §6.2; docs/models.md "T²ARec" lists each choice and whose it is).

Module tree::

    item_embedding [I, D] (tied with the output) -> LayerNorm -> dropout
    n_layers x T2ABlock: Mamba2Mixer (models/ssd.py) -> dropout -> +res -> LayerNorm
                          -> FFN (4D, GELU)          -> dropout -> +res -> LayerNorm

Time enters the Δ path: dt_raw += gap_weight[h] * log(1 + gap / unit) (causal, per token).

Shape legend: B batch, L length, D width, U users, H heads, P head dim, N state size, K conv
kernel, C conv channels, W test-time window, w ISA window, b TIA block, Y layers, F delta size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad, vmap

from models.base import PADDING_ITEM, SeqRecConfig, SeqRecModel
from models.registry import register
from models.ssd import Mamba2Mixer, ScanKind, SSDTrace, final_state_of
from models.state import State

TRIGGERS = ("every", "shift", "never")
RESET_POLICIES = ("never", "inactivity", "each_update")
_EPS = 1e-8


@dataclass
class T2ARecConfig(SeqRecConfig):
    # backbone (seeds.md §6.2 sizes: D 64, expand 2, P 32, H 4, N 32, d_conv 4, 2 layers)
    n_layers: int = 2  # T2A-Mamba blocks
    expand: int = 2  # d_inner = expand * d_model
    head_dim: int = 32  # P; heads H = d_inner / P
    d_state: int = 32  # N
    d_conv: int = 4  # causal depthwise conv kernel K
    chunk_size: int = 32  # SSD chunk length for the parallel form
    dropout: float = 0.2  # embedding, mixer and FFN outputs (training only)
    # event-time gaps
    time_unit: float = 3600.0  # seconds; a gap enters as log(1 + gap / time_unit)
    max_gap: float = 365.0 * 86400.0  # gaps are clamped to [0, max_gap] seconds before the log
    gap_input: bool = True  # add gap_weight * log-gap to the pre-softplus dt (causal)
    # alignment losses (training and test time)
    use_tia: bool = True  # time-interval alignment loss
    use_isa: bool = True  # interest-state alignment loss
    tia_weight: float = 0.1  # lambda_1
    isa_weight: float = 0.1  # lambda_2
    tia_block: int = 8  # b: pairs are taken inside blocks of b consecutive events
    tia_abs_weight: float = 0.5  # lambda_abs: absolute vs relative (index) interval in the target
    isa_window: int = 8  # w: events in the backward/forward round trip
    # test-time alignment (TTA) updates of the per-user Δ-path delta
    use_tta: bool = True  # False = never update at test time (same as step(adapt=False))
    tta_window: int = 50  # W: ring buffer of recent items/times the TTA losses run over
    tta_steps: int = 1  # k gradient steps per update
    tta_lr: float = 1e-3  # SGD step size
    tta_momentum: float = 0.0  # SGD momentum (> 0 keeps a momentum buffer per user)
    tta_clip: float = 1.0  # per-user gradient-norm clip (0 = off)
    tta_trigger: str = "every"  # every | shift | never
    tta_every: int = 8  # trigger "every": update once every N events of the user
    tta_shift_threshold: float = 0.5  # trigger "shift": update when the last shift score > this
    tta_reset: str = "inactivity"  # never | inactivity | each_update (what zeroes the delta)
    tta_reset_gap: float = 30.0 * 86400.0  # "inactivity": reset when a gap exceeds this (s)

    def __post_init__(self) -> None:
        if self.d_inner % self.head_dim:
            raise ValueError(
                f"expand * d_model = {self.d_inner} is not a multiple of head_dim {self.head_dim}"
            )
        if self.tta_trigger not in TRIGGERS:
            raise ValueError(f"tta_trigger {self.tta_trigger!r} is not one of {TRIGGERS}")
        if self.tta_reset not in RESET_POLICIES:
            raise ValueError(f"tta_reset {self.tta_reset!r} is not one of {RESET_POLICIES}")
        for name in ("tia_block", "isa_window", "tta_window", "tta_every", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.time_unit <= 0 or self.max_gap <= 0:
            raise ValueError("time_unit and max_gap must be positive")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def n_heads(self) -> int:
        return self.d_inner // self.head_dim

    @property
    def conv_channels(self) -> int:
        return self.d_inner + 2 * self.d_state

    @property
    def delta_per_layer(self) -> int:
        # dt rows of in_proj [H, D], dt_bias [H], A_log [H], gap_weight [H]
        return self.n_heads * (self.d_model + 3)

    @property
    def delta_size(self) -> int:
        return self.n_layers * self.delta_per_layer


T2AREC_PRESETS: dict[str, dict[str, Any]] = {
    "seeds": {},  # the defaults above, seeds.md §6.2
    "tiny": dict(
        d_model=16,
        max_len=20,
        head_dim=8,
        d_state=8,
        chunk_size=8,
        tia_block=4,
        isa_window=4,
        tta_window=12,
        tta_every=4,
    ),
}


def t2arec_config(preset: str = "seeds", **overrides: Any) -> T2ARecConfig:
    return T2ARecConfig(**{**T2AREC_PRESETS[preset], **overrides})


@dataclass
class T2ARecState(State):
    ssm: Tensor  # [U, Y, H, P, N] SSM state after the last event
    conv: Tensor  # [U, Y, K-1, C] last K-1 conv inputs
    ssm_lag: Tensor  # [U, Y, H, P, N] SSM state isa_window events ago (S_m)
    isa_x: Tensor  # [U, Y, w, H, P] x of the last w events, oldest first
    isa_b: Tensor  # [U, Y, w, N] B of the last w events
    isa_dt: Tensor  # [U, Y, w, H] dt of the last w events
    isa_log_alpha: Tensor  # [U, Y, w, H] dt * A of the last w events
    delta: Tensor  # [U, F] per-user Δ-path parameter delta
    momentum: Tensor  # [U, F] SGD momentum, or [U, 0] when tta_momentum == 0
    window_items: Tensor  # [U, W] int64 recent items, oldest first, left-padded with 0
    window_times: Tensor  # [U, W] float64 their event times (s)
    window_gaps: Tensor  # [U, W] log-gap features the events entered with
    last_time: Tensor  # [U] float64 time of the last event
    n_events: Tensor  # [U] int64 events consumed
    since_update: Tensor  # [U] int64 events since the last test-time update
    n_updates: Tensor  # [U] int64 test-time updates done
    shift: Tensor  # [U] interest-state residual after the last event (the shift score)


def log_gaps(
    times: Tensor, mask: Tensor, time_unit: float, max_gap: float
) -> tuple[Tensor, Tensor]:
    """times [B, L] s, mask [B, L] -> (log-gap feature [B, L] float32, clock [B, L] float64).

    The gap before the first real event is 0. ``clock`` is the running sum of clamped gaps, so
    absolute intervals inside a block are also clamped. Negative gaps between real events raise."""
    seconds = times.to(torch.float64)
    raw = seconds[:, 1:] - seconds[:, :-1]  # [B, L-1]
    both_real = mask[:, 1:] & mask[:, :-1]
    negative = both_real & (raw < 0)
    if bool(negative.any()):
        rows, cols = negative.nonzero(as_tuple=True)
        where = ", ".join(
            f"row {r} position {c + 1} ({seconds[r, c + 1].item():.3f} s"
            f" after {seconds[r, c].item():.3f} s)"
            for r, c in zip(rows[:5].tolist(), cols[:5].tolist(), strict=True)
        )
        more = " ..." if rows.numel() > 5 else ""
        raise ValueError(f"negative time gap (times go backwards) at {where}{more}")
    gaps = clamped_gaps(seconds, mask, max_gap)  # [B, L]
    feature = torch.log1p(gaps / time_unit).to(torch.float32)
    return feature, torch.cumsum(gaps, dim=1)


def clamped_gaps(seconds: Tensor, mask: Tensor, max_gap: float) -> Tensor:
    """seconds [B, L] float64 -> gap before each position [B, L] clamped to [0, max_gap]; 0 where
    this or the previous position is not a real event (no validation: ``log_gaps`` does it)."""
    raw = seconds[:, 1:] - seconds[:, :-1]
    both_real = mask[:, 1:] & mask[:, :-1]
    gaps = torch.where(both_real, raw, torch.zeros_like(raw)).clamp(0.0, max_gap)
    return F.pad(gaps, (1, 0))


def time_interval_alignment(
    dt_mean: Tensor,
    clock: Tensor,
    mask: Tensor,
    block: int,
    abs_weight: float,
    time_unit: float,
    align_end: bool = False,
) -> tuple[Tensor, Tensor]:
    """Blockwise pairwise loss between model intervals and time intervals (seeds.md §2.4).

    dt_mean [B, L] head-averaged step sizes, clock [B, L] float64 s, mask [B, L]. Blocks of
    ``block`` consecutive positions start at position 0 (``align_end``: end at position L-1).
    For i < j in a block: M_ij = sum_{i<k<=j} dt_k, T_ij = log(1 + (clock_j - clock_i) / unit),
    R_ij = j - i; each is divided by its maximum over the block's valid pairs; the target is
    abs_weight * T + (1 - abs_weight) * R. Returns (sum of squared errors [B], pair count [B])."""
    length = dt_mean.shape[1]
    pad = (-length) % block
    padding = (pad, 0) if align_end else (0, pad)
    dt_mean = F.pad(dt_mean * mask.to(dt_mean.dtype), padding)
    clock = F.pad(clock, padding)
    mask = F.pad(mask, padding)
    n_blocks = (length + pad) // block
    dt_b = dt_mean.unflatten(1, (n_blocks, block))  # [B, Z, b]
    clock_b = clock.unflatten(1, (n_blocks, block))  # [B, Z, b]
    valid = mask.unflatten(1, (n_blocks, block))  # [B, Z, b]
    cum = torch.cumsum(dt_b, dim=-1)  # [B, Z, b]
    model_iv = cum.unsqueeze(-2) - cum.unsqueeze(-1)  # [B, Z, b(i), b(j)] = M_ij
    seconds = (clock_b.unsqueeze(-2) - clock_b.unsqueeze(-1)).clamp(min=0.0)
    time_iv = torch.log1p(seconds / time_unit).to(dt_mean.dtype)  # T_ij
    index = torch.arange(block, device=dt_mean.device, dtype=dt_mean.dtype)
    rank_iv = (index.unsqueeze(0) - index.unsqueeze(1)).expand_as(model_iv)  # R_ij
    upper = torch.triu(torch.ones(block, block, dtype=torch.bool, device=dt_mean.device), 1)
    pairs = valid.unsqueeze(-1) & valid.unsqueeze(-2) & upper  # [B, Z, b, b]
    pair_f = pairs.to(dt_mean.dtype)

    def normalised(values: Tensor) -> Tensor:
        peak = (values * pair_f).amax(dim=(-2, -1), keepdim=True)  # [B, Z, 1, 1]
        return values / (peak + _EPS)

    target = abs_weight * normalised(time_iv) + (1.0 - abs_weight) * normalised(rank_iv)
    error = (normalised(model_iv) - target).pow(2) * pair_f
    return error.sum(dim=(1, 2, 3)), pair_f.sum(dim=(1, 2, 3))


def _relative_residual(estimate: Tensor, reference: Tensor) -> Tensor:
    """|a - b|^2 / (|a|^2 + |b|^2 + eps) over the last two axes: in [0, 2], defined at zero."""
    num = (estimate - reference).pow(2).sum((-2, -1))
    den = estimate.pow(2).sum((-2, -1)) + reference.pow(2).sum((-2, -1)) + _EPS
    return num / den


def interest_state_residual(
    state_then: Tensor,
    state_now: Tensor,
    x: Tensor,
    B: Tensor,
    dt: Tensor,
    log_alpha: Tensor,
    reverse_A: Tensor,
) -> Tensor:
    """Backward-then-forward round trip over the last w events (seeds.md §2.5), closed form.

    state_then S_m and state_now S_n [.., H, P, N]; the window's x [.., w, H, P], B [.., w, N],
    dt and log_alpha [.., w, H], oldest first; entries with dt = 0 are no-ops (absent events);
    reverse_A [H] > 0. Backward from S_n: S~_{t-1} = exp(-dt_t A') (S~_t - dt_t x_t B_t^T)
    down to S~_m; forward from S~_m with the model's own recurrence to S^_n. Returns the mean over
    heads of (r(S^_n, S_n) + r(S~_m, S_m)) / 2, r = ``_relative_residual``: shape [..].

    Both maps are linear, so with U_t = dt_t x_t B_t^T, rho_t = exp(-dt_t A'):
    S~_m = (prod rho) S_n - sum_t (prod_{s<=t} rho_s) U_t and
    S^_n = (prod alpha) S~_m + sum_t (prod_{s>t} alpha_s) U_t: two weighted sums of rank-one
    terms instead of 2w passes over the states (``interest_state_residual_reference``)."""
    cum_rho = torch.cumsum(-dt * reverse_A, dim=-2)  # [.., w, H] log prod_{s<=t} rho_s
    cum_alpha = torch.cumsum(log_alpha, dim=-2)  # [.., w, H]
    all_rho = torch.exp(cum_rho[..., -1, :])  # [.., H]
    all_alpha = torch.exp(cum_alpha[..., -1, :])  # [.., H]
    rho_upto = torch.exp(cum_rho)  # [.., w, H]
    alpha_after = torch.exp(cum_alpha[..., -1:, :] - cum_alpha)  # [.., w, H]

    def weighted_sum(weight: Tensor) -> Tensor:  # sum_t weight_t U_t, [.., H, P, N]
        return torch.einsum("...whp,...wn->...hpn", (weight * dt).unsqueeze(-1) * x, B)

    back = all_rho[..., None, None] * state_now - weighted_sum(rho_upto)  # S~_m
    round_trip = all_alpha[..., None, None] * back + weighted_sum(alpha_after)  # S^_n
    residual = _relative_residual(round_trip, state_now) + _relative_residual(back, state_then)
    return 0.5 * residual.mean(-1)


def interest_state_residual_reference(
    state_then: Tensor,
    state_now: Tensor,
    x: Tensor,
    B: Tensor,
    dt: Tensor,
    log_alpha: Tensor,
    reverse_A: Tensor,
) -> Tensor:
    """The round trip step by step, as written in seeds.md §2.5 (reference for the closed form).

    state_then S_m and state_now S_n [.., H, P, N]; the window's x [.., w, H, P], B [.., w, N],
    dt and log_alpha [.., w, H], oldest first; entries with dt = 0 are no-ops (absent events);
    reverse_A [H] > 0. Backward from S_n: S~_{t-1} = exp(-dt_t A') (S~_t - dt_t x_t B_t^T)
    down to S~_m; forward from S~_m with the model's own recurrence to S^_n. Returns the mean over
    heads of (r(S^_n, S_n) + r(S~_m, S_m)) / 2, r = ``_relative_residual``: shape [..]."""
    window = x.shape[-3]
    reverse_decay = torch.exp(-dt * reverse_A)  # [.., w, H]
    decay = torch.exp(log_alpha)  # [.., w, H]

    def update(t: int) -> Tensor:  # dt_t x_t B_t^T, [.., H, P, N], built on the fly (memory)
        return (dt[..., t, :, None] * x[..., t, :, :]).unsqueeze(-1) * B[..., t, None, None, :]

    back = state_now
    for t in range(window - 1, -1, -1):
        back = reverse_decay[..., t, :, None, None] * (back - update(t))
    round_trip = back
    for t in range(window):
        round_trip = decay[..., t, :, None, None] * round_trip + update(t)
    residual = _relative_residual(round_trip, state_now) + _relative_residual(back, state_then)
    return 0.5 * residual.mean(-1)


class FeedForward(nn.Module):
    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor) -> Tensor:
        return self.dropout(self.down(self.dropout(F.gelu(self.up(h)))))


class T2ABlock(nn.Module):
    """Mixer and FFN, each with dropout, residual and post-LayerNorm (Mamba4Rec's layer)."""

    def __init__(self, config: T2ARecConfig) -> None:
        super().__init__()
        self.mixer = Mamba2Mixer(
            config.d_model,
            config.d_inner,
            config.head_dim,
            config.d_state,
            config.d_conv,
            config.chunk_size,
        )
        self.mixer_norm = nn.LayerNorm(config.d_model)
        self.ffn = FeedForward(config.d_model, config.dropout)
        self.ffn_norm = nn.LayerNorm(config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def finish(self, h: Tensor, mixed: Tensor) -> Tensor:
        h = self.mixer_norm(h + self.dropout(mixed))
        return self.ffn_norm(h + self.ffn(h))


@dataclass
class _LayerDelta:
    dt_weight: Tensor  # [B, H, D]
    dt_bias: Tensor  # [B, H]
    a_log: Tensor  # [B, H]
    gap_weight: Tensor  # [B, H]


@register(T2ARecConfig)
class T2ARec(SeqRecModel):
    name = "t2arec"
    state_type = T2ARecState
    config: T2ARecConfig

    def __init__(self, config: T2ARecConfig) -> None:
        super().__init__()
        self.config = config
        self.item_embedding = nn.Embedding(config.n_items, config.d_model, padding_idx=PADDING_ITEM)
        self.embedding_norm = nn.LayerNorm(config.d_model)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(T2ABlock(config) for _ in range(config.n_layers))
        self.gap_weight = nn.Parameter(torch.zeros(config.n_layers, config.n_heads))  # [Y, H]
        # A' of the ISA reverse step, A' = exp(reverse_A_log) > 0
        self.reverse_A_log = nn.Parameter(torch.zeros(config.n_layers, config.n_heads))
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        with torch.no_grad():
            self.item_embedding.weight[PADDING_ITEM].zero_()

    def _blocks(self) -> list[T2ABlock]:
        return [cast(T2ABlock, block) for block in self.blocks]

    # ----- Δ path -----------------------------------------------------------------------------

    def _layer_deltas(self, delta: Tensor | None) -> list[_LayerDelta | None]:
        """delta [B, F] -> one _LayerDelta per layer (None when delta is None)."""
        c = self.config
        if delta is None:
            return [None] * c.n_layers
        per_layer = delta.unflatten(-1, (c.n_layers, c.delta_per_layer))  # [B, Y, F/Y]
        out: list[_LayerDelta | None] = []
        for layer in range(c.n_layers):
            w, rest = per_layer[:, layer].split([c.n_heads * c.d_model, 3 * c.n_heads], dim=-1)
            bias, a_log, gap = rest.unflatten(-1, (3, c.n_heads)).unbind(-2)  # [B, H] each
            out.append(_LayerDelta(w.unflatten(-1, (c.n_heads, c.d_model)), bias, a_log, gap))
        return out

    def _dt_offset(
        self, layer: int, u: Tensor, gaps: Tensor, delta: _LayerDelta | None
    ) -> Tensor | None:
        """u [B, L, D] or [U, D], gaps [B, L] or [U] -> pre-softplus dt offset [.., H]."""
        gap_weight = self.gap_weight[layer]  # [H]
        if delta is None:
            if not self.config.gap_input:
                return None
            return gaps.unsqueeze(-1) * gap_weight
        sequence = u.dim() == 3
        if sequence:
            offset = torch.einsum("bld,bhd->blh", u, delta.dt_weight)
        else:
            offset = torch.einsum("ud,uhd->uh", u, delta.dt_weight)
        lift = (lambda t: t.unsqueeze(1)) if sequence else (lambda t: t)
        offset = offset + lift(delta.dt_bias)
        if self.config.gap_input:
            offset = offset + gaps.unsqueeze(-1) * (gap_weight + lift(delta.gap_weight))
        return offset

    def reverse_A(self) -> Tensor:
        return torch.exp(self.reverse_A_log)  # [Y, H]

    # ----- offline ----------------------------------------------------------------------------

    def _encode(
        self,
        items: Tensor,
        gaps: Tensor,
        mask: Tensor,
        delta: Tensor | None = None,
        scan: ScanKind = "chunked",
    ) -> tuple[Tensor, list[SSDTrace]]:
        """items, gaps, mask [B, L], delta [B, F] or None -> (hidden [B, L, D], layer traces)."""
        h = self.embedding_dropout(self.embedding_norm(self.item_embedding(items)))  # [B, L, D]
        traces = []
        for layer, (block, layer_delta) in enumerate(
            zip(self._blocks(), self._layer_deltas(delta), strict=True)
        ):
            offset = self._dt_offset(layer, h, gaps, layer_delta)
            a_log = None if layer_delta is None else layer_delta.a_log
            mixed, trace = block.mixer(h, mask, offset, a_log, scan=scan)
            h = block.finish(h, mixed)
            traces.append(trace)
        return h, traces

    def forward(self, items: Tensor, times: Tensor) -> Tensor:
        mask = items != PADDING_ITEM
        gaps, _ = log_gaps(times, mask, self.config.time_unit, self.config.max_gap)
        hidden, _ = self._encode(items, gaps, mask)
        return hidden

    def alignment_losses(
        self,
        traces: list[SSDTrace],
        clock: Tensor,
        mask: Tensor,
        align_end: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Per-row (TIA [B], ISA [B]), each averaged over layers. ISA is taken at each row's last
        real position n with S_m = the state after position n - w."""
        c = self.config
        tia_rows, isa_rows = [], []
        positions = torch.arange(mask.shape[1], device=mask.device)  # [L]
        last = (positions * mask).amax(dim=1)  # [B]
        offsets = torch.arange(c.isa_window, device=mask.device)  # [w]
        window = last.unsqueeze(1) - c.isa_window + 1 + offsets  # [B, w]
        in_window = (window >= 0) & mask.gather(1, window.clamp(min=0))  # [B, w]
        before = mask & (positions <= (last - c.isa_window).unsqueeze(1))  # [B, L]
        for layer, trace in enumerate(traces):
            total, count = time_interval_alignment(
                trace.dt.mean(-1),
                clock,
                mask,
                c.tia_block,
                c.tia_abs_weight,
                c.time_unit,
                align_end,
            )
            tia_rows.append(total / count.clamp(min=1.0))
            keep = before.unsqueeze(-1).to(trace.dt.dtype)  # [B, L, 1]
            state_then = final_state_of(trace.x, trace.dt * keep, trace.log_alpha * keep, trace.B)
            take = window.clamp(min=0)
            live = in_window.unsqueeze(-1).to(trace.dt.dtype)  # [B, w, 1]
            heads, head_dim = trace.x.shape[-2:]
            x_w = trace.x.gather(1, take[..., None, None].expand(-1, -1, heads, head_dim))
            b_w = trace.B.gather(1, take[..., None].expand(-1, -1, trace.B.shape[-1]))
            dt_w = trace.dt.gather(1, take[..., None].expand(-1, -1, heads)) * live
            la_w = trace.log_alpha.gather(1, take[..., None].expand(-1, -1, heads)) * live
            isa_rows.append(
                interest_state_residual(
                    state_then, trace.final_state, x_w, b_w, dt_w, la_w, self.reverse_A()[layer]
                )
            )
        return torch.stack(tia_rows).mean(0), torch.stack(isa_rows).mean(0)

    def loss_terms(self, items: Tensor, times: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """CE, TIA and ISA (unweighted) and the weighted total used for training."""
        c = self.config
        mask = items != PADDING_ITEM
        gaps, clock = log_gaps(times, mask, c.time_unit, c.max_gap)
        hidden, traces = self._encode(items, gaps, mask)
        supervised = targets != PADDING_ITEM  # [B, L]
        logits = hidden[supervised] @ self.item_embedding.weight.T  # [S, I]
        logits[:, PADDING_ITEM] = float("-inf")
        ce = F.cross_entropy(logits, targets[supervised])
        tia, isa = self.alignment_losses(traces, clock, mask)
        tia, isa = tia.mean(), isa.mean()
        total = ce
        if c.use_tia:
            total = total + c.tia_weight * tia
        if c.use_isa:
            total = total + c.isa_weight * isa
        return {"loss": total, "ce": ce, "tia": tia, "isa": isa}

    def loss(self, items: Tensor, times: Tensor, targets: Tensor) -> Tensor:
        """CE + lambda_1 L_TIA + lambda_2 L_ISA (terms switched off by use_tia / use_isa)."""
        return self.loss_terms(items, times, targets)["loss"]

    # ----- streaming --------------------------------------------------------------------------

    def init_state(self, n_users: int) -> T2ARecState:
        c = self.config
        device = self.device

        def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.zeros(*shape, device=device, dtype=dtype)

        ssm = zeros(n_users, c.n_layers, c.n_heads, c.head_dim, c.d_state)
        moments = c.delta_size if c.tta_momentum > 0 else 0
        return T2ARecState(
            ssm=ssm,
            conv=zeros(n_users, c.n_layers, c.d_conv - 1, c.conv_channels),
            ssm_lag=ssm.clone(),
            isa_x=zeros(n_users, c.n_layers, c.isa_window, c.n_heads, c.head_dim),
            isa_b=zeros(n_users, c.n_layers, c.isa_window, c.d_state),
            isa_dt=zeros(n_users, c.n_layers, c.isa_window, c.n_heads),
            isa_log_alpha=zeros(n_users, c.n_layers, c.isa_window, c.n_heads),
            delta=zeros(n_users, c.delta_size),
            momentum=zeros(n_users, moments),
            window_items=zeros(n_users, c.tta_window, dtype=torch.int64),
            window_times=zeros(n_users, c.tta_window, dtype=torch.float64),
            window_gaps=zeros(n_users, c.tta_window),
            last_time=zeros(n_users, dtype=torch.float64),
            n_events=zeros(n_users, dtype=torch.int64),
            since_update=zeros(n_users, dtype=torch.int64),
            n_updates=zeros(n_users, dtype=torch.int64),
            shift=zeros(n_users),
        )

    def _stream_gaps(self, state: T2ARecState, times: Tensor) -> Tensor:
        """times [U] -> clamped gaps [U] float64 s (0 for a user's first event); raises on < 0."""
        seconds = times.to(torch.float64)
        seen = state.n_events > 0
        raw = seconds - state.last_time
        backwards = seen & (raw < 0)
        if bool(backwards.any()):
            users = backwards.nonzero().squeeze(1)[:5].tolist()
            detail = ", ".join(
                f"user row {u} (t={seconds[u].item():.3f} < last {state.last_time[u].item():.3f})"
                for u in users
            )
            raise ValueError(f"negative time gap (event older than the user's last) for {detail}")
        return torch.where(seen, raw, torch.zeros_like(raw)).clamp(0.0, self.config.max_gap)

    def step(
        self, state: State, items: Tensor, times: Tensor, adapt: bool = True
    ) -> tuple[T2ARecState, Tensor]:
        """One event per user: validate the gap, maybe reset the delta, push the event into the
        window, maybe run the test-time update (so this event's prediction uses the adapted
        delta), advance the recurrence, then update the shift score."""
        assert isinstance(state, T2ARecState)
        c = self.config
        gaps_s = self._stream_gaps(state, times)  # [U]
        gaps = torch.log1p(gaps_s / c.time_unit).to(torch.float32)  # [U]
        delta, momentum = state.delta, state.momentum
        if c.tta_reset == "inactivity":
            stale = ((state.n_events > 0) & (gaps_s > c.tta_reset_gap)).unsqueeze(1)
            delta = torch.where(stale, torch.zeros_like(delta), delta)
            momentum = torch.where(stale, torch.zeros_like(momentum), momentum)
        state = T2ARecState(
            **{
                **state.tensors(),
                "delta": delta,
                "momentum": momentum,
                "window_items": _push(state.window_items, items),
                "window_times": _push(state.window_times, times.to(torch.float64)),
                "window_gaps": _push(state.window_gaps, gaps),
                "n_events": state.n_events + 1,
            }
        )
        due = (
            self.update_due(state) if adapt else torch.zeros_like(state.n_events, dtype=torch.bool)
        )
        state = self.test_time_update(state, due)
        return self._advance(state, items, gaps, times)

    def update_due(self, state: T2ARecState) -> Tensor:
        """[U] bool: which users the trigger selects now (their window holds the new event)."""
        c = self.config
        if not c.use_tta or c.tta_trigger == "never":
            return torch.zeros_like(state.n_events, dtype=torch.bool)
        enough = state.n_events >= 2
        if c.tta_trigger == "every":
            return enough & (state.since_update + 1 >= c.tta_every)
        return enough & (state.shift > c.tta_shift_threshold)

    @torch.no_grad()
    def _advance(
        self, state: T2ARecState, items: Tensor, gaps: Tensor, times: Tensor
    ) -> tuple[T2ARecState, Tensor]:
        c = self.config
        h = self.embedding_dropout(self.embedding_norm(self.item_embedding(items)))  # [U, D]
        ssm, conv, lag = [], [], []
        isa_x, isa_b, isa_dt, isa_la = [], [], [], []
        full = (state.n_events - 1 >= c.isa_window).to(torch.float32)  # [U] oldest entry leaves
        layer_deltas = self._layer_deltas(state.delta)
        for layer, block in enumerate(self._blocks()):
            layer_delta = layer_deltas[layer]
            offset = self._dt_offset(layer, h, gaps, layer_delta)
            a_log = None if layer_delta is None else layer_delta.a_log
            mixed, tail, trace = block.mixer.step(
                h, state.conv[:, layer], state.ssm[:, layer], offset, a_log
            )
            h = block.finish(h, mixed)
            # S_m advances by the event leaving the ISA window
            old_x, old_b = state.isa_x[:, layer, 0], state.isa_b[:, layer, 0]
            old_dt = state.isa_dt[:, layer, 0] * full[:, None]  # [U, H]
            old_la = state.isa_log_alpha[:, layer, 0] * full[:, None]
            outer = (old_dt.unsqueeze(-1) * old_x).unsqueeze(-1) * old_b[:, None, None, :]
            lag.append(torch.exp(old_la)[..., None, None] * state.ssm_lag[:, layer] + outer)
            isa_x.append(_push(state.isa_x[:, layer], trace.x))
            isa_b.append(_push(state.isa_b[:, layer], trace.B))
            isa_dt.append(_push(state.isa_dt[:, layer], trace.dt))
            isa_la.append(_push(state.isa_log_alpha[:, layer], trace.log_alpha))
            ssm.append(trace.final_state)
            conv.append(tail)
        new = T2ARecState(
            **{
                **state.tensors(),
                "ssm": torch.stack(ssm, 1),
                "conv": torch.stack(conv, 1),
                "ssm_lag": torch.stack(lag, 1),
                "isa_x": torch.stack(isa_x, 1),
                "isa_b": torch.stack(isa_b, 1),
                "isa_dt": torch.stack(isa_dt, 1),
                "isa_log_alpha": torch.stack(isa_la, 1),
                "last_time": times.to(torch.float64),
            }
        )
        new.shift = self._streaming_residual(new)
        return new, h

    def _streaming_residual(self, state: T2ARecState) -> Tensor:
        residuals = [
            interest_state_residual(
                state.ssm_lag[:, layer],
                state.ssm[:, layer],
                state.isa_x[:, layer],
                state.isa_b[:, layer],
                state.isa_dt[:, layer],
                state.isa_log_alpha[:, layer],
                self.reverse_A()[layer],
            )
            for layer in range(self.config.n_layers)
        ]
        return torch.stack(residuals).mean(0)  # [U]

    def shift_score(self, state: State) -> Tensor:
        """Interest-state residual after each user's last event, [U], in [0, 2]."""
        assert isinstance(state, T2ARecState)
        return state.shift

    # ----- test-time alignment ----------------------------------------------------------------

    def _window_loss(self, delta: Tensor, items: Tensor, gaps: Tensor, times: Tensor) -> Tensor:
        """One user's TTA objective: delta [F], items/gaps/times [W] (left-padded) -> scalar."""
        c = self.config
        items, gaps, times = items.unsqueeze(0), gaps.unsqueeze(0), times.unsqueeze(0)
        mask = items != PADDING_ITEM  # [1, W]
        _, traces = self._encode(items, gaps, mask, delta.unsqueeze(0))
        clock = torch.cumsum(clamped_gaps(times, mask, c.max_gap), dim=1)  # [1, W] float64
        tia, isa = self.alignment_losses(traces, clock, mask, align_end=True)
        loss = delta.new_zeros(())
        if c.use_tia:
            loss = loss + c.tia_weight * tia[0]
        if c.use_isa:
            loss = loss + c.isa_weight * isa[0]
        return loss

    def tta_loss(self, state: T2ARecState, delta: Tensor | None = None) -> Tensor:
        """The TTA objective of every user's window at ``delta`` (default: the state's), [U]."""
        with torch.no_grad():
            return vmap(self._window_loss)(
                state.delta if delta is None else delta,
                state.window_items,
                state.window_gaps,
                state.window_times,
            )

    def test_time_update(self, state: T2ARecState, due: Tensor) -> T2ARecState:
        """k SGD steps on the TTA objective for the users in ``due`` [U] bool, as one batched
        computation (vmap over users of grad w.r.t. each user's delta). Counters move for all."""
        c = self.config
        users = due.nonzero().squeeze(1)
        since = torch.where(due, torch.zeros_like(state.since_update), state.since_update + 1)
        if users.numel() == 0:
            return T2ARecState(**{**state.tensors(), "since_update": since})
        delta = state.delta[users]  # [V, F]
        momentum = state.momentum[users]
        if c.tta_reset == "each_update":
            delta, momentum = torch.zeros_like(delta), torch.zeros_like(momentum)
        delta, momentum = self._sgd(
            delta,
            momentum,
            state.window_items[users],
            state.window_gaps[users],
            state.window_times[users],
        )
        return T2ARecState(
            **{
                **state.tensors(),
                "delta": state.delta.index_put((users,), delta),
                "momentum": state.momentum.index_put((users,), momentum),
                "since_update": since,
                "n_updates": state.n_updates + due.to(torch.int64),
            }
        )

    def _sgd(
        self, delta: Tensor, momentum: Tensor, items: Tensor, gaps: Tensor, times: Tensor
    ) -> tuple[Tensor, Tensor]:
        """k SGD steps on each row's window objective: delta [V, F], momentum [V, F or 0],
        items/gaps/times [V, W] left-padded -> (delta, momentum). One vmap(grad) per step."""
        c = self.config
        gradient_of = vmap(grad(self._window_loss))
        was_training = self.training
        self.eval()  # dropout off inside the update
        try:
            for _ in range(c.tta_steps):
                g = gradient_of(delta, items, gaps, times).detach()  # [V, F]
                if c.tta_clip > 0:
                    norm = g.norm(dim=1, keepdim=True)
                    g = g * (c.tta_clip / (norm + _EPS)).clamp(max=1.0)
                if c.tta_momentum > 0:
                    momentum = c.tta_momentum * momentum + g
                    g = momentum
                delta = delta - c.tta_lr * g
        finally:
            self.train(was_training)
        return delta, momentum

    # ----- offline evaluation with test-time alignment -----------------------------------------

    def last_hidden(
        self, items: Tensor, times: Tensor, lengths: Tensor, adapt: bool = False
    ) -> Tensor:
        if adapt:
            return self.adapted_last_hidden(items, times, lengths)
        return super().last_hidden(items, times, lengths)

    def adapted_last_hidden(
        self, items: Tensor, times: Tensor, lengths: Tensor, chunk: int = 512
    ) -> Tensor:
        """Offline protocols with test-time alignment: for each right-padded history row, k SGD
        steps of the TTA objective on that history from a zero delta, then the hidden state at
        its last event under the adapted delta. items, times [B, L], lengths [B] -> [B, D].

        Without ``use_tta`` (or with trigger ``never``) this is ``forward`` at the last position.
        Rows are adapted in chunks of ``chunk`` to bound the memory of the batched gradients."""
        c = self.config
        length = items.shape[1]
        # right-padded -> left-padded (newest event at position L - 1), as in the state's window
        index = (torch.arange(length, device=items.device) + lengths.unsqueeze(1)) % length
        items, times = items.gather(1, index), times.to(torch.float64).gather(1, index)
        mask = items != PADDING_ITEM
        gaps, _ = log_gaps(times, mask, c.time_unit, c.max_gap)
        hidden = []
        with torch.no_grad():
            for start in range(0, items.shape[0], chunk):
                rows = slice(start, start + chunk)
                delta = items.new_zeros(items[rows].shape[0], c.delta_size, dtype=torch.float32)
                if c.use_tta and c.tta_trigger != "never":
                    moments = torch.zeros_like(delta[:, : delta.shape[1] * (c.tta_momentum > 0)])
                    delta, _ = self._sgd(delta, moments, items[rows], gaps[rows], times[rows])
                encoded, _ = self._encode(items[rows], gaps[rows], mask[rows], delta)
                hidden.append(encoded[:, -1])
        return torch.cat(hidden)


def _push(buffer: Tensor, newest: Tensor) -> Tensor:
    """Drop the oldest entry along axis 1 and append ``newest`` (a sliding window)."""
    return torch.cat([buffer[:, 1:], newest.unsqueeze(1).to(buffer.dtype)], dim=1)
