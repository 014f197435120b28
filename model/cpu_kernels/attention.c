/* Fused float32 attention for the CPU: scores, mask, softmax and the weighted sum in one pass, without ever
 * materialising the [heads, T, T] score tensor; over a prompt's own keys (the vision encoder) or over the paged
 * KV pool of the language model (prefill and decode). Paddle's CPU build spends most of a prompt's attention time in
 * that tensor (scaling, masking and a scalar-exp softmax over T x T elements); here the exponentials are
 * vectorised and the masked half of a causal prompt is never computed.
 *
 * Threads come from OpenMP (see cpu_kernels/__init__.py for which runtime). Every tensor is float32 with a
 * contiguous last (head_dim) axis; the other axes are given as element strides.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "vec.h"

#define QB 4 /* queries per register tile */

static inline float hmax8(v8 x) {
    float m = x[0];
    for (int i = 1; i < 8; i++) m = x[i] > m ? x[i] : m;
    return m;
}

static inline float hsum8(v8 x) {
    return ((x[0] + x[4]) + (x[1] + x[5])) + ((x[2] + x[6]) + (x[3] + x[7]));
}

/* row[0..n) <- softmax numerators exp(row - max) over the first `live` entries, zero after; returns their sum.
 * n is a multiple of 8; entries past `live` may hold anything (even NaN) on entry. */
static float exp_row(float *row, int live, int n) {
    const int full = live / 8 * 8;
    v8 vm = splat(-3.0e38f);
    for (int j = 0; j < full; j += 8) {
        const v8 s = load8(row + j);
        vm = select8(s > vm, s, vm);
    }
    float m = hmax8(vm);
    for (int j = full; j < live; j++) m = row[j] > m ? row[j] : m;
    const v8 vmax = splat(m);
    v8 sum = splat(0.0f);
    for (int j = 0; j < full; j += 8) {
        const v8 e = exp8(load8(row + j) - vmax);
        store8(row + j, e);
        sum += e;
    }
    int zero_from = full;
    if (full < live) { /* the last, partial vector: lanes past `live` become 0 */
        const v8 e = select8((v8i){0, 1, 2, 3, 4, 5, 6, 7} < live - full, exp8(load8(row + full) - vmax), splat(0.0f));
        store8(row + full, e);
        sum += e;
        zero_from = full + 8;
    }
    if (zero_from < n) memset(row + zero_from, 0, sizeof(float) * (n - zero_from));
    return hsum8(sum);
}

/* Which keys each query of a row attends, for the core below. Row b: queries t < qfirst[b] are padding (their
 * output is the value at key t with pad_copy, zeros otherwise); keys start at kfirst[b]; a causal query t sees keys
 * up to t + shift[b] (inclusive), a full one keys up to kend[b] (exclusive). keys_max bounds every row's key count. */
typedef struct {
    const int64_t *qfirst, *kfirst, *shift, *kend;
    int causal, pad_copy, keys_max;
} rows_t;

static inline int key_end(const rows_t *r, int b, int t) { /* exclusive */
    return r->causal ? t + 1 + (int)r->shift[b] : (int)r->kend[b];
}

static inline void pad_output(const rows_t *r, float *dst, const float *vrow, int D) {
    if (r->pad_copy) memcpy(dst, vrow, sizeof(float) * D);
    else memset(dst, 0, sizeof(float) * D);
}

/* The core over keys and values laid out [B, keys, KVH, D] with strides kv_b, kv_t:
 *   q    [B, T, H, D]   strides q_b, q_t (elements); head h at +h*D
 *   out  [B, T, H, D]   contiguous; query head h reads key/value head h / (H / KVH)
 */
#ifdef JANUS_WITH_MKL
/* MKL's CBLAS (libmklml_intel, shipped in the paddle wheel); declared here, as the wheel has no headers */
enum { CBLAS_ROW_MAJOR = 101, CBLAS_NO_TRANS = 111, CBLAS_TRANS = 112 };
void cblas_sgemm(int layout, int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                 const float *b, int ldb, float beta, float *c, int ldc);
int MKL_Set_Num_Threads_Local(int threads);

/* Blocks of 64 queries: scores = Q K^T and out = P V are two small GEMMs on strided rows (no packing), with the
 * masked softmax in between; the causal part past a block's last query is never computed. Each thread runs MKL
 * single-threaded on its own blocks, with its scores in a cache-line-aligned buffer: MKL's order of summation can
 * follow the alignment of its operands, and the blocks are the same whatever the thread count, so a block's result
 * does not depend on which thread (or how many) computed it. */
static void attend(const float *q, const float *k, const float *v, float *out, int B, int T, int H, int KVH, int D,
                   int64_t q_b, int64_t q_t, int64_t kv_b, int64_t kv_t, const rows_t *r, float scale) {
    enum { BLOCK = 64 };
    const int G = H / KVH, blocks = (T + BLOCK - 1) / BLOCK, padded = (r->keys_max + 7) / 8 * 8;
#pragma omp parallel
    {
        const int previous = MKL_Set_Num_Threads_Local(1);
        float *scores = aligned_alloc(64, sizeof(float) * BLOCK * (padded > 8 ? padded : 8)); /* 256 B multiple */
        float sums[BLOCK];
#pragma omp for schedule(monotonic: dynamic) collapse(2)
        for (int bh = 0; bh < B * H; bh++) {
            for (int blk = 0; blk < blocks; blk++) {
                const int b = bh / H, h = bh % H, kh = h / G, first = (int)r->kfirst[b];
                const int t1 = (blk + 1) * BLOCK < T ? (blk + 1) * BLOCK : T;
                const float *vbase = v + b * kv_b + (int64_t)kh * D;
                int t0 = blk * BLOCK;
                for (; t0 < t1 && t0 < r->qfirst[b]; t0++)
                    pad_output(r, out + (((int64_t)b * T + t0) * H + h) * D, vbase + t0 * kv_t, D);
                if (t0 == t1) continue;
                const int nq = t1 - t0, n = key_end(r, b, t1 - 1) - first, np = (n + 7) / 8 * 8;
                cblas_sgemm(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_TRANS, nq, n, D, scale,
                            q + b * q_b + t0 * q_t + (int64_t)h * D, (int)q_t,
                            k + b * kv_b + first * kv_t + (int64_t)kh * D, (int)kv_t, 0.0f, scores, np);
                for (int i = 0; i < nq; i++)
                    sums[i] = exp_row(scores + (int64_t)i * np, key_end(r, b, t0 + i) - first, np);
                float *dst = out + (((int64_t)b * T + t0) * H + h) * D;
                cblas_sgemm(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_NO_TRANS, nq, D, n, 1.0f, scores, np,
                            vbase + first * kv_t, (int)kv_t, 0.0f, dst, H * D);
                for (int i = 0; i < nq; i++) {
                    const float inv = 1.0f / sums[i];
                    for (int d = 0; d < D; d++) dst[(int64_t)i * H * D + d] *= inv;
                }
            }
        }
        free(scores);
        MKL_Set_Num_Threads_Local(previous);
    }
}

#else /* no MKL: register-tiled loops over packed keys and values */

/* out[q][0..16) = sum_t a[q * a_stride + t] * b[t * b_stride + 0..16) for the QB rows of a tile (the first nq are
 * stored): sixteen columns by QB rows of accumulators stay in registers, and each row of b loaded feeds 2 * QB
 * FMAs. Both products of attention are this shape: scores (a = queries, b = keys transposed) and the weighted
 * sum (a = probabilities, b = values). */
static inline void tile_update(const float *a, int a_stride, const float *b, int64_t b_stride, int count, float *out,
                               int out_stride, int nq) {
    v8 lo[QB] = {0}, hi[QB] = {0};
    for (int t = 0; t < count; t++) {
        const v8 b0 = load8(b + t * b_stride), b1 = load8(b + t * b_stride + 8);
        for (int q = 0; q < QB; q++) {
            const v8 w = splat(a[q * a_stride + t]);
            lo[q] += w * b0;
            hi[q] += w * b1;
        }
    }
    for (int q = 0; q < nq; q++) {
        store8(out + q * out_stride, lo[q]);
        store8(out + q * out_stride + 8, hi[q]);
    }
}

/* acc[QB][D] = sum_j p[q][j] * V[j] for the tile's queries; V rows `v_stride` apart. D is a multiple of 8. */
static void weighted_sum(const float *p, int p_stride, int nq, const float *v, int64_t v_stride, int n, int D,
                         float *acc) {
    int d = 0;
    for (; d + 16 <= D; d += 16) tile_update(p, p_stride, v + d, v_stride, n, acc + d, D, nq);
    for (; d < D; d += 8) { /* an 8-wide tail */
        v8 a0[QB] = {0};
        for (int j = 0; j < n; j++) {
            const v8 v0 = load8(v + j * v_stride + d);
            for (int q = 0; q < QB; q++) a0[q] += splat(p[q * p_stride + j]) * v0;
        }
        for (int q = 0; q < nq; q++) store8(acc + q * D + d, a0[q]);
    }
}

static void attend(const float *q, const float *k, const float *v, float *out, int B, int T, int H, int KVH, int D,
                   int64_t q_b, int64_t q_t, int64_t kv_b, int64_t kv_t, const rows_t *r, float scale) {
    const int G = H / KVH, block = 32;
    const int blocks = (T + block - 1) / block;
    const int padded = (r->keys_max + 15) / 16 * 16;
    /* Packed once per (row, key head), key j of row b at index j - kfirst[b]: keys transposed [D][padded] (a
     * load gives one dimension of 8 keys), values [padded][D] (one head's rows contiguous, not H*D apart). */
    float *keys_t = malloc(sizeof(float) * B * KVH * D * padded);
    float *values_p = malloc(sizeof(float) * B * KVH * D * padded);
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int bk = 0; bk < B * KVH; bk++) {
            const int b = bk / KVH, kh = bk % KVH, first = (int)r->kfirst[b];
            const int last = r->causal ? key_end(r, b, T - 1) : (int)r->kend[b];
            float *kdst = keys_t + (int64_t)bk * D * padded, *vdst = values_p + (int64_t)bk * D * padded;
            for (int j = first; j < last; j++) {
                const float *krow = k + b * kv_b + j * kv_t + (int64_t)kh * D;
                for (int d = 0; d < D; d++) kdst[d * padded + j - first] = krow[d];
                memcpy(vdst + (int64_t)(j - first) * D, v + b * kv_b + j * kv_t + (int64_t)kh * D, sizeof(float) * D);
            }
            for (int d = 0; d < D; d++)
                for (int j = last - first; j < padded; j++) kdst[d * padded + j] = 0.0f;
        }
        float *scores = malloc(sizeof(float) * QB * padded);
        float *acc = malloc(sizeof(float) * QB * D);
        float *qs = malloc(sizeof(float) * QB * D);
#pragma omp for schedule(monotonic: dynamic) collapse(2)
        for (int bh = 0; bh < B * H; bh++) {
            for (int blk = 0; blk < blocks; blk++) {
                const int b = bh / H, h = bh % H, kh = h / G;
                const int first = (int)r->kfirst[b], qfirst = (int)r->qfirst[b];
                const int t0 = blk * block, t1 = t0 + block < T ? t0 + block : T;
                const int hi = key_end(r, b, t1 - 1); /* keys [first, hi) cover every query of the block */
                const int n = hi > first ? hi - first : 0, np = (n + 15) / 16 * 16;
                const float *kt = keys_t + ((int64_t)b * KVH + kh) * D * padded;
                const float *vp = values_p + ((int64_t)b * KVH + kh) * D * padded;
                const float *vbase = v + b * kv_b + (int64_t)kh * D;
                for (int tq = t0; tq < t1; tq += QB) {
                    const int nq = tq + QB <= t1 ? QB : t1 - tq;
                    for (int i = 0; i < QB; i++) {
                        const float *row = q + b * q_b + (int64_t)(tq + (i < nq ? i : 0)) * q_t + (int64_t)h * D;
                        for (int d = 0; d < D; d++) qs[i * D + d] = row[d] * scale;
                    }
                    for (int j = 0; j < np; j += 16) /* scores: 16 keys x QB queries per tile */
                        tile_update(qs, D, kt + j, padded, D, scores + j, padded, QB);
                    int live_max = 0;
                    float sums[QB];
                    for (int i = 0; i < QB; i++) {
                        const int t = tq + i;
                        int live = (i >= nq || t < qfirst) ? 0 : key_end(r, b, t) - first;
                        if (live > 0) sums[i] = exp_row(scores + i * padded, live, np);
                        else memset(scores + i * padded, 0, sizeof(float) * np);
                        live_max = live > live_max ? live : live_max;
                    }
                    weighted_sum(scores, padded, nq, vp, D, live_max, D, acc);
                    for (int i = 0; i < nq; i++) {
                        const int t = tq + i;
                        float *dst = out + (((int64_t)b * T + t) * H + h) * D;
                        if (t < qfirst) {
                            pad_output(r, dst, vbase + t * kv_t, D);
                        } else {
                            const float inv = 1.0f / sums[i];
                            for (int d = 0; d < D; d++) dst[d] = acc[i * D + d] * inv;
                        }
                    }
                }
            }
        }
        free(scores);
        free(acc);
        free(qs);
    }
    free(keys_t);
    free(values_p);
}

#endif

/* Attention over a prompt whose keys and values are the call's own.
 *   q    [B, T, H, D]   strides q_b, q_t (elements); head h at +h*D
 *   k, v [B, T, KVH, D] strides kv_b, kv_t (same for both)
 *   out  [B, T, H, D]   contiguous
 *   start[b]: row b's first real token (left padding before it); NULL means 0. Keys before it are never
 *   attended; a padding query attends to itself only (its output is discarded, but stays finite).
 *   causal: query t sees keys up to t; otherwise all T.
 */
void janus_prompt_attention(const float *q, const float *k, const float *v, float *out, int B, int T, int H,
                            int KVH, int D, int64_t q_b, int64_t q_t, int64_t kv_b, int64_t kv_t,
                            const int64_t *start, int causal, float scale) {
    int64_t *first = calloc((size_t)B * 3, sizeof(int64_t)), *shift = first + B, *end = first + 2 * B;
    for (int b = 0; b < B; b++) {
        first[b] = start ? start[b] : 0;
        end[b] = T;
    }
    const rows_t rows = {first, first, shift, end, causal, 1, T};
    attend(q, k, v, out, B, T, H, KVH, D, q_b, q_t, kv_b, kv_t, &rows, scale);
    free(first);
}

/* Paged keys and values: a pool of blocks [blocks, KVH, block_size, D]; row b's position j lives in block
 * tables[b * table_stride + j / block_size] at offset j % block_size. */
static inline int64_t pool_row(const int64_t *table, int j, int KVH, int kh, int block_size, int D) {
    return ((table[j / block_size] * KVH + kh) * block_size + j % block_size) * D;
}

/* T new positions per row whose keys and values are already written into the pool, attending causally to
 * everything before them too.
 *   q    [B, T, H, D] strides q_b, q_t; left-padded: row b's real queries are t >= pad[b] (padding queries give 0)
 *   cached[b]: positions of row b before this call; query t sits at position cached[b] + t - pad[b]
 *   out  [B, T, H, D] contiguous
 * The row's keys are gathered into a contiguous scratch first, then attended like a prompt. */
void janus_paged_prompt_attention(const float *q, const float *k_pool, const float *v_pool, float *out, int B, int T,
                                  int H, int KVH, int D, int64_t q_b, int64_t q_t, int block_size,
                                  const int64_t *tables, int64_t table_stride, const int64_t *cached,
                                  const int64_t *pad, float scale) {
    int64_t *zero = calloc((size_t)B * 2, sizeof(int64_t)), *shift = zero + B;
    int L = 1;
    for (int b = 0; b < B; b++) {
        shift[b] = cached[b] - pad[b];
        const int length = (int)(cached[b] + T - pad[b]);
        L = length > L ? length : L;
    }
    const int64_t kv_t = (int64_t)KVH * D, kv_b = (int64_t)L * kv_t;
    float *keys = malloc(sizeof(float) * B * kv_b), *values = malloc(sizeof(float) * B * kv_b);
#pragma omp parallel for schedule(static) collapse(2)
    for (int b = 0; b < B; b++) {
        for (int kh = 0; kh < KVH; kh++) {
            const int length = (int)(cached[b] + T - pad[b]);
            const int64_t *table = tables + b * table_stride;
            for (int j = 0; j < length; j++) {
                const int64_t src = pool_row(table, j, KVH, kh, block_size, D), dst = b * kv_b + j * kv_t + kh * D;
                memcpy(keys + dst, k_pool + src, sizeof(float) * D);
                memcpy(values + dst, v_pool + src, sizeof(float) * D);
            }
        }
    }
    const rows_t rows = {pad, zero, shift, NULL, 1, 0, L};
    attend(q, keys, values, out, B, T, H, KVH, D, q_b, q_t, kv_b, kv_t, &rows, scale);
    free(keys);
    free(values);
    free(zero);
}

/* scores[i] = (q . key_i) * scale for n keys D floats apart from `keys` (a block's slice of one head): eight keys at
 * a time, so that eight independent sums are in flight (one at a time, each key waited on its own chain of D / 8
 * multiply-adds). Each key's sum runs over d in order and is reduced by hsum8, as for a single key. */
static void dot_keys(const float *q, const float *keys, int n, int D, float scale, float *scores) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        v8 s[8];
        for (int u = 0; u < 8; u++) s[u] = splat(0.0f);
        for (int d = 0; d < D; d += 8) {
            const v8 qd = load8(q + d);
            for (int u = 0; u < 8; u++) s[u] += qd * load8(keys + (int64_t)(i + u) * D + d);
        }
        for (int u = 0; u < 8; u++) scores[i + u] = hsum8(s[u]) * scale;
    }
    for (; i < n; i++) {
        v8 s = splat(0.0f);
        for (int d = 0; d < D; d += 8) s += load8(q + d) * load8(keys + (int64_t)i * D + d);
        scores[i] = hsum8(s) * scale;
    }
}

/* even[0..D) += the even keys' p[k] * vrow_k, odd[0..D) the odd keys', for `count` keys from key index `index`
 * (rows D floats apart from `vrows`): a block's share of a query's weighted sum, each sum in key order. Per eight
 * floats of D, four such pieces at a time for eight sums in flight. */
static void weigh_values(const float *p, const float *vrows, int count, int index, int D, float *even, float *odd) {
    int d = 0;
    for (; d + 32 <= D; d += 32) {
        v8 e[4], o[4];
        for (int u = 0; u < 4; u++) {
            e[u] = load8(even + d + 8 * u);
            o[u] = load8(odd + d + 8 * u);
        }
        int k = 0;
        if (index & 1) {
            for (int u = 0; u < 4; u++) o[u] += splat(p[0]) * load8(vrows + d + 8 * u);
            k = 1;
        }
        for (; k + 1 < count; k += 2) {
            const v8 p0 = splat(p[k]), p1 = splat(p[k + 1]);
            const float *v0 = vrows + (int64_t)k * D + d, *v1 = v0 + D;
            for (int u = 0; u < 4; u++) {
                e[u] += p0 * load8(v0 + 8 * u);
                o[u] += p1 * load8(v1 + 8 * u);
            }
        }
        if (k < count)
            for (int u = 0; u < 4; u++) e[u] += splat(p[k]) * load8(vrows + (int64_t)k * D + d + 8 * u);
        for (int u = 0; u < 4; u++) {
            store8(even + d + 8 * u, e[u]);
            store8(odd + d + 8 * u, o[u]);
        }
    }
    for (; d < D; d += 8) {
        v8 e = load8(even + d), o = load8(odd + d);
        int k = 0;
        if (index & 1) {
            o += splat(p[0]) * load8(vrows + d);
            k = 1;
        }
        for (; k + 1 < count; k += 2) {
            e += splat(p[k]) * load8(vrows + (int64_t)k * D + d);
            o += splat(p[k + 1]) * load8(vrows + (int64_t)(k + 1) * D + d);
        }
        if (k < count) e += splat(p[k]) * load8(vrows + (int64_t)k * D + d);
        store8(even + d, e);
        store8(odd + d, o);
    }
}

/* Asks for `floats` from `p` on into L2, a line at a time: the next block's slice while this one is multiplied.
 * The pool's blocks lie apart, and the hardware's prefetcher starts afresh at each (reading a row's keys block
 * after block without it ran at about half the machine's read bandwidth). */
static inline void fetch_ahead(const float *p, int64_t floats) {
    for (int64_t at = 0; at < floats; at += 16) __builtin_prefetch(p + at, 0, 2);
}

/* Whether more than a quarter of the rows' block reads are of blocks another row reads too (a prompt the rows share:
 * a generation's images, several answers to one question). Counted with a small hash set of block ids. */
static int rows_share_blocks(const int64_t *tables, int64_t table_stride, const int64_t *ends, int B, int block_size) {
    int64_t total = 0;
    for (int b = 0; b < B; b++) total += (ends[b] + block_size - 1) / block_size;
    int64_t size = 64;
    while (size < 2 * total) size *= 2;
    int64_t *set = malloc(sizeof(int64_t) * size), repeats = 0;
    if (!set) return 0;
    for (int64_t i = 0; i < size; i++) set[i] = -1;
    for (int b = 0; b < B; b++) {
        const int64_t *table = tables + b * table_stride, blocks = (ends[b] + block_size - 1) / block_size;
        for (int64_t i = 0; i < blocks; i++) {
            int64_t at = (int64_t)(((uint64_t)table[i] * 0x9E3779B97F4A7C15ull) >> 20) & (size - 1);
            while (set[at] >= 0 && set[at] != table[i]) at = (at + 1) & (size - 1);
            repeats += set[at] == table[i];
            set[at] = table[i];
        }
    }
    free(set);
    return repeats * 4 > total;
}

/* A few new positions per row (a decode step: one; a window of drafted tokens: several) against the paged pool, read
 * in place: no copy of the rows' keys and values.
 *   q    [B, T, H, D] strides q_b, q_t; left-padded: row b's real queries are t >= pad[b] (NULL: none padded);
 *        padding queries give 0
 *   ends[b]: positions row b's last query attends (its own, already written, included); query t attends
 *        ends[b] - (T - 1 - t) of them
 *   out  [B, T, H, D] contiguous
 * A unit of work is a row and a run of its key heads. It walks the row's blocks in order, each block's slices of
 * those heads lying side by side in the pool (one run of memory instead of one head's slice at a time), once for
 * the scores and once for the values. A query's arithmetic is the same whichever unit holds it: each score a sum
 * over d in order, the softmax over the query's whole row, the weighted sums of its even and its odd keys each in
 * key order, added at the end. */
static void paged_rows_attention(const float *q, const float *k_pool, const float *v_pool, float *out, int B, int T,
                                 int H, int KVH, int D, int64_t q_b, int64_t q_t, int block_size,
                                 const int64_t *tables, int64_t table_stride, const int64_t *ends, const int64_t *pad,
                                 float scale) {
    const int G = H / KVH;
    int longest = 1;
    for (int b = 0; b < B; b++) longest = ends[b] > longest ? (int)ends[b] : longest;
    const int padded = (longest + 7) / 8 * 8;
    /* Rows with keys of their own: a unit is a row and as many key heads as leave two units a thread (rows differ
     * in length) and keep a unit's scores within 4 MiB (long contexts, windows). Rows sharing most of their
     * blocks: one key head a unit, units head by head (a head's slices of the shared blocks, read for one row,
     * are in L2 for the next). */
    const int shared = B > 1 && rows_share_blocks(tables, table_stride, ends, B, block_size);
    int span = KVH;
    while (span % 2 == 0 && (shared || (int64_t)B * (KVH / span) < 2 * (int64_t)omp_get_max_threads() ||
                             (int64_t)T * span * G * padded > (1 << 20)))
        span /= 2;
    const int per_row = KVH / span, heads = span * G; /* units a row, query heads a unit */
    const int64_t slice = (int64_t)block_size * D; /* one key head's share of a block, floats */
#pragma omp parallel
    {
        float *scores = malloc(sizeof(float) * (size_t)T * heads * padded);
        float *sums = malloc(sizeof(float) * (size_t)T * heads * 2 * D); /* per query: even keys' D, odd keys' D */
        float *inverse = malloc(sizeof(float) * (size_t)T * heads);
#pragma omp for schedule(monotonic: dynamic)
        for (int unit = 0; unit < B * per_row; unit++) {
            const int b = shared ? unit % B : unit / per_row, kh0 = (shared ? unit / B : unit % per_row) * span;
            const int n_last = (int)ends[b];
            const int first = pad ? (int)pad[b] : 0, blocks = (n_last + block_size - 1) / block_size;
            const int64_t *table = tables + b * table_stride;
            /* query t's keys: n_last - (T - 1 - t); none for padding queries */
#define KEYS(t) ((t) < first ? 0 : n_last - (T - 1 - (t)))
/* how many of the block from key j0 query t attends (<= 0: none) */
#define BLOCK_KEYS(t, j0) ((KEYS(t) < (j0) + block_size ? KEYS(t) : (j0) + block_size) - (j0))
#define SLICE(pool, i, s) ((pool) + ((table[i] * KVH + kh0 + (s)) * slice))
            for (int i = 0; i < blocks; i++) {
                const int j0 = i * block_size;
                for (int s = 0; s < span; s++) {
                    fetch_ahead(i + 1 < blocks ? SLICE(k_pool, i + 1, s) : SLICE(v_pool, 0, s), slice);
                    const float *keys = SLICE(k_pool, i, s);
                    for (int t = 0; t < T; t++) {
                        const int count = BLOCK_KEYS(t, j0);
                        for (int g = 0; g < G && count > 0; g++)
                            dot_keys(q + b * q_b + t * q_t + (int64_t)((kh0 + s) * G + g) * D, keys, count, D, scale,
                                     scores + ((int64_t)t * heads + s * G + g) * padded + j0);
                    }
                }
            }
            for (int t = 0; t < T; t++) {
                const int n = KEYS(t);
                for (int u = 0; u < heads && n > 0; u++) {
                    const int64_t at = (int64_t)t * heads + u;
                    inverse[at] = 1.0f / exp_row(scores + at * padded, n, (n + 7) / 8 * 8);
                    memset(sums + at * 2 * D, 0, sizeof(float) * 2 * D);
                }
            }
            for (int i = 0; i < blocks; i++) {
                const int j0 = i * block_size;
                for (int s = 0; s < span; s++) {
                    if (i + 1 < blocks) fetch_ahead(SLICE(v_pool, i + 1, s), slice);
                    const float *values = SLICE(v_pool, i, s);
                    for (int t = 0; t < T; t++) {
                        const int count = BLOCK_KEYS(t, j0);
                        for (int g = 0; g < G && count > 0; g++) {
                            const int64_t u = (int64_t)t * heads + s * G + g;
                            weigh_values(scores + u * padded + j0, values, count, j0, D, sums + u * 2 * D,
                                         sums + u * 2 * D + D);
                        }
                    }
                }
            }
            for (int t = 0; t < T; t++) {
                const int n = KEYS(t);
                for (int u = 0; u < heads; u++) {
                    float *dst = out + (((int64_t)b * T + t) * H + kh0 * G + u) * D;
                    if (n <= 0) { /* padding (or, impossibly, a row with nothing): stay finite */
                        memset(dst, 0, sizeof(float) * D);
                        continue;
                    }
                    const float *even = sums + ((int64_t)t * heads + u) * 2 * D, *odd = even + D;
                    const v8 inv = splat(inverse[t * heads + u]);
                    for (int d = 0; d < D; d += 8) store8(dst + d, (load8(even + d) + load8(odd + d)) * inv);
                }
            }
#undef BLOCK_KEYS
#undef KEYS
#undef SLICE
        }
        free(scores);
        free(sums);
        free(inverse);
    }
}

/* One new query per row (a decode step):
 *   q       [B, H, D] contiguous
 *   lengths[b]: positions row b attends (its new one, already written, included)
 *   out     [B, H, D] contiguous
 */
void janus_paged_decode_attention(const float *q, const float *k_pool, const float *v_pool, float *out, int B, int H,
                                  int KVH, int D, int block_size, const int64_t *tables, int64_t table_stride,
                                  const int64_t *lengths, float scale) {
    paged_rows_attention(q, k_pool, v_pool, out, B, 1, H, KVH, D, (int64_t)H * D, (int64_t)H * D, block_size, tables,
                         table_stride, lengths, NULL, scale);
}

/* A few new positions per row (see paged_rows_attention): ends[b] = cached[b] + T - pad[b]. */
void janus_paged_window_attention(const float *q, const float *k_pool, const float *v_pool, float *out, int B, int T,
                                  int H, int KVH, int D, int64_t q_b, int64_t q_t, int block_size,
                                  const int64_t *tables, int64_t table_stride, const int64_t *ends, const int64_t *pad,
                                  float scale) {
    paged_rows_attention(q, k_pool, v_pool, out, B, T, H, KVH, D, q_b, q_t, block_size, tables, table_stride, ends, pad,
                         scale);
}
