"""Parameter-efficient adapters that DARec's dynamic adaption chooses among, one per layer.

A choice is a short string: ``none``, ``lora4|8|16`` (low-rank updates of the attention's query
and value projections, Hu et al. 2021), ``serial16|32|64`` (a bottleneck after the feed-forward
block, Houlsby et al. 2019) or ``parallel16|32|64`` (a bottleneck beside the feed-forward block,
He et al. 2022). Every adapter starts as the identity (its last projection is zero), so a fresh
adapter leaves the frozen backbone's output unchanged.

Shape legend: ... any leading dims, W backbone width, R rank or bottleneck size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

ADAPTER_CHOICES = (
    "none",
    "lora4",
    "lora8",
    "lora16",
    "serial16",
    "serial32",
    "serial64",
    "parallel16",
    "parallel32",
    "parallel64",
)
_CHOICE = re.compile(r"^(none|lora|serial|parallel)(\d*)$")


@dataclass(frozen=True)
class AdapterChoice:
    kind: str  # "none", "lora", "serial" or "parallel"
    size: int  # LoRA rank or bottleneck width; 0 for "none"

    @classmethod
    def parse(cls, text: str) -> AdapterChoice:
        if text not in ADAPTER_CHOICES:
            raise ValueError(f"unknown adapter {text!r}; choose from {', '.join(ADAPTER_CHOICES)}")
        match = _CHOICE.match(text)
        assert match is not None  # every listed choice matches
        return cls(match.group(1), int(match.group(2) or 0))


def parse_layer_adapters(spec: str, n_layers: int) -> list[AdapterChoice]:
    """``"lora8"`` (every layer) or ``"none,lora8,serial32,..."`` (one per layer)."""
    parts = [part.strip() for part in spec.split(",")]
    if len(parts) == 1:
        parts = parts * n_layers
    if len(parts) != n_layers:
        raise ValueError(
            f"adapters {spec!r} names {len(parts)} layers, the backbone has {n_layers}"
        )
    return [AdapterChoice.parse(part) for part in parts]


class LoRA(nn.Module):
    """x -> (alpha / r) * B(A(x)); B starts at zero (the update starts at zero)."""

    def __init__(self, width: int, rank: int, alpha: float = 16.0) -> None:
        super().__init__()
        self.down = nn.Linear(width, rank, bias=False)
        self.up = nn.Linear(rank, width, bias=False)
        self.scale = alpha / rank
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(x)) * self.scale  # [..., W]


class Bottleneck(nn.Module):
    """x -> up(act(down(x))); up starts at zero."""

    def __init__(self, width: int, size: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, size)
        self.up = nn.Linear(size, width)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(F.gelu(self.down(x)))  # [..., W]


class LayerAdapter(nn.Module):
    """The adapter of one backbone layer; the layer calls the hooks that apply to its kind."""

    def __init__(self, choice: AdapterChoice, width: int) -> None:
        super().__init__()
        self.choice = choice
        self.lora_query = LoRA(width, choice.size) if choice.kind == "lora" else None
        self.lora_value = LoRA(width, choice.size) if choice.kind == "lora" else None
        self.bottleneck = (
            Bottleneck(width, choice.size) if choice.kind in ("serial", "parallel") else None
        )

    def query_delta(self, x: Tensor) -> Tensor | None:
        return None if self.lora_query is None else self.lora_query(x)

    def value_delta(self, x: Tensor) -> Tensor | None:
        return None if self.lora_value is None else self.lora_value(x)

    def feed_forward(self, ffn_input: Tensor, ffn_output: Tensor) -> Tensor:
        """The feed-forward block's output with the serial or parallel bottleneck applied."""
        if self.bottleneck is None:
            return ffn_output
        if self.choice.kind == "serial":
            return ffn_output + self.bottleneck(ffn_output)
        return ffn_output + self.bottleneck(ffn_input)  # parallel: reads the block's input
