"""Copies replica bytes for the master's MoveReplicas: between this worker's own segments, or
to another worker.

Demotion (DRAM -> SSD), promotion (SSD -> DRAM) and re-replication (to another worker, after a
death or for a drain) are the master's decisions; the worker only checks that the master signed
them and moves the bytes. A local copy needs a READ grant over the source range and a WRITE
grant over the destination, both ranges inside their segments: one pwrite from the DRAM
mapping, or one pread into it. A copy to another worker (MoveItem.dst_data_addr) needs the READ
grant here; its WRITE grant is signed for the destination, whose data server checks it
(worker/peer_copy.py sends the bytes). Each item succeeds or fails on its own. Batches run one
at a time on a caller's thread (never the event loop); close() waits for the running one, so no
copy touches a segment after the worker unmaps or closes it.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Callable, Sequence

from mooncake_native.buffers import copy_batch
from mooncake_native.file_segment import FileSegment
from mooncake_native.segment import SegmentMapping
from mooncake_proto import grants
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto.daemon import kv
from mooncake_proto.errors import (ErrorCode, InvalidArgumentError, LeaseExpiredError,
                                   MooncakeError, PermissionDeniedError,
                                   UnavailableError)
from mooncake_worker.peer_copy import PeerCopy, PeerWriter

log = logging.getLogger("mooncake.worker")

Segment = SegmentMapping | FileSegment
BOUNCE_BYTES = 4 << 20  # SSD -> SSD goes through a buffer of at most this


@dataclasses.dataclass(frozen=True, slots=True)
class MoveStatus:
    code: int       # 0 or a Mooncake code (ErrorCode)
    message: str = ""


def _now_ms() -> int:
    return int(time.time() * 1000)


class ReplicaMover:
    """Moves granted ranges between `segments` (segment id -> mapping or file)."""

    def __init__(self, worker_id: str, segments: dict[int, Segment],
                 grant_key: Callable[[], bytes | None], peers: PeerWriter | None = None):
        """peers: what sends copies to other workers (default: PeerWriter's defaults)."""
        self.worker_id = worker_id
        self.segments = segments
        self._grant_key = grant_key  # read per item: re-registration may swap it at any time
        self._lock = threading.Lock()
        self._closed = False
        self.items_failed = 0  # local copies refused or failed
        self._peers = peers or PeerWriter()
        # copies to other workers: done (items, bytes) and refused or failed
        self.items_replicated = self.bytes_replicated = self.replications_failed = 0
        # (source tier, destination tier) -> [items, bytes] moved (the worker's metrics)
        self.moved_by_tiers: dict[tuple[str, str], list[int]] = {}
        self.items_refused = 0  # a grant missing, forged, expired or not covering the range

    def move_batch(self, items: Sequence[pb.MoveItem]) -> list[MoveStatus]:
        """One status per item, in order; blocks (run it off the event loop)."""
        started = time.monotonic()
        statuses: list[MoveStatus | None] = [None] * len(items)
        to_peers: dict[str, list[int]] = {}  # destination data address -> item indexes
        with self._lock:
            for i, item in enumerate(items):
                if item.dst_data_addr:
                    to_peers.setdefault(item.dst_data_addr, []).append(i)
                else:
                    statuses[i] = self._move_or_status(item)
            self.items_failed += sum(1 for s in statuses if s is not None and s.code != 0)
            for addr, indexes in to_peers.items():
                copied = self._copy_to_peer(addr, [items[i] for i in indexes])
                for i, status in zip(indexes, copied):
                    statuses[i] = status
        moved = sum(item.length for item, s in zip(items, statuses) if s.code == 0)
        failed = [s for s in statuses if s.code != 0]
        fields = {"items": len(items), "failed": len(failed), "bytes": moved,
                  "ms": f"{(time.monotonic() - started) * 1000:.1f}"}
        if to_peers:
            fields["to_workers"] = sum(len(indexes) for indexes in to_peers.values())
        if failed:
            fields.update(first_code=failed[0].code, first_error=failed[0].message)
        log.log(logging.WARNING if failed else logging.INFO, kv("replicas_moved", **fields))
        return statuses

    def moved_snapshot(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(source tier, destination tier) -> (items, bytes) moved so far; never waits for a
        running batch (dict() copies in one step under the GIL)."""
        return {tiers: (counts[0], counts[1])
                for tiers, counts in dict(self.moved_by_tiers).items()}

    @property
    def items_moved(self) -> int:
        return sum(items for items, _ in self.moved_snapshot().values())

    @property
    def bytes_moved(self) -> int:
        return sum(moved for _, moved in self.moved_snapshot().values())

    def close(self) -> None:
        """Waits for a running batch; later batches are refused. Call before closing segments."""
        with self._lock:
            self._closed = True
            self._peers.close()

    def _move_or_status(self, item: pb.MoveItem) -> MoveStatus:
        try:
            self._move(item)
        except MooncakeError as exc:
            return self._refused(exc)
        except OSError as exc:  # the disk or the file failed under the copy
            return MoveStatus(ErrorCode.TRANSFER_FAIL, f"copy failed: {exc}")
        tiers = (tier_of(self.segments[item.src_segment_id]),
                 tier_of(self.segments[item.dst_segment_id]))
        counts = self.moved_by_tiers.setdefault(tiers, [0, 0])
        counts[0] += 1
        counts[1] += item.length
        return MoveStatus(0)

    def _refused(self, exc: MooncakeError) -> MoveStatus:
        if exc.code == ErrorCode.PERMISSION_DENIED:
            self.items_refused += 1
        return MoveStatus(exc.code, exc.message)

    def _usable_key(self) -> bytes:
        if self._closed:
            raise UnavailableError("worker is stopping",
                                   code=ErrorCode.UNAVAILABLE_IN_CURRENT_STATUS)
        key = self._grant_key()
        if not key:
            raise UnavailableError("worker not registered yet",
                                   code=ErrorCode.UNAVAILABLE_IN_CURRENT_STATUS)
        return key

    def _copy_to_peer(self, addr: str, items: list[pb.MoveItem]) -> list[MoveStatus]:
        """Copies items to the worker at addr; one status per item, in order."""
        started = time.monotonic()
        statuses: list[MoveStatus | None] = [None] * len(items)
        copies: list[tuple[int, PeerCopy, int]] = []  # (index, copy, read grant expiry)
        for i, item in enumerate(items):
            try:
                src, expiry = self._authorize(self._usable_key(), item.read_grant,
                                              grants.Op.COPY, item.src_segment_id,
                                              item.src_offset, item.length)
            except MooncakeError as exc:
                statuses[i] = self._refused(exc)
                continue
            copies.append((i, PeerCopy(src, item.src_offset, item.dst_segment_id,
                                       item.dst_offset, item.length, item.write_grant), expiry))
        self._peers.write(addr, [copy for _, copy, _ in copies])
        now = _now_ms()
        for i, copy, expiry in copies:
            if copy.error is not None:
                statuses[i] = MoveStatus(copy.error.code, copy.error.message)
            elif now > expiry:  # the master may have reused the source range: bytes unsure
                statuses[i] = MoveStatus(ErrorCode.LEASE_EXPIRED,
                                         "the read grant expired before the copy finished")
            else:
                statuses[i] = MoveStatus(0)
                self.items_replicated += 1
                self.bytes_replicated += copy.length
        failed = [s for s in statuses if s.code != 0]
        self.replications_failed += len(failed)
        fields = {"dst": addr, "items": len(items), "failed": len(failed),
                  "bytes": sum(item.length for item, s in zip(items, statuses) if s.code == 0),
                  "ms": f"{(time.monotonic() - started) * 1000:.1f}"}
        if failed:
            fields.update(first_code=failed[0].code, first_error=failed[0].message)
        log.log(logging.WARNING if failed else logging.INFO, kv("replicas_copied", **fields))
        return statuses

    def _move(self, item: pb.MoveItem) -> None:
        key = self._usable_key()
        src, src_expiry = self._authorize(key, item.read_grant, grants.Op.COPY,
                                          item.src_segment_id, item.src_offset, item.length)
        dst, dst_expiry = self._authorize(key, item.write_grant, grants.Op.WRITE,
                                          item.dst_segment_id, item.dst_offset, item.length)
        if (src is dst and item.length and item.src_offset < item.dst_offset + item.length
                and item.dst_offset < item.src_offset + item.length):
            raise InvalidArgumentError("source and destination ranges overlap")
        copy_range(src, item.src_offset, dst, item.dst_offset, item.length)
        # a grant that ran out mid-copy: the master may have reused the source range (wrong
        # bytes copied) or the destination (bytes landed in another object's range)
        if _now_ms() > min(src_expiry, dst_expiry):
            raise LeaseExpiredError("a grant expired before the copy finished")

    def _authorize(self, key: bytes, token: bytes, op: grants.Op, segment_id: int,
                   offset: int, length: int) -> tuple[Segment, int]:
        """The segment a granted range lies in, and the grant's expiry (ms)."""
        side = "read_grant" if op == grants.Op.COPY else "write_grant"
        try:
            grant = grants.verify(key, token, self.worker_id, _now_ms())
        except grants.GrantError as exc:
            raise PermissionDeniedError(f"{side}: {exc}") from None
        if not grant.covers(op, segment_id, offset, length):
            raise PermissionDeniedError(f"{side} does not cover segment {segment_id} "
                                        f"range {offset}+{length}")
        segment = self.segments.get(segment_id)
        if segment is None or offset + length > segment.size_bytes:
            raise InvalidArgumentError(f"segment {segment_id} range {offset}+{length} is "
                                       "outside this worker's segments")
        return segment, grant.expiry_ms


def tier_of(segment: Segment) -> str:
    """The tier a segment serves, as the master names it: files are SSD, mappings DRAM."""
    return "SSD" if isinstance(segment, FileSegment) else "DRAM"


def copy_range(src: Segment, src_offset: int, dst: Segment, dst_offset: int,
               length: int) -> None:
    """Copies length bytes; every path releases the GIL (C copy, pread, pwrite)."""
    if isinstance(src, FileSegment) and isinstance(dst, FileSegment):
        bounce = memoryview(bytearray(min(length, BOUNCE_BYTES)))
        for at in range(0, length, BOUNCE_BYTES):
            part = bounce[:min(BOUNCE_BYTES, length - at)]
            src.read_into(src_offset + at, part)
            dst.write_from(dst_offset + at, part)
    elif isinstance(src, FileSegment):
        src.read_into(src_offset, dst.view[dst_offset:dst_offset + length])
    elif isinstance(dst, FileSegment):
        dst.write_from(dst_offset, src.view[src_offset:src_offset + length])
    else:
        copy_batch([(dst.view[dst_offset:dst_offset + length],
                     src.view[src_offset:src_offset + length])])
