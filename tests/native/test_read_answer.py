"""A client's batch read from the GetReplicas answer, in C (native/read_answer.py): the decoder
against protobuf's own parse, and the runner's choice of replica, shm copies, TCP exchanges
with a real C data server, and the outcomes it reports instead of guessing."""
import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mooncake_native.binding import ffi
from mooncake_native.read_answer import (MAX_SEGMENTS, NO_ROUTE, OUT_OF_RANGE, PENDING, SKIPPED,
                                         ReadAnswer, Route, TooVaried)
from mooncake_native.tcp import DataConnection
from mooncake_proto import grants
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto.errors import ErrorCode
from raw_dataplane import start_server

pytestmark = pytest.mark.timeout(60)

DRAM_BYTES = 1 << 20
WORKER = "worker-r"

replicas_st = st.builds(
    pb.ReplicaDescriptor, worker_id=st.sampled_from(["w0", "w1", "wörker-2", ""]),
    segment_id=st.integers(0, 3), tier=st.sampled_from([0, 1, 2]),
    offset=st.integers(0, 2**64 - 1), length=st.integers(0, 2**64 - 1),
    state=st.integers(0, 2), data_addr=st.text(max_size=20), node_id=st.text(max_size=10),
    path=st.text(max_size=30), segment_size=st.integers(0, 2**64 - 1),
    grant=st.binary(max_size=80), grpc_addr=st.text(max_size=10), rdma=st.booleans())
items_st = st.lists(st.tuples(st.text(max_size=30), st.integers(-2**31, 2**31 - 1),
                              st.text(max_size=20), st.integers(0, 2**64 - 1),
                              st.lists(replicas_st, max_size=4)), max_size=12)


def _answer(items, ttl_ms: int = 10_000) -> pb.GetReplicasResponse:
    response = pb.GetReplicasResponse(lease_ttl_ms=ttl_ms)
    for key, code, message, size, replicas in items:
        item = response.items.add(size=size, replicas=replicas)
        item.status.key, item.status.code, item.status.message = key, code, message
    return response


@settings(max_examples=200, deadline=None)
@given(items=items_st, ttl=st.integers(0, 2**32 - 1))
def test_decoding_agrees_with_protobuf(items, ttl):
    response = _answer(items, ttl)
    answer = response.SerializeToString()
    decoded = ReadAnswer(answer, len(items))
    assert decoded.n_items == len(items) and decoded.lease_ttl_ms == ttl
    assert decoded.codes_and_sizes() == [(i.status.code, i.size) for i in response.items]
    first_on = {}
    for n, item in enumerate(response.items):
        c_item = decoded.items[n]
        for k, replica in enumerate(item.replicas):
            c = decoded.replicas[c_item.first + k]
            assert (c.segment_id, c.tier, c.state, c.offset, c.length) == \
                (replica.segment_id, replica.tier, replica.state, replica.offset, replica.length)
            assert answer[c.grant.at:c.grant.at + c.grant.len] == replica.grant
            where = (replica.worker_id, replica.segment_id, replica.tier)
            first_on.setdefault(where, (c.segment, replica))
            assert first_on[where][0] == c.segment  # one index per distinct segment
        assert c_item.count == len(item.replicas)
    assert decoded.segments == len(first_on)
    for segment, replica in first_on.values():
        assert decoded.descriptor(segment) == replica


def test_unknown_fields_are_skipped_and_damage_is_refused():
    answer = _answer([("k", 0, "", 5, [pb.ReplicaDescriptor(worker_id="w", length=5)])])
    raw = answer.SerializeToString()
    # a newer master's fields: varint 15, fixed64 16, bytes 17, fixed32 18, around the items
    extra = b"\x78\x01" + b"\x81\x01" + bytes(8) + b"\x8a\x01\x02hi" + b"\x95\x01" + bytes(4)
    decoded = ReadAnswer(extra + raw + extra, 1)
    assert decoded.codes_and_sizes() == [(0, 5)] and decoded.segments == 1
    for damaged in (raw[:-1], raw + b"\x0a", raw + b"\x0b", b"\x0a\xff\xff\xff\xff\x0f"):
        with pytest.raises(OSError, match="not a GetReplicasResponse"):
            ReadAnswer(damaged, 1)
    with pytest.raises(TooVaried):  # more items than keys asked for
        ReadAnswer(_answer([("a", 0, "", 0, []), ("b", 0, "", 0, [])]).SerializeToString(), 1)


@settings(max_examples=300, deadline=None)
@given(items=items_st, flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)),
                                      max_size=6), cut=st.integers(0, 10_000))
def test_damaged_answers_decode_or_are_refused_never_read_out_of_bounds(items, flips, cut):
    """Bytes flipped and the answer cut anywhere: the decoder either finds an answer (every
    span inside the bytes) or refuses; AddressSanitizer builds check the reads themselves."""
    answer = bytearray(_answer(items).SerializeToString())
    for at, mask in flips:
        if answer:
            answer[at % len(answer)] ^= mask
    answer = bytes(answer[:cut])
    try:
        decoded = ReadAnswer(answer, len(items))
    except (OSError, TooVaried):
        return
    for j in range(decoded._info.replicas):
        replica = decoded.replicas[j]
        for span in (replica.descriptor, replica.grant):
            assert span.at + span.len <= len(answer)
    for i in range(decoded.n_items):
        item = decoded.items[i]
        assert item.first + item.count <= decoded._info.replicas


def test_more_replicas_per_key_than_planned_for():
    replicas = [pb.ReplicaDescriptor(worker_id=f"w{i}", length=3) for i in range(7)]
    decoded = ReadAnswer(_answer([("k", 0, "", 3, replicas)]).SerializeToString(), 1)
    assert decoded.items[0].count == 7 and decoded.segments == 7


def test_too_many_segments_is_too_varied():
    replicas = [pb.ReplicaDescriptor(worker_id="w", segment_id=i, length=1)
                for i in range(MAX_SEGMENTS + 1)]
    with pytest.raises(TooVaried):
        ReadAnswer(_answer([("k", 0, "", 1, replicas)]).SerializeToString(), 1)


def _shm_segment(size: int):
    memory = bytearray(os.urandom(size))
    return memory, Route.shm(ffi.from_buffer("uint8_t[]", memory), size)


def test_shm_items_copy_from_their_best_ranked_replica_and_report_the_rest():
    near, near_route = _shm_segment(4096)
    far, far_route = _shm_segment(4096)
    on = lambda worker, offset, length: pb.ReplicaDescriptor(  # noqa: E731
        worker_id=worker, offset=offset, length=length, grant=b"g")
    items = [
        ("two", 0, "", 100, [on("far", 0, 100), on("near", 50, 100)]),  # near ranks first
        ("miss", int(ErrorCode.OBJECT_NOT_FOUND), "", 0, []),
        ("far only", 0, "", 10, [on("far", 4000, 10)]),
        ("outside", 0, "", 200, [on("near", 4000, 200)]),
        ("unreachable", 0, "", 5, [on("nowhere", 0, 5)]),
        ("wrong length", 0, "", 6, [on("near", 0, 5)]),
        # the best-ranked replica is malformed: no quiet switch to another (the general path
        # reports it)
        ("best malformed", 0, "", 6, [on("far", 0, 6), on("near", 0, 5)]),
        ("no target", 0, "", 3, [on("near", 0, 3)]),
    ]
    decoded = ReadAnswer(_answer(items).SerializeToString(), len(items))
    rank = {"far": 2, "near": 1, "nowhere": None}
    order = [decoded.descriptor(s).worker_id for s in range(decoded.segments)]
    route_index = {"far": 0, "near": 1, "nowhere": -1}
    targets = [bytearray(max(1, size)) for _, _, _, size, _ in items]
    pointers = [ffi.from_buffer("char[]", t) for t in targets]
    pointers[-1] = ffi.NULL
    ranks = [rank[w] for w in order]
    assert decoded.segments_used(ranks) == [w != "nowhere" for w in order]
    assert ReadAnswer(_answer(items[:1]).SerializeToString(), 1).segments_used([2, 1]) == \
        [False, True]  # "two" reads from near only: far needs no route
    statuses = decoded.run(ranks, [route_index[w] for w in order],
                           [far_route, near_route], pointers, 1.0)
    assert statuses == [0, SKIPPED, 0, OUT_OF_RANGE, NO_ROUTE, NO_ROUTE, NO_ROUTE, SKIPPED]
    assert targets[0] == near[50:150] and targets[2] == far[4000:4010]
    assert far_route.requests == near_route.requests == 0  # copies are not requests


@pytest.fixture
def data_server(dram, key):
    server = start_server(WORKER, {0: dram.view}, key)
    yield server
    server.stop()


def _grant(key: bytes, offset: int, length: int, ttl_ms: int = 60_000) -> bytes:
    return grants.sign(key, grants.Grant(grants.Op.READ, WORKER, 0, offset, length,
                                         int(time.time() * 1000) + ttl_ms))


def test_tcp_items_run_in_one_exchange_and_refusals_are_per_item(data_server, dram, key):
    dram.view[:DRAM_BYTES] = os.urandom(DRAM_BYTES)
    on = lambda offset, length, grant: pb.ReplicaDescriptor(  # noqa: E731
        worker_id=WORKER, offset=offset, length=length, grant=grant)
    items = [(f"k{i}", 0, "", 4096, [on(i * 8192 + 3, 4096, _grant(key, i * 8192 + 3, 4096))])
             for i in range(6)]
    items.append(("expired", 0, "", 10, [on(0, 10, _grant(key, 0, 10, ttl_ms=-5000))]))
    decoded = ReadAnswer(_answer(items).SerializeToString(), len(items))
    host, _, port = data_server.addr.rpartition(":")
    conn = DataConnection(host, int(port), 5)
    try:
        route = Route.tcp(conn.fd, conn.form)
        targets = [bytearray(size) for _, _, _, size, _ in items]
        statuses = decoded.run([0], [0], [route], [ffi.from_buffer("char[]", t)
                                                   for t in targets], 5.0)
    finally:
        conn.close()
    assert statuses[:6] == [0] * 6 and statuses[6] < 0  # refused: PERMISSION_DENIED
    for i in range(6):
        assert targets[i] == dram.view[i * 8192 + 3:i * 8192 + 3 + 4096]
    assert route.requests == 7 and route.result == 7  # the refusal answered last


def test_a_connection_that_fails_leaves_its_items_pending(data_server, key):
    items = [("k", 0, "", 64, [pb.ReplicaDescriptor(worker_id=WORKER, length=64,
                                                    grant=_grant(key, 0, 64))])]
    decoded = ReadAnswer(_answer(items).SerializeToString(), 1)
    host, _, port = data_server.addr.rpartition(":")
    conn = DataConnection(host, int(port), 5)
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, conn.fd)  # the connection's descriptor now reads and writes nothing
    os.close(null)
    route = Route.tcp(conn.fd, conn.form)
    statuses = decoded.run([0], [0], [route], [ffi.from_buffer("char[]", bytearray(64))], 2.0)
    conn.close()
    assert statuses == [PENDING] and route.result < 0 and route.error
