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
    def tile_rows(t0, gam, seqlen, L, GQ: tl.constexpr, GP: tl.constexpr, R: tl.constexpr):
        """Rows of a dense query tile: row ``r`` is query ``t0 + r // GP``, head ``γ g + r % GP``. Returns the
        in-group head ``hh [R]``, query ``t [R]``, head ``h [R]``, ``row_in`` (a real head and ``t < L``) and
        ``row_ok`` (also ``t < seqlen``)."""
        rows = tl.arange(0, R)
        hh = rows % GP
        t = t0 + rows // GP
        h = gam * GQ + hh
        row_in = (hh < GQ) & (t < L)
        return hh, t, h, row_in, row_in & (t < seqlen)

    @triton.jit
    def load_gate(GATE, bb, h, t, sgb, sgh, sgt, sgc, ok):
        """The gates ``α, β [R]`` (fp32) of rows ``(h, t)`` (0 where not ``ok``)."""
        gptr = GATE + bb * sgb + h * sgh + t * sgt
        alpha = tl.load(gptr, mask=ok, other=0.0).to(tl.float32)
        beta = tl.load(gptr + sgc, mask=ok, other=0.0).to(tl.float32)
        return alpha, beta

    @triton.jit
    def bwd_row_state(DO, OL, OS, LSE, DGATE, bb, h, t, orow, row_ok, row_in, d, dmask, sdb, sdh, sdt, sdd,
                      HEAD_D: tl.constexpr):
        """Per-row state of a query-side backward: ``do [R, DP]`` (input dtype), ``da = do·o_L``, ``db = do·o_S``
        (stored as ``d gate``) and the two logsumexps ``[R]`` saved by the forward."""
        rmask = row_ok[:, None] & dmask[None, :]
        do = tl.load(DO + bb * sdb + h[:, None] * sdh + t[:, None] * sdt + d[None, :] * sdd, mask=rmask, other=0.0)
        o_l = tl.load(OL + orow[:, None] * HEAD_D + d[None, :], mask=rmask, other=0.0).to(tl.float32)
        o_s = tl.load(OS + orow[:, None] * HEAD_D + d[None, :], mask=rmask, other=0.0).to(tl.float32)
        da = tl.sum(do.to(tl.float32) * o_l, 1)
        db = tl.sum(do.to(tl.float32) * o_s, 1)
        lse_l = tl.load(LSE + orow * 2, mask=row_ok, other=0.0)
        lse_s = tl.load(LSE + orow * 2 + 1, mask=row_ok, other=0.0)
        tl.store(DGATE + orow * 2, da, mask=row_in)
        tl.store(DGATE + orow * 2 + 1, db, mask=row_in)
        return do, da, db, lse_l, lse_s

    @triton.jit
    def window_keys(kb, vb, t0, seqlen, d, dmask, skt, skd, svt, svd, WIN: tl.constexpr, KN: tl.constexpr):
        """The shared STIS window tile of queries ``t0 ..``: keys ``jn = t0 - W + 1 + [0, KN)`` and their K, V."""
        jn = t0 - (WIN - 1) + tl.arange(0, KN)
        nmask = ((jn >= 0) & (jn < seqlen))[:, None] & dmask[None, :]
        kt = tl.load(kb + jn[:, None] * skt + d[None, :] * skd, mask=nmask, other=0.0)  # [KN, DP]
        vt = tl.load(vb + jn[:, None] * svt + d[None, :] * svd, mask=nmask, other=0.0)  # [KN, DP]
        return jn, kt, vt

    @triton.jit
    def far_stis_keys(kb, vb, t0, seqlen, d, dmask, skt, skd, svt, svd, BQ: tl.constexpr, NFP: tl.constexpr,
                      P0: tl.constexpr):
        """The gathered far STIS keys of queries ``t0 .. t0+BQ-1``: column ``c`` is query ``fq = c // NFP`` at
        offset ``P0 << (c % NFP)``. Returns ``fq, fok [BQ*NFP]`` and the gathered K, V ``[BQ*NFP, DP]``."""
        fc = tl.arange(0, BQ * NFP)
        fq = fc // NFP
        fpow = tl.full([BQ * NFP], P0, tl.int32) << (fc % NFP)
        jf = t0 + fq - fpow
        fok = (jf >= 0) & (jf < seqlen)
        fmask = fok[:, None] & dmask[None, :]
        kc = tl.load(kb + jf[:, None] * skt + d[None, :] * skd, mask=fmask, other=0.0)
        vc = tl.load(vb + jf[:, None] * svt + d[None, :] * svd, mask=fmask, other=0.0)
        return fq, fok, kc, vc

    @triton.jit
    def softmax_step(s, c, m, l, acc, vt, PREC: tl.constexpr):
        """One online-softmax step on raw scores ``s = q k^T [R, C]`` that are ``NEG`` outside the set: ``c`` is
        ``scale * log2(e)`` (> 0), so ``exp2(c s - c m)`` is the softmax numerator (one FMA and one ``exp2`` per
        score); running max ``m [R]`` (raw units), sum ``l [R]``, output ``acc [R, DP]``. A row with no pair yet
        subtracts 0 instead of its ``NEG`` maximum, so its ``exp2`` stays 0 without a second mask."""
        m_new = tl.maximum(m, tl.max(s, 1))
        corr = tl.exp2((m - m_new) * c)
        p = tl.exp2(s * c - tl.where(m_new > -1.0e29, m_new * c, 0.0)[:, None])
        l = l * corr + tl.sum(p, 1)
        acc = acc * corr[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision=PREC)
        return m_new, l, acc

    @triton.jit
    def softmax_update(s, mask, c, m, l, acc, vt, PREC: tl.constexpr):
        """:func:`softmax_step` of the raw scores ``s [R, C]`` restricted to ``mask [R, C]``."""
        return softmax_step(tl.where(mask, s, -1.0e30), c, m, l, acc, vt, PREC)

    @triton.jit
    def natural_lse(m, l, c, ok):
        """The natural logsumexp ``[R]`` of an online softmax of :func:`softmax_step` (``m`` raw, ``c`` its score
        factor): ``scale m + ln l``; 0 where not ``ok`` or no pair was seen."""
        has = ok & (l > 0)
        return tl.where(has, (m * c + tl.log2(tl.where(has, l, 1.0))) * 0.6931471805599453, 0.0)

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
    def union_has_sel(UROW, jb0, jb1, NWD, UR: tl.constexpr):
        """Scalar: a query of the tile selected one of the blocks ``jb0 .. jb1`` (at most 32 of them). ``UROW``
        points at the tile's ``UR`` rows of ``NWD`` union words (bit ``w % 32`` of word ``w // 32`` set when some real
        query of the row selected block ``w``; written by ``select_kernel``): ``2 UR`` scalar loads instead of a
        reduction over the tile's rows, which spans the warps (shared memory and two barriers on every tile)."""
        lo = tl.zeros([], dtype=tl.int32)
        hi = tl.zeros([], dtype=tl.int32)
        for u in tl.static_range(UR):
            lo = lo | tl.load(UROW + u * NWD + jb0 // 32, mask=jb0 // 32 < NWD, other=0)
            hi = hi | tl.load(UROW + u * NWD + jb1 // 32, mask=jb1 // 32 < NWD, other=0)
        both = (hi.to(tl.int64) << 32) | (lo.to(tl.int64) & 0xFFFFFFFF)
        span = (both >> (jb0 % 32)) & ((tl.full([], 1, tl.int64) << (jb1 - jb0 + 1)) - 1)
        return span != 0

    @triton.jit
    def tile_pair_flags(t0, t_hi, j0, j1, own_first, UROW, NWD, BLK: tl.constexpr, WIN: tl.constexpr,
                        NSINK: tl.constexpr, UR: tl.constexpr):
        """Scalars for one (query tile, key tile) pair, from the union words alone: can it hold an LTIS pair, an
        STIS pair? Queries ``t0..t_hi`` (real ones), keys ``j0..j1``, ``own_first`` the first key of the first
        query's own block, ``UROW``/``NWD`` the tile's ``UR`` rows of union words (:func:`union_has_sel`). Returns
        ``do_l``, ``do_s``, ``has_sel`` (a row of the tile selected one of its blocks) and ``own_tile`` (the tile
        can hold a pair of a query's own block). Needs no per-row load, so a key-side loop tests a query tile
        before it loads anything of it."""
        own_tile = (j1 >= own_first) & (j0 <= t_hi) & (t0 // BLK <= j1 // BLK)
        has_sel = union_has_sel(UROW, j0 // BLK, j1 // BLK, NWD, UR)
        do_l = own_tile | has_sel
        lo = t0 - j1
        hi = t_hi - j0
        do_s = (hi >= 0) & ((lo < WIN) | (j0 < NSINK) | pow2_in_range(lo, hi))
        return do_l, do_s, has_sel, own_tile

    @triton.jit
    def row_block_bits(selr, j0, j1, BLK: tl.constexpr):
        """``bits [R]``: bit ``i`` set when block ``j0 // BLK + i`` (of the key tile ``j0..j1``) is selected by the
        row's query (``selr [R, NP]``, -1 = none); and ``jb0 = j0 // BLK``."""
        jb0 = j0 // BLK
        inr = (selr >= jb0) & (selr <= j1 // BLK)
        return tl.sum(tl.where(inr, 1 << tl.where(inr, selr - jb0, 0), 0), 1), jb0

    @triton.jit
    def tile_flags(t0, t_hi, j0, j1, selr, own_first, UROW, NWD, BLK: tl.constexpr, WIN: tl.constexpr,
                   NSINK: tl.constexpr, UR: tl.constexpr):
        """:func:`tile_pair_flags` and :func:`row_block_bits` of one (query tile, key tile) pair: ``do_l, do_s, bits,
        jb0, has_sel, own_tile``."""
        bits, jb0 = row_block_bits(selr, j0, j1, BLK)
        do_l, do_s, has_sel, own_tile = tile_pair_flags(t0, t_hi, j0, j1, own_first, UROW, NWD, BLK, WIN, NSINK, UR)
        return do_l, do_s, bits, jb0, has_sel, own_tile

    @triton.jit
    def ltis_tile_scores(s, t, j, bits, jb0, own_tile, BLK: tl.constexpr, BN: tl.constexpr):
        """``s [R, BN]`` where the pair ``(t [R], j [BN])`` is in LTIS, ``NEG`` elsewhere: a block selected by the
        row's query (``bits``, see :func:`tile_flags`) or, on a tile that can hold one (``own_tile``), the own block
        (``j // b == t // b``, ``j <= t``). Rows past the length are not masked here: the kernels zero their q, do
        and gates, so their pairs add nothing (their selections are -1).

        Every caller's tile starts at a multiple of ``BN`` (``j = j0 + arange(BN)``). On a tile of whole blocks
        (``BN % b == 0``, so ``j0 = jb0 * b``) a column's bit is ``arange(BN) // b``: a constant per register, so the
        test is one shift of the row's ``bits`` broadcast as ``[R, 1]`` and one select per score. Written this way the
        compiler moves only the ``[R, 1]`` flags into the product's layout; a ``[R, BN]`` mask built from the row
        flags and a column test went through shared memory on every tile (scripts/dev/compile_check.py
        ``--sass-dir``, docs/triton_notes.md "v8")."""
        if BN % BLK == 0:
            shift = tl.arange(0, BN) // BLK
            out = tl.where(((bits[:, None] >> shift[None, :]) & 1) != 0, s, -1.0e30)
        elif BLK % BN == 0:  # the tile lies inside block jb0
            out = tl.where(((bits & 1) != 0)[:, None], s, -1.0e30)
        else:
            out = tl.where(((bits[:, None] >> (j // BLK - jb0)[None, :]) & 1) != 0, s, -1.0e30)
        if own_tile:
            own = ((t // BLK)[:, None] == (j // BLK)[None, :]) & (t[:, None] >= j[None, :])
            out = tl.where(own, s, out)
        return out

    @triton.jit
    def stis_tile_scores(s, t, j, WIN: tl.constexpr, NSINK: tl.constexpr):
        """``s [R, C]`` where the pair ``(t [R], j [C])`` is in STIS, ``NEG`` elsewhere: ``t - j`` in ``0..W-1`` or
        a power of two, or ``j`` a sink (``j < S``), with ``j <= t`` (rows past the length: as
        :func:`ltis_tile_scores`)."""
        delta = t[:, None] - j[None, :]
        # delta & (delta - 1) == 0 holds for 0 and the powers of two, never for a negative delta (its sign bit stays),
        # and the unsigned compare puts a negative delta past the window: so no separate delta >= 0 test
        if WIN >= 1:  # the offset 0 is in the window, so the power-of-two test may accept it
            near = (delta.to(tl.uint32, bitcast=True) < WIN) | ((delta & (delta - 1)) == 0)
        else:
            near = (delta != 0) & ((delta & (delta - 1)) == 0)
        if NSINK > 0:
            near = near | ((j < NSINK)[None, :] & (delta >= 0))
        return tl.where(near, s, -1.0e30)
