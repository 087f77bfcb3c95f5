/* Creates and maps segment files, pre-faulted so the data path never takes a first-touch fault;
 * opens and checks every segment file (file_segment.c's SSD segments too).
 *
 * Fresh memory copies at ~0.5 GB/s on first touch against ~16 GB/s warm, so the worker
 * allocates the file's pages at start (posix_fallocate on tmpfs) and every mapping is
 * populated when made. Huge pages are asked for (MADV_HUGEPAGE); the kernel may decline.
 */
#include "mc_segment.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define SEGMENT_FILE_MODE 0660   /* the worker's user and group only (DESIGN.md section 5) */

/* allocating now makes a full tmpfs or disk show at start, not as a failed put or demotion */
static int size_file(int fd, const char *path, uint64_t size, uint64_t current) {
    if (current != size && ftruncate(fd, (off_t)size) != 0)
        return mc_fail(-errno, "ftruncate %s to %llu bytes: %s", path,
                       (unsigned long long)size, strerror(errno));
    int rc = posix_fallocate(fd, 0, (off_t)size);   /* returns the error, not -1 */
    if (rc != 0 && rc != EOPNOTSUPP && rc != EINVAL)
        return mc_fail(-rc, "allocating %llu bytes for %s: %s", (unsigned long long)size,
                       path, strerror(rc));
    return 0;
}

/* maps and pre-faults; huge pages first, then populate (MAP_POPULATE would fault 4 KiB pages
 * before the madvise could ask for huge ones) */
static void *map_populated(int fd, uint64_t size) {
    void *addr = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (addr == MAP_FAILED) return NULL;
#ifdef MADV_HUGEPAGE
    madvise(addr, size, MADV_HUGEPAGE);   /* a request: what was granted, smaps tells */
#endif
#ifdef MADV_POPULATE_WRITE
    if (madvise(addr, size, MADV_POPULATE_WRITE) == 0) return addr;
    if (errno != EINVAL) {   /* a real failure (ENOMEM, a hole): not a mapping to hand out */
        int saved = errno;
        munmap(addr, size);
        errno = saved;
        return NULL;
    }
#endif
    munmap(addr, size);   /* kernel without MADV_POPULATE_WRITE (< 5.14) */
    addr = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (addr == MAP_FAILED) return NULL;
#ifdef MADV_HUGEPAGE
    madvise(addr, size, MADV_HUGEPAGE);   /* too late for the populated pages: for khugepaged */
#endif
    return addr;
}

static int check_file(int fd, const char *path, uint64_t size, int create, struct stat *st) {
    if (fstat(fd, st) != 0) return mc_fail(-errno, "stat segment %s: %s", path, strerror(errno));
    if (!S_ISREG(st->st_mode))
        return mc_fail(-EINVAL, "segment file %s is not a regular file", path);
    if (create) {
        /* exactly the worker's user and group, whatever the umask */
        return fchmod(fd, SEGMENT_FILE_MODE) == 0
                   ? size_file(fd, path, size, (uint64_t)st->st_size)
                   : mc_fail(-errno, "chmod segment %s: %s", path, strerror(errno));
    }
    if ((uint64_t)st->st_size < size)
        return mc_fail(-EINVAL, "segment file %s has %lld bytes, expected %llu", path,
                       (long long)st->st_size, (unsigned long long)size);
    return 0;
}

int mc_segment_open_file(const char *path, uint64_t size, int create, int writable,
                         uint64_t *dev, uint64_t *ino) {
    if (size == 0) return mc_fail(-EINVAL, "segment %s: size must be positive", path);
    if (create && !writable) return mc_fail(-EINVAL, "segment %s: create needs writable", path);
    /* O_NOFOLLOW and the regular-file check: a name from elsewhere must not make us map (and
     * write) something that merely looks like a segment. O_NONBLOCK until the check passes:
     * a read-only open of a FIFO planted there would otherwise wait for a writer forever. */
    int fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK
                            | (create ? O_CREAT : 0), SEGMENT_FILE_MODE);
    if (fd < 0) return mc_fail(-errno, "open segment %s: %s", path, strerror(errno));
    struct stat st;
    int rc = check_file(fd, path, size, create, &st);
    if (rc == 0 && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) != 0)
        rc = mc_fail(-errno, "segment %s: fcntl: %s", path, strerror(errno));
    if (rc != 0) {
        close(fd);
        return rc;
    }
    *dev = (uint64_t)st.st_dev;
    *ino = (uint64_t)st.st_ino;
    return fd;
}

int mc_segment_map(const char *path, uint64_t size, int create, mc_segment *out) {
    memset(out, 0, sizeof *out);
    int fd = mc_segment_open_file(path, size, create, 1, &out->dev, &out->ino);
    if (fd < 0) return fd;
    int rc = 0;
    out->addr = map_populated(fd, size);
    if (out->addr == NULL) rc = mc_fail(-errno, "mmap %s: %s", path, strerror(errno));
    close(fd);
    if (rc != 0) {
        out->dev = out->ino = 0;
        return rc;
    }
    out->size = size;
    return 0;
}

int mc_segment_unmap(mc_segment *segment) {
    if (segment->addr == NULL) return 0;
    if (munmap(segment->addr, segment->size) != 0)
        return mc_fail(-errno, "munmap: %s", strerror(errno));
    segment->addr = NULL;
    return 0;
}
