"""The LTIS block compressor φ as fused Triton kernels (docs/MODEL.md, LTIS step 2), used by
``layers_blossomrec.BlossomRecBlockCompressor`` on CUDA for every backend, with the PyTorch form (windows, ``fc1``,
ReLU, ``fc2``) as its reference. By default only where no gradient is recorded and the compute dtype is bf16/fp16
(``layers_blossomrec.FUSED_COMPRESSOR_MLP``; the flags ``FUSED_COMPRESSOR_MLP_TRAINING`` and ``_FP32`` say why the
other cases take the PyTorch form: docs/BENCHMARKS.md, "Kernel round v11").

``k~[w] = W2 ReLU(W1 x[w] + b1) + b2`` with ``x[w] = flatten(K_win[w] + P)`` (``l * D`` values per window).

* Forward, one kernel (:func:`launch_compressor`): each program takes ``BM`` windows (over all batch rows and kv
  heads), builds their ``x`` tiles from ``key`` in registers (the windows kernel's gather: zero before position 0 and
  at padded positions, plus ``P``), multiplies by ``W1`` in ``BN``-column chunks, adds ``b1``, applies the ReLU and
  accumulates the chunk's product with ``W2`` into the ``[BM, D]`` result. The weights are read as stored (fp32
  parameters under autocast) and rounded to the compute dtype in registers, as autocast's casts would. In training
  it also writes ``x`` and the ReLU output ``h`` (what autograd keeps for the PyTorch form's backward: no more memory).
  PyTorch's form: the windows kernel, four weight/bias casts under autocast, two GEMMs and the ReLU (8 launches).
* Backward (:class:`FusedCompressor`): one kernel gives ``dh = (d k~ W2) * [h > 0]`` and ``dx = dh W1`` (each
  ``dx`` column chunk recomputes its ``dh`` chunks from the ``[BM, D]`` gradient: a product of depth ``D``); then
  ``d W1 = dh^T x`` and ``d W2 = d k~^T h`` are two GEMMs (reductions over every window), the bias gradients two
  fp32 sums, ``d key`` the windows kernel's backward and ``d P`` one sum (9 launches against 14).

Same numbers as the PyTorch form up to the order of the fp32 accumulations: ``x`` rounded once to the compute dtype
(``key + P`` in fp32), the weights and biases rounded to it, ``h`` and ``k~`` rounded once from fp32 accumulators
(cuBLAS rounds ``acc + bias`` once too); ``dh``, ``dx`` rounded to the compute dtype as the GEMMs of the PyTorch form
round them. The bias gradients are fp32 sums (the PyTorch form rounds them to the compute dtype first).
"""

from __future__ import annotations

import logging

import torch
from torch.autograd.function import once_differentiable

from .triton_common import cdiv, next_pow2, tl, triton
from .triton_fast_launch import launch
from .triton_layer_ops import launch_windows_backward

logger = logging.getLogger(__name__)

__all__ = ["FusedCompressor", "launch_compressor", "launch_compressor_backward"]

#: Tiles (measured on an H200, ``scripts/dev/compressor_ab.py``; docs/BENCHMARKS.md, "Kernel round v11"): windows
#: per program of both kernels (each program reads all of ``W1`` once: more rows, less weight traffic); ``fc1``
#: output columns per chunk (the forward builds each window tile once per chunk: wider, fewer rebuilds; the
#: backward holds a ``[rows, cols]`` ``dh`` chunk); ``fc1`` input columns per chunk (the backward recomputes ``dh``
#: once per chunk); warps; software-pipelining stages (None: triton's default)
BLOCK_ROWS = 64
FWD_BLOCK_COLS, FWD_BLOCK_K, FWD_WARPS = 256, 64, 8
BWD_BLOCK_COLS, BWD_BLOCK_K, BWD_WARPS = 128, 64, 8
NUM_STAGES: int | None = None
#: round the weights to the compute dtype once per call (``.to()``, one launch each for ``W1``, ``W2``) instead of
#: in every program (half the weight traffic from L2 for fp32 parameters under autocast)
CAST_WEIGHTS = False
#: the backward's ``dx = dh W1`` as a cuBLAS GEMM (the kernel then only gives ``dh``) instead of inside the kernel
DX_BY_GEMM = False

if triton is not None:

    @triton.jit
    def compressor_fwd_kernel(K, LENS, P, W1, B1, W2, B2, OUT, X, H, NROWS, L, M, G, skb, skg, skt, skd,
                              spg, spj, spd, sw1n, sw1k, sw2d, sw2n,
                              BLK: tl.constexpr, WL: tl.constexpr, HEAD_D: tl.constexpr, DP: tl.constexpr,
                              KW: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                              SAVE: tl.constexpr, PREC: tl.constexpr):
        """``OUT[r] = W2 relu(W1 x[r] + b1) + b2`` for the ``BM`` window rows ``r`` (over ``B * G * M``) of this
        program, ``x[r, j * D + d] = key[b, γ, w*b - (l-b) + j, d] (0 outside 0..len-1) + P[γ, j, d]``; with
        ``SAVE`` also ``X[r] = x[r]`` and ``H[r] = relu(...)`` (all three ``[NROWS, *]`` contiguous)."""
        CD = OUT.dtype.element_ty
        r = tl.program_id(0) * BM + tl.arange(0, BM)
        row_ok = r < NROWS
        w = r % M
        bg = r // M
        bb = (bg // G).to(tl.int64)
        gam = bg % G
        seqlen = tl.minimum(tl.maximum(tl.load(LENS + bb, mask=row_ok, other=0), 0), L)
        kbase = bb * skb + gam * skg
        r64 = r.to(tl.int64)
        dcol = tl.arange(0, DP)
        acc2 = tl.zeros([BM, DP], dtype=tl.float32)
        for n0 in range(0, KW, BN):
            n = n0 + tl.arange(0, BN)
            nok = n < KW
            acc1 = tl.zeros([BM, BN], dtype=tl.float32)
            for k0 in range(0, KW, BK):
                k = k0 + tl.arange(0, BK)
                kok = k < KW
                j = k // HEAD_D
                d = k % HEAD_D
                pos = w[:, None] * BLK - (WL - BLK) + j[None, :]
                inside = row_ok[:, None] & kok[None, :]
                real = inside & (pos >= 0) & (pos < seqlen[:, None])
                key = tl.load(K + kbase[:, None] + pos * skt + (d * skd)[None, :], mask=real, other=0.0)
                pv = tl.load(P + gam[:, None] * spg + (j * spj + d * spd)[None, :], mask=inside, other=0.0)
                # P in the compute dtype, then one fp32 add rounded to it (PyTorch's add of the two)
                x = (key.to(tl.float32) + pv.to(CD).to(tl.float32)).to(CD)
                if SAVE:
                    tl.store(X + r64[:, None] * KW + k[None, :], x, mask=inside & (n0 == 0))
                w1 = tl.load(W1 + n[:, None] * sw1n + k[None, :] * sw1k, mask=nok[:, None] & kok[None, :],
                             other=0.0).to(CD)
                acc1 += tl.dot(x, tl.trans(w1), input_precision=PREC)
            b1 = tl.load(B1 + n, mask=nok, other=0.0).to(CD).to(tl.float32)
            h = tl.maximum(acc1 + b1[None, :], 0.0).to(CD)
            if SAVE:
                tl.store(H + r64[:, None] * KW + n[None, :], h, mask=row_ok[:, None] & nok[None, :])
            w2 = tl.load(W2 + dcol[:, None] * sw2d + n[None, :] * sw2n, mask=(dcol < HEAD_D)[:, None] & nok[None, :],
                         other=0.0).to(CD)
            acc2 += tl.dot(h, tl.trans(w2), input_precision=PREC)
        b2 = tl.load(B2 + dcol, mask=dcol < HEAD_D, other=0.0).to(CD).to(tl.float32)
        out = (acc2 + b2[None, :]).to(CD)
        tl.store(OUT + r64[:, None] * HEAD_D + dcol[None, :], out, mask=row_ok[:, None] & (dcol < HEAD_D)[None, :])

    @triton.jit
    def compressor_bwd_kernel(GO, H, W1, W2, DX, DH, NROWS, sw1n, sw1k, sw2d, sw2n,
                              HEAD_D: tl.constexpr, DP: tl.constexpr, KW: tl.constexpr, BM: tl.constexpr,
                              BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, WITH_DX: tl.constexpr):
        """``DH = (GO W2) * [H > 0]`` and ``DX = DH W1`` for the ``BM`` rows of this program (``GO [NROWS, D]``,
        ``H, DX, DH [NROWS, l * D]``, all contiguous; products rounded to the compute dtype = ``DH``'s); without
        ``WITH_DX`` only ``DH``."""
        CD = DH.dtype.element_ty
        r = tl.program_id(0) * BM + tl.arange(0, BM)
        row_ok = r < NROWS
        r64 = r.to(tl.int64)
        dcol = tl.arange(0, DP)
        dok = dcol < HEAD_D
        go = tl.load(GO + r64[:, None] * HEAD_D + dcol[None, :], mask=row_ok[:, None] & dok[None, :],
                     other=0.0).to(CD)
        if not WITH_DX:
            for n0 in range(0, KW, BN):
                n = n0 + tl.arange(0, BN)
                nok = n < KW
                w2 = tl.load(W2 + dcol[:, None] * sw2d + n[None, :] * sw2n, mask=dok[:, None] & nok[None, :],
                             other=0.0).to(CD)
                dh = tl.dot(go, w2, input_precision=PREC).to(CD)
                hv = tl.load(H + r64[:, None] * KW + n[None, :], mask=row_ok[:, None] & nok[None, :], other=0.0)
                tl.store(DH + r64[:, None] * KW + n[None, :], tl.where(hv > 0, dh, 0.0).to(CD),
                         mask=row_ok[:, None] & nok[None, :])
        else:
            for k0 in range(0, KW, BK):
                k = k0 + tl.arange(0, BK)
                kok = k < KW
                accx = tl.zeros([BM, BK], dtype=tl.float32)
                for n0 in range(0, KW, BN):
                    n = n0 + tl.arange(0, BN)
                    nok = n < KW
                    w2 = tl.load(W2 + dcol[:, None] * sw2d + n[None, :] * sw2n, mask=dok[:, None] & nok[None, :],
                                 other=0.0).to(CD)
                    dh = tl.dot(go, w2, input_precision=PREC).to(CD)
                    hv = tl.load(H + r64[:, None] * KW + n[None, :], mask=row_ok[:, None] & nok[None, :], other=0.0)
                    dh = tl.where(hv > 0, dh, 0.0).to(CD)
                    tl.store(DH + r64[:, None] * KW + n[None, :], dh, mask=row_ok[:, None] & nok[None, :] & (k0 == 0))
                    w1 = tl.load(W1 + n[:, None] * sw1n + k[None, :] * sw1k, mask=nok[:, None] & kok[None, :],
                                 other=0.0).to(CD)
                    accx += tl.dot(dh, w1, input_precision=PREC)
                tl.store(DX + r64[:, None] * KW + k[None, :], accx.to(CD), mask=row_ok[:, None] & kok[None, :])


#: tiles (rows, columns, inputs per chunk, warps) tried in turn where a GPU has too little shared memory for the
#: configured ones (on the H200, 227 KiB per block, the backward at 64 x 256 x 64 asked for 258 KiB; GPUs with less
#: shared memory, such as an A100 or consumer cards, may refuse the configured tiles too); the first that compiles is
#: kept per kernel, device and dtypes, and a warning names it once
SMALLER_TILES = ((64, 128, 64, 8), (64, 64, 64, 4), (32, 32, 32, 4))
_FITTING: dict = {}


def _out_of_resources() -> tuple:
    try:
        from triton.runtime.errors import OutOfResources
    except ImportError:  # pragma: no cover - no triton, or a triton without the class
        return ()
    return (OutOfResources,)


_TILE_ERRORS = _out_of_resources()  # looked up once, not at every launch


def _with_fitting_tiles(kind: str, key: tuple, first: tuple, run) -> None:
    """``run(rows, cols, k, warps)`` with ``first``, or where that needs more shared memory than the GPU has, with the
    first of :data:`SMALLER_TILES` that fits (remembered under ``(kind, *key, first)``; logged once)."""
    memo = (kind, *key, first)
    tiles = _FITTING.get(memo, first)
    ladder = [tiles, *(t for t in SMALLER_TILES if t != tiles)]
    for i, option in enumerate(ladder):
        try:
            run(*option)
        except _TILE_ERRORS as error:
            if i + 1 == len(ladder):
                raise
            logger.warning("LTIS compressor %s kernel: tiles %s do not fit this GPU (%s); using %s instead (set "
                           "triton_compressor's tile constants to choose)", kind, option, str(error).split(".")[0],
                           ladder[i + 1])
            continue
        _FITTING[memo] = option
        return


def _options(warps: int) -> dict:
    return {"num_warps": warps} if NUM_STAGES is None else {"num_warps": warps, "num_stages": NUM_STAGES}


def _prec(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def launch_compressor(key: torch.Tensor, lengths: torch.Tensor, position: torch.Tensor, w1: torch.Tensor,
                      b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, block_size: int, window: int,
                      dtype: torch.dtype, save: bool = False):
    """``k~ [B, G, M, D]`` in ``dtype`` (the compute dtype: autocast's, else the weights') from ``key [B, G, L, D]``
    (``dtype``, any strides), ``position [G, l, D]`` and ``fc1``/``fc2``'s weights and biases (any float dtype,
    rounded to ``dtype`` in the kernel). With ``save`` also ``(x, h)``, the flattened windows and the ReLU output,
    ``[B*G*M, l * D]`` each (the backward's inputs); else ``(k~, None, None)``."""
    batch, groups, seq_len, head_dim = key.shape
    num_windows = seq_len // block_size
    width = window * head_dim
    rows = batch * groups * num_windows
    out = torch.empty(batch, groups, num_windows, head_dim, dtype=dtype, device=key.device)
    x = h = None
    if save:
        x = torch.empty(rows, width, dtype=dtype, device=key.device)
        h = torch.empty(rows, width, dtype=dtype, device=key.device)
    if rows:
        if CAST_WEIGHTS:
            w1, w2 = w1.to(dtype), w2.to(dtype)

        def run(block_rows, cols, k, warps):
            launch(compressor_fwd_kernel, (cdiv(rows, block_rows),), key, lengths, position, w1, b1, w2, b2, out,
                   out if x is None else x, out if h is None else h, rows, seq_len, num_windows, groups,
                   *key.stride(), *position.stride(), *w1.stride(), *w2.stride(), BLK=block_size, WL=window,
                   HEAD_D=head_dim, DP=max(16, next_pow2(head_dim)), KW=width, BM=block_rows, BN=cols, BK=k,
                   SAVE=save, PREC=_prec(dtype), **_options(warps))

        _with_fitting_tiles("forward", (key.device, dtype, w1.dtype, save), (BLOCK_ROWS, FWD_BLOCK_COLS, FWD_BLOCK_K,
                                                                              FWD_WARPS), run)
    return out, x, h


def launch_compressor_backward(grad: torch.Tensor, h: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor):
    """``(dx, dh)`` ``[rows, l * D]`` in ``h``'s dtype from ``grad [rows, D]`` (``d k~``) and the saved ReLU
    output ``h``: ``dh = (grad W2) * [h > 0]``, ``dx = dh W1``."""
    rows, width = h.shape
    head_dim = w2.shape[0]
    grad = grad.reshape(rows, head_dim).to(h.dtype).contiguous()
    dh = torch.empty_like(h)
    dx = None if DX_BY_GEMM else torch.empty_like(h)
    if CAST_WEIGHTS or DX_BY_GEMM:
        w1, w2 = w1.to(h.dtype), w2.to(h.dtype)
    if rows:
        def run(block_rows, cols, k, warps):
            launch(compressor_bwd_kernel, (cdiv(rows, block_rows),), grad, h, w1, w2, dh if dx is None else dx, dh,
                   rows, *w1.stride(), *w2.stride(), HEAD_D=head_dim, DP=max(16, next_pow2(head_dim)), KW=width,
                   BM=block_rows, BN=cols, BK=k, PREC=_prec(h.dtype), WITH_DX=dx is not None, **_options(warps))

        _with_fitting_tiles("backward", (h.device, h.dtype, w1.dtype, dx is None), (BLOCK_ROWS, BWD_BLOCK_COLS,
                                                                                    BWD_BLOCK_K, BWD_WARPS), run)
    if dx is None:
        dx = dh @ w1
    return dx, dh, grad


class FusedCompressor(torch.autograd.Function):
    """:func:`launch_compressor` with its backward (module docstring): gradients for ``key``, ``position`` and
    ``fc1``/``fc2``'s weights and biases, each in its own dtype."""

    @staticmethod
    def forward(ctx, key, lengths, position, w1, b1, w2, b2, block_size, window, dtype):
        lengths = lengths.to(key.device)
        out, x, h = launch_compressor(key, lengths, position, w1, b1, w2, b2, block_size, window, dtype, save=True)
        ctx.save_for_backward(lengths, x, h, w1, w2)
        ctx.meta = (key.shape, key.stride(), key.dtype, position.dtype, b1.dtype, b2.dtype, block_size, window)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        lengths, x, h, w1, w2 = ctx.saved_tensors
        shape, stride, key_dtype, position_dtype, b1_dtype, b2_dtype, block_size, window = ctx.meta
        need = ctx.needs_input_grad
        dx, dh, go = launch_compressor_backward(grad, h, w1, w2)
        dkey = dposition = dw1 = db1 = dw2 = db2 = None
        if need[0]:
            like = torch.empty_strided(shape, stride, dtype=key_dtype, device=grad.device)
            dkey = launch_windows_backward(dx.view(shape[0], shape[1], -1, dx.shape[-1]), lengths, like,
                                           block_size, window)
        if need[2]:
            dposition = dx.view(shape[0], shape[1], -1, window, shape[-1]).sum(
                (0, 2), dtype=torch.float32).to(position_dtype)
        if need[3]:
            dw1 = (dh.t() @ x).to(w1.dtype)
        if need[4]:
            db1 = dh.sum(0, dtype=torch.float32).to(b1_dtype)
        if need[5]:
            dw2 = (go.t() @ h).to(w2.dtype)
        if need[6]:
            db2 = go.sum(0, dtype=torch.float32).to(b2_dtype)
        return dkey, None, dposition, dw1, db1, dw2, db2, None, None, None
