"""Byte transports behind one interface, chosen per replica: `shm` (same node) and `tcp`.

A transport executes a list of `Transfer`s: each moves one replica's bytes between a user
buffer (or a fresh bytes object, for plain `get`) and a worker's segment. A transport never
raises for one transfer's failure: it records it in `Transfer.error` (naming the worker), so
the caller can fall back to another replica or revoke exactly the keys that failed.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time

from mooncake_native import FileSegment, SegmentMapping
from mooncake_native.binding import ffi
from mooncake_native.buffers import copy_batch, copy_rows, fresh_bytes, fresh_bytes_at, rows_for
from mooncake_native.segment import SEGMENT_FILE_PREFIX
from mooncake_native.tcp import (OP_READ, OP_WRITE, DataConnection, DataRequest, PeerForms,
                                  exchange_many)
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto.errors import MooncakeError, TransferError, error_for_code


@dataclasses.dataclass(slots=True)
class Transfer:
    replica: pb.ReplicaDescriptor
    parts: list[memoryview] | None = None  # source of a write; target of a read (None: bytes)
    deadline: float = float("inf")  # monotonic time after which a write must not start
    result: bytes | None = None     # filled by reads whose parts are None
    done: bool = False
    error: MooncakeError | None = None

    def reset(self, replica: pb.ReplicaDescriptor) -> None:
        self.replica, self.result, self.done, self.error = replica, None, False, None

    def target_parts(self) -> list[memoryview]:
        """Where a read lands: the caller's buffers, or a fresh bytes object for `get`."""
        if self.parts is not None:
            return self.parts
        self.result, view = fresh_bytes(self.replica.length)
        return [view]

    def read_target(self):
        """target_parts in the form DataRequest also takes: for `get`, the fresh bytes
        object's storage as one C pointer, without a view to convert back (cffi) per key."""
        if self.parts is not None:
            return self.parts
        self.result, pointer = fresh_bytes_at(self.replica.length)
        return pointer


def split(source: memoryview, parts: list[memoryview]) -> list[tuple[memoryview, memoryview]]:
    """(dst, src) pairs that scatter source into parts, or gather parts into a destination."""
    pairs, at = [], 0
    for part in parts:
        pairs.append((part, source[at:at + part.nbytes]))
        at += part.nbytes
    return pairs


class ShmTransport:
    """Copies straight between the user's buffers and the worker's segment files on this node:
    a mapped DRAM segment, or (reads only) an SSD segment file, pread into the buffers."""

    name = "shm"

    def __init__(self, node_id: str):
        self.node_id = node_id
        self._segments: dict[str, SegmentMapping | FileSegment] = {}  # by path
        self._retired: list[SegmentMapping | FileSegment] = []  # replaced ones, closed at close()
        self._lock = threading.Lock()

    def usable(self, replica: pb.ReplicaDescriptor) -> bool:
        """Whether shm reaches the replica: a segment file of this node we can open. A segment
        opened before counts without a stat; the copy itself revalidates (see segment)."""
        if replica.node_id != self.node_id:
            return False
        if replica.path in self._segments:
            return True
        if not os.path.basename(replica.path).startswith(SEGMENT_FILE_PREFIX):
            return False
        try:
            self.segment(replica)
            return True
        except (OSError, ValueError, MooncakeError):
            return False  # not ours to open (other user, other mount namespace): use tcp

    def segment(self, replica: pb.ReplicaDescriptor) -> SegmentMapping | FileSegment:
        """The replica's segment file, mapped (DRAM) or open read-only (SSD), and opened again
        when the file was replaced (a restarted worker with a new file or size must not be
        read or written through a stale one)."""
        st = os.stat(replica.path)
        identity = (st.st_dev, st.st_ino, replica.segment_size)
        kind = FileSegment if replica.tier == pb.TIER_SSD else SegmentMapping
        segment = self._segments.get(replica.path)
        if segment is None or segment.identity != identity or type(segment) is not kind:
            with self._lock:
                segment = self._segments.get(replica.path)
                if segment is None or segment.identity != identity or type(segment) is not kind:
                    if segment is not None:
                        # another thread may still be copying through it: close at close()
                        self._retired.append(segment)
                    segment = SegmentMapping(replica.path, replica.segment_size) \
                        if kind is SegmentMapping else FileSegment(replica.path,
                                                                   replica.segment_size)
                    self._segments[replica.path] = segment
        return segment

    def write(self, transfers: list[Transfer]) -> None:
        pairs, started, checked = [], [], {}
        for t in transfers:
            if time.monotonic() > t.deadline:
                t.error = TransferError(f"{describe(t.replica)}: put timeout passed before the shm copy")
                continue
            if t.replica.tier == pb.TIER_SSD:  # the master grants clients no SSD writes
                t.error = TransferError(f"{describe(t.replica)}: shm does not write SSD replicas")
                continue
            target = self._range(t, checked)
            if target is not None:
                pairs.extend((dst, src) for src, dst in split(target, t.parts))
                started.append(t)
        self._copy(pairs, started, streaming=True)  # nobody here reads the segment next

    def read(self, transfers: list[Transfer]) -> None:
        """One C copy for the batch. Into a fresh bytes object (`get`) or a one-part buffer
        of the object's size (the common cases), from the segment's base pointer: no views."""
        rows, started, checked = [], [], {}
        from_buffer = ffi.from_buffer
        for t in transfers:
            r = t.replica
            if r.tier == pb.TIER_SSD:
                self._read_file(t, checked)
                continue
            segment = self._checked_or_error(t, checked)
            if segment is None:
                continue
            offset, length = r.offset, r.length
            if t.parts is None:
                t.result, dst = fresh_bytes_at(length)
                rows.append((dst, segment.base + offset, length))
            elif len(t.parts) == 1 and t.parts[0].nbytes == length:
                rows.append((from_buffer("char[]", t.parts[0], require_writable=True),
                             segment.base + offset, length))
            else:  # scatter over several buffers
                rows.extend(rows_for(split(segment.view[offset:offset + length], t.parts)))
            started.append(t)
        if rows:
            copy_rows(rows)
        for t in started:
            t.done = True

    def _checked(self, t: Transfer, checked: dict) -> SegmentMapping | FileSegment:
        """The replica's segment with its range checked; each segment file is checked once
        per batch (`checked`: path -> segment), not once per object."""
        r = t.replica
        segment = checked.get(r.path)
        if segment is None:
            segment = checked[r.path] = self.segment(r)
        if r.offset + r.length > segment.size_bytes:
            raise ValueError(f"range {r.offset}+{r.length} is outside the segment")
        return segment

    def _range(self, t: Transfer, checked: dict) -> memoryview | None:
        """The replica's bytes in its mapped segment."""
        segment = self._checked_or_error(t, checked)
        r = t.replica
        return None if segment is None else segment.view[r.offset:r.offset + r.length]

    def _checked_or_error(self, t: Transfer, checked: dict) -> SegmentMapping | None:
        """_checked, or None with the transfer's error set."""
        try:
            return self._checked(t, checked)
        except (OSError, ValueError, MooncakeError) as exc:
            t.error = TransferError(f"{describe(t.replica)}: shm segment {t.replica.path}: {exc}")
            return None

    def _read_file(self, t: Transfer, checked: dict) -> None:
        """An SSD replica: one pread per target part, straight into it (GIL released)."""
        r = t.replica
        try:
            segment = self._checked(t, checked)
            parts = t.target_parts()
            if sum(p.nbytes for p in parts) != r.length:
                raise ValueError(f"buffers hold {sum(p.nbytes for p in parts)} bytes, "
                                 f"replica {r.length}")
            at = r.offset
            for part in parts:
                at += segment.read_into(at, part)
            t.done = True
        except (OSError, ValueError, MooncakeError) as exc:
            t.result = None  # a half-filled bytes object is not a result
            t.error = TransferError(f"{describe(r)}: shm segment {r.path}: {exc}")

    @staticmethod
    def _copy(pairs, transfers: list[Transfer], streaming: bool = False) -> None:
        """One C call copies the whole batch, split across threads when large."""
        if pairs:
            copy_batch(pairs, streaming)
        for t in transfers:
            t.done = True

    def close(self) -> None:
        with self._lock:
            for segment in [*self._segments.values(), *self._retired]:
                segment.close()
            self._segments.clear()
            self._retired.clear()


class TcpTransport:
    """Persistent, pooled connections to workers' data ports; one pipelined, vectored
    exchange per worker per batch, in C."""

    name = "tcp"

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._idle: dict[str, list[DataConnection]] = {}
        self._forms = PeerForms()  # workers older than the aligned wire form get MCD1
        self._lock = threading.Lock()

    def usable(self, replica: pb.ReplicaDescriptor) -> bool:
        return bool(replica.data_addr)

    def write(self, transfers: list[Transfer]) -> None:
        self._run(transfers, OP_WRITE)

    def read(self, transfers: list[Transfer]) -> None:
        self._run(transfers, OP_READ)

    def close(self) -> None:
        with self._lock:
            for conns in self._idle.values():
                for conn in conns:
                    conn.close()
            self._idle.clear()

    def _run(self, transfers: list[Transfer], op: int) -> None:
        by_addr: dict[str, list[Transfer]] = {}
        for t in transfers:
            by_addr.setdefault(t.replica.data_addr, []).append(t)
        if len(by_addr) == 1:
            (addr, group), = by_addr.items()
            self._run_on_address(addr, group, op)
            return
        # every worker's first exchange at once; what is left after one (a refusal's
        # remainder, a retry on a fresh connection) goes on worker by worker
        started = []
        for addr, group in by_addr.items():
            try:
                conn, reused = self.checkout(addr)
            except OSError as exc:
                self._fail(group, f"cannot connect: {_reason(exc)}")
                continue
            started.append((addr, group, conn, reused, self._requests(group, op)))
        try:
            results = exchange_many([(conn, requests) for _, _, conn, _, requests in started],
                                    self.timeout_s)
        except BaseException:
            for _, _, conn, _, _ in started:
                conn.close()
            raise
        bug = None
        for (addr, group, conn, reused, requests), result in zip(started, results):
            self._settle(group, requests, op)
            if isinstance(result, (int, OSError)):
                self._run_on_address(addr, group, op, first=(conn, reused, result))
            else:  # a bad argument: no worker's fault; every other connection is settled first
                conn.close()
                bug = bug or result
        if bug is not None:
            raise bug

    def _run_on_address(self, addr: str, group: list[Transfer], op: int,
                        first: tuple | None = None) -> None:
        """Runs group on one worker (`first`: the outcome of an exchange already made, as
        (connection, reused, answered count or OSError)). A connection-level failure fails
        every unfinished transfer at once (one timeout, not one per key); a refusal fails only
        its own request."""
        retried_stale = False
        while group:
            if first is not None:
                (conn, reused, answered), first = first, None
            else:
                try:
                    conn, reused = self.checkout(addr)
                except OSError as exc:
                    self._fail(group, f"cannot connect: {_reason(exc)}")
                    return
                answered = self._exchange(conn, group, op)
            if isinstance(answered, OSError):
                conn.close()
                group = [t for t in group if not t.done and t.error is None]
                if reused and not retried_stale and not isinstance(answered, TimeoutError):
                    # the worker closed this idle connection (it restarted): retry once, fresh
                    self._drop_idle(addr)
                    retried_stale = True
                    continue
                self._fail(group, _reason(answered))
                return
            answered_part, group = group[:answered], group[answered:]
            if group or any(t.error is not None for t in answered_part):
                # the worker closes after a refusal (its last answer, too): the rest go on a
                # new connection, and this one is never pooled
                conn.close()
            else:
                self.checkin(addr, conn)

    def _exchange(self, conn: DataConnection, group: list[Transfer], op: int):
        """Runs group as one exchange: the count of transfers answered, or the OSError that
        ended it (their statuses settled either way)."""
        requests = self._requests(group, op)
        try:
            return conn.exchange(requests, self.timeout_s)
        except OSError as exc:
            # an outcome for the caller, kept without its traceback: the frames hold buffer
            # exports (cffi), and a cycle through them cannot be collected safely
            return exc.with_traceback(None)
        except BaseException:
            conn.close()  # a bug or a bad argument, not the worker's fault: never pooled
            raise
        finally:
            self._settle(group, requests, op)

    @staticmethod
    def _requests(group: list[Transfer], op: int) -> list[DataRequest]:
        return [DataRequest(op, t.replica.segment_id, t.replica.offset, t.replica.length,
                            t.replica.grant, t.parts if op == OP_WRITE else t.read_target())
                for t in group]

    @staticmethod
    def _settle(group: list[Transfer], requests: list[DataRequest], op: int) -> None:
        """Marks each transfer done or refused from its request's answer."""
        verb = "write" if op == OP_WRITE else "read"
        for t, request in zip(group, requests):
            if request.status == 0:
                t.done = True
            elif request.status < 0:
                t.error = error_for_code(request.status, f"{describe(t.replica)} refused the {verb}")
            else:
                t.result = None  # no answer: the bytes object (if any) is not a result

    @staticmethod
    def _fail(group: list[Transfer], reason: str) -> None:
        for t in group:
            t.error = TransferError(f"{describe(t.replica)}: {reason}")

    def checkout(self, addr: str) -> tuple[DataConnection, bool]:
        """A pooled connection to addr (and True), or a new one (False); OSError when none
        can be made."""
        with self._lock:
            idle = self._idle.get(addr)
            if idle:
                return idle.pop(), True
        return self._forms.connect(addr, self.timeout_s), False

    def checkin(self, addr: str, conn: DataConnection) -> None:
        """Pools a connection whose every request was answered (never one in doubt)."""
        with self._lock:
            self._idle.setdefault(addr, []).append(conn)

    def _drop_idle(self, addr: str) -> None:
        with self._lock:
            for conn in self._idle.pop(addr, []):
                conn.close()


def describe(replica: pb.ReplicaDescriptor) -> str:
    """How errors name a replica reached over shm or tcp."""
    return f"worker {replica.worker_id} at {replica.data_addr}"


def ranked_transport(transports: list, replica: pb.ReplicaDescriptor):
    """(rank, transport): the first of `transports` (in the caller's order of preference)
    that reaches replica, and the replica's rank for reads (DESIGN.md 4: local shm first,
    then DRAM before SSD, then that order; lower first, equal ranks keep the answer's
    order); None when none reaches it. The general read path and fast_reads.py both rank
    with it, so that they choose the same replica."""
    for order, transport in enumerate(transports):
        if transport.usable(replica):
            local = 0 if transport.name == "shm" else 1
            tier = 0 if replica.tier == pb.TIER_DRAM else 1
            return (local * 2 + tier) * len(transports) + order, transport
    return None


def _reason(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc) or type(exc).__name__
