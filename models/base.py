"""The one interface every shiftstream recommender implements.

Shape legend used across ``models/``: B batch, L sequence length, D model width, I catalogue size
(including the padding index 0), U users in a streaming batch.

Offline (training, evaluation)::

    hidden = model(items, times)        # items [B, L] long, right-padded with 0; times [B, L] s
    scores = model.score(hidden)        # [..., D] -> [..., I], padding column is -inf
    loss = model.loss(items, times, targets)   # targets [B, L], 0 = not supervised

Streaming (predict, then score, then update; one event per user per call)::

    state = model.init_state(n_users)
    state, hidden = model.step(state, items, times)   # items [U], times [U] -> hidden [U, D]

``hidden`` after consuming event t ranks the candidates for event t+1. ``adapt=False`` runs the
same step with test-time adaptation switched off (the ``frozen`` variant in streaming runs).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.state import State

PADDING_ITEM = 0


@dataclass
class SeqRecConfig:
    """Fields every model config has; each model's config dataclass extends it."""

    n_items: int = 3953  # catalogue size I, index 0 is padding
    d_model: int = 64  # embedding and hidden width D
    max_len: int = 50  # training window and windowed-streaming length


@dataclass(frozen=True)
class PinnedWeights:
    """State-dict entries a model's constructor loads from a pretrained file that training
    never changes. Checkpoints leave them out and keep the file's fingerprint instead."""

    keys: frozenset[str]
    source: str  # what the file is, for messages, e.g. "all-MiniLM-L6-v2"
    fingerprint: str  # the file's hash; a checkpoint loads only against the same file


class SeqRecModel(nn.Module, ABC):
    name: ClassVar[str]
    state_type: type[State]  # a class attribute; a model may pick it per instance from its config
    config: SeqRecConfig
    item_embedding: nn.Embedding  # [I, D], tied with the output layer

    @abstractmethod
    def forward(self, items: Tensor, times: Tensor) -> Tensor:
        """items [B, L] (right-padded with 0), times [B, L] seconds -> hidden [B, L, D]."""

    def hidden_at(self, items: Tensor, times: Tensor, rows: Tensor, positions: Tensor) -> Tensor:
        """``self(items, times)[rows, positions]`` ([N, D]): the outputs at N chosen (row,
        position) pairs. This is the reference; models override it to compute only what those
        outputs need (streaming reads one position of each window)."""
        return self(items, times)[rows, positions]

    def score(self, hidden: Tensor) -> Tensor:
        """Full-catalogue scores through the tied item embedding; padding gets -inf."""
        scores = hidden @ self.item_embedding.weight.T  # [..., I]
        scores[..., PADDING_ITEM] = float("-inf")
        return scores

    def loss(self, items: Tensor, times: Tensor, targets: Tensor) -> Tensor:
        """Full-softmax cross-entropy at every position whose target is not padding."""
        hidden = self(items, times)  # [B, L, D]
        supervised = targets != PADDING_ITEM  # [B, L]
        logits = hidden[supervised] @ self.item_embedding.weight.T  # [N, I]
        logits[:, PADDING_ITEM] = float("-inf")
        return F.cross_entropy(logits, targets[supervised])

    @abstractmethod
    def init_state(self, n_users: int) -> State:
        """Fresh per-user streaming state for ``n_users`` users (on the module's device)."""

    @abstractmethod
    def step(
        self, state: State, items: Tensor, times: Tensor, adapt: bool = True
    ) -> tuple[State, Tensor]:
        """Advance each user by one event: items [U], times [U] -> (state, hidden [U, D])."""

    def last_hidden(
        self, items: Tensor, times: Tensor, lengths: Tensor, adapt: bool = False
    ) -> Tensor:
        """Offline read-out: hidden [B, D] at each row's last real item. Models with test-time
        adaptation override it to adapt on each row's history first when ``adapt`` is set."""
        return last_positions(self(items, times), lengths)

    def use_item_metadata(self, raw_items: np.ndarray, metadata: pl.DataFrame | None) -> None:
        """Catalogue metadata (``item, title, genres``; index i is raw id ``raw_items[i - 1]``)
        for models that read item text (DARec). ID-only models ignore it."""

    def shift_score(self, state: State) -> Tensor | None:
        """Per-user shift score after the last step ([U]), for models that have one."""
        return None

    def pinned_weights(self) -> PinnedWeights | None:
        """The weights this model takes from a pretrained file as they are (DARec's frozen
        language model); None when every weight is the model's own."""
        return None

    @property
    def device(self) -> torch.device:
        return self.item_embedding.weight.device


def last_positions(hidden: Tensor, lengths: Tensor) -> Tensor:
    """hidden [B, L, D], lengths [B] -> hidden at each row's last real item, [B, D]."""
    index = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
    return hidden.gather(1, index).squeeze(1)
