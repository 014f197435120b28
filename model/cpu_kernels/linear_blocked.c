/* y = x W + b for many rows (a decode step of several rows, a speculative window, a short prompt) with bf16
 * weights [K, N] and float32 activations, computed in float32: a register-blocked micro-kernel.
 *
 * Past a few rows a product is bound by arithmetic, not by reading the weights. A tile of R rows x STRIP columns
 * of y stays in registers while the k loop runs: each k reads STRIP bf16 weights with one load, widens them in
 * registers (a 32-bit lane holds two bf16 values: a shift gives the even column, a mask the odd one) and feeds
 * 2 * R fused multiply-adds from R broadcast activations. The widening is 2 instructions per 2 * R FMAs and never
 * touches memory; the even/odd order of the columns is undone once per tile when y is written.
 *
 * The weights are read from memory once per call: each task takes WIDTH columns, DEPTH weight rows at a time (a
 * panel), and while it multiplies one panel it asks for the next one's cache lines (ahead.h), so that reading
 * overlaps the arithmetic. Every row block's tiles read the panel's strips (STRIP columns down k) where they lie:
 * with several row blocks the later ones find a strip in L2, whose bandwidth a tile's one load of a line per 2 *
 * TILE_ROWS multiply-adds is far from using. (Copying each panel into contiguous strips first, so that they would
 * not alias in L1, cost 4-13% at 12-64 rows.) Only a part strip at a panel's right edge is copied, zero-filled,
 * as reading past it could pass the end of w. Tasks go to the threads in turn, so that each knows its next one.
 * Each thread copies x once per call (per pass of CHUNK_ROWS rows) into row blocks laid out k-major, so that a
 * tile's broadcasts read consecutive floats.
 *
 * Each y value is bias + the products summed in order of k, in float32: the result does not depend on the thread
 * count or on how the columns are split into tasks.
 */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ahead.h"
#include "scratch.h"
#include "vec.h"

/* LANES floats per vector register, tiles of up to TILE_ROWS rows: 2 * TILE_ROWS accumulators, two widened weight
 * vectors and a broadcast fit in the registers (16 with AVX2, 32 with AVX-512). Without AVX a vector is two SSE
 * registers, so fewer rows. */
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
#define STRIP (2 * LANES) /* columns of a tile: one load of bf16 pairs */
#define DEPTH 256         /* weight rows per panel */
#define WIDTH 256         /* columns per task: a panel of DEPTH x WIDTH bf16 is 128 KiB */

typedef float vf __attribute__((vector_size(LANES * 4)));
typedef uint32_t vu __attribute__((vector_size(LANES * 4)));
typedef int32_t vi __attribute__((vector_size(LANES * 4)));

#if LANES == 16
#define INTERLEAVE_LO ((vi){0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23})
#define INTERLEAVE_HI ((vi){8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31})
#define EVENS ((vi){0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30})
#define ODDS ((vi){1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31})
#else
#define INTERLEAVE_LO ((vi){0, 8, 1, 9, 2, 10, 3, 11})
#define INTERLEAVE_HI ((vi){4, 12, 5, 13, 6, 14, 7, 15})
#define EVENS ((vi){0, 2, 4, 6, 8, 10, 12, 14})
#define ODDS ((vi){1, 3, 5, 7, 9, 11, 13, 15})
#endif

#ifdef __clang__
#define SHUFFLE2(a, b, mask) __builtin_shufflevector(a, b, mask)
#else
#define SHUFFLE2(a, b, mask) __builtin_shuffle(a, b, mask)
#endif

static inline vf vload(const float *p) { vf r; memcpy(&r, p, sizeof r); return r; }
static inline void vstore(float *p, vf x) { memcpy(p, &x, sizeof x); }
static inline vf vsplat(float x) { return x - (vf){0}; }

/* STRIP floats at p (only `cols` of them valid, the rest read as 0) -> their even and odd columns */
static inline void load_split(const float *p, int cols, vf *even, vf *odd) {
    float part[STRIP];
    if (cols < STRIP) {
        memset(part, 0, sizeof part);
        memcpy(part, p, sizeof(float) * cols);
        p = part;
    }
    const vf lo = vload(p), hi = vload(p + LANES);
    *even = SHUFFLE2(lo, hi, EVENS);
    *odd = SHUFFLE2(lo, hi, ODDS);
}

/* even and odd columns -> STRIP floats at p in column order, `cols` of them stored */
static inline void store_joined(float *p, int cols, vf even, vf odd) {
    const vf lo = SHUFFLE2(even, odd, INTERLEAVE_LO), hi = SHUFFLE2(even, odd, INTERLEAVE_HI);
    if (cols == STRIP) {
        vstore(p, lo);
        vstore(p + LANES, hi);
        return;
    }
    float part[STRIP];
    vstore(part, lo);
    vstore(part + LANES, hi);
    memcpy(p, part, sizeof(float) * cols);
}

/* y[R rows of stride ldy, cols] (+)= xp [depth][R] (a row block of x, k-major) @ strip [depth][STRIP] (bf16).
 * first: y is not read; it starts from `bias` (NULL: zero). R is a constant at every call (see tile_of). The
 * lines of `ahead` are asked for along the way. strip: ldw bf16 between its rows. */
static inline __attribute__((always_inline)) void tile(const int R, const float *xp, const uint16_t *strip,
                                                       int64_t ldw, int depth, float *y, int64_t ldy, int cols,
                                                       const float *bias, int first, Ahead ahead) {
    vf even[TILE_ROWS], odd[TILE_ROWS];
    if (first) {
        vf bias_even = {0}, bias_odd = {0};
        if (bias) load_split(bias, cols, &bias_even, &bias_odd);
        for (int r = 0; r < R; r++) even[r] = bias_even, odd[r] = bias_odd;
    } else {
        for (int r = 0; r < R; r++) load_split(y + r * ldy, cols, &even[r], &odd[r]);
    }
    AheadWalk walk = ahead_walk(ahead, depth);
    for (int k = 0; k < depth; k++) {
        ahead_step(&walk);
        vu pairs;
        memcpy(&pairs, strip + k * ldw, sizeof pairs);
        const vf w_even = (vf)(pairs << 16), w_odd = (vf)(pairs & 0xFFFF0000u);
        const float *xk = xp + k * R;
        for (int r = 0; r < R; r++) {
            const vf xr = vsplat(xk[r]);
            even[r] += xr * w_even;
            odd[r] += xr * w_odd;
        }
    }
    for (int r = 0; r < R; r++) store_joined(y + r * ldy, cols, even[r], odd[r]);
}

/* tile() compiled for each row count, so that its loops over rows unroll and its accumulators stay in registers */
static void tile_of(int R, const float *xp, const uint16_t *strip, int64_t ldw, int depth, float *y, int64_t ldy,
                    int cols, const float *bias, int first, Ahead ahead) {
    switch (R) {
#define TILE_CASE(n) \
    case n: tile(n, xp, strip, ldw, depth, y, ldy, cols, bias, first, ahead); break;
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

/* strip[k * STRIP + c] = w[k * N + c] for depth rows and cols < STRIP columns, zero past cols */
static void copy_part_strip(const uint16_t *w, int64_t N, int depth, int cols, uint16_t *strip) {
    for (int k = 0; k < depth; k++) {
        memset(strip + k * STRIP, 0, STRIP * 2);
        memcpy(strip + k * STRIP, w + k * N, (size_t)cols * 2);
    }
}

/* The row blocks of a chunk of M rows: as few blocks of at most TILE_ROWS rows as possible, of sizes differing by at
 * most one (8 rows are two tiles of 4 rather than 6 and 2: a 2-row tile does a third of the FMAs per weight load). */
static inline int block_start(int b, int blocks, int M) { return (int)((int64_t)b * M / blocks); }

/* dst[k * 8 + r] = src[r * K + k] for 8 rows and 8 columns: an 8 x 8 transpose in registers (three rounds of
 * pairing), where one float at a time cost 4-10% of a 16-64 row product */
static inline void transpose8(const float *src, int64_t K, float *dst) {
    v8 r[8], t[8], u[8];
    for (int i = 0; i < 8; i++) r[i] = load8(src + i * K);
    for (int i = 0; i < 8; i += 2) { /* rows i, i + 1: columns 0 1 4 5, then 2 3 6 7, interleaved */
        t[i] = SHUFFLE2(r[i], r[i + 1], ((v8i){0, 8, 1, 9, 4, 12, 5, 13}));
        t[i + 1] = SHUFFLE2(r[i], r[i + 1], ((v8i){2, 10, 3, 11, 6, 14, 7, 15}));
    }
    for (int i = 0; i < 8; i += 4) { /* four rows of columns c and c + 4, for c = 0..3 */
        u[i] = SHUFFLE2(t[i], t[i + 2], ((v8i){0, 1, 8, 9, 4, 5, 12, 13}));
        u[i + 1] = SHUFFLE2(t[i], t[i + 2], ((v8i){2, 3, 10, 11, 6, 7, 14, 15}));
        u[i + 2] = SHUFFLE2(t[i + 1], t[i + 3], ((v8i){0, 1, 8, 9, 4, 5, 12, 13}));
        u[i + 3] = SHUFFLE2(t[i + 1], t[i + 3], ((v8i){2, 3, 10, 11, 6, 7, 14, 15}));
    }
    for (int c = 0; c < 4; c++) { /* all eight rows of columns c and c + 4 */
        store8(dst + c * 8, SHUFFLE2(u[c], u[c + 4], ((v8i){0, 1, 2, 3, 8, 9, 10, 11})));
        store8(dst + (c + 4) * 8, SHUFFLE2(u[c], u[c + 4], ((v8i){4, 5, 6, 7, 12, 13, 14, 15})));
    }
}

/* xs [DEPTH][R] per row block, one after the other = x [M rows of stride K] at columns k0..k0+depth */
static void pack_rows(const float *x, int64_t K, int M, int depth, float *xs) {
    const int blocks = (M + TILE_ROWS - 1) / TILE_ROWS;
    for (int b = 0; b < blocks; b++) {
        const int m0 = block_start(b, blocks, M), R = block_start(b + 1, blocks, M) - m0;
        float *dst = xs + m0 * DEPTH;
        int k = 0;
        if (R == 8)
            for (; k + 8 <= depth; k += 8) transpose8(x + m0 * K + k, K, dst + k * 8);
        for (int r = 0; r < R; r++) {
            const float *src = x + (m0 + r) * K;
            for (int j = k; j < depth; j++) dst[j * R + r] = src[j];
        }
    }
}

/* xs = x [M rows of stride K] packed by pack_rows for every panel of DEPTH columns, panel p at p * M * DEPTH */
static void pack_all_rows(const float *x, int K, int M, float *xs) {
    for (int k0 = 0; k0 < K; k0 += DEPTH)
        pack_rows(x + k0, K, M, K - k0 < DEPTH ? K - k0 : DEPTH, xs + (int64_t)(k0 / DEPTH) * M * DEPTH);
}

/* One task: y[M, WIDTH columns from n0] for a chunk of at most CHUNK_ROWS rows, from its x packed by pack_all_rows
 * (once per thread and chunk, not once per task: redone for each of a product's N / WIDTH tasks, the copy one
 * float at a time cost about a sixteenth of the multiply-adds). */
static void run_task(const float *xs, const uint16_t *w, const float *bias, float *y, int M, int K, int N, int n0,
                     int next_n0, uint16_t *part) {
    const int blocks = (M + TILE_ROWS - 1) / TILE_ROWS;
    const int cols = N - n0 < WIDTH ? N - n0 : WIDTH, strips = (cols + STRIP - 1) / STRIP;
    /* the next panel's weights are asked for while this one is multiplied (see ahead.h), a share per strip by the
     * first row block's tiles */
    for (int k0 = 0; k0 < K; k0 += DEPTH, xs += (int64_t)M * DEPTH) {
        const int depth = K - k0 < DEPTH ? K - k0 : DEPTH;
        /* the next panel: this task's next rows, or the first rows of the thread's next task */
        const Ahead next = k0 + depth < K ? ahead_panel(w + (int64_t)(k0 + depth) * N + n0, 2 * (int64_t)N,
                                                        K - k0 - depth < DEPTH ? K - k0 - depth : DEPTH, 2 * cols)
                         : next_n0 >= 0 ? ahead_panel(w + next_n0, 2 * (int64_t)N, K < DEPTH ? K : DEPTH,
                                                      2 * (N - next_n0 < WIDTH ? N - next_n0 : WIDTH))
                                        : ahead_none();
        /* the tiles read whole strips where they lie (their lines were asked for ahead); a part strip at the end
         * is copied */
        const int full = cols / STRIP;
        if (full < strips)
            copy_part_strip(w + (int64_t)k0 * N + n0 + full * STRIP, N, depth, cols - full * STRIP, part);
        for (int j = 0; j < strips; j++) {
            const uint16_t *strip = j < full ? w + (int64_t)k0 * N + n0 + j * STRIP : part;
            const int64_t ldw = j < full ? N : STRIP;
            const int c0 = n0 + j * STRIP, width = cols - j * STRIP < STRIP ? cols - j * STRIP : STRIP;
            const Ahead ahead = ahead_share(next, j, strips);
            for (int b = 0; b < blocks; b++) {
                const int m0 = block_start(b, blocks, M), R = block_start(b + 1, blocks, M) - m0;
                tile_of(R, xs + m0 * DEPTH, strip, ldw, depth, y + (int64_t)m0 * N + c0, N, width,
                        bias ? bias + c0 : NULL, k0 == 0, b == 0 ? ahead : ahead_none());
            }
        }
    }
}

#define CHUNK_ROWS 128 /* rows per pass over the weights (a panel's worth of their copy of x stays in L2) */
#define PART_FLOATS (DEPTH * STRIP / 2) /* a part strip's bf16 */

/* x [M, K] contiguous, w [K, N] bf16 row-major, bias [N] or NULL, y [M, N] contiguous. Returns 0 (y untouched)
 * when there is no memory for a thread's buffers. */
int janus_linear_blocked_bf16(const float *x, const uint16_t *w, const float *bias, float *y, int M, int K, int N) {
    if (M <= 0 || N <= 0) return 1;
    if (K <= 0) {
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) y[(int64_t)m * N + n] = bias ? bias[n] : 0.0f;
        return 1;
    }
    const int tasks = (N + WIDTH - 1) / WIDTH;
    const int threads = (int64_t)M * K * N >= (1 << 20) && tasks > 1 ? omp_get_max_threads() : 1;
    /* a thread's copy of x for a chunk: every panel of K, DEPTH floats per row each (a multiple of 64 bytes: the
     * part strip after it stays aligned) */
    const int64_t xs_floats = (int64_t)(M < CHUNK_ROWS ? M : CHUNK_ROWS) * ((K + DEPTH - 1) / DEPTH) * DEPTH;
    int ok = 1;
#pragma omp parallel num_threads(threads)
    {
        float *xs = scratch_buffer(xs_floats + PART_FLOATS);
        if (!xs) {
#pragma omp atomic write
            ok = 0;
        }
#pragma omp barrier
        int all_ok;
#pragma omp atomic read
        all_ok = ok;
        int packed = -1; /* the chunk whose rows xs holds */
        for (int m0 = 0; all_ok && m0 < M; m0 += CHUNK_ROWS) {
            const int rows = M - m0 < CHUNK_ROWS ? M - m0 : CHUNK_ROWS;
            /* in turn, so that a thread knows its next task and can ask for its weights ahead */
            const int used = omp_get_num_threads();
#pragma omp for schedule(static, 1) nowait
            for (int t = 0; t < tasks; t++) {
                if (packed != m0) {
                    pack_all_rows(x + (int64_t)m0 * K, K, rows, xs);
                    packed = m0;
                }
                run_task(xs, w, bias, y + (int64_t)m0 * N, rows, K, N, t * WIDTH,
                         t + used < tasks ? (t + used) * WIDTH : -1, (uint16_t *)(xs + xs_floats));
            }
        }
    }
    return ok;
}
