/* Moves bytes in and out of file-backed segments with pread/pwrite.
 *
 * Opening is segment.c's (mc_segment_open_file): the same O_NOFOLLOW, regular-file and size
 * checks as a DRAM segment, the same mode and allocation at create.
 */
#include "mc_file.h"
#include "mc_segment.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#define MAX_IO_BYTES (1ull << 30)   /* below Linux's per-call cap (INT_MAX rounded to pages) */

int mc_file_open(const char *path, uint64_t size, int create, int writable, mc_file *out) {
    memset(out, 0, sizeof *out);
    out->fd = -1;
    int fd = mc_segment_open_file(path, size, create, writable, &out->dev, &out->ino);
    if (fd < 0) return fd;
    out->fd = fd;
    out->size = size;
    return 0;
}

int mc_file_close(mc_file *file) {
    if (file->fd < 0) return 0;
    int fd = file->fd;
    file->fd = -1;   /* even when close fails: the descriptor is gone either way on Linux */
    if (close(fd) != 0) return mc_fail(-errno, "close segment file: %s", strerror(errno));
    return 0;
}

int mc_file_read(int fd, uint64_t offset, void *dst, uint64_t length) {
    char *at = dst;
    while (length > 0) {
        size_t want = length > MAX_IO_BYTES ? MAX_IO_BYTES : (size_t)length;
        ssize_t n = pread(fd, at, want, (off_t)offset);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return mc_fail(-errno, "read segment file at %llu: %s",
                                  (unsigned long long)offset, strerror(errno));
        if (n == 0) return mc_fail(-EIO, "segment file ends before byte %llu",
                                   (unsigned long long)offset);
        at += n;
        offset += (uint64_t)n;
        length -= (uint64_t)n;
    }
    return 0;
}

int mc_file_write(int fd, uint64_t offset, const void *src, uint64_t length) {
    const char *at = src;
    while (length > 0) {
        size_t want = length > MAX_IO_BYTES ? MAX_IO_BYTES : (size_t)length;
        ssize_t n = pwrite(fd, at, want, (off_t)offset);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return mc_fail(-errno, "write segment file at %llu: %s",
                                  (unsigned long long)offset, strerror(errno));
        if (n == 0) return mc_fail(-EIO, "write segment file at %llu: no progress",
                                   (unsigned long long)offset);
        at += n;
        offset += (uint64_t)n;
        length -= (uint64_t)n;
    }
    return 0;
}
