/* y = x W + b with float32 activations and weights stored as float32 or bfloat16 (the published checkpoints'
 * format, kept as it is on the CPU: half the bytes to read per step). Arithmetic is float32 either way: widening
 * bf16 to float32 is exact, so both storages compute the same products.
 *
 * A few rows (a decode step) read every weight once and are bound by memory bandwidth. MKL's sgemm (Paddle's
 * matmul) reads weights at about 17-20 GB/s on this kind of CPU for one row, and not much faster per row for 2-8
 * rows; splitting W by rows among the threads instead of by columns makes each thread stream one contiguous block
 * of memory, which measured 25-33 GB/s (the machine's read bandwidth). Each thread sums its rows into a private
 * partial y; the partials are added at the end. bf16 weights are widened in registers as they are loaded.
 *
 * More rows (several decode rows, speculative windows, short prompts) are bound by arithmetic: bf16 weights go
 * to the register-blocked kernel of linear_blocked.c. Prefill-sized products (128 rows and more) with the paddle
 * wheel's MKL widen panels of whole columns and run one threaded sgemm per panel, as Paddle's float32 matmul does
 * on the whole weight.
 */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "scratch.h"
#include "vec.h"

#define MAX_ROWS 8

/* One body for both storages: `bf16` is a constant at every call, so inlining removes the branch. */
static inline __attribute__((always_inline)) v8 weight8(const void *w, int64_t i, int bf16) {
    return bf16 ? load8_bf16((const uint16_t *)w + i) : load8((const float *)w + i);
}
static inline __attribute__((always_inline)) float weight1(const void *w, int64_t i, int bf16) {
    return bf16 ? bf16_to_float(((const uint16_t *)w)[i]) : ((const float *)w)[i];
}

/* bf16 weights w[i..i+15] widened with one 32-byte load: each 32-bit lane holds two bf16 values, the even column in
 * its low half and the odd one in its high half, so a shift and a mask give two vectors of floats (fewer
 * instructions per byte than widening eight values at a time, which counts once the cores are busy). */
static inline void pair16(const void *w, int64_t i, v8 *even, v8 *odd) {
    v8u lanes;
    memcpy(&lanes, (const uint16_t *)w + i, sizeof lanes);
    *even = (v8)(lanes << 16);
    *odd = (v8)(lanes & 0xFFFF0000u);
}

/* Where column c's sum is kept in the per-thread partials: bf16 blocks of 16 columns hold the even columns first. */
static inline __attribute__((always_inline)) int slot(int c, int vector_end, int bf16) {
    return bf16 && c < vector_end ? (c & ~15) + ((c & 1) << 3) + ((c & 15) >> 1) : c;
}

/* x [M, K] contiguous (M <= MAX_ROWS), w [K, N] row-major (Paddle's Linear layout), bias [N] or NULL, y [M, N].
 * Returns 0 (y untouched) when there is no memory for the threads' partial sums. */
static inline __attribute__((always_inline)) int linear_rows(const float *x, const void *w, const float *bias,
                                                             float *y, int M, int K, int N, int bf16) {
    const int threads = (int64_t)K * N >= 65536 ? omp_get_max_threads() : 1;
    float *partial = malloc(sizeof(float) * (size_t)threads * M * N);
    if (!partial) return 0;
    const int vector_end = bf16 ? N / 16 * 16 : N / 8 * 8;
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num(), used = omp_get_num_threads();
        /* weight rows per pass, whole groups per thread: one load and store of acc per `group` FMAs. bf16 takes
         * eight (widening adds instructions per weight, so the acc traffic left counts more: eight measured 11-14%
         * faster than four at 1 and 8 rows on Janus-Pro-1B's projections), float32 four. */
        const int group = bf16 ? 8 : 4;
        const int per = (K / used + group - 1) / group * group;
        const int k0 = t * per < K ? t * per : K, k1 = t == used - 1 ? K : (k0 + per < K ? k0 + per : K);
        float *acc = partial + (int64_t)t * M * N;
        memset(acc, 0, sizeof(float) * M * N);
        float xs[MAX_ROWS * 8];
        int k = k0;
        for (; k + group <= k1; k += group) {
            for (int m = 0; m < M; m++)
                for (int j = 0; j < group; j++) xs[m * group + j] = x[(int64_t)m * K + k + j];
            const int64_t r0 = (int64_t)k * N;
            if (bf16) { /* 16 columns per load: even ones to acc[c..c+7], odd ones to acc[c+8..c+15] */
                /* With two rows of x or more, every 32 columns ask for the same line of the next eight weight rows
                 * (into L2), so their streams are under way when their pass starts. Whole 1B bf16 decode steps in
                 * turns with and without: 2 rows 0.88-0.93, 4 rows 0.88-0.90 of the time; one row goes without
                 * (no gain). */
                const uint16_t *next = M >= 2 && k + 2 * group <= k1 ? (const uint16_t *)w + r0 + group * (int64_t)N
                                                                      : NULL;
                for (int c = 0; c < vector_end; c += 16) {
                    if (next && !(c & 31))
                        for (int j = 0; j < 8; j++) __builtin_prefetch(next + j * (int64_t)N + c, 0, 2);
                    v8 even[8], odd[8];
                    for (int j = 0; j < 8; j++) pair16(w, r0 + j * (int64_t)N + c, &even[j], &odd[j]);
                    for (int m = 0; m < M; m++) {
                        float *am = acc + (int64_t)m * N + c;
                        const float *xm = xs + m * 8;
                        v8 sum_even = load8(am), sum_odd = load8(am + 8);
                        for (int j = 0; j < 8; j++) {
                            const v8 xj = splat(xm[j]);
                            sum_even += xj * even[j];
                            sum_odd += xj * odd[j];
                        }
                        store8(am, sum_even);
                        store8(am + 8, sum_odd);
                    }
                }
            } else {
                const int64_t r1 = r0 + N, r2 = r1 + N, r3 = r2 + N;
                for (int c = 0; c < vector_end; c += 8) {
                    const v8 a0 = weight8(w, r0 + c, bf16), a1 = weight8(w, r1 + c, bf16);
                    const v8 a2 = weight8(w, r2 + c, bf16), a3 = weight8(w, r3 + c, bf16);
                    for (int m = 0; m < M; m++) {
                        float *am = acc + (int64_t)m * N + c;
                        const float *xm = xs + m * 4;
                        store8(am, load8(am) + splat(xm[0]) * a0 + splat(xm[1]) * a1 + splat(xm[2]) * a2 +
                                       splat(xm[3]) * a3);
                    }
                }
            }
            for (int c = vector_end; c < N; c++)
                for (int m = 0; m < M; m++) {
                    float sum = acc[(int64_t)m * N + c];
                    for (int j = 0; j < group; j++)
                        sum += xs[m * group + j] * weight1(w, r0 + j * (int64_t)N + c, bf16);
                    acc[(int64_t)m * N + c] = sum;
                }
        }
        for (; k < k1; k++) {
            const int64_t r0 = (int64_t)k * N;
            for (int m = 0; m < M; m++) {
                const float xm = x[(int64_t)m * K + k];
                float *am = acc + (int64_t)m * N;
                for (int c = 0; c < N; c++) am[slot(c, vector_end, bf16)] += xm * weight1(w, r0 + c, bf16);
            }
        }
#pragma omp barrier
#pragma omp for schedule(static)
        for (int c = 0; c < N; c++) {
            for (int m = 0; m < M; m++) {
                float sum = bias ? bias[c] : 0.0f;
                for (int p = 0; p < used; p++) sum += partial[((int64_t)p * M + m) * N + slot(c, vector_end, bf16)];
                y[(int64_t)m * N + c] = sum;
            }
        }
    }
    free(partial);
    return 1;
}

/* Few-row projections: meant for up to MAX_ROWS rows; more are done MAX_ROWS at a time (each pass reads all of w
 * again). Return 0 when there is no memory for the partial sums (rows before the failing pass are written). */
int janus_linear_rows(const float *x, const float *w, const float *bias, float *y, int M, int K, int N) {
    for (int m0 = 0; m0 < M; m0 += MAX_ROWS)
        if (!linear_rows(x + (int64_t)m0 * K, w, bias, y + (int64_t)m0 * N, M - m0 < MAX_ROWS ? M - m0 : MAX_ROWS, K,
                         N, 0))
            return 0;
    return 1;
}

int janus_linear_rows_bf16(const float *x, const uint16_t *w, const float *bias, float *y, int M, int K, int N) {
    for (int m0 = 0; m0 < M; m0 += MAX_ROWS)
        if (!linear_rows(x + (int64_t)m0 * K, w, bias, y + (int64_t)m0 * N, M - m0 < MAX_ROWS ? M - m0 : MAX_ROWS, K,
                         N, 1))
            return 0;
    return 1;
}

#ifdef JANUS_WITH_MKL
enum { CBLAS_ROW_MAJOR = 101, CBLAS_NO_TRANS = 111 };
void cblas_sgemm(int layout, int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                 const float *b, int ldb, float beta, float *c, int ldc);

/* buf [depth, cols] (float32) = w [depth rows of stride N, cols columns] (bf16) */
static void widen_tile(const uint16_t *w, int64_t N, float *buf, int depth, int cols) {
    const int vector_end = cols / 8 * 8;
    for (int r = 0; r < depth; r++) {
        const uint16_t *src = w + r * N;
        float *dst = buf + (int64_t)r * cols;
        int c = 0;
        for (; c < vector_end; c += 8) store8(dst + c, load8_bf16(src + c));
        for (; c < cols; c++) dst[c] = bf16_to_float(src[c]);
    }
}

#define PANEL_ROWS 128       /* from here on the panels below */
#define PANEL_FLOATS (8 << 20) /* 32 MiB of widened weights per panel */

/* Prefill-sized products: widen a panel of whole weight columns (all K rows, as many columns as fit in 32 MiB) and
 * hand it to MKL's own threaded sgemm, which runs closer to its peak on one large product than on many tiles; the
 * widening is a few percent of the arithmetic at these row counts. */
static int linear_bf16_panels(const float *x, const uint16_t *w, const float *bias, float *y, int M, int K, int N) {
    int cols = PANEL_FLOATS / K;
    cols = cols >= N ? N : (cols < 8 ? 8 : cols / 8 * 8);
    float *panel = scratch_buffer((size_t)K * cols);
    if (!panel) return 0; /* the caller takes the register-blocked kernel */
    for (int n0 = 0; n0 < N; n0 += cols) {
        const int width = N - n0 < cols ? N - n0 : cols;
#pragma omp parallel for schedule(static)
        for (int k = 0; k < K; k += 64) widen_tile(w + (int64_t)k * N + n0, N, panel + (int64_t)k * width,
                                                   K - k < 64 ? K - k : 64, width);
        float *c = y + n0;
#pragma omp parallel for schedule(static) if ((int64_t)M * width > 65536)
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

int janus_linear_blocked_bf16(const float *x, const uint16_t *w, const float *bias, float *y, int M, int K, int N);

/* x [M, K] contiguous, w [K, N] bf16 row-major, bias [N] or NULL, y [M, N]: for many rows. Returns 0 (y
 * untouched) when there is no memory for the kernels' buffers. */
int janus_linear_bf16(const float *x, const uint16_t *w, const float *bias, float *y, int M, int K, int N) {
#ifdef JANUS_WITH_MKL
    if (M >= PANEL_ROWS && linear_bf16_panels(x, w, bias, y, M, K, N)) return 1;
#endif
    return janus_linear_blocked_bf16(x, w, bias, y, M, K, N);
}

/* out [rows, dim] float32 = table [*, dim] bf16 at ids[rows]: an embedding lookup from bf16 storage. */
void janus_embedding_bf16(const int64_t *ids, const uint16_t *table, float *out, int64_t rows, int dim) {
#pragma omp parallel for schedule(static) if (rows * dim > 65536)
    for (int64_t r = 0; r < rows; r++) {
        const uint16_t *src = table + ids[r] * dim;
        float *dst = out + r * dim;
        for (int d = 0; d < dim; d++) dst[d] = bf16_to_float(src[d]);
    }
}
