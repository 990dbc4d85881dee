"""Inference layouts of the SDPA backend (no gradient): dense and gathered (the layouts are described in
``attention_sdpa``'s module docstring; the blocked one is in ``sdpa_blocked.py``).
:func:`attention_sdpa.sdpa_blossom_attention` picks one per call; each is checked against the eager reference
(tests/test_sdpa_layouts.py, tests/test_attention_parity.py).

The tuning tables (:data:`DENSE_MAX_LENGTH`, :data:`INFERENCE_TILE_ELEMENTS`) are per device type and re-exported by
``attention_sdpa`` (the same dict objects). Computation runs in fp32 (inputs are upcast), as in every backend.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from .attention_patterns import (
    every_window_selected,
    ltis_block_index,
    ltis_every_eligible,
    ltis_scores,
    ltis_select,
    ltis_top_windows,
    stis_dense_mask,
    stis_key_index,
    stis_offsets,
)

__all__ = ["DENSE_MAX_LENGTH", "DENSE_QUERY_CHUNK_ROWS", "INFERENCE_TILE_ELEMENTS",
           "dense_inference", "dense_max_length", "device_entry", "gathered_inference", "grouped_queries",
           "padded_queries"]

#: Longest history for which inference uses the dense layout, per device type (other types: the "cuda" entry).
#: CPU: 2 threads, the layout alone, dense / blocked ms (``cpu_breakdown --layout-ab``, docs/BENCHMARKS_CPU.md): B = 1:
#: L = 256 1.23 / 1.57, 320 1.68 / 1.73, 384 2.23 / 1.86; B = 64: L = 200 39.6 / 41.8, 256 67.6 / 52.5, 320 97.5 / 67.8
#: (the crossover at ~320 for one history, ~210 for 64). CUDA (H200, the serving path at 65k tokens, fp32 / bf16
#: autocast, dense (additive biases, in query chunks) / sparse ms, interleaved rounds: ``scripts/dev/sdpa_cuda_ab.py``,
#: docs/BENCHMARKS.md "sdpa inference on CUDA"): L = 1024 9.44 / 11.32, 10.02 / 12.75; 1280 11.47 / 11.28,
#: 12.00 / 12.28; 1536 13.02 / 13.73, 14.31 / 15.30 in one call, 12.68 / 11.90, 12.86 / 13.05 in another; 1792
#: 15.42 / 13.74, 15.68 / 14.11; 2048 16.81 / 13.24, 17.08 / 13.94. The two tie at ~1280-1536 (the dense layout is
#: GPU-bound there, the sparse ones host-bound, so the crossover moves with the host); the dense layout holds 3.5x
#: less memory (0.42 against 1.47 GiB at 1536), so it runs to 1280.
DENSE_MAX_LENGTH: dict[str, int] = {"cpu": 256, "cuda": 1280}

#: Query rows per SDPA call of the dense layout at every position, per device type (0: the whole history in one call).
#: Query rows ``s .. e-1`` read only keys ``0 .. e-1`` (causal), so chunks of the query axis skip the key tiles above
#: the diagonal that a masked SDPA call computes and throws away: ``c`` equal chunks do ``(c + 1) / 2c`` of the work,
#: for ``c - 1`` more SDPA calls per branch. CUDA (H200, the serving path at 65k tokens, fp32 / bf16 autocast, ms,
#: interleaved rounds, ``scripts/dev/sdpa_cuda_ab.py``, docs/BENCHMARKS.md "sdpa inference on CUDA"): 128 rows / 256
#: rows / one call (and the selection's rounds of max) at L = 200 6.52 / 7.12 / 7.41, 6.87 / 7.05 / 7.50; 384
#: 7.46 / 7.85 / 8.70, 7.92 / 7.23 / 7.73; 512 8.04 / 8.55 / 9.85, 8.33 / 8.78 / 10.16 (boolean masks, before the
#: additive biases). With the biases, 128 / 64 rows in two calls: L = 200 6.55 / 6.28 and 5.93 / 5.69 fp32, 6.89 / 7.68
#: and 6.60 / 6.92 bf16; 512 6.87 / 6.80 and 7.96 / 8.10 fp32, 7.51 / 8.85 and 10.68 / 10.19 bf16 (64 rows: 0.1-0.25 ms
#: less GPU time, more host time; mixed). CPU: 0 (the compiled kernel serves CPU inference).
DENSE_QUERY_CHUNK_ROWS: dict[str, int] = {"cpu": 0, "cuda": 128}


def grouped_queries(query: torch.Tensor, groups: int) -> torch.Tensor:
    """``[B, H, Q, D]`` -> ``[B, G, Q, g, D]`` (the g heads of a group as a short query axis)."""
    batch, heads, num_queries, head_dim = query.shape
    return query.reshape(batch, groups, heads // groups, num_queries, head_dim).transpose(2, 3)


def device_entry(table: dict[str, int], device: torch.device) -> int:
    """``table``'s entry for ``device``'s type (other types: the "cuda" entry), for every tuning table."""
    return table.get(device.type, table["cuda"])


def dense_max_length(device: torch.device) -> int:
    """Longest history for which inference on ``device`` uses the dense-masked layout (:data:`DENSE_MAX_LENGTH`)."""
    return device_entry(DENSE_MAX_LENGTH, device)


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
    """A constant table of ``(L, device)``: built once per key in eager mode, inside a traced graph every time."""
    return builder(*args) if torch.compiler.is_compiling() else _cached_table(builder, *args)


def _shared_kv(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
    """fp32 K and V ``[B, H|G, L, D]`` as every SDPA call of the dense layout reads them, with the keyword that goes
    with them: query head ``h`` reads kv head ``h // (H/G)``. On CUDA the kv heads are expanded once per call of the
    layout (``[B, H, L, D]``; one copy, the cast included) instead of passing ``enable_gqa``: with it, fp32 inputs
    (which every layout computes in) take SDPA's math kernel, which materialises the ``[B, H, Q, L]`` scores;
    expanded, the memory-efficient kernel runs (K and V copied ``H/G`` times: small next to the scores). Elsewhere
    ``enable_gqa``."""
    batch, groups, seq_len, head_dim = key.shape
    heads = query.shape[1]
    if query.is_cuda and heads != groups:
        g = heads // groups
        if key.dtype == torch.float32:
            return key.repeat_interleave(g, dim=1), value.repeat_interleave(g, dim=1), {}
        # one cast-and-copy per tensor (``to`` of an expanded tensor writes a contiguous result)
        kv = (x[:, :, None].expand(batch, groups, g, seq_len, head_dim).float() for x in (key, value))
        return *(x.reshape(batch, heads, seq_len, head_dim) for x in kv), {}
    return key.float(), value.float(), {"enable_gqa": True}


def _float_bias(mask: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """A boolean mask ``[..., L]`` (True = attend) as SDPA's additive fp32 bias (0 / -inf), its rows ``width`` wide
    (default ``L`` rounded up to 8: SDPA's memory-efficient kernel copies a bias whose row stride is not a multiple
    of 8; the columns past ``L`` are -inf)."""
    seq_len = mask.shape[-1]
    width = -(-seq_len // 8) * 8 if width is None else width
    bias = torch.full((*mask.shape[:-1], width), float("-inf"), dtype=torch.float32, device=mask.device)
    bias[..., :seq_len].masked_fill_(mask, 0.0)
    return bias


def _stis_bias(seq_len: int, window: int, num_sinks: int, device: torch.device) -> torch.Tensor:
    """The STIS key set of every position as an additive fp32 bias ``[L, L8]`` (:func:`_float_bias`; read as
    ``[..., :L]``)."""
    return _float_bias(stis_dense_mask(seq_len, window, num_sinks, device))


def _causal_bias(seq_len: int, block: int, device: torch.device) -> torch.Tensor:
    """``[L, nb*b]`` fp32 (``nb = ceil(L / b)`` blocks): 0 where key ``j <= t`` (query ``t``), -inf elsewhere."""
    keys = torch.arange(-(-seq_len // block) * block, device=device)
    return _float_bias(keys <= torch.arange(seq_len, device=device)[:, None], keys.numel())


def _own_block_bias(seq_len: int, block: int, device: torch.device) -> torch.Tensor:
    """``[L, nb + 1]`` fp32, one entry per block (and a spare last column): 0 at query ``t``'s own block ``t // b``,
    -inf elsewhere. The start of every query's LTIS block bias (the selected blocks are set to 0 on a copy)."""
    columns = torch.arange(-(-seq_len // block) + 1, device=device)
    own = columns == torch.arange(seq_len, device=device)[:, None] // block
    return _float_bias(own, columns.numel())


def _ineligible_windows(seq_len: int, block: int, device: torch.device) -> torch.Tensor:
    """``[L, M]`` bool (``M = L // b`` windows): window ``w`` is not eligible for a real query ``t``, i.e.
    ``w >= t // b`` (:func:`attention_patterns.ltis_eligibility`; at a real query the block-has-a-real-item and
    real-query conditions follow from ``w < t // b``)."""
    windows = torch.arange(seq_len // block, device=device)
    return windows >= torch.arange(seq_len, device=device)[:, None] // block


def _top_blocks(ranked: torch.Tensor, k: int) -> torch.Tensor:
    """The dense layout's top-``k`` windows of ``ranked [..., M]`` (``-inf`` = ineligible), ties to the larger ``w``:
    ``k`` rounds of ``argmax`` over ``w`` reversed (``argmax`` returns the first of equal maxima), the winner set to
    ``-inf`` before the next round. Once a row's finite entries are used up the rounds return ``w = M - 1`` (see
    :func:`_dense_selection`). On an H200 one round of a ``[B*G*L, M]`` row set costs two small kernels, the stable
    sort of the rows one that took 0.37 ms at 65k tokens (docs/BENCHMARKS.md, "sdpa inference on CUDA")."""
    num_windows = ranked.shape[-1]
    flipped = ranked.flip(-1)
    slots = []
    for round_ in range(k):
        index = flipped.argmax(dim=-1, keepdim=True)
        slots.append(index)
        if round_ + 1 < k:
            flipped.scatter_(-1, index, float("-inf"))
    return (num_windows - 1) - (slots[0] if k == 1 else torch.cat(slots, dim=-1))


def _dense_selection(query, compressed_key, seq_len, scaling, pattern, selected_blocks, positions):
    """The dense layout's block selection ``[B, G, Q, k]`` (``k = min(n, M)``, long, block ids in ``0 .. nb``), or
    ``None`` when every eligible window is selected (as :func:`_inference_selection`).

    At every real query the set of its eligible slots is :func:`attention_patterns.ltis_select`'s exactly (the
    scores of :func:`attention_patterns.ltis_scores`, the eligibility of :func:`_ineligible_windows`, ties to the
    larger ``w``: :func:`_top_blocks`). A slot without an eligible window names some window ``w >= t // b`` instead
    of ``-1``: its keys are the own block's (attended up to ``t`` anyway) or lie after ``t`` (masked by the causal
    bias), so the key set is the same. Padded queries (``t >= length``) get some selection: their output is zeroed
    by the caller. An override ``selected_blocks`` has its ``-1`` mapped to the spare column ``nb``. In traced graphs
    :func:`attention_patterns.ltis_top_windows` (top-k)."""
    block = pattern.block_size
    num_blocks = -(-seq_len // block)
    if selected_blocks is not None:
        return selected_blocks.to(device=query.device, dtype=torch.long).remainder(num_blocks + 1)
    if every_window_selected(seq_len, pattern):
        return None
    num_windows = compressed_key.shape[2]
    ineligible = _table(_ineligible_windows, seq_len, block, query.device)
    ineligible = ineligible if positions is None else ineligible[positions][:, None]  # [L, M] or [B, 1, Q, M]
    ranked = ltis_scores(query, compressed_key, scaling).masked_fill_(ineligible, float("-inf"))
    k = min(pattern.num_selected_blocks, num_windows)
    if torch.compiler.is_compiling():
        return ltis_top_windows(ranked, k).remainder(num_blocks + 1)
    return _top_blocks(ranked, k)


def _positions_table(seq_len: int, device: torch.device) -> torch.Tensor:
    """``[1, L]``: every query position ``0 .. L-1``."""
    return torch.arange(seq_len, device=device)[None]


def padded_queries(lengths: torch.Tensor, seq_len: int, positions: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, 1, Q, 1]`` bool: the query (every position, or those at ``positions [B, Q]``) is padding
    (``t >= length``; the complement of :func:`attention_patterns.query_is_real`, from a cached position table)."""
    if positions is None:
        positions = _table(_positions_table, seq_len, lengths.device)
    return (positions >= lengths[:, None])[:, None, :, None]


def _query_chunks(num_queries: int, rows: int) -> list[tuple[int, int]]:
    """``(start, end)`` of the dense layout's query chunks (:data:`DENSE_QUERY_CHUNK_ROWS`; ``rows <= 0``: one)."""
    if rows <= 0 or num_queries <= rows:
        return [(0, num_queries)]
    return [(start, min(start + rows, num_queries)) for start in range(0, num_queries, rows)]


def dense_inference(query, key, value, compressed_key, gate, lengths, scaling, pattern, selected_blocks,
                    positions):
    """Whole-history SDPA per branch, for every query (in causal chunks of the query axis,
    :data:`DENSE_QUERY_CHUNK_ROWS`) or the ones at ``positions``, with additive fp32 biases (no boolean mask for SDPA
    to convert per call).

    STIS: rows of the cached ``[L, L]`` bias, every query head ``[B, H, Q, D]`` against it. LTIS: causal
    (``is_causal``, or rows of the cached causal bias at ``positions``) when every eligible window is selected;
    else a per-block bias ``[B, G, Q, nb]`` (a copy of the cached own-block rows, the selected blocks set to 0,
    :func:`_dense_selection`) added to the cached causal bias viewed as ``[L, nb, b]``: one op per chunk writes the
    chunk's ``[B, G, Qc, keys]`` bias. Queries are laid out ``[B*G, g, Q, D]`` for LTIS so that the bias of a kv
    head serves its ``g`` query heads. The output of padded queries is not zeroed here (the caller does it)."""
    batch, heads, num_queries, head_dim = query.shape
    groups, seq_len, block = key.shape[1], key.shape[2], pattern.block_size
    g = heads // groups
    num_blocks = -(-seq_len // block)
    device = query.device
    q = query.float()
    k, v, gqa = _shared_kv(query, key, value)
    q_grouped = q.reshape(batch * groups, g, num_queries, head_dim)
    k_grouped, v_grouped = (x.reshape(batch * groups, -1, seq_len, head_dim) for x in (k, v))
    selected = _dense_selection(query, compressed_key, seq_len, scaling, pattern, selected_blocks, positions)
    stis = _table(_stis_bias, seq_len, pattern.stis_window, pattern.stis_num_sinks, device)
    causal = _table(_causal_bias, seq_len, block, device)
    if selected is not None:
        own = _table(_own_block_bias, seq_len, block, device)
        if positions is None:
            chosen = own.expand(batch, groups, num_queries, num_blocks + 1).clone()
        else:
            chosen = own[positions[:, None].expand(batch, groups, num_queries)]
        chosen.scatter_(-1, selected, 0.0)  # [B, G, Q, nb + 1]: 0 = the block is attended
        blocks = causal.view(seq_len, num_blocks, block)

    def sdpa(q_rows, k_rows, v_rows, end, **kwargs):
        return F.scaled_dot_product_attention(q_rows, k_rows[:, :, :end], v_rows[:, :, :end], scale=scaling, **gqa,
                                              **kwargs)

    if positions is not None:  # the serving path's queries: one call per branch
        out_stis = sdpa(q, k, v, seq_len, attn_mask=stis[positions][:, None, :, :seq_len])  # [B, 1, Q, L]
        if selected is None:
            out_ltis = sdpa(q, k, v, seq_len, attn_mask=causal[positions][:, None, :, :seq_len])
        else:
            bias = torch.add(blocks[positions][:, None], chosen[..., :num_blocks, None])  # [B, G, Q, nb, b]
            bias = bias.view(batch * groups, 1, num_queries, num_blocks * block)[..., :seq_len]
            out_ltis = sdpa(q_grouped, k_grouped, v_grouped, seq_len, attn_mask=bias)
    else:
        chunks = _query_chunks(num_queries, device_entry(DENSE_QUERY_CHUNK_ROWS, device))
        out_stis = [sdpa(q[:, :, s:e], k, v, e, attn_mask=stis[s:e, :e]) for s, e in chunks]
        if selected is None:  # causal over the whole history: SDPA skips the tiles above the diagonal itself
            out_ltis = [sdpa(q_grouped, k_grouped, v_grouped, seq_len, is_causal=True)]
        else:  # each chunk's bias from its rows of the block bias and of the causal bias, keys up to its end
            out_ltis = []
            for s, e in chunks:
                width = -(-e // block)
                bias = torch.add(blocks[s:e, :width], chosen[:, :, s:e, :width, None])  # [B, G, Qc, width, b]
                bias = bias.view(batch * groups, 1, e - s, width * block)[..., :e]
                out_ltis.append(sdpa(q_grouped[:, :, s:e], k_grouped, v_grouped, e, attn_mask=bias))
        out_stis, out_ltis = (x[0] if len(x) == 1 else torch.cat(x, dim=2) for x in (out_stis, out_ltis))
    out_ltis = out_ltis.reshape(batch, heads, num_queries, head_dim)
    gate = gate.float()
    return torch.addcmul(out_ltis * gate[..., 0:1], out_stis, gate[..., 1:2])


#: Gathered K and V elements per chunk of queries in the gathered inference layout, per device type. CPU: small
#: enough for the chunk's buffers to stay in cache and be reused by the allocator (fresh large buffers cost a page
#: fault per 4 KiB); CUDA: large, few launches (64 histories of 4096 items would otherwise gather ~6 GB per layer).
INFERENCE_TILE_ELEMENTS: dict[str, int] = {"cpu": 1 << 21, "cuda": 1 << 26}


#: additive mask of the gathered layout: finite, so that the softmax stays on its fast path (``exp(-inf)`` is slow on
#: some CPUs); every real query keeps at least one key per branch (itself), so no row is fully masked
_MASKED = -1e30


def gathered_inference(query, key, value, compressed_key, gate, lengths, scaling, pattern, selected_blocks,
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
    tile = device_entry(INFERENCE_TILE_ELEMENTS, query.device)
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
    q = grouped_queries(query.float(), groups).reshape(rows, g, head_dim)
    gate = grouped_queries(gate.float(), groups).reshape(rows, g, 2)
    outs = []
    for (k, v), valid in branches:
        bias = torch.where(valid, 0.0, _MASKED).expand(batch, groups, num_queries, -1).reshape(rows, 1, -1)
        logits = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scaling)  # [rows, g, K]: scaled, masked
        outs.append(torch.bmm(torch.softmax(logits, dim=-1), v))  # [rows, g, D]
    out = torch.addcmul(outs[0] * gate[..., 0:1], outs[1], gate[..., 1:2])
    return out.reshape(batch, groups, num_queries, g, head_dim).transpose(2, 3).reshape(batch, heads, num_queries,
                                                                                       head_dim)
