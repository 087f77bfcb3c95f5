"""The worker's SSD tier: --ssd/--ssd-size, the segment file across restarts, MoveReplicas,
and clients reading SSD replicas (shm: pread from the file; tcp: the server's sendfile).

A worker's grant key is known only to it and its master, so the MoveReplicas copies and the
client reads run against a WorkerNode in this process that was handed a known key; the real
processes show registration, restarts and that a forged grant is refused."""
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from mooncake_client.transports import ShmTransport, TcpTransport, Transfer
from mooncake_native.file_segment import FileSegment
from mooncake_proto import grants, rpc
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto import mooncake_pb2_grpc as pb_grpc
from mooncake_proto.errors import ErrorCode, TransferError
from mooncake_proto.identity import node_id
from mooncake_worker.node import SSD_SEGMENT_ID, WorkerNode, ssd_segment_path

pytestmark = pytest.mark.timeout(60)

WORKER = "ssd-worker/0"  # a '/' the file name must not carry
KEY = os.urandom(grants.KEY_BYTES)
DRAM, SSD = 0, SSD_SEGMENT_ID
DRAM_BYTES, SSD_BYTES = 4 << 20, 8 << 20


def grant(op, segment_id, offset, length, key=KEY, worker=WORKER) -> bytes:
    expiry = int(time.time() * 1000) + 60_000
    return grants.sign(key, grants.Grant(op, worker, segment_id, offset, length, expiry))


def move(src_seg, src_off, dst_seg, dst_off, length, key=KEY, worker=WORKER) -> pb.MoveItem:
    return pb.MoveItem(src_segment_id=src_seg, src_offset=src_off, dst_segment_id=dst_seg,
                       dst_offset=dst_off, length=length,
                       read_grant=grant(grants.Op.COPY, src_seg, src_off, length, key, worker),
                       write_grant=grant(grants.Op.WRITE, dst_seg, dst_off, length, key, worker))


def http_json(addr: str, path: str) -> dict:
    with urllib.request.urlopen(f"http://{addr}{path}", timeout=5) as r:
        return json.loads(r.read())


def run_node(tmp_path, scenario) -> None:
    """Runs `await scenario(node, stub)` against a started in-process worker whose grant key
    is KEY (as if its master had accepted it); the master address is never dialled."""
    async def main():
        node = WorkerNode(WORKER, ["127.0.0.1:9"], DRAM_BYTES, str(tmp_path),
                          ssd_dir=str(tmp_path), ssd_bytes=SSD_BYTES)
        await node.start("127.0.0.1", 0, 0, 0)
        node.data_server.grant_key = KEY
        try:
            async with rpc.aio_channel(node.grpc_addr) as channel:
                await scenario(node, pb_grpc.WorkerServiceStub(channel))
        finally:
            await node.stop()
    asyncio.run(main())


def ssd_replica(node: WorkerNode, offset: int, length: int) -> pb.ReplicaDescriptor:
    """What GetReplicas would hand a client for an SSD replica on `node`."""
    return pb.ReplicaDescriptor(
        worker_id=WORKER, segment_id=SSD, tier=pb.TIER_SSD, offset=offset, length=length,
        state=pb.REPLICA_COMPLETE, data_addr=node.data_addr, node_id=node.node_id,
        path=node.ssd.path, segment_size=node.ssd.size_bytes,
        grant=grant(grants.Op.READ, SSD, offset, length))


# ---- in process: MoveReplicas and client reads with real grants ----

def test_demote_read_by_shm_and_tcp_then_promote(tmp_path):
    data = os.urandom((1 << 20) + 333)

    async def scenario(node, stub):
        assert os.path.basename(node.ssd.path) == "mooncake-ssd-worker_0-ssd"
        node.dram.view[4097:4097 + len(data)] = data
        reply = await stub.MoveReplicas(pb.MoveRequest(items=[
            move(DRAM, 4097, SSD, 1_000_003, len(data))]), timeout=10)
        assert [(s.code, s.key) for s in reply.statuses] == [(0, "")]
        replica = ssd_replica(node, 1_000_003, len(data))
        await asyncio.to_thread(check_client_reads, replica, data)
        reply = await stub.MoveReplicas(pb.MoveRequest(items=[
            move(SSD, 1_000_003, DRAM, 2_000_001, len(data))]), timeout=10)
        assert [s.code for s in reply.statuses] == [0]
        assert bytes(node.dram.view[2_000_001:2_000_001 + len(data)]) == data
        described = await stub.Describe(pb.DescribeRequest(), timeout=5)
        assert [(s.segment_id, s.tier, s.size_bytes, s.path) for s in described.segments] == [
            (DRAM, pb.TIER_DRAM, DRAM_BYTES, node.dram.path),
            (SSD, pb.TIER_SSD, SSD_BYTES, node.ssd.path)]
        stats = await asyncio.to_thread(http_json, node.http_addr, "/stats")
        assert (stats["ssd_bytes"], stats["moved_items"], stats["moved_bytes"]) == \
            (SSD_BYTES, 2, 2 * len(data))
        assert stats["bytes_out"] == len(data)  # the tcp read, by sendfile

    run_node(tmp_path, scenario)


def check_client_reads(replica: pb.ReplicaDescriptor, data: bytes) -> None:
    shm = ShmTransport(node_id())
    tcp = TcpTransport(timeout_s=5)
    try:
        assert shm.usable(replica)
        head, tail = bytearray(5), bytearray(len(data) - 5)
        into_parts = Transfer(replica, parts=[memoryview(head), memoryview(tail)])
        as_bytes = Transfer(replica)
        shm.read([into_parts, as_bytes])
        assert into_parts.done and into_parts.error is None and head + tail == data
        assert as_bytes.done and as_bytes.result == data
        over_tcp = Transfer(replica)
        tcp.read([over_tcp])
        assert over_tcp.error is None and over_tcp.result == data
        write = Transfer(replica, parts=[memoryview(data)])
        shm.write([write])  # the master never grants a client an SSD write; shm refuses one
        assert isinstance(write.error, TransferError) and "SSD" in write.error.message
    finally:
        shm.close()
        tcp.close()


def test_move_replicas_refuses_bad_items_one_by_one(tmp_path):
    async def scenario(node, stub):
        node.dram.view[0:64] = b"M" * 64
        forged = move(DRAM, 0, SSD, 0, 64)
        forged.read_grant = forged.read_grant[:-1] + bytes([forged.read_grant[-1] ^ 1])
        items = [move(DRAM, 0, SSD, 4096, 64),
                 forged,
                 move(DRAM, 0, SSD, 0, 64, key=b"z" * 32),
                 move(DRAM, 0, SSD, 0, 64, worker="another-worker"),
                 move(DRAM, 0, SSD, SSD_BYTES - 8, 64),  # granted, but past the file's end
                 move(DRAM, 0, SSD, 8192, 64)]
        reply = await stub.MoveReplicas(pb.MoveRequest(items=items), timeout=10)
        assert [s.code for s in reply.statuses] == [
            0, ErrorCode.PERMISSION_DENIED, ErrorCode.PERMISSION_DENIED,
            ErrorCode.PERMISSION_DENIED, ErrorCode.INVALID_PARAMS, 0]
        out = bytearray(64)
        for offset, expected in [(4096, b"M" * 64), (8192, b"M" * 64), (0, bytes(64)),
                                 (SSD_BYTES - 64, bytes(64))]:
            node.ssd.read_into(offset, out)
            assert out == expected, offset
        node.data_server.grant_key = None  # as before registration
        reply = await stub.MoveReplicas(pb.MoveRequest(items=[move(DRAM, 0, SSD, 0, 8)]),
                                        timeout=10)
        assert [s.code for s in reply.statuses] == [ErrorCode.UNAVAILABLE_IN_CURRENT_STATUS]

    run_node(tmp_path, scenario)


def test_shm_reopens_an_ssd_file_that_was_replaced(tmp_path):
    path = str(tmp_path / "mooncake-replaced-ssd")
    with FileSegment(path, 1 << 20, create=True) as first:
        first.write_from(10, b"old bytes")
    replica = pb.ReplicaDescriptor(worker_id="w", segment_id=SSD, tier=pb.TIER_SSD, offset=10,
                                   length=9, node_id=node_id(), path=path,
                                   segment_size=1 << 20)
    shm = ShmTransport(node_id())
    try:
        t = Transfer(replica)
        shm.read([t])
        assert t.result == b"old bytes"
        os.unlink(path)  # a worker restarted with another size recreates its file
        with FileSegment(path, 1 << 20, create=True) as second:
            second.write_from(10, b"new bytes")
        t = Transfer(replica)
        shm.read([t])
        assert t.result == b"new bytes"
        outside = pb.ReplicaDescriptor()
        outside.CopyFrom(replica)
        outside.offset = (1 << 20) - 4
        short = Transfer(outside)
        shm.read([short])
        assert short.error is not None and "outside the segment" in short.error.message
        assert short.result is None
    finally:
        shm.close()


# ---- real processes: flags, registration, the file across restarts ----

SSD_ARGS = ("--ssd-size", "8MiB")


def ssd_file(tmp_path, worker_id) -> str:
    return ssd_segment_path(str(tmp_path / "ssd"), worker_id)


def test_worker_registers_an_ssd_segment_and_refuses_forged_moves(fresh_cluster, tmp_path):
    cluster = fresh_cluster(workers=0)
    (tmp_path / "ssd").mkdir()
    worker = cluster.start_worker("ssd-0", dram="8MiB",
                                  extra=("--ssd", str(tmp_path / "ssd")) + SSD_ARGS)
    path = ssd_file(tmp_path, "ssd-0")
    st = os.stat(path)
    assert st.st_size == 8 << 20 and oct(st.st_mode & 0o777) == "0o660"
    assert f"ssd_segment={path}" in worker.log_tail() and "ssd_bytes=8388608" in worker.log_tail()
    tiers = http_json(cluster.master.info["http"], "/stats")["tiers"]
    assert tiers["SSD"]["total_bytes"] == 8 << 20 and tiers["DRAM"]["total_bytes"] == 8 << 20
    assert http_json(worker.info["http"], "/stats")["ssd_bytes"] == 8 << 20
    with rpc.client_channel(worker.info["grpc"]) as channel:
        stub = pb_grpc.WorkerServiceStub(channel)
        described = stub.Describe(pb.DescribeRequest(), timeout=5)
        assert [(s.segment_id, s.tier, s.path) for s in described.segments][1] == \
            (SSD, pb.TIER_SSD, path)
        reply = stub.MoveReplicas(pb.MoveRequest(items=[
            move(DRAM, 0, SSD, 0, 4096, key=os.urandom(32), worker="ssd-0")]), timeout=5)
        assert [s.code for s in reply.statuses] == [ErrorCode.PERMISSION_DENIED]
    assert "event=replicas_moved items=1 failed=1 bytes=0" in worker.log_tail()


def test_the_ssd_file_outlives_restarts_and_a_new_size_recreates_it(fresh_cluster, tmp_path):
    cluster = fresh_cluster(workers=0)
    (tmp_path / "ssd").mkdir()
    ssd = ("--ssd", str(tmp_path / "ssd"))
    cluster.start_worker("ssd-1", dram="8MiB", extra=ssd + SSD_ARGS)
    path = ssd_file(tmp_path, "ssd-1")
    with FileSegment(path, 8 << 20, writable=True) as f:  # bytes a demotion left there
        f.write_from(12345, b"kept across a restart")
    inode = os.stat(path).st_ino
    assert cluster.workers["ssd-1"].stop() == 0
    assert os.path.exists(path)  # like the DRAM segment, the file stays
    cluster.start_worker("ssd-1", dram="8MiB", extra=ssd + SSD_ARGS)
    out = bytearray(21)
    with FileSegment(path, 8 << 20) as f:
        f.read_into(12345, out)
    assert out == b"kept across a restart" and os.stat(path).st_ino == inode
    assert cluster.workers["ssd-1"].stop() == 0
    worker = cluster.start_worker("ssd-1", dram="8MiB", extra=ssd + ("--ssd-size", "4MiB"))
    assert "event=ssd_segment_recreated" in worker.log_tail()
    assert "old_bytes=8388608 size_bytes=4194304" in worker.log_tail()
    assert os.stat(path).st_size == 4 << 20  # (the inode number may be reused: not compared)
    with FileSegment(path, 4 << 20) as f:
        f.read_into(12345, out)
    assert out == bytes(21)  # a new file, not the old one cut short


@pytest.mark.parametrize("flags", [("--ssd", "/tmp"), ("--ssd-size", "1GiB")])
def test_ssd_flags_go_together(flags):
    result = subprocess.run([sys.executable, "-m", "mooncake_worker", "--master", "127.0.0.1:9",
                             "--dram", "8MiB", *flags], capture_output=True, text=True,
                            timeout=30, env={k: v for k, v in os.environ.items()
                                             if not k.startswith("MOONCAKE_")})
    assert result.returncode == 2 and "--ssd and --ssd-size go together" in result.stderr
