"""From an ``InteractionLog`` to model inputs: the item vocabulary, per-user sequences, samples
and the two offline protocols.

Samples follow RecBole's sequential augmentation (seeds.md §1.6): for each user sorted by time,
every 0-based position p >= 1 is one sample whose target is item p and whose history is the
<= max_len items before it. Histories are right-padded with item 0 and read out at their last
real position.

Splits over each user's samples, in time order:

* ``ttt4rec``: 3:2:5 train/valid/test with RecBole's ``split_by_ratio`` rounding (valid =
  floor(0.2 n), test = floor(0.5 n), each bumped to 1 when the product is in (0, 1) while train
  keeps more than one sample; train gets the rest), n = number of samples of the user;
* ``loo``: leave-one-out; the last sample is test, the one before it valid, the rest train
  (users with two samples give one to train and one to test; with one sample, to train).

The vocabulary holds every item of the loaded log (not only the training part), sorted by raw
id, so the catalogue is fixed for the whole stream and a later event never meets an unknown item.

Shape legend: N samples, L max_len, E events, I catalogue size (padding 0 included).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
from torch import Tensor

PROTOCOLS = ("ttt4rec", "loo")
TRAIN, VALID, TEST = 0, 1, 2
TTT4REC_RATIOS = (0.3, 0.2, 0.5)


class UnknownItemError(ValueError):
    """Raw item ids that are not in the checkpoint's vocabulary."""


class ItemVocab:
    """Raw item id <-> index. Index 0 is padding (raw id -1); real items are 1..I-1."""

    def __init__(self, raw_items: Sequence[int] | np.ndarray) -> None:
        raw = np.unique(np.asarray(raw_items, dtype=np.int64))
        if raw.size and raw[0] < 0:
            raise ValueError(f"raw item ids must be >= 0, got {int(raw[0])}")
        self.raw_sorted = raw  # [I-1]

    @classmethod
    def from_list(cls, vocab: Sequence[int]) -> ItemVocab:
        """From a checkpoint's ``vocab`` list (index order, -1 at index 0)."""
        if not vocab or vocab[0] != -1:
            raise ValueError("a vocab list starts with -1 (the padding index)")
        body = np.asarray(vocab[1:], dtype=np.int64)
        if body.size > 1 and bool(np.any(np.diff(body) <= 0)):
            raise ValueError("vocab raw ids must be strictly increasing after the padding entry")
        return cls(body)

    @classmethod
    def from_events(cls, events: pl.DataFrame) -> ItemVocab:
        return cls(events["item"].unique().to_numpy())

    @property
    def size(self) -> int:
        return int(self.raw_sorted.size) + 1

    def to_list(self) -> list[int]:
        return [-1, *(int(x) for x in self.raw_sorted)]

    def known(self, raw: np.ndarray | Sequence[int]) -> np.ndarray:
        """Bool mask: which raw ids are in the vocabulary."""
        raw = np.asarray(raw, dtype=np.int64)
        if self.raw_sorted.size == 0:
            return np.zeros(raw.shape, dtype=bool)
        position = np.searchsorted(self.raw_sorted, raw).clip(max=self.raw_sorted.size - 1)
        return np.asarray(self.raw_sorted[position] == raw, dtype=bool)

    def encode(self, raw: np.ndarray | Sequence[int] | Tensor) -> Tensor:
        """Raw ids -> indices (int64 tensor); unknown ids raise ``UnknownItemError``."""
        array = raw.cpu().numpy() if isinstance(raw, Tensor) else np.asarray(raw, dtype=np.int64)
        known = self.known(array)
        if not known.all():
            unknown = np.unique(array[~known])[:10].tolist()
            raise UnknownItemError(
                f"{int((~known).sum())} raw item ids not in the vocab, e.g. {unknown}"
            )
        return torch.from_numpy(np.searchsorted(self.raw_sorted, array) + 1)

    def decode(self, indices: Tensor | np.ndarray) -> np.ndarray:
        array = indices.cpu().numpy() if isinstance(indices, Tensor) else np.asarray(indices)
        if np.any(array < 0) or np.any(array >= self.size):
            raise ValueError(f"indices must lie in [0, {self.size})")
        return np.concatenate([[-1], self.raw_sorted])[array]


def fingerprint(events: pl.DataFrame) -> str:
    """SHA-256 over the (user, item, time) columns in event order."""
    digest = hashlib.sha256()
    for column in ("user", "item", "time"):
        digest.update(column.encode())
        digest.update(np.ascontiguousarray(events[column].to_numpy()).tobytes())
    return digest.hexdigest()


@dataclass
class UserSequences:
    """All events grouped by user (users in first-appearance order, events in global order)."""

    items: np.ndarray  # [E] item indices
    times: np.ndarray  # [E] float64 seconds
    offsets: np.ndarray  # [U + 1] start of each user's events in ``items``
    users: np.ndarray  # [U] raw user ids

    @classmethod
    def from_events(cls, events: pl.DataFrame, vocab: ItemVocab) -> UserSequences:
        grouped = (
            events.select("user", "item", "time")
            .with_row_index("_order")
            .sort(["user", "_order"])  # users by raw id, each user's events in global order
        )
        per_user = grouped.group_by("user", maintain_order=True).len()
        counts = per_user["len"].to_numpy()
        return cls(
            items=vocab.encode(grouped["item"].to_numpy()).numpy(),
            times=grouped["time"].to_numpy().astype(np.float64),
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            users=per_user["user"].to_numpy(),
        )


@dataclass
class SampleSet:
    """Pre-built sample windows as tensors (built once, moved to the device once)."""

    items: Tensor  # [N, L] int64, right-padded histories
    times: Tensor  # [N, L] float64
    lengths: Tensor  # [N] int64, history lengths (>= 1)
    targets: Tensor  # [N] int64

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def to(self, device: torch.device | str) -> SampleSet:
        return SampleSet(
            *(t.to(device) for t in (self.items, self.times, self.lengths, self.targets))
        )

    def rows(self, start: int, end: int) -> SampleSet:
        """A contiguous slice (views, no copy)."""
        return SampleSet(
            self.items[start:end],
            self.times[start:end],
            self.lengths[start:end],
            self.targets[start:end],
        )

    def subset(self, index: Tensor) -> SampleSet:
        return SampleSet(
            self.items[index], self.times[index], self.lengths[index], self.targets[index]
        )


def split_counts(n_samples: np.ndarray, protocol: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-user (train, valid, test) sample counts for ``protocol``."""
    n = np.asarray(n_samples, dtype=np.int64)
    if protocol == "loo":
        test = (n >= 2).astype(np.int64)
        valid = (n >= 3).astype(np.int64)
        return n - valid - test, valid, test
    if protocol != "ttt4rec":
        raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")
    counts = [recbole_ratio_split(int(total)) for total in n]
    array = np.asarray(counts, dtype=np.int64).reshape(-1, 3)
    return array[:, 0], array[:, 1], array[:, 2]


def recbole_ratio_split(total: int, ratios: tuple[float, ...] = TTT4REC_RATIOS) -> list[int]:
    """RecBole 1.2.0 ``Dataset._calcu_split_ids`` as counts (same float products)."""
    counts = [int(ratio * total) for ratio in ratios]
    counts[0] = total - sum(counts[1:])
    for i in range(1, len(ratios)):
        if counts[0] <= 1:
            break
        if 0 < ratios[-i] * total < 1:
            counts[-i] += 1
            counts[0] -= 1
    return counts


def build_samples(sequences: UserSequences, max_len: int, protocol: str) -> dict[int, SampleSet]:
    """Samples of every user, split by ``protocol`` -> {TRAIN: ..., VALID: ..., TEST: ...}."""
    starts, ends = sequences.offsets[:-1], sequences.offsets[1:]
    n_samples = np.maximum(ends - starts - 1, 0)  # [U]
    train, valid, _ = split_counts(n_samples, protocol)
    user_of_sample = np.repeat(np.arange(starts.size), n_samples)  # [N]
    rank = np.arange(user_of_sample.size) - np.repeat(np.cumsum(n_samples) - n_samples, n_samples)
    target_pos = starts[user_of_sample] + 1 + rank  # [N] flat index of each target
    kind = np.where(
        rank < train[user_of_sample],
        TRAIN,
        np.where(rank < (train + valid)[user_of_sample], VALID, TEST),
    )
    window_start = np.maximum(starts[user_of_sample], target_pos - max_len)  # [N]
    lengths = target_pos - window_start  # [N]
    offsets = np.arange(max_len)  # [L]
    real = offsets[None, :] < lengths[:, None]  # [N, L]
    flat = np.where(real, window_start[:, None] + offsets[None, :], 0)  # [N, L]
    items = np.where(real, sequences.items[flat], 0)
    times = np.where(real, sequences.times[flat], 0.0)
    result = {}
    for part in (TRAIN, VALID, TEST):
        chosen = kind == part
        result[part] = SampleSet(
            items=torch.from_numpy(items[chosen].astype(np.int64)),
            times=torch.from_numpy(times[chosen].astype(np.float64)),
            lengths=torch.from_numpy(lengths[chosen].astype(np.int64)),
            targets=torch.from_numpy(sequences.items[target_pos[chosen]].astype(np.int64)),
        )
    return result


def events_before(events: pl.DataFrame, until: float | None) -> pl.DataFrame:
    """Events strictly before event time ``until`` (seconds); all events when None."""
    return events if until is None else events.filter(pl.col("time") < until)
