/* Float32 convolution and GroupNorm for the CPU on channels-last (NHWC) activations: the VQ image decoder.
 *
 * A 3x3 convolution is a matrix product: each output pixel's 3x3 neighbourhood, laid out as one row of
 * 9 * Cin values (taps outer, channels inner: nine contiguous copies in NHWC), times the weights as
 * [9 * Cin, Cout]. The rows are gathered ("im2col") a tile of output pixels at a time, so the gathered block
 * stays cache-sized instead of 9x the activation; each thread gathers and multiplies its own tiles. Zero padding
 * and a preceding 2x nearest upsampling are folded into the gathering (the upsampled tensor is never made), and
 * the bias and an optional residual are written into the output before the product accumulates onto them.
 *
 * The product runs through MKL's sgemm when the paddle wheel ships it (see cpu_kernels/__init__.py), else through
 * a register-tiled loop below.
 *
 * The pixels do not depend on the thread count (nor on how many images are decoded together): threads split the
 * output pixels, never a sum. Each tile of output pixels is one single-threaded product whose shape comes from the
 * image's size alone, so every output value is summed by the same call in the same order whichever thread runs
 * it. That matters with MKL: the order in which it sums an element depends on the call's shape (a tile of 72 rows
 * and one of 144 round differently), on packed versus plain weights, and on the thread count the weights were
 * packed under. GroupNorm's sums go through fixed segments of pixels in a fixed order for the same reason.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vec.h"

#define TILE_ROWS 384 /* output pixels per gathered tile: 384 x 9 x 128 floats = 1.8 MB (192: 10% slower) */
#define SMALL_IMAGE_TILES 16 /* tiles per image below 16 x 384 pixels, so that several threads share it */
#define MIN_TILE_ROWS 32 /* and no fewer pixels per tile than this */

#ifdef JANUS_WITH_MKL
enum { CBLAS_ROW_MAJOR = 101, CBLAS_NO_TRANS = 111, CBLAS_PACKED = 151, CBLAS_B_MATRIX = 162 };
void cblas_sgemm(int layout, int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                 const float *b, int ldb, float beta, float *c, int ldc);
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k);
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha, const float *src,
                      int ld, float *dest);
void cblas_sgemm_compute(int layout, int trans_a, int trans_b, int m, int n, int k, const float *a, int lda,
                         const float *b, int ldb, float beta, float *c, int ldc);
int MKL_Set_Num_Threads_Local(int threads);

/* c[m, n] += a[m, k] b[k, n], all row-major */
static void gemm_acc(int m, int n, int k, const float *a, int lda, const float *b, float *c) {
    cblas_sgemm(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_NO_TRANS, m, n, k, 1.0f, a, lda, b, n, 1.0f, c, n);
}
/* The weights in MKL's own panel layout, packed once for every tile of `rows` rows instead of once per product
 * (measured 10-15% faster per product of a 384-row tile). */
static float *pack_b(const float *b, int rows, int n, int k) {
    float *packed = malloc(cblas_sgemm_pack_get_size(CBLAS_B_MATRIX, rows, n, k));
    if (packed) cblas_sgemm_pack(CBLAS_ROW_MAJOR, CBLAS_B_MATRIX, CBLAS_NO_TRANS, rows, n, k, 1.0f, b, n, packed);
    return packed;
}
/* a tile's product: through the packed weights when it has the rows they were packed for */
static void tile_gemm(int m, int n, int k, const float *a, int lda, const float *b, const float *packed,
                      int packed_rows, float *c) {
    if (packed && m == packed_rows)
        cblas_sgemm_compute(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_PACKED, m, n, k, a, lda, packed, n, 1.0f, c, n);
    else
        gemm_acc(m, n, k, a, lda, b, c);
}
static int single_threaded_blas(void) { return MKL_Set_Num_Threads_Local(1); }
static void restore_blas(int previous) { MKL_Set_Num_Threads_Local(previous); }

#else
/* Four rows by sixteen columns of c in registers: each row of b loaded feeds eight FMAs. */
static void gemm_acc(int m, int n, int k, const float *a, int lda, const float *b, float *c) {
    const int n16 = n / 16 * 16;
    for (int i0 = 0; i0 < m; i0 += 4) {
        const int rows = m - i0 < 4 ? m - i0 : 4;
        const float *a0 = a + (int64_t)i0 * lda;
        const float *a1 = rows > 1 ? a0 + lda : a0, *a2 = rows > 2 ? a0 + 2 * lda : a0,
                    *a3 = rows > 3 ? a0 + 3 * lda : a0;
        for (int j = 0; j < n16; j += 16) {
            v8 c00 = splat(0), c01 = splat(0), c10 = splat(0), c11 = splat(0);
            v8 c20 = splat(0), c21 = splat(0), c30 = splat(0), c31 = splat(0);
            for (int p = 0; p < k; p++) {
                const v8 b0 = load8(b + (int64_t)p * n + j), b1 = load8(b + (int64_t)p * n + j + 8);
                const v8 x0 = splat(a0[p]), x1 = splat(a1[p]), x2 = splat(a2[p]), x3 = splat(a3[p]);
                c00 += x0 * b0, c01 += x0 * b1, c10 += x1 * b0, c11 += x1 * b1;
                c20 += x2 * b0, c21 += x2 * b1, c30 += x3 * b0, c31 += x3 * b1;
            }
            const v8 acc[4][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}};
            for (int r = 0; r < rows; r++) {
                float *out = c + (int64_t)(i0 + r) * n + j;
                store8(out, load8(out) + acc[r][0]);
                store8(out + 8, load8(out + 8) + acc[r][1]);
            }
        }
        for (int r = 0; r < rows; r++) { /* the last n % 16 columns */
            const float *ar = a0 + (int64_t)r * lda;
            float *out = c + (int64_t)(i0 + r) * n;
            for (int j = n16; j < n; j++) {
                float sum = 0.0f;
                for (int p = 0; p < k; p++) sum += ar[p] * b[(int64_t)p * n + j];
                out[j] += sum;
            }
        }
    }
}
static float *pack_b(const float *b, int rows, int n, int k) { (void)b, (void)rows, (void)n, (void)k; return NULL; }
static void tile_gemm(int m, int n, int k, const float *a, int lda, const float *b, const float *packed,
                      int packed_rows, float *c) {
    (void)packed, (void)packed_rows;
    gemm_acc(m, n, k, a, lda, b, c);
}
static int single_threaded_blas(void) { return 0; }
static void restore_blas(int previous) { (void)previous; }
#endif

/* Paddle's weight [cout, cin, k, k] -> [k * k * cin, cout] (taps outer, input channels inner: the gathered rows'
 * order). A transpose of [cout, cin * taps] in 32 x 32 blocks, so that reads and writes both run along rows. */
void janus_pack_conv_weight(const float *w, float *packed, int cout, int cin, int taps) {
    enum { BLK = 32 };
    const int cols = cin * taps;
#pragma omp parallel for collapse(2) schedule(static)
    for (int co0 = 0; co0 < cout; co0 += BLK) {
        for (int j0 = 0; j0 < cols; j0 += BLK) {
            const int co1 = co0 + BLK < cout ? co0 + BLK : cout, j1 = j0 + BLK < cols ? j0 + BLK : cols;
            for (int j = j0; j < j1; j++) {
                float *dst = packed + ((int64_t)(j % taps) * cin + j / taps) * cout;
                for (int co = co0; co < co1; co++) dst[co] = w[(int64_t)co * cols + j];
            }
        }
    }
}

/* Output pixels per tile, from the pixels of one image alone (see the top of the file). */
static int tile_rows_for(int64_t image_pixels) {
    const int64_t even = (image_pixels + SMALL_IMAGE_TILES - 1) / SMALL_IMAGE_TILES;
    if (even >= TILE_ROWS) return TILE_ROWS;
    if (even >= MIN_TILE_ROWS) return (int)even;
    return image_pixels < MIN_TILE_ROWS ? (int)image_pixels : MIN_TILE_ROWS;
}

/* y [B, Ho, Wo, cout] = conv(x) + bias (+ residual), x [B, H, W, cin], all contiguous NHWC.
 *   ksize 3 (zero padding 1) or 1; stride 1.
 *   upsample: the convolution reads x upsampled 2x (nearest): Ho = 2H, Wo = 2W; else Ho = H, Wo = W.
 *   w: janus_pack_conv_weight's layout; bias [cout] or NULL; residual [B, Ho, Wo, cout] or NULL (may be y itself).
 * Tiles never straddle two images; each image's last tile may be shorter.
 */
void janus_conv2d_nhwc(const float *x, const float *w, const float *bias, const float *residual, float *y, int B,
                       int H, int W, int cin, int cout, int ksize, int upsample) {
    const int shift = upsample ? 1 : 0, Ho = H << shift, Wo = W << shift, half = ksize / 2;
    const int64_t image = (int64_t)Ho * Wo, K = (int64_t)ksize * ksize * cin;
    const int gather = ksize != 1 || upsample; /* a plain 1x1 convolution multiplies x's rows as they are */
    const int tile_rows = tile_rows_for(image);
    const int64_t per_image = (image + tile_rows - 1) / tile_rows, tiles = (int64_t)B * per_image;
    const int outer = single_threaded_blas(); /* MKL's packed layout follows its thread count at packing */
    float *packed = pack_b(w, tile_rows, cout, (int)K);
    restore_blas(outer);
#pragma omp parallel
    {
        const int previous = single_threaded_blas();
        float *cols = gather ? line_aligned(sizeof(float) * tile_rows * K) : NULL;
#pragma omp for schedule(monotonic: dynamic) /* libiomp5 has no nonmonotonic entry points */
        for (int64_t tile = 0; tile < tiles; tile++) {
            const int64_t first = tile % per_image * tile_rows, p0 = tile / per_image * image + first;
            const int rows = image - first < tile_rows ? (int)(image - first) : tile_rows;
            float *out = y + p0 * cout;
            for (int r = 0; r < rows; r++) { /* bias and residual first: the product adds onto them */
                float *o = out + (int64_t)r * cout;
                if (residual && residual != y) memcpy(o, residual + (p0 + r) * cout, sizeof(float) * cout);
                else if (!residual) memset(o, 0, sizeof(float) * cout);
                if (bias)
                    for (int c = 0; c < cout; c++) o[c] += bias[c];
            }
            if (!gather) {
                tile_gemm(rows, cout, cin, x + p0 * cin, cin, w, packed, tile_rows, out);
                continue;
            }
            for (int r = 0; r < rows; r++) {
                const int64_t p = p0 + r;
                const int b = (int)(p / image), oy = (int)(p / Wo % Ho), ox = (int)(p % Wo);
                float *row = cols + (int64_t)r * K;
                for (int dy = 0; dy < ksize; dy++) {
                    const int sy = oy + dy - half;
                    for (int dx = 0; dx < ksize; dx++) {
                        const int sx = ox + dx - half;
                        float *dst = row + (int64_t)(dy * ksize + dx) * cin;
                        if (sy < 0 || sy >= Ho || sx < 0 || sx >= Wo)
                            memset(dst, 0, sizeof(float) * cin);
                        else
                            memcpy(dst, x + (((int64_t)b * H + (sy >> shift)) * W + (sx >> shift)) * cin,
                                   sizeof(float) * cin);
                    }
                }
            }
            tile_gemm(rows, cout, (int)K, cols, (int)K, w, packed, tile_rows, out);
        }
        free(cols);
        restore_blas(previous);
    }
    free(packed);
}

static inline v8 swish8(v8 v) { /* v * sigmoid(v), with exp of a non-positive argument only */
    const v8 e = exp8(select8(v > splat(0.0f), -v, v));
    const v8 sig = select8(v > splat(0.0f), splat(1.0f) / (splat(1.0f) + e), e / (splat(1.0f) + e));
    return v * sig;
}

static inline float swish1(float v) { return v / (1.0f + expf(-v)); }

/* GroupNorm over NHWC x [B, HW, C] (each group: C / groups consecutive channels over all HW pixels), then the
 * per-channel affine and, when `swish`, v * sigmoid(v). Per-channel sums are kept in float over chunks of 64
 * pixels, in double over the chunks of a segment of 512 pixels and across segments in order, so the variance
 * (E[x^2] - mean^2) keeps float32 accuracy on large images. Threads split the segments: the order of every sum is
 * the same whatever their number. */
void janus_group_norm_nhwc(const float *x, const float *gamma, const float *beta, float *y, int B, int64_t HW, int C,
                           int groups, float eps, int swish) {
    enum { CHUNK = 64, SEGMENT = 512 };
    const int per_group = C / groups, vec_end = C / 8 * 8;
    const int64_t segments = (HW + SEGMENT - 1) / SEGMENT;
    double *sums = malloc(sizeof(double) * segments * 2 * C); /* [segment][sum | sum of squares][C] */
    float *scale = malloc(sizeof(float) * C), *shift = malloc(sizeof(float) * C);
    for (int b = 0; b < B; b++) {
        const float *xb = x + (int64_t)b * HW * C;
        float *yb = y + (int64_t)b * HW * C;
#pragma omp parallel
        {
            float *fs = malloc(sizeof(float) * 2 * C), *fq = fs + C;
#pragma omp for schedule(static)
            for (int64_t seg = 0; seg < segments; seg++) {
                double *s = sums + seg * 2 * C, *sq = s + C;
                memset(s, 0, sizeof(double) * 2 * C);
                const int64_t end = (seg + 1) * SEGMENT < HW ? (seg + 1) * SEGMENT : HW;
                for (int64_t p0 = seg * SEGMENT; p0 < end; p0 += CHUNK) {
                    memset(fs, 0, sizeof(float) * 2 * C);
                    const int64_t p1 = p0 + CHUNK < end ? p0 + CHUNK : end;
                    for (int64_t p = p0; p < p1; p++) {
                        const float *row = xb + p * C;
                        int c = 0;
                        for (; c < vec_end; c += 8) {
                            const v8 v = load8(row + c);
                            store8(fs + c, load8(fs + c) + v);
                            store8(fq + c, load8(fq + c) + v * v);
                        }
                        for (; c < C; c++) fs[c] += row[c], fq[c] += row[c] * row[c];
                    }
                    for (int c = 0; c < C; c++) s[c] += fs[c], sq[c] += fq[c];
                }
            }
            free(fs);
        }
        for (int g = 0; g < groups; g++) {
            double total = 0.0, total_sq = 0.0;
            for (int64_t seg = 0; seg < segments; seg++)
                for (int c = g * per_group; c < (g + 1) * per_group; c++)
                    total += sums[seg * 2 * C + c], total_sq += sums[seg * 2 * C + C + c];
            const double n = (double)HW * per_group, mean = total / n;
            double var = total_sq / n - mean * mean;
            var = var > 0.0 ? var : 0.0;
            const double rstd = 1.0 / sqrt(var + eps);
            for (int c = g * per_group; c < (g + 1) * per_group; c++) {
                scale[c] = (float)((gamma ? gamma[c] : 1.0f) * rstd);
                shift[c] = (float)((beta ? beta[c] : 0.0f) - mean * (gamma ? gamma[c] : 1.0f) * rstd);
            }
        }
#pragma omp parallel for schedule(static)
        for (int64_t p = 0; p < HW; p++) {
            const float *row = xb + p * C;
            float *out = yb + p * C;
            int c = 0;
            for (; c < vec_end; c += 8) {
                const v8 v = load8(row + c) * load8(scale + c) + load8(shift + c);
                store8(out + c, swish ? swish8(v) : v);
            }
            for (; c < C; c++) {
                const float v = row[c] * scale[c] + shift[c];
                out[c] = swish ? swish1(v) : v;
            }
        }
    }
    free(sums);
    free(scale);
    free(shift);
}
