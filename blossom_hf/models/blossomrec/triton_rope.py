"""Fused RoPE (docs/MODEL.md, "Backbone": half-split rotation, fp32 math): one Triton launch per direction for a
tensor, or for the layer's query and key together, with :func:`layers_blossomrec.apply_rotary_reference` (the
PyTorch ops) as its naive reference.

The PyTorch form upcasts ``x`` to fp32, computes the two halves with four products and two sums, joins them with a
``cat`` and casts back: several element-wise kernels forward, more backward, per tensor (before this kernel the largest
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
from .triton_fast_launch import launch

__all__ = ["rope_kernel", "launch_rope", "FusedRotary", "FusedRotaryPair"]

_BLOCK_ROWS = 64

if triton is not None:

    @triton.jit
    def rope_rows(X, COS, SIN, Y, pid, NROWS, HEADS, QLEN, sxb, sxh, sxq, sxd, syb, syh, syq, syd, scb, scq, scd,
                  HALF: tl.constexpr, HP: tl.constexpr, BR: tl.constexpr, BACKWARD: tl.constexpr):
        """Rows ``pid * BR ..`` of one tensor: ``(b, head, q)`` each; columns ``[0, HALF)`` and ``[HALF, 2 HALF)``
        are loaded as two ``[BR, HP]`` tiles. ``BACKWARD`` applies the transposed rotation (the gradient)."""
        rows = pid * BR + tl.arange(0, BR)
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

    @triton.jit
    def rope_kernel(X, COS, SIN, Y, NROWS, HEADS, QLEN, sxb, sxh, sxq, sxd, syb, syh, syq, syd, scb, scq, scd,
                    X2, COS2, SIN2, Y2, NROWS2, HEADS2, QLEN2, sxb2, sxh2, sxq2, sxd2, syb2, syh2, syq2, syd2,
                    scb2, scq2, scd2,
                    HALF: tl.constexpr, HP: tl.constexpr, BR: tl.constexpr, BACKWARD: tl.constexpr,
                    PAIR: tl.constexpr):
        """One tensor, or with ``PAIR`` two (grid axis 1 picks it: the layer's query and key in one launch)."""
        pid = tl.program_id(0)
        if tl.program_id(1) == 0:
            rope_rows(X, COS, SIN, Y, pid, NROWS, HEADS, QLEN, sxb, sxh, sxq, sxd, syb, syh, syq, syd, scb, scq, scd,
                      HALF, HP, BR, BACKWARD)
        elif PAIR:
            rope_rows(X2, COS2, SIN2, Y2, pid, NROWS2, HEADS2, QLEN2, sxb2, sxh2, sxq2, sxd2, syb2, syh2, syq2, syd2,
                      scb2, scq2, scd2, HALF, HP, BR, BACKWARD)


def _table_strides(table: torch.Tensor) -> tuple[int, int, int]:
    """(batch, position, column) strides of a ``[Q, D]`` or ``[B, 1, Q, D]`` table."""
    if table.dim() == 2:
        return 0, table.stride(0), table.stride(1)
    return table.stride(0), table.stride(2), table.stride(3)


def _args(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, y: torch.Tensor) -> tuple:
    batch, heads, qlen, _ = x.shape
    return (x, cos, sin, y, batch * heads * qlen, heads, qlen, *x.stride(), *y.stride(), *_table_strides(cos))


def launch_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool = False,
                x2: torch.Tensor | None = None, cos2: torch.Tensor | None = None,
                sin2: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """One launch of :func:`rope_kernel`: the rotation of ``x`` (or, with ``backward``, of a gradient); with ``x2``
    (and its tables ``cos2, sin2``, same head dim) also of ``x2`` in the same launch, returning both."""
    dim = x.shape[-1]
    y = torch.empty_like(x)  # x's dimension order (a view with gaps between rows gets that order without them)
    first = _args(x, cos, sin, y)
    if x2 is None:
        second, y2, rows = first, None, first[4]
    else:
        y2 = torch.empty_like(x2)
        second = _args(x2, cos2, sin2, y2)
        rows = max(first[4], second[4])
    if rows > 0:
        launch(rope_kernel, (cdiv(rows, _BLOCK_ROWS), 1 if x2 is None else 2),
            *first, *second, HALF=dim // 2, HP=next_pow2(dim // 2), BR=_BLOCK_ROWS, BACKWARD=backward,
            PAIR=x2 is not None, num_warps=4)
    return y if x2 is None else (y, y2)


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


class FusedRotaryPair(torch.autograd.Function):
    """RoPE of two tensors (query and key, each with its tables) in one launch each way."""

    @staticmethod
    def forward(ctx, x, cos, sin, x2, cos2, sin2):
        ctx.save_for_backward(cos, sin, cos2, sin2)
        return launch_rope(x, cos, sin, x2=x2, cos2=cos2, sin2=sin2)

    @staticmethod
    def backward(ctx, grad, grad2):
        cos, sin, cos2, sin2 = ctx.saved_tensors
        if grad is None or grad2 is None:  # one output unused: rotate the other alone
            dx = None if grad is None else launch_rope(grad, cos, sin, backward=True)
            dx2 = None if grad2 is None else launch_rope(grad2, cos2, sin2, backward=True)
        else:
            dx, dx2 = launch_rope(grad, cos, sin, backward=True, x2=grad2, cos2=cos2, sin2=sin2)
        return dx, None, None, dx2, None, None
