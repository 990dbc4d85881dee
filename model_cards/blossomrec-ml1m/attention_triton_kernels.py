"""Triton kernels of the fused BlossomRec attention backend (see ``attention_triton.py`` for the API).

Everything here follows docs/MODEL.md on *compacted* histories (real items at positions ``0..len-1``).
Notation: ``g`` query heads per kv head, ``b`` block size, ``n`` selected blocks, ``W`` STIS window,
``S`` sinks, ``M = L // b`` compression windows, ``τ`` the softmax scale.

Kernels (one program = one batch row ``bb`` and one kv head ``γ``, plus a tile index):

* ``_select_kernel``     LTIS scores ``z̄ = τ<mean_h q, k~>`` tile by tile over windows, an online
  logsumexp and a running top-n merge (ties -> larger w). Writes ``sel [B,G,L,n]`` (int32, -1 = none),
  ``p`` of each selected window and the logsumexp of ``z̄`` per query. No ``L x M`` tensor.
* ``_fwd_kernel``        the fine attention of a tile of ``BQ`` queries x the ``g`` heads of the group
  (rows ``(t, h)``): LTIS = own block + the n selected blocks (one online softmax), STIS = window + far
  powers of two + sinks (a second online softmax); ``out = α o_L + β o_S``. Shared key tiles go through
  ``tl.dot``; per-query key sets (selected blocks, far offsets) are gathered into one tile of
  ``BQ x keys`` columns and masked block-diagonally, so every product is a tensor-core dot.
* backward: ``_bwd_q_kernel`` (dq, d gate, and the straight-through ``dp`` per selected block),
  ``_select_bwd_q_kernel`` (the compressor path into dq), ``_select_bwd_w_kernel`` (d compressed_key),
  ``_bwd_kv_kernel`` (dk, dv of own block + STIS offsets, key-major, no atomics),
  ``_bwd_sel_kv_kernel`` (dk, dv of selected blocks through an inverse index: per block the list of
  queries that selected it; no atomics), ``_bwd_sink_kv_kernel`` (sinks, fp32 atomics).

Softmax statistics (logsumexp per row and branch) are stored; probabilities are recomputed.
Accumulation is fp32 throughout. ``import triton`` is guarded so that this file imports without triton.
"""

from __future__ import annotations

import os

try:  # guarded: the model folder must import where triton is absent
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only without triton
    triton = None
    tl = None

#: Interpreter mode this module was imported under (triton decides it when the kernels are decorated).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

NEG = -1.0e30  # "minus infinity" that keeps exp() and differences finite


def next_pow2(x: int) -> int:
    x = int(x)
    return 1 if x <= 1 else 1 << (x - 1).bit_length()


if triton is not None:

    # ----------------------------------------------------------------------------------------------
    # small helpers
    # ----------------------------------------------------------------------------------------------
    @triton.jit
    def _softmax_update(s, mask, m, l, acc, vt, PREC: tl.constexpr):
        """One online-softmax step over a masked score tile ``s [R, C]`` with values ``vt [C, DP]``."""
        s = tl.where(mask, s, -1.0e30)
        m_new = tl.maximum(m, tl.max(s, 1))
        corr = tl.exp(m - m_new)
        p = tl.exp(tl.where(mask, s - m_new[:, None], -1.0e30))
        l = l * corr + tl.sum(p, 1)
        acc = acc * corr[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision=PREC)
        return m_new, l, acc

    @triton.jit
    def _bwd_q_part(q, do, kt, vt, mask, lse, gsc, dg, dq, scale, PREC: tl.constexpr):
        """Query-side backward over one key tile; returns updated dq, dS (logit grads) and raw logits."""
        s = tl.dot(q, tl.trans(kt), input_precision=PREC) * scale
        p = tl.exp(tl.where(mask, s - lse[:, None], -1.0e30))
        dpr = tl.dot(do, tl.trans(vt), input_precision=PREC)
        ds = gsc[:, None] * p * (dpr - dg[:, None])
        dq += tl.dot(ds.to(kt.dtype), kt, input_precision=PREC)
        return dq, ds, s

    @triton.jit
    def _group_mean_query(Q, bb, gam, t, tmask, d, dmask, sqb, sqh, sqt, sqd,
                          GQ: tl.constexpr, TQ: tl.constexpr, DP: tl.constexpr):
        """fp32 mean over the g query heads of group ``gam``: ``[TQ, DP]``."""
        qm = tl.zeros([TQ, DP], dtype=tl.float32)
        for hh in tl.static_range(GQ):
            ptr = Q + bb * sqb + (gam * GQ + hh) * sqh + t[:, None] * sqt + d[None, :] * sqd
            qm += tl.load(ptr, mask=tmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
        return qm / GQ

    # ----------------------------------------------------------------------------------------------
    # LTIS selection (forward)
    # ----------------------------------------------------------------------------------------------
    @triton.jit
    def _select_kernel(Q, CK, LENS, SEL_IN, SEL, PSEL, LSEZ,
                       sqb, sqh, sqt, sqd, scb, sch, scw, scd,
                       L, M, G, scale,
                       GQ: tl.constexpr, HEAD_D: tl.constexpr, DP: tl.constexpr, BLK: tl.constexpr,
                       NSEL: tl.constexpr, NP: tl.constexpr, TQ: tl.constexpr, BW: tl.constexpr,
                       HAS_SEL: tl.constexpr):
        pid_t = tl.program_id(0)
        pid_bg = tl.program_id(1)
        bb = (pid_bg // G).to(tl.int64)
        gam = pid_bg % G
        seqlen = tl.load(LENS + bb)
        t0 = pid_t * TQ
        t = t0 + tl.arange(0, TQ)
        tin = t < L
        tok = t < seqlen
        d = tl.arange(0, DP)
        dmask = d < HEAD_D
        cols = tl.arange(0, NP)
        colok = cols < NSEL
        row_base = ((bb * G + gam) * L + t) * NSEL  # [TQ] int64
        qm = _group_mean_query(Q, bb, gam, t, tok, d, dmask, sqb, sqh, sqt, sqd, GQ, TQ, DP)
        tlim = t // BLK  # window w is eligible for t iff w < t // b (w*b + b - 1 < t)
        tmax = tl.minimum(t0 + TQ, seqlen) - 1
        w_end = tl.minimum(M, tl.maximum(tmax, 0) // BLK)
        m = tl.full([TQ], -1.0e30, tl.float32)
        ssum = tl.zeros([TQ], dtype=tl.float32)
        av = tl.full([TQ, NP], float("-inf"), tl.float32)
        ai = tl.full([TQ, NP], -1, tl.int32)
        if HAS_SEL:
            ai = tl.load(SEL_IN + row_base[:, None] + cols[None, :], mask=tin[:, None] & colok[None, :], other=-1)
            av = tl.zeros([TQ, NP], dtype=tl.float32)
        ck_base = CK + bb * scb + gam * sch
        for w0 in range(0, w_end, BW):
            w = w0 + tl.arange(0, BW)
            ck = tl.load(ck_base + w[:, None] * scw + d[None, :] * scd,
                         mask=(w < M)[:, None] & dmask[None, :], other=0.0).to(tl.float32)
            z = tl.dot(qm, tl.trans(ck), input_precision="ieee") * scale  # [TQ, BW]
            elig = tok[:, None] & (w[None, :] < tlim[:, None]) & (w < M)[None, :]
            zm = tl.where(elig, z, -1.0e30)
            m_new = tl.maximum(m, tl.max(zm, 1))
            ssum = ssum * tl.exp(m - m_new) + tl.sum(tl.exp(tl.where(elig, z - m_new[:, None], -1.0e30)), 1)
            m = m_new
            if HAS_SEL:
                for k in tl.static_range(NSEL):
                    gk = tl.sum(tl.where(cols[None, :] == k, ai, 0), 1)
                    zk = tl.sum(tl.where(w[None, :] == gk[:, None], z, 0.0), 1)
                    av = tl.where(cols[None, :] == k, av + zk[:, None], av)
            else:
                # top-n of this tile, sorted by decreasing score, ties -> larger w
                zt = tl.where(elig, z, float("-inf"))
                bv = tl.full([TQ, NP], float("-inf"), tl.float32)
                bi = tl.full([TQ, NP], -1, tl.int32)
                for k in tl.static_range(NSEL):
                    mx = tl.max(zt, 1)
                    am = tl.max(tl.where(zt == mx[:, None], w[None, :], -1), 1)
                    bv = tl.where(cols[None, :] == k, mx[:, None], bv)
                    bi = tl.where(cols[None, :] == k, am[:, None], bi)
                    zt = tl.where(w[None, :] == am[:, None], float("-inf"), zt)
                # merge the running list A (older, smaller w) with B (this tile): B wins ties
                jok = (cols < NSEL)[None, None, :]
                cnt_a = tl.sum(((bv[:, None, :] >= av[:, :, None]) & jok).to(tl.int32), 2)
                cnt_b = tl.sum(((av[:, None, :] > bv[:, :, None]) & jok).to(tl.int32), 2)
                pos_a = cols[None, :] + cnt_a
                pos_b = cols[None, :] + cnt_b
                nv = tl.full([TQ, NP], float("-inf"), tl.float32)
                ni = tl.full([TQ, NP], -1, tl.int32)
                for k in tl.static_range(NSEL):
                    va = tl.max(tl.where(pos_a == k, av, float("-inf")), 1)
                    vb = tl.max(tl.where(pos_b == k, bv, float("-inf")), 1)
                    ia = tl.max(tl.where(pos_a == k, ai, -1), 1)
                    ib = tl.max(tl.where(pos_b == k, bi, -1), 1)
                    nv = tl.where(cols[None, :] == k, tl.maximum(va, vb)[:, None], nv)
                    ni = tl.where(cols[None, :] == k, tl.maximum(ia, ib)[:, None], ni)
                av = nv
                ai = ni
        has = ssum > 0
        lse = tl.where(has, m + tl.log(tl.where(has, ssum, 1.0)), 0.0)
        if HAS_SEL:
            valid = (ai >= 0) & (ai < tlim[:, None]) & (ai < M) & tok[:, None]
            sel_out = ai
        else:
            valid = (av > float("-inf")) & (ai >= 0)
            sel_out = tl.where(valid, ai, -1)
        p = tl.exp(tl.where(valid, av - lse[:, None], -1.0e30))
        smask = tin[:, None] & colok[None, :]
        tl.store(SEL + row_base[:, None] + cols[None, :], sel_out, mask=smask)
        tl.store(PSEL + row_base[:, None] + cols[None, :], p, mask=smask)
        tl.store(LSEZ + (bb * G + gam) * L + t, lse, mask=tin)

    # ----------------------------------------------------------------------------------------------
    # fine attention (forward)
    # ----------------------------------------------------------------------------------------------
    @triton.jit
    def _fwd_kernel(Q, K, V, GATE, SEL, LENS, OUT, OL, OS, LSE,
                    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sgb, sgh, sgt, sgc,
                    L, H, G, scale,
                    GQ: tl.constexpr, HEAD_D: tl.constexpr, DP: tl.constexpr, BLK: tl.constexpr,
                    BP: tl.constexpr, NSEL: tl.constexpr, BQ: tl.constexpr, R: tl.constexpr,
                    KO: tl.constexpr, WIN: tl.constexpr, KN: tl.constexpr, P0: tl.constexpr,
                    NFP: tl.constexpr, NSINK: tl.constexpr, SP: tl.constexpr, SAVE: tl.constexpr,
                    PREC: tl.constexpr):
        pid_t = tl.program_id(0)
        pid_bg = tl.program_id(1)
        bb = (pid_bg // G).to(tl.int64)
        gam = pid_bg % G
        seqlen = tl.load(LENS + bb)
        t0 = pid_t * BQ
        rows = tl.arange(0, R)
        qi = rows // GQ
        t = t0 + qi
        h = gam * GQ + rows % GQ
        row_in = (rows < BQ * GQ) & (t < L)
        row_ok = row_in & (t < seqlen)
        d = tl.arange(0, DP)
        dmask = d < HEAD_D
        kb = K + bb * skb + gam * skh
        vb = V + bb * svb + gam * svh
        orow = ((bb * H + h) * L + t)  # [R] int64, row index into [B, H, L, *] buffers
        out = tl.zeros([R, DP], dtype=tl.float32)
        if t0 < seqlen:
            q = tl.load(Q + bb * sqb + h[:, None] * sqh + t[:, None] * sqt + d[None, :] * sqd,
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
            s = tl.dot(q, tl.trans(kt), input_precision=PREC) * scale
            cst = (t // BLK) * BLK
            mask = row_ok[:, None] & (jo[None, :] >= cst[:, None]) & (jo[None, :] <= t[:, None])
            m_l, l_l, acc_l = _softmax_update(s, mask, m_l, l_l, acc_l, vt, PREC)
            cols = tl.arange(0, BQ * BP)
            cq = cols // BP
            ci = cols % BP
            tc = t0 + cq
            sel_base = SEL + (bb * G + gam) * L * NSEL
            for k in range(NSEL):
                sv = tl.load(sel_base + tc * NSEL + k, mask=tc < L, other=-1)
                jc = sv * BLK + ci
                cok = (sv >= 0) & (ci < BLK)
                cmask = cok[:, None] & dmask[None, :]
                kc = tl.load(kb + jc[:, None] * skt + d[None, :] * skd, mask=cmask, other=0.0)
                vc = tl.load(vb + jc[:, None] * svt + d[None, :] * svd, mask=cmask, other=0.0)
                s_k = tl.dot(q, tl.trans(kc), input_precision=PREC) * scale
                mask_k = row_ok[:, None] & (qi[:, None] == cq[None, :]) & cok[None, :]
                m_l, l_l, acc_l = _softmax_update(s_k, mask_k, m_l, l_l, acc_l, vc, PREC)
            # ---------------- STIS: window, far powers of two, sinks ----------------
            m_s = tl.full([R], -1.0e30, tl.float32)
            l_s = tl.zeros([R], dtype=tl.float32)
            acc_s = tl.zeros([R, DP], dtype=tl.float32)
            jn = t0 - (WIN - 1) + tl.arange(0, KN)
            nmask = ((jn >= 0) & (jn < seqlen))[:, None] & dmask[None, :]
            kt = tl.load(kb + jn[:, None] * skt + d[None, :] * skd, mask=nmask, other=0.0)
            vt = tl.load(vb + jn[:, None] * svt + d[None, :] * svd, mask=nmask, other=0.0)
            s = tl.dot(q, tl.trans(kt), input_precision=PREC) * scale
            delta = t[:, None] - jn[None, :]
            mask = row_ok[:, None] & (jn[None, :] >= 0) & (delta >= 0) & (delta < WIN)
            m_s, l_s, acc_s = _softmax_update(s, mask, m_s, l_s, acc_s, vt, PREC)
            if NFP > 0:
                fc = tl.arange(0, BQ * NFP)
                fq = fc // NFP
                fpow = tl.full([BQ * NFP], P0, tl.int32) << (fc % NFP)
                jf = t0 + fq - fpow
                fok = (jf >= 0) & (jf < seqlen)
                fmask = fok[:, None] & dmask[None, :]
                kc = tl.load(kb + jf[:, None] * skt + d[None, :] * skd, mask=fmask, other=0.0)
                vc = tl.load(vb + jf[:, None] * svt + d[None, :] * svd, mask=fmask, other=0.0)
                s = tl.dot(q, tl.trans(kc), input_precision=PREC) * scale
                mask = row_ok[:, None] & (qi[:, None] == fq[None, :]) & fok[None, :]
                m_s, l_s, acc_s = _softmax_update(s, mask, m_s, l_s, acc_s, vc, PREC)
            if NSINK > 0:
                js = tl.arange(0, SP)
                smask = ((js < NSINK) & (js < seqlen))[:, None] & dmask[None, :]
                kt = tl.load(kb + js[:, None] * skt + d[None, :] * skd, mask=smask, other=0.0)
                vt = tl.load(vb + js[:, None] * svt + d[None, :] * svd, mask=smask, other=0.0)
                s = tl.dot(q, tl.trans(kt), input_precision=PREC) * scale
                delta = t[:, None] - js[None, :]
                covered = (delta < WIN) | ((delta & (delta - 1)) == 0)
                mask = row_ok[:, None] & (js[None, :] < NSINK) & (delta >= 0) & (~covered)
                m_s, l_s, acc_s = _softmax_update(s, mask, m_s, l_s, acc_s, vt, PREC)
            # ---------------- gate ----------------
            o_l = acc_l / tl.where(l_l > 0, l_l, 1.0)[:, None]
            o_s = acc_s / tl.where(l_s > 0, l_s, 1.0)[:, None]
            gptr = GATE + bb * sgb + h * sgh + t * sgt
            alpha = tl.load(gptr, mask=row_ok, other=0.0).to(tl.float32)
            beta = tl.load(gptr + sgc, mask=row_ok, other=0.0).to(tl.float32)
            out = alpha[:, None] * o_l + beta[:, None] * o_s
            out = tl.where(row_ok[:, None], out, 0.0)
            if SAVE:
                smask2 = row_in[:, None] & dmask[None, :]
                zero_pad = row_ok[:, None]
                tl.store(OL + orow[:, None] * HEAD_D + d[None, :],
                         tl.where(zero_pad, o_l, 0.0).to(OL.dtype.element_ty), mask=smask2)
                tl.store(OS + orow[:, None] * HEAD_D + d[None, :],
                         tl.where(zero_pad, o_s, 0.0).to(OS.dtype.element_ty), mask=smask2)
                lse_l = tl.where(row_ok & (l_l > 0), m_l + tl.log(tl.where(l_l > 0, l_l, 1.0)), 0.0)
                lse_s = tl.where(row_ok & (l_s > 0), m_s + tl.log(tl.where(l_s > 0, l_s, 1.0)), 0.0)
                tl.store(LSE + orow * 2, lse_l, mask=row_in)
                tl.store(LSE + orow * 2 + 1, lse_s, mask=row_in)
        tl.store(OUT + orow[:, None] * HEAD_D + d[None, :], out.to(OUT.dtype.element_ty),
                 mask=row_in[:, None] & dmask[None, :])

    # ----------------------------------------------------------------------------------------------
    # backward, query side: dq, d gate, straight-through dp
    # ----------------------------------------------------------------------------------------------
    @triton.jit
    def _bwd_q_kernel(Q, K, V, GATE, SEL, LENS, DO, OL, OS, LSE, DQ, DGATE, DPS,
                      sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sgb, sgh, sgt, sgc,
                      sdb, sdh, sdt, sdd,
                      L, H, G, scale,
                      GQ: tl.constexpr, HEAD_D: tl.constexpr, DP: tl.constexpr, BLK: tl.constexpr,
                      BP: tl.constexpr, NSEL: tl.constexpr, NP: tl.constexpr, BQ: tl.constexpr,
                      BQP: tl.constexpr, R: tl.constexpr, KO: tl.constexpr, WIN: tl.constexpr,
                      KN: tl.constexpr, P0: tl.constexpr, NFP: tl.constexpr, NSINK: tl.constexpr,
                      SP: tl.constexpr, ST: tl.constexpr, PREC: tl.constexpr):
        pid_t = tl.program_id(0)
        pid_bg = tl.program_id(1)
        bb = (pid_bg // G).to(tl.int64)
        gam = pid_bg % G
        seqlen = tl.load(LENS + bb)
        t0 = pid_t * BQ
        rows = tl.arange(0, R)
        qi = rows // GQ
        t = t0 + qi
        h = gam * GQ + rows % GQ
        row_in = (rows < BQ * GQ) & (t < L)
        row_ok = row_in & (t < seqlen)
        d = tl.arange(0, DP)
        dmask = d < HEAD_D
        kb = K + bb * skb + gam * skh
        vb = V + bb * svb + gam * svh
        orow = ((bb * H + h) * L + t)
        dq = tl.zeros([R, DP], dtype=tl.float32)
        if t0 < seqlen:
            rmask = row_ok[:, None] & dmask[None, :]
            q = tl.load(Q + bb * sqb + h[:, None] * sqh + t[:, None] * sqt + d[None, :] * sqd,
                        mask=rmask, other=0.0)
            do = tl.load(DO + bb * sdb + h[:, None] * sdh + t[:, None] * sdt + d[None, :] * sdd,
                         mask=rmask, other=0.0)
            o_l = tl.load(OL + orow[:, None] * HEAD_D + d[None, :], mask=rmask, other=0.0).to(tl.float32)
            o_s = tl.load(OS + orow[:, None] * HEAD_D + d[None, :], mask=rmask, other=0.0).to(tl.float32)
            da = tl.sum(do.to(tl.float32) * o_l, 1)
            db = tl.sum(do.to(tl.float32) * o_s, 1)
            do = do.to(q.dtype)
            gptr = GATE + bb * sgb + h * sgh + t * sgt
            alpha = tl.load(gptr, mask=row_ok, other=0.0).to(tl.float32)
            beta = tl.load(gptr + sgc, mask=row_ok, other=0.0).to(tl.float32)
            lse_l = tl.load(LSE + orow * 2, mask=row_ok, other=0.0)
            lse_s = tl.load(LSE + orow * 2 + 1, mask=row_ok, other=0.0)
            tl.store(DGATE + orow * 2, da, mask=row_in)
            tl.store(DGATE + orow * 2 + 1, db, mask=row_in)
            # ---------------- LTIS own block ----------------
            ks = (t0 // BLK) * BLK
            jo = ks + tl.arange(0, KO)
            kmask = (jo < seqlen)[:, None] & dmask[None, :]
            kt = tl.load(kb + jo[:, None] * skt + d[None, :] * skd, mask=kmask, other=0.0)
            vt = tl.load(vb + jo[:, None] * svt + d[None, :] * svd, mask=kmask, other=0.0)
            cst = (t // BLK) * BLK
            mask = row_ok[:, None] & (jo[None, :] >= cst[:, None]) & (jo[None, :] <= t[:, None])
            dq, ds, s = _bwd_q_part(q, do, kt, vt, mask, lse_l, alpha, da, dq, scale, PREC)
            # ---------------- LTIS selected blocks ----------------
            cols = tl.arange(0, BQ * BP)
            cq = cols // BP
            ci = cols % BP
            tc = t0 + cq
            sel_base = SEL + (bb * G + gam) * L * NSEL
            pcols = tl.arange(0, NP)
            dp_row = tl.zeros([R, NP], dtype=tl.float32)
            for k in range(NSEL):
                sv = tl.load(sel_base + tc * NSEL + k, mask=tc < L, other=-1)
                jc = sv * BLK + ci
                cok = (sv >= 0) & (ci < BLK)
                cmask = cok[:, None] & dmask[None, :]
                kc = tl.load(kb + jc[:, None] * skt + d[None, :] * skd, mask=cmask, other=0.0)
                vc = tl.load(vb + jc[:, None] * svt + d[None, :] * svd, mask=cmask, other=0.0)
                mask_k = row_ok[:, None] & (qi[:, None] == cq[None, :]) & cok[None, :]
                dq, ds_k, s_k = _bwd_q_part(q, do, kc, vc, mask_k, lse_l, alpha, da, dq, scale, PREC)
                if ST:
                    u = tl.sum(ds_k * s_k, 1)
                    dp_row = tl.where(pcols[None, :] == k, u[:, None], dp_row)
            if ST:
                qidx = tl.arange(0, BQP)
                pick = (qi[None, :, None] == qidx[:, None, None]) & row_ok[None, :, None]
                dpq = tl.sum(tl.where(pick, dp_row[None, :, :], 0.0), 1)  # [BQP, NP]
                tq = t0 + qidx
                dmask2 = ((qidx < BQ) & (tq < L))[:, None] & (pcols < NSEL)[None, :]
                tl.store(DPS + ((bb * G + gam) * L + tq[:, None]) * NSEL + pcols[None, :], dpq, mask=dmask2)
            # ---------------- STIS ----------------
            jn = t0 - (WIN - 1) + tl.arange(0, KN)
            nmask = ((jn >= 0) & (jn < seqlen))[:, None] & dmask[None, :]
            kt = tl.load(kb + jn[:, None] * skt + d[None, :] * skd, mask=nmask, other=0.0)
            vt = tl.load(vb + jn[:, None] * svt + d[None, :] * svd, mask=nmask, other=0.0)
            delta = t[:, None] - jn[None, :]
            mask = row_ok[:, None] & (jn[None, :] >= 0) & (delta >= 0) & (delta < WIN)
            dq, ds, s = _bwd_q_part(q, do, kt, vt, mask, lse_s, beta, db, dq, scale, PREC)
            if NFP > 0:
                fc = tl.arange(0, BQ * NFP)
                fq = fc // NFP
                fpow = tl.full([BQ * NFP], P0, tl.int32) << (fc % NFP)
                jf = t0 + fq - fpow
                fok = (jf >= 0) & (jf < seqlen)
                fmask = fok[:, None] & dmask[None, :]
                kc = tl.load(kb + jf[:, None] * skt + d[None, :] * skd, mask=fmask, other=0.0)
                vc = tl.load(vb + jf[:, None] * svt + d[None, :] * svd, mask=fmask, other=0.0)
                mask = row_ok[:, None] & (qi[:, None] == fq[None, :]) & fok[None, :]
                dq, ds, s = _bwd_q_part(q, do, kc, vc, mask, lse_s, beta, db, dq, scale, PREC)
            if NSINK > 0:
                js = tl.arange(0, SP)
                smask = ((js < NSINK) & (js < seqlen))[:, None] & dmask[None, :]
                kt = tl.load(kb + js[:, None] * skt + d[None, :] * skd, mask=smask, other=0.0)
                vt = tl.load(vb + js[:, None] * svt + d[None, :] * svd, mask=smask, other=0.0)
                delta = t[:, None] - js[None, :]
                covered = (delta < WIN) | ((delta & (delta - 1)) == 0)
                mask = row_ok[:, None] & (js[None, :] < NSINK) & (delta >= 0) & (~covered)
                dq, ds, s = _bwd_q_part(q, do, kt, vt, mask, lse_s, beta, db, dq, scale, PREC)
        tl.store(DQ + orow[:, None] * HEAD_D + d[None, :], (dq * scale).to(DQ.dtype.element_ty),
                 mask=row_in[:, None] & dmask[None, :])

    # ----------------------------------------------------------------------------------------------
    # backward of the selection (straight-through): into dq and into d compressed_key
    # ----------------------------------------------------------------------------------------------
    @triton.jit
    def _select_bwd_q_kernel(Q, CK, LENS, SEL, PSEL, DPS, LSEZ, DQ,
                             sqb, sqh, sqt, sqd, scb, sch, scw, scd,
                             L, M, H, G, scale,
                             GQ: tl.constexpr, HEAD_D: tl.constexpr, DP: tl.constexpr, BLK: tl.constexpr,
                             NSEL: tl.constexpr, TQ: tl.constexpr, BW: tl.constexpr):
        pid_t = tl.program_id(0)
        pid_bg = tl.program_id(1)
        bb = (pid_bg // G).to(tl.int64)
        gam = pid_bg % G
        seqlen = tl.load(LENS + bb)
        t0 = pid_t * TQ
        if t0 < seqlen:
            t = t0 + tl.arange(0, TQ)
            tok = t < seqlen
            d = tl.arange(0, DP)
            dmask = d < HEAD_D
            qm = _group_mean_query(Q, bb, gam, t, tok, d, dmask, sqb, sqh, sqt, sqd, GQ, TQ, DP)
            tlim = t // BLK
            tmax = tl.minimum(t0 + TQ, seqlen) - 1
            w_end = tl.minimum(M, tmax // BLK)
            row_base = ((bb * G + gam) * L + t) * NSEL
            lse = tl.load(LSEZ + (bb * G + gam) * L + t, mask=tok, other=0.0)
            ck_base = CK + bb * scb + gam * sch
            c_sum = tl.zeros([TQ], dtype=tl.float32)
            sk = tl.zeros([TQ, DP], dtype=tl.float32)
            for k in tl.static_range(NSEL):
                sk_ = tl.load(SEL + row_base + k, mask=tok, other=-1)
                pdp = tl.load(PSEL + row_base + k, mask=tok, other=0.0) * tl.load(DPS + row_base + k, mask=tok,
                                                                                    other=0.0)
                c_sum += pdp
                ckr = tl.load(ck_base + sk_[:, None] * scw + d[None, :] * scd,
                              mask=(sk_ >= 0)[:, None] & dmask[None, :], other=0.0).to(tl.float32)
                sk += pdp[:, None] * ckr
            pk = tl.zeros([TQ, DP], dtype=tl.float32)
            for w0 in range(0, w_end, BW):
                w = w0 + tl.arange(0, BW)
                ck = tl.load(ck_base + w[:, None] * scw + d[None, :] * scd,
                             mask=(w < M)[:, None] & dmask[None, :], other=0.0).to(tl.float32)
                z = tl.dot(qm, tl.trans(ck), input_precision="ieee") * scale
                elig = tok[:, None] & (w[None, :] < tlim[:, None]) & (w < M)[None, :]
                p = tl.exp(tl.where(elig, z - lse[:, None], -1.0e30))
                pk += tl.dot(p, ck, input_precision="ieee")
            dqm = (sk - c_sum[:, None] * pk) * (scale / GQ)
            for hh in tl.static_range(GQ):
                ptr = DQ + ((bb * H + gam * GQ + hh) * L + t[:, None]) * HEAD_D + d[None, :]
                msk = tok[:, None] & dmask[None, :]
                cur = tl.load(ptr, mask=msk, other=0.0).to(tl.float32)
                tl.store(ptr, (cur + dqm).to(DQ.dtype.element_ty), mask=msk)

    @triton.jit
    def _select_bwd_w_kernel(Q, CK, LENS, SEL, PSEL, DPS, LSEZ, DCK,
                             sqb, sqh, sqt, sqd, scb, sch, scw, scd,
                             L, M, G, scale,
                             GQ: tl.constexpr, HEAD_D: tl.constexpr, DP: tl.constexpr, BLK: tl.constexpr,
                             NSEL: tl.constexpr, TQ: tl.constexpr, BW: tl.constexpr):
        pid_w = tl.program_id(0)
        pid_bg = tl.program_id(1)
        bb = (pid_bg // G).to(tl.int64)
        gam = pid_bg % G
        seqlen = tl.load(LENS + bb)
        w0 = pid_w * BW
        w = w0 + tl.arange(0, BW)
        wok = w < M
        d = tl.arange(0, DP)
        dmask = d < HEAD_D
        ck_base = CK + bb * scb + gam * sch
        ck = tl.load(ck_base + w[:, None] * scw + d[None, :] * scd, mask=wok[:, None] & dmask[None, :],
                     other=0.0).to(tl.float32)
        dck = tl.zeros([BW, DP], dtype=tl.float32)
        tstart = ((w0 + 1) * BLK // TQ) * TQ
        for tq0 in range(tstart, seqlen, TQ):
            t = tq0 + tl.arange(0, TQ)
            tok = t < seqlen
            qm = _group_mean_query(Q, bb, gam, t, tok, d, dmask, sqb, sqh, sqt, sqd, GQ, TQ, DP)
            row_base = ((bb * G + gam) * L + t) * NSEL
            lse = tl.load(LSEZ + (bb * G + gam) * L + t, mask=tok, other=0.0)
            z = tl.dot(qm, tl.trans(ck), input_precision="ieee") * scale
            elig = tok[:, None] & (w[None, :] < (t // BLK)[:, None]) & wok[None, :]
            p = tl.exp(tl.where(elig, z - lse[:, None], -1.0e30))
            c_sum = tl.zeros([TQ], dtype=tl.float32)
            dz = tl.zeros([TQ, BW], dtype=tl.float32)
            for k in tl.static_range(NSEL):
                sk_ = tl.load(SEL + row_base + k, mask=tok, other=-1)
                pdp = tl.load(PSEL + row_base + k, mask=tok, other=0.0) * tl.load(DPS + row_base + k, mask=tok,
                                                                                    other=0.0)
                c_sum += pdp
                dz += tl.where(w[None, :] == sk_[:, None], pdp[:, None], 0.0)
            dz = dz - p * c_sum[:, None]
            dck += tl.dot(tl.trans(dz), qm, input_precision="ieee")
        tl.store(DCK + ((bb * G + gam) * M + w[:, None]) * HEAD_D + d[None, :],
                 (dck * scale).to(DCK.dtype.element_ty), mask=wok[:, None] & dmask[None, :])

    # ----------------------------------------------------------------------------------------------
    # backward, key side: dk, dv
    # ----------------------------------------------------------------------------------------------
    @triton.jit
    def _kv_chunk(Q, DO, GATE, LSE, DGATE, kt, vt, j, jok, dk, dv, tq0, seqlen, far_pow, bb, gam,
                  sqb, sqh, sqt, sqd, sgb, sgh, sgt, sgc, sdb, sdh, sdt, sdd,
                  L, H, scale, d, dmask,
                  GQ: tl.constexpr, BLK: tl.constexpr, WIN: tl.constexpr, DN: tl.constexpr,
                  CQ: tl.constexpr, R: tl.constexpr, HEAD_D: tl.constexpr, FAR: tl.constexpr,
                  PREC: tl.constexpr):
        rows = tl.arange(0, R)
        t = tq0 + rows // GQ
        h = gam * GQ + rows % GQ
        row_ok = (rows < CQ * GQ) & (t < seqlen)
        rmask = row_ok[:, None] & dmask[None, :]
        q = tl.load(Q + bb * sqb + h[:, None] * sqh + t[:, None] * sqt + d[None, :] * sqd, mask=rmask, other=0.0)
        do = tl.load(DO + bb * sdb + h[:, None] * sdh + t[:, None] * sdt + d[None, :] * sdd, mask=rmask,
                     other=0.0).to(q.dtype)
        orow = (bb * H + h) * L + t
        gptr = GATE + bb * sgb + h * sgh + t * sgt
        beta = tl.load(gptr + sgc, mask=row_ok, other=0.0).to(tl.float32)
        lse_s = tl.load(LSE + orow * 2 + 1, mask=row_ok, other=0.0)
        db = tl.load(DGATE + orow * 2 + 1, mask=row_ok, other=0.0)
        s = tl.dot(q, tl.trans(kt), input_precision=PREC) * scale
        dpr = tl.dot(do, tl.trans(vt), input_precision=PREC)
        delta = t[:, None] - j[None, :]
        if FAR:
            ms = row_ok[:, None] & jok[None, :] & (delta == far_pow)
            p_s = tl.exp(tl.where(ms, s - lse_s[:, None], -1.0e30))
            pw = beta[:, None] * p_s
            ds = pw * (dpr - db[:, None])
        else:
            alpha = tl.load(gptr, mask=row_ok, other=0.0).to(tl.float32)
            lse_l = tl.load(LSE + orow * 2, mask=row_ok, other=0.0)
            da = tl.load(DGATE + orow * 2, mask=row_ok, other=0.0)
            base = row_ok[:, None] & jok[None, :] & (delta >= 0)
            own = base & ((t // BLK)[:, None] == (j // BLK)[None, :])
            stis = base & (delta <= DN) & ((delta < WIN) | ((delta & (delta - 1)) == 0))
            p_l = tl.exp(tl.where(own, s - lse_l[:, None], -1.0e30)) * alpha[:, None]
            p_s = tl.exp(tl.where(stis, s - lse_s[:, None], -1.0e30)) * beta[:, None]
            pw = p_l + p_s
            ds = p_l * (dpr - da[:, None]) + p_s * (dpr - db[:, None])
        dv += tl.dot(tl.trans(pw).to(q.dtype), do, input_precision=PREC)
        dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PREC)
        return dk, dv

    @triton.jit
    def _bwd_kv_kernel(Q, K, V, GATE, LENS, DO, LSE, DGATE, DK, DV,
                       sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sgb, sgh, sgt, sgc,
                       sdb, sdh, sdt, sdd,
                       L, H, G, scale, NFK,
                       GQ: tl.constexpr, HEAD_D: tl.constexpr, DP: tl.constexpr, BLK: tl.constexpr,
                       WIN: tl.constexpr, DN: tl.constexpr, PF0: tl.constexpr, BK: tl.constexpr,
                       CQ: tl.constexpr, R: tl.constexpr, PREC: tl.constexpr):
        pid_j = tl.program_id(0)
        pid_bg = tl.program_id(1)
        bb = (pid_bg // G).to(tl.int64)
        gam = pid_bg % G
        seqlen = tl.load(LENS + bb)
        j0 = pid_j * BK
        j = j0 + tl.arange(0, BK)
        jok = j < seqlen
        d = tl.arange(0, DP)
        dmask = d < HEAD_D
        dk = tl.zeros([BK, DP], dtype=tl.float32)
        dv = tl.zeros([BK, DP], dtype=tl.float32)
        if j0 < seqlen:
            kmask = jok[:, None] & dmask[None, :]
            kt = tl.load(K + bb * skb + gam * skh + j[:, None] * skt + d[None, :] * skd, mask=kmask, other=0.0)
            vt = tl.load(V + bb * svb + gam * svh + j[:, None] * svt + d[None, :] * svd, mask=kmask, other=0.0)
            t_end = tl.minimum(j0 + BK + DN, seqlen)
            for tq0 in range(j0, t_end, CQ):
                dk, dv = _kv_chunk(Q, DO, GATE, LSE, DGATE, kt, vt, j, jok, dk, dv, tq0, seqlen, 0, bb, gam,
                                   sqb, sqh, sqt, sqd, sgb, sgh, sgt, sgc, sdb, sdh, sdt, sdd,
                                   L, H, scale, d, dmask, GQ, BLK, WIN, DN, CQ, R, HEAD_D, False, PREC)
            fpow = j0 * 0 + PF0
            for _f in range(NFK):
                t_end = tl.minimum(j0 + fpow + BK, seqlen)
                for tq0 in range(j0 + fpow, t_end, CQ):
                    dk, dv = _kv_chunk(Q, DO, GATE, LSE, DGATE, kt, vt, j, jok, dk, dv, tq0, seqlen, fpow, bb,
                                       gam, sqb, sqh, sqt, sqd, sgb, sgh, sgt, sgc, sdb, sdh, sdt, sdd,
                                       L, H, scale, d, dmask, GQ, BLK, WIN, DN, CQ, R, HEAD_D, True, PREC)
                fpow = fpow * 2
        orow = (bb * G + gam) * L + j
        smask = (j < L)[:, None] & dmask[None, :]
        tl.store(DK + orow[:, None] * HEAD_D + d[None, :], dk * scale, mask=smask)
        tl.store(DV + orow[:, None] * HEAD_D + d[None, :], dv, mask=smask)

    @triton.jit
    def _bwd_sel_kv_kernel(Q, K, V, GATE, DO, LSE, DGATE, OFFS, TLIST, DK, DV,
                           sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sgb, sgh, sgt, sgc,
                           sdb, sdh, sdt, sdd,
                           L, H, G, M, scale,
                           GQ: tl.constexpr, HEAD_D: tl.constexpr, DP: tl.constexpr, BLK: tl.constexpr,
                           BP: tl.constexpr, CQ: tl.constexpr, R: tl.constexpr, PREC: tl.constexpr):
        pid = tl.program_id(0)
        bg = pid // M
        w = pid % M
        bb = (bg // G).to(tl.int64)
        gam = bg % G
        start = tl.load(OFFS + pid)
        end = tl.load(OFFS + pid + 1)
        if start < end:
            c = tl.arange(0, BP)
            j = w * BLK + c
            jok = c < BLK
            d = tl.arange(0, DP)
            dmask = d < HEAD_D
            kmask = jok[:, None] & dmask[None, :]
            kt = tl.load(K + bb * skb + gam * skh + j[:, None] * skt + d[None, :] * skd, mask=kmask, other=0.0)
            vt = tl.load(V + bb * svb + gam * svh + j[:, None] * svt + d[None, :] * svd, mask=kmask, other=0.0)
            dk = tl.zeros([BP, DP], dtype=tl.float32)
            dv = tl.zeros([BP, DP], dtype=tl.float32)
            rows = tl.arange(0, R)
            for e0 in range(start, end, CQ):
                e = e0 + rows // GQ
                h = gam * GQ + rows % GQ
                eok = (rows < CQ * GQ) & (e < end)
                t = tl.load(TLIST + e, mask=eok, other=0)
                rmask = eok[:, None] & dmask[None, :]
                q = tl.load(Q + bb * sqb + h[:, None] * sqh + t[:, None] * sqt + d[None, :] * sqd, mask=rmask,
                            other=0.0)
                do = tl.load(DO + bb * sdb + h[:, None] * sdh + t[:, None] * sdt + d[None, :] * sdd, mask=rmask,
                             other=0.0).to(q.dtype)
                orow = (bb * H + h) * L + t
                alpha = tl.load(GATE + bb * sgb + h * sgh + t * sgt, mask=eok, other=0.0).to(tl.float32)
                lse_l = tl.load(LSE + orow * 2, mask=eok, other=0.0)
                da = tl.load(DGATE + orow * 2, mask=eok, other=0.0)
                s = tl.dot(q, tl.trans(kt), input_precision=PREC) * scale
                p = tl.exp(tl.where(eok[:, None] & jok[None, :], s - lse_l[:, None], -1.0e30)) * alpha[:, None]
                dpr = tl.dot(do, tl.trans(vt), input_precision=PREC)
                ds = p * (dpr - da[:, None])
                dv += tl.dot(tl.trans(p).to(q.dtype), do, input_precision=PREC)
                dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PREC)
            optr = ((bb * G + gam) * L + j)[:, None] * HEAD_D + d[None, :]
            tl.store(DK + optr, tl.load(DK + optr, mask=kmask, other=0.0) + dk * scale, mask=kmask)
            tl.store(DV + optr, tl.load(DV + optr, mask=kmask, other=0.0) + dv, mask=kmask)

    @triton.jit
    def _bwd_sink_kv_kernel(Q, K, V, GATE, LENS, DO, LSE, DGATE, DK, DV,
                            sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sgb, sgh, sgt, sgc,
                            sdb, sdh, sdt, sdd,
                            L, H, G, scale,
                            GQ: tl.constexpr, HEAD_D: tl.constexpr, DP: tl.constexpr, WIN: tl.constexpr,
                            NSINK: tl.constexpr, SP: tl.constexpr, CH: tl.constexpr, CQ: tl.constexpr,
                            R: tl.constexpr, PREC: tl.constexpr):
        pid_c = tl.program_id(0)
        pid_bg = tl.program_id(1)
        bb = (pid_bg // G).to(tl.int64)
        gam = pid_bg % G
        seqlen = tl.load(LENS + bb)
        c0 = pid_c * CH
        if c0 < seqlen:
            js = tl.arange(0, SP)
            jok = (js < NSINK) & (js < seqlen)
            d = tl.arange(0, DP)
            dmask = d < HEAD_D
            kmask = jok[:, None] & dmask[None, :]
            kt = tl.load(K + bb * skb + gam * skh + js[:, None] * skt + d[None, :] * skd, mask=kmask, other=0.0)
            vt = tl.load(V + bb * svb + gam * svh + js[:, None] * svt + d[None, :] * svd, mask=kmask, other=0.0)
            dk = tl.zeros([SP, DP], dtype=tl.float32)
            dv = tl.zeros([SP, DP], dtype=tl.float32)
            rows = tl.arange(0, R)
            for tq0 in range(c0, tl.minimum(c0 + CH, seqlen), CQ):
                t = tq0 + rows // GQ
                h = gam * GQ + rows % GQ
                row_ok = (rows < CQ * GQ) & (t < seqlen) & (t < c0 + CH)
                rmask = row_ok[:, None] & dmask[None, :]
                q = tl.load(Q + bb * sqb + h[:, None] * sqh + t[:, None] * sqt + d[None, :] * sqd, mask=rmask,
                            other=0.0)
                do = tl.load(DO + bb * sdb + h[:, None] * sdh + t[:, None] * sdt + d[None, :] * sdd, mask=rmask,
                             other=0.0).to(q.dtype)
                orow = (bb * H + h) * L + t
                beta = tl.load(GATE + bb * sgb + h * sgh + t * sgt + sgc, mask=row_ok, other=0.0).to(tl.float32)
                lse_s = tl.load(LSE + orow * 2 + 1, mask=row_ok, other=0.0)
                db = tl.load(DGATE + orow * 2 + 1, mask=row_ok, other=0.0)
                s = tl.dot(q, tl.trans(kt), input_precision=PREC) * scale
                dpr = tl.dot(do, tl.trans(vt), input_precision=PREC)
                delta = t[:, None] - js[None, :]
                covered = (delta < WIN) | ((delta & (delta - 1)) == 0)
                msk = row_ok[:, None] & jok[None, :] & (delta >= 0) & (~covered)
                p = tl.exp(tl.where(msk, s - lse_s[:, None], -1.0e30)) * beta[:, None]
                ds = p * (dpr - db[:, None])
                dv += tl.dot(tl.trans(p).to(q.dtype), do, input_precision=PREC)
                dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PREC)
            optr = ((bb * G + gam) * L + js)[:, None] * HEAD_D + d[None, :]
            tl.atomic_add(DK + optr, dk * scale, mask=kmask)
            tl.atomic_add(DV + optr, dv, mask=kmask)
