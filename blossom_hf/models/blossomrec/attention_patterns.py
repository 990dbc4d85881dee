"""The key sets of BlossomRec attention (docs/MODEL.md, "LTIS" and "STIS"), written once and shared by every
backend.

Every function here assumes *compacted* histories: the model moves the real items of each row to the
front (positions ``0 .. length-1``, padding after them) before the first layer, so "position 0" is the
first real item, block boundaries count from it, and a real query ``t`` only ever sees keys ``j <= t``,
which are all real. Padded query rows (``t >= length``) must come out as exact zeros.

Notation (docs/MODEL.md, "Symbols"): ``b`` block size, ``l`` compression window, ``n`` selected blocks, ``W`` STIS
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
    "ltis_scores",
    "every_window_selected",
    "ltis_select",
    "ltis_top_windows",
    "ltis_block_index",
    "ltis_key_index",
    "ltis_dense_mask",
    "ltis_own_block_mask",
    "ltis_every_eligible",
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


def _stis_table(
    positions: torch.Tensor, window: int, num_sinks: int, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """STIS gather table of the queries at ``positions [..., Q]``: ``index, valid [..., Q, K]``."""
    offsets = torch.tensor(stis_offsets(window, seq_len), dtype=torch.long, device=positions.device)
    t = positions[..., None]
    off_keys = t - offsets  # [..., Q, K_off]
    off_valid = off_keys >= 0
    sinks = torch.arange(min(num_sinks, seq_len), device=positions.device)
    sink_keys = sinks.expand(*positions.shape, -1)  # [..., Q, S]
    # A sink already reached through an offset is not counted twice (the key set is a set).
    covered = ((t - sink_keys)[..., None] == offsets).any(dim=-1)
    sink_valid = (sink_keys <= t) & ~covered
    index = torch.cat([off_keys, sink_keys], dim=-1)
    valid = torch.cat([off_valid, sink_valid], dim=-1)
    return index.clamp_min(0), valid


@lru_cache(maxsize=64)
def _stis_key_index_cached(seq_len: int, window: int, num_sinks: int,
                           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Built outside inference mode: a cached inference tensor could not be saved for a later backward.
    with torch.inference_mode(False):
        return _stis_table(torch.arange(seq_len, device=device), window, num_sinks, seq_len)


def stis_key_index(
    seq_len: int,
    window: int,
    num_sinks: int,
    device: torch.device | str = "cpu",
    positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """STIS keys as a gather table: ``index`` (long) and ``valid`` (bool), ``[L, K]`` for every query, or
    ``[..., Q, K]`` for the queries at ``positions [..., Q]`` (the serving path scores one query per row).

    ``K = len(stis_offsets) + num_sinks``; invalid slots point at position 0 and must be masked.
    """
    if positions is not None:
        return _stis_table(positions, int(window), int(num_sinks), int(seq_len))
    if torch.compiler.is_compiling():  # no Python-side cache inside a traced graph
        return _stis_table(torch.arange(seq_len, device=device), int(window), int(num_sinks), int(seq_len))
    return _stis_key_index_cached(int(seq_len), int(window), int(num_sinks), torch.device(device))


def stis_dense_mask(
    seq_len: int,
    window: int,
    num_sinks: int,
    device: torch.device | str = "cpu",
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """The STIS key set as a dense boolean mask (True = attend): ``[L, L]``, or ``[..., Q, L]`` at ``positions``."""
    index, valid = stis_key_index(seq_len, window, num_sinks, device, positions)
    return _scatter_mask(index, valid, seq_len)


# --------------------------------------------------------------------------------------------------
# LTIS
# --------------------------------------------------------------------------------------------------
def _positions(seq_len: int, device: torch.device, positions: torch.Tensor | None) -> torch.Tensor:
    """Query positions ``[B|1, Q]``: the given ones, or every position ``0..L-1`` as ``[1, L]``."""
    return torch.arange(seq_len, device=device)[None, :] if positions is None else positions


def query_is_real(lengths: torch.Tensor, seq_len: int, positions: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, L]`` (or ``[B, Q]`` at ``positions``) bool: the query holds a real item (compacted layout)."""
    return _positions(seq_len, lengths.device, positions) < lengths[:, None]


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


def ltis_eligibility(
    lengths: torch.Tensor, seq_len: int, block_size: int, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """``[B, Q, M]`` bool (``Q = L`` without ``positions``): window ``w`` is eligible for query ``t``.

    Eligible iff the window ends strictly before ``t`` (``w*b + b - 1 < t``), its selection block holds
    at least one real item, and ``t`` itself is real.
    """
    num_windows = seq_len // block_size
    device = lengths.device
    t = _positions(seq_len, device, positions)  # [B|1, Q]
    w = torch.arange(num_windows, device=device)
    # w*b + b - 1 < t  <=>  w < t // b (integers); a real query t < length then also has block w real
    # (w*b < (t // b) * b <= t < length), so one comparison and the real-query test suffice.
    limit = torch.where(t < lengths[:, None], t // block_size, 0)  # [B, Q]
    return w < limit[..., None]


def ltis_scores(query: torch.Tensor, compressed_key: torch.Tensor, scaling: float) -> torch.Tensor:
    """Group-averaged compression scores ``z̄ [B, G, L, M]`` (fp32).

    ``z̄[γ, t, w] = mean over the g query heads of group γ of τ <q[h, t], k~[γ, w]>``, computed as
    ``τ <mean_h q[h, t], k~[γ, w]>`` (the same number).
    """
    batch, heads, seq_len, head_dim = query.shape
    groups = compressed_key.shape[1]
    q_mean = query.float().view(batch, groups, heads // groups, seq_len, head_dim).mean(dim=2)
    return scaling * torch.matmul(q_mean, compressed_key.float().transpose(-1, -2))


def ltis_top_windows(ranked: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the ``n`` largest entries of ``ranked [..., M]`` (``-inf`` = ineligible), by decreasing value,
    ties to the larger index; ``-1`` where fewer than ``n`` entries are finite.

    CPU tensors in eager mode, ``n <= 16``: ``n`` rounds of ``max`` over ``w`` reversed (``max`` returns the first
    of equal maxima, i.e. the larger ``w``), the winner set to ``-inf`` after each round: the rule exactly, a few
    passes over the scores and no sort (``torch.topk`` of 5 of 256 costs 1-2 us per row on a CPU). Other devices
    and larger ``n``: a stable sort over ``w`` reversed (one kernel on a GPU, where the rounds' ~20 small launches
    cost more host time than the sort costs GPU time in host-bound calls; the sdpa backend's GPU-bound dense layout
    takes rounds of ``argmax`` instead, ``sdpa_inference._top_blocks``). In traced graphs top-k over ``w`` reversed.
    """
    num_windows = ranked.shape[-1]
    k = min(n, num_windows)
    if torch.compiler.is_compiling():
        # Traced graphs (torch.compile/export, ONNX) use top-k over w reversed: ONNX's TopK puts the lower index
        # first among equal values, i.e. the larger w (aten.sort.stable has no ONNX form).
        order = (num_windows - 1) - ranked.flip(-1).topk(k, dim=-1).indices
    elif _max_rounds(ranked, k):
        selected, order = _top_rounds(ranked.flip(-1), k), None
    else:
        order = (num_windows - 1) - torch.sort(ranked.flip(-1), dim=-1, descending=True, stable=True).indices[..., :k]
    if order is not None:
        top_values = torch.gather(ranked, -1, order)
        selected = torch.where(torch.isfinite(top_values), order, -1)
    if selected.shape[-1] < n:
        pad = torch.full((*selected.shape[:-1], n - selected.shape[-1]), -1, dtype=torch.long,
                         device=selected.device)
        selected = torch.cat([selected, pad], dim=-1)
    return selected


def _max_rounds(ranked: torch.Tensor, k: int) -> bool:
    """Whether :func:`ltis_top_windows` takes ``k`` rounds of ``max`` (CPU, ``k <= 16``) rather than the stable sort."""
    return 0 < k <= 16 and ranked.device.type == "cpu"


def _top_rounds(flipped: torch.Tensor, k: int) -> torch.Tensor:
    """Top-``k`` positions (in the unflipped order) of ``flipped`` (scores over ``w`` reversed, overwritten): ``k``
    rounds of ``max`` (the first of equal maxima, i.e. the larger ``w``), the winner set to ``-inf``; ``-1`` where
    the winner is not finite."""
    last = flipped.shape[-1] - 1
    slots = []
    for _ in range(k):
        value, index = flipped.max(dim=-1, keepdim=True)
        slots.append(torch.where(torch.isfinite(value), last - index, -1))
        flipped.scatter_(-1, index, float("-inf"))
    return torch.cat(slots, dim=-1)


def every_window_selected(seq_len: int, pattern: BlossomPattern) -> bool:
    """True when no query of a ``seq_len``-key history has more than ``n`` eligible windows, so the top-n keeps
    every eligible one whatever the scores: query ``t`` has at most ``t // b`` (windows ending before ``t``)."""
    return (max(int(seq_len), 1) - 1) // pattern.block_size <= pattern.num_selected_blocks


def ltis_select(
    query: torch.Tensor,
    compressed_key: torch.Tensor,
    lengths: torch.Tensor,
    scaling: float,
    pattern: BlossomPattern,
    selected_blocks: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    with_probs: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Top-n block selection of docs/MODEL.md ("LTIS", steps 3-5).

    Returns ``selected [B, G, Q, n]`` (long, ``-1`` = no block; slots sorted by decreasing score) and
    ``selected_prob [B, G, Q, n]`` (fp32 ``p`` of each selected window, differentiable, 0 for empty slots).
    ``query [B, H, Q, D]`` holds every position (``Q = L``) or the queries at ``positions [B, Q]``; the key
    length ``L`` is read from ``compressed_key`` (``M = L // b`` windows) and ``lengths``.
    ``selected_blocks`` overrides the selection (used to compare backends on one selection); its
    probabilities are still taken from this function's ``p``. ``with_probs=False`` skips ``p`` (returns ``None``
    for it): inference needs only the selection.
    """
    batch, groups, num_windows, _ = compressed_key.shape
    num_queries = query.shape[2]
    seq_len = num_queries if positions is None else num_windows * pattern.block_size
    n = pattern.num_selected_blocks
    if num_windows == 0:
        empty = torch.full((batch, groups, num_queries, n), -1, dtype=torch.long, device=query.device)
        return empty, torch.zeros(empty.shape, dtype=torch.float32, device=query.device) if with_probs else None
    eligible = ltis_eligibility(lengths, seq_len, pattern.block_size, positions)[:, None]  # [B, 1, Q, M]
    z = ltis_scores(query, compressed_key, scaling)
    if selected_blocks is None:
        selected = ltis_top_windows(z.masked_fill(~eligible, float("-inf")), n)
    else:
        selected = selected_blocks.to(device=query.device, dtype=torch.long)
    if not with_probs:
        return selected, None
    probs = masked_softmax(z, eligible)  # [B, G, Q, M]
    selected_prob = torch.gather(probs, -1, selected.clamp_min(0)) * (selected >= 0)
    return selected, selected_prob


def ltis_block_index(
    selected: torch.Tensor, seq_len: int, block_size: int, positions: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """LTIS fine keys of every query, block by block.

    Returns ``blocks [B, G, Q, n+1]`` (the own block ``c = t // b`` first, then the selected blocks; ``-1``
    = none) and ``valid [B, G, Q, (n+1)*b]``: key ``i`` of block slot ``s`` is attended. Own-block keys
    ``c*b + i`` are valid when ``<= t``, keys of a selected block when the slot holds a block.
    """
    device = selected.device
    t = _positions(seq_len, device, positions)[:, None, :, None]  # [B|1, 1, Q, 1]
    i = torch.arange(block_size, device=device)
    own = t // block_size  # [B|1, 1, Q, 1]
    batch, groups, num_queries = selected.shape[:3]
    blocks = torch.cat([own.expand(batch, groups, num_queries, 1), selected], dim=-1)
    own_valid = (own * block_size + i) <= t  # [B|1, 1, Q, b]
    sel_valid = (selected >= 0).repeat_interleave(block_size, dim=-1)  # [B, G, Q, n*b]
    valid = torch.cat([own_valid.expand(batch, groups, num_queries, block_size), sel_valid], dim=-1)
    return blocks, valid


def ltis_key_index(
    selected: torch.Tensor, seq_len: int, block_size: int, positions: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """LTIS fine keys of every query as a gather table.

    Returns ``index [B, G, Q, (n+1)*b]`` and ``valid`` of the same shape. Slots ``0..b-1`` are the own
    block ``c*b + i`` (valid when ``<= t``), then ``b`` slots per selected block (valid when selected).
    """
    blocks, valid = ltis_block_index(selected, seq_len, block_size, positions)
    i = torch.arange(block_size, device=selected.device)
    index = (blocks[..., None] * block_size + i).flatten(-2)
    return index.clamp(0, seq_len - 1), valid


def ltis_dense_mask(
    selected: torch.Tensor, seq_len: int, block_size: int, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """The LTIS fine key set as a dense ``[B, G, Q, L]`` boolean mask (True = attend): the keys of the selected
    blocks (one flag per block, expanded to its ``b`` keys) or the own block's keys ``c*b .. t``
    (:func:`ltis_own_block_mask`)."""
    num_blocks = -(-seq_len // block_size)
    chosen = torch.zeros(*selected.shape[:-1], num_blocks + 1, dtype=torch.bool, device=selected.device)
    chosen.scatter_(-1, torch.where(selected >= 0, selected, num_blocks), True)  # -1 -> a spare column
    keys = chosen[..., :num_blocks, None].expand(*chosen.shape[:-1], num_blocks, block_size)
    keys = keys.reshape(*chosen.shape[:-1], num_blocks * block_size)[..., :seq_len]
    own_block = ltis_own_block_mask(seq_len, block_size, selected.device, positions)
    return keys | (own_block if positions is None else own_block[:, None])  # [L, L] or [B|1, 1, Q, L]


def ltis_own_block_mask(
    seq_len: int, block_size: int, device: torch.device | str = "cpu", positions: torch.Tensor | None = None
) -> torch.Tensor:
    """The own-block part of the LTIS key set, keys ``c*b .. t`` of query ``t`` (``c = t // b``): ``[L, L]`` bool,
    or ``[B|1, Q, L]`` at ``positions``."""
    t = _positions(seq_len, device, positions)[..., None]  # [B|1, Q, 1]
    j = torch.arange(seq_len, device=device)
    own = (j // block_size == t // block_size) & (j <= t)
    return own[0] if positions is None else own


def ltis_every_eligible(
    seq_len: int, pattern: BlossomPattern, device: torch.device | str = "cpu", positions: torch.Tensor | None = None
) -> torch.Tensor:
    """The selection ``[B|1, 1, Q, n]`` when every eligible window is selected (:func:`every_window_selected`):
    the ``n`` blocks before the own block, ``-1`` below block 0. Equals :func:`ltis_select` then, for any scores
    (up to the order of the slots)."""
    t = _positions(seq_len, device, positions)[:, None, :, None]
    blocks = t // pattern.block_size - 1 - torch.arange(pattern.num_selected_blocks, device=device)
    return blocks.clamp_min(-1)


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
