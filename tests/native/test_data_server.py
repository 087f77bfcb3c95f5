"""The C data-plane server, driven directly over raw sockets: round trips, refusals, stop."""
import logging
import os
import socket
import time

import pytest

from mooncake_native.binding import ffi, lib
from mooncake_native.data_server import DataServer
from mooncake_native.segment import SegmentMapping
from mooncake_proto import dataplane as wire
from mooncake_proto import grants
from mooncake_proto.errors import ErrorCode, InvalidArgumentError
from raw_dataplane import refusal_of, response, start_server

pytestmark = pytest.mark.timeout(30)

WORKER = "worker-under-test"
SEGMENT_BYTES = 4 << 20
U64_MAX = (1 << 64) - 1


@pytest.fixture
def segment(tmp_path):
    mapping = SegmentMapping(str(tmp_path / "segment"), SEGMENT_BYTES, create=True)
    yield mapping
    mapping.close()  # view.release() raises if the server still held the buffer


@pytest.fixture
def server(segment, key):
    ds = start_server(WORKER, {0: segment.view}, key)
    yield ds
    ds.stop()


def now_ms() -> int:
    return int(time.time() * 1000)


def sign(key, op, offset, length, segment_id=0, worker=WORKER, ttl_ms=60_000) -> bytes:
    return grants.sign(key, grants.Grant(grants.Op(op), worker, segment_id, offset, length,
                                         expiry_ms=now_ms() + ttl_ms))


def connect(addr: str) -> socket.socket:
    host, port = addr.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def write_request(key, offset, payload, **grant) -> bytes:
    token = sign(key, wire.OP_WRITE, offset, len(payload), **grant)
    return wire.encode_request(wire.OP_WRITE, 0, offset, len(payload), token) + payload


def read_request(key, offset, length, **grant) -> bytes:
    token = sign(key, wire.OP_READ, offset, length, **grant)
    return wire.encode_request(wire.OP_READ, 0, offset, length, token)


def round_trip(sock, key, offset, payload) -> None:
    sock.sendall(write_request(key, offset, payload))
    assert response(sock) == (0, len(payload), b"")
    sock.sendall(read_request(key, offset, len(payload)))
    assert response(sock, read=True) == (0, len(payload), payload)


# ---- bytes in and out ----

def test_write_then_read_round_trip_lands_in_the_segment(server, segment, key):
    payload = os.urandom(64 << 10)
    with connect(server.addr) as s:
        round_trip(s, key, 8192, payload)
    assert segment.view[8192:8192 + len(payload)] == payload
    server.stop()  # bytes_out counts after the send returns: let the thread finish
    assert (server.bytes_in, server.bytes_out, server.refused) == (len(payload), len(payload), 0)


def test_large_transfers_cross_many_socket_buffers(server, segment, key):
    payload = os.urandom(SEGMENT_BYTES)
    with connect(server.addr) as s:
        round_trip(s, key, 0, payload)
    assert segment.view == payload


def test_32_pipelined_requests_answer_in_order(server, key):
    payloads = [os.urandom(1000 + i) for i in range(16)]
    offsets = [i * 4096 + i for i in range(16)]
    batch = b"".join(write_request(key, o, p) + read_request(key, o, len(p))
                     for o, p in zip(offsets, payloads))
    with connect(server.addr) as s:
        s.sendall(batch)  # all 32 before reading any response
        for payload in payloads:
            assert response(s) == (0, len(payload), b"")
            assert response(s, read=True) == (0, len(payload), payload)


@pytest.mark.parametrize("offset, length", [(1, 3), (4097, 4095), (12345, 1),
                                            (SEGMENT_BYTES - 1, 1), (SEGMENT_BYTES, 0)])
def test_unaligned_and_edge_ranges(server, segment, key, offset, length):
    payload = os.urandom(length)
    with connect(server.addr) as s:
        round_trip(s, key, offset, payload)
    assert segment.view[offset:offset + length] == payload


def test_a_read_inside_a_wider_grant_is_served(server, segment, key):
    segment.view[100:200] = bytes(range(100))
    token = sign(key, wire.OP_READ, 0, 4096)
    with connect(server.addr) as s:
        s.sendall(wire.encode_request(wire.OP_READ, 0, 150, 10, token))
        assert response(s, read=True) == (0, 10, bytes(range(50, 60)))


# ---- refusals: each gets its code and loses its connection, nobody else does ----

def _header(op=wire.OP_READ, grant_len=0, segment_id=0, offset=0, length=0, magic=wire.MAGIC):
    return wire.REQUEST.pack(magic, op, 0, grant_len, segment_id, offset, length)


def _forged(key):
    token = bytearray(sign(key, wire.OP_READ, 0, 64))
    token[-1] ^= 1
    return wire.encode_request(wire.OP_READ, 0, 0, 64, bytes(token))


def _request(key, op, offset, length, g_offset, g_length, g_op=None, **grant):
    token = sign(key, g_op or op, g_offset, g_length, **grant)
    request = wire.encode_request(op, grant.get("segment_id", 0), offset, length, token)
    return request + (bytes(length) if op == wire.OP_WRITE else b"")


BAD_REQUESTS = {
    "forged MAC": (_forged, ErrorCode.PERMISSION_DENIED),
    "another worker": (lambda k: read_request(k, 0, 64, worker="worker-other"),
                       ErrorCode.PERMISSION_DENIED),
    "wrong key": (lambda k: read_request(os.urandom(32), 0, 64), ErrorCode.PERMISSION_DENIED),
    "expired": (lambda k: read_request(k, 0, 64, ttl_ms=-1000), ErrorCode.PERMISSION_DENIED),
    "op mismatch": (lambda k: _request(k, wire.OP_WRITE, 0, 64, 0, 64, g_op=wire.OP_READ),
                    ErrorCode.PERMISSION_DENIED),
    "beyond grant": (lambda k: _request(k, wire.OP_READ, 0, 65, 0, 64),
                     ErrorCode.PERMISSION_DENIED),
    "before grant": (lambda k: _request(k, wire.OP_READ, 4032, 64, 4096, 64),
                     ErrorCode.PERMISSION_DENIED),
    "wrapping range": (lambda k: _request(k, wire.OP_READ, U64_MAX - 7, 16, 0, U64_MAX),
                       ErrorCode.PERMISSION_DENIED),
    "beyond segment": (lambda k: _request(k, wire.OP_READ, SEGMENT_BYTES - 8, 16, 0, 1 << 40),
                       ErrorCode.INVALID_PARAMS),
    "offset near 2^64": (lambda k: _request(k, wire.OP_READ, U64_MAX - 9, 10, U64_MAX - 9, 10),
                         ErrorCode.INVALID_PARAMS),
    "unknown segment": (lambda k: _request(k, wire.OP_READ, 0, 64, 0, 64, segment_id=7),
                        ErrorCode.INVALID_PARAMS),
    "bad magic": (lambda k: _header(magic=b"MCD9"), ErrorCode.INVALID_PARAMS),
    "bad op": (lambda k: _header(op=3), ErrorCode.INVALID_PARAMS),
    "grant_len > 2048": (lambda k: _header(grant_len=2049) + bytes(2049),
                         ErrorCode.INVALID_PARAMS),
    "garbage": (lambda k: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(8),
                ErrorCode.INVALID_PARAMS),
    "write too big": (lambda k: _request(k, wire.OP_WRITE, 0, 8 << 20, 0, 8 << 20),
                      ErrorCode.INVALID_PARAMS),
}


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_bad_requests_get_their_code_and_only_their_connection_closes(server, key, name):
    build, code = BAD_REQUESTS[name]
    with connect(server.addr) as bystander, connect(server.addr) as s:
        round_trip(bystander, key, 0, b"before")
        s.sendall(build(key))
        assert refusal_of(s) == code
        round_trip(bystander, key, 0, b"after")
    assert server.refused == 1


@pytest.mark.parametrize("sent", [b"", b"MCD1\x01", lambda k: read_request(k, 0, 8)[:-5]])
def test_truncated_requests_then_close(server, key, sent):
    data = sent(key) if callable(sent) else sent
    with connect(server.addr) as bystander, connect(server.addr) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        if data:  # mid-request: an error; between requests: a plain close
            assert refusal_of(s) == ErrorCode.INVALID_PARAMS
        else:
            assert s.recv(1) == b""
        round_trip(bystander, key, 0, b"still serving")


def test_requests_before_a_key_is_set_are_unavailable_and_key_swaps_apply(segment, key):
    ds = DataServer(WORKER, {0: segment.view})
    addr = ds.start("127.0.0.1", 0)
    try:
        with connect(addr) as s:
            s.sendall(read_request(key, 0, 8))
            assert refusal_of(s) == ErrorCode.UNAVAILABLE_IN_CURRENT_STATUS
        ds.grant_key = key
        with connect(addr) as s:
            round_trip(s, key, 0, b"registered")
            new_key = os.urandom(32)
            ds.grant_key = new_key  # re-registration: old grants stop working at once
            round_trip(s, new_key, 0, b"re-registered")
            s.sendall(read_request(key, 0, 8))
            assert refusal_of(s) == ErrorCode.PERMISSION_DENIED
        ds.worker_id = "renamed"
        with connect(addr) as s:
            s.sendall(read_request(new_key, 0, 8, worker="renamed"))
            assert response(s)[0] == 0
    finally:
        ds.stop()


def test_write_grant_expiring_mid_payload_is_refused(server, segment, key):
    length = 1 << 20
    token = sign(key, wire.OP_WRITE, 0, length, ttl_ms=300)
    with connect(server.addr) as s:
        s.sendall(wire.encode_request(wire.OP_WRITE, 0, 0, length, token) + b"A" * 1000)
        assert refusal_of(s) == ErrorCode.LEASE_EXPIRED  # the server stops waiting at expiry
    assert segment.view[:1000] == b"A" * 1000
    assert segment.view[1000:2000] == bytes(1000)


# ---- lifecycle, limits, counters and logging ----

@pytest.mark.timeout(10)
def test_stop_with_open_connections_returns_promptly(segment, key):
    ds = DataServer(WORKER, {0: segment.view})
    ds.grant_key = key
    addr = ds.start("127.0.0.1", 0)
    idle, mid_header, mid_payload = connect(addr), connect(addr), connect(addr)
    round_trip(idle, key, 0, b"x")
    mid_header.sendall(b"MCD1")
    mid_payload.sendall(write_request(key, 0, bytes(1 << 20))[:4096])
    t0 = time.monotonic()
    ds.stop()
    assert time.monotonic() - t0 < 1.0
    for s in (idle, mid_header, mid_payload):
        try:
            assert s.recv(64) == b""  # closed: no refusal is sent to sockets stop() shut
        except ConnectionResetError:
            pass  # closed with our unread bytes in its buffer
        s.close()
    with pytest.raises(OSError):
        connect(addr).close()
    ds.stop()  # idempotent


def test_connection_cap_and_idle_timeout(segment, key, caplog):
    ds = DataServer(WORKER, {0: segment.view}, max_connections=2, idle_timeout_s=0.3)
    ds.grant_key = key
    addr = ds.start("127.0.0.1", 0)
    with caplog.at_level(logging.INFO, logger="mooncake.worker.data"):
        try:
            with connect(addr) as a, connect(addr) as b:
                round_trip(a, key, 0, b"a")
                round_trip(b, key, 0, b"b")  # both registered: the cap is reached
                with connect(addr) as c:
                    assert c.recv(1) == b""  # closed at accept
                assert ds.stats()["connections"] == 2
                t0 = time.monotonic()
                assert a.recv(1) == b""  # idle too long
                assert 0.2 < time.monotonic() - t0 < 3
        finally:
            ds.stop()
    assert "event=data_connection_refused" in caplog.text
    assert "event=data_connection_lost" in caplog.text


def test_refusals_are_logged_as_one_kv_line_and_counted(server, key, caplog):
    with caplog.at_level(logging.INFO, logger="mooncake.worker.data"):
        with connect(server.addr) as s:
            s.sendall(_forged(key))
            assert refusal_of(s) == ErrorCode.PERMISSION_DENIED
        server.stop()  # joins the log thread: every queued event is logged by now
    [line] = [r.getMessage() for r in caplog.records if "data_request_refused" in r.getMessage()]
    assert line.startswith("event=data_request_refused peer=127.0.0.1:")
    assert 'code=-1301 reason="grant signature is invalid"' in line
    stats = server.stats()
    assert (stats["refused"], stats["requests"], stats["connections"]) == (1, 0, 0)
    assert stats["connections_total"] == 1


def test_segments_are_validated_at_construction(segment):
    with pytest.raises(BufferError):
        DataServer(WORKER, {0: bytes(16)})  # read-only memory cannot take writes
    with pytest.raises(InvalidArgumentError):
        DataServer("w" * 2000, {0: segment.view})


# ---- the C grant verifier agrees with proto/grants.py ----

def c_verify(key, token, worker=WORKER, now=None):
    out = ffi.new("mc_grant *")
    wid = worker.encode()
    rc = lib.mc_grant_verify(key, len(key), token, len(token), wid, len(wid),
                             now_ms() if now is None else now, out)
    return rc, out


def test_c_grant_verifier_matches_python(key):
    grant = grants.Grant(grants.Op.WRITE, WORKER, 3, 4096, 100, expiry_ms=2_000)
    token = grants.sign(key, grant)
    rc, out = c_verify(key, token, now=2_000)
    assert rc == 0
    assert (out.op, out.segment_id, out.offset, out.length, out.expiry_ms) == \
        (grant.op, 3, 4096, 100, 2_000)
    assert c_verify(key, token, now=2_001)[0] < 0  # expired
    assert c_verify(key, token, worker="other", now=0)[0] < 0
    assert c_verify(key[::-1], token, now=0)[0] < 0
    assert c_verify(key, token[:-1] + bytes([token[-1] ^ 1]), now=0)[0] < 0
    assert c_verify(key, token[:40], now=0)[0] < 0
    for op, seg, off, length, ok in [(2, 3, 4096, 100, 1), (2, 3, 4100, 96, 1),
                                     (2, 3, 4096, 101, 0), (1, 3, 4096, 1, 0),
                                     (2, 4, 4096, 1, 0), (2, 3, 4095, 1, 0),
                                     (2, 3, U64_MAX, 2, 0)]:
        assert lib.mc_grant_covers(out, op, seg, off, length) == ok


def test_c_codes_are_mooncakes():
    assert lib.MC_CODE_INVALID_PARAMS == ErrorCode.INVALID_PARAMS
    assert lib.MC_CODE_LEASE_EXPIRED == ErrorCode.LEASE_EXPIRED
    assert lib.MC_CODE_UNAVAILABLE_IN_CURRENT_STATUS == ErrorCode.UNAVAILABLE_IN_CURRENT_STATUS
    assert lib.MC_CODE_PERMISSION_DENIED == ErrorCode.PERMISSION_DENIED
    assert lib.MC_DATAPLANE_REQUEST_BYTES == wire.REQUEST.size
    assert lib.MC_DATAPLANE_RESPONSE_BYTES == wire.RESPONSE.size
    assert lib.MC_DATAPLANE_MAX_GRANT_LEN == wire.MAX_GRANT_LEN
    assert lib.MC_GRANT_MAX_BYTES == grants.MAX_GRANT_BYTES
    assert lib.MC_GRANT_MAX_WORKER_ID == grants.MAX_WORKER_ID_BYTES
