"""Grants enforced on every path into a worker, against real worker processes: the TCP data
port, WorkerService.MoveReplicas and RdmaConnect refuse whatever the master did not sign for
that worker (outside the range, another segment, forged, another key, expired, another
worker, the wrong op), count it, and go on serving everyone else."""
import json
import os
import socket
import time
import urllib.request

import grpc
import pytest

from mooncake_client import Client, ReplicaConfig
from mooncake_native import rdma
from mooncake_proto import dataplane as wire
from mooncake_proto import grants, rpc
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto import mooncake_pb2_grpc as pb_grpc
from mooncake_proto.errors import ErrorCode

pytestmark = pytest.mark.timeout(120)

DENIED = ErrorCode.PERMISSION_DENIED
SIZE = 4096
FIRST, SECOND, PENDING, ON_1 = "grants/first", "grants/second", "grants/pending", "grants/on-1"


# ---- helpers: the master's own grants, raw requests, the worker's counters ----

def master_stub(cluster):
    channel = rpc.client_channel(cluster.master_addr)
    return channel, pb_grpc.MasterServiceStub(channel)


def read_grant(cluster, key: str) -> pb.ReplicaDescriptor:
    channel, stub = master_stub(cluster)
    with channel:
        [replica] = stub.GetReplicas(pb.KeysRequest(keys=[key]), timeout=10).items[0].replicas
    return replica


def worker_stats(daemon) -> dict:
    with urllib.request.urlopen(f"http://{daemon.info['http']}/stats", timeout=10) as r:
        return json.load(r)


def exchange(addr: str, data: bytes) -> bytes:
    """Sends data, ends our side, returns every byte the worker answers until it closes."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


def refusal(answer: bytes) -> int:
    """The status of a refused request: the only answer on its connection, with no bytes."""
    assert len(answer) == wire.RESPONSE.size, answer[:64]
    status, length = wire.RESPONSE.unpack(answer)
    assert length == 0
    return status


def request(r: pb.ReplicaDescriptor, op=wire.OP_READ, segment_id=None, offset=None,
            length=None, grant=None, payload=b"") -> bytes:
    """A raw request for replica r's range, with any field (or the grant) replaced."""
    length = r.length if length is None else length
    return wire.encode_request(op, r.segment_id if segment_id is None else segment_id,
                               r.offset if offset is None else offset, length,
                               r.grant if grant is None else grant) + payload


def flipped(token: bytes, at: int = -1) -> bytes:
    token = bytearray(token)
    token[at] ^= 1
    return bytes(token)


def resigned(r: pb.ReplicaDescriptor, key: bytes, **fields) -> bytes:
    """r's grant as another key would sign it (or with fields changed)."""
    grant = dict(op=grants.Op.READ, worker_id=r.worker_id, segment_id=r.segment_id,
                 offset=r.offset, length=r.length, expiry_ms=int(time.time() * 1000) + 60_000)
    grant.update(fields)
    return grants.sign(key, grants.Grant(**grant))


@pytest.fixture(scope="module")
def stored(cluster):
    """Two committed objects side by side on worker-0 and one on worker-1."""
    on_0 = ReplicaConfig(preferred_worker="worker-0")
    with Client(cluster.master_addr, transports=("tcp",)) as c:
        c.put(FIRST, b"a" * SIZE, on_0)
        c.put(SECOND, b"b" * SIZE, on_0)
        c.put(ON_1, b"c" * SIZE, ReplicaConfig(preferred_worker="worker-1"))


@pytest.fixture
def objects(cluster, stored):
    """Fresh descriptors of the stored objects and of a new pending write on worker-0 (under
    PENDING), each with the grant the master signed for it: a test's grants are its own and
    far from expiry."""
    found = {key: read_grant(cluster, key) for key in (FIRST, SECOND, ON_1)}
    key = f"{PENDING}/{os.urandom(4).hex()}"
    channel, stub = master_stub(cluster)
    with channel:
        started = stub.PutStart(pb.PutStartRequest(
            keys=[key], sizes=[SIZE], config=pb.ReplicaConfig(preferred_worker="worker-0")),
            timeout=10)
        found[PENDING] = started.items[0].replicas[0]
        found["pending key"] = key
        assert [found[k].worker_id for k in (FIRST, SECOND, PENDING, ON_1)] == \
            ["worker-0"] * 3 + ["worker-1"]
        assert found[SECOND].offset >= SIZE  # room before it for "offset before the grant"
        yield found
        stub.PutRevoke(pb.PutFinishRequest(keys=[key]), timeout=10)  # unless committed


@pytest.fixture
def tcp_client(cluster):
    with Client(cluster.master_addr, transports=("tcp",)) as c:
        yield c


def still_serving(cluster, client, objects) -> None:
    """A normal get right after, from a client of its own, and the raw granted read."""
    assert client.get(SECOND) == b"b" * SIZE
    r = read_grant(cluster, FIRST)
    answer = exchange(r.data_addr, request(r))
    assert answer == wire.RESPONSE.pack(0, SIZE) + b"a" * SIZE
    for daemon in cluster.workers.values():
        assert daemon.proc.poll() is None


# ---- the TCP data port ----

OTHER_KEY = os.urandom(grants.KEY_BYTES)
DATA_PORT_ATTACKS = {
    # name: (the worker it is sent to, builder from the descriptors)
    "offset before the grant": ("worker-0", lambda o: request(
        o[SECOND], offset=o[SECOND].offset - 1)),
    "end after the grant": ("worker-0", lambda o: request(o[SECOND], length=SIZE + 1)),
    "the neighbour's range": ("worker-0", lambda o: request(
        o[FIRST], grant=o[SECOND].grant)),
    "another segment": ("worker-0", lambda o: request(o[SECOND], segment_id=1)),
    "offset at 2^64 - 1": ("worker-0", lambda o: request(o[SECOND], offset=(1 << 64) - 1)),
    "a flipped MAC byte": ("worker-0", lambda o: request(
        o[SECOND], grant=flipped(o[SECOND].grant))),
    "a flipped length byte (a wider grant)": ("worker-0", lambda o: request(
        o[SECOND], length=SIZE + 256, grant=flipped(o[SECOND].grant, 20))),
    "signed with another key": ("worker-0", lambda o: request(
        o[SECOND], grant=resigned(o[SECOND], OTHER_KEY))),
    "replayed against another worker": ("worker-1", lambda o: request(o[SECOND])),
    "a READ grant used to WRITE": ("worker-0", lambda o: request(
        o[SECOND], op=wire.OP_WRITE, payload=b"X" * SIZE)),
    "a WRITE grant used to READ": ("worker-0", lambda o: request(o[PENDING])),
    "a WRITE past its grant": ("worker-0", lambda o: request(
        o[PENDING], op=wire.OP_WRITE, length=SIZE + 1, payload=b"X" * (SIZE + 1))),
    "no grant": ("worker-0", lambda o: request(o[SECOND], grant=b"")),
    "a truncated grant": ("worker-0", lambda o: request(o[SECOND], grant=o[SECOND].grant[:-1])),
    "another worker's grant": ("worker-0", lambda o: request(o[ON_1], segment_id=0)),
}


@pytest.mark.parametrize("attack", DATA_PORT_ATTACKS)
def test_the_data_port_refuses_what_was_not_granted(cluster, objects, tcp_client, attack):
    worker_id, build = DATA_PORT_ATTACKS[attack]
    daemon = cluster.workers[worker_id]
    before = worker_stats(daemon)
    assert refusal(exchange(daemon.info["data"], build(objects))) == DENIED
    after = worker_stats(daemon)
    assert after["requests_refused"] == before["requests_refused"] + 1
    assert after["bytes_in"] == before["bytes_in"]  # nothing landed in a segment
    still_serving(cluster, tcp_client, objects)


def test_a_granted_write_lands_and_narrower_reads_are_served(cluster, objects):
    """The positive control: the same port serves exactly what was granted."""
    w, r = objects[PENDING], objects[SECOND]
    answer = exchange(w.data_addr, request(w, op=wire.OP_WRITE, payload=b"w" * SIZE))
    assert answer == wire.RESPONSE.pack(0, SIZE)
    answer = exchange(r.data_addr, request(r, offset=r.offset + 1, length=SIZE - 2))
    assert answer == wire.RESPONSE.pack(0, SIZE - 2) + b"b" * (SIZE - 2)


def test_refused_requests_after_served_ones_on_one_connection(cluster, objects, tcp_client):
    """Pipelined: the granted read is answered, the forged one after it refused and the
    connection closed; the worker goes on."""
    r = objects[SECOND]
    answer = exchange(r.data_addr, request(r) + request(r, grant=flipped(r.grant)) + request(r))
    assert answer[:wire.RESPONSE.size + SIZE] == wire.RESPONSE.pack(0, SIZE) + b"b" * SIZE
    assert refusal(answer[wire.RESPONSE.size + SIZE:]) == DENIED
    still_serving(cluster, tcp_client, objects)


# ---- WorkerService.MoveReplicas ----

def move(src: pb.ReplicaDescriptor, dst: pb.ReplicaDescriptor, **fields) -> pb.MoveItem:
    item = dict(src_segment_id=src.segment_id, src_offset=src.offset,
                dst_segment_id=dst.segment_id, dst_offset=dst.offset, length=src.length,
                read_grant=src.grant, write_grant=dst.grant)
    item.update(fields)
    return pb.MoveItem(**item)


MOVE_ATTACKS = {
    "a READ grant as the write grant": ("worker-0", lambda o: move(o[FIRST], o[SECOND])),
    "a WRITE grant as the read grant": ("worker-0", lambda o: move(o[PENDING], o[PENDING])),
    "source before its grant": ("worker-0", lambda o: move(
        o[SECOND], o[PENDING], src_offset=o[SECOND].offset - 1)),
    "destination after its grant": ("worker-0", lambda o: move(
        o[FIRST], o[PENDING], dst_offset=o[PENDING].offset + 1)),
    "source in another segment": ("worker-0", lambda o: move(
        o[FIRST], o[PENDING], src_segment_id=1)),
    "a flipped MAC byte": ("worker-0", lambda o: move(
        o[FIRST], o[PENDING], read_grant=flipped(o[FIRST].grant))),
    "signed with another key": ("worker-0", lambda o: move(
        o[FIRST], o[PENDING], write_grant=resigned(o[PENDING], OTHER_KEY, op=grants.Op.WRITE))),
    "replayed against another worker": ("worker-1", lambda o: move(o[FIRST], o[PENDING])),
    "no grants": ("worker-0", lambda o: move(o[FIRST], o[PENDING], read_grant=b"",
                                             write_grant=b"")),
}


def move_codes(daemon, items) -> list[int]:
    with rpc.client_channel(daemon.info["grpc"]) as channel:
        reply = pb_grpc.WorkerServiceStub(channel).MoveReplicas(pb.MoveRequest(items=items),
                                                                timeout=30)
    return [s.code for s in reply.statuses]


@pytest.mark.parametrize("attack", MOVE_ATTACKS)
def test_move_replicas_refuses_what_was_not_granted(cluster, objects, tcp_client, attack):
    worker_id, build = MOVE_ATTACKS[attack]
    daemon = cluster.workers[worker_id]
    before = worker_stats(daemon)
    assert move_codes(daemon, [build(objects)]) == [DENIED]
    after = worker_stats(daemon)
    assert after["moves_refused"] == before["moves_refused"] + 1
    assert after["moved_items"] == before["moved_items"]
    still_serving(cluster, tcp_client, objects)


def test_a_clients_read_grant_cannot_order_a_copy(cluster, objects, tcp_client):
    """A client holds READ grants (GetReplicas); MoveReplicas takes only the COPY grants the
    master signs for its own moves, so no client can make a worker send bytes elsewhere (to
    another of its segments, or to any host:port as dst_data_addr). Granted moves are
    tested where the grant key is known: tests/unit/test_mover.py, test_ssd_tier.py."""
    o = objects
    daemon = cluster.workers["worker-0"]
    items = [move(o[FIRST], o[PENDING]),
             move(o[FIRST], o[PENDING], dst_data_addr=cluster.workers["worker-1"].info["data"])]
    before = worker_stats(daemon)
    assert move_codes(daemon, items) == [DENIED, DENIED]
    assert worker_stats(daemon)["moved_items"] == before["moved_items"]
    still_serving(cluster, tcp_client, objects)


def test_an_undecodable_move_request_is_invalid_argument(cluster, objects, tcp_client):
    with rpc.client_channel(cluster.workers["worker-0"].info["grpc"]) as channel:
        send = channel.unary_unary("/mooncake.v1.WorkerService/MoveReplicas")
        with pytest.raises(grpc.RpcError) as info:
            send(b"\x0a\x05\x08", timeout=30)  # an item cut short
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    still_serving(cluster, tcp_client, objects)


# ---- WorkerService.RdmaConnect: the grant first, whether a device is open after ----

GARBLED_ENDPOINT = b"\xff" * 7  # never parsed: the grant is refused before
RDMA_ATTACKS = {
    "no grant": ("worker-0", lambda o: b""),
    "a flipped MAC byte": ("worker-0", lambda o: flipped(o[SECOND].grant)),
    "signed with another key": ("worker-0", lambda o: resigned(o[SECOND], OTHER_KEY)),
    "replayed against another worker": ("worker-1", lambda o: o[SECOND].grant),
}


def rdma_connect(daemon, grant: bytes, endpoint: bytes = GARBLED_ENDPOINT) -> grpc.RpcError:
    with rpc.client_channel(daemon.info["grpc"]) as channel:
        stub = pb_grpc.WorkerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.RdmaConnect(pb.RdmaConnectRequest(client_endpoint=endpoint, grant=grant),
                             timeout=30)
    return info.value


def mooncake_code(exc: grpc.RpcError) -> int:
    return int(dict(exc.trailing_metadata())[rpc.CODE_METADATA_KEY])


@pytest.mark.parametrize("attack", RDMA_ATTACKS)
def test_rdma_connect_refuses_without_a_grant_for_this_worker(cluster, objects, tcp_client,
                                                              attack):
    worker_id, build = RDMA_ATTACKS[attack]
    exc = rdma_connect(cluster.workers[worker_id], build(objects))
    assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
    assert mooncake_code(exc) == DENIED and "RDMA connect refused" in exc.details()
    still_serving(cluster, tcp_client, objects)


@pytest.mark.skipif(rdma.unavailable_reason() is None, reason="this host has an RDMA device")
def test_rdma_connect_with_a_grant_reaches_the_device_check(cluster, objects):
    exc = rdma_connect(cluster.workers["worker-0"], objects[SECOND].grant)
    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert mooncake_code(exc) == ErrorCode.UNAVAILABLE_IN_CURRENT_STATUS


# ---- time and keys: expired grants, and grants under a key the worker no longer has ----

def wait_until_expired(token: bytes) -> None:
    """Sleeps until the grant's own expiry (its signed field) has passed: not a guess."""
    expiry_ms = int.from_bytes(token[22:30], "big")
    time.sleep(max(0.0, expiry_ms / 1000 - time.time()) + 0.05)


def test_expired_grants_are_refused_on_every_path(fresh_cluster):
    # a short lease: its grants expire lease_ttl + 2 s margin after GetReplicas
    cluster = fresh_cluster(workers=1, dram="16MiB", master_args=("--lease-ttl", "500ms"))
    daemon = cluster.workers["worker-0"]
    with Client(cluster.master_addr, transports=("tcp",)) as c:
        c.put("old", b"o" * SIZE)
    old = read_grant(cluster, "old")
    wait_until_expired(old.grant)
    before = worker_stats(daemon)
    assert refusal(exchange(old.data_addr, request(old))) == DENIED
    assert worker_stats(daemon)["requests_refused"] == before["requests_refused"] + 1
    assert 'reason="grant has expired"' in daemon.wait_for_log("grant has expired")
    channel, stub = master_stub(cluster)
    with channel:  # a valid destination: only the source side is expired
        target = stub.PutStart(pb.PutStartRequest(keys=["target"], sizes=[SIZE]),
                               timeout=10).items[0].replicas[0]
    assert move_codes(daemon, [move(old, target)]) == [DENIED]
    assert worker_stats(daemon)["moves_refused"] == 1
    exc = rdma_connect(daemon, old.grant)
    assert exc.code() == grpc.StatusCode.PERMISSION_DENIED and "expired" in exc.details()
    # a new grant for the same range is served at once
    again = read_grant(cluster, "old")
    assert exchange(again.data_addr, request(again)) == wire.RESPONSE.pack(0, SIZE) + b"o" * SIZE


def test_grants_signed_under_a_previous_key_are_refused_after_a_restart(fresh_cluster):
    cluster = fresh_cluster(workers=1, dram="16MiB")
    with Client(cluster.master_addr, transports=("tcp",)) as c:
        c.put("before-restart", b"r" * SIZE)
    stale = read_grant(cluster, "before-restart")  # unexpired for 12 s, signed under key 1
    cluster.workers["worker-0"].stop()
    daemon = cluster.start_worker("worker-0")  # registers again: the master gives key 2
    assert refusal(exchange(daemon.info["data"], request(stale))) == DENIED
    assert 'reason="grant signature is invalid"' in daemon.wait_for_log("grant signature")
    assert rdma_connect(daemon, stale.grant).code() == grpc.StatusCode.PERMISSION_DENIED
    with Client(cluster.master_addr, transports=("tcp",)) as c:
        c.put("after-restart", b"n" * SIZE)
        assert c.get("after-restart") == b"n" * SIZE
