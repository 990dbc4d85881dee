"""Input handling of BlossomRec (docs/MODEL.md, "Padding"): the checks on ``input_ids``, the compaction that moves
the real items of every row to the front and keeps the most recent ``max_history_length``, and the padding of
index lists into a batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["CompactedBatch", "validate_input_ids", "checked_input_ids", "compact_histories", "padded_batch"]


@dataclass
class CompactedBatch:
    """Real items moved to the front of each row and cut to the window.

    ``input_ids [B, Lc]``, ``lengths [B]``, ``source [B, Lc]`` (input position of each slot, -1 at padding)
    and ``valid [B, Lc]``.
    """

    input_ids: torch.Tensor
    lengths: torch.Tensor
    source: torch.Tensor
    valid: torch.Tensor


def validate_input_ids(input_ids: torch.Tensor, vocab_size: int, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Check shapes, dtype, id range and padding; return ``real [B, L]`` (bool). Raises ValueError/TypeError."""
    return checked_input_ids(input_ids, vocab_size, attention_mask)[0]


def checked_input_ids(input_ids: torch.Tensor, vocab_size: int,
                      attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """:func:`validate_input_ids`, also returning the longest row's number of real items (what
    :func:`compact_histories` needs as ``longest``). The data-dependent checks and that count reach the host in one
    transfer (one wait for the device per forward, not one per check); a failed check is then located exactly."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor of item indices, got {type(input_ids).__name__}")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must hold integer item indices, got dtype {input_ids.dtype}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape [batch, length], got {tuple(input_ids.shape)}")
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)})")
    mask = None
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(input_ids.shape):
            shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask)
            raise ValueError(f"attention_mask has shape {shape} but input_ids has shape {tuple(input_ids.shape)}")
        mask = attention_mask.to(input_ids.device) != 0
    input_ids = input_ids.long()  # uint8/int16 ids would wrap around in the comparison with vocab_size
    bad = (input_ids < 0) | (input_ids >= vocab_size)
    real = input_ids != 0
    counts = real.sum(dim=1)
    facts = [bad.any(), (counts == 0).any(), counts.max()]
    if mask is not None:
        facts.append((mask != real).any())
    any_bad, any_empty, longest, *disagrees = torch.stack([f.long() for f in facts]).tolist()
    if any_bad:
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"item index {int(input_ids[row, col])} at row {row}, position {col} is outside the vocabulary "
            f"[0, {vocab_size}) (0 = padding)"
        )
    if any_empty:
        rows = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(f"empty history (only padding id 0) at row(s) {rows[:10]}")
    if disagrees and disagrees[0]:
        row = int((mask != real).any(dim=1).nonzero()[0])
        raise ValueError(
            f"attention_mask disagrees with the padding id 0 of input_ids at row {row}: a position is real "
            "exactly when its item id is not 0"
        )
    return real, int(longest)


def compact_histories(input_ids: torch.Tensor, real: torch.Tensor, window: int, static: bool = False,
                      longest: int | None = None) -> CompactedBatch:
    """Move real items to the front (stable) and keep the most recent ``window`` of each row.

    The compacted width is the longest kept history (eager; ``longest``, the most real items of a row, saves reading
    it from the device where the caller has it: :func:`checked_input_ids`), or ``min(L, window)`` with
    ``static=True`` (no data-dependent shape: used under ``torch.compile``/``torch.export``; the extra slots are
    padding).
    """
    batch, in_len = input_ids.shape
    device = input_ids.device
    total = real.sum(dim=1)
    # real items first, each group in input order: the sort keys are unique, so no stable sort is needed
    # (aten.sort.stable has no ONNX form)
    key = torch.where(real, 0, in_len) + torch.arange(in_len, device=device)
    order = torch.argsort(key, dim=1)
    drop = (total - window).clamp_min(0)
    lengths = total - drop
    if static:
        out_len = min(in_len, window)
    else:
        out_len = min(longest, window) if longest is not None else int(lengths.max())
    slots = torch.arange(out_len, device=device)[None, :]
    valid = slots < lengths[:, None]
    source = torch.gather(order, 1, (slots + drop[:, None]).clamp_max(in_len - 1))
    ids = torch.where(valid, torch.gather(input_ids, 1, source), 0)
    return CompactedBatch(ids, lengths, torch.where(valid, source, -1), valid)


def padded_batch(rows: list[list[int]]) -> torch.Tensor:
    """Right-padded ``[len(rows), longest]`` long tensor of index lists (0 = padding)."""
    ids = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return ids
