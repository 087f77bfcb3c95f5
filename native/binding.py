"""The one Python wrapper over the C library: loads it, checks its version, raises its errors.

Every other module in mooncake_native calls C through `lib` and passes return codes to
`check`, the single place a C failure becomes a Python exception. cffi releases the GIL
around every call into the library.
"""
from __future__ import annotations

import errno
import os
import select

from mooncake_proto.errors import InvalidArgumentError

try:
    from mooncake_native._native import ffi, lib
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError("mooncake_native's C library is not built; run `pip install -e .` "
                      f"(or `make venv`) in the repository: {exc}") from exc

EXPECTED_VERSION = "3.7.0"
VERSION = ffi.string(lib.mc_version()).decode()
if VERSION != EXPECTED_VERSION:
    raise ImportError(f"mooncake_native's C library is version {VERSION}, the Python side "
                      f"expects {EXPECTED_VERSION}: rebuild with `pip install -e .`")

HAS_RDMA = bool(lib.MC_HAS_RDMA)


class ProtocolError(ConnectionError):
    """A peer broke the data-plane wire format; its connection is no longer usable."""


def last_error() -> str:
    return ffi.string(lib.mc_last_error()).decode(errors="replace")


def check(rc: int, context: str = "") -> int:
    """Returns rc when it is not negative; otherwise raises the error it stands for."""
    if rc >= 0:
        return rc
    raise error_for(rc, last_error(), context)


def error_for(rc: int, message: str, context: str = "") -> Exception:
    """The exception a negative return code stands for, with the C side's message."""
    message = message or os.strerror(-rc)
    if context:
        message = f"{context}: {message}"
    if rc == lib.MC_ERR_PROTOCOL:
        return ProtocolError(message)
    if rc == -errno.EINVAL:
        return InvalidArgumentError(message)
    return OSError(-rc, message)  # picks the subclass: TimeoutError, ConnectionResetError, ...


def spin_readable(fd: int) -> bool:
    """Polls fd for input, without sleeping and without the GIL, for up to MOONCAKE_SPIN_US
    (default 300) microseconds; True when input (or a close) arrived. A caller that expects
    a quick answer calls this before its blocking recv: on a VM a thread woken from sleep
    answers 20-30 us later than one that polled."""
    return bool(lib.mc_spin_ready(fd, select.POLLIN))
