/* Asking for the next panel's weights while this one is multiplied (linear_blocked.c). A blocked kernel takes its
 * weights a panel at a time: runs of a few hundred bytes from each of 256 weight rows, too short for the hardware
 * prefetcher to follow, so a panel came from memory only when it was first read, and reading alternated with the
 * arithmetic instead of overlapping it. Instead each tile of the current panel asks for a share of the next panel's
 * cache lines, one or two per k of its loop. (int8_blocked.c measured 10-25% slower with it, with either cache
 * level asked for; its tiles read a float32 copy of the panel, 32 KiB a strip, twice a bf16 strip.) */
#ifndef JANUS_AHEAD_H
#define JANUS_AHEAD_H

#include <stdint.h>

/* The cache lines of `rows` runs of the same length, one every `stride` bytes from `base` (none: base NULL), and
 * the share [first, first + count) of them that one tile asks for. */
typedef struct {
    const char *base;
    int64_t stride;
    int per_row, first, count;
} Ahead;

/* All the lines of rows runs of `bytes` bytes each; a run need not start on a line, so it may touch one more. */
static inline Ahead ahead_panel(const void *base, int64_t stride, int rows, int bytes) {
    const int per_row = (bytes + 63) / 64 + 1;
    const Ahead panel = {(const char *)base, stride, per_row, 0, base ? rows * per_row : 0};
    return panel;
}

/* No lines to ask for. */
static inline Ahead ahead_none(void) { return ahead_panel(NULL, 0, 0, 0); }

/* Share `part` of `parts` of a panel's lines. */
static inline Ahead ahead_share(Ahead panel, int part, int parts) {
    const int total = panel.count;
    panel.first = (int)((int64_t)part * total / parts);
    panel.count = (int)((int64_t)(part + 1) * total / parts) - panel.first;
    return panel;
}

/* A share's lines spread over the `depth` steps of a tile's loop: ahead_step asks for one step's. */
typedef struct {
    const char *base;
    int64_t stride;
    int per_row, row, line, left, per_step;
} AheadWalk;

static inline AheadWalk ahead_walk(Ahead share, int depth) {
    AheadWalk walk = {share.base, share.stride, share.per_row, 0, 0, share.base ? share.count : 0, 0};
    if (walk.left > 0) {
        walk.row = share.first / share.per_row;
        walk.line = share.first - walk.row * share.per_row;
        walk.per_step = (walk.left + depth - 1) / depth;
    }
    return walk;
}

static inline __attribute__((always_inline)) void ahead_step(AheadWalk *walk) {
    for (int p = 0; p < walk->per_step && walk->left > 0; p++, walk->left--) {
        __builtin_prefetch(walk->base + walk->row * walk->stride + walk->line * 64, 0, 2);
        if (++walk->line == walk->per_row) walk->line = 0, walk->row++;
    }
}

#endif
