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

from models.base import SeqRecConfig
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


@register(SASRecConfig)
class SASRec(WindowModel):
    name: ClassVar[str] = "sasrec"

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

    def embed(self, items: Tensor) -> Tensor:
        length = items.shape[1]
        if length > self.config.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.config.max_len}")
        positions = torch.arange(length, device=items.device)  # [L]
        x = self.item_embedding(items) + self.position_embedding(positions)  # [B, L, D]
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
