"""The collator pads a batch to its longest history (a multiple of 8) by default; full-window padding on request;
training sees the same losses and gradients either way."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import tiny_config

from blossom_hf import BlossomRecModel
from blossom_hf.data import SequenceCollator, training_examples
from blossom_hf.data.preprocessing import SequenceData
from blossom_hf.data.splits import leave_one_out


def test_width_is_the_longest_history_rounded_up_to_8_and_capped_by_the_window():
    collator = SequenceCollator(max_history_length=50)
    batch = collator([{"input_ids": list(range(1, 4)), "labels": 9}, {"input_ids": list(range(1, 11)), "labels": 9}])
    assert batch["input_ids"].shape == (2, 16) and batch["input_ids"][1, :10].tolist() == list(range(1, 11))
    assert batch["labels"].tolist() == [9, 9]
    packed = {"input_ids": np.zeros((3, 50), dtype=np.int64), "labels": np.zeros((3, 50), dtype=np.int64),
              "targets": np.array([1, 2, 3])}  # fmt: skip
    packed["input_ids"][0, :5] = 7
    packed["labels"][0, :5] = 8
    out = collator(packed)
    assert out["input_ids"].shape == (3, 8) and out["labels"].shape == (3, 8) and out["targets"].shape == (3,)
    assert out["labels"][0].tolist() == [8] * 5 + [0] * 3
    packed["input_ids"][1, :45] = 7
    assert collator(packed)["input_ids"].shape == (3, 48)
    packed["input_ids"][1, :49] = 7
    assert collator(packed)["input_ids"].shape == (3, 50)  # 56 would exceed the window
    assert SequenceCollator(50, pad_to_multiple_of=None)(packed)["input_ids"].shape == (3, 49)
    assert SequenceCollator(50, padding="max_length")(packed)["input_ids"].shape == (3, 50)
    full = SequenceCollator(50, padding="max_length")([{"input_ids": [1, 2]}])
    assert full["input_ids"].shape == (1, 50)
    with pytest.raises(ValueError, match="padding must be"):
        SequenceCollator(50, padding="do_not_pad")


def _histories(generator: torch.Generator, users: int = 12) -> SequenceData:
    lengths = torch.randint(3, 22, (users,), generator=generator).numpy()
    items = torch.randint(1, 60, (int(lengths.sum()),), generator=generator).numpy().astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return SequenceData(user_ids=pa.array([f"u{i}" for i in range(users)]), item_ids=[str(i) for i in range(1, 60)],
                        offsets=offsets, items=items)  # fmt: skip


@pytest.mark.parametrize("style", ["sasrec", "recbole"])
def test_both_paddings_train_identically(style, generator):
    split = leave_one_out(_histories(generator))
    window = 40
    examples = training_examples(split, style, max_length=window)
    indices = list(range(min(len(examples), 16)))
    short = SequenceCollator(window)(examples.__getitems__(indices))
    full = SequenceCollator(window, padding="max_length")(examples.__getitems__(indices))
    assert full["input_ids"].shape[1] == window and short["input_ids"].shape[1] < window
    assert short["input_ids"].shape[1] % 8 == 0
    losses = {}
    for name, batch in (("short", short), ("full", full)):
        torch.manual_seed(0)
        model = BlossomRecModel(tiny_config(max_history_length=window))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        losses[name] = []
        for _ in range(3):
            optimizer.zero_grad()
            loss = model(**{k: v for k, v in batch.items() if k in ("input_ids", "labels")}).loss
            loss.backward()
            optimizer.step()
            losses[name].append(loss.item())
        losses[name + "_params"] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert losses["short"] == pytest.approx(losses["full"], rel=1e-6, abs=1e-6)
    assert torch.allclose(losses["short_params"], losses["full_params"], atol=1e-6)
