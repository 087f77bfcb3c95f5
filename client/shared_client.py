"""SharedClient: one Client that an inference server's threads call at once while one of them
may replace or close it. The Client it replaces is closed by the last call still using it, so
that a call which took the old client runs to its end on it (a Client closed under a call
lets that call finish too, call_gate.py, but refuses the caller's next one with
ClientClosedError). A close never waits, so a signal handler or a call's own thread may close
without deadlock."""
from __future__ import annotations

import contextlib
import threading

from mooncake_client.client import Client
from mooncake_proto.errors import InvalidArgumentError


class NotSetUpError(InvalidArgumentError):
    """A call on a store that was never set up, or was closed: -600, as Mooncake answers."""


class SharedClient:
    def __init__(self, client: Client | None = None):
        self._client = client
        self._in_flight: dict[Client, int] = {}
        self._retired: set[Client] = set()  # replaced while in use: closed by their last call
        self._lock = threading.Lock()

    @property
    def client(self) -> Client | None:
        return self._client

    @contextlib.contextmanager
    def use(self):
        """The current Client for one call; NotSetUpError when there is none."""
        with self._lock:
            client = self._client
            if client is None:
                raise NotSetUpError("the store is not set up (call setup first) or closed")
            self._in_flight[client] = self._in_flight.get(client, 0) + 1
        try:
            yield client
        finally:
            self._release(client)

    def _release(self, client: Client) -> None:
        with self._lock:
            self._in_flight[client] -= 1
            if self._in_flight[client]:
                return
            del self._in_flight[client]
            if client not in self._retired:
                return
            self._retired.discard(client)
        client.close()

    def replace(self, client: Client | None) -> None:
        """Puts client in (None: closes): new calls get it at once. The Client it replaces is
        closed now when no call uses it, else by the last one that does."""
        with self._lock:
            old, self._client = self._client, client
            if old is not None and old in self._in_flight:
                self._retired.add(old)
                old = None
        if old is not None:
            old.close()
