"""Training examples built from the training histories, as index ranges (no per-example Python lists).

Two styles (``docs/PROTOCOL.md``, "Training examples"):

* :class:`PrefixExamples` -- RecBole style (what the paper used): every prefix of a training history
  predicts its next item. Input = the prefix truncated to its most recent ``max_length`` items and
  right-padded; ``labels`` ``[B]`` = the next item (loss on the last real position only).
* :class:`WindowExamples` -- SASRec style: each user's training history once per epoch; ``labels``
  ``[B, L]`` = the next item at every real position (0 = ignore). Histories longer than ``max_length + 1``
  are cut into consecutive windows from the most recent end (``windows="tile"``: every training target
  appears exactly once per epoch) or only the most recent window is used (``windows="last"``, the
  original SASRec recipe). Under causal attention this carries the same targets as the prefix style at
  a fraction of the cost; targets early in a tiled window see less context than their RecBole prefix.

Both are ``torch.utils.data.Dataset``s whose ``__getitems__`` returns a whole packed batch (numpy),
which ``torch.utils.data.DataLoader`` uses instead of one ``__getitem__`` call per example.
:class:`RankingDataset` does the same for evaluation examples.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from .collator import pack_histories
from .splits import LeaveOneOutSplit, RankingExamples

ExampleStyle = Literal["sasrec", "recbole"]
WindowMode = Literal["tile", "last"]


class PrefixExamples(torch.utils.data.Dataset):
    """RecBole-style next-item examples: ``(items[max(s, t-L):t] -> items[t])`` for every ``t`` in
    ``s+1 .. e-1`` of each training history ``[s, e)``."""

    def __init__(self, items: np.ndarray, starts: np.ndarray, ends: np.ndarray, max_length: int):
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.items = items
        self.max_length = max_length
        lengths = np.maximum(np.asarray(ends) - np.asarray(starts), 0)
        counts = np.maximum(lengths - 1, 0)
        total = int(counts.sum())
        first_target = np.repeat(np.asarray(starts, dtype=np.int64) + 1, counts)
        within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        self.targets_at = first_target + within  # index of each example's target in `items`
        self.history_starts = np.repeat(np.asarray(starts, dtype=np.int64), counts)

    def __len__(self) -> int:
        return len(self.targets_at)

    def __getitems__(self, indices: list[int]) -> dict[str, np.ndarray]:
        index = np.asarray(indices, dtype=np.int64)
        ends = self.targets_at[index]
        return {
            "input_ids": pack_histories(self.items, self.history_starts[index], ends, self.max_length),
            "labels": self.items[ends].astype(np.int64),
        }

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        batch = self.__getitems__([index])
        return {key: value[0] for key, value in batch.items()}


class WindowExamples(torch.utils.data.Dataset):
    """SASRec-style examples: input ``items[a-1:b-1]``, labels ``items[a:b]`` for windows ``[a, b)`` of
    at most ``max_length`` targets inside each training history (targets exclude its first item)."""

    def __init__(
        self,
        items: np.ndarray,
        starts: np.ndarray,
        ends: np.ndarray,
        max_length: int,
        windows: WindowMode = "tile",
    ):
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if windows not in ("tile", "last"):
            raise ValueError(f"windows must be 'tile' or 'last', not {windows!r}")
        self.items = items
        self.max_length = max_length
        starts = np.asarray(starts, dtype=np.int64)
        ends = np.asarray(ends, dtype=np.int64)
        n_targets = np.maximum(ends - starts - 1, 0)
        if windows == "tile":
            per_user = -(-n_targets // max_length)  # ceil
        else:
            per_user = (n_targets > 0).astype(np.int64)
        total = int(per_user.sum())
        rank_from_end = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(per_user) - per_user, per_user)
        label_ends = np.repeat(ends, per_user) - rank_from_end * max_length
        self.label_ends = label_ends
        self.label_starts = np.maximum(np.repeat(starts + 1, per_user), label_ends - max_length)

    def __len__(self) -> int:
        return len(self.label_ends)

    def __getitems__(self, indices: list[int]) -> dict[str, np.ndarray]:
        index = np.asarray(indices, dtype=np.int64)
        label_starts, label_ends = self.label_starts[index], self.label_ends[index]
        return {
            "input_ids": pack_histories(self.items, label_starts - 1, label_ends - 1, self.max_length),
            "labels": pack_histories(self.items, label_starts, label_ends, self.max_length),
        }

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        batch = self.__getitems__([index])
        return {key: value[0] for key, value in batch.items()}


class RankingDataset(torch.utils.data.Dataset):
    """Evaluation examples packed for a model: ``input_ids [B, L]``, ``targets [B]``, ``index [B]``."""

    def __init__(self, examples: RankingExamples, max_length: int):
        self.examples = examples
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.examples)

    def __getitems__(self, indices: list[int]) -> dict[str, np.ndarray]:
        index = np.asarray(indices, dtype=np.int64)
        ex = self.examples
        return {
            "input_ids": pack_histories(ex.items, ex.starts[index], ex.ends[index], self.max_length),
            "targets": ex.targets[index],
            "index": index,
        }

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        batch = self.__getitems__([index])
        return {key: value[0] for key, value in batch.items()}


def training_examples(
    split: LeaveOneOutSplit, style: ExampleStyle, max_length: int, windows: WindowMode = "tile"
) -> PrefixExamples | WindowExamples:
    """Training examples of ``split`` in the chosen style (``"sasrec"`` or ``"recbole"``)."""
    if style == "recbole":
        return PrefixExamples(split.data.items, split.train_starts, split.train_ends, max_length)
    if style == "sasrec":
        return WindowExamples(split.data.items, split.train_starts, split.train_ends, max_length, windows)
    raise ValueError(f"unknown example style {style!r}; choose 'sasrec' or 'recbole'")
