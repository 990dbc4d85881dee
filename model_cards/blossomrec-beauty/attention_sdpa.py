"""The SDPA backend: BlossomRec's two branches through ``torch.nn.functional.scaled_dot_product_attention``.

Two layouts, chosen per call; both are checked against the eager reference (tests/test_attention_parity.py):

* gathered (training, and any history longer than ``DENSE_MAX_LENGTH``): each branch gathers its own key
  set per query — STIS ``W + log2(L) + S`` keys, LTIS the own block and the n selected blocks — and runs one
  SDPA call with a small boolean mask. No ``L x L`` tensor, memory linear in ``L``; the g query heads of
  a kv head share a key set and form the "query length" of each small attention problem. The
  straight-through key scale ``1 + p - stopgrad(p)`` is applied to the gathered keys.
* dense-masked (inference at ``L <= DENSE_MAX_LENGTH``, when no gradient is needed): one SDPA call per
  branch over the whole history with a boolean mask per kv head (``[B, G, L, L]`` for LTIS, one shared
  ``[L, L]`` for STIS), never one per query head. Faster on a CPU for the usual windows (50-200).

Only the LTIS selection scores (``[B, G, L, L/b]``) grow faster than ``L``; the Triton backend avoids those
too. Computation runs in fp32 (inputs are upcast), as in every backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention_patterns import (
    BlossomPattern,
    ltis_dense_mask,
    ltis_select,
    query_is_real,
    stis_dense_mask,
    stis_key_index,
)

#: Longest history for which inference uses the dense-masked layout.
DENSE_MAX_LENGTH = 512


def _gather_keys(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x [B, G, L, D]`` gathered at ``index [B|1, G|1, L, K]`` -> ``[B, G, L, K, D]`` (rows of D copied)."""
    batch, groups = x.shape[:2]
    bi = torch.arange(batch, device=x.device).view(batch, 1, 1, 1)
    gi = torch.arange(groups, device=x.device).view(1, groups, 1, 1)
    return x[bi, gi, index]


def _gather_blocks(x: torch.Tensor, block_index: torch.Tensor, block_size: int) -> torch.Tensor:
    """Whole blocks of ``b`` keys: ``x [B, G, L, D]`` at ``block_index [B, G, L, NB]`` -> ``[B, G, L, NB*b, D]``."""
    batch, groups, seq_len, head_dim = x.shape
    num_blocks = -(-seq_len // block_size)
    padded = F.pad(x, (0, 0, 0, num_blocks * block_size - seq_len))
    blocks = padded.reshape(batch, groups, num_blocks, block_size * head_dim)
    out = _gather_keys(blocks, block_index.clamp_min(0))  # [B, G, L, NB, b*D]
    return out.view(batch, groups, seq_len, -1, head_dim)


def _grouped_queries(query: torch.Tensor, groups: int) -> torch.Tensor:
    """``[B, H, L, D]`` -> ``[B, G, L, g, D]`` (the g heads of a group as a short query axis)."""
    batch, heads, seq_len, head_dim = query.shape
    return query.view(batch, groups, heads // groups, seq_len, head_dim).transpose(2, 3)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, scaling: float) -> torch.Tensor:
    """q ``[B, G, L, g, D]``, k/v ``[B, G, L, K, D]``, valid ``[B|1, G|1, L, K]`` -> ``[B, G, L, g, D]``."""
    batch, groups, seq_len, g, head_dim = q.shape
    keys = k.shape[3]
    mask = valid.expand(batch, groups, seq_len, keys).reshape(batch * groups, seq_len, 1, keys)
    out = F.scaled_dot_product_attention(
        q.reshape(batch * groups, seq_len, g, head_dim),
        k.reshape(batch * groups, seq_len, keys, head_dim),
        v.reshape(batch * groups, seq_len, keys, head_dim),
        attn_mask=mask,
        scale=scaling,
    )
    return out.view(batch, groups, seq_len, g, head_dim)


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
) -> torch.Tensor:
    """Same contract as :func:`attention_eager.eager_blossom_attention`."""
    batch, heads, seq_len, head_dim = query.shape
    groups = key.shape[1]
    needs_grad = torch.is_grad_enabled() and any(
        x.requires_grad for x in (query, key, value, compressed_key, gate))
    if not needs_grad and seq_len <= DENSE_MAX_LENGTH:
        return _dense_masked(query, key, value, compressed_key, gate, lengths, scaling, pattern, selected_blocks)
    q = _grouped_queries(query.float(), groups)
    k, v = key.float(), value.float()

    # ---- STIS ----
    stis_index, stis_valid = stis_key_index(seq_len, pattern.stis_window, pattern.stis_num_sinks, query.device)
    out_stis = _attend(
        q, _gather_keys(k, stis_index[None, None]), _gather_keys(v, stis_index[None, None]),
        stis_valid[None, None], scaling,
    )

    # ---- LTIS: own block c = t // b, then the n selected blocks; one joint softmax ----
    selected, selected_prob = ltis_select(query, compressed_key, lengths, scaling, pattern, selected_blocks)
    t = torch.arange(seq_len, device=query.device)
    own_block = (t // pattern.block_size).view(1, 1, seq_len, 1).expand(batch, groups, seq_len, 1)
    block_index = torch.cat([own_block, selected], dim=-1)  # [B, G, L, n+1]
    own_valid = (t[:, None] // pattern.block_size * pattern.block_size + torch.arange(
        pattern.block_size, device=query.device)) <= t[:, None]  # [L, b]
    sel_valid = (selected >= 0).repeat_interleave(pattern.block_size, dim=-1)  # [B, G, L, n*b]
    valid = torch.cat([own_valid.expand(batch, groups, seq_len, -1), sel_valid], dim=-1)
    k_sel = _gather_blocks(k, block_index, pattern.block_size)  # [B, G, L, (n+1)b, D]
    if pattern.straight_through and torch.is_grad_enabled() and selected_prob.requires_grad:
        # keys of selected block i are scaled by s = 1 + p_i - stopgrad(p_i) (== 1 in the forward pass)
        delta = (selected_prob - selected_prob.detach()).repeat_interleave(pattern.block_size, dim=-1)
        scale = torch.cat([torch.ones_like(delta[..., : pattern.block_size]), 1.0 + delta], dim=-1)
        k_sel = k_sel * scale[..., None]
    out_ltis = _attend(q, k_sel, _gather_blocks(v, block_index, pattern.block_size), valid, scaling)

    alpha = gate[..., 0].float().view(batch, groups, heads // groups, seq_len).transpose(2, 3)[..., None]
    beta = gate[..., 1].float().view(batch, groups, heads // groups, seq_len).transpose(2, 3)[..., None]
    out = alpha * out_ltis + beta * out_stis  # [B, G, L, g, D]
    out = out.transpose(2, 3).reshape(batch, heads, seq_len, head_dim)
    real_query = query_is_real(lengths, seq_len)[:, None, :, None]
    return torch.where(real_query, out, 0.0).to(query.dtype)


def _dense_masked(query, key, value, compressed_key, gate, lengths, scaling, pattern, selected_blocks):
    """Inference layout: whole-history SDPA per branch with a boolean mask per kv head."""
    batch, heads, seq_len, head_dim = query.shape
    groups = key.shape[1]
    g = heads // groups
    q = query.float().reshape(batch * groups, g, seq_len, head_dim)
    k = key.float().reshape(batch * groups, 1, seq_len, head_dim).expand(-1, g, -1, -1)
    v = value.float().reshape(batch * groups, 1, seq_len, head_dim).expand(-1, g, -1, -1)
    selected, _ = ltis_select(query, compressed_key, lengths, scaling, pattern, selected_blocks)
    ltis_mask = ltis_dense_mask(selected, seq_len, pattern.block_size).reshape(batch * groups, 1, seq_len, seq_len)
    stis_mask = stis_dense_mask(seq_len, pattern.stis_window, pattern.stis_num_sinks, query.device)
    out_ltis = F.scaled_dot_product_attention(q, k, v, attn_mask=ltis_mask, scale=scaling)
    out_stis = F.scaled_dot_product_attention(q, k, v, attn_mask=stis_mask, scale=scaling)
    gate = gate.float()
    out = gate[..., 0:1] * out_ltis.view(batch, heads, seq_len, head_dim) + gate[..., 1:2] * out_stis.view(
        batch, heads, seq_len, head_dim)
    real_query = query_is_real(lengths, seq_len)[:, None, :, None]
    return torch.where(real_query, out, 0.0).to(query.dtype)


def sdpa_full_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, lengths: torch.Tensor, *, scaling: float
) -> torch.Tensor:
    """Dense causal attention (the SASRec baseline). With real items first, causal == causal over real keys."""
    seq_len = query.shape[2]
    out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling, enable_gqa=True)
    real_query = query_is_real(lengths, seq_len)[:, None, :, None]
    return torch.where(real_query, out, 0.0)
