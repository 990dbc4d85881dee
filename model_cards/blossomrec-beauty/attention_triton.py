"""Fused Triton backend ``attn_implementation="triton"``: BlossomRec attention (docs MODEL.md) in a few
kernels (``attention_triton_kernels.py``), with its own backward.

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

import importlib
import importlib.util
import os

import torch
from torch.autograd.function import once_differentiable

from .attention_patterns import BlossomPattern
from .registry import register_attention_backend

__all__ = ["triton_blossom_attention", "triton_attention_forward", "triton_availability", "triton_ltis_select"]

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: warps per program of every kernel (a tuning knob; scripts/benchmark.py --warps-sweep measures it)
NUM_WARPS = 4
_MIN_HEAD_DIM, _MAX_HEAD_DIM = 16, 128


def _interpret_requested() -> bool:
    """``TRITON_INTERPRET`` as triton reads it (without importing triton)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes", "y")


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def next_pow2(x: int) -> int:
    x = int(x)
    return 1 if x <= 1 else 1 << (x - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _kernels():
    """The kernel module, imported on first use (so ``import blossom_hf`` never imports triton).

    Triton fixes compiled-vs-interpreted when it is imported, so ``TRITON_INTERPRET`` must be set before the
    first call of this backend (or any other ``import triton``) in the process.
    """
    if not _triton_installed():
        raise RuntimeError("the 'triton' attention backend needs the triton package (pip install triton)")
    from .attention_triton_kernels import INTERPRET  # noqa: F401  (imports triton)

    module = importlib.import_module(".attention_triton_kernels", __package__)
    if module.INTERPRET != _interpret_requested():
        raise RuntimeError(
            "TRITON_INTERPRET changed after triton was imported in this process (it was "
            f"{'on' if module.INTERPRET else 'off'}); set it before the first import of triton"
        )
    return module


def triton_availability() -> str | None:
    """None when the backend can run here, else a sentence saying why not."""
    if not _triton_installed():
        return "the triton package is not installed (pip install triton)."
    if torch.cuda.is_available() or _interpret_requested():
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
        if _interpret_requested():
            raise RuntimeError("triton backend: TRITON_INTERPRET=1 is set but the tensors are on CUDA; unset it "
                               "for compiled kernels or move the tensors to the CPU for the interpreter")
    elif device.type == "cpu":
        if not _interpret_requested():
            raise RuntimeError("triton backend: tensors are on the CPU; the Triton kernels need CUDA tensors "
                               "(or TRITON_INTERPRET=1 to run them, slowly, on the CPU)")
    else:
        raise RuntimeError(f"triton backend: unsupported device {device} (CUDA, or CPU under TRITON_INTERPRET=1)")
    if not _triton_installed():
        raise RuntimeError("triton backend: the triton package is not installed (pip install triton)")


class _Geometry:
    """Tile sizes and compile-time constants of one call (see the kernels' docstrings)."""

    def __init__(self, heads: int, groups: int, seq_len: int, head_dim: int, pattern: BlossomPattern,
                 itemsize: int = 2):
        g = heads // groups
        gp = next_pow2(g)
        b, w, n, s = pattern.block_size, pattern.stis_window, pattern.num_selected_blocks, pattern.stis_num_sinks
        self.g = g
        self.DP = max(16, next_pow2(head_dim))
        # query-major kernels: BQ queries x g heads = R rows (R >= 16 for the tensor cores). A gathered
        # key tile holds BQ x b keys; its size is capped at 32 KiB (with g = 1 and head dim 128 an uncapped
        # 256 x 128 tile overflowed the H200's shared memory: 274 KB needed, 232 KB available).
        tile_cap = max(1, 32768 // (next_pow2(b) * self.DP * itemsize))
        self.BQ = max(1, min(16 // gp, tile_cap))
        self.R = max(16, next_pow2(self.BQ * g))
        self.BQP = max(2, self.BQ)
        self.BP = max(next_pow2(b), -(-16 // self.BQ))
        self.KO = max(16, next_pow2(b if b % self.BQ == 0 else b - 1 + self.BQ))
        self.KN = max(16, next_pow2(w - 1 + self.BQ))
        self.P0 = next_pow2(w)  # smallest power of two >= W: the first offset outside the window
        nf = 0
        while (self.P0 << nf) < seq_len:
            nf += 1
        self.NFP = 0 if nf == 0 else max(next_pow2(nf), -(-16 // self.BQ))
        self.NSINK = s
        self.SP = max(16, next_pow2(s))
        self.NSEL = n
        self.NP = max(2, next_pow2(n))
        # selection kernels
        self.TQ = 64 if self.DP <= 32 else 32
        self.BW = 64 if self.DP <= 32 else 32
        # key-major kernels: CQ queries x g heads per chunk
        self.CQ = max(1, (64 if self.DP <= 64 else 32) // gp)
        self.RK = max(16, next_pow2(self.CQ * g))
        self.BK = 16
        self.DN = max(w - 1, b - 1)
        self.PF0 = 1 << self.DN.bit_length()  # smallest power of two > DN
        nfk = 0
        while (self.PF0 << nfk) < seq_len:
            nfk += 1
        self.NFK = nfk
        self.BP5 = max(16, next_pow2(b))
        self.CH = 256
        self.num_warps = NUM_WARPS


def _strides(x: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(int(s) for s in x.stride())


def _select(kern, geo, query, compressed_key, lens, scaling, pattern, selected_blocks):
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
    grid = (_cdiv(seq_len, geo.TQ), batch * groups)
    kern._select_kernel[grid](
        query, compressed_key, lens, sel_in, sel, psel, lse_z,
        *_strides(query), *_strides(compressed_key),
        seq_len, num_windows, groups, float(scaling),
        GQ=geo.g, HEAD_D=head_dim, DP=geo.DP, BLK=pattern.block_size, NSEL=n, NP=geo.NP, TQ=geo.TQ, BW=geo.BW,
        HAS_SEL=has_sel, num_warps=geo.num_warps,
    )
    return sel, psel, lse_z


def _inverse_selection(sel: torch.Tensor, num_windows: int):
    """For each (batch, kv head, block): the queries that selected it, as CSR ``offsets`` + ``queries``."""
    batch, groups, seq_len, n = sel.shape
    buckets = batch * groups * num_windows
    bg = torch.arange(batch * groups, device=sel.device, dtype=torch.int64).view(batch, groups, 1, 1)
    key = torch.where(sel >= 0, bg * num_windows + sel.long(), buckets).flatten()
    order = torch.argsort(key, stable=True)
    counts = torch.bincount(key, minlength=buckets + 1)[:buckets]
    offsets = torch.zeros(buckets + 1, dtype=torch.int32, device=sel.device)
    offsets[1:] = torch.cumsum(counts, 0)
    queries = ((order // n) % seq_len).to(torch.int32)
    return offsets, queries


class _BlossomTritonFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, compressed_key, gate, lengths, scaling, pattern, selected_blocks):
        kern = _kernels()
        batch, heads, seq_len, head_dim = query.shape
        groups = key.shape[1]
        geo = _Geometry(heads, groups, seq_len, head_dim, pattern, query.element_size())
        device = query.device
        lens = lengths.to(device=device, dtype=torch.int32).clamp(0, seq_len).contiguous()
        sel, psel, lse_z = _select(kern, geo, query, compressed_key, lens, scaling, pattern, selected_blocks)
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
        grid = (_cdiv(seq_len, geo.BQ), batch * groups)
        kern._fwd_kernel[grid](
            query, key, value, gate, sel, lens, out, o_l, o_s, lse,
            *_strides(query), *_strides(key), *_strides(value), *_strides(gate),
            seq_len, heads, groups, float(scaling),
            GQ=geo.g, HEAD_D=head_dim, DP=geo.DP, BLK=pattern.block_size, BP=geo.BP, NSEL=geo.NSEL, BQ=geo.BQ,
            R=geo.R, KO=geo.KO, WIN=pattern.stis_window, KN=geo.KN, P0=geo.P0, NFP=geo.NFP, NSINK=geo.NSINK,
            SP=geo.SP, SAVE=save, PREC=prec, num_warps=geo.num_warps,
        )
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
        kern = _kernels()
        query, key, value, compressed_key, gate, lens, sel, psel, lse_z, o_l, o_s, lse = ctx.saved_tensors
        geo, pattern, scaling, prec = ctx.geo, ctx.pattern, ctx.scaling, ctx.prec
        batch, heads, seq_len, head_dim = query.shape
        groups, num_windows = key.shape[1], compressed_key.shape[2]
        n = pattern.num_selected_blocks
        device = query.device
        st = pattern.straight_through and num_windows > 0
        need_q, need_ck = ctx.needs_input_grad[0], ctx.needs_input_grad[3]
        common = dict(GQ=geo.g, HEAD_D=head_dim, DP=geo.DP, BLK=pattern.block_size)
        do = grad_out

        dq = torch.empty(batch, heads, seq_len, head_dim, dtype=query.dtype, device=device)
        dgate = torch.zeros(batch, heads, seq_len, 2, dtype=torch.float32, device=device)
        dps = torch.zeros(batch, groups, seq_len, n, dtype=torch.float32, device=device) if st else psel
        grid = (_cdiv(seq_len, geo.BQ), batch * groups)
        kern._bwd_q_kernel[grid](
            query, key, value, gate, sel, lens, do, o_l, o_s, lse, dq, dgate, dps,
            *_strides(query), *_strides(key), *_strides(value), *_strides(gate), *_strides(do),
            seq_len, heads, groups, scaling,
            **common, BP=geo.BP, NSEL=n, NP=geo.NP, BQ=geo.BQ, BQP=geo.BQP, R=geo.R, KO=geo.KO,
            WIN=pattern.stis_window, KN=geo.KN, P0=geo.P0, NFP=geo.NFP, NSINK=geo.NSINK, SP=geo.SP, ST=st,
            PREC=prec, num_warps=geo.num_warps,
        )
        dck = None
        if st and need_q:
            grid = (_cdiv(seq_len, geo.TQ), batch * groups)
            kern._select_bwd_q_kernel[grid](
                query, compressed_key, lens, sel, psel, dps, lse_z, dq,
                *_strides(query), *_strides(compressed_key),
                seq_len, num_windows, heads, groups, scaling,
                **common, NSEL=n, TQ=geo.TQ, BW=geo.BW, num_warps=geo.num_warps,
            )
        if st and need_ck:
            dck = torch.empty(batch, groups, num_windows, head_dim, dtype=compressed_key.dtype, device=device)
            grid = (_cdiv(num_windows, geo.BW), batch * groups)
            kern._select_bwd_w_kernel[grid](
                query, compressed_key, lens, sel, psel, dps, lse_z, dck,
                *_strides(query), *_strides(compressed_key),
                seq_len, num_windows, groups, scaling,
                **common, NSEL=n, TQ=geo.TQ, BW=geo.BW, num_warps=geo.num_warps,
            )

        dk = torch.empty(batch, groups, seq_len, head_dim, dtype=torch.float32, device=device)
        dv = torch.empty_like(dk)
        kv_args = (*_strides(query), *_strides(key), *_strides(value), *_strides(gate), *_strides(do))
        grid = (_cdiv(seq_len, geo.BK), batch * groups)
        kern._bwd_kv_kernel[grid](
            query, key, value, gate, lens, do, lse, dgate, dk, dv, *kv_args,
            seq_len, heads, groups, scaling, geo.NFK,
            **common, WIN=pattern.stis_window, DN=geo.DN, PF0=geo.PF0, BK=geo.BK, CQ=geo.CQ, R=geo.RK,
            PREC=prec, num_warps=geo.num_warps,
        )
        if num_windows > 0:
            offsets, queries = _inverse_selection(sel, num_windows)
            grid = (batch * groups * num_windows,)
            kern._bwd_sel_kv_kernel[grid](
                query, key, value, gate, do, lse, dgate, offsets, queries, dk, dv, *kv_args,
                seq_len, heads, groups, num_windows, scaling,
                **common, BP=geo.BP5, CQ=geo.CQ, R=geo.RK, PREC=prec, num_warps=geo.num_warps,
            )
        if geo.NSINK > 0:
            grid = (_cdiv(seq_len, geo.CH), batch * groups)
            kern._bwd_sink_kv_kernel[grid](
                query, key, value, gate, lens, do, lse, dgate, dk, dv, *kv_args,
                seq_len, heads, groups, scaling,
                GQ=geo.g, HEAD_D=head_dim, DP=geo.DP, WIN=pattern.stis_window, NSINK=geo.NSINK, SP=geo.SP,
                CH=geo.CH, CQ=geo.CQ, R=geo.RK, PREC=prec, num_warps=geo.num_warps,
            )
        return (dq if need_q else None, dk.to(key.dtype), dv.to(value.dtype), dck, dgate.to(gate.dtype),
                None, None, None, None)


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
                                           gate.float(), lengths, float(scaling), pattern, selected_blocks)
        return out.to(torch.bfloat16)
    return _BlossomTritonFunction.apply(query, key, value, compressed_key, gate, lengths, float(scaling), pattern,
                                        selected_blocks)


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
    kern = _kernels()
    batch, heads, seq_len, head_dim = query.shape
    geo = _Geometry(heads, compressed_key.shape[1], seq_len, head_dim, pattern, query.element_size())
    lens = lengths.to(device=query.device, dtype=torch.int32).clamp(0, seq_len).contiguous()
    sel, psel, _ = _select(kern, geo, query, compressed_key, lens, scaling, pattern, None)
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
