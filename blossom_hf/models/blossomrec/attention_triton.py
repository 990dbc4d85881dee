"""Fused Triton backend ``attn_implementation="triton"``: BlossomRec attention (docs MODEL.md) in a few
kernels, with its own backward. This file holds the autograd function, the launcher (tile geometry and
strategy), the module adapter and the registration; the kernels are in flat files beside it:

* ``triton_common.py``  interpreter switch, integer helpers, shared ``@triton.jit`` helpers (tile masks)
* ``triton_select.py``  LTIS top-n selection and its straight-through backward
* ``triton_fwd.py``     fine attention forward, two strategies (dense tiles / gathered key sets)
* ``triton_bwd_tile.py``, ``triton_bwd_gather.py``  the backward of each strategy

Strategy (:func:`plan`): histories up to :data:`TILE_MAX_SEQ_LEN` use FlashAttention-style dense key tiles
with the LTIS/STIS masks computed in registers and empty tiles skipped (short histories pay no gather
machinery); longer ones use per-query gathered key sets (work linear in ``L``). Both compute the same
function; ``strategy="tile"`` / ``"gather"`` forces one.

Memory is linear in ``L``: no ``L x L`` or ``L x L/b`` tensor exists in the forward or the backward. What is
kept for the backward: the inputs, the two branch outputs ``o_L, o_S`` (input dtype), per-row logsumexps,
the selection ``[B, G, L, n]`` (int32) with its probabilities and the logsumexp of the selection scores.

Numerics: fp32 accumulation everywhere; bf16/fp16 inputs go through the tensor cores as bf16/fp16, fp32
inputs use exact fp32 products (``input_precision="ieee"``). The LTIS selection scores are always computed
in fp32 from the (upcast) inputs, so the selection matches :func:`attention_patterns.ltis_select` except
for true near-ties (scores within rounding of each other).

Limits (each raises a clear error, nothing falls back to another backend): CUDA tensors, or CPU tensors
under ``TRITON_INTERPRET=1``; head dim 16..128; query/key/value in fp16, bf16 or fp32 (one dtype);
``attention_type="full"`` is not implemented here (use "sdpa", FlashAttention, for the dense baseline).
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from .attention_patterns import BlossomPattern
from .registry import register_attention_backend
from .triton_common import cdiv, interpret_requested, next_pow2

__all__ = ["triton_blossom_attention", "triton_attention_forward", "triton_availability", "triton_ltis_select",
           "plan", "TritonGeometry", "TILE_MAX_SEQ_LEN"]

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MIN_HEAD_DIM, _MAX_HEAD_DIM = 16, 128
#: histories up to this length use the dense-tile strategy, longer ones the gathered one (measured
#: crossover on an H200, docs/BENCHMARKS.md)
TILE_MAX_SEQ_LEN = 1024
_STRATEGIES = ("auto", "tile", "gather")


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _kernels():
    """The kernel modules, imported on first use (so ``import blossom_hf`` never imports triton).

    Triton fixes compiled-vs-interpreted when it is imported, so ``TRITON_INTERPRET`` must be set before the
    first call of this backend (or any other ``import triton``) in the process.
    """
    if not _triton_installed():
        raise RuntimeError("the 'triton' attention backend needs the triton package (pip install triton)")
    # The ``from .module import name`` form (never ``from . import module``): transformers' remote-code loader
    # finds the files a Hub folder's code needs by that form, so the kernel files travel with the folder.
    from . import triton_common
    from .triton_bwd_gather import __name__ as bwd_gather_name
    from .triton_bwd_tile import __name__ as bwd_tile_name
    from .triton_fwd import __name__ as fwd_name
    from .triton_select import __name__ as select_name

    if triton_common.INTERPRET != interpret_requested():
        raise RuntimeError(
            "TRITON_INTERPRET changed after triton was imported in this process (it was "
            f"{'on' if triton_common.INTERPRET else 'off'}); set it before the first import of triton"
        )
    return tuple(sys.modules[name] for name in (select_name, fwd_name, bwd_tile_name, bwd_gather_name))


def triton_availability() -> str | None:
    """None when the backend can run here, else a sentence saying why not."""
    if not _triton_installed():
        return "the triton package is not installed (pip install triton)."
    if torch.cuda.is_available() or interpret_requested():
        return None
    return ("its Triton kernels need a CUDA GPU, and none is visible (set TRITON_INTERPRET=1 to run them, slowly, "
            "on the CPU).")


# --------------------------------------------------------------------------------------------------
# validation and tile geometry
# --------------------------------------------------------------------------------------------------
def _check_inputs(query, key, value, compressed_key, gate, lengths, pattern) -> None:
    if not isinstance(pattern, BlossomPattern):
        raise TypeError(f"pattern must be a BlossomPattern, got {type(pattern).__name__}")
    names = ("query", "key", "value", "compressed_key", "gate")
    for name, x in zip(names, (query, key, value, compressed_key, gate), strict=True):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"triton backend: {name} must be a 4-d tensor, got {shape}")
    batch, heads, seq_len, head_dim = query.shape
    groups = key.shape[1]
    if tuple(key.shape) != (batch, groups, seq_len, head_dim) or tuple(value.shape) != tuple(key.shape):
        raise ValueError(f"triton backend: key/value must be [B, G, L, D] = [{batch}, G, {seq_len}, {head_dim}], "
                         f"got {tuple(key.shape)} and {tuple(value.shape)}")
    if groups < 1 or heads % groups != 0:
        raise ValueError(f"triton backend: query heads ({heads}) must be a multiple of kv heads ({groups})")
    num_windows = seq_len // pattern.block_size
    if tuple(compressed_key.shape) != (batch, groups, num_windows, head_dim):
        raise ValueError(f"triton backend: compressed_key must be [B, G, L // block_size, D] = "
                         f"{(batch, groups, num_windows, head_dim)}, got {tuple(compressed_key.shape)}")
    if tuple(gate.shape) != (batch, heads, seq_len, 2):
        raise ValueError(f"triton backend: gate must be [B, H, L, 2] = {(batch, heads, seq_len, 2)}, "
                         f"got {tuple(gate.shape)}")
    if not isinstance(lengths, torch.Tensor) or tuple(lengths.shape) != (batch,) or lengths.is_floating_point():
        raise ValueError(f"triton backend: lengths must be an integer tensor of shape [{batch}]")
    if query.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"triton backend supports float16, bfloat16 and float32 inputs, got {query.dtype}")
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise TypeError(f"triton backend: query, key and value must share one dtype, got {query.dtype}, "
                        f"{key.dtype}, {value.dtype}")
    for name, x in (("compressed_key", compressed_key), ("gate", gate)):
        if x.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(f"triton backend: {name} must be float16, bfloat16 or float32, got {x.dtype}")
    if not _MIN_HEAD_DIM <= head_dim <= _MAX_HEAD_DIM:
        raise ValueError(f"triton backend supports head dims {_MIN_HEAD_DIM}..{_MAX_HEAD_DIM}, got {head_dim}")
    devices = {x.device for x in (query, key, value, compressed_key, gate)}
    if len(devices) != 1:
        raise ValueError(f"triton backend: all inputs must be on one device, got {sorted(map(str, devices))}")
    device = query.device
    if device.type == "cuda":
        if interpret_requested():
            raise RuntimeError("triton backend: TRITON_INTERPRET=1 is set but the tensors are on CUDA; unset it "
                               "for compiled kernels or move the tensors to the CPU for the interpreter")
    elif device.type == "cpu":
        if not interpret_requested():
            raise RuntimeError("triton backend: tensors are on the CPU; the Triton kernels need CUDA tensors "
                               "(or TRITON_INTERPRET=1 to run them, slowly, on the CPU)")
    else:
        raise RuntimeError(f"triton backend: unsupported device {device} (CUDA, or CPU under TRITON_INTERPRET=1)")
    if not _triton_installed():
        raise RuntimeError("triton backend: the triton package is not installed (pip install triton)")


@dataclass(frozen=True)
class TritonGeometry:
    """Strategy, tile sizes and compile-time constants of one call (:func:`plan`); see the kernel files."""

    strategy: str  # "tile" or "gather"
    g: int  # query heads per kv head
    GP: int  # g rounded up to a power of two (rows of one query in a tile)
    DP: int  # head dim rounded up to a power of two (>= 16)
    NP: int  # n rounded up to a power of two (>= 2)
    # dense-tile strategy: BM queries x GP heads = R rows against BN keys
    BM: int
    BN: int
    R: int
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
    # selection: TQ queries x BW windows
    TQ: int
    BW: int
    num_warps: int = 4


def plan(heads: int, groups: int, seq_len: int, head_dim: int, pattern: BlossomPattern, itemsize: int = 2,
         strategy: str = "auto") -> TritonGeometry:
    """Choose the strategy and the tile sizes of one call."""
    if strategy not in _STRATEGIES:
        raise ValueError(f"triton backend: strategy must be one of {_STRATEGIES}, got {strategy!r}")
    if strategy == "auto":
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
    bq = max(1, min(16 // gp, tile_cap))
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
    return TritonGeometry(
        strategy=strategy, g=g, GP=gp, DP=dp, NP=max(2, next_pow2(pattern.num_selected_blocks)),
        BM=bm, BN=bn, R=bm * gp,
        BQ=bq, RG=max(16, next_pow2(bq * g)), BQP=max(2, bq), BP=max(next_pow2(b), -(-16 // bq)),
        KO=max(16, next_pow2(b if b % bq == 0 else b - 1 + bq)), KN=max(16, next_pow2(w - 1 + bq)), P0=p0,
        NFP=0 if nf == 0 else max(next_pow2(nf), -(-16 // bq)), SP=max(16, next_pow2(pattern.stis_num_sinks)),
        CQ=cq, RK=max(16, next_pow2(cq * g)), BK=16, DN=dn, PF0=pf0, NFK=nfk, BP5=max(16, next_pow2(b)), CH=256,
        TQ=64 if dp <= 32 else 32, BW=max(16, min(64 if dp <= 32 else 32, next_pow2(seq_len // b))),
    )


def _strides(x: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(int(s) for s in x.stride())


def _select(ksel, geo, query, compressed_key, lens, scaling, pattern, selected_blocks):
    batch, heads, seq_len, head_dim = query.shape
    groups, num_windows = compressed_key.shape[1], compressed_key.shape[2]
    n = pattern.num_selected_blocks
    device = query.device
    sel = torch.empty(batch, groups, seq_len, n, dtype=torch.int32, device=device)
    psel = torch.empty(batch, groups, seq_len, n, dtype=torch.float32, device=device)
    lse_z = torch.empty(batch, groups, seq_len, dtype=torch.float32, device=device)
    if num_windows == 0:
        if selected_blocks is not None:
            sel.copy_(selected_blocks.to(device=device, dtype=torch.int32))
            if bool((sel >= 0).any()):
                raise ValueError("selected_blocks names a block, but L < block_size leaves no window to select")
        else:
            sel.fill_(-1)
        psel.zero_()
        lse_z.zero_()
        return sel, psel, lse_z
    has_sel = selected_blocks is not None
    sel_in = sel
    if has_sel:
        if tuple(selected_blocks.shape) != (batch, groups, seq_len, n):
            raise ValueError(f"selected_blocks must be [B, G, L, n] = {(batch, groups, seq_len, n)}, "
                             f"got {tuple(selected_blocks.shape)}")
        sel_in = selected_blocks.to(device=device, dtype=torch.int32).contiguous()
        if bool((sel_in >= num_windows).any()):
            raise ValueError(f"selected_blocks holds a block index >= L // block_size = {num_windows}")
    grid = (cdiv(seq_len, geo.TQ), batch * groups)
    ksel.select_kernel[grid](
        Q=query, CK=compressed_key, LENS=lens, SEL_IN=sel_in, SEL=sel, PSEL=psel, LSEZ=lse_z,
        **_qs(query), **_cs(compressed_key), L=seq_len, M=num_windows, G=groups, scale=float(scaling),
        GQ=geo.g, HEAD_D=head_dim, DP=geo.DP, BLK=pattern.block_size, NSEL=n, NP=geo.NP, TQ=geo.TQ, BW=geo.BW,
        HAS_SEL=has_sel, num_warps=geo.num_warps,
    )
    return sel, psel, lse_z


def _named_strides(prefix: str, x: torch.Tensor, names: str) -> dict[str, int]:
    return {prefix + c: int(s) for c, s in zip(names, x.stride(), strict=True)}


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


class _BlossomTritonFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, compressed_key, gate, lengths, scaling, pattern, selected_blocks, strategy):
        ksel, kfwd, _, _ = _kernels()
        batch, heads, seq_len, head_dim = query.shape
        groups = key.shape[1]
        geo = plan(heads, groups, seq_len, head_dim, pattern, query.element_size(), strategy)
        device = query.device
        lens = lengths.to(device=device, dtype=torch.int32).clamp(0, seq_len).contiguous()
        sel, psel, lse_z = _select(ksel, geo, query, compressed_key, lens, scaling, pattern, selected_blocks)
        save = any(ctx.needs_input_grad[:5])
        out = torch.empty(batch, heads, seq_len, head_dim, dtype=query.dtype, device=device)
        if save:
            o_l = torch.empty_like(out)
            o_s = torch.empty_like(out)
            lse = torch.empty(batch, heads, seq_len, 2, dtype=torch.float32, device=device)
        else:
            o_l = o_s = out
            lse = psel
        prec = "ieee" if query.dtype == torch.float32 else "tf32"
        common = dict(
            Q=query, K=key, V=value, GATE=gate, SEL=sel, LENS=lens, OUT=out, OL=o_l, OS=o_s, LSE=lse,
            **_qs(query), **_ks(key), **_vs(value), **_gs(gate), L=seq_len, H=heads, G=groups, scale=float(scaling),
            GQ=geo.g, HEAD_D=head_dim, DP=geo.DP, BLK=pattern.block_size, NSEL=pattern.num_selected_blocks,
            WIN=pattern.stis_window, NSINK=pattern.stis_num_sinks, SAVE=save, PREC=prec, num_warps=geo.num_warps,
        )
        if geo.strategy == "tile":
            kfwd.fwd_tile_kernel[(cdiv(seq_len, geo.BM), batch * groups)](
                **common, GP=geo.GP, NP=geo.NP, BM=geo.BM, BN=geo.BN, R=geo.R)
        else:
            kfwd.fwd_gather_kernel[(cdiv(seq_len, geo.BQ), batch * groups)](
                **common, BP=geo.BP, BQ=geo.BQ, R=geo.RG, KO=geo.KO, KN=geo.KN, P0=geo.P0, NFP=geo.NFP, SP=geo.SP)
        if save:
            ctx.save_for_backward(query, key, value, compressed_key, gate, lens, sel, psel, lse_z, o_l, o_s, lse)
            ctx.scaling = float(scaling)
            ctx.pattern = pattern
            ctx.geo = geo
            ctx.prec = prec
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        ksel, _, kbt, kbg = _kernels()
        query, key, value, compressed_key, gate, lens, sel, psel, lse_z, o_l, o_s, lse = ctx.saved_tensors
        geo, pattern, scaling, prec = ctx.geo, ctx.pattern, ctx.scaling, ctx.prec
        batch, heads, seq_len, head_dim = query.shape
        groups, num_windows = key.shape[1], compressed_key.shape[2]
        n = pattern.num_selected_blocks
        device = query.device
        st = pattern.straight_through and num_windows > 0
        need_q, need_ck = ctx.needs_input_grad[0], ctx.needs_input_grad[3]
        do = grad_out
        blk, win, nsink = pattern.block_size, pattern.stis_window, pattern.stis_num_sinks
        shape = dict(GQ=geo.g, HEAD_D=head_dim, DP=geo.DP, BLK=blk)
        strides = dict(**_qs(query), **_ks(key), **_vs(value), **_gs(gate), **_ds(do))

        dq = torch.empty(batch, heads, seq_len, head_dim, dtype=query.dtype, device=device)
        dgate = torch.zeros(batch, heads, seq_len, 2, dtype=torch.float32, device=device)
        dps = torch.zeros(batch, groups, seq_len, n, dtype=torch.float32, device=device) if st else psel
        q_args = dict(Q=query, K=key, V=value, GATE=gate, SEL=sel, LENS=lens, DO=do, OL=o_l, OS=o_s, LSE=lse, DQ=dq,
                      DGATE=dgate, DPS=dps, **strides, L=seq_len, H=heads, G=groups, scale=scaling, **shape,
                      NSEL=n, NP=geo.NP, WIN=win, NSINK=nsink, ST=st, PREC=prec, num_warps=geo.num_warps)
        # the tile strategy folds the selection's share of dq into its dq kernel (needs >= 16 queries a tile)
        fused_selq = geo.strategy == "tile" and st and need_q and geo.BM >= 16
        if geo.strategy == "tile":
            kbt.bwd_q_tile_kernel[(cdiv(seq_len, geo.BM), batch * groups)](
                **q_args, CK=compressed_key, PSEL=psel, LSEZ=lse_z, **_cs(compressed_key), M=num_windows,
                GP=geo.GP, BM=geo.BM, BN=geo.BN, R=geo.R, BW=geo.BW, SELQ=fused_selq)
        else:
            kbg.bwd_q_gather_kernel[(cdiv(seq_len, geo.BQ), batch * groups)](
                **q_args, BP=geo.BP, BQ=geo.BQ, BQP=geo.BQP, R=geo.RG, KO=geo.KO, KN=geo.KN, P0=geo.P0, NFP=geo.NFP,
                SP=geo.SP)
        dck = None
        sel_args = dict(Q=query, CK=compressed_key, LENS=lens, SEL=sel, PSEL=psel, DPS=dps, LSEZ=lse_z,
                        **_qs(query), **_cs(compressed_key), L=seq_len, M=num_windows, G=groups, scale=scaling,
                        **shape, NSEL=n, TQ=geo.TQ, BW=geo.BW, num_warps=geo.num_warps)
        if st and need_q and not fused_selq:
            ksel.select_bwd_q_kernel[(cdiv(seq_len, geo.TQ), batch * groups)](**sel_args, DQ=dq, H=heads)
        if st and need_ck:
            dck = torch.empty(batch, groups, num_windows, head_dim, dtype=compressed_key.dtype, device=device)
            ksel.select_bwd_w_kernel[(cdiv(num_windows, geo.BW), batch * groups)](**sel_args, DCK=dck)

        if geo.strategy == "tile":
            dk = torch.empty(batch, groups, seq_len, head_dim, dtype=key.dtype, device=device)
            dv = torch.empty(batch, groups, seq_len, head_dim, dtype=value.dtype, device=device)
            kbt.bwd_kv_tile_kernel[(cdiv(seq_len, geo.BN), batch * groups)](
                Q=query, K=key, V=value, GATE=gate, SEL=sel, LENS=lens, DO=do, LSE=lse, DGATE=dgate, DK=dk, DV=dv,
                **strides, L=seq_len, H=heads, G=groups, scale=scaling, **shape, GP=geo.GP, NSEL=n, NP=geo.NP,
                WIN=win, NSINK=nsink, BM=geo.BM, BN=geo.BN, R=geo.R, PREC=prec, num_warps=geo.num_warps,
            )
        else:
            dk, dv = _gather_kv_backward(kbg, geo, query, key, value, gate, lens, do, lse, dgate, sel, num_windows,
                                         strides, shape, scaling, pattern, prec)
            dk, dv = dk.to(key.dtype), dv.to(value.dtype)
        return (dq if need_q else None, dk, dv, dck, dgate.to(gate.dtype), None, None, None, None, None)


def _gather_kv_backward(kbg, geo, query, key, value, gate, lens, do, lse, dgate, sel, num_windows, strides, shape,
                        scaling, pattern, prec):
    """dk, dv (fp32) of the gathered strategy: own block + STIS offsets, selected blocks, sinks."""
    batch, heads, seq_len, head_dim = query.shape
    groups = key.shape[1]
    dk = torch.empty(batch, groups, seq_len, head_dim, dtype=torch.float32, device=query.device)
    dv = torch.empty_like(dk)
    base = dict(Q=query, K=key, V=value, GATE=gate, DO=do, LSE=lse, DGATE=dgate, DK=dk, DV=dv, **strides,
                L=seq_len, H=heads, G=groups, scale=scaling, PREC=prec, num_warps=geo.num_warps)
    kbg.bwd_kv_gather_kernel[(cdiv(seq_len, geo.BK), batch * groups)](
        **base, LENS=lens, NFK=geo.NFK, **shape, WIN=pattern.stis_window, DN=geo.DN, PF0=geo.PF0, BK=geo.BK,
        CQ=geo.CQ, R=geo.RK,
    )
    if num_windows > 0:
        offsets, queries = _inverse_selection(sel, num_windows)
        kbg.bwd_sel_kv_gather_kernel[(batch * groups * num_windows,)](
            **base, OFFS=offsets, TLIST=queries, M=num_windows, **shape, BP=geo.BP5, CQ=geo.CQ, R=geo.RK,
        )
    if pattern.stis_num_sinks > 0:
        kbg.bwd_sink_kv_gather_kernel[(cdiv(seq_len, geo.CH), batch * groups)](
            **base, LENS=lens, GQ=geo.g, HEAD_D=head_dim, DP=geo.DP, WIN=pattern.stis_window,
            NSINK=pattern.stis_num_sinks, SP=geo.SP, CH=geo.CH, CQ=geo.CQ, R=geo.RK,
        )
    return dk, dv


def triton_blossom_attention(
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
    strategy: str = "auto",
) -> torch.Tensor:
    """Same contract as :func:`attention_eager.eager_blossom_attention`, computed by fused Triton kernels.

    Returns ``[B, H, L, D]`` in the input dtype (padded query rows exactly 0), differentiable with respect
    to query, key, value, compressed_key (straight-through, when ``pattern.straight_through``) and gate.
    ``selected_blocks [B, G, L, n]`` (optional) replaces the selection; each row's blocks must be distinct
    and eligible (ending before the query), as :func:`attention_patterns.ltis_select` would pick them.
    """
    _check_inputs(query, key, value, compressed_key, gate, lengths, pattern)
    if query.shape[0] == 0 or query.shape[1] == 0:
        return query.new_zeros(query.shape)
    if query.dtype == torch.bfloat16 and query.device.type == "cpu":
        # Triton's CPU interpreter multiplies bf16 tiles wrongly (numpy has no bf16): compute from the
        # exactly upcast values instead (a differentiable cast; compiled GPU kernels never take this path).
        out = _BlossomTritonFunction.apply(query.float(), key.float(), value.float(), compressed_key.float(),
                                           gate.float(), lengths, float(scaling), pattern, selected_blocks, strategy)
        return out.to(torch.bfloat16)
    return _BlossomTritonFunction.apply(query, key, value, compressed_key, gate, lengths, float(scaling), pattern,
                                        selected_blocks, strategy)


@torch.no_grad()
def triton_ltis_select(
    query: torch.Tensor,
    compressed_key: torch.Tensor,
    lengths: torch.Tensor,
    *,
    scaling: float,
    pattern: BlossomPattern,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The selection kernel alone: ``selected [B, G, L, n]`` (long, -1 = none, slots by decreasing score)
    and the probability ``p`` of each selected window (fp32), as :func:`attention_patterns.ltis_select`."""
    if query.dtype == torch.bfloat16 and query.device.type == "cpu":
        query, compressed_key = query.float(), compressed_key.float()
    ksel = _kernels()[0]
    batch, heads, seq_len, head_dim = query.shape
    geo = plan(heads, compressed_key.shape[1], seq_len, head_dim, pattern, query.element_size())
    lens = lengths.to(device=query.device, dtype=torch.int32).clamp(0, seq_len).contiguous()
    sel, psel, _ = _select(ksel, geo, query, compressed_key, lens, scaling, pattern, None)
    return sel.long(), psel


def triton_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Fused Triton kernels: LTIS selection + fine attention + STIS in one pass each way (``attention_triton``)."""
    if module.config.attention_type == "full":
        raise NotImplementedError(
            "the 'triton' backend implements BlossomRec's sparse attention only; for attention_type='full' (the "
            "dense causal baseline) use attn_implementation='sdpa', which runs FlashAttention"
        )
    if dropout:
        raise NotImplementedError("the 'triton' backend has no attention dropout (BlossomRec uses none)")
    out = triton_blossom_attention(
        query, key, value, kwargs["compressed_key"], kwargs["gate"], kwargs["lengths"],
        scaling=scaling, pattern=kwargs["pattern"],
    )
    return out.transpose(1, 2).contiguous(), None


register_attention_backend(
    "triton", triton_attention_forward,
    description="fused Triton kernels (selection, fine LTIS + STIS attention, backward); linear memory",
    availability=triton_availability,
)
