"""The SDPA backend: each branch gathers its own key set per query and runs one
``torch.nn.functional.scaled_dot_product_attention`` call over it with a small boolean mask.

No ``L x L`` tensor is built: STIS gathers ``W + log2(L) + S`` keys per query and LTIS ``(n+1)·b`` keys
(own block + selected blocks), so memory is linear in ``L``. The g query heads of one kv head share a
key set, so they are the "query length" of each small attention problem (GQA without repeating keys).
Only the LTIS selection scores (``[B, G, L, L/b]``) grow faster than ``L``; the Triton backend avoids
those too. Computation runs in fp32 (inputs are upcast), as in every backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention_patterns import BlossomPattern, ltis_key_index, ltis_select, query_is_real, stis_key_index


def _gather_keys(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x [B, G, L, D]`` gathered at ``index [B|1, G|1, L, K]`` -> ``[B, G, L, K, D]``."""
    batch, groups, seq_len, head_dim = x.shape
    index = index.expand(batch, groups, *index.shape[2:])
    flat = index.reshape(batch, groups, -1, 1).expand(-1, -1, -1, head_dim)
    return torch.gather(x, 2, flat).view(batch, groups, *index.shape[2:], head_dim)


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
    q = _grouped_queries(query.float(), groups)
    k, v = key.float(), value.float()

    # ---- STIS ----
    stis_index, stis_valid = stis_key_index(seq_len, pattern.stis_window, pattern.stis_num_sinks, query.device)
    out_stis = _attend(
        q, _gather_keys(k, stis_index[None, None]), _gather_keys(v, stis_index[None, None]),
        stis_valid[None, None], scaling,
    )

    # ---- LTIS ----
    selected, selected_prob = ltis_select(query, compressed_key, lengths, scaling, pattern, selected_blocks)
    ltis_index, ltis_valid = ltis_key_index(selected, seq_len, pattern.block_size)
    k_sel = _gather_keys(k, ltis_index)  # [B, G, L, (n+1)b, D]
    if pattern.straight_through:
        # keys of selected block i are scaled by s = 1 + p_i - stopgrad(p_i) (== 1 in the forward pass)
        delta = (selected_prob - selected_prob.detach()).repeat_interleave(pattern.block_size, dim=-1)
        scale = torch.cat([torch.ones_like(delta[..., : pattern.block_size]), 1.0 + delta], dim=-1)
        k_sel = k_sel * scale[..., None]
    out_ltis = _attend(q, k_sel, _gather_keys(v, ltis_index), ltis_valid, scaling)

    alpha = gate[..., 0].float().view(batch, groups, heads // groups, seq_len).transpose(2, 3)[..., None]
    beta = gate[..., 1].float().view(batch, groups, heads // groups, seq_len).transpose(2, 3)[..., None]
    out = alpha * out_ltis + beta * out_stis  # [B, G, L, g, D]
    out = out.transpose(2, 3).reshape(batch, heads, seq_len, head_dim)
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
