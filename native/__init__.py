"""mooncake_native: the byte-moving layer under worker and client.

Segments (shared-memory and file segments, mapped and pre-faulted) and buffer copies. This is
the Python implementation the walking cluster needs; the C library built with cffi (issue 3)
takes over these same entry points, so callers do not change.
"""
from mooncake_native.buffers import copy_into, as_byte_view
from mooncake_native.segment import SegmentMapping

__all__ = ["copy_into", "as_byte_view", "SegmentMapping"]
