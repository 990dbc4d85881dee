"""Fused Triton kernels for two small pieces of a BlossomRec layer around the attention (docs/MODEL.md, "Attention
layer"), used by ``layers_blossomrec`` on CUDA for every backend, with the PyTorch ops as their reference:

* the LTIS compressor's windows (``ltis_window_keys`` + the intra-window positions ``P``): the PyTorch form is a
  masked fill of the padded keys, a left pad, an unfold and the add of ``P`` (four full-size kernels forward, and
  the sum, the unfold's backward, the pad's slice and the masked fill backward). :func:`launch_windows` gathers
  each window's ``l`` keys from ``key`` (zero before position 0 and at padded positions), adds ``P`` and writes the
  flattened windows ``[B, G, M, l * D]`` once (the input of ``fc1``); its backward :func:`launch_windows_backward`
  sums, for every key position, the gradients of the ``ceil(l / b)`` window slots that hold it (no atomics) and
  writes ``d key`` in ``key``'s layout. ``d P`` is the sum of the window gradients over batch and windows (one
  reduction, fp32 accumulation).
* the gate ``sigmoid(logits.float())``: one kernel forward (fp32 result, laid out ``[B, Q, H, 2]`` in memory and
  returned as the ``[B, H, Q, 2]`` view the backends take), one backward (``d logits = d gate * s (1 - s)`` in the
  logits' dtype, written straight in the logits' layout: no transpose copy, no separate cast).

Same numbers as the PyTorch ops: the window values are the same roundings (``key + P`` computed in fp32 and
rounded once to the key's dtype, as PyTorch's bf16/fp16 add does); the sigmoid is fp32 either way.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .triton_common import cdiv, next_pow2, tl, triton
from .triton_fast_launch import launch

__all__ = ["CompressorWindows", "GateSigmoid", "QueryGate", "launch_windows", "launch_windows_backward", "launch_gate",
           "launch_gate_backward"]

_WINDOW_ROWS = 128  # (window, slot) rows of one program of the windows kernel
_KEY_ROWS = 64  # key positions of one program of its backward
_GATE_BLOCK = 1024

if triton is not None:

    @triton.jit
    def windows_kernel(K, LENS, P, X, L, M, G, skb, skg, skt, skd, spg, spj, spd,
                       BLK: tl.constexpr, WL: tl.constexpr, WLP: tl.constexpr, HEAD_D: tl.constexpr,
                       DP: tl.constexpr, ROWS: tl.constexpr):
        """``X[b, γ, w, j * D + d] = key[b, γ, w*b - (l-b) + j, d] (0 outside 0..len-1) + P[γ, j, d]`` for the
        ``ROWS // WLP`` windows of this program (rows are (window, slot) pairs, ``WLP`` = l rounded up)."""
        pid_w = tl.program_id(0)
        pid_bg = tl.program_id(1)
        bb = (pid_bg // G).to(tl.int64)
        gam = pid_bg % G
        seqlen = tl.minimum(tl.maximum(tl.load(LENS + bb), 0), L)
        r = tl.arange(0, ROWS)
        j = r % WLP
        w = pid_w * (ROWS // WLP) + r // WLP
        row_ok = (j < WL) & (w < M)
        pos = w * BLK - (WL - BLK) + j
        real = row_ok & (pos >= 0) & (pos < seqlen)
        d = tl.arange(0, DP)
        dmask = d < HEAD_D
        key = tl.load(K + bb * skb + gam * skg + pos[:, None] * skt + d[None, :] * skd,
                      mask=real[:, None] & dmask[None, :], other=0.0)
        pv = tl.load(P + gam * spg + j[:, None] * spj + d[None, :] * spd, mask=row_ok[:, None] & dmask[None, :],
                     other=0.0)
        # P in the key's dtype, then one fp32 add rounded to the key's dtype (what PyTorch's add of the two does)
        x = key.to(tl.float32) + pv.to(X.dtype.element_ty).to(tl.float32)
        xrow = ((bb * G + gam) * M + w) * (WL * HEAD_D) + j * HEAD_D  # X is [B, G, M, l * D] contiguous
        tl.store(X + xrow[:, None] + d[None, :], x.to(X.dtype.element_ty), mask=row_ok[:, None] & dmask[None, :])

    @triton.jit
    def windows_bwd_kernel(DX, LENS, DK, L, M, G, skb, skg, skt, skd,
                           BLK: tl.constexpr, WL: tl.constexpr, NR: tl.constexpr, HEAD_D: tl.constexpr,
                           DP: tl.constexpr, BP: tl.constexpr):
        """``d key[p] = sum over the windows w holding p (w = p // b + r, r < NR = ceil(l / b)) of
        dX[w, slot p - w*b + l - b]`` for real positions ``p`` covered by a window, else 0."""
        pid_p = tl.program_id(0)
        pid_bg = tl.program_id(1)
        bb = (pid_bg // G).to(tl.int64)
        gam = pid_bg % G
        seqlen = tl.minimum(tl.maximum(tl.load(LENS + bb), 0), L)
        p = pid_p * BP + tl.arange(0, BP)
        d = tl.arange(0, DP)
        dmask = d < HEAD_D
        real = (p < seqlen) & (p < M * BLK)
        acc = tl.zeros([BP, DP], dtype=tl.float32)
        for r in tl.static_range(NR):
            w = p // BLK + r
            j = p % BLK + (WL - BLK) - r * BLK
            ok = real & (w < M) & (j >= 0) & (j < WL)
            xrow = ((bb * G + gam) * M + w) * (WL * HEAD_D) + j * HEAD_D
            acc += tl.load(DX + xrow[:, None] + d[None, :], mask=ok[:, None] & dmask[None, :],
                           other=0.0).to(tl.float32)
        tl.store(DK + bb * skb + gam * skg + p[:, None] * skt + d[None, :] * skd, acc.to(DK.dtype.element_ty),
                 mask=(p < L)[:, None] & dmask[None, :])

    @triton.jit
    def gate_kernel(X, BIAS, Y, N, CH, SXR, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
        """``Y = sigmoid(float(X) (+ float(BIAS)))`` on ``N`` elements: rows of ``CH`` channels, ``X``'s rows
        ``SXR`` elements apart (its channels contiguous), ``Y`` contiguous; ``BIAS [CH]`` when ``HAS_BIAS``."""
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = i < N
        r = (i // CH).to(tl.int64)
        c = i % CH
        x = tl.load(X + r * SXR + c, mask=ok, other=0.0).to(tl.float32)
        if HAS_BIAS:
            x += tl.load(BIAS + c, mask=ok, other=0.0).to(tl.float32)
        tl.store(Y + i, tl.sigmoid(x), mask=ok)

    @triton.jit
    def gate_bwd_kernel(DG, S, DX, N, Q, H, sdb, sdh, sdq, sdc, SXR, BLOCK: tl.constexpr):
        """``DX[b, q, 2h + c] = DG[b, h, q, c] s (1 - s)`` (``DG`` with any strides, ``S`` contiguous ``[B, Q, 2H]``,
        ``DX``'s rows ``SXR`` elements apart, its channels contiguous)."""
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = i < N
        c = i % 2
        h = (i // 2) % H
        bq = i // (2 * H)
        q = bq % Q
        b = (bq // Q).to(tl.int64)
        dg = tl.load(DG + b * sdb + h * sdh + q * sdq + c * sdc, mask=ok, other=0.0).to(tl.float32)
        s = tl.load(S + i, mask=ok, other=0.0)
        tl.store(DX + bq.to(tl.int64) * SXR + i % (2 * H), (dg * s * (1.0 - s)).to(DX.dtype.element_ty), mask=ok)


def launch_windows(key: torch.Tensor, lengths: torch.Tensor, position: torch.Tensor, block_size: int,
                   window: int) -> torch.Tensor:
    """Flattened compression windows ``[B, G, M, l * D]`` (key's dtype) of ``key [B, G, L, D]`` plus the
    intra-window positions ``position [G, l, D]`` (:func:`attention_patterns.ltis_window_keys` + P)."""
    batch, groups, seq_len, head_dim = key.shape
    num_windows = seq_len // block_size
    x = torch.empty(batch, groups, num_windows, window * head_dim, dtype=key.dtype, device=key.device)
    if x.numel() == 0:
        return x
    wlp = next_pow2(window)
    rows = max(_WINDOW_ROWS, wlp)
    launch(windows_kernel, (cdiv(num_windows, rows // wlp), batch * groups),
        key, lengths, position, x, seq_len, num_windows, groups, *key.stride(), *position.stride(),
        BLK=block_size, WL=window, WLP=wlp, HEAD_D=head_dim, DP=max(16, next_pow2(head_dim)), ROWS=rows,
        num_warps=4)
    return x


def launch_windows_backward(grad: torch.Tensor, lengths: torch.Tensor, key: torch.Tensor, block_size: int,
                            window: int) -> torch.Tensor:
    """``d key`` (``key``'s dtype and layout) from the windows' gradient ``grad [B, G, M, l * D]``."""
    batch, groups, seq_len, head_dim = key.shape
    dk = torch.empty_like(key)
    if dk.numel() == 0:
        return dk
    grad = grad.contiguous()
    launch(windows_bwd_kernel, (cdiv(seq_len, _KEY_ROWS), batch * groups),
        grad, lengths, dk, seq_len, seq_len // block_size, groups, *dk.stride(), BLK=block_size, WL=window,
        NR=cdiv(window, block_size), HEAD_D=head_dim, DP=max(16, next_pow2(head_dim)), BP=_KEY_ROWS, num_warps=4)
    return dk


class CompressorWindows(torch.autograd.Function):
    """:func:`launch_windows` with its backward: ``d key`` by :func:`launch_windows_backward`, ``d P`` by one sum."""

    @staticmethod
    def forward(ctx, key, lengths, position, block_size, window):
        lengths = lengths.to(key.device)
        ctx.save_for_backward(lengths)
        ctx.key_meta = (key.shape, key.stride(), key.dtype)
        ctx.geometry = (block_size, window)
        ctx.position_dtype = position.dtype
        return launch_windows(key, lengths, position, block_size, window)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (lengths,) = ctx.saved_tensors
        block_size, window = ctx.geometry
        shape, stride, dtype = ctx.key_meta
        dkey = dposition = None
        if ctx.needs_input_grad[0]:
            like = torch.empty_strided(shape, stride, dtype=dtype, device=grad.device)
            dkey = launch_windows_backward(grad, lengths, like, block_size, window)
        if ctx.needs_input_grad[2]:
            batch, groups, num_windows, _ = grad.shape
            dposition = grad.reshape(batch, groups, num_windows, window, shape[-1]).sum(
                (0, 2), dtype=torch.float32).to(ctx.position_dtype)
        return dkey, None, dposition, None, None


def launch_gate(logits: torch.Tensor, heads: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``sigmoid(logits.float() (+ bias.float()))`` of ``logits [B, Q, 2H]`` as the ``[B, H, Q, 2]`` fp32 gate
    (memory order ``[B, Q, H, 2]``, the order of the logits). ``logits`` may be a column slice of a wider
    projection (its channels contiguous, rows any distance apart: :class:`QueryGate`)."""
    batch, num_queries, channels = logits.shape
    if logits.stride(-1) != 1 or (batch > 1 and logits.stride(0) != num_queries * logits.stride(1)):
        logits = logits.contiguous()
    gate = torch.empty_strided((batch, heads, num_queries, 2), (num_queries * channels, 2, channels, 1),
                               dtype=torch.float32, device=logits.device)
    n = logits.numel()
    if n:
        launch(gate_kernel, (cdiv(n, _GATE_BLOCK),), logits, logits if bias is None else bias, gate, n, channels,
               logits.stride(1), HAS_BIAS=bias is not None, BLOCK=_GATE_BLOCK, num_warps=4)
    return gate


def launch_gate_backward(grad: torch.Tensor, gate: torch.Tensor, out: torch.Tensor) -> None:
    """``d logits = d gate * s (1 - s)`` into ``out [B, Q, 2H]`` (its channels contiguous, rows any distance apart)
    from ``grad [B, H, Q, 2]`` (any strides) and the saved gate."""
    batch, heads, num_queries, _ = gate.shape
    n = gate.numel()
    if n:
        launch(gate_bwd_kernel, (cdiv(n, _GATE_BLOCK),), grad, gate, out, n, num_queries, heads, *grad.stride(),
               out.stride(1), BLOCK=_GATE_BLOCK, num_warps=4)


class GateSigmoid(torch.autograd.Function):
    """:func:`launch_gate` with its backward (one kernel, the logits' dtype and layout)."""

    @staticmethod
    def forward(ctx, logits, heads):
        gate = launch_gate(logits, heads)
        ctx.save_for_backward(gate)
        ctx.logits_dtype = logits.dtype
        return gate

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (gate,) = ctx.saved_tensors
        batch, heads, num_queries, _ = gate.shape
        dlogits = torch.empty(batch, num_queries, 2 * heads, dtype=ctx.logits_dtype, device=grad.device)
        launch_gate_backward(grad, gate, dlogits)
        return dlogits, None


class QueryGate(torch.autograd.Function):
    """The query projection and the gate from one matrix product: ``both = x [Wq; Wg]^T`` (``[B, Q, H*D + 2H]``,
    no bias) in, ``(both[..., :H*D], sigmoid(both[..., H*D:] + bias))`` out, the first a view of ``both``, the
    second the ``[B, H, Q, 2]`` fp32 gate. The backward writes ``d both`` in one buffer (the query's gradient
    copied in, the gate's written by the gate kernel: no slice-and-sum of two full-size gradients) and ``d bias``
    as one fp32 sum."""

    @staticmethod
    def forward(ctx, both, bias, heads):
        width = both.shape[-1] - 2 * heads
        both = both.contiguous()  # itself when already contiguous (F.linear's output is)
        gate = launch_gate(both[..., width:], heads, bias)
        ctx.save_for_backward(gate)
        ctx.meta = (width, bias.dtype, both.dtype)
        return both[..., :width], gate

    @staticmethod
    @once_differentiable
    def backward(ctx, dquery, dgate):
        (gate,) = ctx.saved_tensors
        width, bias_dtype, dtype = ctx.meta
        batch, heads, num_queries, _ = gate.shape
        dboth = torch.empty(batch, num_queries, width + 2 * heads, dtype=dtype, device=gate.device)
        if dquery is None:
            dboth[..., :width].zero_()
        else:
            dboth[..., :width].copy_(dquery)
        dlogits = dboth[..., width:]
        if dgate is None:
            dlogits.zero_()
        else:
            launch_gate_backward(dgate, gate, dlogits)
        dbias = dlogits.sum((0, 1), dtype=torch.float32).to(bias_dtype) if ctx.needs_input_grad[1] else None
        return dboth, dbias, None
