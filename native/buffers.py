"""Zero-copy views of user buffers and the one copy routine shm transfers use."""
from __future__ import annotations

import ctypes

from mooncake_proto.errors import InvalidArgumentError


def as_byte_view(buffer, writable: bool = False) -> memoryview:
    """A flat unsigned-byte memoryview over any buffer-protocol object, without copying."""
    try:
        view = memoryview(buffer)
    except TypeError:
        raise InvalidArgumentError(f"{type(buffer).__name__} does not support the buffer protocol")
    if writable and view.readonly:
        raise InvalidArgumentError("buffer is read-only")
    if not view.c_contiguous:
        raise InvalidArgumentError("buffer must be C-contiguous")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _address(view: memoryview) -> int | None:
    if not view.readonly:
        return ctypes.addressof(ctypes.c_char.from_buffer(view))
    if isinstance(view.obj, bytes) and view.nbytes == len(view.obj):
        return ctypes.cast(ctypes.c_char_p(view.obj), ctypes.c_void_p).value
    return None


def copy_into(dst: memoryview, src: memoryview) -> None:
    """Copies src into dst (same length). Uses memmove without the GIL when both addresses are known."""
    if dst.nbytes != src.nbytes:
        raise InvalidArgumentError(f"copy of {src.nbytes} bytes into {dst.nbytes}")
    if dst.nbytes == 0:
        return
    dst_addr, src_addr = _address(dst), _address(src)
    if dst_addr is not None and src_addr is not None:
        ctypes.memmove(dst_addr, src_addr, dst.nbytes)  # ctypes releases the GIL around the call
    else:
        dst[:] = src
