"""The data server's aligned form (magic MCD2, proto/dataplane.py): zeros pad request headers,
answer headers and payloads to 64-byte multiples, so every payload starts aligned in the
stream. Each request is answered in its own form; MCD1 clients keep working beside it."""
import os
import socket
import time

import pytest

from mooncake_native.binding import lib
from mooncake_native.data_server import DataServer
from mooncake_native.tcp import (FORM_ALIGNED, FORM_MCD1, OP_READ, OP_WRITE, DataConnection,
                                 DataRequest)
from mooncake_proto import dataplane as wire
from mooncake_proto import grants
from mooncake_proto.errors import ErrorCode
from raw_dataplane import recv_exact, response

pytestmark = pytest.mark.timeout(30)

WORKER = "worker-aligned"
DRAM, SSD = 0, 1
DRAM_BYTES = 1 << 20
SSD_BYTES = 1 << 20
ODD_SIZES = [1, 63, 64, 65, 4097, 100_000]


@pytest.fixture
def server(dram, ssd, key):
    ds = DataServer(WORKER, {DRAM: dram.view}, file_segments={SSD: ssd})
    ds.grant_key = key
    host, port = ds.start("127.0.0.1", 0).rsplit(":", 1)
    ds.host, ds.port = host, int(port)
    yield ds
    ds.stop()


def connect(ds) -> socket.socket:
    return socket.create_connection((ds.host, ds.port), timeout=5)


def request(key, op, segment_id, offset, length, aligned=True, payload=b"", forged=False):
    expiry = int(time.time() * 1000) + 60_000
    token = grants.sign(key, grants.Grant(grants.Op(op), WORKER, segment_id, offset, length,
                                          expiry))
    if forged:
        token = token[:-1] + bytes([token[-1] ^ 1])
    out = wire.encode_request(op, segment_id, offset, length, token, aligned=aligned) + payload
    return out + (bytes(wire.pad(len(payload))) if aligned and payload else b"")


def aligned_answer(sock, read_length: int = 0) -> tuple[int, int, bytes]:
    """One aligned answer: (status, length, payload), its padding checked to be zeros."""
    head = recv_exact(sock, wire.ALIGNED_RESPONSE_BYTES)
    status, length = wire.RESPONSE.unpack_from(head)
    assert head[wire.RESPONSE.size:] == bytes(wire.ALIGNED_RESPONSE_BYTES - wire.RESPONSE.size)
    payload = recv_exact(sock, read_length) if read_length and status == 0 else b""
    if payload:
        assert recv_exact(sock, wire.pad(read_length)) == bytes(wire.pad(read_length))
    return status, length, payload


@pytest.mark.parametrize("segment_id", [DRAM, SSD])
def test_pipelined_answers_of_odd_sizes_keep_every_payload_aligned(server, key, segment_id):
    """Writes then reads of sizes that are not multiples of 64, all sent before any answer is
    read: each answer is a 64-byte header, the payload, zeros to the next multiple of 64."""
    blobs, at, writes, reads = [], 0, b"", b""
    for size in ODD_SIZES:
        blob = os.urandom(size)
        blobs.append((at, blob))
        writes += request(key, wire.OP_WRITE, segment_id, at, size, payload=blob)
        reads += request(key, wire.OP_READ, segment_id, at, size)
        at += size + 7  # odd offsets too
    assert len(writes) % wire.ALIGN == 0 and len(reads) % wire.ALIGN == 0
    with connect(server) as s:
        s.sendall(writes + reads)
        for _, blob in blobs:
            assert aligned_answer(s) == (0, len(blob), b"")
        for _, blob in blobs:
            assert aligned_answer(s, len(blob)) == (0, len(blob), blob)


def test_both_forms_on_one_connection_each_answered_in_its_own(server, key):
    blob = os.urandom(1000)
    with connect(server) as s:
        s.sendall(request(key, wire.OP_WRITE, DRAM, 0, 1000, payload=blob)
                  + request(key, wire.OP_READ, DRAM, 0, 1000, aligned=False)
                  + request(key, wire.OP_READ, DRAM, 0, 1000))
        assert aligned_answer(s) == (0, 1000, b"")
        assert response(s, read=True) == (0, 1000, blob)  # MCD1: 12-byte header, no padding
        assert aligned_answer(s, 1000) == (0, 1000, blob)


def test_a_refusal_is_answered_in_the_form_of_the_refused_request(server, key):
    with connect(server) as s:
        s.sendall(request(key, wire.OP_READ, DRAM, 0, 64)
                  + request(key, wire.OP_READ, DRAM, 0, 64, forged=True))
        assert aligned_answer(s, 64)[0] == 0
        assert aligned_answer(s) == (ErrorCode.PERMISSION_DENIED, 0, b"")
        assert s.recv(1) == b""
    assert server.refused == 1


@pytest.mark.parametrize("form", [FORM_ALIGNED, FORM_MCD1])
def test_the_c_client_round_trips_odd_sizes_through_both_segments(server, key, form):
    """In either form (MCD1: as the client speaks to workers older than the aligned one)."""
    conn = DataConnection(server.host, server.port, 10, form)
    expiry = int(time.time() * 1000) + 60_000
    try:
        for segment_id in (DRAM, SSD):
            blobs = [os.urandom(size) for size in ODD_SIZES]
            offsets = [sum(ODD_SIZES[:i]) for i in range(len(ODD_SIZES))]
            grant = grants.sign(key, grants.Grant(grants.Op.WRITE, WORKER, segment_id, 0,
                                                  SSD_BYTES, expiry))
            writes = [DataRequest(OP_WRITE, segment_id, at, len(b), grant, [memoryview(b)])
                      for at, b in zip(offsets, blobs)]
            assert conn.exchange(writes, 10) == len(writes)
            grant = grants.sign(key, grants.Grant(grants.Op.READ, WORKER, segment_id, 0,
                                                  SSD_BYTES, expiry))
            targets = [bytearray(len(b)) for b in blobs]
            # the last one scattered over two buffers of odd sizes
            parts = [[memoryview(t)] for t in targets[:-1]] + \
                [[memoryview(targets[-1])[:333], memoryview(targets[-1])[333:]]]
            reads = [DataRequest(OP_READ, segment_id, at, len(b), grant, p)
                     for at, b, p in zip(offsets, blobs, parts)]
            assert conn.exchange(reads, 10) == len(reads)
            assert [bytes(t) for t in targets] == blobs
            assert all(r.status == 0 for r in writes + reads)
    finally:
        conn.close()


def test_the_wire_constants_match_proto_dataplane():
    assert lib.MC_DATAPLANE_ALIGN == wire.ALIGN
    assert lib.MC_DATAPLANE_ALIGNED_RESPONSE_BYTES == wire.ALIGNED_RESPONSE_BYTES
