"""CallGate (client/call_gate.py): what a close frees is freed by the last call inside."""
import pytest

from mooncake_client.call_gate import CallGate, ClientClosedError, gated


class Freed:
    def __init__(self):
        self.times = 0

    def __call__(self):
        self.times += 1


def test_a_close_with_no_call_inside_frees_at_once_and_only_once():
    gate, freed = CallGate(), Freed()
    gate.close(freed)
    gate.close(freed)
    assert freed.times == 1 and gate.closed
    with pytest.raises(ClientClosedError):
        gate.enter()


def test_the_last_call_inside_frees_after_a_close():
    gate, freed = CallGate(), Freed()
    gate.enter()
    gate.enter()
    gate.close(freed)
    assert freed.times == 0
    with pytest.raises(ClientClosedError):
        gate.enter()  # no new calls meanwhile
    gate.leave()
    assert freed.times == 0
    gate.leave()
    assert freed.times == 1


class Owner:
    def __init__(self):
        self._gate, self.freed = CallGate(), Freed()

    @gated
    def close_from_inside(self):
        self._gate.close(self.freed)  # a call's own thread (or a signal handler): no deadlock
        return self.freed.times

    @gated
    def fail(self):
        raise KeyError("x")


def test_a_close_from_inside_a_call_frees_when_that_call_returns():
    owner = Owner()
    assert owner.close_from_inside() == 0 and owner.freed.times == 1


def test_a_call_that_raises_still_leaves_the_gate():
    owner = Owner()
    with pytest.raises(KeyError):
        owner.fail()
    owner._gate.close(owner.freed)
    assert owner.freed.times == 1


@pytest.mark.timeout(10)
def test_a_close_from_a_signal_handler_inside_enter_or_leave_does_not_deadlock():
    # a handler runs on the thread that holds the lock, between two of its bytecodes
    gate, freed = CallGate(), Freed()
    gate.enter()
    gate._lock.acquire()  # as if interrupted inside leave()
    try:
        gate.close(freed)
    finally:
        gate._lock.release()
    gate.leave()
    assert freed.times == 1


def test_a_closed_client_is_no_one_keys_fault():
    # callers that retry a failed batch key by key (compat, integrations) must not for this
    from mooncake_client.client import ONE_KEY_FAULTS
    error = ClientClosedError("closed")
    assert not isinstance(error, ONE_KEY_FAULTS) and error.code == -600
