/* y = x W + b for a few rows of x: the projections of a decode step, which read every weight once and are bound by
 * memory bandwidth. MKL's sgemm (Paddle's matmul) reads weights at about 17-20 GB/s on this kind of CPU for one
 * row, and not much faster per row for 2-8 rows; splitting W by rows among the threads instead of by columns
 * makes each thread stream one contiguous block of memory, which measured 25-33 GB/s (the machine's read
 * bandwidth). Each thread sums its rows into a private partial y; the partials are added at the end.
 */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vec.h"

#define MAX_ROWS 8

/* x [M, K] contiguous, w [K, N] row-major (Paddle's Linear layout), bias [N] or NULL, y [M, N]. Meant for a few
 * rows; more are done MAX_ROWS at a time (each pass reads all of w again). */
void janus_linear_rows(const float *x, const float *w, const float *bias, float *y, int M, int K, int N) {
    if (M > MAX_ROWS) {
        for (int m0 = 0; m0 < M; m0 += MAX_ROWS)
            janus_linear_rows(x + (int64_t)m0 * K, w, bias, y + (int64_t)m0 * N, M - m0 < MAX_ROWS ? M - m0 : MAX_ROWS,
                              K, N);
        return;
    }
    const int threads = (int64_t)K * N >= 65536 ? omp_get_max_threads() : 1;
    float *partial = malloc(sizeof(float) * (size_t)threads * M * N);
    const int vector_end = N / 8 * 8;
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num(), used = omp_get_num_threads();
        const int per = (K / used + 3) / 4 * 4; /* whole groups of four rows per thread */
        const int k0 = t * per < K ? t * per : K, k1 = t == used - 1 ? K : (k0 + per < K ? k0 + per : K);
        float *acc = partial + (int64_t)t * M * N;
        memset(acc, 0, sizeof(float) * M * N);
        float xs[MAX_ROWS * 4];
        int k = k0;
        for (; k + 4 <= k1; k += 4) { /* four weight rows per pass: one load and store of acc per four FMAs */
            for (int m = 0; m < M; m++)
                for (int j = 0; j < 4; j++) xs[m * 4 + j] = x[(int64_t)m * K + k + j];
            const float *w0 = w + (int64_t)k * N, *w1 = w0 + N, *w2 = w1 + N, *w3 = w2 + N;
            for (int c = 0; c < vector_end; c += 8) {
                const v8 a0 = load8(w0 + c), a1 = load8(w1 + c), a2 = load8(w2 + c), a3 = load8(w3 + c);
                for (int m = 0; m < M; m++) {
                    float *am = acc + (int64_t)m * N + c;
                    const float *xm = xs + m * 4;
                    store8(am, load8(am) + splat(xm[0]) * a0 + splat(xm[1]) * a1 + splat(xm[2]) * a2 +
                                   splat(xm[3]) * a3);
                }
            }
            for (int c = vector_end; c < N; c++)
                for (int m = 0; m < M; m++) {
                    const float *xm = xs + m * 4;
                    acc[(int64_t)m * N + c] += xm[0] * w0[c] + xm[1] * w1[c] + xm[2] * w2[c] + xm[3] * w3[c];
                }
        }
        for (; k < k1; k++) {
            const float *w0 = w + (int64_t)k * N;
            for (int m = 0; m < M; m++) {
                const float xm = x[(int64_t)m * K + k];
                float *am = acc + (int64_t)m * N;
                for (int c = 0; c < N; c++) am[c] += xm * w0[c];
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
}
