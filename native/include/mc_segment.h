/* Segment files (a DRAM segment in shared memory, an SSD file) mapped into this process. */
#ifndef MC_SEGMENT_H
#define MC_SEGMENT_H

#include "mc_common.h"

/* CDEF-BEGIN */
typedef struct {
    void *addr;
    uint64_t size;
    uint64_t dev;        /* st_dev and st_ino of the file: a replaced file is a new segment */
    uint64_t ino;
} mc_segment;

int mc_segment_map(const char *path, uint64_t size, int create, mc_segment *out);
int mc_segment_unmap(mc_segment *segment);
/* CDEF-END */

/* for file_segment.c, which opens SSD segment files with the same checks: the open
 * descriptor of a regular file (never through a symlink) of at least `size` bytes, or with
 * `create` one made (mode 0660 whatever the umask) and sized to `size`; or -errno */
int mc_segment_open_file(const char *path, uint64_t size, int create, int writable,
                         uint64_t *dev, uint64_t *ino);

#endif
