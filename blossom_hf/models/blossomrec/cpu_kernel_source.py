"""The C source of BlossomRec's CPU inference kernel (compiled and loaded by ``cpu_kernel.py``; design and measurements:
docs/cpu_kernel.md). Kept as a Python string, not a ``.c`` file, so that it travels wherever the model code does:
the installed package, and a Hub repository's remote code (transformers copies only the Python modules a model
file imports)."""

SOURCE = r"""
/* BlossomRec attention for CPU inference, one pass per query (docs/MODEL.md, "Attention layer"; the layout and its
 * measurements: docs/cpu_kernel.md). Built and loaded by cpu_kernel.py, which compiles it with the system C compiler
 * for one (HEAD_DIM, BLOCK, GROUP), with OpenMP linked against torch's own runtime where it can (else without, and
 * then calls it from a thread pool, one share of the work units per call), and calls blossom_attend through ctypes.
 *
 * Per query t of kv head gamma (its GROUP query heads at once), computed in fp32:
 *   selection  the top-n windows w < t / BLOCK by score tau <mean_h q_h, k~_w> (ties to the larger w; every eligible
 *              window when there are at most n), or the given selection;
 *   LTIS       softmax over the own block's keys c*BLOCK .. t and the selected blocks' keys, times V;
 *   STIS       softmax over the keys t - d (d in offsets, t - d >= 0) and the sinks s <= t not reached by an offset;
 *   output     alpha * LTIS + beta * STIS (the gate), zeros for padded queries (t >= length).
 * Work unit: every position: (batch row, kv head, query block), whose BLOCK queries share the eligible windows, so
 * that their selection scores are one small matrix product; given positions: (batch row, kv head, query).
 * The keys are read from a transposed copy K^T [B*G, NB, HEAD_DIM, BLOCK] (a block's BLOCK logits are then one
 * vector per multiply-add) and, for the STIS keys older than block c - 1, from K's rows; V from its rows.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef HEAD_DIM
#error "compile with -DHEAD_DIM=.. -DBLOCK=.. -DGROUP=.."
#endif
#define MAX_SELECTED 64 /* cpu_kernel.py checks n <= MAX_SELECTED */

/* exp(x) for x <= 0 (inputs below -87 give exp(-87) = 1.6e-38, far below a row's largest weight, exp(0) = 1):
 * 2^k * p(r) with k = round(x / ln 2), r = x - k ln 2 (two-part ln 2) and the degree-6 polynomial of Cephes'
 * expf, so that the loop vectorises (libm's expf does not without -ffast-math); the
 * parity tests (tests/test_cpu_kernel.py, 1e-5) include its error. */
static inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    const float k = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
    const float r = x - k * 0.693359375f + k * 2.12194440e-4f;
    float p = 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

#define LANES 16 /* rows are padded to a multiple of LANES entries, so that no loop has a scalar remainder */
#define ROUND_UP(x) (((x) + LANES - 1) / LANES * LANES)

/* rows[h][0 .. count) <- exp(rows[h][j] - top[h]) (top[h]: the row's maximum); total[h] <- their sum. One vector of
 * -1e30 is stored at rows[h][count] first (rows have LANES entries of slack), so that the loop runs over whole
 * vectors: the padding's weights, exp(-87) = 1.6e-38 each, add nothing visible to a total >= 1 and are never read
 * back. The heads are interleaved: GROUP independent exp chains per step. */
static inline void softmax_rows(float *rows, int64_t stride, int64_t count, const float *top, float *total) {
    const int64_t padded = ROUND_UP(count);
    float acc[GROUP][8];
    for (int h = 0; h < GROUP; h++) {
        float *tail = rows + h * stride + count;
        for (int z = 0; z < LANES; z++) tail[z] = -1e30f;
        for (int z = 0; z < 8; z++) acc[h][z] = 0.0f;
    }
    for (int64_t j = 0; j < padded; j += 8)
        for (int h = 0; h < GROUP; h++) {
            float *row = rows + h * stride + j;
#pragma omp simd
            for (int z = 0; z < 8; z++) {
                const float e = exp_nonpositive(row[z] - top[h]);
                row[z] = e;
                acc[h][z] += e;
            }
        }
    for (int h = 0; h < GROUP; h++) {
        float sum = 0.0f;
        for (int z = 0; z < 8; z++) sum += acc[h][z];
        total[h] = sum;
    }
}

/* dst[h][i] = <qs[h], key i of the block tile kt [HEAD_DIM][BLOCK]> for the GROUP (pre-scaled) query heads; where
 * top is given, top[h] = max(top[h], dst[h][i] for i < valid) */
static inline void tile_logits(const float *qs, const float *kt, float *dst, int64_t dst_stride, int64_t valid,
                               float *top) {
    float acc[GROUP][BLOCK];
    for (int h = 0; h < GROUP; h++)
        for (int i = 0; i < BLOCK; i++) acc[h][i] = 0.0f;
    for (int d = 0; d < HEAD_DIM; d++)
        for (int h = 0; h < GROUP; h++) {
            const float a = qs[h * HEAD_DIM + d];
#pragma omp simd
            for (int i = 0; i < BLOCK; i++) acc[h][i] += a * kt[d * BLOCK + i];
        }
    for (int h = 0; h < GROUP; h++)
        for (int i = 0; i < BLOCK; i++) dst[h * dst_stride + i] = acc[h][i];
    if (top)
        for (int h = 0; h < GROUP; h++) {
            float m = top[h];
#pragma omp simd reduction(max : m)
            for (int i = 0; i < BLOCK; i++) m = i < valid && acc[h][i] > m ? acc[h][i] : m;
            top[h] = m;
        }
}

/* tile_logits from K's rows (no transposed copy: the serving path's few queries), block `block` of the row's keys
 * starting at krow, the keys past L (keys > rows) left out of the maximum and set to -1e30 */
static inline void tile_logits_rows(const float *qs, const float *krow, int64_t skt, int64_t block, int64_t rows,
                                    float *dst, int64_t dst_stride, int64_t valid, float *top) {
    for (int64_t i = 0; i < BLOCK; i++) {
        const int64_t key = block * BLOCK + i;
        for (int h = 0; h < GROUP; h++) {
            float a = -1e30f;
            if (key < rows) {
                const float *kr = krow + key * skt;
                a = 0.0f;
#pragma omp simd reduction(+ : a)
                for (int d = 0; d < HEAD_DIM; d++) a += qs[h * HEAD_DIM + d] * kr[d];
            }
            dst[h * dst_stride + i] = a;
            if (top && i < valid && a > top[h]) top[h] = a;
        }
    }
}

/* <qs[h], key> of every head, from a key row */
static inline void row_logits(const float *qs, const float *key, float *dst, int64_t dst_stride) {
    for (int h = 0; h < GROUP; h++) {
        float a = 0.0f;
#pragma omp simd reduction(+ : a)
        for (int d = 0; d < HEAD_DIM; d++) a += qs[h * HEAD_DIM + d] * key[d];
        dst[h * dst_stride] = a;
    }
}

/* out[h][:] = sum_j weights[h][j] * values[j][:] */
static inline void weighted_values(const float *weights, int64_t stride, const float *const *values, int64_t count,
                                   float *out) {
    float acc[GROUP][HEAD_DIM];
    for (int h = 0; h < GROUP; h++)
        for (int d = 0; d < HEAD_DIM; d++) acc[h][d] = 0.0f;
    for (int64_t j = 0; j < count; j++) {
        const float *row = values[j];
        for (int h = 0; h < GROUP; h++) {
            const float p = weights[h * stride + j];
#pragma omp simd
            for (int d = 0; d < HEAD_DIM; d++) acc[h][d] += p * row[d];
        }
    }
    for (int h = 0; h < GROUP; h++)
        for (int d = 0; d < HEAD_DIM; d++) out[h * HEAD_DIM + d] = acc[h][d];
}

/* Selection scores of `rows` queries (their head means qm [rows][HEAD_DIM]) against the windows w < eligible:
 * scores[i * windows + w] = scaling * <qm[i], k~_w>, k~ given by rows (ck [windows][HEAD_DIM]). */
static void selection_scores(const float *qm, int64_t rows, const float *ck, int64_t windows, int64_t eligible,
                             float scaling, float *scores) {
    for (int64_t w0 = 0; w0 < eligible; w0 += 16) {
        const int64_t width = eligible - w0 < 16 ? eligible - w0 : 16;
        float col[HEAD_DIM][16];
        for (int d = 0; d < HEAD_DIM; d++)
            for (int z = 0; z < 16; z++) col[d][z] = z < width ? ck[(w0 + z) * HEAD_DIM + d] : 0.0f;
        if (rows == BLOCK) {
            float acc[BLOCK][16];
            for (int i = 0; i < BLOCK; i++)
                for (int z = 0; z < 16; z++) acc[i][z] = 0.0f;
            for (int d = 0; d < HEAD_DIM; d++)
                for (int i = 0; i < BLOCK; i++) {
                    const float a = qm[i * HEAD_DIM + d];
#pragma omp simd
                    for (int z = 0; z < 16; z++) acc[i][z] += a * col[d][z];
                }
            for (int i = 0; i < BLOCK; i++)
                for (int64_t z = 0; z < width; z++) scores[i * windows + w0 + z] = acc[i][z] * scaling;
        } else {
            for (int64_t i = 0; i < rows; i++) {
                float acc[16] = {0};
                for (int d = 0; d < HEAD_DIM; d++) {
                    const float a = qm[i * HEAD_DIM + d];
#pragma omp simd
                    for (int z = 0; z < 16; z++) acc[z] += a * col[d][z];
                }
                for (int64_t z = 0; z < width; z++) scores[i * windows + w0 + z] = acc[z] * scaling;
            }
        }
    }
}

/* (value, w) into the list best/blocks, sorted by decreasing value, at free (or displaced) slot p: it moves up past
 * strictly smaller values only, so that among equal values the one inserted first (the larger w) stays first */
static inline void insert_descending(float *best, int64_t *blocks, int64_t p, float value, int64_t w) {
    while (p > 0 && best[p - 1] < value) {
        best[p] = best[p - 1];
        blocks[p] = blocks[p - 1];
        p--;
    }
    best[p] = value;
    blocks[p] = w;
}

/* The n largest of scores[0 .. eligible) by decreasing value, ties to the larger index (scanned from the top,
 * replaced only by a strictly larger score); eligible > n. Returns n. */
static inline int64_t top_windows(const float *scores, int64_t eligible, int64_t n, int64_t *blocks) {
    float best[MAX_SELECTED];
    for (int64_t w = eligible - 1, count = 0; w >= eligible - n; w--, count++)
        insert_descending(best, blocks, count, scores[w], w);
    for (int64_t w = eligible - n - 1; w >= 0; w--)
        if (scores[w] > best[n - 1]) insert_descending(best, blocks, n - 1, scores[w], w);
    return n;
}

/* Units [unit_begin, unit_end). Strides are in elements; the last dimension of every tensor is contiguous.
 *   q [B, H, Q, HEAD_DIM], k and v [B, G, L, HEAD_DIM], gate [B, H, Q, 2]: strides of their first three dims;
 *   kt [B*G, NB, HEAD_DIM, BLOCK] contiguous (K^T block tiles, zero past L), or NULL (logits from K's rows);
 *   ck [B*G, windows, HEAD_DIM] contiguous (the compressed keys), or NULL with `selected` given;
 *   selected [B*G, Q, n] contiguous (-1 = empty slot) or NULL (rank the windows here);
 *   positions [B, Q] contiguous (the queries' positions) or NULL (query i is position i, Q = L);
 *   lengths [B] (real items per row; queries at or past it are written as zeros);
 *   out [B, Q, H, HEAD_DIM] contiguous. */
#define ARGUMENTS                                                                                                     \
    const float *q, int64_t sqb, int64_t sqh, int64_t sqt, const float *k, int64_t skb, int64_t skg, int64_t skt,     \
        const float *v, int64_t svb, int64_t svg, int64_t svt, const float *kt, const float *ck,                      \
        const int64_t *selected, const int64_t *positions, const int64_t *lengths, const float *gate, int64_t sgb,    \
        int64_t sgh, int64_t sgt, float *out, int64_t G, int64_t Q, int64_t L, int64_t n, int64_t windows,            \
        const int64_t *offsets, int64_t num_offsets, int64_t sinks, float scaling
#define PASS                                                                                                          \
    q, sqb, sqh, sqt, k, skb, skg, skt, v, svb, svg, svt, kt, ck, selected, positions, lengths, gate, sgb, sgh, sgt,  \
        out, G, Q, L, n, windows, offsets, num_offsets, sinks, scaling

static void attend_units(int64_t unit_begin, int64_t unit_end, ARGUMENTS) {
    const int64_t H = G * GROUP;
    const int64_t NB = (L + BLOCK - 1) / BLOCK;
    /* per head: tile c-1, then from BLOCK on the fine keys (tile c, the n selected tiles), padded */
    const int64_t ltis_stride = ROUND_UP(BLOCK + (n + 1) * BLOCK) + LANES;
    const int64_t stis_stride = ROUND_UP(num_offsets + sinks) + LANES;
    const int64_t units_per_row = positions ? Q : (Q + BLOCK - 1) / BLOCK;
    float *work = (float *)malloc(sizeof(float) * (GROUP * ltis_stride + GROUP * stis_stride + 3 * GROUP * HEAD_DIM +
                                                   BLOCK * HEAD_DIM + BLOCK * (windows > 0 ? windows : 1)));
    const float **rows = (const float **)malloc(sizeof(float *) * (ltis_stride + stis_stride));
    if (!work || !rows) { /* cannot happen for the sizes cpu_kernel.py passes; leave `out` as it is */
        free(work);
        free(rows);
        return;
    }
    float *ltis = work, *stis = ltis + GROUP * ltis_stride, *qs = stis + GROUP * stis_stride;
    float *ltis_out = qs + GROUP * HEAD_DIM, *stis_out = ltis_out + GROUP * HEAD_DIM;
    float *qm = stis_out + GROUP * HEAD_DIM, *scores = qm + BLOCK * HEAD_DIM;
    const float **stis_rows = rows + ltis_stride;
    int64_t blocks[MAX_SELECTED];

    for (int64_t unit = unit_begin; unit < unit_end; unit++) {
        const int64_t bg = unit / units_per_row, b = bg / G, gamma = bg % G;
        const int64_t first = positions ? unit % units_per_row : (unit % units_per_row) * BLOCK;
        const int64_t last = positions ? first + 1 : (first + BLOCK < Q ? first + BLOCK : Q);
        const int64_t length = lengths[b];
        const float *qrow = q + b * sqb + gamma * GROUP * sqh, *grow = gate + b * sgb + gamma * GROUP * sgh;
        const float *krow = k + b * skb + gamma * skg, *vrow = v + b * svb + gamma * svg;
        const float *ktile = kt ? kt + bg * NB * HEAD_DIM * BLOCK : NULL;
        /* every query of the unit has the same eligible windows w < t / BLOCK */
        const int64_t t0 = positions ? positions[b * Q + first] : first;
        const int64_t eligible = t0 / BLOCK < windows ? t0 / BLOCK : windows;
        const int ranked = !selected && ck && eligible > n && t0 < length;
        if (ranked) {
            for (int64_t i = 0; i < last - first; i++)
                for (int d = 0; d < HEAD_DIM; d++) {
                    float a = 0.0f;
                    for (int h = 0; h < GROUP; h++) a += qrow[h * sqh + (first + i) * sqt + d];
                    qm[i * HEAD_DIM + d] = a / GROUP;
                }
            selection_scores(qm, last - first, ck + bg * windows * HEAD_DIM, windows, eligible, scaling, scores);
        }
        for (int64_t qi = first; qi < last; qi++) {
            const int64_t t = positions ? positions[b * Q + qi] : qi;
            float *dst = out + ((b * Q + qi) * H + gamma * GROUP) * HEAD_DIM;
            if (t >= length || t < 0 || t >= L) { /* a padded query: zeros */
                memset(dst, 0, sizeof(float) * GROUP * HEAD_DIM);
                continue;
            }
            const int64_t c = t / BLOCK;
            for (int h = 0; h < GROUP; h++)
                for (int d = 0; d < HEAD_DIM; d++) qs[h * HEAD_DIM + d] = qrow[h * sqh + qi * sqt + d] * scaling;
            /* ---- the selected blocks ---- */
            int64_t num_selected = 0;
            if (selected) {
                for (int64_t s = 0; s < n; s++) {
                    const int64_t j = selected[(bg * Q + qi) * n + s];
                    if (j >= 0 && j < NB) blocks[num_selected++] = j;
                }
            } else if (ranked) {
                num_selected = top_windows(scores + (qi - first) * windows, eligible, n, blocks);
            } else {
                for (int64_t w = eligible - 1; w >= 0 && num_selected < n; w--) blocks[num_selected++] = w;
            }
            /* ---- tiles c-1 and c (the own block, and the STIS keys from (c-1)*BLOCK on) ---- */
            float ltis_top[GROUP], stis_top[GROUP];
            for (int h = 0; h < GROUP; h++) ltis_top[h] = stis_top[h] = -1e30f;
            const int64_t near = c > 0 ? (c - 1) * BLOCK : 0;
            const int64_t own = t - c * BLOCK + 1; /* the own block's keys c*BLOCK .. t */
            if (ktile) {
                if (c > 0) tile_logits(qs, ktile + (c - 1) * HEAD_DIM * BLOCK, ltis, ltis_stride, 0, NULL);
                tile_logits(qs, ktile + c * HEAD_DIM * BLOCK, ltis + BLOCK, ltis_stride, own, ltis_top);
            } else {
                if (c > 0) tile_logits_rows(qs, krow, skt, c - 1, L, ltis, ltis_stride, 0, NULL);
                tile_logits_rows(qs, krow, skt, c, L, ltis + BLOCK, ltis_stride, own, ltis_top);
            }
            const int64_t near_column = c > 0 ? 0 : BLOCK; /* column of key `near` in `ltis` */
            /* ---- LTIS: the own block's keys (at ltis[BLOCK ..]), then the selected blocks' ---- */
            float *fine = ltis + BLOCK;
            int64_t num_fine = own;
            for (int64_t i = 0; i < own; i++) rows[i] = vrow + (c * BLOCK + i) * svt;
            for (int64_t s = 0; s < num_selected; s++) {
                const int64_t j = blocks[s];
                const int64_t keys = L - j * BLOCK < BLOCK ? L - j * BLOCK : BLOCK;
                /* written in place (the columns past `keys`, if any, are overwritten next) */
                if (ktile)
                    tile_logits(qs, ktile + j * HEAD_DIM * BLOCK, fine + num_fine, ltis_stride, keys, ltis_top);
                else
                    tile_logits_rows(qs, krow, skt, j, L, fine + num_fine, ltis_stride, keys, ltis_top);
                for (int64_t i = 0; i < keys; i++) rows[num_fine + i] = vrow + (j * BLOCK + i) * svt;
                num_fine += keys;
            }
            /* ---- STIS logits: near keys from tiles c-1 and c (columns < BLOCK + own are intact), far ones from
             * K's rows ---- */
            int64_t num_stis = 0;
            for (int64_t o = 0; o < num_offsets; o++) {
                const int64_t key = t - offsets[o];
                if (key < 0) break; /* offsets ascend */
                if (key >= near) {
                    for (int h = 0; h < GROUP; h++)
                        stis[h * stis_stride + num_stis] = ltis[h * ltis_stride + near_column + key - near];
                } else {
                    row_logits(qs, krow + key * skt, stis + num_stis, stis_stride);
                }
                stis_rows[num_stis++] = vrow + key * svt;
            }
            for (int64_t s = 0; s < sinks && s <= t; s++) {
                int covered = 0;
                for (int64_t o = 0; o < num_offsets && !covered; o++) covered = t - s == offsets[o];
                if (covered) continue;
                row_logits(qs, krow + s * skt, stis + num_stis, stis_stride);
                stis_rows[num_stis++] = vrow + s * svt;
            }
            for (int h = 0; h < GROUP; h++)
                for (int64_t j = 0; j < num_stis; j++) {
                    const float x = stis[h * stis_stride + j];
                    stis_top[h] = x > stis_top[h] ? x : stis_top[h];
                }
            float ltis_total[GROUP], stis_total[GROUP];
            softmax_rows(fine, ltis_stride, num_fine, ltis_top, ltis_total);
            weighted_values(fine, ltis_stride, rows, num_fine, ltis_out);
            softmax_rows(stis, stis_stride, num_stis, stis_top, stis_total);
            weighted_values(stis, stis_stride, stis_rows, num_stis, stis_out);
            for (int h = 0; h < GROUP; h++) {
                const float alpha = grow[h * sgh + qi * sgt] / ltis_total[h];
                const float beta = grow[h * sgh + qi * sgt + 1] / stis_total[h];
                for (int d = 0; d < HEAD_DIM; d++)
                    dst[h * HEAD_DIM + d] = alpha * ltis_out[h * HEAD_DIM + d] + beta * stis_out[h * HEAD_DIM + d];
            }
        }
    }
    free(work);
    free(rows);
}

/* kt[bg, j, d, i] = k[b, g, j*BLOCK + i, d] (zero past L): the transposed block tiles blossom_attend reads, in one
 * pass (k [B, G, L, HEAD_DIM] with the strides of its first three dims, kt [B*G, NB, HEAD_DIM, BLOCK] contiguous) */
void blossom_tiles(int64_t threads, const float *k, int64_t skb, int64_t skg, int64_t skt, float *kt, int64_t B,
                   int64_t G, int64_t L) {
    const int64_t NB = (L + BLOCK - 1) / BLOCK, tiles = B * G * NB;
#ifdef _OPENMP
#pragma omp parallel for num_threads((int)threads) schedule(static) if (threads > 1 && tiles >= 64)
#endif
    for (int64_t tile = 0; tile < tiles; tile++) {
        const int64_t j = tile % NB, g = (tile / NB) % G, b = tile / (NB * G);
        float *dst = kt + tile * HEAD_DIM * BLOCK;
        for (int64_t i = 0; i < BLOCK; i++) {
            const int64_t key = j * BLOCK + i;
            const float *src = k + b * skb + g * skg + key * skt;
            for (int d = 0; d < HEAD_DIM; d++) dst[d * BLOCK + i] = key < L ? src[d] : 0.0f;
        }
    }
    (void)threads;
}

/* 1 when built with OpenMP (cpu_kernel.py links the OpenMP runtime torch itself loaded, so that this kernel's
 * threads are torch's: no second thread pool competing with torch's spinning workers) */
int blossom_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* Units [unit_begin, unit_end) on `threads` threads (OpenMP builds; otherwise the caller's thread only). */
void blossom_attend(int64_t unit_begin, int64_t unit_end, int64_t threads, ARGUMENTS) {
#ifdef _OPENMP
    const int64_t units = unit_end - unit_begin;
    if (threads > 1 && units > 1) {
        /* chunks of units handed out dynamically: a unit's cost grows with its query block (the selection scores) */
        const int64_t chunk = units / (threads * 8) > 1 ? units / (threads * 8) : 1;
        const int64_t chunks = (units + chunk - 1) / chunk;
#pragma omp parallel for num_threads((int)threads) schedule(dynamic, 1)
        for (int64_t i = 0; i < chunks; i++) {
            const int64_t begin = unit_begin + i * chunk;
            attend_units(begin, begin + chunk < unit_end ? begin + chunk : unit_end, PASS);
        }
        return;
    }
#endif
    (void)threads;
    attend_units(unit_begin, unit_end, PASS);
}

/* ---- two element-wise pieces of the layer, for CPU inference (each one pass instead of several PyTorch ops) ---- */

/* RoPE, half-split: out = [x1 c1 - x2 s1, x2 c2 + x1 s2] with every product and sum rounded to fp32 on its own, as
 * the PyTorch ops do it (layers_blossomrec.apply_rotary_reference): the same bits. x [B, H, T, HEAD_DIM] (strides of
 * its first three dims; the last contiguous), cos/sin [T, HEAD_DIM] or [B, 1, T, HEAD_DIM] (strides scb (0 for
 * [T, HEAD_DIM]) and sct), out [B, H, T, HEAD_DIM] contiguous. */
#if defined(__clang__)
#define NO_CONTRACT
#else
#define NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#endif
NO_CONTRACT static void rope_rows(int64_t r0, int64_t r1, const float *x, int64_t sxb, int64_t sxh, int64_t sxt,
                                  const float *cs, const float *sn, int64_t scb, int64_t sct, float *out, int64_t H,
                                  int64_t T) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    const int half = HEAD_DIM / 2;
    for (int64_t r = r0; r < r1; r++) { /* r = (b * H + h) * T + t */
        const int64_t t = r % T, h = (r / T) % H, b = r / (T * H);
        const float *xr = x + b * sxb + h * sxh + t * sxt;
        const float *c = cs + b * scb + t * sct, *s = sn + b * scb + t * sct;
        float *o = out + r * HEAD_DIM;
#pragma omp simd
        for (int d = 0; d < half; d++) {
            const float a = xr[d] * c[d], bb = xr[d + half] * s[d];
            o[d] = a - bb;
        }
#pragma omp simd
        for (int d = 0; d < half; d++) {
            const float a = xr[d + half] * c[d + half], bb = xr[d] * s[d + half];
            o[d + half] = a + bb;
        }
    }
}

void blossom_rope(int64_t threads, const float *x, int64_t sxb, int64_t sxh, int64_t sxt, const float *cs,
                  const float *sn, int64_t scb, int64_t sct, float *out, int64_t B, int64_t H, int64_t T) {
    const int64_t rows = B * H * T;
#ifdef _OPENMP
    if (threads > 1 && rows >= 1024) {
        const int64_t chunk = 256;
#pragma omp parallel for num_threads((int)threads) schedule(static)
        for (int64_t r = 0; r < rows; r += chunk)
            rope_rows(r, r + chunk < rows ? r + chunk : rows, x, sxb, sxh, sxt, cs, sn, scb, sct, out, H, T);
        return;
    }
#endif
    (void)threads;
    rope_rows(0, rows, x, sxb, sxh, sxt, cs, sn, scb, sct, out, H, T);
}

/* The LTIS compressor's input: out[b, g, w] = flatten(window keys + P[g]), window w = positions
 * w*block - (window - block) .. w*block + block - 1, a position before 0 or at/after the row's length contributing a
 * zero key (attention_patterns.ltis_window_keys; the sum is one fp32 addition, as there: the same bits).
 * key [B, G, L, HEAD_DIM] (strides; last contiguous), position [G, window, HEAD_DIM] contiguous,
 * out [B, G, M, window * HEAD_DIM] contiguous. */
void blossom_windows(int64_t threads, const float *key, int64_t skb, int64_t skg, int64_t skt, const int64_t *lengths,
                     const float *position, float *out, int64_t B, int64_t G, int64_t L, int64_t M, int64_t block,
                     int64_t window) {
    const int64_t rows = B * G * M;
#ifdef _OPENMP
#pragma omp parallel for num_threads((int)threads) schedule(static) if (threads > 1 && rows >= 64)
#endif
    for (int64_t r = 0; r < rows; r++) {
        const int64_t w = r % M, g = (r / M) % G, b = r / (M * G);
        const int64_t length = lengths[b] < L ? lengths[b] : L;
        const int64_t first = w * block - (window - block);
        for (int64_t j = 0; j < window; j++) {
            const int64_t pos = first + j;
            const float *pr = position + (g * window + j) * HEAD_DIM;
            float *o = out + (r * window + j) * HEAD_DIM;
            if (pos >= 0 && pos < length) {
                const float *kr = key + b * skb + g * skg + pos * skt;
#pragma omp simd
                for (int d = 0; d < HEAD_DIM; d++) o[d] = kr[d] + pr[d];
            } else {
#pragma omp simd
                for (int d = 0; d < HEAD_DIM; d++) o[d] = 0.0f + pr[d];
            }
        }
    }
    (void)threads;
}
"""
