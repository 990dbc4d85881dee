"""The SDPA backend ``attn_implementation="sdpa"`` (the default on every device): BlossomRec's two branches
(docs/MODEL.md, "Attention layer") through ``torch.nn.functional.scaled_dot_product_attention``.

Two layouts, chosen per call; both are checked against the eager reference (tests/test_attention_parity.py):

* gathered (training, histories longer than ``DENSE_MAX_LENGTH``, and the serving path's one-query last
  layer): each branch gathers its own key set per query, built by ``attention_patterns``
  (:func:`stis_key_index`, :func:`ltis_block_index`): STIS ``W + log2(L) + S`` keys, LTIS the own block and
  the n selected blocks. One SDPA call per branch with a small boolean mask; no ``L x L`` tensor, cost and
  memory ``L x ((n+1) b + W + log2 L)``. The g query heads of a kv head share a key set and form the "query
  length" of each small attention problem. The straight-through key scale ``1 + p - stopgrad(p)`` is
  applied to the gathered keys.
* dense-masked (inference at ``L <= DENSE_MAX_LENGTH``, when no gradient is needed): one SDPA call per
  branch over the whole history with a boolean mask per kv head (``[B, G, L, L]`` for LTIS, one shared
  ``[L, L]`` for STIS), never one per query head. Fewer, larger kernels: faster on a CPU at short
  histories (docs/BENCHMARKS_CPU.md measures the crossover).

Only the LTIS selection scores (``[B, G, L, L/b]``) grow faster than ``L``; the Triton backend avoids those
too. Computation runs in fp32 (inputs are upcast), as in every backend. Every reshape of an SDPA output is a
``reshape`` (CUDA kernels may return non-contiguous outputs).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Unpack

import torch
import torch.nn.functional as F

from .attention_patterns import (
    BlossomPattern,
    every_window_selected,
    ltis_block_index,
    ltis_select,
    query_is_real,
    stis_dense_mask,
    stis_key_index,
    stis_offsets,
)
from .registry import BlossomAttentionKwargs, register_attention_backend

__all__ = ["DENSE_MAX_LENGTH", "sdpa_blossom_attention", "sdpa_full_attention", "sdpa_attention_forward"]

#: Longest history for which inference uses the dense-masked layout, per device type (other types: "cuda").
DENSE_MAX_LENGTH: dict[str, int] = {"cpu": 256, "cuda": 1024}


def _gather_keys(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x [B, G, L, E]`` gathered at ``index [B|1, G|1, Q, K]`` -> ``[B, G, Q, K, E]`` (rows of E copied).

    One row lookup in the flattened ``[B*G*L, E]`` table (``F.embedding``, a contiguous-row gather), which is
    several times faster on a CPU than advanced indexing with three broadcast index tensors."""
    batch, groups, length, width = x.shape
    base = (torch.arange(batch, device=x.device).view(batch, 1, 1, 1) * groups
            + torch.arange(groups, device=x.device).view(1, groups, 1, 1)) * length
    flat_index = (base + index).expand(batch, groups, *index.shape[2:])
    return F.embedding(flat_index, x.reshape(batch * groups * length, width))


def _gather_blocks(x: torch.Tensor, block_index: torch.Tensor, block_size: int) -> torch.Tensor:
    """Whole blocks of ``b`` keys: ``x [B, G, L, D]`` at ``block_index [B, G, Q, NB]`` -> ``[B, G, Q, NB*b, D]``."""
    batch, groups, seq_len, head_dim = x.shape
    num_blocks = -(-seq_len // block_size)
    padded = F.pad(x, (0, 0, 0, num_blocks * block_size - seq_len))
    blocks = padded.reshape(batch, groups, num_blocks, block_size * head_dim)
    out = _gather_keys(blocks, block_index.clamp_min(0))  # [B, G, Q, NB, b*D]
    return out.reshape(batch, groups, block_index.shape[2], -1, head_dim)


def _grouped_queries(query: torch.Tensor, groups: int) -> torch.Tensor:
    """``[B, H, Q, D]`` -> ``[B, G, Q, g, D]`` (the g heads of a group as a short query axis)."""
    batch, heads, num_queries, head_dim = query.shape
    return query.reshape(batch, groups, heads // groups, num_queries, head_dim).transpose(2, 3)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, scaling: float) -> torch.Tensor:
    """q ``[B, G, Q, g, D]``, k/v ``[B, G, Q, K, D]``, valid ``[B|1, G|1, Q, K]`` -> ``[B, G, Q, g, D]``."""
    batch, groups, num_queries, g, head_dim = q.shape
    keys = k.shape[3]
    mask = valid.expand(batch, groups, num_queries, keys).reshape(batch * groups, num_queries, 1, keys)
    out = F.scaled_dot_product_attention(
        q.reshape(batch * groups, num_queries, g, head_dim),
        k.reshape(batch * groups, num_queries, keys, head_dim),
        v.reshape(batch * groups, num_queries, keys, head_dim),
        attn_mask=mask,
        scale=scaling,
    )
    return out.reshape(batch, groups, num_queries, g, head_dim)


def sdpa_blossom_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    compressed_key: torch.Tensor,
    gate: torch.Tensor,
    lengths: torch.Tensor,
    *,
    scaling: float,
    pattern: BlossomPattern,
    selected_blocks: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as :func:`attention_eager.eager_blossom_attention`."""
    needs_grad = torch.is_grad_enabled() and any(
        x.requires_grad for x in (query, key, value, compressed_key, gate))
    if needs_grad:
        return _gathered(query, key, value, compressed_key, gate, lengths, scaling, pattern, selected_blocks,
                         positions)
    seq_len = key.shape[2]
    if seq_len <= dense_max_length(query.device):
        out = _dense_inference(query, key, value, compressed_key, gate, lengths, scaling, pattern, selected_blocks,
                               positions)
    else:
        out = _gathered_inference(query, key, value, compressed_key, gate, lengths, scaling, pattern,
                                  selected_blocks, positions)
    real_query = query_is_real(lengths, seq_len, positions)[:, None, :, None]
    return torch.where(real_query, out, 0.0).to(query.dtype)


# ------------------------------------------------------------------------------------------------
# inference layouts (no gradient)
# ------------------------------------------------------------------------------------------------
def dense_max_length(device: torch.device) -> int:
    """Longest history for which inference on ``device`` uses the dense-masked layout (:data:`DENSE_MAX_LENGTH`)."""
    return DENSE_MAX_LENGTH.get(device.type, DENSE_MAX_LENGTH["cuda"])


def _inference_selection(query, compressed_key, lengths, seq_len, scaling, pattern, selected_blocks, positions):
    """``selected [B, G, Q, n]``, or ``None`` when the top-n keeps every eligible window of every query
    (:func:`attention_patterns.every_window_selected`): then the LTIS key set is every key ``<= t`` (causal)."""
    if selected_blocks is None and every_window_selected(seq_len, pattern):
        return None
    selected, _ = ltis_select(query, compressed_key, lengths, scaling, pattern, selected_blocks, positions,
                              with_probs=False)
    return selected


def _own_block_mask(seq_len: int, block_size: int, device: torch.device) -> torch.Tensor:
    """``[L, L]`` bool: key ``j`` lies in the block of query ``t`` and ``j <= t``."""
    t = torch.arange(seq_len, device=device)
    return (t[None, :] // block_size == t[:, None] // block_size) & (t[None, :] <= t[:, None])


@lru_cache(maxsize=64)
def _cached_table(builder, *args) -> torch.Tensor:
    with torch.inference_mode(False):  # an inference tensor could not be used later outside inference mode
        return builder(*args)


def _table(builder, *args) -> torch.Tensor:
    """A constant mask of ``(L, device)``: built once per key in eager mode, inside a traced graph every time."""
    return builder(*args) if torch.compiler.is_compiling() else _cached_table(builder, *args)


def _dense_inference(query, key, value, compressed_key, gate, lengths, scaling, pattern, selected_blocks,
                     positions):
    """Whole-history SDPA per branch, for every query or the ones at ``positions``. LTIS: causal (no mask over
    every position) when every eligible window is selected, else one boolean mask per kv head from the block
    selection; STIS: the cached ``[L, L]`` mask (its rows at ``positions``)."""
    batch, heads, num_queries, head_dim = query.shape
    groups, seq_len, block = key.shape[1], key.shape[2], pattern.block_size
    g = heads // groups
    q, k, v = query.float(), key.float(), value.float()
    stis = _table(stis_dense_mask, seq_len, pattern.stis_window, pattern.stis_num_sinks, query.device)
    if positions is not None:
        stis = stis[positions][:, None]  # [B, 1, Q, L]
    out_stis = F.scaled_dot_product_attention(q, k, v, attn_mask=stis, scale=scaling, enable_gqa=True)
    selected = _inference_selection(query, compressed_key, lengths, seq_len, scaling, pattern, selected_blocks,
                                    positions)
    if selected is None and positions is None:
        out_ltis = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=True)
    elif selected is None:
        causal = torch.arange(seq_len, device=query.device) <= positions[..., None]  # [B, Q, L]
        out_ltis = F.scaled_dot_product_attention(q, k, v, attn_mask=causal[:, None], scale=scaling,
                                                  enable_gqa=True)
    else:
        num_blocks = -(-seq_len // block)
        chosen = torch.zeros(batch, groups, num_queries, num_blocks + 1, dtype=torch.bool, device=query.device)
        chosen.scatter_(-1, torch.where(selected >= 0, selected, num_blocks), True)
        mask = chosen[..., :num_blocks, None].expand(-1, -1, -1, -1, block).reshape(batch, groups, num_queries, -1)
        own = _table(_own_block_mask, seq_len, block, query.device)
        mask = mask[..., :seq_len] | (own if positions is None else own[positions][:, None])
        out_ltis = F.scaled_dot_product_attention(
            q.reshape(batch * groups, g, num_queries, head_dim), k.reshape(batch * groups, 1, seq_len, head_dim),
            v.reshape(batch * groups, 1, seq_len, head_dim),
            attn_mask=mask.reshape(batch * groups, 1, num_queries, seq_len), scale=scaling, enable_gqa=True,
        ).reshape(batch, heads, num_queries, head_dim)
    gate = gate.float()
    return torch.addcmul(out_ltis * gate[..., 0:1], out_stis, gate[..., 1:2])


#: elements of the gathered ``[B, G, Q, K, 2D]`` key/value tile per chunk of queries in the no-gradient gathered
#: layout (bounds its memory at long histories: 64 histories of 4096 items would otherwise gather ~6 GB per layer)
INFERENCE_TILE_ELEMENTS = 1 << 21


def _gathered_inference(query, key, value, compressed_key, gate, lengths, scaling, pattern, selected_blocks,
                        positions):
    """One key set per query: LTIS (own block + selected blocks, whole blocks of ``b`` keys) and STIS (single
    keys), gathered for K and V together from one ``[B*G, L', 2D]`` table (viewed as blocks for LTIS, as rows for
    STIS); one SDPA call per branch over ``B*G*Q`` small problems of ``g`` queries. In chunks of queries."""
    batch, heads, num_queries, head_dim = query.shape
    groups, seq_len = key.shape[1], key.shape[2]
    b, n = pattern.block_size, pattern.num_selected_blocks
    if positions is None:
        positions = torch.arange(num_queries, device=query.device)[None, :]
    num_blocks = -(-seq_len // b)
    pad = (0, 0, 0, num_blocks * b - seq_len)
    tables = tuple(F.pad(x.float(), pad).reshape(batch * groups, num_blocks * b, head_dim).contiguous()
                   for x in (key, value))
    keys_per_query = (n + 1) * b + len(stis_offsets(pattern.stis_window, seq_len)) + min(pattern.stis_num_sinks,
                                                                                          seq_len)
    chunk = max(1, INFERENCE_TILE_ELEMENTS // max(1, batch * groups * keys_per_query * 2 * head_dim))
    if torch.compiler.is_compiling():
        chunk = num_queries
    outs = []
    for start in range(0, num_queries, chunk):
        end = min(start + chunk, num_queries)
        sel = None if selected_blocks is None else selected_blocks[:, :, start:end]
        pos = positions[:, start:end]
        selected = _inference_selection(query[:, :, start:end], compressed_key, lengths, seq_len, scaling, pattern,
                                        sel, pos.expand(batch, -1))
        outs.append(_gathered_chunk(query[:, :, start:end], tables, gate[:, :, start:end], pos, selected, seq_len,
                                    scaling, pattern))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def _gathered_chunk(query, tables, gate, positions, selected, seq_len, scaling, pattern):
    batch, heads, num_queries, head_dim = query.shape
    groups, padded_len = tables[0].shape[0] // batch, tables[0].shape[1]
    g, b = heads // groups, pattern.block_size
    rows = batch * groups * num_queries
    device = query.device
    t = positions[:, None, :, None]  # [B|1, 1, Q, 1]
    own = t // b
    if selected is None:  # the own block and the n blocks before it: every key <= t
        blocks = (own - torch.arange(pattern.num_selected_blocks + 1, device=device)).expand(batch, groups, -1, -1)
    else:
        blocks = torch.cat([own.expand(*selected.shape[:3], 1), selected], dim=-1)  # [B, G, Q, n+1]
    first = torch.arange(batch * groups, device=device).view(batch, groups, 1, 1)
    block_index = blocks.clamp_min(0) + first * (padded_len // b)
    key_pos = (blocks[..., None] * b + torch.arange(b, device=device)).flatten(-2)
    ltis_valid = (key_pos >= 0) & (key_pos <= t)  # selected blocks end before t; the own block stops at t
    stis, stis_valid = stis_key_index(seq_len, pattern.stis_window, pattern.stis_num_sinks, device,
                                      positions)  # [B|1, Q, Ks]
    stis_index = stis[:, None] + first * padded_len
    q = _grouped_queries(query.float(), groups).reshape(rows, g, head_dim)
    gate = _grouped_queries(gate.float(), groups).reshape(rows, g, 2)
    outs = []
    for index, valid, width in ((block_index, ltis_valid, b * head_dim), (stis_index, stis_valid[:, None], head_dim)):
        k, v = (F.embedding(index, table.view(-1, width)).view(rows, -1, head_dim) for table in tables)
        bias = torch.where(valid, 0.0, float("-inf")).expand(batch, groups, num_queries, -1).reshape(rows, 1, -1)
        logits = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scaling)  # [rows, g, K]: scaled, masked
        outs.append(torch.bmm(torch.softmax(logits, dim=-1), v))  # [rows, g, D]
    out = torch.addcmul(outs[0] * gate[..., 0:1], outs[1], gate[..., 1:2])
    return out.reshape(batch, groups, num_queries, g, head_dim).transpose(2, 3).reshape(batch, heads, num_queries,
                                                                                       head_dim)


# ------------------------------------------------------------------------------------------------
# training layout (differentiable)
# ------------------------------------------------------------------------------------------------
def _gathered(query, key, value, compressed_key, gate, lengths, scaling, pattern, selected_blocks, positions):
    """Per-query gathered key sets (any layout, differentiable)."""
    batch, heads, num_queries, head_dim = query.shape
    groups, seq_len = key.shape[1], key.shape[2]
    q = _grouped_queries(query.float(), groups)
    k, v = key.float(), value.float()

    # ---- STIS: window + power-of-two offsets + sinks ----
    stis_index, stis_valid = stis_key_index(seq_len, pattern.stis_window, pattern.stis_num_sinks, query.device,
                                            positions)
    stis_index, stis_valid = (stis_index[None, None], stis_valid[None, None]) if positions is None else (
        stis_index[:, None], stis_valid[:, None])
    out_stis = _attend(q, _gather_keys(k, stis_index), _gather_keys(v, stis_index), stis_valid, scaling)

    # ---- LTIS: own block c = t // b, then the n selected blocks; one joint softmax ----
    straight_through = pattern.straight_through and torch.is_grad_enabled() and any(
        x.requires_grad for x in (query, compressed_key))
    selected, selected_prob = ltis_select(query, compressed_key, lengths, scaling, pattern, selected_blocks,
                                          positions, with_probs=straight_through)
    blocks, valid = ltis_block_index(selected, seq_len, pattern.block_size, positions)  # [B, G, Q, n+1]
    k_sel = _gather_blocks(k, blocks, pattern.block_size)  # [B, G, Q, (n+1)b, D]
    if straight_through:
        # keys of selected block i are scaled by s = 1 + p_i - stopgrad(p_i) (== 1 in the forward pass)
        delta = (selected_prob - selected_prob.detach()).repeat_interleave(pattern.block_size, dim=-1)
        scale = torch.cat([torch.ones_like(delta[..., : pattern.block_size]), 1.0 + delta], dim=-1)
        k_sel = k_sel * scale[..., None]
    out_ltis = _attend(q, k_sel, _gather_blocks(v, blocks, pattern.block_size), valid, scaling)

    gate = _grouped_queries(gate.float(), groups)  # [B, G, Q, g, 2]
    out = gate[..., 0:1] * out_ltis + gate[..., 1:2] * out_stis  # [B, G, Q, g, D]
    out = out.transpose(2, 3).reshape(batch, heads, num_queries, head_dim)
    real_query = query_is_real(lengths, seq_len, positions)[:, None, :, None]
    return torch.where(real_query, out, 0.0).to(query.dtype)


def sdpa_full_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    lengths: torch.Tensor,
    *,
    scaling: float,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense causal attention (the SASRec baseline). With real items first, causal == causal over real keys."""
    seq_len = key.shape[2]
    if positions is None:
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling, enable_gqa=True)
    else:
        keys = torch.arange(seq_len, device=query.device)
        mask = (keys <= positions[..., None])[:, None]  # [B, 1, Q, L]
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, enable_gqa=True)
    real_query = query_is_real(lengths, seq_len, positions)[:, None, :, None]
    return torch.where(real_query, out, 0.0)


def sdpa_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[BlossomAttentionKwargs],
) -> tuple[torch.Tensor, None]:
    """Gathered or dense-masked key sets through ``scaled_dot_product_attention`` (module docstring)."""
    positions = kwargs.get("query_positions")
    if module.config.attention_type == "full":
        out = sdpa_full_attention(query, key, value, kwargs["lengths"], scaling=scaling, positions=positions)
    else:
        out = sdpa_blossom_attention(
            query, key, value, kwargs["compressed_key"], kwargs["gate"], kwargs["lengths"],
            scaling=scaling, pattern=kwargs["pattern"], positions=positions,
        )
    return out.transpose(1, 2).contiguous(), None


register_attention_backend(
    "sdpa", sdpa_attention_forward,
    description="per-query gathered key sets through scaled_dot_product_attention (linear memory)",
    query_subset=True,
)
