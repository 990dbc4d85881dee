"""The sdpa backend's dense inference layout as of commit 6bb0aba (boolean LTIS mask built once per call and
sliced per chunk, STIS as a cached bias, the selection through ``ltis_select``), kept as the "sdpa 6bb0aba" row of
``scripts/dev/sdpa_cuda_ab.py`` so that the current layout is timed beside it in one process. Not used by the
library."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from blossom_hf.models.blossomrec.attention_patterns import ltis_own_block_mask, stis_dense_mask
from blossom_hf.models.blossomrec.sdpa_inference import (
    DENSE_QUERY_CHUNK_ROWS,
    _inference_selection,
    _query_chunks,
    _table,
    device_entry,
)


def _shared_kv(query, key, value):
    groups = key.shape[1]
    if query.is_cuda and query.shape[1] != groups:
        g = query.shape[1] // groups
        return key.repeat_interleave(g, dim=1), value.repeat_interleave(g, dim=1), {}
    return key, value, {"enable_gqa": True}


def _stis_bias(seq_len, window, num_sinks, device):
    mask = stis_dense_mask(seq_len, window, num_sinks, device)
    width = -(-seq_len // 8) * 8
    bias = torch.full((*mask.shape[:-1], width), float("-inf"), dtype=torch.float32, device=mask.device)
    return bias[..., :seq_len].masked_fill_(mask, 0.0)


def _ltis_mask(selected, seq_len, block, own):
    """6bb0aba's ``ltis_dense_mask(..., own_block=own)``: the selected blocks' keys OR the cached own-block mask."""
    num_blocks = -(-seq_len // block)
    chosen = torch.zeros(*selected.shape[:-1], num_blocks + 1, dtype=torch.bool, device=selected.device)
    chosen.scatter_(-1, torch.where(selected >= 0, selected, num_blocks), True)
    keys = chosen[..., :num_blocks, None].expand(*chosen.shape[:-1], num_blocks, block)
    return keys.reshape(*chosen.shape[:-1], num_blocks * block)[..., :seq_len] | own


def dense_inference(query, key, value, compressed_key, gate, lengths, scaling, pattern, selected_blocks,
                    positions):
    batch, heads, num_queries, head_dim = query.shape
    groups, seq_len, block = key.shape[1], key.shape[2], pattern.block_size
    g = heads // groups
    q = query.float().reshape(batch * groups, g, num_queries, head_dim)
    k, v, gqa = _shared_kv(query, key.float(), value.float())
    k, v = (x.reshape(batch * groups, -1, seq_len, head_dim) for x in (k, v))
    selected = _inference_selection(query, compressed_key, lengths, seq_len, scaling, pattern, selected_blocks,
                                    positions)
    gate = gate.float()

    def sdpa(q_rows, end, **kwargs):
        return F.scaled_dot_product_attention(q_rows, k[:, :, :end], v[:, :, :end], scale=scaling, **gqa, **kwargs)

    if positions is not None:
        stis = _table(stis_dense_mask, seq_len, pattern.stis_window, pattern.stis_num_sinks, query.device)
        stis = stis[positions][:, None].expand(batch, groups, num_queries, seq_len)
        out_stis = sdpa(q, seq_len, attn_mask=stis.reshape(batch * groups, 1, num_queries, seq_len))
        if selected is None:
            mask = (torch.arange(seq_len, device=query.device) <= positions[..., None])[:, None]
            mask = mask.expand(batch, groups, num_queries, seq_len)
        else:
            own = ltis_own_block_mask(seq_len, block, query.device, positions)[:, None]
            mask = _ltis_mask(selected, seq_len, block, own)
        out_ltis = sdpa(q, seq_len, attn_mask=mask.reshape(batch * groups, 1, num_queries, seq_len))
    else:
        stis = _table(_stis_bias, seq_len, pattern.stis_window, pattern.stis_num_sinks, query.device)
        chunks = _query_chunks(num_queries, device_entry(DENSE_QUERY_CHUNK_ROWS, query.device))
        out_stis = [sdpa(q[:, :, s:e], e, attn_mask=stis[s:e, :e]) for s, e in chunks]
        if selected is None:
            out_ltis = [sdpa(q, seq_len, is_causal=True)]
        else:
            own = _table(ltis_own_block_mask, seq_len, block, query.device)
            mask = _ltis_mask(selected, seq_len, block, own)
            mask = mask.reshape(batch * groups, 1, num_queries, seq_len)
            out_ltis = [sdpa(q[:, :, s:e], e, attn_mask=mask[:, :, s:e, :e]) for s, e in chunks]
        out_stis, out_ltis = (x[0] if len(x) == 1 else torch.cat(x, dim=2) for x in (out_stis, out_ltis))
    out_stis, out_ltis = (x.reshape(batch, heads, num_queries, head_dim) for x in (out_stis, out_ltis))
    return torch.addcmul(out_ltis * gate[..., 0:1], out_stis, gate[..., 1:2])
