"""The C TCP client against scripted workers older than the aligned wire form, which speak only
MCD1: the client falls back to MCD1 for such a peer, retries the refused exchange once, and its
pool remembers the form. New-form workers' refusals and other closes must not look like one.

What an old worker does with an aligned (MCD2) request, from 3d2b6cf^:native/src/server_conn.c:
parse_header refuses the bad magic (MC_CODE_INVALID_PARAMS, "malformed request header") as soon
as 28 bytes are in, before reading the grant or any payload; answer_refusal sends the answers
queued before it and then that refusal, 12 bytes in MCD1 (status -600, length 0), and
linger_close shuts its side and drains our input for up to MC_SERVER_LINGER_MS (1 s). A
connection's first request is refused, so nothing of the batch was applied."""
import collections
import logging
import socket
import threading
import time

import pytest

from mooncake_native.tcp import (FORM_ALIGNED, FORM_MCD1, OP_READ, OP_WRITE, STATUS_PENDING,
                                 DataConnection, DataRequest, PeerForms, exchange_many)
from mooncake_proto import dataplane as wire
from mooncake_proto.errors import InvalidArgumentError

pytestmark = pytest.mark.timeout(30)

GRANT = b"g" * 40
INVALID_PARAMS, PERMISSION_DENIED = -600, -1301
ODD_SIZES = [1, 63, 64, 65, 4097, 100_000, 0, 12]
LOG_EVENT = "data_peer_legacy_wire_form"


class Listener:
    """Accepts connections until closed; each is handled by script(conn) in its own thread."""

    def __init__(self, script):
        self.script = script
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.addr = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.threads = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn):
        try:
            self.script(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept (Linux)
        except OSError:
            pass
        self.listener.close()
        self.thread.join(10)
        for thread in self.threads:
            thread.join(10)


class OldWorker(Listener):
    """A worker that speaks only MCD1, as the data server before the aligned form did: an
    MCD2 header is refused in MCD1 and the connection lingers, then closes (see above).
    `store` is its segment; `applied` counts each WRITE (offset, length) applied."""

    def __init__(self, size: int = 8 << 20):
        self.store = bytearray(size)
        self.applied = collections.Counter()
        self.first_magics = []  # per connection, the magic of its first request
        super().__init__(self._serve_mcd1)

    def _serve_mcd1(self, conn):
        buf = bytearray()
        first = True
        while True:
            head = take(conn, buf, wire.REQUEST.size)
            if head is None:
                return  # a close between requests
            magic, op, _, grant_len, _, offset, length = wire.REQUEST.unpack(head)
            if first:
                self.first_magics.append(magic)
                first = False
            if magic != wire.MAGIC or op not in (wire.OP_READ, wire.OP_WRITE) or \
                    grant_len > wire.MAX_GRANT_LEN:
                return refuse_and_linger(conn, INVALID_PARAMS)
            if take(conn, buf, grant_len) != GRANT:
                return refuse_and_linger(conn, PERMISSION_DENIED)
            if offset + length > len(self.store):
                return refuse_and_linger(conn, INVALID_PARAMS)
            if op == wire.OP_WRITE:
                self.store[offset:offset + length] = take(conn, buf, length)
                self.applied[offset, length] += 1
                conn.sendall(wire.encode_response(0, length=length))
            else:
                conn.sendall(wire.encode_response(0, bytes(self.store[offset:offset + length])))


def take(conn, buf: bytearray, n: int) -> bytes | None:
    """n bytes of input through buf; None at a close before any of them."""
    while len(buf) < n:
        chunk = conn.recv(1 << 20)
        if not chunk:
            if buf:
                raise ConnectionError("closed mid-message")
            return None
        buf += chunk
    out = bytes(buf[:n])
    del buf[:n]
    return out


def refuse_and_linger(conn, status: int) -> None:
    """The old server's answer_refusal and linger_close."""
    if status == INVALID_PARAMS:
        assert wire.encode_response(status) == wire.MCD1_ONLY_REFUSAL
    conn.sendall(wire.encode_response(status))
    conn.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + 1.0
    while (left := deadline - time.monotonic()) > 0:
        conn.settimeout(left)
        try:
            if not conn.recv(1 << 16):
                return
        except (TimeoutError, OSError):
            return


def read_aligned_request(conn):
    """One request in the aligned form (op, offset, length); its padding is skipped."""
    magic, op, _, grant_len, _, offset, length = wire.REQUEST.unpack(
        recv_exactly(conn, wire.REQUEST.size))
    assert magic == wire.MAGIC_ALIGNED
    recv_exactly(conn, grant_len + wire.pad(wire.REQUEST.size + grant_len))
    if op == wire.OP_WRITE:
        recv_exactly(conn, length + wire.pad(length))
    return op, offset, length


def recv_exactly(conn, n: int) -> bytes:
    data = bytearray(n)
    wire.recv_exact_into(conn, memoryview(data))
    return bytes(data)


def writes_of(blobs, base=0):
    """Pipelined WRITEs of blobs at consecutive offsets, each from two odd-sized parts."""
    out, at = [], base
    for blob in blobs:
        view = memoryview(blob)
        out.append(DataRequest(OP_WRITE, 0, at, len(blob), GRANT, [view[:len(blob) // 3],
                                                                     view[len(blob) // 3:]]))
        at += len(blob)
    return out


def reads_of(sizes, base=0):
    """Pipelined READs at consecutive offsets, each scattered over two odd-sized buffers."""
    out, targets, at = [], [], base
    for size in sizes:
        target = bytearray(size)
        view = memoryview(target)
        out.append(DataRequest(OP_READ, 0, at, size, GRANT, [view[:size // 2 + 1],
                                                            view[size // 2 + 1:]]))
        targets.append(target)
        at += size
    return out, targets


def legacy_lines(caplog):
    return [r.getMessage() for r in caplog.records if LOG_EVENT in r.getMessage()]


@pytest.fixture
def old_worker():
    worker = OldWorker()
    yield worker
    worker.close()


def test_writes_and_scatter_reads_fall_back_to_mcd1(old_worker, caplog):
    caplog.set_level(logging.INFO, logger="mooncake.data")
    forms = PeerForms()
    conn = forms.connect(old_worker.addr, 10)
    blobs = [bytes((i * 7 + j) % 251 for j in range(size)) for i, size in enumerate(ODD_SIZES)]
    writes = writes_of(blobs)
    try:
        assert conn.exchange(writes, 10) == len(writes)
        assert all(r.status == 0 for r in writes)
        assert conn.form == FORM_MCD1 and forms.speaks_mcd1(old_worker.addr)
        reads, targets = reads_of(ODD_SIZES)
        assert conn.exchange(reads, 10) == len(reads)  # on the MCD1 connection
        assert [bytes(t) for t in targets] == blobs
    finally:
        conn.close()
    assert bytes(old_worker.store[:sum(ODD_SIZES)]) == b"".join(blobs)
    # refused as malformed, the aligned attempt applied nothing: every write landed once
    assert sorted(old_worker.applied.values()) == [1] * len(writes)
    assert old_worker.first_magics == [wire.MAGIC_ALIGNED, wire.MAGIC]
    lines = legacy_lines(caplog)
    assert len(lines) == 1 and f"worker={old_worker.addr}" in lines[0]


def test_the_fallback_is_remembered_for_new_connections(old_worker, caplog):
    caplog.set_level(logging.INFO, logger="mooncake.data")
    forms = PeerForms()
    for round_ in range(3):
        conn = forms.connect(old_worker.addr, 10)
        assert conn.form == (FORM_ALIGNED if round_ == 0 else FORM_MCD1)
        reads, targets = reads_of([4096] * 50)
        try:
            assert conn.exchange(reads, 10) == 50
        finally:
            conn.close()
    assert old_worker.first_magics == [wire.MAGIC_ALIGNED] + [wire.MAGIC] * 3
    assert len(legacy_lines(caplog)) == 1
    other_pool = PeerForms().connect(old_worker.addr, 10)  # learns for itself
    assert other_pool.form == FORM_ALIGNED
    other_pool.close()


def test_a_large_write_batch_still_sending_at_the_refusal_lands_once():
    """16 MiB of pipelined writes: the client is still sending when the old worker refuses
    the first header and lingers; the retry in MCD1 applies each write exactly once."""
    worker = OldWorker(16 << 20)
    blobs = [bytes([i]) * (512 << 10) for i in range(32)]
    conn = PeerForms().connect(worker.addr, 10)
    try:
        assert conn.exchange(writes_of(blobs), 10) == 32
    finally:
        conn.close()
        worker.close()
    assert conn.form == FORM_MCD1
    assert list(worker.applied.values()) == [1] * 32
    assert worker.store == b"".join(blobs)


def test_exchange_many_falls_back_only_for_the_old_peer(old_worker, caplog):
    caplog.set_level(logging.INFO, logger="mooncake.data")

    def new_worker(conn):  # speaks the aligned form: answers every read with its offset's byte
        for _ in range(200):
            _, offset, length = read_aligned_request(conn)
            conn.sendall(wire.encode_response(0, bytes([offset % 251]) * length, aligned=True))

    new = Listener(new_worker)
    old_worker.store[:200 * 4096] = b"".join(bytes([i % 251]) * 4096 for i in range(200))
    forms = PeerForms()
    conns = [forms.connect(old_worker.addr, 10), forms.connect(new.addr, 10)]
    old_reads, old_targets = reads_of([4096] * 200)
    new_reads = [DataRequest(OP_READ, 0, i, 4097, GRANT, [memoryview(bytearray(4097))])
                 for i in range(200)]
    try:
        assert exchange_many([(conns[0], old_reads), (conns[1], new_reads)], 10) == [200, 200]
    finally:
        for conn in conns:
            conn.close()
        new.close()
    assert [bytes(t) for t in old_targets] == [bytes([i % 251]) * 4096 for i in range(200)]
    assert all(bytes(r.parts[0]) == bytes([i % 251]) * 4097 for i, r in enumerate(new_reads))
    assert [c.form for c in conns] == [FORM_MCD1, FORM_ALIGNED]
    assert not forms.speaks_mcd1(new.addr) and new.connections == 1
    assert len(legacy_lines(caplog)) == 1


def test_an_old_workers_own_refusal_in_mcd1_is_reported(old_worker):
    forms = PeerForms()
    conn = forms.connect(old_worker.addr, 10)
    reqs = [DataRequest(OP_READ, 0, 0, 4, GRANT, [memoryview(bytearray(4))]),
            DataRequest(OP_READ, 0, 0, 4, b"forged", [memoryview(bytearray(4))]),
            DataRequest(OP_READ, 0, 0, 4, GRANT, [memoryview(bytearray(4))])]
    try:
        assert conn.exchange(reqs, 10) == 2
    finally:
        conn.close()
    assert [r.status for r in reqs] == [0, PERMISSION_DENIED, STATUS_PENDING]
    assert conn.form == FORM_MCD1 and old_worker.connections == 2


@pytest.mark.parametrize("status", [INVALID_PARAMS, PERMISSION_DENIED])
def test_a_new_workers_refusal_is_an_answer_not_a_fallback(status, caplog):
    """A worker that speaks the aligned form refuses in a 64-byte header, then closes."""
    caplog.set_level(logging.INFO, logger="mooncake.data")

    def refuses(conn):
        read_aligned_request(conn)
        conn.sendall(wire.encode_response(status, aligned=True))
        refuse_and_linger_quietly(conn)

    peer = Listener(refuses)
    forms = PeerForms()
    conn = forms.connect(peer.addr, 10)
    reqs = [DataRequest(OP_WRITE, 0, 0, 4, GRANT, [memoryview(b"abcd")]) for _ in range(2)]
    try:
        assert conn.exchange(reqs, 10) == 1
    finally:
        conn.close()
        peer.close()
    assert [r.status for r in reqs] == [status, STATUS_PENDING]
    assert conn.form == FORM_ALIGNED and not forms.speaks_mcd1(peer.addr)
    assert peer.connections == 1 and legacy_lines(caplog) == []


def refuse_and_linger_quietly(conn):
    conn.shutdown(socket.SHUT_WR)
    conn.settimeout(1.0)
    try:
        while conn.recv(1 << 16):
            pass
    except (TimeoutError, OSError):
        pass


def _close_at_once(conn):
    read_aligned_request(conn)


def _mcd1_refusal_of_another_code(conn):
    read_aligned_request(conn)
    conn.sendall(wire.encode_response(PERMISSION_DENIED))


def _mcd1_shaped_header_with_a_length(conn):
    read_aligned_request(conn)
    conn.sendall(wire.RESPONSE.pack(INVALID_PARAMS, 4))


def _more_than_an_mcd1_refusal(conn):
    read_aligned_request(conn)
    conn.sendall(wire.encode_response(INVALID_PARAMS) + bytes(4))


def _mcd1_shaped_refusal_after_a_good_answer(conn):
    read_aligned_request(conn)
    conn.sendall(wire.encode_response(0, b"abcd", aligned=True))
    read_aligned_request(conn)
    conn.sendall(wire.encode_response(INVALID_PARAMS))


@pytest.mark.parametrize("script", [
    _close_at_once, _mcd1_refusal_of_another_code, _mcd1_shaped_header_with_a_length,
    _more_than_an_mcd1_refusal, _mcd1_shaped_refusal_after_a_good_answer])
def test_other_closes_are_errors_not_a_fallback(script, caplog):
    """Only the first answer of an exchange being exactly an MCD1 INVALID_PARAMS refusal of
    length 0, then the close, is an old worker; anything else stays an error, with no retry
    (a retry could repeat a write a worker applied)."""
    caplog.set_level(logging.INFO, logger="mooncake.data")
    peer = Listener(script)
    forms = PeerForms()
    conn = forms.connect(peer.addr, 10)
    targets = [memoryview(bytearray(4)) for _ in range(2)]
    reqs = [DataRequest(OP_READ, 0, 0, 4, GRANT, [t]) for t in targets]
    try:
        with pytest.raises(ConnectionResetError):
            conn.exchange(reqs, 10)
    finally:
        conn.close()
        peer.close()
    assert conn.form == FORM_ALIGNED and not forms.speaks_mcd1(peer.addr)
    assert peer.connections == 1 and legacy_lines(caplog) == []
    if script is _mcd1_shaped_refusal_after_a_good_answer:
        assert reqs[0].status == 0 and bytes(targets[0]) == b"abcd"


def test_an_unknown_form_is_refused_before_anything_is_sent():
    peer = Listener(lambda conn: conn.recv(1))
    host, port = peer.addr.rsplit(":", 1)
    conn = DataConnection(host, int(port), 10, form=7)
    try:
        with pytest.raises(InvalidArgumentError, match="unknown wire form 7"):
            conn.exchange([DataRequest(OP_READ, 0, 0, 1, GRANT, [memoryview(bytearray(1))])], 1)
    finally:
        conn.close()
        peer.close()
