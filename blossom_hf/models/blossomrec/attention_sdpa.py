"""The SDPA backend ``attn_implementation="sdpa"`` (the default on every device): BlossomRec's two branches
(docs/MODEL.md, "Attention layer") through ``scaled_dot_product_attention`` and batched matmuls.

Three layouts; every one is checked against the eager reference (tests/test_attention_parity.py,
tests/test_sdpa_layouts.py):

* training (a gradient is needed): each branch gathers its own key set per query, built by
  ``attention_patterns`` (:func:`stis_key_index`, :func:`ltis_block_index`): STIS ``W + log2(L) + S`` keys,
  LTIS the own block and the n selected blocks. One SDPA call per branch with a small boolean mask; no
  ``L x L`` tensor. The straight-through key scale ``1 + p - stopgrad(p)`` is applied to the gathered keys.
* dense inference (no gradient, ``L <= DENSE_MAX_LENGTH[device type]``): one SDPA call per branch over the
  whole history (or the serving path's one query per row). STIS uses a ``[L, L]`` mask cached per
  ``(L, device)``. LTIS is plain causal attention (``is_causal``, no mask, no compressor and no selection: the
  model passes zeros for the compressed keys) when every eligible window is selected
  (:func:`attention_patterns.every_window_selected`, ``(L - 1) // b <= n``, e.g. ``L <= 80`` for the paper's
  b = 16, n = 4); otherwise a ``[B, G, L, L]`` mask from the block selection (``n`` flags per query expanded
  to keys, OR the cached own-block mask). Cost ``~L^2`` per branch, few and large kernels.
* gathered inference (no gradient, longer histories): per query and kv head the LTIS keys are read as
  ``n + 1`` whole blocks from a block table (one row copy per block) and the STIS keys as shifted slices of K
  and V; per branch one ``baddbmm`` (scaled, masked logits of the g query heads), a softmax and one ``bmm``.
  Cost and memory ``L x ((n+1) b + W + log2 L + S)`` per layer, in chunks of queries
  (:data:`INFERENCE_TILE_ELEMENTS`).

Where the dense layout stops (:data:`DENSE_MAX_LENGTH`) is a per-device choice. CPU: measured
(docs/BENCHMARKS_CPU.md); the CPU flash kernel computes every ``(query, key)`` pair of a masked call, so its
``L^2`` work overtakes the gathered layout's per-query overheads from a few hundred items. CUDA: measured on an
H200 (docs/BENCHMARKS.md, "Merged tree"): at 65k tokens per forward the dense layout takes 7.7 / 12.4 / 21.2 ms
at L = 200 / 512 / 1024 and grows with L, the gathered one 13.3 ms at L = 4096 (its work is per query, so about
flat in L; not measured below 4096), so the dense layout stops at 512. A memory-traffic estimate (about ``21 L``
bytes per query and kv head dense, about 25 KB gathered) had put the crossover near 1200.
Computation runs in fp32 (inputs are upcast), as in every backend. Every
reshape of an SDPA output is a ``reshape`` (CUDA kernels may return non-contiguous outputs).
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import lru_cache
from typing import Unpack

import torch
import torch.nn.functional as F

from .attention_patterns import (
    BlossomPattern,
    every_window_selected,
    ltis_block_index,
    ltis_dense_mask,
    ltis_every_eligible,
    ltis_select,
    query_is_real,
    stis_dense_mask,
    stis_key_index,
    stis_offsets,
)
from .registry import BlossomAttentionKwargs, dispatch_attention_type, register_attention_backend

__all__ = ["DENSE_MAX_LENGTH", "INFERENCE_TILE_ELEMENTS", "dense_max_length", "sdpa_blossom_attention",
           "sdpa_full_attention", "sdpa_attention_forward"]

#: Longest history for which inference uses the dense layout, per device type (other types: the "cuda" entry).
DENSE_MAX_LENGTH: dict[str, int] = {"cpu": 256, "cuda": 512}


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
    device_type = query.device.type
    # fp32 as in every backend: under autocast the batched matmuls would otherwise run in half precision
    with torch.autocast(device_type, enabled=False) if torch.is_autocast_enabled(device_type) else nullcontext():
        if seq_len <= dense_max_length(query.device):
            out = _dense_inference(query, key, value, compressed_key, gate, lengths, scaling, pattern,
                                   selected_blocks, positions)
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
        mask = ltis_dense_mask(selected, seq_len, block, positions)  # [B, G, Q, L]
        out_ltis = F.scaled_dot_product_attention(
            q.reshape(batch * groups, g, num_queries, head_dim), k.reshape(batch * groups, 1, seq_len, head_dim),
            v.reshape(batch * groups, 1, seq_len, head_dim),
            attn_mask=mask.reshape(batch * groups, 1, num_queries, seq_len), scale=scaling, enable_gqa=True,
        ).reshape(batch, heads, num_queries, head_dim)
    gate = gate.float()
    return torch.addcmul(out_ltis * gate[..., 0:1], out_stis, gate[..., 1:2])


#: Gathered K and V elements per chunk of queries in the gathered inference layout, per device type. CPU: small
#: enough for the chunk's buffers to stay in cache and be reused by the allocator (fresh large buffers cost a page
#: fault per 4 KiB); CUDA: large, few launches (64 histories of 4096 items would otherwise gather ~6 GB per layer).
INFERENCE_TILE_ELEMENTS: dict[str, int] = {"cpu": 1 << 21, "cuda": 1 << 26}


#: additive mask of the gathered layout: finite, so that the softmax stays on its fast path (``exp(-inf)`` is slow on
#: some CPUs); every real query keeps at least one key per branch (itself), so no row is fully masked
_MASKED = -1e30


def _gathered_inference(query, key, value, compressed_key, gate, lengths, scaling, pattern, selected_blocks,
                        positions):
    """One key set per query and branch: LTIS (own block + selected blocks) read as whole blocks of ``b`` keys from
    a ``[B*G*L/b, b*D]`` block table (one row copy per block), STIS (``W + log2 L + S`` single keys) as shifted
    slices of K and V (every position) or rows of them (``positions``). Per branch one ``baddbmm`` (scaled,
    masked logits), a softmax and one ``bmm`` over ``B*G*Q`` small problems of ``g`` query heads. In chunks of
    queries of at most :data:`INFERENCE_TILE_ELEMENTS` gathered elements."""
    batch, heads, num_queries, head_dim = query.shape
    groups, seq_len = key.shape[1], key.shape[2]
    b, n = pattern.block_size, pattern.num_selected_blocks
    offsets = stis_offsets(pattern.stis_window, seq_len)
    every_position = positions is None
    if every_position:
        positions = torch.arange(num_queries, device=query.device)[None, :]
    num_blocks = -(-seq_len // b)
    # zero rows before position 0 (whole blocks), read by the shifted STIS slices
    front = -(-offsets[-1] // b) * b if every_position else 0
    tables = tuple(F.pad(x.float(), (0, 0, front, num_blocks * b - seq_len)).reshape(
        batch * groups, front + num_blocks * b, head_dim).contiguous() for x in (key, value))
    keys_per_query = (n + 1) * b + len(offsets) + min(pattern.stis_num_sinks, seq_len)
    tile = INFERENCE_TILE_ELEMENTS.get(query.device.type, INFERENCE_TILE_ELEMENTS["cuda"])
    chunk = max(1, tile // max(1, batch * groups * keys_per_query * 2 * head_dim))
    if torch.compiler.is_compiling():
        chunk = num_queries
    outs = []
    for start in range(0, num_queries, chunk):
        end = min(start + chunk, num_queries)
        sel = None if selected_blocks is None else selected_blocks[:, :, start:end]
        pos = positions[:, start:end]
        selected = _inference_selection(query[:, :, start:end], compressed_key, lengths, seq_len, scaling, pattern,
                                        sel, pos.expand(batch, -1))
        ltis = _ltis_keys(tables, front, pos, selected, seq_len, batch, groups, pattern)
        stis = _stis_keys(tables, front, pos, start if every_position else None, seq_len, pattern)
        outs.append(_attend_small(query[:, :, start:end], gate[:, :, start:end], (ltis, stis), scaling))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def _ltis_keys(tables, front, positions, selected, seq_len, batch, groups, pattern):
    """LTIS keys/values ``[B*G*Q, (n+1) b, D]`` and their validity ``[B|1, G|1, Q, (n+1) b]`` (the own block
    first, then the selected ones: :func:`attention_patterns.ltis_block_index`)."""
    b, device = pattern.block_size, positions.device
    if selected is None:  # every eligible window: the n blocks before the own block
        selected = ltis_every_eligible(seq_len, pattern, device, positions)
    blocks, valid = ltis_block_index(selected, seq_len, b, positions)  # [B|1, G|1, Q, n+1], keys
    blocks = blocks.expand(batch, groups, -1, -1)
    head_dim = tables[0].shape[-1]
    first = torch.arange(batch * groups, device=device).view(batch, groups, 1, 1)
    index = blocks.clamp_min(0) + (first * tables[0].shape[1] + front) // b
    rows = batch * groups * positions.shape[-1]
    kv = tuple(F.embedding(index, table.view(-1, b * head_dim)).view(rows, -1, head_dim) for table in tables)
    return kv, valid


def _stis_keys(tables, front, positions, start, seq_len, pattern):
    """STIS keys/values ``[B*G*Q, Ks, D]`` and validity ``[B|1, 1, Q, Ks]``: for every position (``start`` given) the
    keys ``t - d`` of the chunk are one slice of K per offset ``d`` (stacked); else rows gathered at ``positions``."""
    index, valid = stis_key_index(seq_len, pattern.stis_window, pattern.stis_num_sinks, positions.device,
                                  None if start is not None else positions)
    num_queries = positions.shape[-1]
    head_dim = tables[0].shape[-1]
    if start is not None:
        index, valid = index[start:start + num_queries], valid[start:start + num_queries][None]
        offsets = stis_offsets(pattern.stis_window, seq_len)
        sinks = min(pattern.stis_num_sinks, seq_len)
        kv = []
        for table in tables:
            parts = [table[:, front + start - d:front + start - d + num_queries] for d in offsets]
            keys = torch.stack(parts, dim=2)  # [B*G, Q, n_off, D]
            if sinks:
                sink = table[:, front:front + sinks, None].transpose(1, 2).expand(-1, num_queries, -1, -1)
                keys = torch.cat([keys, sink], dim=2)
            kv.append(keys.reshape(-1, keys.shape[2], head_dim))
        return tuple(kv), valid[:, None]
    first = torch.arange(tables[0].shape[0], device=positions.device).view(-1, 1, 1) * tables[0].shape[1]
    batch = index.shape[0] if index.shape[0] > 1 else 1
    flat = (index + front).reshape(batch, 1, num_queries, -1)  # [B, 1, Q, Ks]
    groups = tables[0].shape[0] // batch
    flat = flat + first.view(batch, groups, 1, 1)
    kv = tuple(F.embedding(flat, table.reshape(-1, head_dim)).view(-1, flat.shape[-1], head_dim) for table in tables)
    return kv, valid[:, None]


def _attend_small(query, gate, branches, scaling):
    """``α·softmax(q Kₗᵀ) Vₗ + β·softmax(q Kₛᵀ) Vₛ`` over ``B*G*Q`` problems of ``g`` queries -> ``[B, H, Q, D]``."""
    batch, heads, num_queries, head_dim = query.shape
    rows = branches[0][0][0].shape[0]
    groups = rows // (batch * num_queries)
    g = heads // groups
    q = _grouped_queries(query.float(), groups).reshape(rows, g, head_dim)
    gate = _grouped_queries(gate.float(), groups).reshape(rows, g, 2)
    outs = []
    for (k, v), valid in branches:
        bias = torch.where(valid, 0.0, _MASKED).expand(batch, groups, num_queries, -1).reshape(rows, 1, -1)
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
    """Dense, gathered or training key sets (module docstring)."""
    return dispatch_attention_type(module, query, key, value, scaling, kwargs,
                                   blossom=sdpa_blossom_attention, full=sdpa_full_attention)


register_attention_backend(
    "sdpa", sdpa_attention_forward,
    description="scaled_dot_product_attention: dense masks at short histories, gathered key sets beyond "
                "(linear memory); per-query gathered key sets when training",
    query_subset=True,
)
