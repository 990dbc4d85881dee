"""Launchers of the fused Triton backend: the tile geometry (:class:`TritonGeometry`, :func:`plan`) and the
keyword-argument launches of the kernels in ``triton_select.py``, ``triton_fwd.py``, ``triton_bwd_tile.py`` and
``triton_bwd_gather.py``, used by the autograd function in ``attention_triton.py``. Kernel modules are passed
in (``attention_triton._kernels()`` imports them on first use), so this file never imports triton itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from .attention_patterns import BlossomPattern
from .triton_common import cdiv, next_pow2
from .triton_fast_launch import launch

#: histories up to this length use the dense-tile strategy, longer ones the gathered one (measured
#: crossover on an H200, docs/BENCHMARKS.md: in v9 the two operators are level at 2048, 4.3 ms, tile ahead at 1792,
#: 4.0 against 4.3; the gathered step also launches ~40 more kernels, its inverse index's sorts among them)
TILE_MAX_SEQ_LEN = 2048
#: from these lengths on the tile strategy's backward, then its forward, use 4-query, one-block tiles (plan(); head
#: dim 16, g = 4, bf16/fp16)
SMALL_BWD_MIN_SEQ_LEN = 768
SMALL_FWD_MIN_SEQ_LEN = 1024
STRATEGIES = ("auto", "tile", "gather")


@dataclass(frozen=True)
class TritonGeometry:
    """Strategy, tile sizes and compile-time constants of one call (:func:`plan`); see the kernel files."""

    strategy: str  # "tile" or "gather"
    g: int  # query heads per kv head
    GP: int  # g rounded up to a power of two (rows of one query in a tile)
    DP: int  # head dim rounded up to a power of two (>= 16)
    NP: int  # n rounded up to a power of two (>= 2)
    # dense-tile strategy: the forward's BM queries x GP heads = R rows against BN keys; the backward's query tiles of
    # BMB queries (RB rows) against BNQ keys (query side) and key tiles of BNK keys (key side)
    BM: int
    BN: int
    R: int
    BNQ: int
    BMB: int
    RB: int
    BNK: int
    # gathered strategy (query-major): BQ queries x g heads = RG rows; gathered tiles of BQ x (b, far) keys
    BQ: int
    RG: int
    BQP: int
    BP: int
    KO: int
    KN: int
    P0: int
    NFP: int
    SP: int
    # gathered strategy (key-major): CQ queries x g heads = RK rows against BK keys
    CQ: int
    RK: int
    BK: int
    DN: int
    PF0: int
    NFK: int
    BP5: int
    CH: int
    # selection: TQ queries x BW windows; its backward kernels (and the dq kernel's share of it): BWB windows a tile
    TQ: int
    BW: int
    BWB: int
    # warps per program: forward kernels (both strategies) and the gathered backward's selected-block and sink
    # kernels; the selection; the selection's backward; the backward's query-side and key-side kernel (of either
    # strategy: plan() sets them per strategy; docs/triton_notes.md, sweep)
    num_warps: int = 4
    warps_select: int = 4
    warps_select_bwd: int = 4
    warps_bwd_q: int = 4
    warps_bwd_kv: int = 4
    # register caps (triton's ``maxnreg``; 0 = the compiler's choice) of the forward, the query-side and the key-side
    # backward kernel (either strategy; the gathered key side: ``bwd_kv_gather_kernel``)
    maxreg_fwd: int = 0
    maxreg_bwd_q: int = 0
    maxreg_bwd_kv: int = 0
    # the tile dq kernel adds the selection's share of dq when its query tiles hold >= SELQ_MIN_BM queries, else
    # select_bwd_q_kernel runs after it. Below 16 queries the share is broadcast products summed in registers: at 4
    # queries and 1 warp that made the dq kernel 0.88 -> 1.25 ms at L = 1024, against 0.11 for the separate kernel
    # (v9 sweep, H200), so plan() keeps 16
    SELQ_MIN_BM: int = 16

    @property
    def UBM(self) -> int:  # noqa: N802 (a kernel constant, named like the others)
        """Queries per row of the union words: the smaller of the forward's and the backward's query tiles (both
        powers of two), so a kernel's tile covers a whole number of rows (``BM // UBM``, ``BMB // UBM``)."""
        return min(self.BM, self.BMB)


def _regs(cap: int) -> dict:
    """Launch options of a register cap (none for 0)."""
    return {"maxnreg": cap} if cap > 0 else {}


@lru_cache(maxsize=512)
def plan(heads: int, groups: int, seq_len: int, head_dim: int, pattern: BlossomPattern, itemsize: int = 2,
         strategy: str = "auto", serving: bool = False) -> TritonGeometry:
    """Choose the strategy and the tile sizes of one call (cached: called by every layer call).

    ``serving=True``: the serving path's few queries at given positions (gathered strategy, one query per
    program, forward only)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"triton backend: strategy must be one of {STRATEGIES}, got {strategy!r}")
    if serving:
        strategy = "gather"
    elif strategy == "auto":
        strategy = "tile" if seq_len <= TILE_MAX_SEQ_LEN else "gather"
    g = heads // groups
    gp = next_pow2(g)
    b, w = pattern.block_size, pattern.stis_window
    dp = max(16, next_pow2(head_dim))
    # tile strategy: 64 rows; a key tile spans at most 17 blocks (the per-row bitmask of selected blocks)
    bm = max(1, 64 // gp)
    bn = max(16, min(32, 1 << (16 * b).bit_length() - 1))  # 32 beat 64 at every L (docs/triton_notes.md)
    # gathered strategy: BQ queries x g heads (>= 16 rows for the tensor cores); a gathered key tile holds
    # BQ x b keys, capped at 32 KiB (with g = 1 and head dim 128 an uncapped 256 x 128 tile overflowed the
    # H200's shared memory: 274 KB needed, 232 KB available)
    tile_cap = max(1, 32768 // (next_pow2(b) * dp * itemsize))
    bq = 1 if serving else max(1, min(16 // gp, tile_cap))
    p0 = next_pow2(w)  # smallest power of two >= W: the first offset outside the window
    nf = 0
    while (p0 << nf) < seq_len:
        nf += 1
    dn = max(w - 1, b - 1)
    pf0 = 1 << dn.bit_length()  # smallest power of two > DN
    nfk = 0
    while (pf0 << nfk) < seq_len:
        nfk += 1
    cq = max(1, (64 if dp <= 64 else 32) // gp)
    tq = 64 if dp <= 32 else 32
    # window tiles of 16 at head dims <= 32: the packed-key selection and the selection's backward kernels were
    # 3-6% faster on the whole operator than with 32- or 64-window tiles at L = 512..4096 (fewer registers per
    # program, more programs per SM; docs/BENCHMARKS.md, "Kernel round v7"); larger head dims keep 32 (not measured)
    bw = 16 if dp <= 32 else max(16, min(32, next_pow2(seq_len // b)))
    # measured at head dim 16 (H200, docs/triton_notes.md, one field at a time): 2 warps beat 4 for the two tile
    # backward kernels and the selection's backward, and for the selection up to 64 x 32 score tiles (16-key
    # tiles also helped the dq kernel, but less than 2 warps at L >= 512, and the pair was not measured); at head dim
    # 16 the dq kernel with 4 warps capped at 128 registers (4 programs per SM) beat 2 warps at 255 registers with
    # spills by 4-8% (docs/BENCHMARKS.md, "Kernel round"; scripts/dev/compile_check.py prints the registers); the tile
    # forward capped at 80 registers (6 programs of 4 warps per SM instead of 4) was 8% faster at L = 512-2048 in bf16
    # (v7; caps on the dk/dv kernel, 168 or 192, and on the dq kernel, 96, were slower)
    small = dp <= 32
    tile = strategy == "tile"
    # the gathered strategy at head dim 16 (v8 sweeps, H200, L = 4096 and 8192): its dq kernel with 2 warps instead of
    # 4 took 3.37 -> 1.53 ms at 4096 (188 registers at 4 warps: 8 warps per SM) and with 1 warp 0.85 (its tiles are
    # 16 rows); its key-side kernel with 2 warps 1.04 -> 0.52 (1 warp: the same); its forward capped at 80 registers
    # 2.00 -> 1.74 (not the serving path: unmeasured)
    gather16 = not tile and dp == 16 and itemsize == 2  # bf16/fp16 (fp32 at 1 warp spills: not measured)
    # the tile backward at L >= SMALL_BWD_MIN_SEQ_LEN, head dim 16, 4 heads per kv head, bf16/fp16 (v9 sweep, H200):
    # 4-query tiles (16 rows) against one-block (16-key) tiles at 1 warp visit fewer masked-out scores (fewer rows
    # share a tile's union of selected blocks): dq kernel 1.13 -> 0.88 ms (+0.11 for the selection's share, then its
    # own kernel), dk/dv kernel 1.15 -> 1.01 at L = 1024; 1.77 -> 1.23 and 1.90 -> 1.42 at 2048; the operator 2.77 ->
    # 2.70 at 768, but 2.15 -> 2.21 at 512
    small_bwd = tile and dp == 16 and gp == 4 and itemsize == 2 and seq_len >= SMALL_BWD_MIN_SEQ_LEN
    bmb = 4 if small_bwd else bm
    bnk = 16 if small_bwd else bn
    # from SMALL_FWD_MIN_SEQ_LEN on the forward too (1 warp, no register cap: capped at 80 it spills): 0.70 -> 0.72 ms
    # at 1024 (but 0.77 as a 16-query tile reading four 4-query rows of union words), 1.08 -> 1.01 at 2048; at 512
    # 0.48 -> 0.56, so shorter histories keep 16-query tiles (union words at 4 queries, read 4 rows at a time)
    small_fwd = small_bwd and seq_len >= SMALL_FWD_MIN_SEQ_LEN
    if small_fwd:
        bm, bn = 4, 16
    return TritonGeometry(
        strategy=strategy, g=g, GP=gp, DP=dp, NP=max(2, next_pow2(pattern.num_selected_blocks)),
        BM=bm, BN=bn, R=bm * gp, BNQ=bnk, BMB=bmb, RB=bmb * gp, BNK=bnk,
        BQ=bq, RG=max(16, next_pow2(bq * g)), BQP=max(2, bq), BP=max(next_pow2(b), -(-16 // bq)),
        KO=max(16, next_pow2(b if b % bq == 0 else b - 1 + bq)), KN=max(16, next_pow2(w - 1 + bq)), P0=p0,
        NFP=0 if nf == 0 else max(next_pow2(nf), -(-16 // bq)), SP=max(16, next_pow2(pattern.stis_num_sinks)),
        CQ=cq, RK=max(16, next_pow2(cq * g)), BK=16, DN=dn, PF0=pf0, NFK=nfk, BP5=max(16, next_pow2(b)), CH=256,
        TQ=tq, BW=bw, BWB=bw, warps_select=2 if small else 4, warps_select_bwd=2 if small else 4,
        # the fields are shared by the two strategies, the measurements are not (other head dims: 4 warps, no caps)
        warps_bwd_q=1 if small_bwd else (4 if dp == 16 else 2 if small else 4) if tile else 1 if gather16 else 4,
        maxreg_bwd_q=128 if dp == 16 and tile and not small_bwd else 0,
        warps_bwd_kv=1 if small_bwd else 2 if (small and tile) or gather16 else 4,
        num_warps=1 if small_fwd else 4,
        maxreg_fwd=80 if dp == 16 and itemsize == 2 and (tile or not serving) and not small_fwd else 0,
    )


def launch_select(ksel, geo, query, compressed_key, lens, scaling, pattern, selected_blocks, positions=None,
                  seq_len=None):
    """LTIS selection ``sel [B, G, Q, n]`` (int32), its probabilities, the logsumexp of the scores and (dense-tile
    strategy, else None) the union words ``[B, G, rows, cdiv(M, 32)]`` int32 of the selected blocks of each row of
    ``geo.UBM`` queries (``rows``: whole tiles of the larger query tile, the extra rows 0), for the ``Q`` query rows
    of ``query`` (positions ``0..L-1``, or ``positions [B, Q]`` with the key length ``seq_len`` on the serving
    path)."""
    batch, heads, num_queries, head_dim = query.shape
    groups, num_windows = compressed_key.shape[1], compressed_key.shape[2]
    seq_len = num_queries if seq_len is None else seq_len
    n = pattern.num_selected_blocks
    device = query.device
    sel = torch.empty(batch, groups, num_queries, n, dtype=torch.int32, device=device)
    psel = torch.empty(batch, groups, num_queries, n, dtype=torch.float32, device=device)
    lse_z = torch.empty(batch, groups, num_queries, dtype=torch.float32, device=device)
    tiles = geo.strategy == "tile" and positions is None
    # one row of words per UBM queries, padded to whole tiles of the larger of the two query tiles (the extra rows
    # stay 0), so a kernel reads its tile's BM // UBM rows without bounds checks
    big = max(geo.BM, geo.BMB)
    union = (torch.zeros(batch, groups, cdiv(num_queries, big) * (big // geo.UBM), max(1, cdiv(num_windows, 32)),
                         dtype=torch.int32, device=device) if tiles else None)
    if num_windows == 0:
        if selected_blocks is not None:
            sel.copy_(selected_blocks.to(device=device, dtype=torch.int32))
            if bool((sel >= 0).any()):
                raise ValueError("selected_blocks names a block, but L < block_size leaves no window to select")
        else:
            sel.fill_(-1)
        psel.zero_()
        lse_z.zero_()
        return sel, psel, lse_z, union
    has_sel = selected_blocks is not None
    sel_in = sel
    if has_sel:
        if tuple(selected_blocks.shape) != (batch, groups, num_queries, n):
            raise ValueError(f"selected_blocks must be [B, G, L, n] = {(batch, groups, num_queries, n)}, "
                             f"got {tuple(selected_blocks.shape)}")
        sel_in = selected_blocks.to(device=device, dtype=torch.int32).contiguous()
        if bool((sel_in >= num_windows).any()):
            raise ValueError(f"selected_blocks holds a block index >= L // block_size = {num_windows}")
    grid = (cdiv(num_queries, geo.TQ), batch * groups)
    launch(ksel.select_kernel, grid,
        Q=query, CK=compressed_key, LENS=lens, SEL_IN=sel_in, SEL=sel, PSEL=psel, LSEZ=lse_z,
        UNION=sel if union is None else union, **_position_args(positions, lens), **_qs(query),
        **_cs(compressed_key), L=seq_len, QN=num_queries, M=num_windows, G=groups, scale=float(scaling),
        **_union_shape(union), GQ=geo.g, HEAD_D=head_dim, DP=geo.DP, BLK=pattern.block_size, NSEL=n, NP=geo.NP,
        TQ=geo.TQ, BW=geo.BW, HAS_SEL=has_sel, HAS_POS=positions is not None, UBM=geo.UBM if tiles else 0,
        num_warps=geo.warps_select,
    )
    return sel, psel, lse_z, union


def _union_shape(union) -> dict:
    """``NQT`` (query tiles) and ``NWD`` (words per tile) of the union words (1, 1 without them: never read)."""
    return dict(NQT=1, NWD=1) if union is None else dict(NQT=int(union.shape[2]), NWD=int(union.shape[3]))


def _position_args(positions, placeholder) -> dict:
    """``POS`` and its strides (a placeholder pointer without positions: the kernels never read it then)."""
    if positions is None:
        return dict(POS=placeholder, spb=0, spt=0)
    return dict(POS=positions, spb=int(positions.stride(0)), spt=int(positions.stride(1)))


@lru_cache
def _stride_names(prefix: str, names: str) -> tuple[str, ...]:
    return tuple(prefix + c for c in names)


def _named_strides(prefix: str, x: torch.Tensor, names: str) -> dict[str, int]:
    """``{prefix + name: stride}`` of ``x`` (built ~14 times a layer step: the names are cached, the strides are
    Python ints already)."""
    return dict(zip(_stride_names(prefix, names), x.stride(), strict=True))


def _qs(x):
    return _named_strides("sq", x, "bhtd")


def _ks(x):
    return _named_strides("sk", x, "bhtd")


def _vs(x):
    return _named_strides("sv", x, "bhtd")


def _gs(x):
    return _named_strides("sg", x, "bhtc")


def _ds(x):
    return _named_strides("sd", x, "bhtd")


def _cs(x):
    return _named_strides("sc", x, "bhwd")


def _inverse_selection(sel: torch.Tensor, num_windows: int):
    """For each (batch, kv head, block): the queries that selected it, as CSR ``offsets`` + ``queries``."""
    batch, groups, seq_len, n = sel.shape
    buckets = batch * groups * num_windows
    bg = torch.arange(batch * groups, device=sel.device, dtype=torch.int64).view(batch, groups, 1, 1)
    key = torch.where(sel >= 0, bg * num_windows + sel.long(), buckets).flatten()
    order = torch.argsort(key, stable=True)
    # the sorted keys give the CSR offsets directly (no bincount)
    bounds = torch.arange(buckets + 1, device=sel.device, dtype=torch.int64)
    offsets = torch.searchsorted(key[order], bounds).to(torch.int32)
    queries = ((order // n) % seq_len).to(torch.int32)
    return offsets, queries



def _gather_kv_backward(kbg, geo, query, key, value, gate, lens, do, lse, dgate, sel, num_windows, strides, shape,
                        scaling, pattern, prec):
    """dk, dv (fp32) of the gathered strategy: own block + STIS offsets, selected blocks, sinks."""
    batch, heads, seq_len, head_dim = query.shape
    groups = key.shape[1]
    dk = torch.empty(batch, groups, seq_len, head_dim, dtype=torch.float32, device=query.device)
    dv = torch.empty_like(dk)
    base = dict(Q=query, K=key, V=value, GATE=gate, DO=do, LSE=lse, DGATE=dgate, DK=dk, DV=dv, **strides,
                L=seq_len, H=heads, G=groups, scale=scaling, PREC=prec, num_warps=geo.num_warps)
    launch(kbg.bwd_kv_gather_kernel, (cdiv(seq_len, geo.BK), batch * groups),
        **{**base, "num_warps": geo.warps_bwd_kv}, LENS=lens, NFK=geo.NFK, **shape, WIN=pattern.stis_window,
        DN=geo.DN, PF0=geo.PF0, BK=geo.BK, CQ=geo.CQ, R=geo.RK, **_regs(geo.maxreg_bwd_kv),
    )
    if num_windows > 0:
        offsets, queries = _inverse_selection(sel, num_windows)
        launch(kbg.bwd_sel_kv_gather_kernel, (batch * groups * num_windows,),
            **base, OFFS=offsets, TLIST=queries, M=num_windows, **shape, BP=geo.BP5, CQ=geo.CQ, R=geo.RK,
        )
    if pattern.stis_num_sinks > 0:
        launch(kbg.bwd_sink_kv_gather_kernel, (cdiv(seq_len, geo.CH), batch * groups),
            **base, LENS=lens, GQ=geo.g, HEAD_D=head_dim, DP=geo.DP, WIN=pattern.stis_window,
            NSINK=pattern.stis_num_sinks, SP=geo.SP, CH=geo.CH, CQ=geo.CQ, R=geo.RK,
        )
    return dk, dv




def launch_forward(kfwd, geo, query, key, value, gate, sel, lens, scaling, pattern, save, positions=None,
                   union=None):
    """Fine attention forward: ``out`` and, when ``save``, ``o_L, o_S`` and the logsumexps ``lse [B, H, L, 2]``.
    With ``positions [B, Q]`` (serving path; gathered strategy with one query per program) the ``Q`` query rows
    sit at those positions."""
    batch, heads, num_queries, head_dim = query.shape
    groups, seq_len = key.shape[1], key.shape[2]
    device = query.device
    out = torch.empty_like(query)  # the query's strides (dense_layout): the kernels store it with sq*
    if save:
        o_l = torch.empty(batch, heads, num_queries, head_dim, dtype=query.dtype, device=device)
        o_s = torch.empty_like(o_l)
        lse = torch.empty(batch, heads, num_queries, 2, dtype=torch.float32, device=device)
    else:
        o_l = o_s = out
        lse = out.new_empty(0, dtype=torch.float32)  # not written without SAVE
    common = dict(
        Q=query, K=key, V=value, GATE=gate, SEL=sel, LENS=lens, OUT=out, OL=o_l, OS=o_s, LSE=lse,
        **_qs(query), **_ks(key), **_vs(value), **_gs(gate), L=seq_len, H=heads, G=groups, scale=float(scaling),
        GQ=geo.g, HEAD_D=head_dim, DP=geo.DP, BLK=pattern.block_size, NSEL=pattern.num_selected_blocks,
        WIN=pattern.stis_window, NSINK=pattern.stis_num_sinks, SAVE=save, PREC=precision(query),
    )
    if positions is not None and (geo.strategy != "gather" or geo.BQ != 1):
        raise ValueError("query positions need the gathered strategy with one query per program (plan(serving=True))")
    if geo.strategy == "tile":
        if union is None:
            raise ValueError("the dense-tile forward needs the union words of launch_select")
        launch(kfwd.fwd_tile_kernel, (cdiv(seq_len, geo.BM), batch * groups),
            **common, UNION=union, **_union_shape(union), UR=geo.BM // geo.UBM, GP=geo.GP, NP=geo.NP, BM=geo.BM,
            BN=geo.BN, R=geo.R,
            num_warps=geo.num_warps, **_regs(geo.maxreg_fwd))
    else:
        launch(kfwd.fwd_gather_kernel, (cdiv(num_queries, geo.BQ), batch * groups),
            **common, **_position_args(positions, lens), QN=num_queries, BP=geo.BP, BQ=geo.BQ, R=geo.RG, KO=geo.KO,
            KN=geo.KN, P0=geo.P0, NFP=geo.NFP, SP=geo.SP, HAS_POS=positions is not None, num_warps=geo.num_warps,
            **_regs(geo.maxreg_fwd))
    return out, o_l, o_s, lse


def dense_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when its elements tile one block of memory without gaps or overlaps (any order of the dims:
    the projections' ``view().transpose()`` outputs are such), else a contiguous copy. The outputs and gradients
    are allocated with ``torch.empty_like`` of the inputs, which keeps such strides, and the kernels store them
    with the inputs' strides."""
    expected = 1
    for size, stride in sorted(((s, st) for s, st in zip(x.shape, x.stride(), strict=True) if s != 1),
                               key=lambda p: p[1]):
        if stride != expected:
            return x.contiguous()
        expected *= size
    return x


def precision(query: torch.Tensor) -> str:
    """``input_precision`` of the products: exact fp32 for fp32 inputs, tensor cores for fp16/bf16."""
    return "ieee" if query.dtype == torch.float32 else "tf32"


def launch_backward(kernels, geo, saved, grad_out, scaling, pattern, need_q, need_ck):
    """Gradients ``dq, dk, dv, d compressed_key, d gate`` (None where not needed) from the saved tensors."""
    ksel, _, kbt, kbg = kernels
    query, key, value, compressed_key, gate, lens, sel, psel, lse_z, o_l, o_s, lse, union = saved
    batch, heads, seq_len, head_dim = query.shape
    groups, num_windows = key.shape[1], compressed_key.shape[2]
    n = pattern.num_selected_blocks
    device = query.device
    prec = precision(query)
    st = pattern.straight_through and num_windows > 0
    do = grad_out
    win, nsink = pattern.stis_window, pattern.stis_num_sinks
    shape = dict(GQ=geo.g, HEAD_D=head_dim, DP=geo.DP, BLK=pattern.block_size)
    strides = dict(**_qs(query), **_ks(key), **_vs(value), **_gs(gate), **_ds(do))

    dq = torch.empty_like(query)  # dq, dk, dv: the strides of q, k, v (dense_layout), no transpose copy after
    # no zero fills: the query-side kernel writes every row of d gate (zeros past a row's length) and dp for every
    # query row of the tiles it computes (the readers mask rows past the length)
    dgate = torch.empty(batch, heads, seq_len, 2, dtype=torch.float32, device=device)
    dps = torch.empty(batch, groups, seq_len, n, dtype=torch.float32, device=device) if st else psel
    q_args = dict(Q=query, K=key, V=value, GATE=gate, SEL=sel, LENS=lens, DO=do, OL=o_l, OS=o_s, LSE=lse, DQ=dq,
                  DGATE=dgate, DPS=dps, **strides, L=seq_len, H=heads, G=groups, scale=scaling, **shape,
                  NSEL=n, NP=geo.NP, WIN=win, NSINK=nsink, ST=st, PREC=prec)
    # the tile strategy folds the selection's share of dq into its dq kernel (from SELQ_MIN_BM queries a tile)
    fused_selq = geo.strategy == "tile" and st and need_q and geo.BMB >= geo.SELQ_MIN_BM
    if geo.strategy == "tile":
        if union is None:
            raise ValueError("the dense-tile backward needs the union words of launch_select")
        launch(kbt.bwd_q_tile_kernel, (cdiv(seq_len, geo.BMB), batch * groups),
            **q_args, CK=compressed_key, PSEL=psel, LSEZ=lse_z, UNION=union, **_union_shape(union),
            UR=geo.BMB // geo.UBM, **_cs(compressed_key), M=num_windows,
            GP=geo.GP, BM=geo.BMB, BN=geo.BNQ, R=geo.RB, BW=geo.BWB, SELQ=fused_selq, num_warps=geo.warps_bwd_q,
            **_regs(geo.maxreg_bwd_q))
    else:
        launch(kbg.bwd_q_gather_kernel, (cdiv(seq_len, geo.BQ), batch * groups),
            **q_args, BP=geo.BP, BQ=geo.BQ, BQP=geo.BQP, R=geo.RG, KO=geo.KO, KN=geo.KN, P0=geo.P0, NFP=geo.NFP,
            SP=geo.SP, num_warps=geo.warps_bwd_q, **_regs(geo.maxreg_bwd_q))
    dck = None
    sel_args = dict(Q=query, CK=compressed_key, LENS=lens, SEL=sel, PSEL=psel, DPS=dps, LSEZ=lse_z,
                    **_qs(query), **_cs(compressed_key), L=seq_len, M=num_windows, G=groups, scale=scaling,
                    **shape, NSEL=n, TQ=geo.TQ, BW=geo.BWB, num_warps=geo.warps_select_bwd)
    if st and need_q and not fused_selq:
        launch(ksel.select_bwd_q_kernel, (cdiv(seq_len, geo.TQ), batch * groups), **sel_args, DQ=dq, H=heads)
    if st and need_ck:
        dck = torch.empty(batch, groups, num_windows, head_dim, dtype=compressed_key.dtype, device=device)
        launch(ksel.select_bwd_w_kernel, (cdiv(num_windows, geo.BWB), batch * groups), **sel_args, DCK=dck)

    if geo.strategy == "tile":
        dk = torch.empty_like(key)
        dv = torch.empty_like(value)
        launch(kbt.bwd_kv_tile_kernel, (cdiv(seq_len, geo.BNK), batch * groups),
            Q=query, K=key, V=value, GATE=gate, SEL=sel, LENS=lens, DO=do, LSE=lse, DGATE=dgate, DK=dk, DV=dv,
            UNION=union, **_union_shape(union), UR=geo.BMB // geo.UBM, **strides, L=seq_len, H=heads, G=groups,
            scale=scaling, **shape,
            GP=geo.GP, NSEL=n, NP=geo.NP,
            WIN=win, NSINK=nsink, BM=geo.BMB, BN=geo.BNK, R=geo.RB, PREC=prec, num_warps=geo.warps_bwd_kv,
            **_regs(geo.maxreg_bwd_kv),
        )
    else:
        dk, dv = _gather_kv_backward(kbg, geo, query, key, value, gate, lens, do, lse, dgate, sel, num_windows,
                                     strides, shape, scaling, pattern, prec)
        dk, dv = torch.empty_like(key).copy_(dk), torch.empty_like(value).copy_(dv)  # cast into k's, v's layout
    return (dq if need_q else None), dk, dv, dck, dgate.to(gate.dtype)
