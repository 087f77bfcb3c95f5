/* File-backed segments (the SSD tier): opened, sized, then read and written with pread/pwrite.
 *
 * Unlike a DRAM segment the file is never mapped: an SSD segment may be far larger than
 * memory, and the page cache (which the data server's sendfile reads from) already keeps its
 * hot pages. The caller owns the descriptor and closes it with mc_file_close.
 */
#ifndef MC_FILE_H
#define MC_FILE_H

#include "mc_common.h"

/* CDEF-BEGIN */
typedef struct {
    int fd;
    uint64_t size;
    uint64_t dev;        /* st_dev and st_ino of the file: a replaced file is a new segment */
    uint64_t ino;
} mc_file;

/* create: O_CREAT (mode 0660 whatever the umask), sized to `size` and allocated, existing
 * contents kept; else an existing regular file of at least `size` bytes (never a symlink).
 * `writable` 0 opens read-only (create needs it set). */
int mc_file_open(const char *path, uint64_t size, int create, int writable, mc_file *out);
int mc_file_close(mc_file *file);
/* exactly `length` bytes at `offset`, retried over short counts and EINTR; 0 or -errno
 * (-EIO when the file ends early: someone truncated it) */
int mc_file_read(int fd, uint64_t offset, void *dst, uint64_t length);
int mc_file_write(int fd, uint64_t offset, const void *src, uint64_t length);
/* CDEF-END */

#endif
