"""Forward kernels of the fused Triton backend: LTIS fine attention + STIS, gated (``out = α o_L + β o_S``).

Two strategies, one contract (the launcher in ``attention_triton.py`` picks one per call):

* ``fwd_tile_kernel`` (short histories): FlashAttention-style dense key tiles. One score tile feeds both
  online softmaxes; LTIS (own block, selected blocks) and STIS (window, powers of two, sinks) are masks
  computed in registers; key tiles with no pair of either set are skipped. Work grows with ``L²/tile``.
* ``fwd_gather_kernel`` (long histories): ``BQ`` queries x ``g`` heads per program; shared tiles for the own
  block and the STIS window, per-query key sets (selected blocks, far powers of two) gathered into one tile
  of ``BQ x keys`` columns and masked block-diagonally. Work is linear in ``L`` (plus ``log L``).

Both write ``out``, and for the backward ``o_L, o_S`` (input dtype) and the two logsumexps per row.
"""

from __future__ import annotations

from .triton_common import tl, triton

if triton is not None:
    from .triton_common import (
        far_stis_keys,
        load_gate,
        ltis_tile_scores,
        natural_lse,
        program_row,
        softmax_step,
        softmax_update,
        stis_tile_scores,
        tile_flags,
        tile_rows,
        window_keys,
    )

if triton is not None:

    @triton.jit
    def fwd_gather_kernel(Q, K, V, GATE, SEL, LENS, OUT, OL, OS, LSE, POS,
                    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sgb, sgh, sgt, sgc, spb, spt,
                    L, QN, H, G, scale,
                    GQ: tl.constexpr, HEAD_D: tl.constexpr, DP: tl.constexpr, BLK: tl.constexpr,
                    BP: tl.constexpr, NSEL: tl.constexpr, BQ: tl.constexpr, R: tl.constexpr,
                    KO: tl.constexpr, WIN: tl.constexpr, KN: tl.constexpr, P0: tl.constexpr,
                    NFP: tl.constexpr, NSINK: tl.constexpr, SP: tl.constexpr, SAVE: tl.constexpr,
                    PREC: tl.constexpr, HAS_POS: tl.constexpr):
        """Gathered forward of ``BQ`` consecutive queries x ``g`` heads (``R`` rows). With ``HAS_POS`` (the serving
        path, ``BQ = 1``) program ``i`` computes query row ``i`` of ``Q [B, H, QN, D]`` at position
        ``POS[b, i]``; rows of ``Q``, ``GATE``, ``SEL`` and the outputs are query rows, keys are positions."""
        pid_t = tl.program_id(0)
        bb, gam, seqlen = program_row(LENS, G, L)
        rows = tl.arange(0, R)
        qi = rows // GQ
        tq = pid_t * BQ + qi  # [R] query rows
        if HAS_POS:
            t0 = tl.load(POS + bb * spb + pid_t * spt).to(tl.int32)
        else:
            t0 = pid_t * BQ
        t = t0 + qi  # [R] positions
        h = gam * GQ + rows % GQ
        row_in = (rows < BQ * GQ) & (tq < QN)
        row_ok = row_in & (t < seqlen)
        d = tl.arange(0, DP)
        dmask = d < HEAD_D
        kb = K + bb * skb + gam * skh
        vb = V + bb * svb + gam * svh
        orow = ((bb * H + h) * QN + tq)  # [R] int64, row index into [B, H, QN, *] buffers
        out = tl.zeros([R, DP], dtype=tl.float32)
        scale2 = scale * 1.4426950408889634  # the softmaxes are exp2(scale2 * raw score - ...)
        if t0 < seqlen:
            q = tl.load(Q + bb * sqb + h[:, None] * sqh + tq[:, None] * sqt + d[None, :] * sqd,
                        mask=row_ok[:, None] & dmask[None, :], other=0.0)
            # ---------------- LTIS: own block + selected blocks, one softmax ----------------
            m_l = tl.full([R], -1.0e30, tl.float32)
            l_l = tl.zeros([R], dtype=tl.float32)
            acc_l = tl.zeros([R, DP], dtype=tl.float32)
            ks = (t0 // BLK) * BLK
            jo = ks + tl.arange(0, KO)
            kmask = (jo < seqlen)[:, None] & dmask[None, :]
            kt = tl.load(kb + jo[:, None] * skt + d[None, :] * skd, mask=kmask, other=0.0)
            vt = tl.load(vb + jo[:, None] * svt + d[None, :] * svd, mask=kmask, other=0.0)
            s = tl.dot(q, tl.trans(kt), input_precision=PREC)  # raw scores
            cst = (t // BLK) * BLK
            mask = row_ok[:, None] & (jo[None, :] >= cst[:, None]) & (jo[None, :] <= t[:, None])
            m_l, l_l, acc_l = softmax_update(s, mask, scale2, m_l, l_l, acc_l, vt, PREC)
            cols = tl.arange(0, BQ * BP)
            cq = cols // BP
            ci = cols % BP
            tc = pid_t * BQ + cq  # query rows of the gathered columns
            sel_base = SEL + (bb * G + gam) * QN * NSEL
            for k in range(NSEL):
                sv = tl.load(sel_base + tc * NSEL + k, mask=tc < QN, other=-1)
                jc = sv * BLK + ci
                cok = (sv >= 0) & (ci < BLK)
                cmask = cok[:, None] & dmask[None, :]
                kc = tl.load(kb + jc[:, None] * skt + d[None, :] * skd, mask=cmask, other=0.0)
                vc = tl.load(vb + jc[:, None] * svt + d[None, :] * svd, mask=cmask, other=0.0)
                s_k = tl.dot(q, tl.trans(kc), input_precision=PREC)  # raw scores
                mask_k = row_ok[:, None] & (qi[:, None] == cq[None, :]) & cok[None, :]
                m_l, l_l, acc_l = softmax_update(s_k, mask_k, scale2, m_l, l_l, acc_l, vc, PREC)
            # ---------------- STIS: window, far powers of two, sinks ----------------
            m_s = tl.full([R], -1.0e30, tl.float32)
            l_s = tl.zeros([R], dtype=tl.float32)
            acc_s = tl.zeros([R, DP], dtype=tl.float32)
            jn, kt, vt = window_keys(kb, vb, t0, seqlen, d, dmask, skt, skd, svt, svd, WIN, KN)
            s = tl.dot(q, tl.trans(kt), input_precision=PREC)  # raw scores
            delta = t[:, None] - jn[None, :]
            mask = row_ok[:, None] & (jn[None, :] >= 0) & (delta >= 0) & (delta < WIN)
            m_s, l_s, acc_s = softmax_update(s, mask, scale2, m_s, l_s, acc_s, vt, PREC)
            if NFP > 0:
                fq, fok, kc, vc = far_stis_keys(kb, vb, t0, seqlen, d, dmask, skt, skd, svt, svd, BQ, NFP, P0)
                s = tl.dot(q, tl.trans(kc), input_precision=PREC)  # raw scores
                mask = row_ok[:, None] & (qi[:, None] == fq[None, :]) & fok[None, :]
                m_s, l_s, acc_s = softmax_update(s, mask, scale2, m_s, l_s, acc_s, vc, PREC)
            if NSINK > 0:
                js = tl.arange(0, SP)
                smask = ((js < NSINK) & (js < seqlen))[:, None] & dmask[None, :]
                kt = tl.load(kb + js[:, None] * skt + d[None, :] * skd, mask=smask, other=0.0)
                vt = tl.load(vb + js[:, None] * svt + d[None, :] * svd, mask=smask, other=0.0)
                s = tl.dot(q, tl.trans(kt), input_precision=PREC)  # raw scores
                delta = t[:, None] - js[None, :]
                covered = (delta < WIN) | ((delta & (delta - 1)) == 0)
                mask = row_ok[:, None] & (js[None, :] < NSINK) & (delta >= 0) & (~covered)
                m_s, l_s, acc_s = softmax_update(s, mask, scale2, m_s, l_s, acc_s, vt, PREC)
            # ---------------- gate ----------------
            o_l = acc_l / tl.where(l_l > 0, l_l, 1.0)[:, None]
            o_s = acc_s / tl.where(l_s > 0, l_s, 1.0)[:, None]
            alpha, beta = load_gate(GATE, bb, h, tq, sgb, sgh, sgt, sgc, row_ok)
            out = alpha[:, None] * o_l + beta[:, None] * o_s
            out = tl.where(row_ok[:, None], out, 0.0)
            if SAVE:
                smask2 = row_in[:, None] & dmask[None, :]
                zero_pad = row_ok[:, None]
                tl.store(OL + orow[:, None] * HEAD_D + d[None, :],
                         tl.where(zero_pad, o_l, 0.0).to(OL.dtype.element_ty), mask=smask2)
                tl.store(OS + orow[:, None] * HEAD_D + d[None, :],
                         tl.where(zero_pad, o_s, 0.0).to(OS.dtype.element_ty), mask=smask2)
                lse_l = natural_lse(m_l, l_l, scale2, row_ok)
                lse_s = natural_lse(m_s, l_s, scale2, row_ok)
                tl.store(LSE + orow * 2, lse_l, mask=row_in)
                tl.store(LSE + orow * 2 + 1, lse_s, mask=row_in)
        # OUT has the strides of Q (launch_forward allocates it like the query: no transpose copy after)
        tl.store(OUT + bb * sqb + h[:, None] * sqh + tq[:, None] * sqt + d[None, :] * sqd,
                 out.to(OUT.dtype.element_ty), mask=row_in[:, None] & dmask[None, :])


    @triton.jit
    def fwd_tile_step(q, kb, vb, j0, seqlen, skt, skd, svt, svd, d, dmask, t, bits, jb0, own_tile, do_l, do_s,
                      m_l, l_l, acc_l, m_s, l_s, acc_s, scale2, BLK: tl.constexpr, WIN: tl.constexpr,
                      NSINK: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr):
        """One key tile ``j0 .. j0+BN-1`` of the dense-tile forward: ``s = q k^T [R, BN]`` feeds the LTIS and
        STIS online softmaxes (only the branches present in the tile, ``do_l`` / ``do_s``)."""
        j = j0 + tl.arange(0, BN)
        kmask = (j < seqlen)[:, None] & dmask[None, :]
        kt = tl.load(kb + j[:, None] * skt + d[None, :] * skd, mask=kmask, other=0.0)  # [BN, DP]
        vt = tl.load(vb + j[:, None] * svt + d[None, :] * svd, mask=kmask, other=0.0)  # [BN, DP]
        s = tl.dot(q, tl.trans(kt), input_precision=PREC)  # [R, BN] raw scores
        if do_l:
            s_l = ltis_tile_scores(s, t, j, bits, jb0, own_tile, BLK, BN)
            m_l, l_l, acc_l = softmax_step(s_l, scale2, m_l, l_l, acc_l, vt, PREC)
        if do_s:
            m_s, l_s, acc_s = softmax_step(stis_tile_scores(s, t, j, WIN, NSINK), scale2, m_s, l_s, acc_s, vt, PREC)
        return m_l, l_l, acc_l, m_s, l_s, acc_s

    @triton.jit
    def fwd_tile_kernel(Q, K, V, GATE, SEL, LENS, OUT, OL, OS, LSE, UNION,
                        sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sgb, sgh, sgt, sgc,
                        L, H, G, scale, NQT, NWD, UR: tl.constexpr,
                        GQ: tl.constexpr, GP: tl.constexpr, HEAD_D: tl.constexpr, DP: tl.constexpr,
                        BLK: tl.constexpr, NSEL: tl.constexpr, NP: tl.constexpr, WIN: tl.constexpr,
                        NSINK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, R: tl.constexpr,
                        SAVE: tl.constexpr, PREC: tl.constexpr):
        """Dense-tile forward: ``BM`` queries x ``GP`` heads (``R`` rows) against key tiles of ``BN`` keys; one
        score tile ``s = q k^T [R, BN]`` feeds both online softmaxes (LTIS and STIS masks built in registers);
        key tiles holding no pair of either set are skipped."""
        pid_t = tl.program_id(0)
        bb, gam, seqlen = program_row(LENS, G, L)
        t0 = pid_t * BM
        _, t, h, row_in, row_ok = tile_rows(t0, gam, seqlen, L, GQ, GP, R)  # [R] each
        d = tl.arange(0, DP)
        dmask = d < HEAD_D
        orow = (bb * H + h) * L + t  # [R] int64, row index into [B, H, L, *] buffers
        out = tl.zeros([R, DP], dtype=tl.float32)
        scale2 = scale * 1.4426950408889634  # the softmaxes are exp2(scale2 * raw score - ...)
        if t0 < seqlen:
            q = tl.load(Q + bb * sqb + h[:, None] * sqh + t[:, None] * sqt + d[None, :] * sqd,
                        mask=row_ok[:, None] & dmask[None, :], other=0.0)  # [R, DP]
            cols = tl.arange(0, NP)
            selr = tl.load(SEL + ((bb * G + gam) * L + t)[:, None] * NSEL + cols[None, :],
                           mask=row_ok[:, None] & (cols < NSEL)[None, :], other=-1)  # [R, NP]
            kb = K + bb * skb + gam * skh
            vb = V + bb * svb + gam * svh
            m_l = tl.full([R], -1.0e30, tl.float32)
            l_l = tl.zeros([R], dtype=tl.float32)
            acc_l = tl.zeros([R, DP], dtype=tl.float32)
            m_s = tl.full([R], -1.0e30, tl.float32)
            l_s = tl.zeros([R], dtype=tl.float32)
            acc_s = tl.zeros([R, DP], dtype=tl.float32)
            t_hi = tl.minimum(t0 + BM, seqlen) - 1
            own_first = (t0 // BLK) * BLK
            urow = UNION + ((bb * G + gam) * NQT + pid_t * UR) * NWD
            for j0 in range(0, t_hi + 1, BN):  # key tiles without a pair of either set are skipped
                do_l, do_s, bits, jb0, _sel_in_tile, own_tile = tile_flags(t0, t_hi, j0, j0 + BN - 1, selr,
                                                                           own_first, urow, NWD, BLK, WIN, NSINK, UR)
                if do_l | do_s:
                    m_l, l_l, acc_l, m_s, l_s, acc_s = fwd_tile_step(
                        q, kb, vb, j0, seqlen, skt, skd, svt, svd, d, dmask, t, bits, jb0, own_tile, do_l, do_s,
                        m_l, l_l, acc_l, m_s, l_s, acc_s, scale2, BLK, WIN, NSINK, BN, PREC)
            o_l = acc_l / tl.where(l_l > 0, l_l, 1.0)[:, None]
            o_s = acc_s / tl.where(l_s > 0, l_s, 1.0)[:, None]
            alpha, beta = load_gate(GATE, bb, h, t, sgb, sgh, sgt, sgc, row_ok)
            out = tl.where(row_ok[:, None], alpha[:, None] * o_l + beta[:, None] * o_s, 0.0)
            if SAVE:
                smask = row_in[:, None] & dmask[None, :]
                tl.store(OL + orow[:, None] * HEAD_D + d[None, :],
                         tl.where(row_ok[:, None], o_l, 0.0).to(OL.dtype.element_ty), mask=smask)
                tl.store(OS + orow[:, None] * HEAD_D + d[None, :],
                         tl.where(row_ok[:, None], o_s, 0.0).to(OS.dtype.element_ty), mask=smask)
                lse_l = natural_lse(m_l, l_l, scale2, row_ok)
                lse_s = natural_lse(m_s, l_s, scale2, row_ok)
                tl.store(LSE + orow * 2, lse_l, mask=row_in)
                tl.store(LSE + orow * 2 + 1, lse_s, mask=row_in)
        # OUT has the strides of Q (launch_forward allocates it like the query: no transpose copy after)
        tl.store(OUT + bb * sqb + h[:, None] * sqh + t[:, None] * sqt + d[None, :] * sqd,
                 out.to(OUT.dtype.element_ty), mask=row_in[:, None] & dmask[None, :])
