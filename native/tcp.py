"""A client connection to a worker's data port: pipelined, vectored READ/WRITE batches in C.

`DataConnection.exchange` sends a batch of requests and reads their answers in one C call
(tcp_client.c) with the GIL released; payloads go between the socket and the caller's buffers.
"""
from __future__ import annotations

from mooncake_native.binding import check, error_for, ffi, lib

OP_READ = lib.MC_OP_READ
OP_WRITE = lib.MC_OP_WRITE
STATUS_PENDING = lib.MC_STATUS_PENDING


class DataRequest:
    """One READ or WRITE of (segment, offset, length) under a grant, from/into `parts`."""

    __slots__ = ("op", "segment_id", "offset", "length", "grant", "parts", "status")

    def __init__(self, op: int, segment_id: int, offset: int, length: int, grant: bytes,
                 parts: list[memoryview]):
        self.op, self.segment_id, self.offset, self.length = op, segment_id, offset, length
        self.grant, self.parts = grant, parts
        self.status = STATUS_PENDING  # 0 done, a negative Mooncake code the worker answered


class DataConnection:
    """One persistent connection; not shared between threads (pools hand them out)."""

    def __init__(self, host: str, port: int, timeout_s: float):
        self.fd = check(lib.mc_tcp_connect(host.encode(), port, _ms(timeout_s)),
                        f"connect {host}:{port}")

    def exchange(self, requests: list[DataRequest], timeout_s: float) -> int:
        """Runs the batch; returns how many requests got an answer (the worker closes after
        a refusal, so answers stop there). Raises OSError or ProtocolError when the
        connection failed, TimeoutError when nothing moved for timeout_s; `status` of the
        answered requests is filled in either case."""
        structs, keep = _marshal(requests)
        rc = lib.mc_tcp_exchange(self.fd, structs, len(requests), _ms(timeout_s))
        _statuses(structs, requests)
        return check(rc, "data exchange")

    def close(self) -> None:
        if self.fd >= 0:
            lib.mc_tcp_close(self.fd)
            self.fd = -1


def exchange_many(batches: list[tuple[DataConnection, list[DataRequest]]],
                  timeout_s: float) -> list[int | Exception]:
    """Runs each connection's batch as `exchange` does, all at once (one C call polling every
    connection): a batch spread over workers waits for the slowest, not for the sum. Per
    batch: the answered count, or the exception `exchange` would have raised."""
    table = ffi.new("mc_tcp_batch[]", len(batches))
    keep = []
    for entry, (conn, requests) in zip(table, batches):
        structs, pinned = _marshal(requests)
        keep.append((structs, pinned))
        entry.fd, entry.requests, entry.count = conn.fd, structs, len(requests)
    check(lib.mc_tcp_exchange_many(table, len(batches), _ms(timeout_s)), "data exchange")
    results: list[int | Exception] = []
    for entry, (structs, _), (_, requests) in zip(table, keep, batches):
        _statuses(structs, requests)
        results.append(entry.result if entry.result >= 0 else error_for(
            entry.result, ffi.string(entry.error).decode(errors="replace"), "data exchange"))
    return results


def _marshal(requests: list[DataRequest]):
    """The C request array for requests, and the cffi objects that must outlive the call.
    Built with two bulk initializers (every iovec of the batch in one array, each request
    pointing into it): setting cdata fields one by one cost 3-4 us per request."""
    from_buffer, iov_rows, keep = ffi.from_buffer, [], []
    for r in requests:
        writable = r.op == OP_READ
        for part in r.parts:
            base = from_buffer("char[]", part, require_writable=writable)
            keep.append(base)
            iov_rows.append((base, part.nbytes))
    iovs = ffi.new("mc_iov[]", iov_rows)
    rows, at = [], 0
    for r in requests:
        grant = from_buffer("char[]", r.grant)
        keep.append(grant)
        n = len(r.parts)
        rows.append((r.op, r.segment_id, r.offset, r.length, grant, len(r.grant), iovs + at, n,
                     STATUS_PENDING))
        at += n
    keep.append(iovs)
    return ffi.new("mc_tcp_request[]", rows), keep


def _statuses(structs, requests: list[DataRequest]) -> None:
    for s, r in zip(structs, requests):
        r.status = s.status


def _ms(seconds: float) -> int:
    return int(max(1.0, min(seconds * 1000, 2**31 - 1)))  # inf allowed: the largest wait
