"""CallGate: lets Client.close() run while other threads are inside calls. Closing unmaps shm
segments and frees the C connection pools; a copy still running out of one would crash the
process. So close() only shuts the gate: calls already inside finish, new ones raise
ClientClosedError, and the last call out frees what the client holds. close() never waits,
so a signal handler or a call's own thread may close without deadlock."""
from __future__ import annotations

import functools
import threading
from collections.abc import Callable

from mooncake_proto.errors import InvalidArgumentError


class ClientClosedError(InvalidArgumentError):
    """A call on a Client after its close()."""


class CallGate:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._closed = False
        self._release: Callable[[], None] | None = None  # set by close() while calls run

    @property
    def closed(self) -> bool:
        return self._closed

    # enter and leave run on every call: acquire/release, not `with` (a third of their time)
    def enter(self) -> None:
        self._lock.acquire()
        if self._closed:
            self._lock.release()
            raise ClientClosedError("the client is closed")
        self._inside += 1
        self._lock.release()

    def leave(self) -> None:
        self._lock.acquire()
        self._inside -= 1
        release = None
        if self._release is not None and self._inside == 0:
            release, self._release = self._release, None
        self._lock.release()
        if release is not None:
            release()

    def close(self, release: Callable[[], None]) -> None:
        """Shuts the gate; release() runs now when no call is inside, else when the last one
        leaves. A second close does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._inside:
                self._release = release
                return
        release()


def gated(method):
    """A Client method that runs inside its gate (nested gated calls count twice: harmless)."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        gate = self._gate
        gate.enter()
        try:
            return method(self, *args, **kwargs)
        finally:
            gate.leave()
    return call
