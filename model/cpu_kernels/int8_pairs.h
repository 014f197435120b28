/* How the int8 kernels find a weight: q [K, N] is held in pairs of rows. Rows 2i and 2i + 1 take the 2N bytes
 * from (2i) * N on, column by column: q[2i, n] at 2i * N + 2n, q[2i + 1, n] right after it. When K is odd its last
 * row follows on its own, plainly: q[K - 1, n] at (K - 1) * N + n. A pair of rows starts where the first of them
 * would start in a row-major matrix, and the whole takes K * N bytes either way.
 *
 * Why: the few-row integer path multiplies two weight rows at once with vpdpwssd, which wants a column's two
 * weights side by side in a 32-bit lane. Held this way they are loaded as they lie (see int8_rows.c). */
#ifndef JANUS_INT8_PAIRS_H
#define JANUS_INT8_PAIRS_H

#include <stdint.h>

/* bytes between row k's consecutive columns: 2 in a pair, 1 for an odd K's lone last row */
static inline int int8_stride(int64_t K, int64_t k) { return (K & 1) && k == K - 1 ? 1 : 2; }

/* &q[k, n] */
static inline const int8_t *int8_at(const int8_t *q, int64_t K, int64_t N, int64_t k, int64_t n) {
    return int8_stride(K, k) == 1 ? q + k * N + n : q + (k & ~(int64_t)1) * N + 2 * n + (k & 1);
}

#endif
