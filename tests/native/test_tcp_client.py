"""The C client side of the TCP data plane against scripted peers: the wire cases a real worker
never produces (bad answers, silence, a close mid-payload) and flow control on huge batches.
End-to-end behaviour against real workers is in tests/cluster."""
import socket
import struct
import threading

import pytest

from mooncake_native.binding import ProtocolError
from mooncake_native.tcp import (OP_READ, OP_WRITE, STATUS_PENDING, DataConnection, DataRequest,
                                  exchange_many)
from mooncake_proto import dataplane as wire
from mooncake_proto.errors import InvalidArgumentError

GRANT = b"g" * 40


class Peer:
    """A listener whose one connection is handled by `script(conn)` in a thread."""

    def __init__(self, script):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._run, args=(script,), daemon=True)
        self.thread.start()

    def _run(self, script):
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return  # the test closed the listener first
        try:
            script(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.listener.close()
        self.thread.join(10)


def recv_bytes(conn, n: int) -> bytes:
    data = bytearray(n)
    wire.recv_exact_into(conn, memoryview(data))
    return bytes(data)


def read_request(conn):
    """One request in the aligned form the client sends: its padding must be zeros."""
    magic, op, _, grant_len, seg, offset, length = wire.REQUEST.unpack(
        recv_bytes(conn, wire.REQUEST.size))
    assert magic == wire.MAGIC_ALIGNED
    grant = recv_bytes(conn, grant_len)
    assert recv_bytes(conn, wire.pad(wire.REQUEST.size + grant_len)) == \
        bytes(wire.pad(wire.REQUEST.size + grant_len))
    payload = b""
    if op == wire.OP_WRITE:
        payload = recv_bytes(conn, length)
        assert recv_bytes(conn, wire.pad(length)) == bytes(wire.pad(length))
    return op, seg, offset, length, grant, payload


def answer(status: int, payload: bytes = b"", length: int | None = None) -> bytes:
    return wire.encode_response(status, payload, length, aligned=True)


def test_pipelined_batch_of_writes_and_reads_with_scatter_gather():
    store = {}

    def serve(conn):
        for _ in range(600):
            op, seg, offset, length, grant, payload = read_request(conn)
            assert grant == GRANT
            if op == wire.OP_WRITE:
                store[offset] = payload
                conn.sendall(answer(0, length=length))
            else:
                conn.sendall(answer(0, store[offset]))

    peer = Peer(serve)
    conn = DataConnection("127.0.0.1", peer.port, 10)
    # 300 writes of 64 KiB sent before any answer is read: flow control must not deadlock
    writes = [DataRequest(OP_WRITE, 0, i, 65536, GRANT,
                          [memoryview(bytes([i % 251]) * 1000), memoryview(bytes(64536))])
              for i in range(300)]
    assert conn.exchange(writes, 20) == 300 and all(r.status == 0 for r in writes)
    targets = [[memoryview(bytearray(1)), memoryview(bytearray(65535))] for _ in range(300)]
    reads = [DataRequest(OP_READ, 0, i, 65536, GRANT, targets[i]) for i in range(300)]
    assert conn.exchange(reads, 20) == 300
    assert all(bytes(t[0]) + bytes(t[1]) == store[i] for i, t in enumerate(targets))
    conn.close()
    peer.close()


def test_reads_into_c_pointers_and_buffers_mixed_with_each_grant_sent_whole():
    """A read target may be one cdata pointer (a fresh bytes object's storage, as `get` uses)
    instead of a list of buffers; grants of different lengths travel from one joined buffer."""
    from mooncake_native.buffers import fresh_bytes_at
    grants_seen = []

    def serve(conn):
        for _ in range(4):
            op, seg, offset, length, grant, payload = read_request(conn)
            grants_seen.append(grant)
            conn.sendall(answer(0, bytes([offset]) * length))

    peer = Peer(serve)
    conn = DataConnection("127.0.0.1", peer.port, 10)
    fresh = [fresh_bytes_at(n) for n in (5, 70_000)]
    view = memoryview(bytearray(9))
    reqs = [DataRequest(OP_READ, 0, 1, 5, b"a" * 3, fresh[0][1]),
            DataRequest(OP_READ, 0, 2, 9, b"", [view[:4], view[4:]]),
            DataRequest(OP_READ, 0, 3, 70_000, b"c" * 300, fresh[1][1]),
            DataRequest(OP_READ, 0, 4, 1, b"d", [memoryview(bytearray(1))])]
    assert conn.exchange(reqs, 10) == 4 and all(r.status == 0 for r in reqs)
    assert fresh[0][0] == b"\x01" * 5 and fresh[1][0] == b"\x03" * 70_000
    assert bytes(view) == b"\x02" * 9 and bytes(reqs[3].parts[0]) == b"\x04"
    assert grants_seen == [b"a" * 3, b"", b"c" * 300, b"d"]
    with pytest.raises(InvalidArgumentError, match="a target of 5 bytes for 6"):
        conn.exchange([DataRequest(OP_READ, 0, 0, 6, b"", fresh_bytes_at(5)[1])], 10)
    conn.close()
    peer.close()


def test_exchange_stops_at_a_refusal_and_reports_it():
    def serve(conn):
        read_request(conn)
        conn.sendall(answer(0, length=4))
        read_request(conn)
        conn.sendall(answer(-1301))

    peer = Peer(serve)
    conn = DataConnection("127.0.0.1", peer.port, 10)
    reqs = [DataRequest(OP_WRITE, 0, i, 4, GRANT, [memoryview(b"abcd")]) for i in range(3)]
    assert conn.exchange(reqs, 10) == 2
    assert [r.status for r in reqs] == [0, -1301, STATUS_PENDING]
    conn.close()
    peer.close()


@pytest.mark.parametrize("bad, error", [
    (answer(0, length=3), ProtocolError),       # wrong length for a 4-byte read
    (answer(5), ProtocolError),                 # a positive status is not in the protocol
    (answer(0, length=4)[:wire.ALIGNED_RESPONSE_BYTES] + b"ab",
     ConnectionResetError),                     # closed mid-payload
    (answer(0, b"abcd")[:-1], ConnectionResetError),  # closed mid-padding
])
def test_bad_answers_fail_the_connection(bad, error):
    def serve(conn):
        read_request(conn)
        conn.sendall(bad)

    peer = Peer(serve)
    conn = DataConnection("127.0.0.1", peer.port, 10)
    req = DataRequest(OP_READ, 0, 0, 4, GRANT, [memoryview(bytearray(4))])
    with pytest.raises(error):
        conn.exchange([req], 10)
    conn.close()
    peer.close()


def test_a_silent_peer_times_out_within_the_bound():
    done = threading.Event()
    peer = Peer(lambda conn: done.wait(10))
    conn = DataConnection("127.0.0.1", peer.port, 10)
    req = DataRequest(OP_READ, 0, 0, 4, GRANT, [memoryview(bytearray(4))])
    with pytest.raises(TimeoutError):
        conn.exchange([req], 0.2)
    done.set()
    conn.close()
    peer.close()


def test_connect_to_a_closed_port_is_refused():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(ConnectionRefusedError):
        DataConnection("127.0.0.1", port, 2)


def test_buffers_must_add_up_to_the_request_length():
    peer = Peer(lambda conn: conn.recv(1))
    conn = DataConnection("127.0.0.1", peer.port, 10)
    with pytest.raises(Exception, match="buffers of 3 bytes"):
        conn.exchange([DataRequest(OP_WRITE, 0, 0, 4, GRANT, [memoryview(b"abc")])], 1)
    conn.close()
    peer.close()


def test_timeout_bounds_silence_not_a_batch_that_keeps_moving():
    """A slow but steady peer: the whole batch takes several timeouts, every gap is shorter."""
    import time

    def serve(conn):
        for _ in range(6):
            read_request(conn)
            time.sleep(0.15)  # the peer's pace, below the 0.4 s silence bound
            conn.sendall(answer(0, length=4))

    peer = Peer(serve)
    conn = DataConnection("127.0.0.1", peer.port, 10)
    reqs = [DataRequest(OP_WRITE, 0, i, 4, GRANT, [memoryview(b"abcd")]) for i in range(6)]
    assert conn.exchange(reqs, 0.4) == 6 and all(r.status == 0 for r in reqs)
    conn.close()
    peer.close()


def test_exchanges_on_several_connections_run_at_once_and_fail_apart():
    """exchange_many: every connection's batch is sent before any answer is awaited (the
    slow peer answers only once the quick one's whole batch has been answered), and one
    peer's refusal or failure does not touch the others' results."""
    quick_done = threading.Event()

    def quick(conn):
        for _ in range(3):
            _, _, offset, length, _, _ = read_request(conn)
            conn.sendall(answer(0, bytes([offset]) * length))
        quick_done.set()

    def slow(conn):
        read_request(conn)
        assert quick_done.wait(10)  # a sequential client would deadlock here
        conn.sendall(answer(0, b"slow"))
        read_request(conn)
        conn.sendall(answer(-1301))

    def broken(conn):
        read_request(conn)
        conn.sendall(answer(5))  # not in the protocol

    peers = [Peer(quick), Peer(slow), Peer(broken)]
    conns = [DataConnection("127.0.0.1", p.port, 10) for p in peers]
    targets = [memoryview(bytearray(4)) for _ in range(6)]
    batches = [
        (conns[0], [DataRequest(OP_READ, 0, i, 4, GRANT, [targets[i]]) for i in range(3)]),
        (conns[1], [DataRequest(OP_READ, 0, 9, 4, GRANT, [targets[3]]),
                    DataRequest(OP_READ, 0, 9, 4, GRANT, [targets[4]])]),
        (conns[2], [DataRequest(OP_READ, 0, 9, 4, GRANT, [targets[5]])]),
    ]
    results = exchange_many(batches, 10)
    assert results[:2] == [3, 2]
    assert isinstance(results[2], ProtocolError) and "status 5" in str(results[2])
    assert [bytes(t) for t in targets[:4]] == [b"\0" * 4, b"\1" * 4, b"\2" * 4, b"slow"]
    assert [r.status for r in batches[1][1]] == [0, -1301]
    assert batches[2][1][0].status == STATUS_PENDING
    for conn in conns:
        conn.close()
    for peer in peers:
        peer.close()


def test_a_silent_connection_times_out_without_holding_up_the_others():
    def answers(conn):
        _, _, _, length, _, _ = read_request(conn)
        conn.sendall(answer(0, b"x" * length))
        conn.recv(1)  # until the client closes

    def silent(conn):
        read_request(conn)
        conn.recv(1)

    peers = [Peer(answers), Peer(silent)]
    conns = [DataConnection("127.0.0.1", p.port, 10) for p in peers]
    target = memoryview(bytearray(3))
    results = exchange_many([(conns[0], [DataRequest(OP_READ, 0, 0, 3, GRANT, [target])]),
                             (conns[1], [DataRequest(OP_READ, 0, 0, 3, GRANT,
                                                     [memoryview(bytearray(3))])])], 0.3)
    assert results[0] == 1 and bytes(target) == b"xxx"
    assert isinstance(results[1], TimeoutError)
    for conn in conns:
        conn.close()
    for peer in peers:
        peer.close()
