"""Test-time-training inner loop of TTT4Rec (arXiv 2409.19142; code ``ZhaoqiZachYang/TTT4Rec``,
whose ``ttt.py`` is ``test-time-training/ttt-lm-pytorch``). See ../shared/docs/seeds.md §1.4.

Everything here is pure: fast weights come in as a ``FastWeights`` container and go out as a new
one. For one head, with ``f(u; W) = u + LN(g(u; W))``::

    loss_t(W) = 1/2 || LN(g(k_t; W)) - (v_t - k_t) ||^2        (inner self-supervised loss)
    W_t       = W_b - s_i * sum_{j = bK}^{t} sigma_j * grad loss_j(W_b)
    z_t       = f(q_t; W_t)

Three computations of the same function live here:

* ``ttt_dual_scan``: the dual (mini-batch) form used for training and offline forward passes;
* ``ttt_recurrent_step``: one token at a time with state ``(W_b, G)`` for streaming;
* ``ttt_sequential_reference``: slow and obviously correct (autograd gradients, explicit W_t).

Shape legend: ``...`` leading batch dims (e.g. [B, H] or [U, H]), k tokens in a mini-batch,
Dh head width, F inner hidden width (4 Dh for TTT-MLP).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class FastWeights:
    """Inner-model weights: TTT-MLP (W1, b1, W2, b2) or TTT-Linear (W1, b1; W2 = b2 = None)."""

    W1: Tensor  # [..., Dh, F] (MLP) or [..., Dh, Dh] (Linear)
    b1: Tensor  # [..., 1, F]
    W2: Tensor | None = None  # [..., F, Dh]
    b2: Tensor | None = None  # [..., 1, Dh]

    @property
    def is_mlp(self) -> bool:
        return self.W2 is not None

    def parts(self) -> list[Tensor]:
        if self.W2 is None or self.b2 is None:
            return [self.W1, self.b1]
        return [self.W1, self.b1, self.W2, self.b2]

    @classmethod
    def from_parts(cls, parts: list[Tensor]) -> FastWeights:
        return cls(*parts)

    def map(self, fn: Callable[[Tensor], Tensor]) -> FastWeights:
        return FastWeights.from_parts([fn(p) for p in self.parts()])

    def zip_map(self, other: FastWeights, fn: Callable[[Tensor, Tensor], Tensor]) -> FastWeights:
        return FastWeights.from_parts(
            [fn(a, b) for a, b in zip(self.parts(), other.parts(), strict=True)]
        )


@dataclass
class InnerPieces:
    """Per-token quantities of the inner forward/backward at fixed weights.

    The gradient of token j's loss is ``W1: x1_j^T gz1_j, b1: gz1_j, W2: x2_j^T gz2_j,
    b2: gz2_j`` (MLP) or ``W1: x1_j^T gz1_j, b1: gz1_j`` (Linear).
    """

    x1: Tensor  # [..., k, Dh] inner input (the key view)
    gz1: Tensor  # [..., k, F] dloss/dZ1
    x2: Tensor | None = None  # [..., k, F] GELU(Z1) (MLP only)
    gz2: Tensor | None = None  # [..., k, Dh] dloss/dZ2 (MLP only)

    def index(self, rows: Tensor) -> InnerPieces:
        """The pieces of the given rows (first dim)."""
        pick = [None if t is None else t[rows] for t in (self.x1, self.gz1, self.x2, self.gz2)]
        return InnerPieces(*pick)  # type: ignore[arg-type]


def _normalise(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(x_hat, std) over the last dim; mean of squares instead of ``Tensor.var``, which is slow
    on CPU for many short rows."""
    centred = x - x.mean(-1, keepdim=True)  # [..., Dh]
    std = torch.sqrt(centred.square().mean(-1, keepdim=True) + eps)  # [..., 1]
    return centred / std, std


def layer_norm(x: Tensor, gamma: Tensor, beta: Tensor, eps: float) -> Tensor:
    return gamma * _normalise(x, eps)[0] + beta  # [..., Dh]


def layer_norm_l2_backward(
    x: Tensor, target: Tensor, gamma: Tensor, beta: Tensor, eps: float
) -> Tensor:
    """d/dx of 1/2 ||LN(x) - target||^2, fused by hand (ttt-lm-pytorch ``ln_fused_l2_bwd``)."""
    width = x.shape[-1]
    x_hat, std = _normalise(x, eps)  # [..., Dh], [..., 1]
    grad_x_hat = (gamma * x_hat + beta - target) * gamma  # [..., Dh]
    return (
        width * grad_x_hat
        - grad_x_hat.sum(-1, keepdim=True)
        - x_hat * (grad_x_hat * x_hat).sum(-1, keepdim=True)
    ) / (width * std)  # [..., Dh]


def gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


def gelu_tanh_backward(grad: Tensor, x: Tensor) -> Tensor:
    """grad * d/dx of the tanh-approximate GELU, 0.5 x (1 + tanh(c (x + 0.044715 x^3))), in
    one fused kernel (ATen's own GELU backward; ~10 separate elementwise ops by hand)."""
    return torch.ops.aten.gelu_backward(grad, x, approximate="tanh")


def inner_apply(fast: FastWeights, x: Tensor, gamma: Tensor, beta: Tensor, eps: float) -> Tensor:
    """f(x; W) = x + LN(g(x; W)): x [..., k, Dh] -> [..., k, Dh]."""
    z = x @ fast.W1 + fast.b1  # [..., k, F]
    if fast.W2 is not None and fast.b2 is not None:
        z = gelu_tanh(z) @ fast.W2 + fast.b2  # [..., k, Dh]
    return x + layer_norm(z, gamma, beta, eps)


def inner_pieces(
    fast: FastWeights, xk: Tensor, xv: Tensor, gamma: Tensor, beta: Tensor, eps: float
) -> InnerPieces:
    """Closed-form per-token gradient pieces of the inner loss at ``fast`` (hand-derived)."""
    target = xv - xk  # [..., k, Dh]
    z1 = xk @ fast.W1 + fast.b1  # [..., k, F]
    if fast.W2 is None or fast.b2 is None:
        return InnerPieces(x1=xk, gz1=layer_norm_l2_backward(z1, target, gamma, beta, eps))
    x2 = gelu_tanh(z1)  # [..., k, F]
    z2 = x2 @ fast.W2 + fast.b2  # [..., k, Dh]
    gz2 = layer_norm_l2_backward(z2, target, gamma, beta, eps)  # [..., k, Dh]
    gz1 = gelu_tanh_backward(gz2 @ fast.W2.transpose(-1, -2), z1)  # [..., k, F]
    return InnerPieces(x1=xk, gz1=gz1, x2=x2, gz2=gz2)


def token_gradients(
    fast: FastWeights, xk: Tensor, xv: Tensor, gamma: Tensor, beta: Tensor, eps: float
) -> FastWeights:
    """Hand-derived per-token gradients: every field gets a token dim, e.g. W1 [..., k, Dh, F]."""
    p = inner_pieces(fast, xk, xv, gamma, beta, eps)
    parts = [p.x1.unsqueeze(-1) * p.gz1.unsqueeze(-2), p.gz1.unsqueeze(-2)]
    if p.x2 is not None and p.gz2 is not None:
        parts += [p.x2.unsqueeze(-1) * p.gz2.unsqueeze(-2), p.gz2.unsqueeze(-2)]
    return FastWeights.from_parts(parts)


def token_scales(offsets: Tensor) -> Tensor:
    """s_i = max(0, 1/(i+1) + eps_i): offsets [K] -> [K]."""
    base = 1.0 / torch.arange(1, offsets.shape[0] + 1, device=offsets.device, dtype=offsets.dtype)
    return (base + offsets).clamp_min(0.0)


def ttt_dual_minibatch(
    fast: FastWeights,
    xq: Tensor,
    xk: Tensor,
    xv: Tensor,
    eta: Tensor,
    gamma: Tensor,
    beta: Tensor,
    eps: float,
) -> tuple[FastWeights, Tensor]:
    """One mini-batch in the dual form. eta [..., k, k] holds s_i * sigma_j (made lower
    triangular here). Returns (end-of-mini-batch weights, outputs [..., k, Dh])."""
    p = inner_pieces(fast, xk, xv, gamma, beta, eps)
    eta = torch.tril(eta)  # [..., k, k]
    outputs = dual_outputs(fast, xq, p, eta, gamma, beta, eps)
    return dual_update(fast, p, eta[..., -1, :].unsqueeze(-1)), outputs


def dual_outputs(
    fast: FastWeights, xq: Tensor, p: InnerPieces, eta: Tensor, gamma: Tensor, beta: Tensor,
    eps: float,
) -> Tensor:  # fmt: skip
    """Outputs for queries xq [..., q, Dh] of a mini-batch whose pieces at ``fast`` are ``p``;
    eta [..., q, k] row i holds s_i * sigma_j for the tokens j it has seen, 0 after."""
    attn1 = eta * (xq @ p.x1.transpose(-1, -2))  # [..., q, k]
    z1 = xq @ fast.W1 - attn1 @ p.gz1 + fast.b1 - eta @ p.gz1  # [..., q, F]
    if fast.W2 is None or fast.b2 is None or p.x2 is None or p.gz2 is None:
        return xq + layer_norm(z1, gamma, beta, eps)
    x2q = gelu_tanh(z1)  # [..., q, F]
    attn2 = eta * (x2q @ p.x2.transpose(-1, -2))  # [..., q, k]
    z2 = x2q @ fast.W2 - attn2 @ p.gz2 + fast.b2 - eta @ p.gz2  # [..., q, Dh]
    return xq + layer_norm(z2, gamma, beta, eps)


def dual_update(fast: FastWeights, p: InnerPieces, last: Tensor) -> FastWeights:
    """Weights at the end of a mini-batch; last [..., k, 1] = s_{k-1} * sigma_j."""
    parts = [
        fast.W1 - (last * p.x1).transpose(-1, -2) @ p.gz1,
        fast.b1 - (last * p.gz1).sum(-2, keepdim=True),
    ]
    if fast.W2 is not None and fast.b2 is not None and p.x2 is not None and p.gz2 is not None:
        parts += [
            fast.W2 - (last * p.x2).transpose(-1, -2) @ p.gz2,
            fast.b2 - (last * p.gz2).sum(-2, keepdim=True),
        ]
    return FastWeights.from_parts(parts)


def ttt_dual_scan(
    fast: FastWeights,
    xq: Tensor,
    xk: Tensor,
    xv: Tensor,
    sigma: Tensor,
    scales: Tensor,
    gamma: Tensor,
    beta: Tensor,
    eps: float,
) -> tuple[Tensor, FastWeights]:
    """Whole sequence in mini-batches of K = len(scales): xq/xk/xv [..., L, Dh], sigma [..., L].

    A trailing partial mini-batch uses the first scales (i = 0, 1, ...), as the authors' code does.
    Returns (outputs [..., L, Dh], weights after the last mini-batch).
    """
    mini_batch = scales.shape[0]
    length = xq.shape[-2]
    outputs = []
    for start in range(0, length, mini_batch):
        end = min(start + mini_batch, length)
        eta = scales[: end - start, None] * sigma[..., None, start:end]  # [..., k, k]
        fast, out = ttt_dual_minibatch(
            fast, xq[..., start:end, :], xk[..., start:end, :], xv[..., start:end, :], eta,
            gamma, beta, eps,
        )  # fmt: skip
        outputs.append(out)
    return torch.cat(outputs, dim=-2), fast


def ttt_dual_scan_at(
    fast: FastWeights,
    xq: Tensor,
    xk: Tensor,
    xv: Tensor,
    sigma: Tensor,
    scales: Tensor,
    gamma: Tensor,
    beta: Tensor,
    eps: float,
    rows: Tensor,
    positions: Tensor,
) -> Tensor:
    """``ttt_dual_scan(...)[0][rows, :, positions]`` ([N, H, Dh]) for xq/xk/xv [B, H, L, Dh],
    sigma [B, H, L] and ``fast`` shared by the rows ([H, ...]), computing only what those outputs
    need: a row leaves the scan after the mini-batch of its last wanted position, and outputs
    are formed only for the wanted positions (the full scan forms all of them)."""
    mini_batch = scales.shape[0]
    length = xq.shape[-2]
    reach = torch.full((xq.shape[0],), -1, dtype=torch.long, device=xq.device)
    reach = reach.scatter_reduce(0, rows, positions, "amax")  # [B] last wanted position
    active = torch.nonzero(reach >= 0).squeeze(1)  # [A] rows still scanning, ascending
    out = xq.new_empty(rows.shape[0], xq.shape[1], xq.shape[-1])  # [N, H, Dh]
    last_wanted = int(reach.max())  # its row stays active to the end
    for start in range(0, last_wanted + 1, mini_batch):
        end = min(start + mini_batch, length)
        staying = reach[active] >= start  # [A]
        if not bool(staying.all()):
            active = active[staying]
            fast = _take_rows(fast, staying)
        q, k, v = (x[active, :, start:end] for x in (xq, xk, xv))  # [A, H, k, Dh]
        eta = torch.tril(scales[: end - start, None] * sigma[active, :, None, start:end])
        p = inner_pieces(fast, k, v, gamma, beta, eps)  # at the mini-batch's start weights
        wanted = torch.nonzero((positions >= start) & (positions < end)).squeeze(1)  # [n]
        if wanted.numel():
            local = torch.searchsorted(active, rows[wanted])  # [n] index among the active
            index = positions[wanted] - start  # [n] in-mini-batch index
            picked = dual_outputs(
                _take_rows(fast, local),
                q[local, :, index].unsqueeze(-2),  # [n, H, 1, Dh]
                p.index(local),
                eta[local, :, index].unsqueeze(-2),  # [n, H, 1, k]
                gamma, beta, eps,
            )  # fmt: skip
            out[wanted] = picked.squeeze(-2)
        if end <= last_wanted:
            fast = dual_update(fast, p, eta[..., -1, :].unsqueeze(-1))
    return out


def _take_rows(fast: FastWeights, rows: Tensor) -> FastWeights:
    """The given rows of per-row weights ([B, H, ...]); weights all rows share ([H, ...]) stay."""
    return FastWeights.from_parts([w[rows] if w.dim() == 4 else w for w in fast.parts()])


def ttt_recurrent_step(
    fast: FastWeights,
    accum: FastWeights,
    xq: Tensor,
    xk: Tensor,
    xv: Tensor,
    sigma: Tensor,
    scale: Tensor,
    boundary: Tensor,
    gamma: Tensor,
    beta: Tensor,
    eps: float,
) -> tuple[FastWeights, FastWeights, Tensor]:
    """One token for every row: xq/xk/xv [..., 1, Dh], sigma/scale [..., 1, 1] (s_i of each row's
    in-mini-batch index i), boundary [..., 1, 1] bool (i == K - 1).

    ``fast`` is W_b (weights at the start of the current mini-batch); ``accum`` is
    G = sum_j sigma_j grad_j(W_b) over the mini-batch so far. Returns (W_b', G', z [..., 1, Dh]).
    """
    p = inner_pieces(fast, xk, xv, gamma, beta, eps)
    grads = [p.x1.transpose(-1, -2) @ p.gz1, p.gz1]  # rank-1 W1 [..., Dh, F], b1 [..., 1, F]
    if p.x2 is not None and p.gz2 is not None:
        grads += [p.x2.transpose(-1, -2) @ p.gz2, p.gz2]
    accum = accum.zip_map(FastWeights.from_parts(grads), lambda g, d: g + sigma * d)
    current = fast.zip_map(accum, lambda w, g: w - scale * g)
    out = inner_apply(current, xq, gamma, beta, eps)  # [..., 1, Dh]
    fast = fast.zip_map(current, lambda w, c: torch.where(boundary, c, w))
    accum = accum.map(lambda g: g.masked_fill(boundary, 0.0))
    return fast, accum, out


def inner_loss(
    fast: FastWeights, xk: Tensor, xv: Tensor, gamma: Tensor, beta: Tensor, eps: float
) -> Tensor:
    """Sum over rows and tokens of 1/2 || f(k; W) - v ||^2 (for autograd references)."""
    return 0.5 * (inner_apply(fast, xk, gamma, beta, eps) - xv).pow(2).sum()


def autograd_token_gradient(
    fast: FastWeights, xk: Tensor, xv: Tensor, gamma: Tensor, beta: Tensor, eps: float
) -> FastWeights:
    """Gradient of one token's inner loss (xk/xv [..., 1, Dh]) by autograd; rows are independent
    because every row has its own fast weights."""
    with torch.enable_grad():
        leaves = [p.detach().requires_grad_(True) for p in fast.parts()]
        loss = inner_loss(
            FastWeights.from_parts(leaves), xk.detach(), xv.detach(), gamma, beta, eps
        )
        grads = torch.autograd.grad(loss, leaves)
    return FastWeights.from_parts(list(grads))


def ttt_sequential_reference(
    fast: FastWeights,
    xq: Tensor,
    xk: Tensor,
    xv: Tensor,
    sigma: Tensor,
    scales: Tensor,
    gamma: Tensor,
    beta: Tensor,
    eps: float,
) -> Tensor:
    """Slow reference of ``ttt_dual_scan``: token by token, autograd gradients at W_b, explicit
    W_t = W_b - s_i sum_j sigma_j grad_j. Fast weights need the full leading dims of xq."""
    mini_batch = scales.shape[0]
    outputs = []
    grads: list[tuple[Tensor, FastWeights]] = []
    for t in range(xq.shape[-2]):
        i = t % mini_batch
        if i == 0:
            grads = []
        token = slice(t, t + 1)
        grad = autograd_token_gradient(fast, xk[..., token, :], xv[..., token, :], gamma, beta, eps)
        grads.append((sigma[..., t, None, None], grad))
        parts = fast.parts()
        for weight, g in grads:
            parts = [w - scales[i] * weight * d for w, d in zip(parts, g.parts(), strict=True)]
        current = FastWeights.from_parts(parts)
        outputs.append(inner_apply(current, xq[..., token, :], gamma, beta, eps))
        if i == mini_batch - 1:
            fast = current
    return torch.cat(outputs, dim=-2)


def ttt_recurrent_step_fast(
    fast: FastWeights,
    accum: FastWeights,
    xq: Tensor,
    xk: Tensor,
    xv: Tensor,
    sigma: Tensor,
    scale: Tensor,
    boundary: Tensor,
    gamma: Tensor,
    beta: Tensor,
    eps: float,
    in_place: bool = False,
) -> tuple[FastWeights, FastWeights, Tensor]:
    """``ttt_recurrent_step`` for the streaming hot path, same arguments except the leading dims
    are exactly [U, H] and ``boundary`` is [U] bool.

    Why it is faster: W_b is never materialised as W_cur (the query uses W_b and G separately),
    the G update is one fused ``baddbmm``, and only users at a mini-batch boundary get new W_b
    rows (one copy of W_b per step instead of several elementwise passes). With ``in_place`` the
    given ``fast`` and ``accum`` tensors are updated and returned (the caller donates them),
    which saves the two copies that dominate at large U.
    """
    users, heads = xq.shape[:2]
    flat = users * heads

    def rows(t: Tensor) -> Tensor:
        return t.reshape(flat, *t.shape[2:])  # [U*H, ...]

    pair = torch.cat([xk, xq], dim=-2)  # [U, H, 2, Dh]: k and q share one read of W1
    z1_pair = pair @ fast.W1 + fast.b1  # [U, H, 2, F]
    z1k, z1q = z1_pair[..., :1, :], z1_pair[..., 1:, :]  # [U, H, 1, F]
    target = xv - xk  # [U, H, 1, Dh]

    def accumulate_outer(g: Tensor, left: Tensor, right: Tensor) -> Tensor:
        """g + left^T right per row: [U, H, a, b] + [U, H, 1, a]^T [U, H, 1, b]."""
        if in_place and g.is_contiguous():
            rows(g).baddbmm_(rows(left).transpose(1, 2), rows(right))
            return g
        if in_place:  # a layer slice of a multi-layer state: U and H do not merge into a view
            return g.add_(left.transpose(-1, -2) @ right)
        return torch.baddbmm(rows(g), rows(left).transpose(1, 2), rows(right)).view_as(g)

    def accumulate(g: Tensor, step: Tensor) -> Tensor:
        return g.add_(step) if in_place else g + step

    if fast.W2 is None or fast.b2 is None or accum.W2 is None or accum.b2 is None:
        step1 = sigma * layer_norm_l2_backward(z1k, target, gamma, beta, eps)  # [U, H, 1, Dh]
        g_w1, g_b1 = accumulate_outer(accum.W1, xk, step1), accumulate(accum.b1, step1)
        z = z1q - scale * (xq @ g_w1 + g_b1)  # [U, H, 1, Dh]
        new_accum = [g_w1, g_b1]
    else:
        x2 = gelu_tanh(z1k)  # [U, H, 1, F]
        gz2 = layer_norm_l2_backward(x2 @ fast.W2 + fast.b2, target, gamma, beta, eps)
        gz1 = gelu_tanh_backward(gz2 @ fast.W2.transpose(-1, -2), z1k)  # [U, H, 1, F]
        step1, step2 = sigma * gz1, sigma * gz2
        g_w1, g_b1 = accumulate_outer(accum.W1, xk, step1), accumulate(accum.b1, step1)
        g_w2, g_b2 = accumulate_outer(accum.W2, x2, step2), accumulate(accum.b2, step2)
        x2q = gelu_tanh(z1q - scale * (xq @ g_w1 + g_b1))  # [U, H, 1, F]
        z = x2q @ fast.W2 + fast.b2 - scale * (x2q @ g_w2 + g_b2)  # [U, H, 1, Dh]
        new_accum = [g_w1, g_b1, g_w2, g_b2]
    out = xq + layer_norm(z, gamma, beta, eps)  # [U, H, 1, Dh]
    at_boundary = boundary.nonzero().squeeze(1)  # [n]
    if at_boundary.numel() == 0:
        return fast, FastWeights.from_parts(new_accum), out
    row_scale = scale.expand(users, 1, 1, 1)[at_boundary]  # [n, 1, 1, 1]
    new_fast = []
    for w, g in zip(fast.parts(), new_accum, strict=True):
        rows_after = w[at_boundary] - row_scale * g[at_boundary]  # [n, H, ...]
        if in_place:
            new_fast.append(w.index_copy_(0, at_boundary, rows_after))
        else:
            new_fast.append(w.index_put((at_boundary,), rows_after))
    for g in new_accum:  # fresh tensors, or donated ones: resetting rows in place is safe
        g.index_fill_(0, at_boundary, 0.0)
    return FastWeights.from_parts(new_fast), FastWeights.from_parts(new_accum), out
