"""Fuzzes a real worker's TCP data port (native/src/server_conn.c) over raw sockets: random
bytes, headers with random fields and grant lengths, truncated frames, real requests mutated
or pipelined with garbage. Every input is answered (a typed refusal, or what it was granted),
the worker stays up, and a normal client get works after each one."""
import time

import pytest
from fuzzing import exchange, fuzz_settings, mutated
from hypothesis import given
from hypothesis import strategies as st

from mooncake_client import ReplicaConfig
from mooncake_proto import dataplane as wire
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto import mooncake_pb2_grpc as pb_grpc
from mooncake_proto import rpc
from mooncake_proto.errors import ErrorCode

pytestmark = pytest.mark.timeout(3600)  # a long run on demand; the bounded one takes seconds

REFUSALS = {ErrorCode.INVALID_PARAMS, ErrorCode.PERMISSION_DENIED, ErrorCode.LEASE_EXPIRED,
            ErrorCode.UNAVAILABLE_IN_CURRENT_STATUS, ErrorCode.WRITE_FAIL}
OBJECTS = [f"fuzz/data-{i}" for i in range(4)]
GRANTS_FRESH_S = 4.0  # well inside a read grant's 12 s and a write grant's 9 s

U64 = (1 << 64) - 1
fields = st.one_of(st.integers(0, 1 << 26), st.sampled_from([0, 1, 64 << 20, U64]),
                   st.integers(0, U64))
headers = st.builds(
    lambda magic, op, flags, grant_len, segment, offset, length, rest:
        wire.REQUEST.pack(magic, op, flags, grant_len, segment, offset, length) + rest,
    magic=st.one_of(st.sampled_from([wire.MAGIC, wire.MAGIC_ALIGNED]),
                    st.binary(min_size=4, max_size=4)),
    op=st.one_of(st.sampled_from([wire.OP_READ, wire.OP_WRITE]), st.integers(0, 255)),
    flags=st.integers(0, 255),
    grant_len=st.one_of(st.integers(0, 120), st.sampled_from([2047, 2048, 2049, 65535])),
    segment=st.one_of(st.integers(0, 2), st.integers(0, (1 << 32) - 1)),
    offset=fields, length=fields,
    rest=st.binary(max_size=300))  # the grant, shorter or longer than claimed, and more
garbage = st.one_of(st.binary(max_size=200), headers)


class Granted:
    """Real requests (reads of stored objects, a write of a pending one) with grants fresh
    from the master, renewed before they could expire."""

    def __init__(self, cluster, client):
        on_0 = ReplicaConfig(preferred_worker="worker-0")
        for i, key in enumerate(OBJECTS):
            client.put(key, bytes([65 + i]) * (1000 + 997 * i), on_0)
        self.channel = rpc.client_channel(cluster.master_addr)
        self.stub = pb_grpc.MasterServiceStub(self.channel)
        self.fetched_at, self.requests, self.serial = 0.0, [], 0

    def current(self) -> list[bytes]:
        if time.monotonic() - self.fetched_at > GRANTS_FRESH_S:
            reads = self.stub.GetReplicas(pb.KeysRequest(keys=OBJECTS), timeout=30).items
            self.serial += 1
            pending = self.stub.PutStart(pb.PutStartRequest(
                keys=[f"fuzz/pending-{self.serial}"], sizes=[4096],
                config=pb.ReplicaConfig(preferred_worker="worker-0")), timeout=30).items[0]
            self.requests = [wire.encode_request(wire.OP_READ, r.segment_id, r.offset, r.length,
                                                 r.grant)
                             for item in reads for r in item.replicas]
            w = pending.replicas[0]
            self.requests.append(wire.encode_request(wire.OP_WRITE, w.segment_id, w.offset,
                                                     w.length, w.grant) + b"w" * w.length)
            self.fetched_at = time.monotonic()
        return self.requests


@pytest.fixture(scope="module")
def granted(fuzz_cluster, canary):
    g = Granted(fuzz_cluster, canary.client)
    yield g
    g.channel.close()


def worker_0(cluster) -> str:
    return cluster.workers["worker-0"].info["data"]


def outcome(answer: bytes) -> str:
    """Refused (it ends with a refusal with a known code: 12 bytes, or in the aligned form
    the same 12 bytes and zeros to 64), served, or closed silently."""
    if not answer:
        return "closed"
    for size in (wire.ALIGNED_RESPONSE_BYTES, wire.RESPONSE.size):
        tail = answer[-size:]
        if len(tail) < size or tail[wire.RESPONSE.size:] != bytes(size - wire.RESPONSE.size):
            continue
        status, length = wire.RESPONSE.unpack_from(tail)
        if status != 0 and length == 0:
            assert status in REFUSALS, f"unknown refusal code {status}"
            return "refused"
    return "served"


def refusal_bytes(data: bytes) -> int:
    """The size of the worker's refusal of `data`: in the aligned form once it has parsed an
    aligned header (magic MCD2, a known op), else 12 bytes (native/src/server_conn.c)."""
    head = data[:wire.REQUEST.size]
    if len(head) == wire.REQUEST.size and head[:4] == wire.MAGIC_ALIGNED and \
            head[4] in (wire.OP_READ, wire.OP_WRITE):
        return wire.ALIGNED_RESPONSE_BYTES
    return wire.RESPONSE.size


@fuzz_settings(400)
@given(data=garbage)
def test_garbage_gets_exactly_one_refusal(fuzz_cluster, canary, tally, data):
    answer = exchange(worker_0(fuzz_cluster), data)
    tally.count("data_port.garbage", outcome(answer))
    if data:  # nothing in it is granted: one refusal, then the close
        assert len(answer) == refusal_bytes(data) and outcome(answer) == "refused", answer
    else:
        assert answer == b""  # a clean close before any request
    canary.check()


@fuzz_settings(400)
@given(pick=st.data())
def test_real_requests_mutated_or_pipelined_with_garbage(fuzz_cluster, canary, tally, granted,
                                                         pick):
    real = granted.current()
    parts = pick.draw(st.lists(st.one_of(
        st.sampled_from(real),                                  # served
        st.sampled_from(real).flatmap(mutated),                 # usually refused
        garbage), min_size=1, max_size=4))
    data = b"".join(parts)
    answer = exchange(worker_0(fuzz_cluster), data)
    tally.count("data_port.mutated", outcome(answer))
    assert answer or not data  # only a connection that sent nothing goes unanswered
    canary.check()
