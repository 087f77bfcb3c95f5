"""Segment files (a DRAM segment in shared memory, later an SSD file) mapped into this process.

The worker creates the file and keeps it when it exits, so a restarted worker finds its bytes;
clients on the same node map the same file to copy at memory speed. The C side (segment.c)
opens, sizes, maps and pre-faults; this class owns the mapping's lifetime.
"""
from __future__ import annotations

from mooncake_native.binding import check, ffi, lib

SEGMENT_FILE_PREFIX = "mooncake-"


class SegmentMapping:
    """One segment file mapped shared and read-write; `view` is a memoryview of all of it."""

    def __init__(self, path: str, size_bytes: int, create: bool = False):
        self.path = path
        self.size_bytes = size_bytes
        self._segment = ffi.new("mc_segment *")
        check(lib.mc_segment_map(path.encode(), size_bytes, int(create), self._segment),
              f"segment {path}")
        self.address = int(ffi.cast("uintptr_t", self._segment.addr))
        self.base = ffi.cast("char *", self._segment.addr)  # base + offset: a C copy's end
        self.identity = (self._segment.dev, self._segment.ino, size_bytes)
        self.view = memoryview(ffi.buffer(self._segment.addr, size_bytes))

    def huge_page_bytes(self) -> int:
        """How much of the mapping huge pages back now, from /proc/self/smaps (0 where it
        cannot be read). The madvise the mapping makes is only a request: a tmpfs mounted
        without huge= (the default, /dev/shm's too) gives 4 KiB pages, and a large copy
        from those runs about 15% slower than from huge pages (page-table walks)."""
        return smaps_pmd_bytes(self.address)

    def close(self) -> None:
        """Unmaps. The caller guarantees nothing uses `view` (or pointers into it) any more:
        unlike Python's mmap, a C mapping cannot refuse while slices are still alive."""
        if self._segment.addr != ffi.NULL:
            self.view.release()
            check(lib.mc_segment_unmap(self._segment), f"segment {self.path}")


def smaps_pmd_bytes(address: int, smaps: str = "/proc/self/smaps") -> int:
    """The bytes mapped by huge (PMD) pages in the mapping that starts at `address`."""
    start = f"{address:x}-"
    total, inside = 0, False
    try:
        with open(smaps, encoding="ascii", errors="replace") as lines:
            for line in lines:
                if "-" in line.split(" ", 1)[0] and not line.endswith("kB\n"):
                    if inside:
                        break  # the next mapping's header
                    inside = line.startswith(start)
                elif inside and line.startswith(("ShmemPmdMapped:", "FilePmdMapped:",
                                                 "AnonHugePages:")):
                    total += int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return 0
    return total
