/* Eight-float vectors (one AVX register) through GCC/Clang vector extensions, a vectorised exp, and memory on
 * whole cache lines, shared by the kernels. Extensions rather than intrinsics: the code builds with any x86-64 or
 * ARM compiler. */
#ifndef JANUS_VEC_H
#define JANUS_VEC_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* `bytes` of memory on whole 64-byte cache lines (free() releases it), NULL when there is none: at malloc's 16-byte
 * alignment every 64-byte vector load or store touches two lines. */
static inline void *line_aligned(size_t bytes) { return aligned_alloc(64, (bytes + 63) / 64 * 64); }

typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

static inline v8 load8(const float *p) { v8 r; memcpy(&r, p, sizeof r); return r; }
static inline void store8(float *p, v8 x) { memcpy(p, &x, sizeof x); }
static inline v8 splat(float x) { return (v8){x, x, x, x, x, x, x, x}; }
static inline v8 select8(v8i mask, v8 a, v8 b) { return (v8)(((v8i)a & mask) | ((v8i)b & ~mask)); }

/* bfloat16 is the top half of a float32: widening is a zero-extend and a shift, exact (vpmovzxwd + vpslld). */
typedef uint16_t v8h __attribute__((vector_size(16)));
typedef uint32_t v8u __attribute__((vector_size(32)));
static inline v8 load8_bf16(const uint16_t *p) {
    v8h h;
    memcpy(&h, p, sizeof h);
    return (v8)(__builtin_convertvector(h, v8u) << 16);
}
static inline float bf16_to_float(uint16_t h) {
    const uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* e^x for x <= 0: 2^n * e^r with |r| <= ln2/2, degree-6 Taylor (relative error about 1e-7, float's own
 * precision). Below -87 the result is clamped to e^-87 ~ 1.6e-38, never a denormal. */
static inline v8 exp8(v8 x) {
    const v8 lowest = splat(-87.0f), magic = splat(12582912.0f); /* 1.5 * 2^23: rounds to nearest */
    x = select8(x < lowest, lowest, x);
    v8 t = x * splat(1.44269504f) + magic;
    v8 n = t - magic;
    v8 r = x - n * splat(0.693145752f) - n * splat(1.42860677e-06f);
    v8 p = splat(1.0f / 720);
    p = p * r + splat(1.0f / 120);
    p = p * r + splat(1.0f / 24);
    p = p * r + splat(1.0f / 6);
    p = p * r + splat(0.5f);
    p = p * r + splat(1.0f);
    p = p * r + splat(1.0f);
    v8i scale = ((v8i)t - (v8i)magic + 127) << 23;
    return p * (v8)scale;
}

#endif
