"""Backward kernels of the gathered strategy (see ``triton_fwd.fwd_gather_kernel``).

* ``bwd_q_gather_kernel``: ``dq``, ``d gate`` and the straight-through ``dp`` per selected block.
* ``bwd_kv_gather_kernel``: ``dk, dv`` of the own block + STIS offsets, key-major, no atomics.
* ``bwd_sel_kv_gather_kernel``: ``dk, dv`` of selected blocks through an inverse index (per block the
  queries that selected it, CSR); no atomics.
* ``bwd_sink_kv_gather_kernel``: sinks (fp32 atomics).
"""

from __future__ import annotations

from .triton_common import tl, triton

if triton is not None:
    from .triton_common import bwd_row_state, far_stis_keys, load_gate, program_row, window_keys

if triton is not None:

    @triton.jit
    def bwd_q_part(q, do, kt, vt, mask, lse2, gsc, dg, dq, scale2, PREC: tl.constexpr):
        """Query-side backward over one key tile (``lse2``: the row's logsumexp times ``log2(e)``, ``scale2`` the
        score scale times ``log2(e)``); returns updated dq, dS (logit grads) and the raw scores ``q k^T``."""
        s = tl.dot(q, tl.trans(kt), input_precision=PREC)
        p = tl.exp2(tl.where(mask, s * scale2 - lse2[:, None], -1.0e30))
        dpr = tl.dot(do, tl.trans(vt), input_precision=PREC)
        ds = gsc[:, None] * p * (dpr - dg[:, None])
        dq += tl.dot(ds.to(kt.dtype), kt, input_precision=PREC)
        return dq, ds, s


    @triton.jit
    def bwd_q_gather_kernel(Q, K, V, GATE, SEL, LENS, DO, OL, OS, LSE, DQ, DGATE, DPS,
                      sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sgb, sgh, sgt, sgc,
                      sdb, sdh, sdt, sdd,
                      L, H, G, scale,
                      GQ: tl.constexpr, HEAD_D: tl.constexpr, DP: tl.constexpr, BLK: tl.constexpr,
                      BP: tl.constexpr, NSEL: tl.constexpr, NP: tl.constexpr, BQ: tl.constexpr,
                      BQP: tl.constexpr, R: tl.constexpr, KO: tl.constexpr, WIN: tl.constexpr,
                      KN: tl.constexpr, P0: tl.constexpr, NFP: tl.constexpr, NSINK: tl.constexpr,
                      SP: tl.constexpr, ST: tl.constexpr, PREC: tl.constexpr):
        pid_t = tl.program_id(0)
        bb, gam, seqlen = program_row(LENS, G, L)
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
            do, da, db, lse_l, lse_s = bwd_row_state(DO, OL, OS, LSE, DGATE, bb, h, t, orow, row_ok, row_in, d,
                                                     dmask, sdb, sdh, sdt, sdd, HEAD_D)  # [R, DP], [R] x 4
            do = do.to(q.dtype)
            scale2 = scale * 1.4426950408889634  # probabilities as exp2(scale2 * raw score - log2(e) * lse)
            lse_l = lse_l * 1.4426950408889634
            lse_s = lse_s * 1.4426950408889634
            alpha, beta = load_gate(GATE, bb, h, t, sgb, sgh, sgt, sgc, row_ok)
            # ---------------- LTIS own block ----------------
            ks = (t0 // BLK) * BLK
            jo = ks + tl.arange(0, KO)
            kmask = (jo < seqlen)[:, None] & dmask[None, :]
            kt = tl.load(kb + jo[:, None] * skt + d[None, :] * skd, mask=kmask, other=0.0)
            vt = tl.load(vb + jo[:, None] * svt + d[None, :] * svd, mask=kmask, other=0.0)
            cst = (t // BLK) * BLK
            mask = row_ok[:, None] & (jo[None, :] >= cst[:, None]) & (jo[None, :] <= t[:, None])
            dq, ds, s = bwd_q_part(q, do, kt, vt, mask, lse_l, alpha, da, dq, scale2, PREC)
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
                dq, ds_k, s_k = bwd_q_part(q, do, kc, vc, mask_k, lse_l, alpha, da, dq, scale2, PREC)
                if ST:
                    u = tl.sum(ds_k * s_k, 1) * scale  # dS * (scaled score)
                    dp_row = tl.where(pcols[None, :] == k, u[:, None], dp_row)
            if ST:
                qidx = tl.arange(0, BQP)
                pick = (qi[None, :, None] == qidx[:, None, None]) & row_ok[None, :, None]
                dpq = tl.sum(tl.where(pick, dp_row[None, :, :], 0.0), 1)  # [BQP, NP]
                tq = t0 + qidx
                dmask2 = ((qidx < BQ) & (tq < L))[:, None] & (pcols < NSEL)[None, :]
                tl.store(DPS + ((bb * G + gam) * L + tq[:, None]) * NSEL + pcols[None, :], dpq, mask=dmask2)
            # ---------------- STIS ----------------
            jn, kt, vt = window_keys(kb, vb, t0, seqlen, d, dmask, skt, skd, svt, svd, WIN, KN)
            delta = t[:, None] - jn[None, :]
            mask = row_ok[:, None] & (jn[None, :] >= 0) & (delta >= 0) & (delta < WIN)
            dq, ds, s = bwd_q_part(q, do, kt, vt, mask, lse_s, beta, db, dq, scale2, PREC)
            if NFP > 0:
                fq, fok, kc, vc = far_stis_keys(kb, vb, t0, seqlen, d, dmask, skt, skd, svt, svd, BQ, NFP, P0)
                mask = row_ok[:, None] & (qi[:, None] == fq[None, :]) & fok[None, :]
                dq, ds, s = bwd_q_part(q, do, kc, vc, mask, lse_s, beta, db, dq, scale2, PREC)
            if NSINK > 0:
                js = tl.arange(0, SP)
                smask = ((js < NSINK) & (js < seqlen))[:, None] & dmask[None, :]
                kt = tl.load(kb + js[:, None] * skt + d[None, :] * skd, mask=smask, other=0.0)
                vt = tl.load(vb + js[:, None] * svt + d[None, :] * svd, mask=smask, other=0.0)
                delta = t[:, None] - js[None, :]
                covered = (delta < WIN) | ((delta & (delta - 1)) == 0)
                mask = row_ok[:, None] & (js[None, :] < NSINK) & (delta >= 0) & (~covered)
                dq, ds, s = bwd_q_part(q, do, kt, vt, mask, lse_s, beta, db, dq, scale2, PREC)
        else:  # a tile past the row's length: d gate is 0 there (DGATE is not zero-filled before the launch)
            tl.store(DGATE + orow * 2, tl.zeros([R], dtype=tl.float32), mask=row_in)
            tl.store(DGATE + orow * 2 + 1, tl.zeros([R], dtype=tl.float32), mask=row_in)
        tl.store(DQ + bb * sqb + h[:, None] * sqh + t[:, None] * sqt + d[None, :] * sqd,  # DQ: Q's strides
                 (dq * scale).to(DQ.dtype.element_ty), mask=row_in[:, None] & dmask[None, :])


    @triton.jit
    def kv_chunk(Q, DO, GATE, LSE, DGATE, kt, vt, j, jok, dk, dv, tq0, seqlen, far_pow, bb, gam,
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
    def bwd_kv_gather_kernel(Q, K, V, GATE, LENS, DO, LSE, DGATE, DK, DV,
                       sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sgb, sgh, sgt, sgc,
                       sdb, sdh, sdt, sdd,
                       L, H, G, scale, NFK,
                       GQ: tl.constexpr, HEAD_D: tl.constexpr, DP: tl.constexpr, BLK: tl.constexpr,
                       WIN: tl.constexpr, DN: tl.constexpr, PF0: tl.constexpr, BK: tl.constexpr,
                       CQ: tl.constexpr, R: tl.constexpr, PREC: tl.constexpr):
        pid_j = tl.program_id(0)
        bb, gam, seqlen = program_row(LENS, G, L)
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
                dk, dv = kv_chunk(Q, DO, GATE, LSE, DGATE, kt, vt, j, jok, dk, dv, tq0, seqlen, 0, bb, gam,
                                   sqb, sqh, sqt, sqd, sgb, sgh, sgt, sgc, sdb, sdh, sdt, sdd,
                                   L, H, scale, d, dmask, GQ, BLK, WIN, DN, CQ, R, HEAD_D, False, PREC)
            fpow = j0 * 0 + PF0
            for _f in range(NFK):
                t_end = tl.minimum(j0 + fpow + BK, seqlen)
                for tq0 in range(j0 + fpow, t_end, CQ):
                    dk, dv = kv_chunk(Q, DO, GATE, LSE, DGATE, kt, vt, j, jok, dk, dv, tq0, seqlen, fpow, bb,
                                       gam, sqb, sqh, sqt, sqd, sgb, sgh, sgt, sgc, sdb, sdh, sdt, sdd,
                                       L, H, scale, d, dmask, GQ, BLK, WIN, DN, CQ, R, HEAD_D, True, PREC)
                fpow = fpow * 2
        orow = (bb * G + gam) * L + j
        smask = (j < L)[:, None] & dmask[None, :]
        tl.store(DK + orow[:, None] * HEAD_D + d[None, :], dk * scale, mask=smask)
        tl.store(DV + orow[:, None] * HEAD_D + d[None, :], dv, mask=smask)

    @triton.jit
    def bwd_sel_kv_gather_kernel(Q, K, V, GATE, DO, LSE, DGATE, OFFS, TLIST, DK, DV,
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
    def bwd_sink_kv_gather_kernel(Q, K, V, GATE, LENS, DO, LSE, DGATE, DK, DV,
                            sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sgb, sgh, sgt, sgc,
                            sdb, sdh, sdt, sdd,
                            L, H, G, scale,
                            GQ: tl.constexpr, HEAD_D: tl.constexpr, DP: tl.constexpr, WIN: tl.constexpr,
                            NSINK: tl.constexpr, SP: tl.constexpr, CH: tl.constexpr, CQ: tl.constexpr,
                            R: tl.constexpr, PREC: tl.constexpr):
        pid_c = tl.program_id(0)
        bb, gam, seqlen = program_row(LENS, G, L)
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
