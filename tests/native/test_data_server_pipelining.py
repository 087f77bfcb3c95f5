"""The C data server under pipelining: requests parsed from a per-connection input buffer,
answers queued and sent together, still one answer per request, in order, over raw sockets."""
import os
import socket
import time

import pytest

from mooncake_native.data_server import DataServer
from mooncake_proto import dataplane as wire
from mooncake_proto import grants
from mooncake_proto.errors import ErrorCode
from raw_dataplane import refusal_of, response

pytestmark = pytest.mark.timeout(30)

WORKER = "worker-under-test"
DRAM, SSD = 0, 1
DRAM_BYTES = 16 << 20
SSD_BYTES = 1 << 20
QUEUE_ANSWERS = 256  # server_conn.c: answers one sendmsg may carry


@pytest.fixture
def server(dram, ssd, key):
    ds = DataServer(WORKER, {DRAM: dram.view}, file_segments={SSD: ssd})
    ds.grant_key = key
    ds.addr = ds.start("127.0.0.1", 0)
    yield ds
    ds.stop()


def request(key, op, offset, length, payload=b"", segment_id=DRAM, forged=False) -> bytes:
    expiry = int(time.time() * 1000) + 60_000
    token = bytearray(grants.sign(key, grants.Grant(grants.Op(op), WORKER, segment_id, offset,
                                                    length, expiry)))
    if forged:
        token[-1] ^= 1
    return wire.encode_request(op, segment_id, offset, length, bytes(token)) + payload


def read(key, offset, length, **kw) -> bytes:
    return request(key, wire.OP_READ, offset, length, **kw)


def write(key, offset, payload, **kw) -> bytes:
    return request(key, wire.OP_WRITE, offset, len(payload), payload, **kw)


def connect(addr: str) -> socket.socket:
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small sends leave one by one
    return s


def fill(dram, offset, length) -> bytes:
    data = os.urandom(length)
    dram.view[offset:offset + length] = data
    return data


# ---- many answers in one exchange ----

def test_more_pipelined_reads_than_one_sendmsg_carries_answer_in_order(server, dram, key):
    count, size = QUEUE_ANSWERS + 44, 4096
    expected = [fill(dram, i * size, size) for i in range(count)]
    batch = b"".join(read(key, i * size, size) for i in range(count))
    with connect(server.addr) as s:
        s.sendall(batch)  # one send: the server finds many requests per recv
        for data in expected:
            assert response(s, read=True) == (0, size, data)
    server.stop()  # counters are final once the connection's thread is done
    stats = server.stats()
    assert (stats["requests"], stats["bytes_out"], stats["refused"]) == (count, count * size, 0)


def test_pipelined_reads_past_the_byte_cap_stream_in_order(server, dram, key):
    size = 3 << 20  # two of them pass the queue's 4 MiB
    expected = [fill(dram, i * size, size) for i in range(4)]
    with connect(server.addr) as s:
        s.sendall(b"".join(read(key, i * size, size) for i in range(4)))
        for data in expected:
            assert response(s, read=True) == (0, size, data)


def test_memory_and_file_reads_interleave_in_order(server, dram, ssd, key):
    batch, expected = b"", []
    for i in range(20):
        offset, length = i * 5000, 1000 + i
        if i % 3 == 0:  # sendfile: the queued answers go out before it
            data = os.urandom(length)
            ssd.write_from(offset, data)
            batch += read(key, offset, length, segment_id=SSD)
        else:
            data = fill(dram, offset, length)
            batch += read(key, offset, length)
        expected.append(data)
    with connect(server.addr) as s:
        s.sendall(batch)
        for data in expected:
            assert response(s, read=True) == (0, len(data), data)


# ---- refusals and ends of input: earlier answers first ----

def test_a_bad_grant_mid_batch_gets_the_earlier_answers_then_its_refusal_of(
        server, dram, key):
    expected = [fill(dram, i * 100, 100) for i in range(8)]
    batch = b"".join(read(key, i * 100, 100) for i in range(5))
    batch += read(key, 0, 100, forged=True)
    batch += b"".join(read(key, i * 100, 100) for i in range(5, 8))  # never answered
    with connect(server.addr) as s:
        s.sendall(batch)
        for data in expected[:5]:
            assert response(s, read=True) == (0, 100, data)
        assert refusal_of(s) == ErrorCode.PERMISSION_DENIED
    server.stop()
    assert (server.stats()["requests"], server.refused) == (5, 1)


@pytest.mark.parametrize("tail", [b"MCD1\x01", b""])
def test_input_ending_after_a_batch_answers_the_batch_first(server, dram, key, tail):
    expected = [fill(dram, i * 64, 64) for i in range(3)]
    with connect(server.addr) as s:
        s.sendall(b"".join(read(key, i * 64, 64) for i in range(3)) + tail)
        s.shutdown(socket.SHUT_WR)
        for data in expected:
            assert response(s, read=True) == (0, 64, data)
        if tail:  # mid-header: refused after the answers
            assert refusal_of(s) == ErrorCode.INVALID_PARAMS
        else:
            assert s.recv(1) == b""


# ---- writes in a batch ----

def test_a_write_and_a_read_of_its_range_in_one_send(server, dram, key):
    payload = os.urandom(3000)
    with connect(server.addr) as s:
        s.sendall(write(key, 777, payload) + read(key, 777, len(payload)))
        assert response(s) == (0, len(payload), b"")
        assert response(s, read=True) == (0, len(payload), payload)
    assert bytes(dram.view[777:777 + len(payload)]) == payload


def test_a_read_queued_before_a_write_of_its_range_sends_the_old_bytes(server, dram, key):
    old, new = fill(dram, 0, 4096), os.urandom(4096)
    with connect(server.addr) as s:
        s.sendall(read(key, 0, 4096) + write(key, 0, new) + read(key, 0, 4096))
        assert response(s, read=True) == (0, 4096, old)
        assert response(s) == (0, 4096, b"")
        assert response(s, read=True) == (0, 4096, new)


def test_pipelined_writes_larger_than_the_input_buffer(server, dram, ssd, key):
    payloads = [os.urandom(size) for size in (50_000, 100_000, 1, 70_000)]
    offsets = [0, 60_000, 200_000, 300_000]
    batch = b"".join(write(key, o, p) + write(key, o, p, segment_id=SSD) + read(key, o, len(p))
                     for o, p in zip(offsets, payloads))
    with connect(server.addr) as s:
        s.sendall(batch)
        for payload in payloads:
            assert response(s) == (0, len(payload), b"")
            assert response(s) == (0, len(payload), b"")
            assert response(s, read=True) == (0, len(payload), payload)
    for o, p in zip(offsets, payloads):
        out = bytearray(len(p))
        ssd.read_into(o, out)
        assert bytes(out) == p


# ---- slow clients ----

def test_requests_delivered_a_byte_at_a_time(server, dram, key):
    payload = os.urandom(40)
    batch = write(key, 10, payload) + read(key, 10, len(payload)) + write(key, 99, b"z")
    with connect(server.addr) as s:
        for i in range(len(batch)):
            s.send(batch[i:i + 1])
        assert response(s) == (0, len(payload), b"")
        assert response(s, read=True) == (0, len(payload), payload)
        assert response(s) == (0, 1, b"")
    assert bytes(dram.view[99:100]) == b"z"


def test_a_request_split_at_every_boundary(server, dram, key):
    data = fill(dram, 4096, 512)
    one = read(key, 4096, 512)
    with connect(server.addr) as s:
        for cut in (4, wire.REQUEST.size, wire.REQUEST.size + 1, len(one) - 1):
            s.sendall(one[:cut])
            s.sendall(one[cut:] + one)  # the rest, then a whole request behind it
            assert response(s, read=True) == (0, 512, data)
            assert response(s, read=True) == (0, 512, data)
