"""Leave-one-out split, training examples in both styles, and the collator."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pytest
import torch

from blossom_hf.data import (
    PrefixExamples,
    RankingDataset,
    SequenceCollator,
    SequenceData,
    WindowExamples,
    leave_one_out,
    pack_histories,
    pad_sequences,
    training_examples,
)


def make_data(sequences: list[list[int]]) -> SequenceData:
    lengths = [len(s) for s in sequences]
    n_items = max(max(s) for s in sequences)
    return SequenceData(
        user_ids=pa.array([f"u{i}" for i in range(len(sequences))]),
        item_ids=[str(i) for i in range(1, n_items + 1)],
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        items=np.concatenate([np.asarray(s) for s in sequences]).astype(np.int32),
    )


def ranges(items: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> list[list[int]]:
    return [items[s:e].tolist() for s, e in zip(starts, ends, strict=True)]


def test_leave_one_out_targets_and_inputs(caplog):
    data = make_data([[1, 2, 3, 4, 5], [6, 7], [8, 9, 10], [11]])
    with caplog.at_level(logging.INFO, logger="blossom_hf.data.splits"):
        split = leave_one_out(data)
    assert "2 of 4 users have fewer than 3 interactions" in caplog.text
    assert "1 of them have a single interaction" in caplog.text
    assert split.n_short_users == 2 and split.evaluated_users.tolist() == [0, 2]
    valid, test = split.validation(), split.test()
    assert valid.targets.tolist() == [4, 9] and test.targets.tolist() == [5, 10]
    assert ranges(valid.items, valid.starts, valid.ends) == [[1, 2, 3], [8]]
    assert ranges(test.items, test.starts, test.ends) == [[1, 2, 3, 4], [8, 9]]
    # training histories: evaluated users lose their last two items, short users keep everything
    assert ranges(data.items, split.train_starts, split.train_ends) == [[1, 2, 3], [6, 7], [8], [11]]
    assert split.train_item_counts().tolist() == [0, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 1]
    assert split.summary["users_with_fewer_than_3_interactions"] == 2
    assert split.summary["users_with_one_interaction"] == 1
    assert split.summary["training_targets"] == 2 + 1


def test_prefix_examples_recbole_style():
    data = make_data([[1, 2, 3, 4, 5, 6, 7, 8], [9, 10, 11]])
    split = leave_one_out(data)  # train histories [1..6] and [9]
    examples = training_examples(split, "recbole", max_length=3)
    assert isinstance(examples, PrefixExamples) and len(examples) == 5
    batch = examples.__getitems__(list(range(5)))
    assert batch["input_ids"].tolist() == [[1, 0, 0], [1, 2, 0], [1, 2, 3], [2, 3, 4], [3, 4, 5]]
    assert batch["labels"].tolist() == [2, 3, 4, 5, 6]
    single = examples[4]
    assert single["input_ids"].tolist() == [3, 4, 5] and int(single["labels"]) == 6


def test_window_examples_tile_every_target_once():
    history = list(range(1, 12))  # 11 items; training history 1..9 -> targets 2..9
    split = leave_one_out(make_data([history]))
    examples = training_examples(split, "sasrec", max_length=3)
    assert isinstance(examples, WindowExamples) and len(examples) == 3
    batch = examples.__getitems__([0, 1, 2])
    assert batch["input_ids"].tolist() == [[6, 7, 8], [3, 4, 5], [1, 2, 0]]
    assert batch["labels"].tolist() == [[7, 8, 9], [4, 5, 6], [2, 3, 0]]
    targets = sorted(int(x) for x in batch["labels"].ravel() if x)
    assert targets == list(range(2, 10))
    last = training_examples(split, "sasrec", max_length=3, windows="last")
    assert len(last) == 1 and last.__getitems__([0])["labels"].tolist() == [[7, 8, 9]]


def test_window_examples_labels_are_next_items_everywhere():
    rng = np.random.default_rng(0)
    sequences = [rng.integers(1, 50, size=n).tolist() for n in rng.integers(1, 40, size=30)]
    data = make_data(sequences)
    split = leave_one_out(data)
    examples = WindowExamples(data.items, split.train_starts, split.train_ends, max_length=7)
    batch = examples.__getitems__(list(range(len(examples))))
    inputs, labels = batch["input_ids"], batch["labels"]
    real = labels > 0
    assert ((inputs > 0) == real).all()  # every real input position has a target
    n_targets = int(np.maximum(split.train_ends - split.train_starts - 1, 0).sum())
    assert real.sum() == n_targets


def test_unknown_style():
    split = leave_one_out(make_data([[1, 2, 3]]))
    with pytest.raises(ValueError, match="unknown example style"):
        training_examples(split, "bert4rec", 5)


def test_pack_histories_truncates_to_most_recent_and_right_pads():
    items = np.arange(1, 11)
    packed = pack_histories(items, np.array([0, 2, 9]), np.array([6, 4, 10]), 4)
    assert packed.tolist() == [[3, 4, 5, 6], [3, 4, 0, 0], [10, 0, 0, 0]]
    assert packed.dtype == np.int64


def test_collator_pads_lists_and_passes_packed_batches():
    collator = SequenceCollator(max_history_length=3)
    batch = collator([{"input_ids": [1, 2, 3, 4], "labels": 5}, {"input_ids": [7], "labels": 8}])
    assert batch["input_ids"].tolist() == [[2, 3, 4], [7, 0, 0]] and batch["labels"].tolist() == [5, 8]
    per_position = collator([{"input_ids": [1, 2, 3, 4], "labels": [2, 3, 4, 5]}, {"input_ids": [7], "labels": [9]}])
    assert per_position["labels"].tolist() == [[3, 4, 5], [9, 0, 0]]
    packed = collator({"input_ids": np.array([[1, 0]], dtype=np.int32), "labels": np.array([2])})
    assert packed["input_ids"].dtype == torch.int64 and packed["input_ids"].tolist() == [[1, 0]]
    with pytest.raises(KeyError, match="input_ids"):
        collator([{"labels": 1}])
    assert pad_sequences([[1, 2], []], 3).tolist() == [[1, 2, 0], [0, 0, 0]]


def test_ranking_dataset_and_dataloader_batches():
    split = leave_one_out(make_data([[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12]]))
    dataset = RankingDataset(split.test(), max_length=2)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=SequenceCollator(2))
    batches = list(loader)
    assert batches[0]["input_ids"].tolist() == [[2, 3], [5, 6]] and batches[0]["targets"].tolist() == [4, 7]
    assert batches[1]["input_ids"].tolist() == [[10, 11]] and batches[1]["index"].tolist() == [2]
