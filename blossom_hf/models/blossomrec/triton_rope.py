"""Fused RoPE (docs/MODEL.md, "Backbone": half-split rotation, fp32 math) as one Triton kernel per tensor and
direction, with :func:`layers_blossomrec.apply_rotary_reference` (the PyTorch ops) as its naive reference.

The PyTorch form upcasts ``x`` to fp32, forms ``rotate_half`` by a negation and a ``cat``, multiplies twice, adds
and casts back: about seven full-size element-wise kernels forward and ten backward per tensor (the largest
non-attention cost of a layer step, docs/triton_notes.md, "v4"). This kernel reads ``x`` once in its own dtype,
computes ``y1 = x1 c1 - x2 s1``, ``y2 = x2 c2 + x1 s2`` in fp32 registers and writes ``y`` once in ``x``'s dtype;
the backward is the same kernel with the transposed rotation (``dx1 = dy1 c1 + dy2 s2``, ``dx2 = dy2 c2 - dy1 s1``).

Layout: ``x [B, heads, Q, D]`` with any strides (the projections' ``view().transpose()`` output is used as is, and
the result has ``x``'s strides, as the element-wise PyTorch ops would give); ``cos, sin`` are ``[Q, D]`` (one table
for every row) or ``[B, 1, Q, D]`` (the serving path's per-row positions), fp32.
"""

from __future__ import annotations

import torch

from .triton_common import cdiv, next_pow2, tl, triton

__all__ = ["rope_kernel", "launch_rope"]

_BLOCK_ROWS = 64

if triton is not None:

    @triton.jit
    def rope_kernel(X, COS, SIN, Y, NROWS, HEADS, QLEN, sxb, sxh, sxq, sxd, syb, syh, syq, syd, scb, scq, scd,
                    HALF: tl.constexpr, HP: tl.constexpr, BR: tl.constexpr, BACKWARD: tl.constexpr):
        """``BR`` rows ``(b, head, q)`` of ``x`` per program; columns ``[0, HALF)`` and ``[HALF, 2 HALF)`` are
        loaded as two ``[BR, HP]`` tiles. ``BACKWARD`` applies the transposed rotation (the gradient)."""
        rows = tl.program_id(0) * BR + tl.arange(0, BR)
        row_ok = rows < NROWS
        rows = tl.where(row_ok, rows, 0).to(tl.int64)
        qq = rows % QLEN
        bh = rows // QLEN
        hh = bh % HEADS
        bb = bh // HEADS
        cols = tl.arange(0, HP)
        ok = row_ok[:, None] & (cols < HALF)[None, :]
        x_base = X + (bb * sxb + hh * sxh + qq * sxq)[:, None]
        c_base = (bb * scb + qq * scq)[:, None]
        x1 = tl.load(x_base + cols[None, :] * sxd, mask=ok, other=0.0).to(tl.float32)
        x2 = tl.load(x_base + (cols[None, :] + HALF) * sxd, mask=ok, other=0.0).to(tl.float32)
        c1 = tl.load(COS + c_base + cols[None, :] * scd, mask=ok, other=0.0).to(tl.float32)
        c2 = tl.load(COS + c_base + (cols[None, :] + HALF) * scd, mask=ok, other=0.0).to(tl.float32)
        s1 = tl.load(SIN + c_base + cols[None, :] * scd, mask=ok, other=0.0).to(tl.float32)
        s2 = tl.load(SIN + c_base + (cols[None, :] + HALF) * scd, mask=ok, other=0.0).to(tl.float32)
        if BACKWARD:
            y1 = x1 * c1 + x2 * s2
            y2 = x2 * c2 - x1 * s1
        else:
            y1 = x1 * c1 - x2 * s1
            y2 = x2 * c2 + x1 * s2
        y_base = Y + (bb * syb + hh * syh + qq * syq)[:, None]
        tl.store(y_base + cols[None, :] * syd, y1.to(Y.dtype.element_ty), mask=ok)
        tl.store(y_base + (cols[None, :] + HALF) * syd, y2.to(Y.dtype.element_ty), mask=ok)


def _table_strides(table: torch.Tensor) -> tuple[int, int, int]:
    """(batch, position, column) strides of a ``[Q, D]`` or ``[B, 1, Q, D]`` table."""
    if table.dim() == 2:
        return 0, table.stride(0), table.stride(1)
    return table.stride(0), table.stride(2), table.stride(3)


def launch_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool = False) -> torch.Tensor:
    """One launch of :func:`rope_kernel`: the rotation of ``x`` (or, with ``backward``, of a gradient)."""
    batch, heads, qlen, dim = x.shape
    y = torch.empty_like(x)  # x's strides (dense tensors keep their layout)
    nrows = batch * heads * qlen
    if nrows == 0:
        return y
    half = dim // 2
    rope_kernel[(cdiv(nrows, _BLOCK_ROWS),)](
        x, cos, sin, y, nrows, heads, qlen, *x.stride(), *y.stride(), *_table_strides(cos),
        HALF=half, HP=next_pow2(half), BR=_BLOCK_ROWS, BACKWARD=backward, num_warps=4)
    return y


class FusedRotary(torch.autograd.Function):
    """RoPE with the Triton kernel both ways (``cos``/``sin`` are constants: no gradient)."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return launch_rope(x, cos, sin)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return launch_rope(grad, cos, sin, backward=True), None, None
