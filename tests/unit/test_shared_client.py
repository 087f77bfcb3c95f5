"""SharedClient (client/shared_client.py): a replaced or closed Client is closed by its last
call, never under one; closing from inside a call does not wait for itself."""
import threading

import pytest

from mooncake_client.shared_client import NotSetUpError, SharedClient


class FakeClient:
    """Only what SharedClient touches: close()."""

    def __init__(self):
        self.closed = 0

    def close(self):
        self.closed += 1


def _hold(shared: SharedClient):
    """A call in flight on another thread, until the returned event is set."""
    entered, leave = threading.Event(), threading.Event()
    seen = []

    def call():
        with shared.use() as client:
            seen.append(client)
            entered.set()
            leave.wait(10)
    thread = threading.Thread(target=call)
    thread.start()
    assert entered.wait(10)
    return leave, thread, seen


def test_a_close_during_a_call_closes_when_the_call_ends():
    first = FakeClient()
    shared = SharedClient(first)
    leave, thread, seen = _hold(shared)
    shared.replace(None)  # returns at once
    assert first.closed == 0 and seen == [first]
    with pytest.raises(NotSetUpError):
        with shared.use():
            pass
    leave.set()
    thread.join(10)
    assert first.closed == 1


def test_a_replacement_serves_new_calls_while_the_old_one_finishes():
    old, new = FakeClient(), FakeClient()
    shared = SharedClient(old)
    leave, thread, _ = _hold(shared)
    shared.replace(new)
    with shared.use() as client:
        assert client is new
    assert old.closed == 0
    leave.set()
    thread.join(10)
    assert (old.closed, new.closed) == (1, 0)


def test_closing_from_inside_a_call_does_not_wait_for_itself():
    client = FakeClient()
    shared = SharedClient(client)
    with shared.use():
        shared.replace(None)  # a signal handler, or the call's own error path
        assert client.closed == 0
    assert client.closed == 1


def test_an_idle_client_closes_at_once_and_only_once():
    client = FakeClient()
    shared = SharedClient(client)
    with shared.use():
        pass
    shared.replace(None)
    shared.replace(None)
    assert client.closed == 1
