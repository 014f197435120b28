/* A buffer per thread, kept from call to call and freed when the thread ends. A fresh malloc per call is an mmap
 * at large sizes (glibc maps requests of 32 MiB and more afresh every time), and the kernel then zero-fills every
 * page on first touch: that alone made prefill-sized products 5-20% slower than Paddle's float32 matmul. Each
 * source file including this has a buffer of its own. */
#ifndef JANUS_SCRATCH_H
#define JANUS_SCRATCH_H

#include <pthread.h>
#include <stdlib.h>

#include "vec.h"

struct scratch {
    size_t floats;
    float *data;
};
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static void drop_scratch(void *held) {
    struct scratch *scratch = held;
    free(scratch->data);
    free(scratch);
}
static void make_scratch_key(void) { pthread_key_create(&scratch_key, drop_scratch); }

/* This thread's buffer, at least `floats` long and 64-byte aligned; NULL when there is no memory for it. */
static float *scratch_buffer(size_t floats) {
    pthread_once(&scratch_once, make_scratch_key);
    struct scratch *scratch = pthread_getspecific(scratch_key);
    if (!scratch) {
        scratch = calloc(1, sizeof *scratch);
        if (!scratch || pthread_setspecific(scratch_key, scratch) != 0) {
            free(scratch);
            return NULL;
        }
    }
    if (scratch->floats < floats) {
        free(scratch->data);
        scratch->data = line_aligned(sizeof(float) * floats);
        scratch->floats = scratch->data ? floats : 0;
    }
    return scratch->data;
}

#endif
