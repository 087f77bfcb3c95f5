"""A client connection to a worker's data port: pipelined, vectored READ/WRITE batches in C.

`DataConnection.exchange` sends a batch of requests and reads their answers in one C call
(tcp_client.c) with the GIL released; payloads go between the socket and the caller's buffers.

A connection speaks the aligned wire form (MCD2) unless its pool learned that the peer is a
worker older than native 3.3.0, which speaks only MCD1 (proto/dataplane.py). Such a worker
refuses our first aligned request, in MCD1, having applied nothing; the exchange then runs
once more on a new connection in MCD1, and `PeerForms` keeps the address's form for the
pool's later connections.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from mooncake_native.binding import check, error_for, ffi, lib
from mooncake_proto.daemon import kv
from mooncake_proto.errors import InvalidArgumentError

OP_READ = lib.MC_OP_READ
OP_WRITE = lib.MC_OP_WRITE
STATUS_PENDING = lib.MC_STATUS_PENDING
FORM_ALIGNED = lib.MC_TCP_FORM_ALIGNED
FORM_MCD1 = lib.MC_TCP_FORM_MCD1
_MCD1_ONLY = lib.MC_TCP_ERR_MCD1_ONLY

log = logging.getLogger("mooncake.data")


class DataRequest:
    """One READ or WRITE of (segment, offset, length) under a grant, from/into `parts`: a
    list of buffers (memoryviews) whose sizes add up to `length`, or one cdata array
    (`char[]`) of at least `length` bytes that C may write (a target a caller made in C form
    already, such as ffi.from_buffer of a fresh bytes object: no conversions per request)."""

    __slots__ = ("op", "segment_id", "offset", "length", "grant", "parts", "status")

    def __init__(self, op: int, segment_id: int, offset: int, length: int, grant: bytes,
                 parts: list[memoryview]):
        self.op, self.segment_id, self.offset, self.length = op, segment_id, offset, length
        self.grant, self.parts = grant, parts
        self.status = STATUS_PENDING  # 0 done, a negative Mooncake code the worker answered


class DataConnection:
    """One persistent connection; not shared between threads (pools hand them out).
    `on_mcd1` is called when the peer turns out to speak only MCD1 (PeerForms remembers)."""

    def __init__(self, host: str, port: int, timeout_s: float, form: int = FORM_ALIGNED,
                 on_mcd1: Callable[[], None] | None = None):
        self.host, self.port, self.form, self._on_mcd1 = host, port, form, on_mcd1
        self.fd = -1
        self._connect(timeout_s)

    def exchange(self, requests: list[DataRequest], timeout_s: float) -> int:
        """Runs the batch; returns how many requests got an answer (the worker closes after
        a refusal, so answers stop there). Raises OSError or ProtocolError when the
        connection failed, TimeoutError when nothing moved for timeout_s; `status` of the
        answered requests is filled in either case."""
        structs, keep = _marshal(requests)
        try:
            rc = lib.mc_tcp_exchange(self.fd, self.form, structs, len(requests),
                                     timeout_ms(timeout_s))
            if rc == _MCD1_ONLY:  # nothing was applied: the same requests again, in MCD1
                self._reconnect_in_mcd1(timeout_s)
                rc = lib.mc_tcp_exchange(self.fd, self.form, structs, len(requests),
                                         timeout_ms(timeout_s))
        finally:
            _statuses(structs, requests)
        return check(rc, "data exchange")

    def close(self) -> None:
        if self.fd >= 0:
            lib.mc_tcp_close(self.fd)
            self.fd = -1

    def _connect(self, timeout_s: float) -> None:
        self.fd = check(lib.mc_tcp_connect(self.host.encode(), self.port, timeout_ms(timeout_s)),
                        f"connect {self.host}:{self.port}")

    def _reconnect_in_mcd1(self, timeout_s: float) -> None:
        """The peer closed after refusing our aligned form: a new connection in MCD1."""
        self.close()
        self.form = FORM_MCD1
        if self._on_mcd1 is not None:
            self._on_mcd1()
        self._connect(timeout_s)


class PeerForms:
    """A pool's knowledge of which peers speak only MCD1 (workers older than the aligned
    form), by data address; every connection the pool opens goes through `connect`."""

    def __init__(self):
        self._mcd1: set[str] = set()
        self._lock = threading.Lock()

    def connect(self, addr: str, timeout_s: float) -> DataConnection:
        """A connection to addr (host:port, an IPv6 host in brackets or not) in its form."""
        host, _, port = addr.rpartition(":")
        form = FORM_MCD1 if addr in self._mcd1 else FORM_ALIGNED
        return DataConnection(host.strip("[]"), int(port), timeout_s, form,
                              on_mcd1=lambda: self.learn_mcd1(addr))

    def speaks_mcd1(self, addr: str) -> bool:
        return addr in self._mcd1

    def learn_mcd1(self, addr: str) -> None:
        with self._lock:
            if addr in self._mcd1:
                return
            self._mcd1.add(addr)
        log.warning(kv("data_peer_legacy_wire_form", worker=addr, form="MCD1",
                       reason="the worker predates the aligned form (native 3.3.0)"))


def exchange_many(batches: list[tuple[DataConnection, list[DataRequest]]],
                  timeout_s: float) -> list[int | Exception]:
    """Runs each connection's batch as `exchange` does, all at once (one C call polling every
    connection): a batch spread over workers waits for the slowest, not for the sum. Per
    batch: the answered count, or the exception `exchange` would have raised."""
    marshalled = [_marshal(requests) for _, requests in batches]
    runs = [(conn, structs, len(requests))
            for (conn, requests), (structs, _) in zip(batches, marshalled)]
    outcomes: list[int | Exception] = _run_many(runs, timeout_s)
    again = [i for i, outcome in enumerate(outcomes) if outcome == _MCD1_ONLY]
    for i in again:  # peers that speak only MCD1 applied nothing: their batches once more
        try:
            batches[i][0]._reconnect_in_mcd1(timeout_s)
        except OSError as exc:
            outcomes[i] = exc.with_traceback(None)
    again = [i for i in again if not isinstance(outcomes[i], Exception)]
    for i, outcome in zip(again, _run_many([runs[i] for i in again], timeout_s)):
        outcomes[i] = outcome
    for (structs, _), (_, requests) in zip(marshalled, batches):
        _statuses(structs, requests)
    return outcomes


def _run_many(runs: list, timeout_s: float) -> list[int | Exception]:
    """One mc_tcp_exchange_many over (connection, C requests, count) runs: per run the
    answered count, MC_TCP_ERR_MCD1_ONLY, or the exception of another failure."""
    if not runs:
        return []
    table = ffi.new("mc_tcp_batch[]", len(runs))
    for entry, (conn, structs, count) in zip(table, runs):
        entry.fd, entry.form, entry.requests, entry.count = conn.fd, conn.form, structs, count
    check(lib.mc_tcp_exchange_many(table, len(runs), timeout_ms(timeout_s)), "data exchange")
    return [entry.result if entry.result >= 0 or entry.result == _MCD1_ONLY else error_for(
                entry.result, ffi.string(entry.error).decode(errors="replace"), "data exchange")
            for entry in table]


def _marshal(requests: list[DataRequest]):
    """The C request array for requests, and the cffi objects that must outlive the call.
    Built with two bulk initializers (every iovec of the batch in one array, each request
    pointing into it; every grant in one joined buffer): setting cdata fields one by one
    cost 3-4 us per request."""
    from_buffer, cdata, iov_rows, keep = ffi.from_buffer, ffi.CData, [], []
    for r in requests:
        parts = r.parts
        if isinstance(parts, cdata):  # one contiguous target, already a C pointer
            if len(parts) < r.length:  # C would write past its end
                raise InvalidArgumentError(f"a target of {len(parts)} bytes for {r.length}")
            iov_rows.append((parts, r.length))
            continue
        writable = r.op == OP_READ
        for part in parts:
            base = from_buffer("char[]", part, require_writable=writable)
            keep.append(base)
            iov_rows.append((base, part.nbytes))
    iovs = ffi.new("mc_iov[]", iov_rows)
    grants = b"".join([r.grant for r in requests])
    grant_at = from_buffer("char[]", grants)
    keep += (iovs, grant_at)
    rows, at = [], 0
    for r in requests:
        n = 1 if isinstance(r.parts, cdata) else len(r.parts)
        size = len(r.grant)
        rows.append((r.op, r.segment_id, r.offset, r.length, grant_at, size, iovs + at, n,
                     STATUS_PENDING))
        grant_at += size
        at += n
    return ffi.new("mc_tcp_request[]", rows), keep


def _statuses(structs, requests: list[DataRequest]) -> None:
    for s, r in zip(structs, requests):
        r.status = s.status


def timeout_ms(seconds: float) -> int:
    """A timeout as the C side takes it: whole milliseconds, at least 1, at most INT_MAX."""
    return int(max(1.0, min(seconds * 1000, 2**31 - 1)))  # inf allowed: the largest wait
