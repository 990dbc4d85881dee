"""Shared pieces of the fused Triton backend: the interpreter switch, integer helpers and the
``@triton.jit`` helpers used by several kernel files (``triton_select.py``, ``triton_fwd.py``,
``triton_bwd.py``).

Tile shapes are written next to each tensor as ``[rows, cols]``. ``R`` rows of a query-major tile are
``BM`` queries x ``GP`` heads (``GP`` = the group size ``g`` rounded up to a power of two; rows of the
padding heads are masked), row ``r`` is query ``t0 + r // GP``, head ``γ g + r % GP``.

``import triton`` is guarded so that this file (and the model folder) imports without triton.
"""

from __future__ import annotations

import os

try:  # guarded: the model folder must import where triton is absent
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only without triton
    triton = None
    tl = None

NEG = -1.0e30  # "minus infinity" that keeps exp() and differences finite


def interpret_requested() -> bool:
    """``TRITON_INTERPRET`` as triton itself reads it (``1/true/on/yes`` = on; unset, ``0``, ``false`` = off)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes", "y")


#: Interpreter mode the kernel files were imported under (triton decides it when the kernels are decorated).
INTERPRET = interpret_requested()


def next_pow2(x: int) -> int:
    x = int(x)
    return 1 if x <= 1 else 1 << (x - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


if triton is not None:

    @triton.jit
    def program_row(LENS, G, L):
        """The program's batch row ``bb`` (int64), kv head ``gam`` (grid axis 1 is ``b * G + γ``) and the row's
        real length ``seqlen`` clamped to ``0..L`` (``LENS [B]``, any integer dtype: no cast before launch)."""
        pid_bg = tl.program_id(1)
        bb = (pid_bg // G).to(tl.int64)
        gam = pid_bg % G
        seqlen = tl.minimum(tl.maximum(tl.load(LENS + bb), 0), L).to(tl.int32)
        return bb, gam, seqlen

    @triton.jit
    def softmax_update(s, mask, m, l, acc, vt, PREC: tl.constexpr):
        """One online-softmax step: scores ``s [R, C]`` restricted to ``mask [R, C]``, values ``vt [C, DP]``;
        running max ``m [R]``, sum ``l [R]``, output ``acc [R, DP]``."""
        s = tl.where(mask, s, -1.0e30)
        m_new = tl.maximum(m, tl.max(s, 1))
        corr = tl.exp(m - m_new)
        p = tl.exp(tl.where(mask, s - m_new[:, None], -1.0e30))
        l = l * corr + tl.sum(p, 1)
        acc = acc * corr[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision=PREC)
        return m_new, l, acc

    @triton.jit
    def group_mean_query(Q, bb, gam, t, tmask, d, dmask, sqb, sqh, sqt, sqd,
                         GQ: tl.constexpr, TQ: tl.constexpr, DP: tl.constexpr):
        """fp32 mean over the g query heads of kv head ``gam`` at queries ``t [TQ]``: ``[TQ, DP]``."""
        qm = tl.zeros([TQ, DP], dtype=tl.float32)
        for hh in tl.static_range(GQ):
            ptr = Q + bb * sqb + (gam * GQ + hh) * sqh + t[:, None] * sqt + d[None, :] * sqd
            qm += tl.load(ptr, mask=tmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
        return qm / GQ

    @triton.jit
    def pow2_in_range(lo, hi):
        """Scalar: some power of two ``p >= 1`` lies in ``[lo, hi]`` (the smallest power >= max(lo, 1) is
        ``smear(max(lo, 1) - 1) + 1``, where ``smear`` sets every bit below the top one)."""
        x = tl.maximum(lo, 1) - 1
        x = x | (x >> 1)
        x = x | (x >> 2)
        x = x | (x >> 4)
        x = x | (x >> 8)
        x = x | (x >> 16)
        return hi > x

    @triton.jit
    def tile_flags(t0, t_hi, j0, j1, selr, own_first, BLK: tl.constexpr, WIN: tl.constexpr,
                   NSINK: tl.constexpr):
        """Scalars for one (query tile, key tile) pair: can it hold an LTIS pair, an STIS pair?

        Queries ``t0..t_hi`` (real ones), keys ``j0..j1``, ``selr [R, NP]`` the queries' selected blocks
        (-1 = none), ``own_first`` the first key of the first query's own block. Also returns ``bits [R]``:
        bit ``i`` set when block ``j0 // BLK + i`` is selected by the row's query.
        """
        jb0 = j0 // BLK
        inr = (selr >= jb0) & (selr <= j1 // BLK)
        bits = tl.sum(tl.where(inr, 1 << tl.where(inr, selr - jb0, 0), 0), 1)  # [R]
        own_hit = (j1 >= own_first) & (j0 <= t_hi) & (t0 // BLK <= j1 // BLK)
        do_l = own_hit | (tl.max(bits, 0) > 0)
        lo = t0 - j1
        hi = t_hi - j0
        do_s = (hi >= 0) & ((lo < WIN) | (j0 < NSINK) | pow2_in_range(lo, hi))
        return do_l, do_s, bits, jb0

    @triton.jit
    def ltis_tile_mask(t, row_ok, j, bits, jb0, BLK: tl.constexpr):
        """LTIS membership of the pairs ``(t [R], j [C])`` as an ``[R, C]`` bool tile: the own block
        (``j // b == t // b``, ``j <= t``) or a block selected by the row's query (``bits``, see
        :func:`tile_flags`)."""
        delta = t[:, None] - j[None, :]
        jb = j // BLK
        own = row_ok[:, None] & (delta >= 0) & ((t // BLK)[:, None] == jb[None, :])
        selected = (((bits[:, None] >> (jb - jb0)[None, :]) & 1) != 0) & row_ok[:, None]
        return own | selected

    @triton.jit
    def stis_tile_mask(t, row_ok, j, WIN: tl.constexpr, NSINK: tl.constexpr):
        """STIS membership of the pairs ``(t [R], j [C])`` as an ``[R, C]`` bool tile: ``t - j`` in ``0..W-1``
        or a power of two, or ``j`` a sink (``j < S``), with ``j <= t``."""
        delta = t[:, None] - j[None, :]
        pow2 = (delta > 0) & ((delta & (delta - 1)) == 0)
        return row_ok[:, None] & (delta >= 0) & ((delta < WIN) | pow2 | (j < NSINK)[None, :])
