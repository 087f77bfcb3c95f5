"""Segment files (a DRAM segment in shared memory, later an SSD file) mapped into this process.

The worker creates the file and keeps it when it exits, so a restarted worker finds its bytes;
clients on the same node map the same file to copy at memory speed. Mappings are pre-faulted:
first touch of fresh memory runs near 0.5 GB/s here against 16 GB/s warm.
"""
from __future__ import annotations

import errno
import mmap
import os
import stat

SEGMENT_FILE_MODE = 0o660  # the worker's user and group only (DESIGN.md section 5)
SEGMENT_FILE_PREFIX = "mooncake-"


class SegmentMapping:
    """One segment file mapped shared and read-write."""

    def __init__(self, path: str, size_bytes: int, create: bool = False):
        self.path = path
        self.size_bytes = size_bytes
        # O_NOFOLLOW and the regular-file check: a path from elsewhere must not make us map
        # (and write) something that merely has the segment's name
        flags = os.O_RDWR | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
        fd = os.open(path, flags, SEGMENT_FILE_MODE)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"segment file {path} is not a regular file")
            if create:
                self._size_file(fd, size_bytes)
            elif st.st_size < size_bytes:
                raise ValueError(f"segment file {path} is smaller than {size_bytes} bytes")
            self.identity = (st.st_dev, st.st_ino, size_bytes)
            self.mmap = mmap.mmap(fd, size_bytes, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
        finally:
            os.close(fd)
        self.view = memoryview(self.mmap)

    @staticmethod
    def _size_file(fd: int, size_bytes: int) -> None:
        if os.fstat(fd).st_size != size_bytes:
            os.ftruncate(fd, size_bytes)
        try:
            # on tmpfs this allocates the pages now instead of on the data path
            os.posix_fallocate(fd, 0, size_bytes)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise

    def close(self) -> None:
        self.view.release()
        try:
            self.mmap.close()
        except BufferError:
            pass  # a caller still holds a slice; the mapping goes with the process

    @staticmethod
    def remove_file(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
