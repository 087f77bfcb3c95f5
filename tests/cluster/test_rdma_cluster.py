"""RDMA as a cluster without RDMA devices meets it: workers say so once, refuse RdmaConnect
clearly, advertise no RDMA, and the rdma transport leaves the bytes to TCP."""
import logging
import os
import subprocess
import sys

import grpc
import pytest

from mooncake_client import ReplicaConfig
from mooncake_client.rdma_transport import RdmaTransport
from mooncake_client.transports import Transfer
from mooncake_native import rdma
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto import mooncake_pb2_grpc as pb_grpc
from mooncake_proto import rpc
from mooncake_proto.errors import ErrorCode

pytestmark = pytest.mark.skipif(
    rdma.unavailable_reason() is None, reason="this host has an active RDMA device")


def _worker_stub(cluster, worker_id="worker-0"):
    channel = rpc.client_channel(cluster.workers[worker_id].info["grpc"])
    return channel, pb_grpc.WorkerServiceStub(channel)


def _replicas(cluster, key: str) -> list[pb.ReplicaDescriptor]:
    with rpc.client_channel(cluster.master_addr) as channel:
        reply = pb_grpc.MasterServiceStub(channel).GetReplicas(pb.KeysRequest(keys=[key]),
                                                               timeout=5)
    return list(reply.items[0].replicas)


@pytest.mark.timeout(30)
def test_list_rdma_devices_needs_no_cluster():
    result = subprocess.run([sys.executable, "-m", "mooncake_worker", "--list-rdma-devices"],
                            capture_output=True, text=True, timeout=20,
                            env={k: v for k, v in os.environ.items()
                                 if not k.startswith("MOONCAKE_")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("no RDMA devices found")


@pytest.mark.timeout(30)
def test_worker_logs_one_unavailable_line(cluster):
    log = cluster.workers["worker-0"].log_tail(200)
    lines = [line for line in log.splitlines() if "event=rdma_" in line]
    assert len(lines) == 1 and "event=rdma_unavailable reason=" in lines[0], log


@pytest.mark.timeout(30)
def test_rdma_connect_is_refused_without_a_device(cluster, client):
    key = "rdma-refused-" + os.urandom(4).hex()
    client.put(key, b"x", ReplicaConfig(preferred_worker="worker-0"))
    [grant] = [r.grant for r in _replicas(cluster, key) if r.worker_id == "worker-0"]
    channel, stub = _worker_stub(cluster)
    with channel:
        assert stub.Describe(pb.DescribeRequest(), timeout=5).rdma is False
        with pytest.raises(grpc.RpcError) as info:
            stub.RdmaConnect(pb.RdmaConnectRequest(
                client_endpoint=rdma.Endpoint(1, bytes(16), 5, 6, 1, 4096).pack(),
                grant=grant), timeout=5)
    exc = info.value
    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "worker worker-0 serves no RDMA" in exc.details()
    code = dict(exc.trailing_metadata())[rpc.CODE_METADATA_KEY]
    assert int(code) == ErrorCode.UNAVAILABLE_IN_CURRENT_STATUS


@pytest.mark.timeout(60)
def test_replicas_advertise_no_rdma_and_the_transport_uses_tcp(cluster, client, caplog):
    key = "rdma-fallback-" + os.urandom(4).hex()
    payload = os.urandom(100_000)
    client.put(key, payload)
    replicas = _replicas(cluster, key)
    assert replicas and all(r.grpc_addr and r.rdma is False for r in replicas)
    caplog.set_level(logging.INFO, logger="mooncake.client")
    transport = RdmaTransport(timeout_s=5.0)
    try:
        assert sum("rdma_unavailable" in r.getMessage() for r in caplog.records) == 1
        assert not transport.usable(replicas[0])
        into = bytearray(len(payload))
        reads = [Transfer(replicas[0]), Transfer(replicas[0], parts=[memoryview(into)])]
        transport.read(reads)  # handed to it anyway: the bytes come over TCP
        assert [t.error for t in reads] == [None, None]
        assert reads[0].result == payload and into == payload
    finally:
        transport.close()
