"""Backward kernels of the dense-tile strategy (see ``triton_fwd.fwd_tile_kernel``).

* ``bwd_q_tile_kernel``: query-major; ``dq``, ``d gate`` and the straight-through ``dp`` per selected block.
* ``bwd_kv_tile_kernel``: key-major; ``dk, dv`` of a key tile from the query tiles that reach it (LTIS
  membership is tested against each query's selection in registers, so no inverse index is needed).

Probabilities are recomputed from the stored logsumexps; accumulation is fp32.
"""

from __future__ import annotations

from .triton_common import tl, triton

if triton is not None:
    from .triton_common import (
        bwd_row_state,
        load_gate,
        ltis_tile_scores,
        program_row,
        row_block_bits,
        stis_tile_scores,
        tile_flags,
        tile_pair_flags,
        tile_rows,
    )

if triton is not None:

    @triton.jit
    def straight_through_rows(u, j, jb0, selr, cols, dp_row, BLK: tl.constexpr, NSEL: tl.constexpr,
                              BN: tl.constexpr):
        """Add to ``dp_row [R, NP]``, slot ``k``, the sum of ``u = dS_L * s [R, BN]`` over the tile's columns in block
        ``sel[t, k]``. A tile of whole blocks (``BN % b == 0``, ``j0 = jb0 * b``) holding at most ``n`` of them
        takes the per-block sums first (``BN / b`` passes over the tile instead of ``n``)."""
        jb = j // BLK
        if (BN % BLK == 0) and (BN // BLK <= NSEL):
            for i in tl.static_range(BN // BLK):
                ub = tl.sum(tl.where((jb == jb0 + i)[None, :], u, 0.0), 1)  # [R]
                dp_row += tl.where(selr == jb0 + i, ub[:, None], 0.0)  # a row names a block in at most one slot
        else:
            for k in tl.static_range(NSEL):
                sk = tl.sum(tl.where(cols[None, :] == k, selr, 0), 1)  # [R]
                uk = tl.sum(tl.where(jb[None, :] == sk[:, None], u, 0.0), 1)
                dp_row += tl.where(cols[None, :] == k, uk[:, None], 0.0)
        return dp_row

    @triton.jit
    def bwd_q_tile_step(q, do, kb, vb, j0, seqlen, skt, skd, svt, svd, d, dmask, t, bits, jb0, own_tile, has_sel,
                        do_l, do_s, selr, cols, lse_l, lse_s, alpha, beta, da, db, dq, dp_row, scale2,
                        BLK: tl.constexpr, NSEL: tl.constexpr, WIN: tl.constexpr, NSINK: tl.constexpr,
                        BN: tl.constexpr, ST: tl.constexpr, PREC: tl.constexpr):
        """One key tile of the query-side backward: ``dq [R, DP]`` and the straight-through ``dp_row [R, NP]``
        (of the raw scores: the caller multiplies by ``scale``). ``lse_l, lse_s`` are base 2 (``log2(e)`` times the
        natural ones), ``scale2 = scale * log2(e)``."""
        j = j0 + tl.arange(0, BN)
        kmask = (j < seqlen)[:, None] & dmask[None, :]
        kt = tl.load(kb + j[:, None] * skt + d[None, :] * skd, mask=kmask, other=0.0)  # [BN, DP]
        vt = tl.load(vb + j[:, None] * svt + d[None, :] * svd, mask=kmask, other=0.0)  # [BN, DP]
        s = tl.dot(q, tl.trans(kt), input_precision=PREC)  # [R, BN] raw scores
        dpr = tl.dot(do, tl.trans(vt), input_precision=PREC)  # [R, BN]
        ds = tl.zeros([q.shape[0], BN], dtype=tl.float32)
        if do_l:
            p_l = tl.exp2(ltis_tile_scores(s * scale2 - lse_l[:, None], t, j, bits, jb0, own_tile, BLK, BN))
            ds_l = alpha[:, None] * p_l * (dpr - da[:, None])  # [R, BN]
            ds += ds_l
            if ST:
                if has_sel:
                    dp_row = straight_through_rows(ds_l * s, j, jb0, selr, cols, dp_row, BLK, NSEL, BN)
        if do_s:
            p_s = tl.exp2(stis_tile_scores(s * scale2 - lse_s[:, None], t, j, WIN, NSINK))
            ds += beta[:, None] * p_s * (dpr - db[:, None])
        dq += tl.dot(ds.to(kt.dtype), kt, input_precision=PREC)
        return dq, dp_row

    @triton.jit
    def bwd_kv_tile_step(Q, DO, GATE, LSE, DGATE, bb, h, t, row_ok, kt, vt, j, d, dmask, bits, jb0, own_tile, do_l,
                         do_s, dk, dv, sqb, sqh, sqt, sqd, sdb, sdh, sdt, sdd, sgb, sgh, sgt, sgc, L, H, scale2,
                         BLK: tl.constexpr, WIN: tl.constexpr, NSINK: tl.constexpr, BN: tl.constexpr,
                         PREC: tl.constexpr):
        """One query tile of the key-side backward: ``dk, dv [BN, DP]`` of the key tile ``kt, vt``."""
        rmask = row_ok[:, None] & dmask[None, :]
        q = tl.load(Q + bb * sqb + h[:, None] * sqh + t[:, None] * sqt + d[None, :] * sqd,
                    mask=rmask, other=0.0)  # [R, DP]
        do = tl.load(DO + bb * sdb + h[:, None] * sdh + t[:, None] * sdt + d[None, :] * sdd,
                     mask=rmask, other=0.0).to(q.dtype)  # [R, DP]
        orow = (bb * H + h) * L + t
        alpha, beta = load_gate(GATE, bb, h, t, sgb, sgh, sgt, sgc, row_ok)
        lse_l = tl.load(LSE + orow * 2, mask=row_ok, other=0.0) * 1.4426950408889634  # base 2
        lse_s = tl.load(LSE + orow * 2 + 1, mask=row_ok, other=0.0) * 1.4426950408889634
        da = tl.load(DGATE + orow * 2, mask=row_ok, other=0.0)
        db = tl.load(DGATE + orow * 2 + 1, mask=row_ok, other=0.0)
        s = tl.dot(q, tl.trans(kt), input_precision=PREC)  # [R, BN] raw scores
        dpr = tl.dot(do, tl.trans(vt), input_precision=PREC)  # [R, BN]
        pw = tl.zeros(s.shape, dtype=tl.float32)  # gated probabilities of both branches
        ds = tl.zeros(s.shape, dtype=tl.float32)
        if do_l:
            p_l = alpha[:, None] * tl.exp2(ltis_tile_scores(s * scale2 - lse_l[:, None], t, j, bits, jb0, own_tile,
                                                             BLK, BN))
            pw += p_l
            ds += p_l * (dpr - da[:, None])
        if do_s:
            p_s = beta[:, None] * tl.exp2(stis_tile_scores(s * scale2 - lse_s[:, None], t, j, WIN, NSINK))
            pw += p_s
            ds += p_s * (dpr - db[:, None])
        dv += tl.dot(tl.trans(pw.to(q.dtype)), do, input_precision=PREC)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC)
        return dk, dv

    @triton.jit
    def bwd_q_tile_kernel(Q, K, V, GATE, SEL, LENS, DO, OL, OS, LSE, DQ, DGATE, DPS, CK, PSEL, LSEZ, UNION,
                          sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sgb, sgh, sgt, sgc,
                          sdb, sdh, sdt, sdd, scb, sch, scw, scd,
                          L, H, G, M, scale, NQT, NWD, UR: tl.constexpr,
                          GQ: tl.constexpr, GP: tl.constexpr, HEAD_D: tl.constexpr, DP: tl.constexpr,
                          BLK: tl.constexpr, NSEL: tl.constexpr, NP: tl.constexpr, WIN: tl.constexpr,
                          NSINK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, R: tl.constexpr,
                          BW: tl.constexpr, ST: tl.constexpr, SELQ: tl.constexpr, PREC: tl.constexpr):
        """Dense-tile backward, query side: ``dq``, ``d gate = (do.o_L, do.o_S)`` and the straight-through
        ``dp[t, k] = sum over the group's heads and block sel[t, k] of dS_L * s`` (same tiles as the forward).

        With ``SELQ`` it also adds the selection's share of ``dq`` (the straight-through gradient through
        ``p = softmax(z̄)``, ``z̄ = τ <mean_h q, k~>``): ``dq_h += τ/g sum_w (c[w] - p_w sum_k p_k dp_k) k~_w``
        with ``c[sel[t, k]] = p_k dp_k``, over window tiles of ``BW`` (tensor-core products from ``BM >= 16``
        queries, below that broadcast products summed in registers)."""
        pid_t = tl.program_id(0)
        bb, gam, seqlen = program_row(LENS, G, L)
        t0 = pid_t * BM
        _, t, h, row_in, row_ok = tile_rows(t0, gam, seqlen, L, GQ, GP, R)  # [R] each
        d = tl.arange(0, DP)
        dmask = d < HEAD_D
        orow = (bb * H + h) * L + t
        dq = tl.zeros([R, DP], dtype=tl.float32)
        if t0 < seqlen:
            rmask = row_ok[:, None] & dmask[None, :]
            q = tl.load(Q + bb * sqb + h[:, None] * sqh + t[:, None] * sqt + d[None, :] * sqd,
                        mask=rmask, other=0.0)  # [R, DP]
            do, da, db, lse_l, lse_s = bwd_row_state(DO, OL, OS, LSE, DGATE, bb, h, t, orow, row_ok, row_in, d,
                                                     dmask, sdb, sdh, sdt, sdd, HEAD_D)  # [R, DP], [R] x 4
            do = do.to(q.dtype)
            scale2 = scale * 1.4426950408889634  # scores and logsumexps in base 2 (exp2)
            lse_l = lse_l * 1.4426950408889634
            lse_s = lse_s * 1.4426950408889634
            alpha, beta = load_gate(GATE, bb, h, t, sgb, sgh, sgt, sgc, row_ok)
            cols = tl.arange(0, NP)
            sel_rows = ((bb * G + gam) * L + t) * NSEL  # [R]
            selr = tl.load(SEL + sel_rows[:, None] + cols[None, :], mask=row_ok[:, None] & (cols < NSEL)[None, :],
                           other=-1)  # [R, NP]
            kb = K + bb * skb + gam * skh
            vb = V + bb * svb + gam * svh
            dp_row = tl.zeros([R, NP], dtype=tl.float32)
            t_hi = tl.minimum(t0 + BM, seqlen) - 1
            own_first = (t0 // BLK) * BLK
            urow = UNION + ((bb * G + gam) * NQT + pid_t * UR) * NWD
            for j0 in range(0, t_hi + 1, BN):
                do_l, do_s, bits, jb0, has_sel, own_tile = tile_flags(t0, t_hi, j0, j0 + BN - 1, selr, own_first,
                                                                      urow, NWD, BLK, WIN, NSINK, UR)
                if do_l | do_s:
                    dq, dp_row = bwd_q_tile_step(
                        q, do, kb, vb, j0, seqlen, skt, skd, svt, svd, d, dmask, t, bits, jb0, own_tile, has_sel,
                        do_l, do_s, selr, cols, lse_l, lse_s, alpha, beta, da, db, dq, dp_row, scale2, BLK, NSEL, WIN,
                        NSINK, BN, ST, PREC)
            if ST:
                # rows -> queries: sum the straight-through gradient over the group's heads (raw -> scaled scores)
                dpq = tl.sum(tl.reshape(dp_row, [BM, GP, NP]), 1) * scale  # [BM, NP]
                tq = t0 + tl.arange(0, BM)
                smask = (tq < L)[:, None] & (cols < NSEL)[None, :]
                tl.store(DPS + ((bb * G + gam) * L + tq)[:, None] * NSEL + cols[None, :], dpq, mask=smask)
                if SELQ:
                    qm = tl.sum(tl.reshape(q.to(tl.float32), [BM, GP, DP]), 1) / GQ  # [BM, DP] group mean
                    tqok = tq < seqlen
                    qrow = ((bb * G + gam) * L + tq) * NSEL  # [BM]
                    pnk = smask & tqok[:, None]
                    selq = tl.load(SEL + qrow[:, None] + cols[None, :], mask=pnk, other=-1)  # [BM, NP]
                    pdp = tl.load(PSEL + qrow[:, None] + cols[None, :], mask=pnk, other=0.0) * dpq  # [BM, NP]
                    c_sum = tl.sum(pdp, 1)  # [BM]
                    lse_z = tl.load(LSEZ + (bb * G + gam) * L + tq, mask=tqok, other=0.0)
                    ck_base = CK + bb * scb + gam * sch
                    tlim = tq // BLK  # window w is eligible for t iff w < t // b
                    dqm = tl.zeros([BM, DP], dtype=tl.float32)
                    w_end = tl.minimum(M, tl.maximum(t_hi, 0) // BLK)
                    for w0 in range(0, w_end, BW):
                        w = w0 + tl.arange(0, BW)
                        ck = tl.load(ck_base + w[:, None] * scw + d[None, :] * scd,
                                     mask=(w < M)[:, None] & dmask[None, :], other=0.0).to(tl.float32)  # [BW, DP]
                        if BM >= 16:  # tensor-core products need 16 rows
                            z = tl.dot(qm, tl.trans(ck), input_precision="ieee") * scale  # [BM, BW]
                        else:  # [BM, BW, DP] products summed over the head dim (tiny: e.g. 4 x 16 x 16)
                            z = tl.sum(qm[:, None, :] * ck[None, :, :], 2) * scale
                        elig = tqok[:, None] & (w[None, :] < tlim[:, None]) & (w < M)[None, :]
                        dz = -tl.exp(tl.where(elig, z - lse_z[:, None], -1.0e30)) * c_sum[:, None]
                        for k in tl.static_range(NSEL):
                            sk = tl.sum(tl.where(cols[None, :] == k, selq, 0), 1)
                            pk = tl.sum(tl.where(cols[None, :] == k, pdp, 0.0), 1)
                            dz += tl.where(w[None, :] == sk[:, None], pk[:, None], 0.0)
                        if BM >= 16:
                            dqm += tl.dot(dz, ck, input_precision="ieee")
                        else:
                            dqm += tl.sum(dz[:, :, None] * ck[None, :, :], 1)
                    # queries -> rows (the same vector for every head of the group)
                    dqm_rows = tl.reshape(tl.broadcast_to(dqm[:, None, :], [BM, GP, DP]), [R, DP])
                    dq += dqm_rows * (1.0 / GQ)
        else:  # a tile past the row's length: d gate is 0 there (DGATE is not zero-filled before the launch)
            tl.store(DGATE + orow * 2, tl.zeros([R], dtype=tl.float32), mask=row_in)
            tl.store(DGATE + orow * 2 + 1, tl.zeros([R], dtype=tl.float32), mask=row_in)
        tl.store(DQ + bb * sqb + h[:, None] * sqh + t[:, None] * sqt + d[None, :] * sqd,  # DQ: Q's strides
                 (dq * scale).to(DQ.dtype.element_ty), mask=row_in[:, None] & dmask[None, :])

    @triton.jit
    def bwd_kv_tile_kernel(Q, K, V, GATE, SEL, LENS, DO, LSE, DGATE, DK, DV, UNION,
                           sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sgb, sgh, sgt, sgc,
                           sdb, sdh, sdt, sdd,
                           L, H, G, scale, NQT, NWD, UR: tl.constexpr,
                           GQ: tl.constexpr, GP: tl.constexpr, HEAD_D: tl.constexpr, DP: tl.constexpr,
                           BLK: tl.constexpr, NSEL: tl.constexpr, NP: tl.constexpr, WIN: tl.constexpr,
                           NSINK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, R: tl.constexpr,
                           PREC: tl.constexpr):
        """Dense-tile backward, key side: ``dk, dv [BN, DP]`` of one key tile from every query tile that holds
        one of its pairs (LTIS own/selected block or STIS); the group's heads are rows of the query tile, so
        no atomics are needed. ``DGATE`` holds ``(do.o_L, do.o_S)`` from ``bwd_q_tile_kernel``."""
        pid_j = tl.program_id(0)
        bb, gam, seqlen = program_row(LENS, G, L)
        j0 = pid_j * BN
        j1 = j0 + BN - 1
        j = j0 + tl.arange(0, BN)
        d = tl.arange(0, DP)
        dmask = d < HEAD_D
        dk = tl.zeros([BN, DP], dtype=tl.float32)
        dv = tl.zeros([BN, DP], dtype=tl.float32)
        if j0 < seqlen:
            kmask = (j < seqlen)[:, None] & dmask[None, :]
            kt = tl.load(K + bb * skb + gam * skh + j[:, None] * skt + d[None, :] * skd, mask=kmask,
                         other=0.0)  # [BN, DP]
            vt = tl.load(V + bb * svb + gam * svh + j[:, None] * svt + d[None, :] * svd, mask=kmask,
                         other=0.0)  # [BN, DP]
            rows = tl.arange(0, R)
            hh = rows % GP
            h = gam * GQ + hh
            cols = tl.arange(0, NP)
            scale2 = scale * 1.4426950408889634  # base-2 scores (exp2)
            for t0 in range((j0 // BM) * BM, seqlen, BM):
                t = t0 + rows // GP  # [R]
                t_hi = tl.minimum(t0 + BM, seqlen) - 1
                urow = UNION + ((bb * G + gam) * NQT + (t0 // BM) * UR) * NWD
                # the scalar test first: a query tile with no pair costs two scalar loads, not its selection
                do_l, do_s, _sel_in_tile, own_tile = tile_pair_flags(t0, t_hi, j0, j1, (t0 // BLK) * BLK, urow, NWD,
                                                                     BLK, WIN, NSINK, UR)
                if do_l | do_s:
                    row_ok = (hh < GQ) & (t < seqlen)
                    selr = tl.load(SEL + (((bb * G + gam) * L + t) * NSEL)[:, None] + cols[None, :],
                                   mask=row_ok[:, None] & (cols < NSEL)[None, :], other=-1)  # [R, NP]
                    bits, jb0 = row_block_bits(selr, j0, j1, BLK)
                    dk, dv = bwd_kv_tile_step(
                        Q, DO, GATE, LSE, DGATE, bb, h, t, row_ok, kt, vt, j, d, dmask, bits, jb0, own_tile, do_l, do_s,
                        dk, dv, sqb, sqh, sqt, sqd, sdb, sdh, sdt, sdd, sgb, sgh, sgt, sgc, L, H, scale2, BLK, WIN,
                        NSINK, BN, PREC)
        smask = (j < L)[:, None] & dmask[None, :]
        # DK, DV have the strides of K, V (allocated like them: no transpose copy after)
        tl.store(DK + bb * skb + gam * skh + j[:, None] * skt + d[None, :] * skd, (dk * scale).to(DK.dtype.element_ty),
                 mask=smask)
        tl.store(DV + bb * svb + gam * svh + j[:, None] * svt + d[None, :] * svd, dv.to(DV.dtype.element_ty),
                 mask=smask)
