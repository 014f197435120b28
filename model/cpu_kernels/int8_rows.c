/* y = x W + b for a few rows (a decode step) with int8 weights: W[k, n] = q[k, n] * scale[k / group, n], a float32
 * scale per output column for each group of `group` weight rows (input columns of the layer), float32 activations
 * and arithmetic.
 *
 * A decode step is bound by reading the weights: int8 halves the bytes of bf16. The weights are split among the
 * threads by rows (each streams one contiguous block, as linear.c does for bf16) and widened in registers as they
 * are loaded (sign-extend, convert: two instructions per eight weights). The scale is not applied to each weight:
 * eight weight rows are summed unscaled, t = sum_j x[k + j] q[k + j, c], and folded into the column's running sum
 * with one fused multiply-add, acc += t * scale[g, c], which costs what the plain add acc += t would. A group is a
 * multiple of eight rows, so eight rows never straddle two groups.
 */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vec.h"

#define MAX_ROWS 8
#define STEP 8 /* weight rows summed before the scale is applied */

/* q[i..i+7] -> eight floats: vpmovsxbd + vcvtdq2ps. Intrinsics where there is AVX2: GCC turns the same widening
 * written with vector extensions (__builtin_convertvector of an 8-byte vector) into a byte-at-a-time sequence that
 * ran ten times slower than the bf16 kernel. Elsewhere a loop the compiler vectorises as it can. */
#if defined(__AVX2__)
#include <immintrin.h>
static inline v8 load8_int8(const int8_t *q) {
    return (v8)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q)));
}
#else
static inline v8 load8_int8(const int8_t *q) {
    v8 r;
    for (int i = 0; i < 8; i++) r[i] = (float)q[i];
    return r;
}
#endif

/* x [M, K] contiguous (M <= MAX_ROWS), q [K, N] row-major, scales [ceil(K / group), N], bias [N] or NULL, y [M, N] */
static int int8_rows(const float *x, const int8_t *q, const float *scales, int group, const float *bias, float *y,
                     int M, int K, int N) {
    const int threads = (int64_t)K * N >= 131072 ? omp_get_max_threads() : 1;
    float *partial = malloc(sizeof(float) * (size_t)threads * M * N);
    if (!partial) return 0;
    const int vector_end = N / 8 * 8;
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num(), used = omp_get_num_threads();
        const int per = (K / used + STEP - 1) / STEP * STEP; /* whole steps per thread: they start at multiples of 8 */
        const int k0 = t * per < K ? t * per : K, k1 = t == used - 1 ? K : (k0 + per < K ? k0 + per : K);
        float *acc = partial + (int64_t)t * M * N;
        memset(acc, 0, sizeof(float) * M * N);
        float xs[MAX_ROWS * STEP];
        int k = k0;
        for (; k + STEP <= k1; k += STEP) {
            for (int m = 0; m < M; m++)
                for (int j = 0; j < STEP; j++) xs[m * STEP + j] = x[(int64_t)m * K + k + j];
            const int8_t *rows = q + (int64_t)k * N;
            const float *scale = scales + (int64_t)(k / group) * N;
            for (int c = 0; c < vector_end; c += 8) {
                v8 w[STEP];
                for (int j = 0; j < STEP; j++) w[j] = load8_int8(rows + j * (int64_t)N + c);
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
                    for (int j = 0; j < STEP; j++) sum += xs[m * STEP + j] * (float)rows[j * (int64_t)N + c];
                    acc[(int64_t)m * N + c] += sum * scale[c];
                }
        }
        for (; k < k1; k++) { /* the last few rows of a K that is not a multiple of 8 */
            const int8_t *row = q + (int64_t)k * N;
            const float *scale = scales + (int64_t)(k / group) * N;
            for (int m = 0; m < M; m++) {
                const float xm = x[(int64_t)m * K + k];
                float *am = acc + (int64_t)m * N;
                for (int c = 0; c < N; c++) am[c] += xm * (float)row[c] * scale[c];
            }
        }
#pragma omp barrier
#pragma omp for schedule(static)
        for (int c = 0; c < N; c++) {
            for (int m = 0; m < M; m++) {
                float sum = bias ? bias[c] : 0.0f;
                for (int p = 0; p < used; p++) sum += partial[((int64_t)p * M + m) * N + c];
                y[(int64_t)m * N + c] = sum;
            }
        }
    }
    free(partial);
    return 1;
}

/* Few-row products from int8 weights: `group` (a multiple of 8) weight rows share a scale row. Meant for up to
 * MAX_ROWS rows; more are done MAX_ROWS at a time (each pass reads all of q again). Returns 0 (y untouched) when
 * there is no memory for the per-thread sums or the group is not a positive multiple of 8. */
int janus_linear_rows_int8(const float *x, const int8_t *q, const float *scales, int group, const float *bias,
                           float *y, int M, int K, int N) {
    if (group <= 0 || group % STEP != 0) return 0;
    if (M <= 0 || N <= 0) return 1;
    for (int m0 = 0; m0 < M; m0 += MAX_ROWS) {
        const int rows = M - m0 < MAX_ROWS ? M - m0 : MAX_ROWS;
        if (!int8_rows(x + (int64_t)m0 * K, q, scales, group, bias, y + (int64_t)m0 * N, rows, K, N)) return 0;
    }
    return 1;
}
