"""The C data server on a file segment (the SSD tier): sendfile READs, buffered pwrite WRITEs,
the same grants, ranges and refusals as memory, over raw sockets and the C TCP client."""
import logging
import os
import socket
import time

import pytest

from mooncake_native.binding import lib
from mooncake_native.data_server import DataServer
from mooncake_native.file_segment import FileSegment
from mooncake_native.tcp import OP_READ, OP_WRITE, DataConnection, DataRequest
from mooncake_proto import dataplane as wire
from mooncake_proto import grants
from mooncake_proto.errors import ErrorCode, InvalidArgumentError
from raw_dataplane import recv_exact, refusal_of, response

pytestmark = pytest.mark.timeout(30)

WORKER = "worker-under-test"
DRAM, SSD = 0, 1
DRAM_BYTES = 1 << 20
SSD_BYTES = (16 << 20) + 8192
CHUNK = lib.MC_SERVER_FILE_CHUNK_BYTES


def start(dram, ssd, key, **limits) -> DataServer:
    ds = DataServer(WORKER, {DRAM: dram.view}, file_segments={SSD: ssd}, **limits)
    ds.grant_key = key
    ds.addr = ds.start("127.0.0.1", 0)
    return ds


@pytest.fixture
def server(dram, ssd, key):
    ds = start(dram, ssd, key)
    yield ds
    ds.stop()


def sign(key, op, offset, length, segment_id=SSD, ttl_ms=60_000) -> bytes:
    expiry = int(time.time() * 1000) + ttl_ms
    return grants.sign(key, grants.Grant(grants.Op(op), WORKER, segment_id, offset, length, expiry))


def request(key, op, offset, length, segment_id=SSD, payload=None, **grant) -> bytes:
    token = sign(key, grant.pop("g_op", op), grant.pop("g_offset", offset),
                 grant.pop("g_length", length), grant.pop("g_segment", segment_id), **grant)
    head = wire.encode_request(op, segment_id, offset, length, token)
    if op == wire.OP_WRITE:
        head += bytes(length) if payload is None else payload
    return head


def connect(addr: str, rcvbuf: int = 0) -> socket.socket:
    host, port = addr.rsplit(":", 1)
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window
    s.settimeout(10)
    s.connect((host, int(port)))
    return s


def file_bytes(ssd: FileSegment, offset: int, length: int) -> bytes:
    out = bytearray(length)
    ssd.read_into(offset, out)
    return bytes(out)


def round_trip(sock, key, offset, payload, segment_id=SSD) -> None:
    sock.sendall(request(key, wire.OP_WRITE, offset, len(payload), segment_id, payload))
    assert response(sock) == (0, len(payload), b"")
    sock.sendall(request(key, wire.OP_READ, offset, len(payload), segment_id))
    assert response(sock, read=True) == (0, len(payload), payload)


# ---- bytes in and out, by content ----

@pytest.mark.parametrize("offset, length", [
    (0, 1), (1, 3), (4097, 4095), (12345, 1), (SSD_BYTES - 1, 1), (SSD_BYTES, 0),
    (3, CHUNK), (CHUNK - 1, CHUNK + 2), (5, 3 * CHUNK + 11), (4096, (1 << 20) + 3),
    (7, 16 << 20)])
def test_write_then_read_lands_in_the_file_at_unaligned_offsets(server, ssd, key, offset,
                                                                  length):
    payload = os.urandom(length)
    with connect(server.addr) as s:
        round_trip(s, key, offset, payload)
    assert file_bytes(ssd, offset, length) == payload
    if offset > 0:  # the byte before the range is untouched
        assert file_bytes(ssd, offset - 1, 1) == b"\0"


def test_reads_serve_what_the_file_holds(server, ssd, key):
    ssd.write_from(1000, b"written by pwrite, read by sendfile")
    with connect(server.addr) as s:
        s.sendall(request(key, wire.OP_READ, 1011, 7, g_offset=0, g_length=4096))
        assert response(s, read=True) == (0, 7, b"pwrite,")


def test_memory_and_file_requests_pipeline_on_one_connection_in_order(server, dram, ssd, key):
    payloads = [os.urandom(1000 * i + 1) for i in range(12)]
    batch = b""
    for i, p in enumerate(payloads):
        seg = SSD if i % 2 else DRAM
        batch += request(key, wire.OP_WRITE, i * 20_000 + i, len(p), seg, p)
        batch += request(key, wire.OP_READ, i * 20_000 + i, len(p), seg)
    with connect(server.addr) as s:
        s.sendall(batch)
        for p in payloads:
            assert response(s) == (0, len(p), b"")
            assert response(s, read=True) == (0, len(p), p)
    assert file_bytes(ssd, 20_001, 1001) == payloads[1]
    assert bytes(dram.view[40_002:40_002 + 2001]) == payloads[2]
    server.stop()  # counters are final once every connection thread is done
    total = sum(len(p) for p in payloads)
    assert (server.bytes_in, server.bytes_out, server.refused) == (total, total, 0)


def test_the_c_client_scatters_and_gathers_file_segment_transfers(server, ssd, key):
    parts = [os.urandom(n) for n in (1, 70_000, CHUNK, 5)]
    length = sum(map(len, parts))
    host, port = server.addr.rsplit(":", 1)
    conn = DataConnection(host, int(port), 10)
    try:
        write = DataRequest(OP_WRITE, SSD, 333, length, sign(key, OP_WRITE, 333, length),
                            [memoryview(p) for p in parts])
        targets = [bytearray(len(p)) for p in reversed(parts)]
        read = DataRequest(OP_READ, SSD, 333, length, sign(key, OP_READ, 333, length),
                           [memoryview(t) for t in targets])
        assert conn.exchange([write, read], 10) == 2 and (write.status, read.status) == (0, 0)
    finally:
        conn.close()
    assert b"".join(targets) == b"".join(parts) == file_bytes(ssd, 333, length)


def test_the_server_keeps_its_own_descriptor(dram, tmp_path, key):
    ssd = FileSegment(str(tmp_path / "own"), 1 << 20, create=True)
    ds = DataServer(WORKER, {}, file_segments={SSD: ssd})
    ssd.close()  # the server dup'ed it: a closed (or reused) number cannot redirect it
    ds.grant_key = key
    addr = ds.start("127.0.0.1", 0)
    try:
        with connect(addr) as s:
            round_trip(s, key, 10, b"still served")
    finally:
        ds.stop()
    with FileSegment(str(tmp_path / "own"), 1 << 20) as again:
        assert file_bytes(again, 10, 12) == b"still served"


# ---- refusals: the same codes as memory; only the refused connection closes ----

BAD = {
    "forged": (lambda k: request(k, wire.OP_READ, 0, 64)[:-1] + b"\0",
               ErrorCode.PERMISSION_DENIED),
    "grant for the DRAM segment": (lambda k: request(k, wire.OP_READ, 0, 64, g_segment=DRAM),
                                   ErrorCode.PERMISSION_DENIED),
    "read grant used to write": (lambda k: request(k, wire.OP_WRITE, 0, 64, g_op=wire.OP_READ),
                                 ErrorCode.PERMISSION_DENIED),
    "beyond grant": (lambda k: request(k, wire.OP_READ, 0, 65, g_length=64),
                     ErrorCode.PERMISSION_DENIED),
    "expired": (lambda k: request(k, wire.OP_READ, 0, 64, ttl_ms=-1000),
                ErrorCode.PERMISSION_DENIED),
    "read beyond the file segment": (
        lambda k: request(k, wire.OP_READ, SSD_BYTES - 8, 16, g_offset=0, g_length=1 << 40),
        ErrorCode.INVALID_PARAMS),
    "write beyond the file segment": (
        lambda k: request(k, wire.OP_WRITE, SSD_BYTES - 8, 16, g_offset=0, g_length=1 << 40),
        ErrorCode.INVALID_PARAMS),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_requests_get_their_code_and_only_their_connection_closes(server, ssd, key, name):
    build, code = BAD[name]
    with connect(server.addr) as bystander, connect(server.addr) as s:
        round_trip(bystander, key, 0, b"before")
        s.sendall(build(key))
        assert refusal_of(s) == code
        round_trip(bystander, key, 0, b"after")
    assert server.refused == 1
    assert file_bytes(ssd, SSD_BYTES - 8, 8) == bytes(8)  # nothing written past a refusal
    assert os.fstat(ssd.fd).st_size == SSD_BYTES


def test_write_grant_expiring_mid_payload_leaves_no_late_bytes(server, ssd, key):
    length = 4 * CHUNK
    token = sign(key, wire.OP_WRITE, 0, length, ttl_ms=300)
    with connect(server.addr) as s:
        # one whole chunk and a part of the next: only whole chunks before expiry are written
        s.sendall(wire.encode_request(wire.OP_WRITE, SSD, 0, length, token)
                  + b"A" * (CHUNK + 1000))
        assert refusal_of(s) == ErrorCode.LEASE_EXPIRED
    assert file_bytes(ssd, 0, CHUNK) == b"A" * CHUNK
    assert file_bytes(ssd, CHUNK, 2000) == bytes(2000)


def test_a_reader_that_stops_reading_is_dropped_at_the_idle_timeout(dram, ssd, key, caplog):
    ds = start(dram, ssd, key, idle_timeout_s=0.3)
    try:
        with caplog.at_level(logging.INFO, logger="mooncake.worker.data"), \
                connect(ds.addr, rcvbuf=16384) as stalled, connect(ds.addr) as bystander:
            stalled.sendall(request(key, wire.OP_READ, 0, 16 << 20))  # then never read
            round_trip(bystander, key, 0, b"served meanwhile")
            deadline = time.monotonic() + 10
            while ds.stats()["connections"] > 0:  # polls a condition, bounded (the idle
                assert time.monotonic() < deadline, "a stalled sendfile was never dropped"
                time.sleep(0.02)                   # bystander goes too)
        with connect(ds.addr) as fresh:
            round_trip(fresh, key, 0, b"and after")
    finally:
        ds.stop()
    assert "sendfile: connection idle too long" in caplog.text
    assert ds.stats()["bytes_out"] == len(b"served meanwhile") + len(b"and after")


def test_a_file_truncated_underneath_drops_the_reading_connection(server, ssd, key):
    os.truncate(ssd.path, 4096)
    try:
        with connect(server.addr) as s, connect(server.addr) as bystander:
            s.sendall(request(key, wire.OP_READ, 0, 8192))
            status, length = wire.RESPONSE.unpack(recv_exact(s, wire.RESPONSE.size))
            assert (status, length) == (0, 8192)  # the header went before the file ran out
            got = b""
            while chunk := s.recv(65536):
                got += chunk
            assert len(got) == 4096  # then the connection closed: never a short answer
            round_trip(bystander, key, 0, b"others go on")
    finally:
        os.truncate(ssd.path, SSD_BYTES)


def test_file_segments_are_validated_when_added(dram, ssd, tmp_path):
    with FileSegment(ssd.path, SSD_BYTES) as read_only:
        with pytest.raises(InvalidArgumentError, match="reading and writing"):
            DataServer(WORKER, {}, file_segments={SSD: read_only})
    with pytest.raises(FileExistsError):
        DataServer(WORKER, {SSD: dram.view}, file_segments={SSD: ssd})
    with FileSegment(str(tmp_path / "small"), 4096, create=True) as small:
        small.size_bytes = 8192  # a file shorter than the segment it claims to be
        with pytest.raises(InvalidArgumentError, match="file has 4096 bytes"):
            DataServer(WORKER, {}, file_segments={SSD: small})
        small.size_bytes = 4096
    closed = FileSegment(str(tmp_path / "closed"), 4096, create=True)
    closed.close()
    with pytest.raises(OSError):
        DataServer(WORKER, {}, file_segments={SSD: closed})


def test_write_fail_is_mooncakes_code():
    assert lib.MC_CODE_WRITE_FAIL == ErrorCode.WRITE_FAIL
