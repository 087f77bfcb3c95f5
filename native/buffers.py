"""User buffers as flat byte views, raw pointers the caller registered, and the copies shm uses.

Every buffer the SDK accepts becomes a list of flat unsigned-byte memoryviews ("parts": one
object may live in several buffers, as per-layer K/V does), without copying. Copies run in C
(copy.c): the GIL is released and large ones are split across threads.
"""
from __future__ import annotations

import ctypes
import sys
import threading

from mooncake_native.binding import check, ffi, lib
from mooncake_proto.errors import InvalidArgumentError


def as_byte_view(buffer, writable: bool = False) -> memoryview:
    """A flat unsigned-byte memoryview over any buffer-protocol object or CPU tensor, without
    copying."""
    try:
        view = memoryview(buffer)
    except TypeError:
        view = _tensor_view(buffer)
    if writable and view.readonly:
        raise InvalidArgumentError("buffer is read-only")
    if not view.c_contiguous:
        raise InvalidArgumentError("buffer must be C-contiguous")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _tensor_view(tensor) -> memoryview:
    """A view of a tensor's storage: torch tensors have no buffer protocol, but a contiguous CPU
    tensor's bytes are `nbytes` at `data_ptr()`. The view does not keep the tensor alive; the
    SDK uses it only inside the call the caller passed the tensor to."""
    if not callable(getattr(tensor, "data_ptr", None)):
        raise InvalidArgumentError(f"{type(tensor).__name__} does not support the buffer protocol")
    device = getattr(getattr(tensor, "device", None), "type", "cpu")
    if device != "cpu":
        raise InvalidArgumentError(f"a {device} tensor: move it to the CPU first")
    if not tensor.is_contiguous():
        raise InvalidArgumentError("buffer must be C-contiguous")
    size = tensor.numel() * tensor.element_size()
    if size == 0:
        return memoryview(bytearray())
    return memoryview(ffi.buffer(ffi.cast("char *", tensor.data_ptr()), size))


class RegisteredBuffers:
    """Raw memory ranges (pointer, size) a caller registered, e.g. a pinned KV-cache pool.

    A raw pointer given to put_from/get_into must lie inside one of them: the registration is
    the caller's promise that the memory stays valid, and our check that a wrong pointer is
    refused instead of read or written.
    """

    def __init__(self):
        self._ranges: dict[int, int] = {}
        self._lock = threading.Lock()

    def register(self, address: int, size: int) -> None:
        if address <= 0 or size <= 0:
            raise InvalidArgumentError(f"register_buffer needs a pointer and a positive size, "
                                       f"got {address:#x}, {size}")
        if is_device_memory(address):
            # our copies and sockets would dereference it on the CPU: a crash, not an error
            raise InvalidArgumentError(f"{address:#x} is GPU memory: register host memory "
                                       f"(this store has no device copy path yet)")
        with self._lock:
            self._ranges[address] = size

    def unregister(self, address: int) -> bool:
        with self._lock:
            return self._ranges.pop(address, None) is not None

    def view(self, address: int, size: int) -> memoryview:
        with self._lock:
            inside = any(start <= address and address + size <= start + length
                         for start, length in self._ranges.items())
        if not inside:
            raise InvalidArgumentError(f"{size} bytes at {address:#x} are not inside a "
                                       f"registered buffer (register_buffer first)")
        return memoryview(ffi.buffer(ffi.cast("char *", address), size))


# cuda.h: cuPointerGetAttribute's attributes and the memory type it answers
_CU_POINTER_ATTRIBUTE_MEMORY_TYPE, _CU_POINTER_ATTRIBUTE_IS_MANAGED = 2, 8
_CU_MEMORYTYPE_DEVICE = 2
_cuda_driver_lib = None


def is_device_memory(address: int) -> bool:
    """Whether CUDA's driver says address is GPU memory the CPU cannot read: device memory,
    not managed memory (which the CPU may touch). False where there is no driver (no GPU:
    nothing could be) or the driver does not know the address (host memory, or no CUDA use
    in this process)."""
    global _cuda_driver_lib
    if _cuda_driver_lib is None:
        try:
            _cuda_driver_lib = ctypes.CDLL("libcuda.so.1")
        except OSError:
            _cuda_driver_lib = False
    if not _cuda_driver_lib:
        return False
    if _pointer_attribute(address, _CU_POINTER_ATTRIBUTE_MEMORY_TYPE) != _CU_MEMORYTYPE_DEVICE:
        return False
    return not _pointer_attribute(address, _CU_POINTER_ATTRIBUTE_IS_MANAGED)


def _pointer_attribute(address: int, attribute: int) -> int | None:
    value = ctypes.c_uint(0)
    status = _cuda_driver_lib.cuPointerGetAttribute(ctypes.byref(value), attribute,
                                                    ctypes.c_uint64(address))
    return value.value if status == 0 else None


def as_parts(buffer, writable: bool = False, size=None,
             registered: RegisteredBuffers | None = None) -> list[memoryview]:
    """The byte views of one object: a buffer, a raw pointer inside a `registered` range, or
    a list/tuple of those in order (scatter-gather). `size` caps a buffer (or is a pointer's
    length); for a list it is a list with one entry (or None) per part."""
    if not isinstance(buffer, (list, tuple)):
        return [_part(buffer, size, writable, registered)]
    if not buffer:
        raise InvalidArgumentError("an object needs at least one buffer")
    part_sizes = size if isinstance(size, (list, tuple)) else [None] * len(buffer)
    if len(part_sizes) != len(buffer):
        raise InvalidArgumentError(f"{len(buffer)} buffers but {len(part_sizes)} sizes")
    return [_part(b, s, writable, registered) for b, s in zip(buffer, part_sizes)]


def _part(buffer, size: int | None, writable: bool,
          registered: RegisteredBuffers | None) -> memoryview:
    if isinstance(buffer, int):
        if size is None:
            raise InvalidArgumentError("a raw pointer needs its size")
        if registered is None:
            raise InvalidArgumentError(f"{size} bytes at {buffer:#x} are not inside a "
                                       f"registered buffer (register_buffer first)")
        return registered.view(buffer, size)
    view = as_byte_view(buffer, writable)
    if size is not None:
        if not 0 <= size <= view.nbytes:
            raise InvalidArgumentError(f"size {size} outside a buffer of {view.nbytes} bytes")
        view = view[:size]
    return view


def parts_size(parts: list[memoryview]) -> int:
    return sum(p.nbytes for p in parts)


_CPYTHON = sys.implementation.name == "cpython"
UNZEROED_MIN_BYTES = 64 << 10  # below it, bytes(n)'s zeroing costs less than the ctypes call

if _CPYTHON:
    # PyBytes_FromStringAndSize(NULL, n): a new bytes object whose storage is not zeroed
    # (bytes(n) zeroes it, and every page with it: 40-170 us of a 4 MiB get here)
    _unzeroed_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
    _unzeroed_bytes.restype = ctypes.py_object
    _unzeroed_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)


def _new_bytes(size: int) -> bytes:
    """A new (never shared) bytes object of `size` on CPython, for the caller to fill whole:
    large ones are not zeroed first. The caller must not let it out unless it filled every
    byte (a failed read drops it)."""
    return _unzeroed_bytes(None, size) if size >= UNZEROED_MIN_BYTES else bytes(size)


def fresh_bytes(size: int) -> tuple[bytes, memoryview]:
    """A new bytes object of `size` and a writable view of its storage, to receive into.

    `get` returns bytes; filling a fresh, unshared bytes object in place saves the copy a
    bytearray would need. Only on CPython, where such objects are new for n >= 1;
    elsewhere the caller's copy happens in bytes(bytearray).
    """
    if size == 0:
        return b"", memoryview(bytearray())
    if _CPYTHON:
        data = _new_bytes(size)
        return data, memoryview(ffi.buffer(ffi.from_buffer(data), size))
    data = bytearray(size)  # the caller's bytes() of it is the one extra copy elsewhere
    return data, memoryview(data)


def fresh_bytes_at(size: int):
    """fresh_bytes for a C copy: the new bytes object and a pointer (cdata) to its storage,
    without the writable view (two fewer cffi conversions per object of a batch read)."""
    if size == 0 or not _CPYTHON:
        data, view = fresh_bytes(size)
        return data, ffi.from_buffer("char[]", view, require_writable=True)
    data = _new_bytes(size)
    return data, ffi.from_buffer(data)


def copy_batch(pairs: list[tuple[memoryview, memoryview]], streaming: bool = False) -> None:
    """Copies each (dst, src) pair; one C call for the whole batch, split across threads.
    streaming: non-temporal stores, for targets this process will not read soon (segments)."""
    copy_rows(rows_for(pairs), streaming)


def rows_for(pairs: list[tuple[memoryview, memoryview]]) -> list[tuple]:
    """copy_rows' rows for (dst, src) pairs of views of the same size."""
    from_buffer, rows = ffi.from_buffer, []
    for dst, src in pairs:
        length = dst.nbytes
        if length != src.nbytes:
            raise InvalidArgumentError(f"copy of {src.nbytes} bytes into {length}")
        rows.append((from_buffer("char[]", dst, require_writable=True),
                     from_buffer("char[]", src), length))
    return rows


def copy_rows(rows: list[tuple], streaming: bool = False) -> None:
    """copy_batch for rows of (dst pointer, src pointer, length), the pointers cdata that the
    caller has checked (and keeps alive until this returns)."""
    items = ffi.new("mc_copy_item[]", rows)
    check(lib.mc_copy_batch(items, len(rows), lib.MC_COPY_STREAM if streaming else 0), "copy")

