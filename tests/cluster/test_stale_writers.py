"""Writers that outlive their put (revoked, timed out, restarted workers) never corrupt others."""
import os
import signal
import socket
import time

import pytest

from mooncake_client import BatchError, Client
from mooncake_proto import dataplane as wire
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto.errors import ErrorCode, TransferError


def raw_write(replica: pb.ReplicaDescriptor, payload: bytes) -> int:
    host, port = replica.data_addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(wire.encode_request(wire.OP_WRITE, replica.segment_id, replica.offset,
                                      len(payload), replica.grant) + payload)
        head = s.recv(wire.RESPONSE.size, socket.MSG_WAITALL)
    return wire.RESPONSE.unpack(head)[0]


def test_revoked_writer_cannot_overwrite_the_next_object(fresh_cluster):
    cluster = fresh_cluster(workers=1, dram="1MiB")
    with Client(cluster.master_addr, transports=("tcp",)) as c:
        started = c._link.call("PutStart", pb.PutStartRequest(keys=["x"], sizes=[4096]))
        item = started.items[0]
        c._link.call("PutRevoke", pb.PutFinishRequest(keys=["x"], put_ids=[item.put_id]))
        c.put("victim", b"V" * 4096)
        victim = c.get_replicas("victim")[0]
        stale = item.replicas[0]
        assert victim.offset != stale.offset  # the revoked range is held until its grant expires
        assert raw_write(stale, b"A" * 4096) == 0  # the stale writer's bytes land in the held range
        assert c.get("victim") == b"V" * 4096


def test_stale_put_end_cannot_commit_a_newer_put(fresh_cluster):
    cluster = fresh_cluster(workers=1, dram="1MiB")
    with Client(cluster.master_addr, transports=("tcp",)) as c:
        first = c._link.call("PutStart", pb.PutStartRequest(keys=["k"], sizes=[10])).items[0]
        c._link.call("PutRevoke", pb.PutFinishRequest(keys=["k"], put_ids=[first.put_id]))
        second = c._link.call("PutStart", pb.PutStartRequest(keys=["k"], sizes=[10])).items[0]
        stale = c._link.call("PutEnd", pb.PutFinishRequest(keys=["k"], put_ids=[first.put_id]))
        assert stale.statuses[0].code == ErrorCode.OBJECT_NOT_FOUND
        assert c.get("k") is None  # still PENDING: nobody wrote it
        assert raw_write(second.replicas[0], b"0123456789") == 0
        ended = c._link.call("PutEnd", pb.PutFinishRequest(keys=["k"], put_ids=[second.put_id]))
        assert ended.statuses[0].code == ErrorCode.OK
        assert c.get("k") == b"0123456789"


def test_pooled_connections_survive_a_worker_restart_on_the_same_port(fresh_cluster):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cluster = fresh_cluster(workers=0)
    cluster.start_worker("w", dram="8MiB", extra=("--data-port", str(port)))
    with Client(cluster.master_addr, transports=("tcp",)) as c:
        c.batch_put([f"a{i}" for i in range(4)], [b"a" * 100] * 4)  # leaves pooled connections
        cluster.workers["w"].stop(signal.SIGTERM)
        cluster.start_worker("w", dram="8MiB", extra=("--data-port", str(port)))
        c.put("after", b"b" * 100)  # the first try must not fail on a dead pooled connection
        assert c.get("after") == b"b" * 100


def test_a_paused_worker_costs_one_timeout_per_call_not_one_per_key(fresh_cluster):
    cluster = fresh_cluster(workers=1, dram="8MiB")
    paused = cluster.workers["worker-0"]
    with Client(cluster.master_addr, transports=("tcp",), transfer_timeout_s=1.0) as c:
        keys = [f"p{i}" for i in range(8)]
        c.batch_put(keys, [os.urandom(1000)] * 8)
        paused.pause()
        try:
            t0 = time.monotonic()
            with pytest.raises(BatchError) as info:
                c.batch_put([f"q{i}" for i in range(8)], [b"q" * 1000] * 8)
            assert len(info.value.errors) == 8
            assert all(isinstance(e, TransferError) for e in info.value.errors.values())
            with pytest.raises(TransferError, match="timed out"):
                c.batch_get(keys)
            # eight keys each waiting out the 1 s timeout would take 16 s or more
            assert time.monotonic() - t0 < 6.0
        finally:
            paused.resume()
        assert c.batch_exists([f"q{i}" for i in range(8)]) == [False] * 8  # revoked
