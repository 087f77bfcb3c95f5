/* Memory copies for the shm transport: large copies are split across a small thread pool. */
#ifndef MC_COPY_H
#define MC_COPY_H

#include "mc_common.h"

/* CDEF-BEGIN */
typedef struct {
    void *dst;
    const void *src;
    uint64_t length;
} mc_copy_item;

/* MC_COPY_STREAM: non-temporal stores, for destinations this process will not read soon (a
 * put into a segment): no read-for-ownership of the target lines, ~1.6x the bandwidth into
 * cold memory here, and the caller's cache is left alone */
#define MC_COPY_STREAM 1

int mc_copy_batch(const mc_copy_item *items, size_t count, int flags);
int mc_copy_set_threads(int threads);
int mc_copy_threads(void);
/* CDEF-END */

#endif
