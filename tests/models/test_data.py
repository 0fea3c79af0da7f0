"""Vocabulary, sample construction and the two offline splits."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from models.data import (
    TEST,
    TRAIN,
    VALID,
    ItemVocab,
    UnknownItemError,
    UserSequences,
    build_samples,
    recbole_ratio_split,
    split_counts,
)
from replay.datasets import order_events


def test_vocab_round_trip_and_unknown_items() -> None:
    vocab = ItemVocab([30, 10, 20, 10])
    assert vocab.to_list() == [-1, 10, 20, 30] and vocab.size == 4
    assert vocab.encode([20, 10, 30]).tolist() == [2, 1, 3]
    assert vocab.decode(torch.tensor([0, 3, 1])).tolist() == [-1, 30, 10]
    assert vocab.known([10, 11]).tolist() == [True, False]
    with pytest.raises(UnknownItemError, match=r"\[11, 99\]"):
        vocab.encode([10, 11, 99])
    assert ItemVocab.from_list(vocab.to_list()).to_list() == vocab.to_list()
    with pytest.raises(ValueError, match="padding"):
        ItemVocab.from_list([10, 20])


@pytest.mark.parametrize(
    ("total", "expected"),
    [
        (1, [1, 0, 0]),
        (2, [1, 0, 1]),
        (3, [1, 1, 1]),
        (4, [1, 1, 2]),
        (10, [3, 2, 5]),
        (19, [7, 3, 9]),
    ],
)
def test_recbole_ratio_split(total: int, expected: list[int]) -> None:
    assert recbole_ratio_split(total) == expected


def test_leave_one_out_counts() -> None:
    train, valid, test = split_counts(np.array([0, 1, 2, 3, 10]), "loo")
    assert train.tolist() == [0, 1, 1, 1, 8]
    assert valid.tolist() == [0, 0, 0, 1, 1] and test.tolist() == [0, 0, 1, 1, 1]


def events(rows: list[tuple[int, int, float]]) -> pl.DataFrame:
    frame = pl.DataFrame(
        rows, schema={"user": pl.Int64, "item": pl.Int64, "time": pl.Float64}, orient="row"
    )
    return order_events(frame)


def test_samples_windows_targets_and_splits() -> None:
    # user 7: items 101..111 at times 0..10; user 3: items 201..204, interleaved in time
    rows = [(7, 101 + t, float(t)) for t in range(11)] + [(3, 201 + t, t + 0.5) for t in range(4)]
    log = events(rows)
    vocab = ItemVocab.from_events(log)
    sequences = UserSequences.from_events(log, vocab)
    assert sequences.users.tolist() == [3, 7]
    samples = build_samples(sequences, max_len=4, protocol="ttt4rec")
    # user 3 has 3 samples -> 1/1/1; user 7 has 10 -> 3/2/5
    assert [len(samples[k]) for k in (TRAIN, VALID, TEST)] == [4, 3, 6]
    test = samples[TEST]
    # user 7's final sample: target 111, history 107..110
    assert vocab.decode(test.targets[-1:]).tolist() == [111]
    assert vocab.decode(test.items[-1]).tolist() == [107, 108, 109, 110]
    first_train = samples[TRAIN]
    assert vocab.decode(first_train.items[0]).tolist() == [201, -1, -1, -1]
    assert first_train.lengths[0] == 1 and vocab.decode(first_train.targets[:1]).tolist() == [202]
    assert first_train.times[0, 0] == 0.5 and first_train.times[0, 1] == 0.0
    loo = build_samples(sequences, max_len=4, protocol="loo")
    assert vocab.decode(loo[TEST].targets).tolist() == [204, 111]
    assert vocab.decode(loo[VALID].targets).tolist() == [203, 110]
