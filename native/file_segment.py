"""File-backed segments (the SSD tier): a segment file read and written with pread/pwrite.

The worker creates the file and keeps it when it exits, like the DRAM segment; its data
server serves it with sendfile, and clients on the same node open it read-only to read
replicas straight into their buffers. The file is never mapped (an SSD segment may be larger
than memory). The C side (file_segment.c) opens, checks and sizes it and loops over short
reads and writes with the GIL released.
"""
from __future__ import annotations

from mooncake_native.binding import check, ffi, lib
from mooncake_proto.errors import InvalidArgumentError


class FileSegment:
    """One open segment file; `identity` is (st_dev, st_ino, size_bytes), as SegmentMapping's.

    create: make the file (mode 0660) or reuse one of that path, sized to size_bytes and
    allocated, contents kept. writable defaults to create; a read-only one refuses write_from.
    """

    def __init__(self, path: str, size_bytes: int, create: bool = False,
                 writable: bool | None = None):
        self.path = path
        self.size_bytes = size_bytes
        self.writable = create if writable is None else writable
        self._file = ffi.new("mc_file *")
        check(lib.mc_file_open(path.encode(), size_bytes, int(create), int(self.writable),
                               self._file), f"segment {path}")
        self.identity = (self._file.dev, self._file.ino, size_bytes)

    @property
    def fd(self) -> int:
        """The open descriptor (-1 once closed); valid only until close()."""
        return self._file.fd

    @property
    def closed(self) -> bool:
        return self._file.fd < 0

    def read_into(self, offset: int, buffer) -> int:
        """Fills `buffer` (any writable contiguous buffer) from the segment at offset."""
        target = ffi.from_buffer("char[]", buffer, require_writable=True)
        length = len(target)
        self._check_range(offset, length)
        check(lib.mc_file_read(self._file.fd, offset, target, length), f"segment {self.path}")
        return length

    def write_from(self, offset: int, buffer) -> int:
        """Writes all of `buffer` (any contiguous buffer) into the segment at offset."""
        if not self.writable:
            raise InvalidArgumentError(f"segment {self.path} is open read-only")
        source = ffi.from_buffer("char[]", buffer)
        length = len(source)
        self._check_range(offset, length)
        check(lib.mc_file_write(self._file.fd, offset, source, length), f"segment {self.path}")
        return length

    def _check_range(self, offset: int, length: int) -> None:
        if self.closed:
            raise ValueError(f"segment {self.path} is closed")
        if offset < 0 or offset + length > self.size_bytes:
            raise InvalidArgumentError(f"range {offset}+{length} is outside segment {self.path} "
                                       f"of {self.size_bytes} bytes")

    def close(self) -> None:
        """Closes the descriptor; the file stays. The caller guarantees no other thread is
        inside read_into/write_from (their descriptor number could be reused)."""
        check(lib.mc_file_close(self._file), f"segment {self.path}")

    def __enter__(self) -> "FileSegment":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
