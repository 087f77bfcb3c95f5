"""The worker's inventory: the committed replicas its segment files hold, kept across restarts.

The master tells the worker of every commit and free on it in heartbeat replies
(InventoryUpdate, in order); the worker keeps the result, keyed by (segment_id, offset), and
sends it when it registers, so a restarted worker or a new master re-adopts those objects
(DESIGN.md 3). Nothing here decides anything: the master's answer to a registration replaces
the inventory, and every later change is one the master made.

Each segment has its own append-only log beside its segment file (`<segment>.inventory`): the
DRAM segment's in the shm directory, the SSD segment's in the SSD directory, so a reboot that
empties /dev/shm keeps the SSD inventory. A log is a header naming the segment it describes
(id, size, inode), then records, each a length, a CRC32 and a serialized InventoryUpdate.
A heartbeat's update is serialized once: that payload is both its record and, for an add,
the inventory's value at its offset, so a compaction writes the live payloads without
parsing them (less their seq, which loading ignores): byte for byte the records that
earlier versions wrote, which load in either.
Loading replays the records, stops at a torn or corrupt one (a write cut short by kill -9 or
a crash) and compacts the log (temp file + rename). A log is thrown away, with a log line,
when its segment file is new or was recreated since it was written: the bytes it describes
are gone. Appends are flushed after each heartbeat's batch (and fsynced for the SSD log:
tmpfs needs none); a log is compacted again when it holds more than twice as many records as
live entries, so a long-running worker's logs stay bounded.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import stat
import struct
import threading
import zlib
from typing import Iterable, Sequence

from google.protobuf.message import DecodeError

from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto.daemon import kv

log = logging.getLogger("mooncake.worker")

LOG_SUFFIX = ".inventory"
MAGIC = b"MCINVLOG"
VERSION = 1
HEADER = struct.Struct("!8sIIQQ")  # magic, version, segment_id, segment size_bytes, inode
RECORD = struct.Struct("!II")      # payload length, crc32(payload); then the payload
MAX_RECORD_BYTES = 1 << 20         # an entry is a key (<= 4 KiB) and a few integers
COMPACT_MIN_RECORDS = 4096         # below this a log is never compacted while running
WRITE_CHUNK_BYTES = 4 << 20        # a compaction writes the log in pieces of about this
_SEQ_TAG = bytes([1 << 3])         # InventoryUpdate.seq's key: field 1, wire type 0 (varint)


def log_path_for(segment_path: str) -> str:
    """Where the inventory log of the segment file at segment_path lives (beside it)."""
    return segment_path + LOG_SUFFIX


@dataclasses.dataclass(frozen=True, slots=True)
class SegmentFile:
    """What the inventory knows of one segment file, as this start found and opened it."""
    segment_id: int
    path: str             # the segment file; the log is log_path_for(path)
    size_bytes: int
    inode: int
    kept: bool            # the file was there before this start, with this size
    durable: bool         # fsync the log (an SSD directory); tmpfs loses nothing to a kill


def segment_kept(path: str, size_bytes: int) -> bool:
    """Call BEFORE opening a segment file with create: True when a regular file of exactly
    size_bytes is already there (its bytes, and so its inventory, are still valid)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size_bytes


def _record(payload: bytes) -> bytes:
    return RECORD.pack(len(payload), zlib.crc32(payload)) + payload


def _encode(update: pb.InventoryUpdate) -> bytes:
    return _record(update.SerializeToString())


def _without_seq(payload: bytes) -> bytes:
    """An add's payload as a compaction writes it: seq (field 1, a varint, first in the
    serialized form) dropped, as in InventoryUpdate(entry=...). A payload that does not
    start with it is returned as it is (still a valid record: loading ignores seq)."""
    if payload[:1] != _SEQ_TAG:
        return payload
    at = 1
    while at < len(payload) and payload[at] & 0x80:
        at += 1
    return payload[at + 1:]


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view.nbytes:
        view = view[os.write(fd, view):]


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SegmentLog:
    """One segment's log file: loads it, appends updates to it, rewrites it."""

    def __init__(self, segment: SegmentFile):
        self.segment = segment
        self.path = log_path_for(segment.path)
        self.records = 0          # records in the file now (what compaction weighs)
        self.needs_rewrite = True  # until the first rewrite: never append to an unchecked file
        self._fd = -1

    def load(self) -> dict[int, bytes]:
        """The entries the log on disk describes (offset -> the serialized InventoryUpdate
        that added it); {} when there is none or it no longer describes the segment
        (logged)."""
        seg = self.segment
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            self._discard("unreadable", error=exc)
            return {}
        if not seg.kept:
            self._discard("segment_file_new_or_recreated")
            return {}
        if len(data) < HEADER.size:
            self._discard("header_torn", file_bytes=len(data))
            return {}
        magic, version, segment_id, size_bytes, inode = HEADER.unpack_from(data)
        if magic != MAGIC or version != VERSION:
            self._discard("not_an_inventory_log")
            return {}
        if (segment_id, size_bytes, inode) != (seg.segment_id, seg.size_bytes, seg.inode):
            self._discard("other_segment", log_segment=segment_id, log_bytes=size_bytes,
                          log_inode=inode, inode=seg.inode)
            return {}
        entries, records, at = self._replay(data)
        if at < len(data):  # what a kill -9 mid-append leaves: the tail is dropped
            log.warning(kv("inventory_log_truncated", path=self.path, records=records,
                           dropped_bytes=len(data) - at))
        log.info(kv("inventory_loaded", path=self.path, segment_id=seg.segment_id,
                    entries=len(entries), records=records))
        return entries

    def _replay(self, data: bytes) -> tuple[dict[int, bytes], int, int]:
        """Applies the records in order; stops at the first torn or corrupt one. Returns the
        entries, the records read and where reading stopped."""
        entries: dict[int, bytes] = {}
        records, at = 0, HEADER.size
        while len(data) - at >= RECORD.size:
            length, crc = RECORD.unpack_from(data, at)
            end = at + RECORD.size + length
            if length > MAX_RECORD_BYTES or end > len(data):
                break
            payload = data[at + RECORD.size:end]
            if zlib.crc32(payload) != crc:
                break
            try:
                update = pb.InventoryUpdate.FromString(payload)
            except DecodeError:
                break
            if update.entry.segment_id == self.segment.segment_id:
                _apply(entries, update.entry.offset, update.removed, payload)
            records, at = records + 1, end
        return entries, records, at

    def _discard(self, reason: str, **fields) -> None:
        log.warning(kv("inventory_discarded", path=self.path, segment=self.segment.path,
                       reason=reason, **fields))

    def rewrite(self, payloads: Iterable[bytes]) -> None:
        """Replaces the file with the header and one record per live entry (the payload of
        the update that added it), through a temp file and a rename; appends then go to the
        new file."""
        seg = self.segment
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        records = 0
        try:
            chunk = bytearray(HEADER.pack(MAGIC, VERSION, seg.segment_id, seg.size_bytes,
                                          seg.inode))
            for payload in payloads:
                chunk += _record(_without_seq(payload))
                records += 1
                if len(chunk) >= WRITE_CHUNK_BYTES:
                    _write_all(fd, chunk)
                    chunk.clear()
            _write_all(fd, chunk)
            if seg.durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        if seg.durable:
            _fsync_dir(self.path)
        self._close_fd()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self.records = records
        self.needs_rewrite = False

    def append(self, payloads: Sequence[bytes]) -> None:
        """Appends the updates (serialized) in one write (fsynced when durable)."""
        if not payloads:
            return
        if self._fd < 0:
            raise OSError(f"inventory log {self.path} is not open")
        # a write cut short leaves a torn record: later appends would sit behind it and be
        # dropped at load, so after a failure only a rewrite may touch the file
        self.needs_rewrite = True
        _write_all(self._fd, b"".join(map(_record, payloads)))
        if self.segment.durable:
            os.fsync(self._fd)
        self.records += len(payloads)
        self.needs_rewrite = False

    def close(self) -> None:
        self._close_fd()

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _apply(entries: dict[int, bytes], offset: int, removed: bool, payload: bytes) -> None:
    """An add replaces whatever was at its offset; a removal deletes it (if there). Entries
    are kept as their add's serialized InventoryUpdate: a third of the memory of message
    objects, no reply's memory pinned by them, and the payload of its log record."""
    if removed:
        entries.pop(offset, None)
    else:
        entries[offset] = payload


class Inventory:
    """The committed replicas of this worker's segments, (segment_id, offset) -> entry.

    `seq` is the last InventoryUpdate applied (and stored) since the last registration: the
    heartbeat's inventory_seq. Thread-safe: heartbeats apply updates off the event loop."""

    def __init__(self, segments: Sequence[SegmentFile]):
        self._lock = threading.Lock()
        self._logs = {s.segment_id: SegmentLog(s) for s in segments}
        # segment_id -> offset -> serialized InventoryEntry
        self._entries: dict[int, dict[int, bytes]] = {}
        self.seq = 0
        for segment_id, seg_log in self._logs.items():
            self._entries[segment_id] = seg_log.load()
            self._rewrite(segment_id)  # compacts, or starts a fresh log

    def __len__(self) -> int:
        return sum(map(len, list(self._entries.values())))  # lock-free: for metrics

    def entries(self) -> list[pb.InventoryEntry]:
        """Every entry, segment by segment in offset order."""
        with self._lock:
            out = []
            for segment_id in sorted(self._entries):
                entries = self._entries[segment_id]
                out.extend(pb.InventoryUpdate.FromString(entries[offset]).entry
                           for offset in sorted(entries))
            return out

    def replace(self, entries: Iterable[pb.InventoryEntry]) -> None:
        """Makes `entries` (a registration's answer) the whole inventory; seq starts over."""
        with self._lock:
            fresh: dict[int, dict[int, bytes]] = {s: {} for s in self._logs}
            unknown = 0
            for entry in entries:
                if entry.segment_id not in fresh:
                    unknown += 1
                    continue
                fresh[entry.segment_id][entry.offset] = \
                    pb.InventoryUpdate(entry=entry).SerializeToString()
            if unknown:
                log.warning(kv("inventory_unknown_segment", entries=unknown))
            self._entries = fresh
            self.seq = 0
            for segment_id in self._logs:
                self._rewrite(segment_id)

    def apply(self, updates: Iterable[pb.InventoryUpdate]) -> bool:
        """Applies the updates that follow `seq`, in order, and stores them. Updates already
        applied are skipped. False when one is missing (a gap: register again to resync); the
        ones before it are kept. `seq` advances only over updates the logs hold, so when a
        log cannot be written the master sends them again."""
        with self._lock:
            seq = self.seq
            # segment_id -> the payloads of its updates (each serialized once, here)
            batches: dict[int, list[bytes]] = {s: [] for s in self._logs}
            live = self._entries
            gap = False
            for update in updates:
                update_seq = update.seq
                if update_seq <= seq:
                    continue
                if update_seq != seq + 1:
                    log.warning(kv("inventory_gap", expected_seq=seq + 1, got_seq=update_seq))
                    gap = True
                    break
                seq = update_seq
                entry = update.entry
                segment_id = entry.segment_id
                batch = batches.get(segment_id)
                if batch is None:
                    log.warning(kv("inventory_unknown_segment", entries=1, seq=update_seq,
                                   segment_id=segment_id))
                    continue
                payload = update.SerializeToString()
                _apply(live[segment_id], entry.offset, update.removed, payload)
                batch.append(payload)
            if all(self._store(segment_id, batch) for segment_id, batch in batches.items()):
                self.seq = seq
            return not gap

    def close(self) -> None:
        """Closes the logs (after the last apply: the files stay for the next start)."""
        with self._lock:
            for seg_log in self._logs.values():
                seg_log.close()

    def _store(self, segment_id: int, batch: list[bytes]) -> bool:
        """Appends a batch to its segment's log, or rewrites the log when it has grown past
        twice its live entries or a write failed before; False when the disk refused."""
        seg_log = self._logs[segment_id]
        if not batch and not seg_log.needs_rewrite:
            return True
        live = len(self._entries[segment_id])
        if seg_log.needs_rewrite or seg_log.records + len(batch) > max(COMPACT_MIN_RECORDS,
                                                                        2 * live):
            return self._rewrite(segment_id)
        try:
            seg_log.append(batch)
            return True
        except OSError as exc:
            log.error(kv("inventory_write_failed", path=seg_log.path, error=exc))
            return False

    def _rewrite(self, segment_id: int) -> bool:
        seg_log = self._logs[segment_id]
        entries = self._entries[segment_id]
        try:
            seg_log.rewrite(entries[offset] for offset in sorted(entries))
            return True
        except OSError as exc:
            seg_log.needs_rewrite = True
            log.error(kv("inventory_write_failed", path=seg_log.path, error=exc))
            return False
