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

from typing import Unpack

import torch
import torch.nn.functional as F

from .attention_patterns import (
    BlossomPattern,
    ltis_block_index,
    ltis_dense_mask,
    ltis_select,
    query_is_real,
    stis_dense_mask,
    stis_key_index,
    stis_offsets,
)
from .registry import BlossomAttentionKwargs, register_attention_backend

__all__ = ["DENSE_MAX_LENGTH", "sdpa_blossom_attention", "sdpa_full_attention", "sdpa_attention_forward"]

#: Longest history for which inference uses the dense-masked layout (CPU and GPU).
DENSE_MAX_LENGTH = 512


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
    if positions is None and query.shape[2] <= DENSE_MAX_LENGTH:
        return _dense_masked(query, key, value, compressed_key, gate, lengths, scaling, pattern, selected_blocks)
    return _gathered_inference(query, key, value, compressed_key, gate, lengths, scaling, pattern, selected_blocks,
                               positions)


#: elements of the gathered ``[B, G, Q, K, D]`` key tile per chunk of queries in the no-gradient gathered layout
#: (bounds its memory at long histories: 64 histories of 4096 items would otherwise gather ~6 GB per layer)
INFERENCE_TILE_ELEMENTS = 1 << 24


def _gathered_inference(query, key, value, compressed_key, gate, lengths, scaling, pattern, selected_blocks,
                        positions):
    """No-gradient gathered layout, in chunks of queries of at most ``INFERENCE_TILE_ELEMENTS`` gathered keys."""
    batch, heads, num_queries, head_dim = query.shape
    groups, seq_len = key.shape[1], key.shape[2]
    keys_per_query = (pattern.num_selected_blocks + 1) * pattern.block_size + len(
        stis_offsets(pattern.stis_window, seq_len)) + min(pattern.stis_num_sinks, seq_len)
    chunk = max(1, INFERENCE_TILE_ELEMENTS // max(1, batch * groups * keys_per_query * head_dim))
    if torch.compiler.is_compiling() or chunk >= num_queries:
        return _gathered(query, key, value, compressed_key, gate, lengths, scaling, pattern, selected_blocks,
                         positions)
    if positions is None:
        positions = torch.arange(num_queries, device=query.device)[None, :]
    outs = []
    for start in range(0, num_queries, chunk):
        end = min(start + chunk, num_queries)
        sel = None if selected_blocks is None else selected_blocks[:, :, start:end]
        outs.append(_gathered(query[:, :, start:end], key, value, compressed_key, gate[:, :, start:end], lengths,
                              scaling, pattern, sel, positions[:, start:end]))
    return torch.cat(outs, dim=2)


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


def _dense_masked(query, key, value, compressed_key, gate, lengths, scaling, pattern, selected_blocks):
    """Inference layout: whole-history SDPA per branch with a boolean mask per kv head."""
    batch, heads, seq_len, head_dim = query.shape
    groups = key.shape[1]
    g = heads // groups
    q = query.float().reshape(batch * groups, g, seq_len, head_dim)
    k = key.float().reshape(batch * groups, 1, seq_len, head_dim).expand(-1, g, -1, -1)
    v = value.float().reshape(batch * groups, 1, seq_len, head_dim).expand(-1, g, -1, -1)
    selected, _ = ltis_select(query, compressed_key, lengths, scaling, pattern, selected_blocks, with_probs=False)
    ltis_mask = ltis_dense_mask(selected, seq_len, pattern.block_size).reshape(batch * groups, 1, seq_len, seq_len)
    stis_mask = stis_dense_mask(seq_len, pattern.stis_window, pattern.stis_num_sinks, query.device)
    out_ltis = F.scaled_dot_product_attention(q, k, v, attn_mask=ltis_mask, scale=scaling)
    out_stis = F.scaled_dot_product_attention(q, k, v, attn_mask=stis_mask, scale=scaling)
    gate = gate.float()
    out = gate[..., 0:1] * out_ltis.reshape(batch, heads, seq_len, head_dim) + gate[..., 1:2] * out_stis.reshape(
        batch, heads, seq_len, head_dim)
    real_query = query_is_real(lengths, seq_len)[:, None, :, None]
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
