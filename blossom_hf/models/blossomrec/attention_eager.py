"""The eager reference backend ``attn_implementation="eager"``: docs/MODEL.md ("Attention layer") written out
with dense masks, in fp32. Clarity over speed.

It materialises ``[B, H, Q, L]`` scores and the exact key sets as dense boolean masks, so its memory grows
with ``L²``: use it to check the other backends, not to train at long histories.
"""

from __future__ import annotations

from typing import Unpack

import torch

from .attention_patterns import (
    BlossomPattern,
    ltis_dense_mask,
    ltis_select,
    masked_softmax,
    query_is_real,
    stis_dense_mask,
)
from .registry import BlossomAttentionKwargs, dispatch_attention_type, register_attention_backend

__all__ = ["eager_blossom_attention", "eager_full_attention", "eager_attention_forward"]


def _expand_groups(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, G, ...]`` -> ``[B, H, ...]``: query head h uses kv head ``h // (H/G)``."""
    return x.repeat_interleave(heads // x.shape[1], dim=1)


def _key_positions(seq_len: int, device: torch.device) -> torch.Tensor:
    return torch.arange(seq_len, device=device)


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
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """BlossomRec attention ``α·LTIS + β·STIS`` per head.

    Args:
        query: ``[B, H, Q, D]`` (RoPE applied): every position (``Q = L``) or the ones in ``positions``.
        key, value: ``[B, G, L, D]`` (key with RoPE).
        compressed_key: ``[B, G, M, D]``, the compressor's output for the ``M = L // b`` windows.
        gate: ``[B, H, Q, 2]``, ``(α, β)`` after the sigmoid.
        lengths: ``[B]`` real items per row (compacted layout: real items first).
        selected_blocks: optional ``[B, G, Q, n]`` selection to use instead of computing it.
        positions: optional ``[B, Q]`` query positions (default: every position ``0..L-1``).

    Returns:
        ``[B, H, Q, D]`` in the input dtype; padded query rows are exact zeros.
    """
    heads = query.shape[1]
    seq_len = key.shape[2]
    q, k, v = query.float(), key.float(), value.float()
    k_heads, v_heads = _expand_groups(k, heads), _expand_groups(v, heads)
    raw_logits = scaling * torch.matmul(q, k_heads.transpose(-1, -2))  # [B, H, Q, L]
    real_query = query_is_real(lengths, seq_len, positions)[:, None, :, None]  # [B, 1, Q, 1]

    # ---- LTIS: own block + selected blocks, one joint softmax, straight-through key scale ----
    selected, selected_prob = ltis_select(query, compressed_key, lengths, scaling, pattern, selected_blocks,
                                          positions)
    ltis_mask = _expand_groups(ltis_dense_mask(selected, seq_len, pattern.block_size, positions), heads)
    ltis_mask = ltis_mask & real_query
    if pattern.straight_through:
        # s_j = 1 + p - stopgrad(p) for every key of a selected block (exactly 1 in the forward pass).
        delta = selected_prob - selected_prob.detach()  # [B, G, Q, n]
        block_of_key = _key_positions(seq_len, query.device) // pattern.block_size  # [L]
        hits = selected[..., :, None] == block_of_key  # [B, G, Q, n, L]
        key_scale = 1.0 + (hits * delta[..., None]).sum(dim=-2)  # [B, G, Q, L]
        ltis_logits = raw_logits * _expand_groups(key_scale, heads)
    else:
        ltis_logits = raw_logits
    out_ltis = torch.matmul(masked_softmax(ltis_logits, ltis_mask), v_heads)

    # ---- STIS: window + power-of-two offsets + sinks ----
    stis_mask = stis_dense_mask(seq_len, pattern.stis_window, pattern.stis_num_sinks, query.device, positions)
    stis_mask = (stis_mask[None, None] if positions is None else stis_mask[:, None]) & real_query
    out_stis = torch.matmul(masked_softmax(raw_logits, stis_mask), v_heads)

    gate = gate.float()
    out = gate[..., 0:1] * out_ltis + gate[..., 1:2] * out_stis
    return out.masked_fill(~real_query, 0.0).to(query.dtype)


def eager_full_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    lengths: torch.Tensor,
    *,
    scaling: float,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense causal attention over real keys (the SASRec baseline), ``[B, H, Q, D]``."""
    heads, num_queries, seq_len = query.shape[1], query.shape[2], key.shape[2]
    q = query.float()
    k_heads = _expand_groups(key.float(), heads)
    v_heads = _expand_groups(value.float(), heads)
    logits = scaling * torch.matmul(q, k_heads.transpose(-1, -2))  # [B, H, Q, L]
    t = torch.arange(num_queries, device=query.device)[None, :] if positions is None else positions  # [B|1, Q]
    causal = _key_positions(seq_len, query.device) <= t[..., None]  # [B|1, Q, L]
    real_query = query_is_real(lengths, seq_len, positions)[:, None, :, None]
    out = torch.matmul(masked_softmax(logits, causal[:, None] & real_query), v_heads)
    return out.to(query.dtype)


def eager_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[BlossomAttentionKwargs],
) -> tuple[torch.Tensor, None]:
    """Reference backend: dense masks, fp32."""
    return dispatch_attention_type(module, query, key, value, scaling, kwargs,
                                   blossom=eager_blossom_attention, full=eager_full_attention)


register_attention_backend(
    "eager", eager_attention_forward,
    description="PyTorch reference: exact key sets as dense L x L masks, fp32 (O(L^2) memory)",
    query_subset=True,
)
