"""SASRec (Kang & McAuley, ICDM 2018) as RecBole 1.2.0 builds it (``recbole/model/
sequential_recommender/sasrec.py``), the non-adaptive baseline of TTT4Rec's Table 2.

    (item embedding + learned position embedding) -> LayerNorm(eps 1e-12) -> dropout
    -> n_layers x post-LN transformer layer (causal attention, GELU FFN)

Positions count from the left of the (right-padded) window, as in RecBole. Streaming keeps the
last ``max_len`` items per user and re-encodes that window at every event, so ``step`` equals
``forward`` over the last window. SASRec does not adapt: ``adapt`` has no effect.

Shape legend: B batch, L length, D width, U users.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from models.base import Prefix, SeqRecConfig
from models.layers import PostNormTransformerLayer, init_normal_
from models.registry import register
from models.ttt4rec import WindowModel


@dataclass
class SASRecConfig(SeqRecConfig):
    n_layers: int = 2  # transformer layers (RecBole default)
    n_heads: int = 2  # attention heads
    inner_dim: int = 256  # FFN hidden width
    dropout: float = 0.5  # hidden dropout (RecBole default hidden_dropout_prob)
    attn_dropout: float = 0.5  # attention-probability dropout (RecBole default)
    init_std: float = 0.02  # N(0, std) init

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")


@dataclass
class KeyValuePrefix(Prefix):
    """Every layer's attention keys and values at the covered positions (slots past
    ``length`` hold nothing meaningful)."""

    keys: Tensor  # [U, N, H, L, Dh]
    values: Tensor  # [U, N, H, L, Dh]


@register(SASRecConfig)
class SASRec(WindowModel):
    name: ClassVar[str] = "sasrec"
    config: SASRecConfig

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.config = config
        self.item_embedding = nn.Embedding(config.n_items, config.d_model, padding_idx=0)
        self.position_embedding = nn.Embedding(config.max_len, config.d_model)
        self.input_norm = nn.LayerNorm(config.d_model, eps=1e-12)
        self.dropout = nn.Dropout(config.dropout)
        layers = [
            PostNormTransformerLayer(
                config.d_model,
                config.n_heads,
                config.inner_dim,
                config.dropout,
                config.attn_dropout,
                eps=1e-12,
            )  # fmt: skip
            for _ in range(config.n_layers)
        ]
        self.layers = nn.ModuleList(layers)
        self.transformer_layers = layers  # typed view of the same modules
        init_normal_(self, config.init_std)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def embed(self, items: Tensor, start: Tensor | None = None) -> Tensor:
        """items [B, T] at positions ``start + t`` (start [B], default 0) -> [B, T, D]."""
        length = items.shape[1]
        if start is None and length > self.config.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.config.max_len}")
        positions = torch.arange(length, device=items.device)  # [T]
        if start is not None:  # padding past max_len takes the last position (never read)
            positions = (start.unsqueeze(1) + positions).clamp(max=self.config.max_len - 1)
        x = self.item_embedding(items) + self.position_embedding(positions)  # [B, T, D]
        return self.dropout(self.input_norm(x))

    def forward(self, items: Tensor, times: Tensor) -> Tensor:
        x = self.embed(items)
        for layer in self.layers:
            x = layer(x)
        return x  # [B, L, D]

    def hidden_at(self, items: Tensor, times: Tensor, rows: Tensor, positions: Tensor) -> Tensor:
        *early, last = self.transformer_layers
        x = self.embed(items)
        for layer in early:
            x = layer(x)
        return last.forward_at(x, rows, positions)  # [N, D]

    def empty_prefix(self, n_users: int) -> KeyValuePrefix:
        c = self.config
        shape = (n_users, c.n_layers, c.n_heads, c.max_len, c.d_model // c.n_heads)
        weight = self.item_embedding.weight
        return KeyValuePrefix(
            length=torch.zeros(n_users, dtype=torch.long, device=weight.device),
            keys=weight.new_zeros(shape),
            values=weight.new_zeros(shape),
        )

    def extend(
        self,
        prefix: Prefix,
        items: Tensor,
        times: Tensor,
        lengths: Tensor,
        rows: Tensor,
        positions: Tensor,
    ) -> tuple[Tensor, KeyValuePrefix]:
        if not isinstance(prefix, KeyValuePrefix):
            raise TypeError(f"SASRec cannot extend a {type(prefix).__name__}")
        x = self.embed(items, prefix.length)  # [B, T, D]
        keys, values = [], []
        for index, layer in enumerate(self.transformer_layers):
            x, k, v = layer.extend(x, prefix.keys[:, index], prefix.values[:, index], prefix.length)
            keys.append(k)
            values.append(v)
        extended = KeyValuePrefix(
            length=prefix.length + lengths,
            keys=torch.stack(keys, dim=1),
            values=torch.stack(values, dim=1),
        )
        return x[rows, positions], extended  # [N, D]
