"""SharedClient: one Client that an inference server's threads call at once while one of them
may replace or close it. A close waits for the calls in flight on that Client: closing unmaps
shm segments, and a copy still running out of one would crash the whole process."""
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
        self._changed = threading.Condition()

    @property
    def client(self) -> Client | None:
        return self._client

    @contextlib.contextmanager
    def use(self):
        """The current Client for one call; NotSetUpError when there is none."""
        with self._changed:
            client = self._client
            if client is None:
                raise NotSetUpError("the store is not set up (call setup first) or closed")
            self._in_flight[client] = self._in_flight.get(client, 0) + 1
        try:
            yield client
        finally:
            with self._changed:
                self._in_flight[client] -= 1
                if not self._in_flight[client]:
                    del self._in_flight[client]
                    self._changed.notify_all()

    def replace(self, client: Client | None) -> None:
        """Puts client in (None: closes); the one it replaces is closed once no call uses it.
        New calls get the new one at once."""
        with self._changed:
            old, self._client = self._client, client
            while old is not None and old in self._in_flight:
                self._changed.wait()
        if old is not None:
            old.close()
