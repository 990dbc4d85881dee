"""The key sets of BlossomRec attention (docs MODEL.md), written once and shared by every backend.

Every function here assumes *compacted* histories: the model moves the real items of each row to the
front (positions ``0 .. length-1``, padding after them) before the first layer, so "position 0" is the
first real item, block boundaries count from it, and a real query ``t`` only ever sees keys ``j <= t``,
which are all real. Padded query rows (``t >= length``) must come out as exact zeros.

Notation (MODEL.md): ``b`` block size, ``l`` compression window, ``n`` selected blocks, ``W`` STIS
window, ``S`` sinks, ``M = L // b`` compression windows, ``g = H / G`` query heads per kv head.

* STIS key set of query ``t``: ``{t - d : d in offsets, t - d >= 0} | {first S positions <= t}`` with
  ``offsets = {0 .. W-1} | {1, 2, 4, 8, ...}`` (:func:`stis_offsets`, :func:`stis_key_index`).
* LTIS: window ``w`` covers positions ``[w*b - (l-b), w*b + b - 1]`` (:func:`ltis_window_keys`), ends at
  ``e_w = w*b + b - 1`` and is eligible for query ``t`` iff ``e_w < t`` (:func:`ltis_eligibility`).
  Selection (:func:`ltis_select`) ranks the group-averaged scores ``z̄`` (``p = softmax(z̄)`` is a
  strictly increasing function of ``z̄``, so the top-n of ``p`` is the top-n of ``z̄``); ties go to the
  larger (more recent) ``w``. The fine key set is the own block ``{c*b .. t}`` plus the selected blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

__all__ = [
    "BlossomPattern",
    "stis_offsets",
    "stis_key_index",
    "stis_dense_mask",
    "ltis_window_keys",
    "ltis_eligibility",
    "ltis_select",
    "ltis_key_index",
    "ltis_dense_mask",
    "masked_softmax",
    "query_is_real",
]


@dataclass(frozen=True)
class BlossomPattern:
    """The sparsity hyper-parameters every backend needs (a view of :class:`BlossomRecConfig`)."""

    block_size: int = 16
    compression_window: int = 32
    num_selected_blocks: int = 4
    stis_window: int = 8
    stis_num_sinks: int = 0
    straight_through: bool = True

    @classmethod
    def from_config(cls, config) -> BlossomPattern:
        return cls(
            block_size=config.ltis_block_size,
            compression_window=config.ltis_compression_window,
            num_selected_blocks=config.ltis_num_selected_blocks,
            stis_window=config.stis_window,
            stis_num_sinks=config.stis_num_sinks,
            straight_through=config.ltis_straight_through,
        )


# --------------------------------------------------------------------------------------------------
# STIS
# --------------------------------------------------------------------------------------------------
def stis_offsets(window: int, seq_len: int) -> list[int]:
    """Offsets ``t - j`` that STIS attends: the causal window ``0..W-1`` and the powers of two, < ``seq_len``."""
    offsets = set(range(min(window, seq_len)))
    power = 1
    while power < seq_len:
        offsets.add(power)
        power *= 2
    return sorted(offsets)


@lru_cache(maxsize=64)
def _stis_key_index_cpu(seq_len: int, window: int, num_sinks: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Built outside inference mode: a cached inference tensor could not be saved for a later backward.
    with torch.inference_mode(False):
        return _build_stis_key_index(seq_len, window, num_sinks)


def _build_stis_key_index(seq_len: int, window: int, num_sinks: int) -> tuple[torch.Tensor, torch.Tensor]:
    offsets = torch.tensor(stis_offsets(window, seq_len), dtype=torch.long)
    t = torch.arange(seq_len)
    off_keys = t[:, None] - offsets[None, :]  # [L, K_off]
    off_valid = off_keys >= 0
    sinks = torch.arange(min(num_sinks, seq_len))
    sink_keys = sinks[None, :].expand(seq_len, -1)  # [L, S]
    # A sink already reached through an offset is not counted twice (the key set is a set).
    covered = torch.isin(t[:, None] - sink_keys, offsets)
    sink_valid = (sink_keys <= t[:, None]) & ~covered
    index = torch.cat([off_keys, sink_keys], dim=1)
    valid = torch.cat([off_valid, sink_valid], dim=1)
    return index.clamp_min(0), valid


def stis_key_index(
    seq_len: int, window: int, num_sinks: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """STIS keys of every query as a gather table: ``index [L, K]`` (long) and ``valid [L, K]`` (bool).

    ``K = len(stis_offsets) + num_sinks``; invalid slots point at position 0 and must be masked.
    """
    index, valid = _stis_key_index_cpu(int(seq_len), int(window), int(num_sinks))
    return index.to(device), valid.to(device)


def stis_dense_mask(seq_len: int, window: int, num_sinks: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The STIS key set as a dense ``[L, L]`` boolean mask (True = attend), built from the gather table."""
    index, valid = stis_key_index(seq_len, window, num_sinks, device)
    return _scatter_mask(index, valid, seq_len)


# --------------------------------------------------------------------------------------------------
# LTIS
# --------------------------------------------------------------------------------------------------
def query_is_real(lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    """``[B, L]`` bool: position ``t`` holds a real item (compacted layout)."""
    return torch.arange(seq_len, device=lengths.device)[None, :] < lengths[:, None]


def ltis_window_keys(key: torch.Tensor, lengths: torch.Tensor, pattern: BlossomPattern) -> torch.Tensor:
    """Keys of each compression window: ``[B, G, M, l, D]`` from ``key [B, G, L, D]``.

    Window ``w`` holds positions ``w*b - (l-b) .. w*b + b - 1``; positions before 0 and padded positions
    contribute zero vectors.
    """
    batch, groups, seq_len, head_dim = key.shape
    b, l = pattern.block_size, pattern.compression_window
    num_windows = seq_len // b
    if num_windows == 0:
        return key.new_zeros(batch, groups, 0, l, head_dim)
    real = query_is_real(lengths, seq_len)[:, None, :, None]
    key = key.masked_fill(~real, 0.0)
    covered = key[:, :, : num_windows * b]
    padded = torch.nn.functional.pad(covered, (0, 0, l - b, 0))  # [B, G, (l-b) + M*b, D]
    windows = padded.unfold(2, l, b)  # [B, G, M, D, l]
    return windows.permute(0, 1, 2, 4, 3)


def ltis_eligibility(lengths: torch.Tensor, seq_len: int, block_size: int) -> torch.Tensor:
    """``[B, L, M]`` bool: window ``w`` is eligible for query ``t``.

    Eligible iff the window ends strictly before ``t`` (``w*b + b - 1 < t``), its selection block holds
    at least one real item, and ``t`` itself is real.
    """
    num_windows = seq_len // block_size
    device = lengths.device
    t = torch.arange(seq_len, device=device)
    w = torch.arange(num_windows, device=device)
    ends_before = (w[None, :] * block_size + block_size - 1) < t[:, None]  # [L, M]
    block_real = (w[None, :] * block_size) < lengths[:, None]  # [B, M]
    real_query = query_is_real(lengths, seq_len)  # [B, L]
    return ends_before[None] & block_real[:, None, :] & real_query[:, :, None]


def ltis_scores(query: torch.Tensor, compressed_key: torch.Tensor, scaling: float) -> torch.Tensor:
    """Group-averaged compression scores ``z̄ [B, G, L, M]`` (fp32).

    ``z̄[γ, t, w] = mean over the g query heads of group γ of τ <q[h, t], k~[γ, w]>``, computed as
    ``τ <mean_h q[h, t], k~[γ, w]>`` (the same number).
    """
    batch, heads, seq_len, head_dim = query.shape
    groups = compressed_key.shape[1]
    q_mean = query.float().view(batch, groups, heads // groups, seq_len, head_dim).mean(dim=2)
    return scaling * torch.matmul(q_mean, compressed_key.float().transpose(-1, -2))


def ltis_select(
    query: torch.Tensor,
    compressed_key: torch.Tensor,
    lengths: torch.Tensor,
    scaling: float,
    pattern: BlossomPattern,
    selected_blocks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-n block selection of MODEL.md (steps 3-5).

    Returns ``selected [B, G, L, n]`` (long, ``-1`` = no block; slots sorted by decreasing score) and
    ``selected_prob [B, G, L, n]`` (fp32 ``p`` of each selected window, differentiable, 0 for empty slots).
    ``selected_blocks`` overrides the selection (used to compare backends on one selection); its
    probabilities are still taken from this function's ``p``.
    """
    batch, groups, num_windows, _ = compressed_key.shape
    seq_len = query.shape[2]
    n = pattern.num_selected_blocks
    eligible = ltis_eligibility(lengths, seq_len, pattern.block_size)[:, None]  # [B, 1, L, M]
    if num_windows == 0:
        empty = torch.full((batch, groups, seq_len, n), -1, dtype=torch.long, device=query.device)
        return empty, torch.zeros(empty.shape, dtype=torch.float32, device=query.device)
    z = ltis_scores(query, compressed_key, scaling)
    probs = masked_softmax(z, eligible)  # [B, G, L, M]
    if selected_blocks is None:
        ranked = z.masked_fill(~eligible, float("-inf"))
        # Stable descending sort over w reversed: among equal scores the larger w comes first.
        order = torch.sort(ranked.flip(-1), dim=-1, descending=True, stable=True).indices
        order = (num_windows - 1) - order[..., :n]
        top = torch.gather(ranked, -1, order)
        selected = torch.where(torch.isfinite(top), order, torch.full_like(order, -1))
        if selected.shape[-1] < n:
            pad = torch.full((*selected.shape[:-1], n - selected.shape[-1]), -1, dtype=torch.long,
                             device=selected.device)
            selected = torch.cat([selected, pad], dim=-1)
    else:
        selected = selected_blocks.to(device=query.device, dtype=torch.long)
    selected_prob = torch.gather(probs, -1, selected.clamp_min(0)) * (selected >= 0)
    return selected, selected_prob


def ltis_key_index(selected: torch.Tensor, seq_len: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LTIS fine keys of every query as a gather table.

    Returns ``index [B, G, L, (n+1)*b]`` and ``valid`` of the same shape. Slots ``0..b-1`` are the own
    block ``c*b + i`` (valid when ``<= t``), then ``b`` slots per selected block (valid when selected).
    """
    device = selected.device
    t = torch.arange(seq_len, device=device)
    i = torch.arange(block_size, device=device)
    own = (t // block_size * block_size)[:, None] + i[None, :]  # [L, b]
    own_valid = own <= t[:, None]
    sel = selected[..., None] * block_size + i  # [B, G, L, n, b]
    sel_valid = (selected >= 0)[..., None].expand_as(sel)
    batch, groups = selected.shape[:2]
    index = torch.cat([own.expand(batch, groups, -1, -1), sel.flatten(-2)], dim=-1)
    valid = torch.cat([own_valid.expand(batch, groups, -1, -1), sel_valid.flatten(-2)], dim=-1)
    return index.clamp(0, seq_len - 1), valid


def ltis_dense_mask(selected: torch.Tensor, seq_len: int, block_size: int) -> torch.Tensor:
    """The LTIS fine key set as a dense ``[B, G, L, L]`` boolean mask (True = attend)."""
    index, valid = ltis_key_index(selected, seq_len, block_size)
    return _scatter_mask(index, valid, seq_len)


def _scatter_mask(index: torch.Tensor, valid: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Dense ``[..., L]`` mask from a gather table; invalid slots go to a spare column that is dropped."""
    mask = torch.zeros(*index.shape[:-1], seq_len + 1, dtype=torch.bool, device=index.device)
    mask.scatter_(-1, torch.where(valid, index, seq_len), True)
    return mask[..., :seq_len]


# --------------------------------------------------------------------------------------------------
# numerics shared by the PyTorch backends
# --------------------------------------------------------------------------------------------------
def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim restricted to ``mask``; rows with no allowed entry give exact zeros (no NaN)."""
    lowest = torch.finfo(logits.dtype).min
    masked = logits.masked_fill(~mask, lowest)
    row_max = masked.amax(dim=-1, keepdim=True).detach()
    weights = torch.exp(masked - row_max) * mask
    return weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(logits.dtype).tiny)
