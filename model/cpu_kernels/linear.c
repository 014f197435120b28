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
 * With bf16 weights the same streaming serves up to 32 rows a pass (a decode step of several rows, a speculative
 * window): the rows go in register tiles (up to 8 rows with AVX-512, 4 without), whose sums stay in registers
 * over eight weight rows, so that the arithmetic keeps up with the stream. On a Xeon with AVX-512 this beat the
 * register-blocked kernel of linear_blocked.c at every row count up to 64 (that one reads the weights a panel of
 * columns at a time, in runs of 512 bytes per weight row, which its hardware prefetchers followed at half the
 * bandwidth); on an AMD EPYC with AVX2 it took 0.58 of its time at 8 rows, 0.79 at 16-24 and 0.82-0.98 at 32-64
 * (two runs, in turns). Past 64 rows (two passes) the blocked kernel takes over; prefill-sized products (128 rows
 * and more) with the paddle wheel's MKL widen panels of whole columns and run one threaded sgemm per panel, as
 * Paddle's float32 matmul does on the whole weight.
 */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "scratch.h"
#include "vec.h"

#define MAX_ROWS 32 /* rows of x per pass over the weights */

/* One body for both storages: `bf16` is a constant at every call, so inlining removes the branch. */
static inline __attribute__((always_inline)) v8 weight8(const void *w, int64_t i, int bf16) {
    return bf16 ? load8_bf16((const uint16_t *)w + i) : load8((const float *)w + i);
}
static inline __attribute__((always_inline)) float weight1(const void *w, int64_t i, int bf16) {
    return bf16 ? bf16_to_float(((const uint16_t *)w)[i]) : ((const float *)w)[i];
}

/* bf16 weights are widened PAIR_COLS columns at a time with one load: each 32-bit lane holds two bf16 values, the
 * even column in its low half and the odd one in its high half, so a shift and a mask give a vector of each (fewer
 * instructions per byte than widening one value a lane, which counts once the cores are busy). A whole register's
 * width: with AVX-512 a pair of 16-float vectors does twice the multiply-adds per instruction of 8-float ones, which
 * is what keeps 4-16 rows bound by reading the weights rather than by arithmetic. */
#if defined(__AVX512F__)
#define PAIR_LANES 16
#else
#define PAIR_LANES 8
#endif
#define PAIR_COLS (2 * PAIR_LANES)
/* Rows of x in a register tile: each takes two vectors of sums, beside the two of widened weights and a broadcast.
 * AVX-512's 32 registers hold 8 rows' sums; with AVX2's 16, 8 rows spilled and the kernel alone took 1.3-1.5x the
 * time of tiles of 4, and 5-6 rows were 4-18% slower than 4 past 12 rows (AMD EPYC, 24 layers' 7 projections of
 * Janus-Pro-1B, in turns). */
#define TILE_ROWS (PAIR_LANES == 16 ? 8 : 4)
typedef float vp __attribute__((vector_size(PAIR_LANES * 4)));
typedef uint32_t vpu __attribute__((vector_size(PAIR_LANES * 4)));
static inline vp load_vp(const float *p) { vp r; memcpy(&r, p, sizeof r); return r; }
static inline void store_vp(float *p, vp x) { memcpy(p, &x, sizeof x); }
static inline vp splat_vp(float x) { return x - (vp){0}; }
typedef int32_t vpi __attribute__((vector_size(PAIR_LANES * 4)));
#if PAIR_LANES == 16
#define PAIR_EVENS ((vpi){0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30})
#define PAIR_ODDS ((vpi){1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31})
#define PAIR_JOIN_LO ((vpi){0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23})
#define PAIR_JOIN_HI ((vpi){8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31})
#else
#define PAIR_EVENS ((vpi){0, 2, 4, 6, 8, 10, 12, 14})
#define PAIR_ODDS ((vpi){1, 3, 5, 7, 9, 11, 13, 15})
#define PAIR_JOIN_LO ((vpi){0, 8, 1, 9, 2, 10, 3, 11})
#define PAIR_JOIN_HI ((vpi){4, 12, 5, 13, 6, 14, 7, 15})
#endif
#ifdef __clang__
#define PAIR_SHUFFLE(a, b, mask) __builtin_shufflevector(a, b, mask)
#else
#define PAIR_SHUFFLE(a, b, mask) __builtin_shuffle(a, b, mask)
#endif
static inline void pair_cols(const void *w, int64_t i, vp *even, vp *odd) {
    vpu lanes;
    memcpy(&lanes, (const uint16_t *)w + i, sizeof lanes);
    *even = (vp)(lanes << 16);
    *odd = (vp)(lanes & 0xFFFF0000u);
}

/* Where column c's sum is kept in the per-thread partials: bf16 blocks of PAIR_COLS columns hold the even columns
 * first. */
static inline __attribute__((always_inline)) int slot(int c, int vector_end, int bf16) {
    return bf16 && c < vector_end
               ? (c & ~(PAIR_COLS - 1)) + ((c & 1) * PAIR_LANES) + ((c & (PAIR_COLS - 1)) >> 1)
               : c;
}

/* acc[R rows of stride N, columns c0..c1 in slot order] += x w over 8 weight rows from r0: a tile of
 * R rows x PAIR_COLS columns keeps its sums in registers over the eight weight rows (2 * R independent multiply-add
 * chains a weight row), loaded and stored once. xs: the rows' eight activations each, row after row. `next`
 * (or NULL): the next eight weight rows, whose lines are asked for along the way. Each column's sum is still the
 * products added one weight row after another: the same arithmetic whatever R. */
static inline __attribute__((always_inline)) void bf16_rows(const int R, const float *xs, const uint16_t *w,
                                                            int64_t r0, int64_t N, int c0, int c1, float *acc,
                                                            const uint16_t *next) {
    for (int c = c0; c < c1; c += PAIR_COLS) {
        if (next && !(c & 31))
            for (int j = 0; j < 8; j++) __builtin_prefetch(next + j * N + c, 0, 2);
        vp sum_even[TILE_ROWS], sum_odd[TILE_ROWS];
        for (int r = 0; r < R; r++) {
            sum_even[r] = load_vp(acc + r * N + c);
            sum_odd[r] = load_vp(acc + r * N + c + PAIR_LANES);
        }
        for (int j = 0; j < 8; j++) {
            vp even, odd;
            pair_cols(w, r0 + j * N + c, &even, &odd);
            for (int r = 0; r < R; r++) {
                const vp xj = splat_vp(xs[r * 8 + j]);
                sum_even[r] += xj * even;
                sum_odd[r] += xj * odd;
            }
        }
        for (int r = 0; r < R; r++) {
            store_vp(acc + r * N + c, sum_even[r]);
            store_vp(acc + r * N + c + PAIR_LANES, sum_odd[r]);
        }
    }
}

/* bf16_rows compiled for each row count, so that its loops unroll and its sums stay in registers */
static void bf16_rows_of(int R, const float *xs, const uint16_t *w, int64_t r0, int64_t N, int c0, int c1,
                         float *acc, const uint16_t *next) {
    switch (R) {
#define ROWS_CASE(n) \
    case n: bf16_rows(n, xs, w, r0, N, c0, c1, acc, next); break;
        ROWS_CASE(1)
        ROWS_CASE(2)
        ROWS_CASE(3)
        ROWS_CASE(4)
#if TILE_ROWS == 8
        ROWS_CASE(5)
        ROWS_CASE(6)
        ROWS_CASE(7)
        ROWS_CASE(8)
#endif
#undef ROWS_CASE
    }
}

#define ACC_FLOATS 65536 /* a thread's sums per column chunk of the bf16 path (256 KiB: they stay in L2) */

/* acc [M, N] (slot order, zeroed) = x[:, k0..k1] w[k0..k1, :] with bf16 w: one thread's share of the weight rows.
 * The columns go in chunks whose sums fit in L2 (past a few rows all N columns' would not: 32 rows of the
 * generation head's 16,384 are 2 MiB), and within a chunk eight weight rows at a time, every row of x in tiles of
 * up to TILE_ROWS rows. Every column's products are added in order of k, whatever the chunk or the tile: a row's
 * sums do not depend on the other rows, nor on how many there are. xs: room for MAX_ROWS * 8 floats. */
static void bf16_part(const float *x, const uint16_t *w, int M, int K, int N, int k0, int k1, int vector_end,
                      float *acc, float *xs) {
    int chunk = ACC_FLOATS / M / PAIR_COLS * PAIR_COLS;
    if (chunk < PAIR_COLS) chunk = PAIR_COLS;
    const int groups_end = k0 + (k1 - k0) / 8 * 8, tiles = (M + TILE_ROWS - 1) / TILE_ROWS;
    for (int c0 = 0; c0 < vector_end; c0 += chunk) {
        const int c1 = vector_end - c0 < chunk ? vector_end : c0 + chunk;
        for (int k = k0; k < groups_end; k += 8) {
            for (int m = 0; m < M; m++)
                for (int j = 0; j < 8; j++) xs[m * 8 + j] = x[(int64_t)m * K + k + j];
            /* With two rows of x or more, every 32 columns ask for the same line of the next eight weight rows (into
             * L2), so their streams are under way when their turn comes. Whole 1B bf16 decode steps in turns with
             * and without: 2 rows 0.88-0.93, 4 rows 0.88-0.90 of the time; one row goes without (no gain). */
            const uint16_t *next = M >= 2 && k + 16 <= k1 ? w + (int64_t)(k + 8) * N : NULL;
            for (int b = 0; b < tiles; b++) { /* sizes differing by at most one: 12 rows are 6 + 6 (or 4 + 4 + 4) */
                const int m0 = b * M / tiles, m1 = (b + 1) * M / tiles;
                bf16_rows_of(m1 - m0, xs + m0 * 8, w, (int64_t)k * N, N, c0, c1, acc + (int64_t)m0 * N,
                             b == 0 ? next : NULL);
            }
        }
    }
    for (int k = k0; k < groups_end; k += 8) /* the columns past the last whole pair of vectors */
        for (int c = vector_end; c < N; c++)
            for (int m = 0; m < M; m++) {
                float sum = acc[(int64_t)m * N + c];
                for (int j = 0; j < 8; j++)
                    sum += x[(int64_t)m * K + k + j] * bf16_to_float(w[(int64_t)(k + j) * N + c]);
                acc[(int64_t)m * N + c] = sum;
            }
    for (int k = groups_end; k < k1; k++) /* the weight rows past the last group of eight */
        for (int m = 0; m < M; m++) {
            const float xm = x[(int64_t)m * K + k];
            float *am = acc + (int64_t)m * N;
            for (int c = 0; c < N; c++) am[slot(c, vector_end, 1)] += xm * bf16_to_float(w[(int64_t)k * N + c]);
        }
}

/* x [M, K] contiguous (M <= MAX_ROWS), w [K, N] row-major (Paddle's Linear layout), bias [N] or NULL, y [M, N].
 * Returns 0 (y untouched) when there is no memory for the threads' partial sums. */
static inline __attribute__((always_inline)) int linear_rows(const float *x, const void *w, const float *bias,
                                                             float *y, int M, int K, int N, int bf16) {
    const int threads = (int64_t)K * N >= 65536 ? omp_get_max_threads() : 1;
    /* on whole lines (8 and 16 rows of bf16 weights took 0.91 and 0.89 of the time with malloc's alignment) */
    float *partial = line_aligned(sizeof(float) * (size_t)threads * M * N);
    if (!partial) return 0;
    const int vector_end = bf16 ? N / PAIR_COLS * PAIR_COLS : N / 8 * 8;
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
        if (bf16) {
            bf16_part(x, (const uint16_t *)w, M, K, N, k0, k1, vector_end, acc, xs);
        } else {
            int k = k0;
            for (; k + group <= k1; k += group) {
                for (int m = 0; m < M; m++)
                    for (int j = 0; j < group; j++) xs[m * group + j] = x[(int64_t)m * K + k + j];
                const int64_t r0 = (int64_t)k * N, r1 = r0 + N, r2 = r1 + N, r3 = r2 + N;
                for (int c = 0; c < vector_end; c += 8) {
                    const v8 a0 = weight8(w, r0 + c, 0), a1 = weight8(w, r1 + c, 0);
                    const v8 a2 = weight8(w, r2 + c, 0), a3 = weight8(w, r3 + c, 0);
                    for (int m = 0; m < M; m++) {
                        float *am = acc + (int64_t)m * N + c;
                        const float *xm = xs + m * 4;
                        store8(am, load8(am) + splat(xm[0]) * a0 + splat(xm[1]) * a1 + splat(xm[2]) * a2 +
                                       splat(xm[3]) * a3);
                    }
                }
                for (int c = vector_end; c < N; c++)
                    for (int m = 0; m < M; m++) {
                        float sum = acc[(int64_t)m * N + c];
                        for (int j = 0; j < group; j++)
                            sum += xs[m * group + j] * weight1(w, r0 + j * (int64_t)N + c, 0);
                        acc[(int64_t)m * N + c] = sum;
                    }
            }
            for (; k < k1; k++) {
                const int64_t r0 = (int64_t)k * N;
                for (int m = 0; m < M; m++) {
                    const float xm = x[(int64_t)m * K + k];
                    float *am = acc + (int64_t)m * N;
                    for (int c = 0; c < N; c++) am[c] += xm * weight1(w, r0 + c, 0);
                }
            }
        }
#pragma omp barrier
        int c_begin = 0;
        if (bf16) { /* PAIR_COLS columns at a time: the same additions as below, the columns back in order */
            c_begin = vector_end;
#pragma omp for schedule(static) nowait
            for (int c = 0; c < vector_end; c += PAIR_COLS) {
                vp bias_even = {0}, bias_odd = {0};
                if (bias) {
                    const vp lo = load_vp(bias + c), hi = load_vp(bias + c + PAIR_LANES);
                    bias_even = PAIR_SHUFFLE(lo, hi, PAIR_EVENS);
                    bias_odd = PAIR_SHUFFLE(lo, hi, PAIR_ODDS);
                }
                for (int m = 0; m < M; m++) {
                    vp sum_even = bias_even, sum_odd = bias_odd;
                    for (int p = 0; p < used; p++) {
                        const float *part = partial + ((int64_t)p * M + m) * N + c;
                        sum_even += load_vp(part);
                        sum_odd += load_vp(part + PAIR_LANES);
                    }
                    store_vp(y + (int64_t)m * N + c, PAIR_SHUFFLE(sum_even, sum_odd, PAIR_JOIN_LO));
                    store_vp(y + (int64_t)m * N + c + PAIR_LANES, PAIR_SHUFFLE(sum_even, sum_odd, PAIR_JOIN_HI));
                }
            }
        }
#pragma omp for schedule(static)
        for (int c = c_begin; c < N; c++) {
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
