"""mooncake_native: the byte-moving layer under worker and client, in C through cffi.

binding.py loads the C library (native/src, built at install by build_native.py) and is the
one place its errors become exceptions; segment.py maps segment files and file_segment.py
reads and writes the SSD tier's; buffers.py turns user
buffers into byte views and copies them; tcp.py is the client side of the TCP data plane.
"""
from mooncake_native.binding import HAS_RDMA, VERSION
from mooncake_native.buffers import as_byte_view
from mooncake_native.file_segment import FileSegment
from mooncake_native.segment import SegmentMapping

__all__ = ["HAS_RDMA", "VERSION", "as_byte_view", "FileSegment", "SegmentMapping"]
