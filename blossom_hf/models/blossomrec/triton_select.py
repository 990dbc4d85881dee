"""LTIS block selection of the fused Triton backend (MODEL.md steps 3-5) and its straight-through backward.

* ``select_kernel``: scores ``z̄ = τ <mean_h q, k~>`` tile by tile over the compression windows, an online
  logsumexp and a running top-n of packed (score, window) int64 keys (one ``max`` per slot; ties -> larger
  ``w``). Writes ``sel [B, G, L, n]`` (int32, -1 = none), ``p`` of each selected window and the logsumexp of
  ``z̄`` per query; no ``L x M`` tensor.
* ``select_bwd_q_kernel``: the compressor path of the straight-through gradient into ``dq``.
* ``select_bwd_w_kernel``: ``d compressed_key``, window-major (no atomics).

One program = one batch row ``bb``, one kv head ``γ`` and a tile of ``TQ`` queries (or ``BW`` windows).
"""

from __future__ import annotations

from .triton_common import tl, triton

if triton is not None:
    from .triton_common import group_mean_query, program_row

if triton is not None:

    @triton.jit
    def window_scores(ck_base, qm, w0, M, tok, tlim, d, dmask, scw, scd, scale, BW: tl.constexpr):
        """Scores ``z̄ [TQ, BW]`` of windows ``w0 .. w0+BW-1`` (fp32, exact products) and their eligibility."""
        w = w0 + tl.arange(0, BW)
        ck = tl.load(ck_base + w[:, None] * scw + d[None, :] * scd,
                     mask=(w < M)[:, None] & dmask[None, :], other=0.0).to(tl.float32)  # [BW, DP]
        z = tl.dot(qm, tl.trans(ck), input_precision="ieee") * scale  # [TQ, BW]
        elig = tok[:, None] & (w[None, :] < tlim[:, None]) & (w < M)[None, :]
        return w, z, elig

    @triton.jit
    def lse_update(m, ssum, z, elig, tile_m):
        """Online logsumexp over the eligible scores of one window tile, whose maximum is ``tile_m [TQ]``
        (``-1e30`` where none is eligible)."""
        m_new = tl.maximum(m, tile_m)
        ssum = ssum * tl.exp(m - m_new) + tl.sum(tl.exp(tl.where(elig, z - m_new[:, None], -1.0e30)), 1)
        return m_new, ssum

    #: no window (below every packed key of a real score)
    NO_KEY = tl.constexpr(-(2**63))

    @triton.jit
    def packed_keys(z, w, elig):
        """int64 keys that order ``(z, w)`` lexicographically: the fp32 score's order-preserving int32 (sign bit
        kept, the other bits flipped for negatives) in the high half, the window in the low half. One ``max``
        then gives the largest score and, among equal scores, the larger window (MODEL.md step 5's tie rule).
        ``-0.0`` is mapped to ``+0.0`` first, so that the two compare equal as floats do. A dot product with a
        ``+0`` accumulator never returns ``-0.0``, so this is only a guard. Ineligible entries get :data:`NO_KEY`."""
        bits = tl.where(z == 0.0, 0.0, z).to(tl.int32, bitcast=True)
        order = bits ^ ((bits >> 31) & 0x7FFFFFFF)
        packed = (order.to(tl.int64) << 32) | w[None, :].to(tl.int64)
        return tl.where(elig, packed, NO_KEY)

    @triton.jit
    def key_score(key):
        """The fp32 score of packed keys (:func:`packed_keys`; meaningless for :data:`NO_KEY`)."""
        order = (key >> 32).to(tl.int32)
        return (order ^ ((order >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)

    @triton.jit
    def store_union_words(UNION, sel, tok, bb, gam, G, tq, NQT, NWD, UBM: tl.constexpr):
        """OR the selected blocks of the queries ``tq [TQ]`` (``sel [TQ, NP]``, real queries ``tok``) into the union
        words ``UNION [B, G, NQT, NWD]``, one row of ``NWD`` words per ``UBM`` queries (bit ``w % 32`` of word
        ``w // 32``: block ``w``). A query's word is the sum of its bits (its blocks are distinct); each query ORs it
        into its row with one atomic (none where it selects nothing in that word): no reduction across the
        program's rows, whatever ``UBM``. Read by :func:`triton_common.union_has_sel`."""
        use = tok[:, None] & (sel >= 0)
        word = tl.where(use, sel // 32, -1)
        bit = 1 << tl.where(use, sel % 32, 0)
        row = UNION + ((bb * G + gam) * NQT + tq // UBM) * NWD  # [TQ] pointers to the rows' first words
        for k in range(NWD):
            row_word = tl.sum(tl.where(word == k, bit, 0), 1)  # [TQ]
            tl.atomic_or(row + k, row_word, mask=row_word != 0)

    @triton.jit
    def select_kernel(Q, CK, LENS, SEL_IN, SEL, PSEL, LSEZ, POS, UNION,
                      sqb, sqh, sqt, sqd, scb, sch, scw, scd, spb, spt,
                      L, QN, M, G, scale, NQT, NWD,
                      GQ: tl.constexpr, HEAD_D: tl.constexpr, DP: tl.constexpr, BLK: tl.constexpr,
                      NSEL: tl.constexpr, NP: tl.constexpr, TQ: tl.constexpr, BW: tl.constexpr,
                      HAS_SEL: tl.constexpr, HAS_POS: tl.constexpr, UBM: tl.constexpr):
        """Top-n selection of ``TQ`` queries of one (batch row, kv head), windows in tiles of ``BW`` merged into a
        running top-n of packed (score, window) keys (:func:`packed_keys`). With ``HAS_SEL``
        the given selection is kept and only its probabilities are computed. With ``HAS_POS`` (serving path)
        the rows are the ``QN`` query rows of ``Q`` at positions ``POS [B, QN]``, else positions ``0..L-1``. With
        ``UBM > 0`` (the dense-tile strategy, query tiles of ``UBM``) it also ORs the selection into the tiles'
        union words (:func:`store_union_words`; ``UNION`` zeroed before the launch)."""
        pid_t = tl.program_id(0)
        bb, gam, seqlen = program_row(LENS, G, L)
        t0 = pid_t * TQ
        tq = t0 + tl.arange(0, TQ)  # [TQ] query rows
        tin = tq < QN
        if HAS_POS:
            t = tl.load(POS + bb * spb + tq * spt, mask=tin, other=0).to(tl.int32)  # [TQ] positions
        else:
            t = tq
        tok = tin & (t < seqlen)
        d = tl.arange(0, DP)
        dmask = d < HEAD_D
        cols = tl.arange(0, NP)
        colok = cols < NSEL
        row_base = ((bb * G + gam) * QN + tq) * NSEL  # [TQ] int64
        qm = group_mean_query(Q, bb, gam, tq, tok, d, dmask, sqb, sqh, sqt, sqd, GQ, TQ, DP)  # [TQ, DP]
        tlim = t // BLK  # window w is eligible for t iff w < t // b (w*b + b - 1 < t)
        if HAS_POS:
            tmax = tl.max(tl.where(tok, t, 0), 0)
        else:  # a tile past the row's length has no window to score (tmax < 0)
            tmax = tl.where(t0 < seqlen, tl.minimum(t0 + TQ, seqlen) - 1, -1)
        w_end = tl.minimum(M, tl.maximum(tmax, 0) // BLK)
        m = tl.full([TQ], -1.0e30, tl.float32)
        ssum = tl.zeros([TQ], dtype=tl.float32)
        ck_base = CK + bb * scb + gam * sch
        if HAS_SEL:
            ai = tl.load(SEL_IN + row_base[:, None] + cols[None, :], mask=tin[:, None] & colok[None, :], other=-1)
            av = tl.zeros([TQ, NP], dtype=tl.float32)  # [TQ, NP] scores of the given windows
            for w0 in range(0, w_end, BW):
                w, z, elig = window_scores(ck_base, qm, w0, M, tok, tlim, d, dmask, scw, scd, scale, BW)
                m, ssum = lse_update(m, ssum, z, elig, tl.max(tl.where(elig, z, -1.0e30), 1))
                for k in tl.static_range(NSEL):
                    gk = tl.sum(tl.where(cols[None, :] == k, ai, 0), 1)
                    zk = tl.sum(tl.where(w[None, :] == gk[:, None], z, 0.0), 1)
                    av = tl.where(cols[None, :] == k, av + zk[:, None], av)
        else:
            # the running top-n as packed keys, by decreasing key; each window tile's top-n is merged into it in
            # the same NSEL max passes (one reduction over the tile per slot), and the tile's first maximum also
            # moves the online logsumexp (one more reduction, the sum): 5 reductions a tile for n = 4
            top = tl.full([TQ, NP], NO_KEY, tl.int64)
            for w0 in range(0, w_end, BW):
                w, z, elig = window_scores(ck_base, qm, w0, M, tok, tlim, d, dmask, scw, scd, scale, BW)
                keys = packed_keys(z, w, elig)
                run = top
                top = tl.full([TQ, NP], NO_KEY, tl.int64)
                for k in tl.static_range(NSEL):
                    tile_max = tl.max(keys, 1)
                    if k == 0:  # the tile's largest eligible score
                        m, ssum = lse_update(m, ssum, z, elig,
                                             tl.where(tile_max != NO_KEY, key_score(tile_max), -1.0e30))
                    best = tl.maximum(tile_max, tl.max(run, 1))
                    top = tl.where(cols[None, :] == k, best[:, None], top)
                    keys = tl.where(keys == best[:, None], NO_KEY, keys)
                    run = tl.where(run == best[:, None], NO_KEY, run)
            ai = (top & 0x7FFFFFFF).to(tl.int32)  # windows are < 2**31
            av = tl.where(top != NO_KEY, key_score(top), float("-inf"))
        has = ssum > 0
        lse = tl.where(has, m + tl.log(tl.where(has, ssum, 1.0)), 0.0)
        if HAS_SEL:
            valid = (ai >= 0) & (ai < tlim[:, None]) & (ai < M) & tok[:, None]
            sel_out = ai
        else:
            valid = top != NO_KEY
            sel_out = tl.where(valid, ai, -1)
        p = tl.exp(tl.where(valid, av - lse[:, None], -1.0e30))
        smask = tin[:, None] & colok[None, :]
        tl.store(SEL + row_base[:, None] + cols[None, :], sel_out, mask=smask)
        tl.store(PSEL + row_base[:, None] + cols[None, :], p, mask=smask)
        tl.store(LSEZ + (bb * G + gam) * QN + tq, lse, mask=tin)
        if UBM > 0:
            store_union_words(UNION, sel_out, tok, bb, gam, G, tq, NQT, NWD, UBM)


    @triton.jit
    def select_bwd_q_kernel(Q, CK, LENS, SEL, PSEL, DPS, LSEZ, DQ,
                             sqb, sqh, sqt, sqd, scb, sch, scw, scd,
                             L, M, H, G, scale,
                             GQ: tl.constexpr, HEAD_D: tl.constexpr, DP: tl.constexpr, BLK: tl.constexpr,
                             NSEL: tl.constexpr, TQ: tl.constexpr, BW: tl.constexpr):
        pid_t = tl.program_id(0)
        bb, gam, seqlen = program_row(LENS, G, L)
        t0 = pid_t * TQ
        if t0 < seqlen:
            t = t0 + tl.arange(0, TQ)
            tok = t < seqlen
            d = tl.arange(0, DP)
            dmask = d < HEAD_D
            qm = group_mean_query(Q, bb, gam, t, tok, d, dmask, sqb, sqh, sqt, sqd, GQ, TQ, DP)
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
                ptr = DQ + bb * sqb + (gam * GQ + hh) * sqh + t[:, None] * sqt + d[None, :] * sqd  # Q's strides
                msk = tok[:, None] & dmask[None, :]
                cur = tl.load(ptr, mask=msk, other=0.0).to(tl.float32)
                tl.store(ptr, (cur + dqm).to(DQ.dtype.element_ty), mask=msk)

    @triton.jit
    def select_bwd_w_kernel(Q, CK, LENS, SEL, PSEL, DPS, LSEZ, DCK,
                             sqb, sqh, sqt, sqd, scb, sch, scw, scd,
                             L, M, G, scale,
                             GQ: tl.constexpr, HEAD_D: tl.constexpr, DP: tl.constexpr, BLK: tl.constexpr,
                             NSEL: tl.constexpr, TQ: tl.constexpr, BW: tl.constexpr):
        pid_w = tl.program_id(0)
        bb, gam, seqlen = program_row(LENS, G, L)
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
            qm = group_mean_query(Q, bb, gam, t, tok, d, dmask, sqb, sqh, sqt, sqd, GQ, TQ, DP)
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

