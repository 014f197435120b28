/* Small float32 CPU kernels around the attention of a Llama layer: RMSNorm (optionally fused with the residual
 * add before it), the rotary embedding applied in place, SwiGLU, GELU, a bias add, and the patch layout of the
 * vision encoder's first layer. Each replaces several Paddle eager ops, whose fixed
 * cost per call (tens of microseconds) dominates a decode step of a small model. Rows are independent: threads
 * split them (OpenMP, same runtime as attention.c).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "vec.h"

/* sum of squares in eight lanes, so the compiler may vectorise it without reordering a single sum */
static inline float sum_of_squares(const float *x, int dim) {
    float lanes[8] = {0};
    int d = 0;
    for (; d + 8 <= dim; d += 8)
        for (int l = 0; l < 8; l++) lanes[l] += x[d + l] * x[d + l];
    float sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for (; d < dim; d++) sum += x[d] * x[d];
    return sum;
}

/* out = x / sqrt(mean(x^2) + eps) * weight, one row of `dim` floats. */
static inline void rms_norm_row(const float *x, const float *weight, float *out, int dim, float eps) {
    const float scale = 1.0f / sqrtf(sum_of_squares(x, dim) / (float)dim + eps);
    for (int d = 0; d < dim; d++) out[d] = x[d] * scale * weight[d];
}

/* RMSNorm of `rows` rows of `dim` floats. */
void janus_rms_norm(const float *x, const float *weight, float *out, int64_t rows, int dim, float eps) {
#pragma omp parallel for schedule(static) if (rows * dim > 32768)
    for (int64_t r = 0; r < rows; r++) rms_norm_row(x + r * dim, weight, out + r * dim, dim, eps);
}

/* sum[r] = residual[r] + delta[r]; out[r] = rms_norm(sum[r]) * weight (the residual add before each norm). */
void janus_add_rms_norm(const float *residual, const float *delta, const float *weight, float *sum, float *out,
                        int64_t rows, int dim, float eps) {
#pragma omp parallel for schedule(static) if (rows * dim > 32768)
    for (int64_t r = 0; r < rows; r++) {
        const float *res = residual + r * dim, *dr = delta + r * dim;
        float *h = sum + r * dim, *o = out + r * dim;
        for (int d = 0; d < dim; d++) h[d] = res[d] + dr[d];
        rms_norm_row(h, weight, o, dim, eps);
    }
}

/* Rotary embedding, in place, on x [tokens, heads, D] (Llama's rotate-half convention):
 *   x1' = x1 * cos - x2 * sin,  x2' = x2 * cos + x1 * sin   (x1 = first half of a head, x2 = second half)
 * positions[t] selects the row of cos/sin tables [max_positions, D / 2]. */
void janus_rope(float *x, const int64_t *positions, const float *cos_table, const float *sin_table, int64_t tokens,
                int heads, int D) {
    const int half = D / 2;
#pragma omp parallel for schedule(static) if (tokens * heads * D > 32768)
    for (int64_t t = 0; t < tokens; t++) {
        const float *c = cos_table + positions[t] * half, *s = sin_table + positions[t] * half;
        for (int h = 0; h < heads; h++) {
            float *x1 = x + (t * heads + h) * D, *x2 = x1 + half;
            for (int d = 0; d < half; d++) {
                const float a = x1[d], b = x2[d];
                x1[d] = a * c[d] - b * s[d];
                x2[d] = b * c[d] + a * s[d];
            }
        }
    }
}

/* x[r] += bias, in place, for `rows` rows of `dim` floats (Paddle's CPU add broadcasts slowly). */
void janus_add_bias(float *x, const float *bias, int64_t rows, int dim) {
#pragma omp parallel for schedule(static) if (rows * dim > 65536)
    for (int64_t r = 0; r < rows; r++) {
        float *xr = x + r * dim;
        for (int d = 0; d < dim; d++) xr[d] += bias[d];
    }
}

/* out = silu(gate) * up = gate * sigmoid(gate) * up over n floats, with a vectorised exp. */
void janus_swiglu(const float *gate, const float *up, float *out, int64_t n) {
    const int64_t full = n / 8 * 8;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < full; i += 8) {
        const v8 g = load8(gate + i);
        const v8i negative = g < splat(0.0f);
        const v8 e = exp8(select8(negative, g, -g)); /* e^-|g|, never overflows */
        const v8 sigmoid = select8(negative, e, splat(1.0f)) / (splat(1.0f) + e);
        store8(out + i, g * sigmoid * load8(up + i));
    }
    for (int64_t i = full; i < n; i++) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

/* GELU with the exact (erf) form, x * (1 + erf(x / sqrt 2)) / 2, vectorised. erf from Abramowitz & Stegun 7.1.26
 * (absolute error below 1.5e-7), whose exp(-z^2) goes through the same vectorised exp as attention. */
void janus_gelu(const float *x, float *out, int64_t n) {
    const int64_t full = n / 8 * 8;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < full; i += 8) {
        const v8 v = load8(x + i);
        const v8i negative = v < splat(0.0f);
        const v8 z = select8(negative, -v, v) * splat(0.70710678f); /* |x| / sqrt 2 */
        const v8 t = splat(1.0f) / (splat(1.0f) + splat(0.3275911f) * z);
        v8 poly = splat(1.061405429f);
        poly = poly * t + splat(-1.453152027f);
        poly = poly * t + splat(1.421413741f);
        poly = poly * t + splat(-0.284496736f);
        poly = poly * t + splat(0.254829592f);
        const v8 erf_abs = splat(1.0f) - poly * t * exp8(-z * z);
        const v8 erf = select8(negative, -erf_abs, erf_abs);
        store8(out + i, splat(0.5f) * v * (splat(1.0f) + erf));
    }
    for (int64_t i = full; i < n; i++) out[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678f));
}

/* pixels [B, C, S, S] -> patches [B, (S/P)^2, C*P*P], each patch's values in (channel, row, column) order: the
 * input of a stride-P convolution written as one matmul. */
void janus_patchify(const float *pixels, float *patches, int B, int C, int S, int P) {
    const int G = S / P;
#pragma omp parallel for schedule(static) collapse(2)
    for (int b = 0; b < B; b++) {
        for (int gy = 0; gy < G; gy++) {
            for (int gx = 0; gx < G; gx++) {
                float *dst = patches + (((int64_t)b * G + gy) * G + gx) * C * P * P;
                for (int c = 0; c < C; c++)
                    for (int py = 0; py < P; py++) {
                        const float *src = pixels + (((int64_t)b * C + c) * S + gy * P + py) * S + gx * P;
                        memcpy(dst + (c * P + py) * P, src, sizeof(float) * P);
                    }
            }
        }
    }
}
