"""The worker's RDMA admission: who may connect a queue pair (no device needed)."""
import logging
import time

import pytest

from mooncake_native import rdma
from mooncake_proto import grants
from mooncake_proto.errors import PermissionDeniedError, RdmaUnavailableError, UnavailableError
from mooncake_worker.rdma_endpoint import WorkerRdma

KEY = b"k" * 32


def _grant(worker_id="w1", expiry_ms=None, key=KEY) -> bytes:
    expiry_ms = int(time.time() * 1000) + 60_000 if expiry_ms is None else expiry_ms
    return grants.sign(key, grants.Grant(grants.Op.READ, worker_id, 0, 0, 10, expiry_ms))


@pytest.fixture
def serving():
    """Admission only: a stand-in context, since no queue pair is made."""
    return WorkerRdma(context=object(), segments=[])


def test_without_a_device_everything_is_refused_with_the_reason():
    state = WorkerRdma(None, [], "no RDMA device found")
    assert not state.serving
    with pytest.raises(RdmaUnavailableError, match="worker w1 serves no RDMA: no RDMA device"):
        state.authorize(KEY, _grant(), "w1")
    with pytest.raises(RdmaUnavailableError):
        state.connect(b"\0" * 32)


@pytest.mark.parametrize("token", [b"", _grant(worker_id="w2"), _grant(key=b"x" * 32)])
def test_without_a_device_a_bad_grant_is_still_denied_first(token):
    state = WorkerRdma(None, [], "no RDMA device found")
    with pytest.raises(PermissionDeniedError):
        state.authorize(KEY, token, "w1")


def test_a_valid_grant_for_this_worker_admits(serving):
    serving.authorize(KEY, _grant(), "w1")


@pytest.mark.parametrize("token, match", [
    (_grant(worker_id="w2"), "not 'w1'"),
    (_grant(expiry_ms=1), "expired"),
    (_grant(key=b"x" * 32), "signature"),
    (b"", "bad length"),
])
def test_bad_grants_are_denied(serving, token, match):
    with pytest.raises(PermissionDeniedError, match=match):
        serving.authorize(KEY, token, "w1")


def test_unregistered_worker_admits_nobody(serving):
    with pytest.raises(UnavailableError, match="not registered"):
        serving.authorize(None, _grant(), "w1")


@pytest.mark.skipif(rdma.unavailable_reason() is None, reason="this host has an RDMA device")
def test_open_without_a_device_logs_one_line(caplog):
    caplog.set_level(logging.INFO, logger="mooncake.worker")
    state = WorkerRdma.open({0: memoryview(bytearray(4096))})
    assert not state.serving and state.reason == rdma.unavailable_reason()
    assert [r.getMessage() for r in caplog.records] == \
        [f'event=rdma_unavailable reason="{state.reason}"']
    state.close()
