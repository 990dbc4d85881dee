"""The SDPA backend ``attn_implementation="sdpa"`` (the default on every device): BlossomRec's two branches
(docs/MODEL.md, "Attention layer") through ``scaled_dot_product_attention`` and batched matmuls.

CPU inference (no gradient, eager mode) runs the compiled kernel of ``cpu_kernel.py`` wherever it is available (a C
compiler is present; docs/cpu_kernel.md): every position and the serving path's query subset, at every history
length (2 threads, paper-size model, the attention call alone: 3.1-5.6x faster than the PyTorch layouts below, from
L = 200 to 4096; whole ``recommend()``/``forward`` calls 1.1-2.1x, docs/BENCHMARKS_CPU.md). Where it is not (no
compiler, ``BLOSSOM_HF_CPU_KERNEL=0``, an unsupported shape; logged once), and on every other device, the layouts
below run.

Four PyTorch layouts; every one is checked against the eager reference (tests/test_attention_parity.py,
tests/test_sdpa_layouts.py), as is the kernel (tests/test_cpu_kernel.py). The training layout is in this file, the
dense and gathered inference layouts in ``sdpa_inference.py``, the blocked one in ``sdpa_blocked.py``:

* training (a gradient is needed): each branch gathers its own key set per query, built by
  ``attention_patterns`` (:func:`stis_key_index`, :func:`ltis_block_index`): STIS ``W + log2(L) + S`` keys,
  LTIS the own block and the n selected blocks. One SDPA call per branch with a small boolean mask; no
  ``L x L`` tensor. The straight-through key scale ``1 + p - stopgrad(p)`` is applied to the gathered keys.
* dense inference (no gradient, ``L <= DENSE_MAX_LENGTH[device type]``): SDPA per branch over the history (or
  the serving path's one query per row) with additive fp32 biases (no boolean mask for SDPA to convert per call).
  At every position the query axis is cut into causal chunks of ``DENSE_QUERY_CHUNK_ROWS`` rows (CUDA 128), each
  reading only the keys up to its last query (masked SDPA kernels visit every key tile of the mask: the chunks skip
  the ones above the diagonal). STIS reads rows of an ``[L, L]`` bias cached per ``(L, device)``. LTIS is plain
  causal attention (``is_causal``, no mask, no compressor and no selection: the model passes zeros for the
  compressed keys) when every eligible window is selected (:func:`attention_patterns.every_window_selected`,
  ``(L - 1) // b <= n``, e.g. ``L <= 80`` for the paper's b = 16, n = 4); otherwise a per-block bias ``[B, G, Q,
  nb]`` (cached own-block rows, the n selected blocks set to 0; the selection as ``n`` rounds of ``argmax`` with the
  eligibility from a cached table) plus the cached causal bias viewed as ``[L, nb, b]``: one add per chunk writes
  its bias. Queries are laid out ``[B*G, g, Q, D]`` for LTIS so that one bias per kv head serves its ``g`` heads.
  Cost ``~L^2`` per branch, few and large kernels.
* blocked inference (no gradient, longer histories, every position): query block by query block. LTIS: the ``b``
  queries of block ``c`` (x the ``g`` heads of a kv head) against their own block in one matmul (a strided view
  of K: no copy); the ``n`` selected blocks copied whole per query (1 KB rows of a block table, a few hundred
  query rows at a time so that the matmul reads them from the core's cache); one softmax over both pieces (a
  shared maximum, ``exp`` floored at ``-80`` so that masked entries stay on the vectorised path, value products
  summed, one division). STIS: the keys ``t - d`` of every offset ``d`` are one slice of K and V, stacked, the
  sinks appended: one product, one softmax, one product. The selection is computed first, in chunks of queries
  that score only the windows they can select, over the windows reversed (the ``n`` rounds of ``max`` then break
  ties to the larger ``w`` without a flip) with the eligibility as the input of the scores' ``baddbmm`` (no mask
  or scaling pass). Cost ``L x ((n+1) b + W + log2 L)`` per kv head and layer, in chunks of
  :data:`BLOCKED_TILE_ROWS` query rows.
* gathered inference (no gradient, longer histories, the serving path's queries at ``positions``): per query and
  kv head the LTIS keys are read as ``n + 1`` whole blocks from a block table and the STIS keys as rows of K and
  V; per branch one ``baddbmm`` (scaled, masked logits of the g query heads), a softmax and one ``bmm``.

Where the dense layout stops (:data:`DENSE_MAX_LENGTH`) is a per-device choice. CPU: measured
(docs/BENCHMARKS_CPU.md; 2 threads, attention call alone: the blocked layout overtakes the dense one at L ~ 200 for
64 histories and ~ 340 for one; the threshold is 256). CUDA: measured on an H200 (docs/BENCHMARKS.md, "sdpa
inference on CUDA"; ``scripts/dev/sdpa_cuda_ab.py``, serving path at 65k tokens per forward, fp32 / bf16 autocast,
interleaved rounds; the dense layout's SDPA calls expand the kv heads there, so that fp32 takes the
memory-efficient kernel): dense 9.4 / 10.0 ms against sparse 11.3 / 12.8 at L = 1024, 11.5 / 12.0 against
11.3 / 12.3 at 1280, 12.7-13.0 / 12.9-14.3 against 11.9-13.7 / 13.1-15.3 at 1536 (two calls), 16.8 / 17.1 against
13.2 / 13.9 at 2048; the dense layout holds 3.5x less memory, so it runs to 1280 there.
Computation runs in fp32 (inputs are upcast), as in every backend. Every reshape of an SDPA output is a
``reshape`` (CUDA kernels may return non-contiguous outputs).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Unpack

import torch
import torch.nn.functional as F

from .attention_patterns import BlossomPattern, ltis_block_index, ltis_select, query_is_real, stis_key_index
from .cpu_kernel import cpu_kernel_attention, kernel_available
from .registry import BlossomAttentionKwargs, dispatch_attention_type, register_attention_backend

# the tuning tables are the same dict objects as there
from .sdpa_blocked import BLOCKED_COPY_ROWS, BLOCKED_TILE_ROWS, SELECTION_TILE_ELEMENTS, blocked_inference
from .sdpa_inference import (
    DENSE_MAX_LENGTH,
    INFERENCE_TILE_ELEMENTS,
    dense_inference,
    dense_max_length,
    gathered_inference,
    grouped_queries,
    padded_queries,
)

__all__ = ["BLOCKED_COPY_ROWS", "BLOCKED_TILE_ROWS", "DENSE_MAX_LENGTH", "INFERENCE_TILE_ELEMENTS",
           "SELECTION_TILE_ELEMENTS", "dense_max_length", "sdpa_blossom_attention", "sdpa_full_attention",
           "sdpa_attention_forward"]


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


def _no_padded_query(padded: torch.Tensor) -> bool:
    """True where the output needs no zeroing of padded queries (``padded``: :func:`sdpa_inference.padded_queries`;
    no pass over the output then): CPU tensors in eager mode only (elsewhere the check would synchronise a GPU
    stream, or break a CUDA graph capture, or trace a data-dependent branch)."""
    return padded.device.type == "cpu" and not torch.compiler.is_compiling() and not bool(padded.any())


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
    if kernel_available(query, key, pattern):  # CPU, eager mode: the compiled kernel (module docstring)
        return cpu_kernel_attention(query, key, value, compressed_key, gate, lengths, scaling, pattern,
                                    selected_blocks, positions).to(query.dtype)
    device_type = query.device.type
    # fp32 as in every backend: under autocast the batched matmuls would otherwise run in half precision
    with torch.autocast(device_type, enabled=False) if torch.is_autocast_enabled(device_type) else nullcontext():
        if seq_len <= dense_max_length(query.device):
            out = dense_inference(query, key, value, compressed_key, gate, lengths, scaling, pattern,
                                   selected_blocks, positions)
        elif positions is None:
            out = blocked_inference(query, key, value, compressed_key, gate, lengths, scaling, pattern,
                                     selected_blocks)
        else:
            out = gathered_inference(query, key, value, compressed_key, gate, lengths, scaling, pattern,
                                      selected_blocks, positions)
    padded = padded_queries(lengths, seq_len, positions)
    if not _no_padded_query(padded):
        out.masked_fill_(padded, 0.0)  # out is this call's own tensor
    return out.to(query.dtype)


# ------------------------------------------------------------------------------------------------
# training layout (differentiable)
# ------------------------------------------------------------------------------------------------
def _gathered(query, key, value, compressed_key, gate, lengths, scaling, pattern, selected_blocks, positions):
    """Per-query gathered key sets (any layout, differentiable)."""
    batch, heads, num_queries, head_dim = query.shape
    groups, seq_len = key.shape[1], key.shape[2]
    q = grouped_queries(query.float(), groups)
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

    gate = grouped_queries(gate.float(), groups)  # [B, G, Q, g, 2]
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
    padded = padded_queries(lengths, seq_len, positions)
    return out if _no_padded_query(padded) else out.masked_fill(padded, 0.0)


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
    description="scaled_dot_product_attention: dense masks at short histories, the blocked layout beyond "
                "(linear memory); per-query gathered key sets when training",
    query_subset=True,
)
