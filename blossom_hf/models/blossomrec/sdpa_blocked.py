"""The blocked inference layout of the SDPA backend (``attention_sdpa``'s module docstring, "blocked inference"): every
position of histories longer than ``DENSE_MAX_LENGTH``, query block by query block, cost linear in L. Its tuning
tables (:data:`BLOCKED_TILE_ROWS`, :data:`BLOCKED_COPY_ROWS`, :data:`SELECTION_TILE_ELEMENTS`) are per device type and
re-exported by ``attention_sdpa`` and ``sdpa_inference`` (the same dict objects);
``python -m blossom_hf.benchmarks.cpu_breakdown --layout-ab`` times versions of this file or settings of its tables.
Computation runs in fp32, as in every backend.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from .attention_patterns import every_window_selected, ltis_every_eligible, ltis_select, stis_offsets
from .sdpa_inference import _MASKED, _table, device_entry  # the shared mask constant, cached tables, table lookup

__all__ = ["BLOCKED_COPY_ROWS", "BLOCKED_TILE_ROWS", "SELECTION_TILE_ELEMENTS", "blocked_inference"]


#: Query rows (positions x kv heads) per chunk of the blocked inference layout, per device type. CPU: few chunks, the
#: selected blocks copied :data:`BLOCKED_COPY_ROWS` rows at a time into buffers the allocator reuses (2 threads, the
#: layout alone, ms for 2048 / 4096 / 8192 rows: L = 4096, B = 1: 17.0 / 16.6 / 16.3; L = 1024, B = 16: 57.0 / 52.2 /
#: 54.7; L = 2048, B = 8: 60.4 / 60.4 / 60.4); CUDA: large, few launches.
BLOCKED_TILE_ROWS: dict[str, int] = {"cpu": 4096, "cuda": 1 << 17}

#: Query rows (of a chunk of :data:`BLOCKED_TILE_ROWS`) whose selected blocks the blocked layout copies and multiplies
#: at a time, per device type (the STIS keys, ``W + log2 L`` rows per query: 8/3 as many query rows at a time). CPU:
#: the copies (``n b D`` floats per row for K, then for V) are read by the matmul while they are in the core's cache
#: (2 threads, the layout alone, ms for 256 / 384 / 768 rows / whole chunks: L = 4096, B = 1: 16.9 / 16.6 / 18.2 /
#: 23.4; L = 1024, B = 16: 52.5 / 52.2 / 56.2 / 74.3); CUDA: the whole chunk at once.
BLOCKED_COPY_ROWS: dict[str, int] = {"cpu": 384, "cuda": 1 << 30}

#: score elements (queries x kv heads x windows) per chunk of the blocked layout's selection
SELECTION_TILE_ELEMENTS: dict[str, int] = {"cpu": 1 << 18, "cuda": 1 << 26}

_WORKSPACE = threading.local()


def _workspace(slot: int, numel: int, device: torch.device) -> torch.Tensor:
    """A buffer of ``numel`` fp32 elements for the gathered blocks of a chunk, kept per thread and device between
    calls on a CPU (a fresh buffer of a few MB costs a page fault per 4 KiB there, about as much as the gather
    itself); elsewhere a new one (the CUDA allocator caches)."""
    if device.type != "cpu":
        return torch.empty(numel, device=device)
    cache = getattr(_WORKSPACE, "buffers", None)
    if cache is None:
        cache = _WORKSPACE.buffers = {}
    buffer = cache.get((slot, device))
    if buffer is None or buffer.numel() < numel:
        with torch.inference_mode(False):  # a plain tensor: usable as out= in and outside inference mode
            buffer = cache[(slot, device)] = torch.empty(numel, device=device)
    return buffer[:numel]


def _selection_table(query, compressed_key, lengths, scaling, pattern, selected_blocks):
    """``selected [B, G, L, n]`` of every position, or ``None`` when every eligible window is selected. In chunks of
    queries; a chunk ending at ``e`` scores only the windows ``w < (e-1) // b`` (no query of it has a later
    eligible one), which :func:`attention_patterns.ltis_select` then ranks exactly as over all ``M``."""
    batch, _, seq_len, _ = query.shape
    if selected_blocks is not None:
        return selected_blocks.to(device=query.device, dtype=torch.long)
    if every_window_selected(seq_len, pattern):
        return None
    groups, num_windows = compressed_key.shape[1], compressed_key.shape[2]
    b, n = pattern.block_size, pattern.num_selected_blocks
    tile = device_entry(SELECTION_TILE_ELEMENTS, query.device)
    chunk = max(b, tile // max(1, batch * groups * num_windows) // b * b)
    if torch.compiler.is_compiling():
        chunk = seq_len
    if not torch.compiler.is_compiling():
        return _selection_rounds(query, compressed_key, scaling, pattern, chunk)
    parts = []
    for start in range(0, seq_len, chunk):
        end = min(seq_len, start + chunk)
        windows = num_windows if torch.compiler.is_compiling() else min(num_windows, (end - 1) // b)
        if windows == 0:
            parts.append(torch.full((batch, groups, end - start, n), -1, dtype=torch.long, device=query.device))
            continue
        positions = torch.arange(start, end, device=query.device)[None].expand(batch, -1)
        selected, _ = ltis_select(query[:, :, start:end], compressed_key[:, :, :windows], lengths, scaling, pattern,
                                  None, positions, with_probs=False)
        parts.append(selected)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


def _reversed_eligibility(seq_len: int, block: int, device: torch.device) -> torch.Tensor:
    """``[L, M]`` additive eligibility over the windows reversed: column ``j`` is window ``w = M-1-j``, 0 where
    ``w < t // b`` (the window ends before query ``t``), else ``-inf``. Padded queries are not excluded: their
    output is discarded (zeroed), whatever they select."""
    num_windows = seq_len // block
    t = torch.arange(seq_len, device=device)[:, None] // block
    w = (num_windows - 1) - torch.arange(num_windows, device=device)
    return torch.where(w < t, 0.0, float("-inf"))


def _selection_rounds(query, compressed_key, scaling, pattern, chunk):
    """:func:`_selection_table` in eager mode: the same scores as :func:`attention_patterns.ltis_scores` (``τ`` times
    the group-mean query against the compressed keys), computed over the windows reversed so that the ``n`` rounds
    of ``max`` read them in the order that breaks ties to the larger ``w`` (as
    :func:`attention_patterns.ltis_top_windows`), with the eligibility added in the same matmul (``baddbmm`` with a
    cached ``[L, M]`` table of 0 / -inf): no flip, mask or scaling pass over the scores. ``[B, G, L, n]``."""
    batch, heads, seq_len, head_dim = query.shape
    groups, num_windows = compressed_key.shape[1], compressed_key.shape[2]
    b, n = pattern.block_size, pattern.num_selected_blocks
    device = query.device
    rows = batch * groups
    q_mean = query.float().view(batch, groups, heads // groups, seq_len, head_dim).mean(dim=2).view(
        rows, seq_len, head_dim)
    keys = compressed_key.float().flip(2).reshape(rows, num_windows, head_dim)  # w reversed
    eligible = _table(_reversed_eligibility, seq_len, b, device)
    out = torch.full((rows, seq_len, n), -1, dtype=torch.long, device=device)
    for start in range(0, seq_len, chunk):
        end = min(seq_len, start + chunk)
        windows = min(num_windows, (end - 1) // b)  # no query of the chunk has a later eligible window
        if windows == 0:
            continue
        first = num_windows - windows  # columns first.. are the windows windows-1 .. 0
        scores = torch.baddbmm(eligible[start:end, first:], q_mean[:, start:end],
                               keys[:, first:].transpose(1, 2), alpha=scaling)
        short = start < n * b  # a query t < n b has fewer than n eligible windows: empty slots
        for slot in range(min(n, windows)):
            value, index = scores.max(dim=-1, keepdim=True)  # the first of equal maxima: the larger w
            chosen = (windows - 1) - index
            out[:, start:end, slot:slot + 1] = torch.where(value > float("-inf"), chosen, -1) if short else chosen
            if slot + 1 < n:
                scores.scatter_(-1, index, float("-inf"))
    return out.view(batch, groups, seq_len, n)


def _own_block_bias(block: int, device: torch.device) -> torch.Tensor:
    """Additive mask ``[b, 1, b]`` of a query block's queries (in-block position ``i``) against their own block: key
    ``j <= i``."""
    i = torch.arange(block, device=device)[:, None]
    return torch.where(torch.arange(block, device=device)[None, :] <= i, 0.0, _MASKED)[:, None]


#: floor of ``logit - max`` before ``exp`` in the blocked layout: ``exp`` of a masked entry (``-1e30``) or of anything
#: below about -88 leaves the vectorised CPU ``exp`` for a 30-40x slower scalar path; ``exp(-80) = 1.8e-35`` is below
#: fp32 resolution next to the row's maximum entry (``exp(0) = 1``), so the floor changes no result
_EXP_FLOOR = -80.0


def _exp_below(logits: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """``exp(max(logits - top, _EXP_FLOOR))`` in place."""
    return logits.sub_(top).clamp_min_(_EXP_FLOOR).exp_()


def blocked_inference(query, key, value, compressed_key, gate, lengths, scaling, pattern, selected_blocks):
    """Every position, query block by query block (module docstring, "blocked inference"): ``[B, H, L, D]``.

    LTIS: per query block ``c`` (``b`` queries x ``g`` heads of a kv head) one matmul against its own block (a
    strided view of K) and, per query, the ``n`` selected blocks copied whole from the block table
    (:data:`BLOCKED_COPY_ROWS` query rows at a time) and multiplied; one softmax over both pieces (a shared maximum,
    ``exp``, the value products summed, one division). STIS: one slice of K and V per offset, stacked
    (:func:`_stis_stacked`). The selection first, for every position (:func:`_selection_table`). In chunks of query
    blocks and rows (:data:`BLOCKED_TILE_ROWS`)."""
    batch, heads, seq_len, head_dim = query.shape
    groups = key.shape[1]
    g = heads // groups
    b, n = pattern.block_size, pattern.num_selected_blocks
    device = query.device
    num_blocks = -(-seq_len // b)
    padded = num_blocks * b
    rows_bg = batch * groups
    offsets = stis_offsets(pattern.stis_window, seq_len)
    sinks = min(pattern.stis_num_sinks, seq_len)
    front = -(-max(b, offsets[-1]) // b) * b  # zero rows before position 0 (read by the STIS slices), whole blocks
    total = front + padded
    k_table, v_table = (F.pad(x.float(), (0, 0, front, padded - seq_len)).reshape(rows_bg, total, head_dim)
                        for x in (key, value))
    k_blocks, v_blocks = (t.view(rows_bg * total // b, b * head_dim) for t in (k_table, v_table))

    selected = _selection_table(query, compressed_key, lengths, scaling, pattern, selected_blocks)
    if selected is None:
        selected = ltis_every_eligible(seq_len, pattern, device)
    selected = F.pad(selected.expand(batch, groups, seq_len, n).reshape(rows_bg, seq_len, n),
                     (0, 0, 0, padded - seq_len), value=-1)  # [BG, L', n]
    first_block = torch.arange(rows_bg, device=device) * (total // b) + front // b
    block_rows = selected.clamp_min(0) + first_block[:, None, None]  # rows of the block tables
    # empty slots: only queries t < n b have any when the selection is ranked here
    biased = padded if selected_blocks is not None else min(padded, n * b)
    selected_bias = torch.where(selected[:, :biased] >= 0, 0.0, _MASKED)[..., None]  # [BG, L'|nb, n, 1]

    def grouped(x, scale=None):  # [B, H, L, E] -> contiguous [BG, L', g, E] (x scale), one pass
        width = x.shape[-1]
        source = x.float().reshape(batch, groups, g, seq_len, width).permute(0, 1, 3, 2, 4)
        if torch.compiler.is_compiling():  # traced graphs take no strided out= tensor
            source = source * scale if scale is not None else source
            return F.pad(source, (0, 0, 0, 0, 0, padded - seq_len)).reshape(rows_bg, padded, g, width)
        grouped_x = torch.empty(rows_bg, padded, g, width, device=device)
        target = grouped_x.view(batch, groups, padded, g, width)
        if scale is None:
            target[:, :, :seq_len].copy_(source)
        else:
            torch.mul(source, scale, out=target[:, :, :seq_len])
        target[:, :, seq_len:] = 0.0
        return grouped_x

    q_all, gate_all = grouped(query, scaling), grouped(gate)  # the chunks' row views need no copy
    own_bias = _table(_own_block_bias, b, device)
    # [B, L', H, D] memory order: the caller's [B, H, L, D] -> [B, L, H, D] transpose is then free
    out = torch.empty(batch, padded, groups, g, head_dim, device=device)
    out_bg = out.permute(0, 2, 1, 3, 4)  # [B, G, L', g, D]
    tile = device_entry(BLOCKED_TILE_ROWS, device)
    if torch.compiler.is_compiling():
        bg_step, c_step = rows_bg, num_blocks
    elif padded >= tile:
        bg_step, c_step = 1, max(1, tile // b)
    else:  # whole histories (both kv heads of each)
        bg_step, c_step = max(1, tile // (padded * groups)) * groups, num_blocks
    chunks = [(bg0, min(rows_bg, bg0 + bg_step), c0, min(num_blocks, c0 + c_step))
              for bg0 in range(0, rows_bg, bg_step) for c0 in range(0, num_blocks, c_step)]
    largest = max((bg1 - bg0) * (c1 - c0) * b * n for bg0, bg1, c0, c1 in chunks)
    buffers = None if torch.compiler.is_compiling() else tuple(
        _workspace(i, largest * b * head_dim, device).view(largest, b * head_dim) for i in range(2))
    for bg0, bg1, c0, c1 in chunks:
        chunk = _blocked_chunk(q_all, gate_all, k_table, v_table, k_blocks, v_blocks, block_rows, selected_bias,
                               own_bias, bg0, bg1, c0, c1, b, n, front, sinks, offsets, buffers,
                               selected_blocks is None)
        if bg1 - bg0 == 1:
            out_bg[bg0 // groups, bg0 % groups, c0 * b:c1 * b] = chunk[0]
        else:  # whole histories
            out_bg[bg0 // groups:bg1 // groups, :, c0 * b:c1 * b] = chunk.view(-1, groups, *chunk.shape[1:])
    return out.view(batch, padded, heads, head_dim)[:, :seq_len].transpose(1, 2)


def _blocked_chunk(q_all, gate_all, k_table, v_table, k_blocks, v_blocks, block_rows, selected_bias, own_bias, bg0,
                   bg1, c0, c1, b, n, front, sinks, offsets, buffers, ranked):
    """Output ``[bg1-bg0, (c1-c0) b, g, D]`` of the query blocks ``c0 .. c1-1`` of the rows ``bg0 .. bg1-1``."""
    nbg, nc = bg1 - bg0, c1 - c0
    t0, t1 = c0 * b, c1 * b
    head_dim = q_all.shape[-1]
    g = q_all.shape[2]
    rows = nbg * nc * b
    q = q_all[bg0:bg1, t0:t1]  # [nbg, nc*b, g, D], pre-scaled
    q_rows = q.reshape(rows, g, head_dim)
    # ---- LTIS: the own block (a strided view of K: one matmul per query block) + the n selected blocks ----
    own_k = k_table[bg0:bg1, front + t0:front + t1].view(nbg, nc, b, head_dim).transpose(-1, -2)  # [.., D, b]
    own_v = v_table[bg0:bg1, front + t0:front + t1].view(nbg, nc, b, head_dim)
    own = torch.matmul(q.reshape(nbg, nc, b * g, head_dim), own_k).view(nbg, nc, b, g, b)
    out_ltis = _ltis_copied(q_rows, own, own_v, own_bias, block_rows, selected_bias, bg0, bg1, t0, t1, b, n,
                            k_blocks, v_blocks, buffers, ranked)
    # ---- STIS: one slice of K and V per offset ----
    return _stis_stacked(q_rows, out_ltis, gate_all, k_table, v_table, bg0, bg1, t0, t1, front, sinks, offsets)


def _stis_stacked(q_rows, out_ltis, gate_all, k_table, v_table, bg0, bg1, t0, t1, front, sinks, offsets):
    """STIS of a chunk and the gated sum with ``out_ltis`` -> ``[bg1-bg0, t1-t0, g, D]``: the keys ``t - d`` of
    every offset ``d`` (``W + log2 L`` per query; the ``front`` zero rows stand for positions before 0, masked) and
    the sinks, copied from the flattened K (and V) table in one row gather per few hundred query rows; one
    product, one softmax, one product. (Against the near offsets taken from a matmul with the key pair, blocks
    ``c-1`` and ``c``, as a strided view: equal for one history, 5-12 % faster for 8-16, 2 threads; a stack of
    the shifted slices instead of the row gather took the cat kernel's slow path for 64-byte pieces, 17 % slower
    at L = 4096: docs/BENCHMARKS_CPU.md.)"""
    rows, g, head_dim = q_rows.shape
    nbg = bg1 - bg0
    device = q_rows.device
    t = torch.arange(t0, t1, device=device)
    offset = torch.tensor(offsets, device=device)
    keys = [t[:, None] - offset]  # [Q, K]: key positions (negative ones read the front zero rows, masked)
    valid = [keys[0] >= 0]
    if sinks:
        s = torch.arange(sinks, device=device)
        keys.append(s.expand(t1 - t0, sinks))
        covered = ((t[:, None] - s)[..., None] == offset).any(-1)
        valid.append((s <= t[:, None]) & ~covered)
    total_rows = k_table.shape[1]
    # rows of the flattened [BG * (front + L'), D] tables
    index = (torch.arange(bg0, bg1, device=device)[:, None, None] * total_rows + front
             + torch.cat(keys, dim=-1)).reshape(-1)
    num_keys = index.numel() // rows
    step = rows if torch.compiler.is_compiling() else min(rows, device_entry(BLOCKED_COPY_ROWS, device) * 8 // 3)
    parts = [(r0, min(rows, r0 + step)) for r0 in range(0, rows, step)]

    def copied(slot, table, r0, r1):  # the STIS keys (or values) of query rows r0 .. r1-1: [r1-r0, K, D]
        rows_index = index[r0 * num_keys:r1 * num_keys]
        if torch.compiler.is_compiling():  # traced graphs: no out= buffers
            return table.view(-1, head_dim).index_select(0, rows_index).view(r1 - r0, num_keys, head_dim)
        return torch.index_select(table.view(-1, head_dim), 0, rows_index,
                                  out=_workspace(slot, rows_index.numel() * head_dim, device).view(-1, head_dim)
                                  ).view(r1 - r0, num_keys, head_dim)

    if len(parts) == 1:
        logits = torch.bmm(q_rows, copied(2, k_table, 0, rows).transpose(1, 2))  # [rows, g, K]
    else:
        logits = torch.empty(rows, g, num_keys, device=device)
        for r0, r1 in parts:
            torch.bmm(q_rows[r0:r1], copied(2, k_table, r0, r1).transpose(1, 2), out=logits[r0:r1])
    masked = bool(sinks) or t0 < offsets[-1]
    if masked:
        bias = torch.where(torch.cat(valid, dim=-1), 0.0, _MASKED)[:, None]  # [Q, 1, K]
        logits.view(nbg, t1 - t0, g, -1).add_(bias)
        logits = _exp_below(logits, logits.amax(-1, keepdim=True))
    else:
        logits = logits.sub_(logits.amax(-1, keepdim=True)).exp_()
    total = logits.sum(-1, keepdim=True)
    if len(parts) == 1:
        out_stis = torch.bmm(logits, copied(3, v_table, 0, rows))
    else:
        out_stis = torch.empty(rows, g, head_dim, device=device)
        for r0, r1 in parts:
            torch.bmm(logits[r0:r1], copied(3, v_table, r0, r1), out=out_stis[r0:r1])
    out_stis = out_stis.div_(total)
    gate = gate_all[bg0:bg1, t0:t1].reshape(rows, g, 2)
    return torch.addcmul(out_ltis * gate[..., 0:1], out_stis, gate[..., 1:2]).view(nbg, t1 - t0, g, head_dim)


def _ltis_copied(q_rows, own_logits, own_v, own_bias, block_rows, selected_bias, bg0, bg1, t0, t1, b, n, k_blocks,
                 v_blocks, buffers, ranked):
    """LTIS output ``[rows, g, D]`` of a chunk with the ``n`` selected blocks copied whole per query (into
    ``buffers`` where given) and one small matmul per query and kv head; the softmax shift is the maximum."""
    nbg, nc, _, g, _ = own_logits.shape
    rows, head_dim = q_rows.shape[0], q_rows.shape[-1]
    index = block_rows[bg0:bg1, t0:t1].reshape(-1)
    step = rows if buffers is None else min(rows, device_entry(BLOCKED_COPY_ROWS, q_rows.device))
    parts = [(r0, min(rows, r0 + step)) for r0 in range(0, rows, step)]

    def copied(table, buffer, r0, r1):  # the selected blocks of query rows r0 .. r1-1: [r1-r0, n b, D]
        if buffer is None:  # traced graphs: no out= buffers
            return table.index_select(0, index[r0 * n:r1 * n]).view(r1 - r0, n * b, head_dim)
        return torch.index_select(table, 0, index[r0 * n:r1 * n], out=buffer[:(r1 - r0) * n]).view(
            r1 - r0, n * b, head_dim)

    k_buffer, v_buffer = (None, None) if buffers is None else buffers
    if len(parts) == 1:
        sel = torch.bmm(q_rows, copied(k_blocks, k_buffer, 0, rows).transpose(1, 2))
    else:  # blocks copied a few hundred rows at a time, each read while it is in the core's cache
        sel = torch.empty(rows, g, n * b, device=q_rows.device)
        for r0, r1 in parts:
            torch.bmm(q_rows[r0:r1], copied(k_blocks, k_buffer, r0, r1).transpose(1, 2), out=sel[r0:r1])
    sel = sel.view(nbg, nc * b, g, n, b)
    # a real query t >= n b has n eligible windows, so n selected blocks (a padded query's output is discarded,
    # whatever its slots hold); a given selection may leave any slot empty
    short = (min(t1, n * b) if ranked else t1) - t0
    if short > 0:
        sel[:, :short] += selected_bias[bg0:bg1, t0:t0 + short, None]
    sel = sel.view(rows, g, n, b)
    own = own_logits + own_bias  # [nbg, nc, b, g, b]
    top = torch.maximum(own.amax(-1).view(rows, g), sel.amax(dim=(-2, -1)))  # [rows, g]
    own = _exp_below(own, top.view(nbg, nc, b, g, 1))
    if short > 0:
        sel = _exp_below(sel, top[..., None, None])
    else:  # no masked entry: the floor would only ever lift real logits more than 80 below the row's maximum
        sel = sel.sub_(top[..., None, None]).exp_()
    total = own.sum(-1).view(rows, g) + sel.sum(dim=(-2, -1))
    out_ltis = torch.matmul(own.view(nbg, nc, b * g, b), own_v).view(rows, g, head_dim)
    sel = sel.view(rows, g, n * b)
    for r0, r1 in parts:
        out_ltis[r0:r1].baddbmm_(sel[r0:r1], copied(v_blocks, v_buffer, r0, r1))
    return out_ltis.div_(total[..., None])
