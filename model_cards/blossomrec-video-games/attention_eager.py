"""The eager reference backend: MODEL.md written out with dense masks, in fp32. Clarity over speed.

It materialises ``[B, H, L, L]`` scores and the exact key sets as dense boolean masks, so its memory
grows with ``L²``: use it to check the other backends, not to train at long histories.
"""

from __future__ import annotations

import torch

from .attention_patterns import (
    BlossomPattern,
    ltis_dense_mask,
    ltis_select,
    masked_softmax,
    query_is_real,
    stis_dense_mask,
)


def _expand_groups(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, G, ...]`` -> ``[B, H, ...]``: query head h uses kv head ``h // (H/G)``."""
    return x.repeat_interleave(heads // x.shape[1], dim=1)


def eager_blossom_attention(
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
    """BlossomRec attention ``α·LTIS + β·STIS`` per head.

    Args:
        query: ``[B, H, L, D]`` (RoPE applied). key, value: ``[B, G, L, D]`` (key with RoPE).
        compressed_key: ``[B, G, M, D]``, the compressor's output for the ``M = L // b`` windows.
        gate: ``[B, H, L, 2]``, ``(α, β)`` after the sigmoid.
        lengths: ``[B]`` real items per row (compacted layout: real items first).
        selected_blocks: optional ``[B, G, L, n]`` selection to use instead of computing it.

    Returns:
        ``[B, H, L, D]`` in the input dtype; padded query rows are exact zeros.
    """
    batch, heads, seq_len, _ = query.shape
    q, k, v = query.float(), key.float(), value.float()
    k_heads, v_heads = _expand_groups(k, heads), _expand_groups(v, heads)
    raw_logits = scaling * torch.matmul(q, k_heads.transpose(-1, -2))  # [B, H, L, L]
    real_query = query_is_real(lengths, seq_len)[:, None, :, None]  # [B, 1, L, 1]

    # ---- LTIS: own block + selected blocks, one joint softmax, straight-through key scale ----
    selected, selected_prob = ltis_select(query, compressed_key, lengths, scaling, pattern, selected_blocks)
    ltis_mask = _expand_groups(ltis_dense_mask(selected, seq_len, pattern.block_size), heads) & real_query
    if pattern.straight_through:
        # s_j = 1 + p - stopgrad(p) for every key of a selected block (exactly 1 in the forward pass).
        delta = selected_prob - selected_prob.detach()  # [B, G, L, n]
        block_of_key = torch.arange(seq_len, device=query.device) // pattern.block_size  # [L]
        hits = selected[..., :, None] == block_of_key  # [B, G, L, n, L]
        key_scale = 1.0 + (hits * delta[..., None]).sum(dim=-2)  # [B, G, L, L]
        ltis_logits = raw_logits * _expand_groups(key_scale, heads)
    else:
        ltis_logits = raw_logits
    out_ltis = torch.matmul(masked_softmax(ltis_logits, ltis_mask), v_heads)

    # ---- STIS: window + power-of-two offsets + sinks ----
    stis_mask = stis_dense_mask(seq_len, pattern.stis_window, pattern.stis_num_sinks, query.device)
    stis_mask = stis_mask[None, None] & real_query
    out_stis = torch.matmul(masked_softmax(raw_logits, stis_mask), v_heads)

    gate = gate.float()
    out = gate[..., 0:1] * out_ltis + gate[..., 1:2] * out_stis
    return out.masked_fill(~real_query, 0.0).to(query.dtype)


def eager_full_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, lengths: torch.Tensor, *, scaling: float
) -> torch.Tensor:
    """Dense causal attention over real keys (the SASRec baseline), ``[B, H, L, D]``."""
    heads, seq_len = query.shape[1], query.shape[2]
    q = query.float()
    k_heads = _expand_groups(key.float(), heads)
    v_heads = _expand_groups(value.float(), heads)
    logits = scaling * torch.matmul(q, k_heads.transpose(-1, -2))
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=query.device).tril()
    real_query = query_is_real(lengths, seq_len)[:, None, :, None]
    out = torch.matmul(masked_softmax(logits, causal[None, None] & real_query), v_heads)
    return out.to(query.dtype)
