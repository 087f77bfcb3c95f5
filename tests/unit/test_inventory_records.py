"""Inventory log records stay the ones earlier versions wrote: each update serialized once, an
add's payload kept as the inventory's value and compacted without parsing it (real files in a
temporary directory, no sockets)."""
import os
import tempfile
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mooncake_proto import mooncake_pb2 as pb
from mooncake_worker import inventory as inventory_module
from mooncake_worker.inventory import HEADER, MAGIC, RECORD, VERSION, Inventory, SegmentFile, \
    log_path_for

pytestmark = pytest.mark.timeout(60)

DRAM, SSD = 0, 1
SIZE = 1 << 20


def old_record(update: pb.InventoryUpdate) -> bytes:
    """A record as the code before this change wrote it (serialized update, length, CRC32)."""
    payload = update.SerializeToString()
    return RECORD.pack(len(payload), zlib.crc32(payload)) + payload


def old_compacted(entry_bytes: bytes) -> bytes:
    """A compaction's record as that code wrote it: the entry re-parsed, seq and removed unset."""
    update = pb.InventoryUpdate()
    update.entry.MergeFromString(entry_bytes)
    return old_record(update)


def old_replay(data: bytes, segment_id: int) -> dict[int, bytes]:
    """That code's loader: offset -> serialized entry (it stops at the first bad record)."""
    entries, at = {}, HEADER.size
    while len(data) - at >= RECORD.size:
        length, crc = RECORD.unpack_from(data, at)
        payload = data[at + RECORD.size:at + RECORD.size + length]
        if len(payload) != length or zlib.crc32(payload) != crc:
            break
        update = pb.InventoryUpdate.FromString(payload)
        if update.entry.segment_id == segment_id:
            if update.removed:
                entries.pop(update.entry.offset, None)
            else:
                entries[update.entry.offset] = update.entry.SerializeToString()
        at += RECORD.size + length
    return entries


def segment_in(directory: str, name: str, segment_id: int, kept: bool) -> SegmentFile:
    path = os.path.join(directory, name)
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.truncate(SIZE)
    return SegmentFile(segment_id, path, SIZE, os.stat(path).st_ino, kept,
                       durable=segment_id == SSD)


def header(seg: SegmentFile) -> bytes:
    return HEADER.pack(MAGIC, VERSION, seg.segment_id, seg.size_bytes, seg.inode)


def read(seg: SegmentFile) -> bytes:
    with open(log_path_for(seg.path), "rb") as f:
        return f.read()


entries_st = st.builds(
    pb.InventoryEntry,
    key=st.text(min_size=1, max_size=300),
    put_id=st.integers(0, (1 << 64) - 1),
    segment_id=st.sampled_from([DRAM, SSD]),
    offset=st.sampled_from([0, 64, 4096, 1 << 19]),
    size=st.integers(1, 1 << 20),
    replica_num=st.integers(0, 5),
    soft_pin=st.booleans(),
    hard_pin=st.booleans())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first_seq=st.sampled_from([1, 120, 16_000, (1 << 40)]),
       changes=st.lists(st.tuples(st.booleans(), entries_st), min_size=1, max_size=40),
       cut=st.integers(0, 40))
def test_records_and_compactions_are_byte_for_byte_the_old_ones(first_seq, changes, cut):
    updates = [pb.InventoryUpdate(seq=first_seq + i, removed=removed, entry=e)
               for i, (removed, e) in enumerate(changes)]
    with tempfile.TemporaryDirectory() as tmp:
        segments = [segment_in(tmp, "dram", DRAM, False), segment_in(tmp, "ssd", SSD, False)]
        inv = Inventory(segments)
        inv.seq = first_seq - 1
        assert inv.apply(updates[:cut]) and inv.apply(updates[cut:])
        assert inv.seq == updates[-1].seq
        for seg in segments:
            appended = b"".join(old_record(u) for u in updates
                                if u.entry.segment_id == seg.segment_id)
            assert read(seg) == header(seg) + appended
        live = {}
        for seg in segments:
            live[seg.segment_id] = old_replay(read(seg), seg.segment_id)
        before = [(e.segment_id, e.offset, e.SerializeToString()) for e in inv.entries()]
        assert before == [(s, off, raw) for s in sorted(live) for off, raw in
                          sorted(live[s].items())]
        inv.close()

        again = Inventory([segment_in(tmp, "dram", DRAM, True),
                           segment_in(tmp, "ssd", SSD, True)])
        assert [(e.segment_id, e.offset, e.SerializeToString())
                for e in again.entries()] == before
        for seg in segments:  # compacted at load, as the old code compacted
            compacted = b"".join(old_compacted(raw) for _, raw in
                                 sorted(live[seg.segment_id].items()))
            assert read(seg) == header(seg) + compacted
        again.close()


def test_a_log_the_old_code_wrote_loads_and_is_compacted_the_old_way(tmp_path):
    seg = segment_in(str(tmp_path), "dram", DRAM, True)
    a = pb.InventoryEntry(key="a", put_id=7, segment_id=DRAM, offset=0, size=10, replica_num=1)
    b = pb.InventoryEntry(key="b", put_id=8, segment_id=DRAM, offset=64, size=10, hard_pin=True)
    c = pb.InventoryEntry(key="c" * 200, put_id=1 << 50, segment_id=DRAM, offset=128, size=10)
    old = header(seg) + old_compacted(a.SerializeToString()) + b"".join(old_record(u) for u in [
        pb.InventoryUpdate(seq=300, entry=b), pb.InventoryUpdate(seq=301, entry=c),
        pb.InventoryUpdate(seq=302, removed=True, entry=a)])
    with open(log_path_for(seg.path), "wb") as f:
        f.write(old)
    inv = Inventory([seg])
    assert [e.SerializeToString() for e in inv.entries()] == [b.SerializeToString(),
                                                              c.SerializeToString()]
    assert read(seg) == header(seg) + old_compacted(b.SerializeToString()) \
        + old_compacted(c.SerializeToString())
    inv.close()


@pytest.mark.parametrize("seq", [0, 1, 127, 128, 300, 1 << 35, (1 << 64) - 1])
def test_a_compaction_drops_any_seq_and_keeps_the_rest(seq):
    e = pb.InventoryEntry(key="k", put_id=3, segment_id=SSD, offset=4096, size=5, soft_pin=True)
    payload = pb.InventoryUpdate(seq=seq, entry=e).SerializeToString()
    assert inventory_module._without_seq(payload) == \
        pb.InventoryUpdate(entry=e).SerializeToString()
