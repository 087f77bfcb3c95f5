"""A client's batch read from the master's GetReplicas answer, decoded and run in C
(native/include/mc_read_answer.h).

`ReadAnswer(answer)` decodes the answer's items, their replicas and the distinct segments
those lie on. The caller decides per segment (not per key) whether and how it reaches it: a
rank (lower first; None: not at all) and a `Route` (a TCP connection or a mapped shm
segment). `run` then reads every present item from its best-ranked replica into its target
in one C call and returns each item's status.
"""
from __future__ import annotations

import errno
import struct

from mooncake_native.binding import check, ffi, lib
from mooncake_native.tcp import timeout_ms
from mooncake_proto import mooncake_pb2 as pb

ROUTE_TCP = lib.MC_ROUTE_TCP
ROUTE_SHM = lib.MC_ROUTE_SHM
SKIPPED = lib.MC_READ_SKIPPED
NO_ROUTE = lib.MC_READ_NO_ROUTE
OUT_OF_RANGE = lib.MC_READ_OUT_OF_RANGE
PENDING = lib.MC_STATUS_PENDING
MAX_SEGMENTS = lib.MC_READ_MAX_SEGMENTS
# mc_read_item as the struct module reads it: code, first, count, (padding), size
_ITEM = struct.Struct("=iII4xQ")
assert _ITEM.size == ffi.sizeof("mc_read_item") and ffi.offsetof("mc_read_item", "size") == 16


class TooVaried(Exception):
    """The answer spans more distinct segments than MAX_SEGMENTS, or has more items than
    expected: plan it another way."""


class Route:
    """How some segments' replicas are reached: `Route.tcp(fd, form)` or
    `Route.shm(base, size)`; after `run`, a TCP route's outcome."""

    __slots__ = ("kind", "fd", "form", "base", "size", "requests", "result", "error")

    def __init__(self, kind: int, fd: int = -1, form: int = 0, base=ffi.NULL, size: int = 0):
        self.kind, self.fd, self.form, self.base, self.size = kind, fd, form, base, size
        self.requests = 0   # requests sent on the connection (0: not used)
        self.result = 0     # answered count, or a negative error (see error)
        self.error = ""

    @classmethod
    def tcp(cls, fd: int, form: int) -> "Route":
        return cls(ROUTE_TCP, fd=fd, form=form)

    @classmethod
    def shm(cls, base, size: int) -> "Route":
        return cls(ROUTE_SHM, base=base, size=size)


class ReadAnswer:
    """A GetReplicasResponse decoded in C: `items[:n_items]` (code, size, first, count) and
    their replicas. OSError(EBADMSG) when the bytes are not one; TooVaried past
    MAX_SEGMENTS segments."""

    __slots__ = ("answer", "items", "n_items", "replicas", "lease_ttl_ms", "segments", "_info")

    def __init__(self, answer: bytes, expected_items: int):
        """expected_items: the batch's keys (an answer with more items is TooVaried)."""
        self.answer = answer
        self._info = ffi.new("mc_read_answer_info *")
        n = self._decode(max(1, expected_items), 2 * max(1, expected_items))
        if n == -errno.ENOSPC and self._info.segments <= MAX_SEGMENTS \
                and self._info.replicas > len(self.replicas):
            n = self._decode(len(self.items), self._info.replicas)  # more replicas per key
        if n == -errno.ENOSPC:
            raise TooVaried(f"{self._info.segments} segments, {self._info.replicas} replicas"
                            f" (room for {MAX_SEGMENTS} segments, {len(self.items)} items)")
        self.n_items = check(n, "GetReplicas answer")
        self.segments = self._info.segments
        self.lease_ttl_ms = self._info.lease_ttl_ms

    def _decode(self, items: int, replicas: int) -> int:
        self.items = ffi.new("mc_read_item[]", items)
        self.replicas = ffi.new("mc_read_replica[]", replicas)
        return lib.mc_read_answer_decode(self.answer, len(self.answer), self.items, items,
                                         self.replicas, replicas, self._info)

    def codes_and_sizes(self) -> list[tuple[int, int]]:
        """(code, size) of each item, read in one pass (not a cffi field access each)."""
        raw = ffi.buffer(self.items, _ITEM.size * self.n_items)
        return [(code, size) for code, _, _, size in _ITEM.iter_unpack(raw)]

    def segments_used(self, ranks: list[int | None]) -> list[bool]:
        """Per segment, whether `run` with these ranks would read some present item from it:
        the others need no route."""
        used = ffi.new("uint8_t[]", max(1, self.segments))
        lib.mc_read_answer_segments_used(self.items, self.n_items, self.replicas,
                                         self._info.replicas, _c_ranks(ranks), len(ranks), used)
        return [bool(u) for u in ffi.unpack(used, len(ranks))]

    def descriptor(self, segment: int) -> pb.ReplicaDescriptor:
        """The first replica on `segment`, as protobuf holds it: what transports judge."""
        span = self.replicas[self._info.segment_first[segment]].descriptor
        return pb.ReplicaDescriptor.FromString(self.answer[span.at:span.at + span.len])

    def run(self, ranks: list[int | None], route_of: list[int], routes: list[Route],
            targets, timeout_s: float) -> list[int]:
        """Reads each present item that has a target (targets: one cdata pointer or NULL per
        item) from its replica of lowest rank; each item's status: 0 read, a negative code
        its worker answered, or SKIPPED, NO_ROUTE, OUT_OF_RANGE, PENDING (its connection
        failed: see its route)."""
        n = self.n_items
        c_routes = ffi.new("mc_read_route[]", [(r.kind, r.fd, r.form, r.base, r.size)
                                               for r in routes])
        status = ffi.new("int32_t[]", n)
        check(lib.mc_read_answer_run(
            self.answer, len(self.answer), self.items, n, self.replicas, self._info.replicas,
            _c_ranks(ranks), route_of, len(ranks),
            c_routes, len(routes), ffi.new("void *[]", targets), status, timeout_ms(timeout_s)),
            "read from the GetReplicas answer")
        for route, c_route in zip(routes, c_routes):
            route.requests, route.result = c_route.requests, c_route.result
            if c_route.result < 0:
                route.error = ffi.string(c_route.error).decode(errors="replace")
        return ffi.unpack(status, n)


def _c_ranks(ranks: list[int | None]) -> list[int]:
    return [-1 if rank is None else rank for rank in ranks]

