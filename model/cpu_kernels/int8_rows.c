/* y = x W + b for a few rows (a decode step) with int8 weights: W[k, n] = q[k, n] * scale[k / group, n], a float32
 * scale per output column for each group of `group` weight rows (input columns of the layer), float32 activations and
 * output; the products in int32 from int16 activations (the integer path, below) on CPUs with AVX2 or AVX-512BW,
 * elsewhere in float32 (the float path). q is held in pairs of rows (int8_pairs.h): rows 2i and 2i + 1 interleaved
 * column by column, a last row of an odd K on its own.
 *
 * A decode step is bound by reading the weights: int8 halves the bytes of bf16. The weights are split among the threads
 * by rows (each streams one contiguous block, as linear.c does for bf16) and widened in registers as they are loaded
 * (sign-extend, convert: two instructions per eight weights). The scale is not applied to each weight: eight weight
 * rows are summed unscaled, t = sum_j x[k + j] q[k + j, c], and folded into the column's running sum with one fused
 * multiply-add, acc += t * scale[g, c], which costs what the plain add acc += t would. A group is a multiple of eight
 * rows, so eight rows never straddle two groups.
 *
 * That float path widens each weight with two instructions and multiplies it with a third: on a 2-core AVX-512 CPU it
 * measured about 9 GB/s of weights a thread, so the two cores read 17 GB/s of the 25-30 the machine has and the int8
 * step was 0.85-0.9x the bf16 one (on an AVX2 CPU 1.0-1.1x at 1-2 rows). Where there is AVX2 or AVX-512BW the columns
 * of whole blocks (16 or 32 columns) take an integer path instead: each row of x is rounded to int16 with a scale per
 * chunk of at most 128 weight rows (the largest |x| of the chunk maps to 32767, so the rounding moves each activation
 * by at most 1/65534 of that largest one, against 1/254 of a group's largest weight for the weights' own rounding), and
 * the products are summed exactly in int32 by vpdpwssd (vpmaddwd + vpaddd without VNNI), two weight rows and 16 (8 with
 * AVX2) columns an instruction: the pair layout puts a column's two weights side by side as vpdpwssd wants them, so 32
 * bytes (16 with AVX2) sign-extended (vpmovsxbw) are one operand. Held row by row they needed an interleave of two
 * rows' values first (vpunpck{l,h}wd), and the kernel alone streamed 13.7 GB/s where the pairs stream 18.2 (1 row of x;
 * 11.3 against 15.0 at 2 rows). A chunk's int32 sums are converted once and scaled by the weight's and the activation's
 * scales. |sum| <= 128 * 127 * 32767 < 2^31: no overflow. Columns past the last whole block take the float path. With
 * AVX2 (AMD EPYC, 24 layers' projections of Janus-Pro-1B, in turns) the kernel alone took 0.72 / 0.73 / 0.76 of the
 * float path's time at 1 / 2 / 4 rows, and 0.42 / 0.80 of the blocked kernel's at 8 / 32 rows.
 */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "int8_pairs.h"
#include "vec.h"

#define PASS_ROWS 32 /* rows of x per pass over the weights: a sweep's weights serve each group of rows from L2 */
#define STEP 8       /* weight rows summed before the scale is applied */

/* Eight columns of a pair of rows (16 bytes, the two rows' values alternating) -> eight floats of each row:
 * vpmovsxbw, then each 32-bit lane's low and high int16 sign-extended by shifts, vcvtdq2ps. Intrinsics where there
 * is AVX2: GCC turns widening written with vector extensions into a byte-at-a-time sequence that ran ten times
 * slower than the bf16 kernel. Elsewhere a loop the compiler vectorises as it can. */
#if defined(__AVX2__) || defined(__AVX512BW__)
#include <immintrin.h>
#endif
#if defined(__AVX2__)
static inline void load8_pair(const int8_t *pair, v8 *first, v8 *second) {
    const __m256i both = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)pair));
    *first = (v8)_mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(both, 16), 16));
    *second = (v8)_mm256_cvtepi32_ps(_mm256_srai_epi32(both, 16));
}
#else
static inline void load8_pair(const int8_t *pair, v8 *first, v8 *second) {
    for (int i = 0; i < 8; i++) {
        (*first)[i] = (float)pair[2 * i];
        (*second)[i] = (float)pair[2 * i + 1];
    }
}
#endif

/* The integer path in whole vectors of int32 sums: IV_LANES columns a vector, BLOCK = 2 * IV_LANES columns a block
 * (a pair of weight rows' bytes for a block are 2 * BLOCK, widened to int16 a vector's width at a time), GROUP_ROWS
 * rows of x whose sums stay in registers: each row takes two vectors of sums beside the widened weights, the
 * broadcast activations and (without VNNI) vpmaddwd's product, so AVX-512's 32 registers hold 8 rows and AVX2's 16
 * hold 4. Both give the same sums (int32, exact) and so, on columns of whole blocks of 32, the same outputs. */
#if defined(__AVX512BW__)
#define INT16_PATH 1
#define IV_LANES 16
#define GROUP_ROWS 8
#define PAIRS 16 /* pairs of weight rows per sweep over the columns (see pairs_int16) */
#define AHEAD_ROWS 2 /* rows of x from which a sweep asks for the next one (see pairs_int16) */
typedef __m512i ivec;
typedef __m512 fvec;
static inline ivec iv_load(const int32_t *p) { return _mm512_loadu_si512(p); }
static inline void iv_store(int32_t *p, ivec v) { _mm512_storeu_si512(p, v); }
static inline ivec iv_splat(uint32_t v) { return _mm512_set1_epi32((int)v); }
static inline ivec iv_zero(void) { return _mm512_setzero_si512(); }
/* IV_LANES columns of a pair of rows (2 * IV_LANES bytes) -> int16 pairs, one column a 32-bit lane (vpmovsxbw) */
static inline ivec iv_widen_pairs(const int8_t *p) { return _mm512_cvtepi8_epi16(_mm256_loadu_si256((const void *)p)); }
/* IV_LANES columns of a lone row (IV_LANES bytes) -> int32 (its high half meets a zero activation) */
static inline ivec iv_widen_lone(const int8_t *p) { return _mm512_cvtepi8_epi32(_mm_loadu_si128((const void *)p)); }
/* acc += q x for two weight rows (int16 pairs, one per 32-bit lane) */
static inline ivec dot_pairs(ivec acc, ivec w, ivec x) {
#if defined(__AVX512VNNI__)
    return _mm512_dpwssd_epi32(acc, w, x);
#else
    return _mm512_add_epi32(acc, _mm512_madd_epi16(w, x));
#endif
}
static inline fvec fv_of(ivec v) { return _mm512_cvtepi32_ps(v); }
static inline fvec fv_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void fv_store(float *p, fvec v) { _mm512_storeu_ps(p, v); }
static inline fvec fv_splat(float v) { return _mm512_set1_ps(v); }
static inline fvec fv_mul(fvec a, fvec b) { return _mm512_mul_ps(a, b); }
static inline fvec fv_fmadd(fvec a, fvec b, fvec c) { return _mm512_fmadd_ps(a, b, c); }
#elif defined(__AVX2__)
/* vpmaddwd on 256-bit registers: two int16 multiply-adds per 32-bit lane, twice the multiply-adds of an FMA per
 * instruction. Without it (before this path) AVX2 CPUs multiplied int8 weights in float32 and the int8 step was
 * slower than the bf16 one (AMD EPYC: 1.02x at 1 row, 2.1x at 8 rows). */
#define INT16_PATH 1
#define IV_LANES 8
#define GROUP_ROWS 4
/* A block's bytes of a pair are half a cache line, so each line is read at two blocks: in between, the sweep's other
 * pairs must not push it out of L1. Their rows lie 2N bytes apart, and at N = 2048 (4 KiB) every pair's line falls in
 * the same set of the 8-way L1: 16 pairs evicted each other and the kernel alone took 1.2-1.5x the time of 6 pairs at
 * 2-32 rows (AMD EPYC, 24 layers' projections of Janus-Pro-1B, in turns; 4 pairs about as fast as 6, 8 in between). */
#define PAIRS 6
#define AHEAD_ROWS 1 /* see pairs_int16 */
typedef __m256i ivec;
typedef __m256 fvec;
static inline ivec iv_load(const int32_t *p) { return _mm256_loadu_si256((const void *)p); }
static inline void iv_store(int32_t *p, ivec v) { _mm256_storeu_si256((void *)p, v); }
static inline ivec iv_splat(uint32_t v) { return _mm256_set1_epi32((int)v); }
static inline ivec iv_zero(void) { return _mm256_setzero_si256(); }
static inline ivec iv_widen_pairs(const int8_t *p) { return _mm256_cvtepi8_epi16(_mm_loadu_si128((const void *)p)); }
static inline ivec iv_widen_lone(const int8_t *p) { return _mm256_cvtepi8_epi32(_mm_loadl_epi64((const void *)p)); }
static inline ivec dot_pairs(ivec acc, ivec w, ivec x) { return _mm256_add_epi32(acc, _mm256_madd_epi16(w, x)); }
static inline fvec fv_of(ivec v) { return _mm256_cvtepi32_ps(v); }
static inline fvec fv_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void fv_store(float *p, fvec v) { _mm256_storeu_ps(p, v); }
static inline fvec fv_splat(float v) { return _mm256_set1_ps(v); }
static inline fvec fv_mul(fvec a, fvec b) { return _mm256_mul_ps(a, b); }
static inline fvec fv_fmadd(fvec a, fvec b, fvec c) { return _mm256_fmadd_ps(a, b, c); }
#else
#define INT16_PATH 0
#endif

#if INT16_PATH
#define BLOCK (2 * IV_LANES)
#define CHUNK 128 /* weight rows summed in int32 before converting: 128 * 127 * 32767 < 2^31 */

/* Up to PAIRS pairs of weight rows from `row` (the pairs' first row; with `odd`, the last "pair" is the lone last row
 * of an odd K, held plainly) times the M rows of x, added to the int32 sums isum [M, n_int] of columns [0, n_int). xp:
 * each row's activations as int16 pairs (x[k + 2p] in the low half of xp[p], x[k + 2p + 1] in the high half, zero for a
 * missing row), CHUNK / 2 of them a row of x.
 *
 * Per pair of weight rows and BLOCK columns: 2 * BLOCK bytes, sign-extended to int16 half at a time (vpmovsxbw: a
 * column's two weights in one 32-bit lane), one vpdpwssd (vpmaddwd + vpaddd) per row of x and IV_LANES columns. A lone
 * row's bytes are sign-extended to int32 (its high half meets the zero activation). Whole sweeps over the columns,
 * PAIRS pairs of weight rows at a time. With AVX-512 (a block's bytes of a pair a whole line): 16 sequential streams,
 * which the prefetchers follow better than 8 (row by row, 16 rows had been faster than 8 and 32 slower; walking down a
 * chunk's 128 rows for each block of columns instead ran no faster than the float path; prefetching 1 KiB ahead in
 * software made it 10% slower).
 *
 * next: the following sweep's first row (NULL: none, or not all of its PAIRS pairs are this thread's). From AHEAD_ROWS
 * rows of x on, each 32 columns ask for the same line of the next sweep's pairs (into L2): PAIRS more lines in flight
 * at a time, so a sweep's streams are under way when it starts instead of each starting cold. Whole 1B decode steps,
 * int8, in turns with and without it (AVX-512): 2 rows 0.955, 4 rows 0.93, 8 rows 0.95, 16 rows 0.96, 32 rows 0.98
 * of the time; with one row it made the step 2% slower there (its hardware prefetchers kept up with one row's
 * arithmetic), so with AVX-512 one row goes without. With AVX2 (AMD EPYC, 24 layers' projections of Janus-Pro-1B
 * alone, in turns) one row took 0.87-0.93 of the time with it, in five runs: with AVX2 one row asks too. */
static inline __attribute__((always_inline)) void pairs_int16(const int8_t *row, int64_t N, int n_int, int P,
                                                              int odd, const uint32_t *xp, int32_t *isum, int M,
                                                              const int8_t *next) {
    for (int c = 0; c < n_int; c += BLOCK) {
        if (next && M >= AHEAD_ROWS && !(c & 31))
            for (int p = 0; p < PAIRS; p++) __builtin_prefetch(next + 2 * p * N + 2 * c, 0, 2);
        ivec lo[GROUP_ROWS], hi[GROUP_ROWS];
        for (int m = 0; m < M; m++) {
            lo[m] = iv_load(isum + (int64_t)m * n_int + c);
            hi[m] = iv_load(isum + (int64_t)m * n_int + c + IV_LANES);
        }
        for (int p = 0; p < P; p++) {
            ivec wl, wh;
            if (odd && p == P - 1) {
                const int8_t *lone = row + 2 * p * N + c;
                wl = iv_widen_lone(lone);
                wh = iv_widen_lone(lone + IV_LANES);
            } else {
                const int8_t *pair = row + 2 * p * N + 2 * c;
                wl = iv_widen_pairs(pair);
                wh = iv_widen_pairs(pair + BLOCK);
            }
            for (int m = 0; m < M; m++) {
                const ivec xv = iv_splat(xp[m * (CHUNK / 2) + p]);
                lo[m] = dot_pairs(lo[m], wl, xv);
                hi[m] = dot_pairs(hi[m], wh, xv);
            }
        }
        for (int m = 0; m < M; m++) {
            iv_store(isum + (int64_t)m * n_int + c, lo[m]);
            iv_store(isum + (int64_t)m * n_int + c + IV_LANES, hi[m]);
        }
    }
}

/* A chunk's int32 sums converted once and scaled by the weights' scale row and each row of x's activation scale
 * into acc [M, N]; isum is left zero for the next chunk. */
static void convert_chunk(int32_t *isum, const float *scale, const float *xscale, float *acc, int64_t N, int n_int,
                          int M) {
    for (int m = 0; m < M; m++) {
        const fvec xs = fv_splat(xscale[m]);
        int32_t *im = isum + (int64_t)m * n_int;
        float *am = acc + (int64_t)m * N;
        for (int c = 0; c < n_int; c += IV_LANES) {
            const fvec s = fv_mul(fv_load(scale + c), xs);
            fv_store(am + c, fv_fmadd(fv_of(iv_load(im + c)), s, fv_load(am + c)));
            iv_store(im + c, iv_zero());
        }
    }
}

/* Weight rows [k0, k1) of one thread, columns [0, n_int), through the integer path, chunk by chunk (a chunk: at
 * most CHUNK rows, never across two scale groups). isum: [M, n_int] int32, zero on entry. Each sweep's weights
 * (PAIRS pairs of rows, all columns: 24-512 KiB on Janus-Pro-1B's shapes) go to every group of GROUP_ROWS rows of x
 * in turn, the later groups reading them from L2: more than a group's rows had been done a pass each, and 32 rows
 * read the weights from memory four times. */
static void rows_int16(const float *x, const int8_t *q, const float *scales, int group, float *acc, int32_t *isum,
                       int M, int K, int64_t N, int n_int, int k0, int k1) {
    uint32_t xp[PASS_ROWS * (CHUNK / 2)];
    float xscale[PASS_ROWS];
    for (int k = k0; k < k1;) {
        const int group_end = (k / group + 1) * group;
        int end = k + CHUNK < group_end ? k + CHUNK : group_end;
        end = end < k1 ? end : k1;
        const int len = end - k, pairs = (len + 1) / 2;
        for (int m = 0; m < M; m++) {
            const float *xm = x + (int64_t)m * K + k;
            float largest = 0.0f;
            int finite = 1;
            for (int j = 0; j < len; j++) {
                largest = fmaxf(largest, fabsf(xm[j]));
                finite &= fabsf(xm[j]) <= FLT_MAX;
            }
            const float to_int = finite && largest > 0.0f ? 32767.0f / largest : 0.0f;
            /* a NaN or infinite activation makes the row's outputs NaN, as the float product would: rounding it to
             * an int16 would hide it */
            xscale[m] = finite ? largest / 32767.0f : NAN;
            for (int i = 0; i < pairs; i++) {
                const int low = (int)lrintf(xm[2 * i] * to_int);
                const int high = 2 * i + 1 < len ? (int)lrintf(xm[2 * i + 1] * to_int) : 0;
                xp[m * (CHUNK / 2) + i] = (uint32_t)(uint16_t)low | (uint32_t)(uint16_t)high << 16;
            }
        }
        for (int i = 0; i < pairs; i += PAIRS) {
            const int P = pairs - i < PAIRS ? pairs - i : PAIRS, odd = (len & 1) && i + P == pairs;
            const int8_t *row = q + (int64_t)(k + 2 * i) * N;
            const int next_row = k + 2 * i + 2 * PAIRS;
            const int8_t *next = next_row + 2 * PAIRS <= k1 ? q + (int64_t)next_row * N : NULL;
            for (int m0 = 0; m0 < M; m0 += GROUP_ROWS) {
                const int rows = M - m0 < GROUP_ROWS ? M - m0 : GROUP_ROWS;
                const uint32_t *xg = xp + m0 * (CHUNK / 2) + i;
                int32_t *ig = isum + (int64_t)m0 * n_int;
                const int8_t *ahead = m0 == 0 ? next : NULL; /* the first group asks for the next sweep */
                switch (rows) { /* a constant count per copy: the sums stay in registers */
                case 1: pairs_int16(row, N, n_int, P, odd, xg, ig, 1, ahead); break;
                case 2: pairs_int16(row, N, n_int, P, odd, xg, ig, 2, ahead); break;
                case 3: pairs_int16(row, N, n_int, P, odd, xg, ig, 3, ahead); break;
                case 4: pairs_int16(row, N, n_int, P, odd, xg, ig, 4, ahead); break;
#if GROUP_ROWS == 8
                case 8: pairs_int16(row, N, n_int, P, odd, xg, ig, 8, ahead); break;
#endif
                default: pairs_int16(row, N, n_int, P, odd, xg, ig, rows, ahead); break;
                }
            }
        }
        convert_chunk(isum, scales + (int64_t)(k / group) * N, xscale, acc, N, n_int, M);
        k = end;
    }
}
#endif

/* x [M, K] contiguous (M <= PASS_ROWS), q [K, N] in pairs of rows, scales [ceil(K / group), N], bias [N] or NULL,
 * y [M, N] */
static int int8_rows(const float *x, const int8_t *q, const float *scales, int group, const float *bias, float *y,
                     int M, int K, int N) {
    const int threads = (int64_t)K * N >= 131072 ? omp_get_max_threads() : 1;
    /* the partial and chunk sums on whole cache lines (16 and 32 rows took 0.96-0.98 of the time with malloc's
     * alignment) */
    float *partial = line_aligned(sizeof(float) * (size_t)threads * M * N);
    if (!partial) return 0;
#if INT16_PATH
    const int n_int = N / BLOCK * BLOCK;
    /* each thread's chunk sums (+ 1: an allocation of 0 bytes may return NULL, which would read as no memory) */
    const size_t sum_bytes = sizeof(int32_t) * ((size_t)threads * M * n_int + 1);
    int32_t *sums = line_aligned(sum_bytes);
    if (sums) memset(sums, 0, sum_bytes);
    if (!sums) {
        free(partial);
        return 0;
    }
#else
    const int n_int = 0;
#endif
    const int vector_end = N / 8 * 8;
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num(), used = omp_get_num_threads();
        const int per = (K / used + STEP - 1) / STEP * STEP; /* whole steps per thread: they start at multiples of 8 */
        const int k0 = t * per < K ? t * per : K, k1 = t == used - 1 ? K : (k0 + per < K ? k0 + per : K);
        float *acc = partial + (int64_t)t * M * N;
        memset(acc, 0, sizeof(float) * M * N);
#if INT16_PATH
        if (n_int) rows_int16(x, q, scales, group, acc, sums + (int64_t)t * M * n_int, M, K, N, n_int, k0, k1);
#endif
        float xs[PASS_ROWS * STEP];
        int k = n_int < N ? k0 : k1; /* the float path's columns [n_int, N): none when the integer path took them all */
        for (; k + STEP <= k1; k += STEP) {
            for (int m = 0; m < M; m++)
                for (int j = 0; j < STEP; j++) xs[m * STEP + j] = x[(int64_t)m * K + k + j];
            const int8_t *rows = q + (int64_t)k * N; /* STEP / 2 whole pairs: k is even, k + STEP <= K */
            const float *scale = scales + (int64_t)(k / group) * N;
            for (int c = n_int; c < vector_end; c += 8) {
                v8 w[STEP];
                for (int j = 0; j < STEP; j += 2) load8_pair(rows + j * (int64_t)N + 2 * c, &w[j], &w[j + 1]);
                const v8 s = load8(scale + c);
                for (int m = 0; m < M; m++) {
                    const float *xm = xs + m * STEP;
                    v8 sum = splat(xm[0]) * w[0];
                    for (int j = 1; j < STEP; j++) sum += splat(xm[j]) * w[j];
                    float *am = acc + (int64_t)m * N + c;
                    store8(am, load8(am) + sum * s);
                }
            }
            for (int c = vector_end; c < N; c++)
                for (int m = 0; m < M; m++) {
                    float sum = 0.0f;
                    for (int j = 0; j < STEP; j++)
                        sum += xs[m * STEP + j] * (float)*int8_at(q, K, N, k + j, c);
                    acc[(int64_t)m * N + c] += sum * scale[c];
                }
        }
        for (; k < k1; k++) { /* the last few rows of a K that is not a multiple of 8 */
            const int stride = int8_stride(K, k);
            const int8_t *row = int8_at(q, K, N, k, 0);
            const float *scale = scales + (int64_t)(k / group) * N;
            for (int m = 0; m < M; m++) {
                const float xm = x[(int64_t)m * K + k];
                float *am = acc + (int64_t)m * N;
                for (int c = n_int; c < N; c++) am[c] += xm * (float)row[(int64_t)c * stride] * scale[c];
            }
        }
#pragma omp barrier
        /* y = bias + the threads' partials in thread order, eight columns at a time (one at a time cost 4-5% of a
         * 16-32 row product) */
#pragma omp for schedule(static) nowait
        for (int c = 0; c < vector_end; c += 8) {
            const v8 b = bias ? load8(bias + c) : splat(0.0f);
            for (int m = 0; m < M; m++) {
                v8 sum = b;
                for (int p = 0; p < used; p++) sum += load8(partial + ((int64_t)p * M + m) * N + c);
                store8(y + (int64_t)m * N + c, sum);
            }
        }
#pragma omp for schedule(static)
        for (int c = vector_end; c < N; c++) {
            for (int m = 0; m < M; m++) {
                float sum = bias ? bias[c] : 0.0f;
                for (int p = 0; p < used; p++) sum += partial[((int64_t)p * M + m) * N + c];
                y[(int64_t)m * N + c] = sum;
            }
        }
    }
    free(partial);
#if INT16_PATH
    free(sums);
#endif
    return 1;
}

/* Few-row products from int8 weights: `group` (a multiple of 8) weight rows share a scale row. PASS_ROWS rows at a
 * time (each pass reads all of q again). Returns 0 (y untouched) when
 * there is no memory for the per-thread sums or the group is not a positive multiple of 8. */
int janus_linear_rows_int8(const float *x, const int8_t *q, const float *scales, int group, const float *bias,
                           float *y, int M, int K, int N) {
    if (group <= 0 || group % STEP != 0) return 0;
    if (M <= 0 || N <= 0) return 1;
    for (int m0 = 0; m0 < M; m0 += PASS_ROWS) {
        const int rows = M - m0 < PASS_ROWS ? M - m0 : PASS_ROWS;
        if (!int8_rows(x + (int64_t)m0 * K, q, scales, group, bias, y + (int64_t)m0 * N, rows, K, N)) return 0;
    }
    return 1;
}

/* Bits the few-row kernel rounds activations to before multiplying: 16 on the integer path (AVX2 or AVX-512BW), 32
 * when it multiplies in float32. */
int janus_int8_rows_activation_bits(void) { return INT16_PATH ? 16 : 32; }
