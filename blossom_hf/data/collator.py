"""Batch packing: right padding with 0 and truncation to the most recent ``max_history_length`` items.

Two ways in:

* :func:`pack_histories` builds a whole ``[B, L]`` batch from slices of one flat item array with a single
  numpy gather -- no Python list per example. The example datasets of :mod:`blossom_hf.data.examples`
  use it in ``__getitems__``, so a ``DataLoader`` gets a ready batch per step.
* :class:`SequenceCollator` is the ``data_collator`` handed to the ``Trainer``/``DataLoader``. It turns
  such packed numpy batches into tensors, and also accepts the usual list of per-example dicts
  (``{"input_ids": [...], "labels": ...}``), which it pads and truncates the same way.

By default a batch is only as wide as its longest history, rounded up to a multiple of 8
(``padding="longest"``, ``pad_to_multiple_of=8``), never wider than ``max_history_length``: a batch of short
histories does not carry a full window of padding. ``padding="max_length"`` keeps every batch
``max_history_length`` wide. The model compacts each batch to its longest history before the layers
either way, so both give the same outputs and losses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

PAD_ID = 0
#: Keys whose second dimension runs along the history (trimmed together with ``input_ids``).
SEQUENCE_KEYS = ("input_ids", "labels", "attention_mask")
Padding = Literal["longest", "max_length"]


def pack_histories(
    items: np.ndarray, starts: np.ndarray, ends: np.ndarray, max_length: int, pad_id: int = PAD_ID
) -> np.ndarray:
    """``[B, max_length]`` int64: row ``b`` holds ``items[starts[b]:ends[b]]``, keeping the last
    ``max_length`` of them, left-aligned (right padding with ``pad_id``)."""
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    starts = np.maximum(starts, ends - max_length)
    positions = starts[:, None] + np.arange(max_length, dtype=np.int64)[None, :]
    valid = positions < ends[:, None]
    if items.size == 0:
        return np.full(positions.shape, pad_id, dtype=np.int64)
    gathered = items[np.minimum(positions, items.size - 1)].astype(np.int64)
    return np.where(valid, gathered, pad_id)


def pad_sequences(
    sequences: Sequence[Sequence[int] | np.ndarray | torch.Tensor], max_length: int, pad_id: int = PAD_ID
) -> np.ndarray:
    """Right-pad (and truncate to the most recent ``max_length``) a list of variable-length sequences."""
    arrays = [np.asarray(s, dtype=np.int64).reshape(-1) for s in sequences]
    lengths = np.array([a.size for a in arrays], dtype=np.int64)
    flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    return pack_histories(flat, ends - lengths, ends, max_length, pad_id)


@dataclass
class SequenceCollator:
    """Turns examples into model inputs: ``input_ids`` ``[B, L]`` (right-padded with 0), ``labels``.

    Accepts either a packed batch (a mapping of numpy arrays, as returned by the example datasets'
    ``__getitems__``) or a list of per-example mappings with ``input_ids`` (a sequence, oldest first)
    and optionally ``labels`` (an int -> labels ``[B]``, or a sequence aligned with ``input_ids`` ->
    labels ``[B, L]``, padded with 0 = ignore). Sequences longer than ``max_history_length`` keep
    their most recent items (and the matching labels). Other keys are stacked when possible.

    Attributes:
        max_history_length: the window: the most recent items kept, and the widest batch.
        pad_id: the padding item id.
        padding: ``"longest"`` (default): ``L`` = the longest history in the batch, rounded up to
            ``pad_to_multiple_of`` and capped at ``max_history_length``; ``"max_length"``: always
            ``max_history_length`` (a packed batch keeps the width it came with).
        pad_to_multiple_of: rounding of ``L`` under ``padding="longest"`` (``None`` or 1: no rounding).
    """

    max_history_length: int
    pad_id: int = PAD_ID
    padding: Padding = "longest"
    pad_to_multiple_of: int | None = 8

    def __post_init__(self) -> None:
        if self.padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', not {self.padding!r}")
        if self.max_history_length < 1:
            raise ValueError(f"max_history_length must be >= 1, got {self.max_history_length}")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1 or None, got {self.pad_to_multiple_of}")

    def __call__(self, features: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if isinstance(features, Mapping):
            batch = {key: _to_tensor(value) for key, value in features.items()}
        else:
            batch = self._pad_examples(features)
        return self._trim(batch)

    def batch_width(self, longest: int, width: int) -> int:
        """``L`` for a batch whose longest history is ``longest`` and which is ``width`` wide now."""
        if self.padding == "max_length":
            return width
        multiple = self.pad_to_multiple_of or 1
        rounded = -(-max(longest, 1) // multiple) * multiple
        return min(rounded, width)

    def _pad_examples(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if len(features) == 0:
            raise ValueError("SequenceCollator got an empty batch")
        if "input_ids" not in features[0]:
            raise KeyError(f"SequenceCollator needs 'input_ids' in each example; got keys {list(features[0])}")
        batch: dict[str, torch.Tensor] = {
            "input_ids": torch.from_numpy(
                pad_sequences([f["input_ids"] for f in features], self.max_history_length, self.pad_id)
            )
        }
        for key in features[0]:
            if key == "input_ids":
                continue
            values = [f[key] for f in features]
            if key == "labels" and np.ndim(values[0]) == 1:
                batch[key] = torch.from_numpy(pad_sequences(values, self.max_history_length, 0))
            else:
                batch[key] = _to_tensor(np.asarray(values))
        return batch

    def _trim(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ids = batch.get("input_ids")
        if self.padding == "max_length" or ids is None or ids.ndim != 2 or ids.shape[1] == 0:
            return batch
        width = ids.shape[1]
        used = (ids != self.pad_id).any(dim=0)
        # right padding: the batch needs every column up to the last one holding a real item
        longest = int(used.nonzero().max()) + 1 if bool(used.any()) else 1
        keep = self.batch_width(longest, width)
        if keep == width:
            return batch
        for key in SEQUENCE_KEYS:
            value = batch.get(key)
            if value is not None and value.ndim == 2 and value.shape[1] == width:
                batch[key] = value[:, :keep].contiguous()
        return batch


def _to_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    array = np.asarray(value)
    if array.dtype.kind in "iu":
        array = array.astype(np.int64, copy=False)
    return torch.from_numpy(np.ascontiguousarray(array))
