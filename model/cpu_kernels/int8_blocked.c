/* y = x W + b for many rows (several decode rows, a speculative window, a prompt) with int8 weights W[k, n] =
 * q[k, n] * scale[k / group, n] and float32 activations, computed in float32; q in pairs of rows (int8_pairs.h).
 *
 * The same blocking as linear_blocked.c (bf16): each task takes WIDTH columns and DEPTH weight rows at a time into
 * a panel of strips that stays in the core's L2 while every row block of x passes over it, and a tile of R rows x
 * STRIP columns of y stays in registers down the panel. The difference is where the weights are widened: a scale
 * per group of rows cannot be applied inside the tile without a second set of accumulators (the registers are
 * full), so the panel is dequantized to float32 as it is copied (q * scale, once per weight per pass of 128 rows)
 * and the tile runs on plain float32 weights: 2 loads per 2 * R fused multiply-adds.
 *
 * Prefill-sized products (128 rows and more) with the paddle wheel's MKL dequantize panels of whole columns and run
 * one threaded sgemm per panel, as linear.c does for bf16.
 *
 * Without MKL each y value is bias + the products summed in order of k, in float32: the result does not depend on
 * the thread count or on the rows computed beside it.
 */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "int8_pairs.h"
#include "scratch.h"

#if defined(__AVX512F__)
#define LANES 16
#define TILE_ROWS 8
#elif defined(__AVX__) || defined(__aarch64__)
#define LANES 8
#define TILE_ROWS 6
#else
#define LANES 8
#define TILE_ROWS 3
#endif
#define STRIP (2 * LANES) /* columns of a tile: two vectors */
#define DEPTH 256         /* weight rows per panel */
#define WIDTH 256         /* columns per task: a panel of DEPTH x WIDTH floats is 256 KiB */
#define STRIP_STRIDE (DEPTH * STRIP + 16) /* floats between strips in a panel: padded so strips do not alias in L1 */

typedef float vf __attribute__((vector_size(LANES * 4)));
typedef int32_t vi __attribute__((vector_size(LANES * 4)));
#if defined(__AVX2__)
#include <immintrin.h>
#endif

static inline vf vload(const float *p) { vf r; memcpy(&r, p, sizeof r); return r; }
static inline void vstore(float *p, vf x) { memcpy(p, &x, sizeof x); }
static inline vf vsplat(float x) { return x - (vf){0}; }

/* y[R rows of stride ldy, cols] (+)= xp [depth][R] (a row block of x, k-major) @ strip [depth][STRIP] (float32).
 * first: y is not read; it starts from `bias` (NULL: zero). R is a constant at every call (see tile_of). */
static inline __attribute__((always_inline)) void tile(const int R, const float *xp, const float *strip, int depth,
                                                       float *y, int64_t ldy, int cols, const float *bias, int first) {
    vf lo[TILE_ROWS], hi[TILE_ROWS];
    float part[STRIP];
    for (int r = 0; r < R; r++) {
        const float *src = first ? bias : y + r * ldy;
        if (!src) {
            lo[r] = hi[r] = (vf){0};
            continue;
        }
        if (cols < STRIP) {
            memset(part, 0, sizeof part);
            memcpy(part, src, sizeof(float) * cols);
            src = part;
        }
        lo[r] = vload(src), hi[r] = vload(src + LANES);
    }
    for (int k = 0; k < depth; k++) {
        const vf w_lo = vload(strip + k * STRIP), w_hi = vload(strip + k * STRIP + LANES);
        const float *xk = xp + k * R;
        for (int r = 0; r < R; r++) {
            const vf xr = vsplat(xk[r]);
            lo[r] += xr * w_lo;
            hi[r] += xr * w_hi;
        }
    }
    for (int r = 0; r < R; r++) {
        if (cols == STRIP) {
            vstore(y + r * ldy, lo[r]);
            vstore(y + r * ldy + LANES, hi[r]);
        } else {
            vstore(part, lo[r]);
            vstore(part + LANES, hi[r]);
            memcpy(y + r * ldy, part, sizeof(float) * cols);
        }
    }
}

static void tile_of(int R, const float *xp, const float *strip, int depth, float *y, int64_t ldy, int cols,
                    const float *bias, int first) {
    switch (R) {
#define TILE_CASE(n) \
    case n: tile(n, xp, strip, depth, y, ldy, cols, bias, first); break;
        TILE_CASE(1)
        TILE_CASE(2)
        TILE_CASE(3)
#if TILE_ROWS >= 6
        TILE_CASE(4)
        TILE_CASE(5)
        TILE_CASE(6)
#endif
#if TILE_ROWS >= 8
        TILE_CASE(7)
        TILE_CASE(8)
#endif
#undef TILE_CASE
    }
}

/* LANES bytes at q -> floats (sign-extend, convert); intrinsics where there are (see int8_rows.c) */
static inline vf widen_bytes(const int8_t *q) {
#if defined(__AVX512F__)
    return (vf)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q)));
#elif defined(__AVX2__)
    return (vf)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q)));
#else
    vf r;
    for (int i = 0; i < LANES; i++) r[i] = (float)q[i];
    return r;
#endif
}

/* LANES columns of a pair of rows (2 * LANES bytes, the rows' values alternating) -> LANES floats of each row:
 * sign-extend to int16, then each 32-bit lane's low and high halves sign-extended by shifts, convert */
static inline void widen_pair(const int8_t *pair, vf *first, vf *second) {
#if defined(__AVX512BW__)
    const __m512i both = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)pair));
    *first = (vf)_mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(both, 16), 16));
    *second = (vf)_mm512_cvtepi32_ps(_mm512_srai_epi32(both, 16));
#elif defined(__AVX2__) && !defined(__AVX512F__)
    const __m256i both = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)pair));
    *first = (vf)_mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(both, 16), 16));
    *second = (vf)_mm256_cvtepi32_ps(_mm256_srai_epi32(both, 16));
#else
    for (int i = 0; i < LANES; i++) {
        (*first)[i] = (float)pair[2 * i];
        (*second)[i] = (float)pair[2 * i + 1];
    }
#endif
}

/* dst[0..cols) = q[0..cols) * scale[0..cols): a run of an odd K's lone last row, dequantized */
static inline void dequantize_run(const int8_t *q, const float *scale, float *dst, int cols) {
    int c = 0;
    for (; c + LANES <= cols; c += LANES) vstore(dst + c, widen_bytes(q + c) * vload(scale + c));
    for (; c < cols; c++) dst[c] = (float)q[c] * scale[c];
}

/* The same for a pair of rows from its column 0 at `pair` (both in one scale group: a group is a multiple of 8
 * rows and a pair starts at an even row): columns [0, cols) of the first row into first, the second into second */
static inline void dequantize_pair_run(const int8_t *pair, const float *scale, float *first, float *second,
                                       int cols) {
    int c = 0;
    for (; c + LANES <= cols; c += LANES) {
        vf a, b;
        widen_pair(pair + 2 * c, &a, &b);
        const vf s = vload(scale + c);
        vstore(first + c, a * s);
        vstore(second + c, b * s);
    }
    for (; c < cols; c++) {
        first[c] = (float)pair[2 * c] * scale[c];
        second[c] = (float)pair[2 * c + 1] * scale[c];
    }
}

/* Rows k and k + 1 (k even; only k when it is an odd K's last) of q, columns [n0, n0 + cols), dequantized into
 * first and second */
static inline void dequantize_rows(const int8_t *q, const float *scales, int group, int64_t K, int64_t N, int64_t k,
                                   int n0, int cols, float *first, float *second) {
    const float *scale = scales + (k / group) * N + n0;
    if (k + 1 < K)
        dequantize_pair_run(int8_at(q, K, N, k, n0), scale, first, second, cols);
    else
        dequantize_run(int8_at(q, K, N, k, n0), scale, first, cols);
}

/* panel[j * STRIP_STRIDE + k * STRIP + c] = W[k0 + k, n0 + j * STRIP + c] for depth rows and cols columns (the last
 * strip zero-filled past cols). k0 is even (a multiple of DEPTH), so the rows go pair by pair. */
static void pack_panel(const int8_t *q, const float *scales, int group, int64_t K, int64_t N, int k0, int n0,
                       int depth, int cols, float *panel) {
    const int full = cols / STRIP;
    for (int k = 0; k < depth; k += 2) {
        for (int j = 0; j < full; j++) {
            float *dst = panel + j * STRIP_STRIDE + k * STRIP;
            dequantize_rows(q, scales, group, K, N, k0 + k, n0 + j * STRIP, STRIP, dst, dst + STRIP);
        }
        if (full * STRIP < cols) {
            float *dst = panel + full * STRIP_STRIDE + k * STRIP;
            memset(dst, 0, sizeof(float) * STRIP * (k + 1 < depth ? 2 : 1));
            dequantize_rows(q, scales, group, K, N, k0 + k, n0 + full * STRIP, cols - full * STRIP, dst, dst + STRIP);
        }
    }
}

static inline int block_start(int b, int blocks, int M) { return (int)((int64_t)b * M / blocks); }

/* xs [DEPTH][R] per row block, one after the other = x [M rows of stride K] at columns k0..k0+depth */
static void pack_rows(const float *x, int64_t K, int M, int depth, float *xs) {
    const int blocks = (M + TILE_ROWS - 1) / TILE_ROWS;
    for (int b = 0; b < blocks; b++) {
        const int m0 = block_start(b, blocks, M), R = block_start(b + 1, blocks, M) - m0;
        float *dst = xs + m0 * DEPTH;
        for (int r = 0; r < R; r++) {
            const float *src = x + (m0 + r) * K;
            for (int k = 0; k < depth; k++) dst[k * R + r] = src[k];
        }
    }
}

static void run_task(const float *x, const int8_t *q, const float *scales, int group, const float *bias, float *y,
                     int M, int K, int N, int n0, float *xs, float *panel) {
    const int blocks = (M + TILE_ROWS - 1) / TILE_ROWS;
    const int cols = N - n0 < WIDTH ? N - n0 : WIDTH, strips = (cols + STRIP - 1) / STRIP;
    for (int k0 = 0; k0 < K; k0 += DEPTH) {
        const int depth = K - k0 < DEPTH ? K - k0 : DEPTH;
        pack_rows(x + k0, K, M, depth, xs);
        pack_panel(q, scales, group, K, N, k0, n0, depth, cols, panel);
        for (int j = 0; j < strips; j++) {
            const int c0 = n0 + j * STRIP, width = cols - j * STRIP < STRIP ? cols - j * STRIP : STRIP;
            for (int b = 0; b < blocks; b++) {
                const int m0 = block_start(b, blocks, M), R = block_start(b + 1, blocks, M) - m0;
                tile_of(R, xs + m0 * DEPTH, panel + j * STRIP_STRIDE, depth, y + (int64_t)m0 * N + c0, N, width,
                        bias ? bias + c0 : NULL, k0 == 0);
            }
        }
    }
}

#define CHUNK_ROWS 128
#define XS_FLOATS (CHUNK_ROWS * DEPTH)
#define PANEL_FLOATS ((WIDTH / STRIP) * STRIP_STRIDE)

/* x [M, K] contiguous, q [K, N] int8 in pairs of rows, scales [ceil(K / group), N], bias [N] or NULL, y [M, N].
 * Returns 0 (y untouched) when there is no memory for a thread's buffers or the group is not positive. */
int janus_linear_blocked_int8(const float *x, const int8_t *q, const float *scales, int group, const float *bias,
                              float *y, int M, int K, int N) {
    if (group <= 0) return 0;
    if (M <= 0 || N <= 0) return 1;
    if (K <= 0) {
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) y[(int64_t)m * N + n] = bias ? bias[n] : 0.0f;
        return 1;
    }
    const int tasks = (N + WIDTH - 1) / WIDTH;
    const int threads = (int64_t)M * K * N >= (1 << 20) && tasks > 1 ? omp_get_max_threads() : 1;
    int ok = 1;
#pragma omp parallel num_threads(threads)
    {
        float *xs = scratch_buffer(XS_FLOATS + PANEL_FLOATS);
        if (!xs) {
#pragma omp atomic write
            ok = 0;
        }
#pragma omp barrier
        int all_ok;
#pragma omp atomic read
        all_ok = ok;
        for (int m0 = 0; all_ok && m0 < M; m0 += CHUNK_ROWS) {
            const int rows = M - m0 < CHUNK_ROWS ? M - m0 : CHUNK_ROWS;
#pragma omp for schedule(monotonic: dynamic) nowait /* libiomp5 has no nonmonotonic entry points */
            for (int t = 0; t < tasks; t++)
                run_task(x + (int64_t)m0 * K, q, scales, group, bias, y + (int64_t)m0 * N, rows, K, N, t * WIDTH, xs,
                         xs + XS_FLOATS);
        }
    }
    return ok;
}

#ifdef JANUS_WITH_MKL
enum { CBLAS_ROW_MAJOR = 101, CBLAS_NO_TRANS = 111 };
void cblas_sgemm(int layout, int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                 const float *b, int ldb, float beta, float *c, int ldc);

#define PANEL_ROWS 128             /* from here on MKL's sgemm on dequantized panels */
#define SGEMM_PANEL_FLOATS (8 << 20) /* 32 MiB of dequantized weights per panel */

static int linear_int8_panels(const float *x, const int8_t *q, const float *scales, int group, const float *bias,
                              float *y, int M, int K, int N) {
    int cols = SGEMM_PANEL_FLOATS / K;
    cols = cols >= N ? N : (cols < 8 ? 8 : cols / 8 * 8);
    float *panel = scratch_buffer((size_t)K * cols);
    if (!panel) return 0;
    for (int n0 = 0; n0 < N; n0 += cols) {
        const int width = N - n0 < cols ? N - n0 : cols;
#pragma omp parallel for schedule(static)
        for (int k = 0; k < K; k += 2)
            dequantize_rows(q, scales, group, K, N, k, n0, width, panel + (int64_t)k * width,
                            panel + (int64_t)(k + 1) * width);
        float *c = y + n0;
        for (int m = 0; m < M; m++) {
            if (bias)
                memcpy(c + (int64_t)m * N, bias + n0, sizeof(float) * width);
            else
                memset(c + (int64_t)m * N, 0, sizeof(float) * width);
        }
        cblas_sgemm(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_NO_TRANS, M, width, K, 1.0f, x, K, panel, width, 1.0f, c, N);
    }
    return 1;
}
#endif

/* The many-row entry: MKL on dequantized panels from PANEL_ROWS rows where the wheel ships MKL, else (or when a
 * panel finds no memory) the blocked kernel. */
int janus_linear_int8(const float *x, const int8_t *q, const float *scales, int group, const float *bias, float *y,
                      int M, int K, int N) {
    if (group <= 0) return 0;
#ifdef JANUS_WITH_MKL
    if (M >= PANEL_ROWS && K > 0 && N > 0 && linear_int8_panels(x, q, scales, group, bias, y, M, K, N)) return 1;
#endif
    return janus_linear_blocked_int8(x, q, scales, group, bias, y, M, K, N);
}
