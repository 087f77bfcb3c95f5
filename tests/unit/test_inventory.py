"""Inventory: the worker's committed replicas, replayed from per-segment logs across restarts
(real files in a temporary directory, no sockets)."""
import logging
import os

import pytest

from mooncake_proto import mooncake_pb2 as pb
from mooncake_worker import inventory as inventory_module
from mooncake_worker.inventory import (HEADER, Inventory, SegmentFile, log_path_for,
                                       segment_kept)

pytestmark = pytest.mark.timeout(30)

DRAM, SSD = 0, 1
SIZE = 1 << 20


def make_segment(tmp_path, name: str, segment_id: int, kept: bool = True,
                 size: int = SIZE) -> SegmentFile:
    path = tmp_path / name
    if not path.exists():
        path.write_bytes(b"")
        os.truncate(path, size)
    return SegmentFile(segment_id, str(path), size, os.stat(path).st_ino, kept,
                       durable=segment_id == SSD)


@pytest.fixture
def segments(tmp_path):
    return [make_segment(tmp_path, "dram", DRAM), make_segment(tmp_path, "ssd", SSD)]


def entry(key: str, offset: int, segment_id: int = DRAM, size: int = 100,
          put_id: int = 1) -> pb.InventoryEntry:
    return pb.InventoryEntry(key=key, put_id=put_id, segment_id=segment_id, offset=offset,
                             size=size, replica_num=2)


def add(seq: int, e: pb.InventoryEntry) -> pb.InventoryUpdate:
    return pb.InventoryUpdate(seq=seq, entry=e)


def remove(seq: int, offset: int, segment_id: int = DRAM) -> pb.InventoryUpdate:
    return pb.InventoryUpdate(seq=seq, removed=True,
                              entry=pb.InventoryEntry(segment_id=segment_id, offset=offset))


def keys(inv: Inventory) -> list[tuple[int, int, str]]:
    return [(e.segment_id, e.offset, e.key) for e in inv.entries()]


def reopened(segments) -> Inventory:
    """What the next start of the worker finds (its segment files kept)."""
    return Inventory([SegmentFile(s.segment_id, s.path, s.size_bytes, s.inode, True,
                                  s.durable) for s in segments])


def test_a_first_start_writes_empty_logs_beside_the_segments(segments):
    inv = Inventory(segments)
    assert inv.entries() == [] and inv.seq == 0 and len(inv) == 0
    for seg in segments:
        path = log_path_for(seg.path)
        assert path == seg.path + ".inventory"
        assert os.path.getsize(path) == HEADER.size
        assert os.stat(path).st_mode & 0o777 == 0o600  # keys are nobody else's business
    inv.close()


def test_updates_apply_in_order_and_survive_a_restart(segments):
    inv = Inventory(segments)
    assert inv.apply([add(1, entry("a", 0)), add(2, entry("b", 4096)),
                      add(3, entry("c", 0, SSD)), remove(4, 0),
                      add(5, entry("a2", 0, put_id=7)),   # a new object where "a" was
                      add(6, entry("b2", 4096))])         # an add replaces the entry there
    assert inv.seq == 6
    assert keys(inv) == [(DRAM, 0, "a2"), (DRAM, 4096, "b2"), (SSD, 0, "c")]
    inv.close()  # or a kill -9: every batch is written when apply returns
    again = reopened(segments)
    assert keys(again) == [(DRAM, 0, "a2"), (DRAM, 4096, "b2"), (SSD, 0, "c")]
    assert again.entries()[0].put_id == 7 and again.entries()[0].replica_num == 2
    assert again.seq == 0  # a sequence belongs to one registration
    again.close()


def test_updates_already_applied_are_skipped_and_a_gap_asks_for_a_resync(segments, caplog):
    inv = Inventory(segments)
    assert inv.apply([add(1, entry("a", 0)), add(2, entry("b", 64))])
    # a reply that repeats what an earlier (lost) reply carried, then goes on
    assert inv.apply([add(1, entry("x", 0)), add(2, entry("y", 64)), add(3, entry("c", 128))])
    assert keys(inv) == [(DRAM, 0, "a"), (DRAM, 64, "b"), (DRAM, 128, "c")]
    with caplog.at_level(logging.WARNING, logger="mooncake.worker"):
        assert not inv.apply([add(4, entry("d", 256)), add(6, entry("f", 512))])
    assert inv.seq == 4 and keys(inv)[-1] == (DRAM, 256, "d")  # kept up to the gap
    assert "event=inventory_gap expected_seq=5 got_seq=6" in caplog.text
    inv.close()


def test_replace_makes_the_registration_answer_the_whole_inventory(segments, caplog):
    inv = Inventory(segments)
    inv.apply([add(1, entry("old", 0)), add(2, entry("gone", 64)), add(3, entry("s", 0, SSD))])
    with caplog.at_level(logging.WARNING, logger="mooncake.worker"):
        inv.replace([entry("old", 0), entry("new", 4096, SSD), entry("bad", 0, segment_id=9)])
    assert "event=inventory_unknown_segment entries=1" in caplog.text
    assert keys(inv) == [(DRAM, 0, "old"), (SSD, 4096, "new")] and inv.seq == 0
    inv.close()
    again = reopened(segments)
    assert keys(again) == [(DRAM, 0, "old"), (SSD, 4096, "new")]
    again.close()


def test_a_torn_last_record_is_dropped_and_the_log_compacted(segments, caplog):
    inv = Inventory(segments)
    inv.apply([add(1, entry("a", 0)), add(2, entry("b", 64)), remove(3, 0),
               add(4, entry("c", 128))])
    inv.close()
    path = log_path_for(segments[0].path)
    os.truncate(path, os.path.getsize(path) - 3)  # kill -9 in the middle of the last write
    with caplog.at_level(logging.INFO, logger="mooncake.worker"):
        again = reopened(segments)
    assert keys(again) == [(DRAM, 64, "b")]
    assert "event=inventory_log_truncated" in caplog.text and "records=3" in caplog.text
    # compacted: the header and one record for the one live entry
    record = inventory_module._encode(pb.InventoryUpdate(entry=entry("b", 64)))
    assert os.path.getsize(path) == HEADER.size + len(record)
    again.close()


def test_a_corrupt_record_ends_the_replay(segments):
    inv = Inventory(segments)
    inv.apply([add(1, entry("a", 0))])
    inv.apply([add(2, entry("b", 64))])
    inv.apply([add(3, entry("c", 128))])
    inv.close()
    path = log_path_for(segments[0].path)
    data = bytearray(open(path, "rb").read())
    first = len(inventory_module._encode(pb.InventoryUpdate(seq=1, entry=entry("a", 0))))
    data[HEADER.size + first + 10] ^= 0xFF  # a flipped bit in the second record
    open(path, "wb").write(bytes(data))
    again = reopened(segments)
    assert keys(again) == [(DRAM, 0, "a")]
    again.close()


@pytest.mark.parametrize("change", ["segment_new", "other_inode", "other_size", "garbage"])
def test_a_log_that_no_longer_describes_its_segment_is_discarded(tmp_path, change, caplog):
    seg = make_segment(tmp_path, "dram", DRAM)
    inv = Inventory([seg])
    inv.apply([add(1, entry("a", 0))])
    inv.close()
    if change == "segment_new":  # the file was not there before this start
        seg = SegmentFile(DRAM, seg.path, SIZE, seg.inode, False, False)
    elif change == "other_inode":  # replaced while the worker was down
        seg = SegmentFile(DRAM, seg.path, SIZE, seg.inode + 1, True, False)
    elif change == "other_size":
        seg = SegmentFile(DRAM, seg.path, SIZE * 2, seg.inode, True, False)
    else:
        open(log_path_for(seg.path), "wb").write(b"not an inventory at all, just text")
    with caplog.at_level(logging.WARNING, logger="mooncake.worker"):
        again = Inventory([seg])
    assert again.entries() == []
    assert "event=inventory_discarded" in caplog.text
    assert os.path.getsize(log_path_for(seg.path)) == HEADER.size  # a fresh, empty log
    again.close()


def test_segment_kept_only_for_an_existing_file_of_the_same_size(tmp_path):
    path = tmp_path / "seg"
    assert not segment_kept(str(path), SIZE)
    path.write_bytes(b"x" * 10)
    assert segment_kept(str(path), 10) and not segment_kept(str(path), 11)
    (tmp_path / "link").symlink_to(path)
    assert not segment_kept(str(tmp_path / "link"), 10)


def test_a_long_running_log_is_compacted(segments, monkeypatch):
    monkeypatch.setattr(inventory_module, "COMPACT_MIN_RECORDS", 8)
    inv = Inventory(segments)
    path = log_path_for(segments[0].path)
    seq = 0
    for round_ in range(50):  # the same few ranges, committed and freed over and over
        updates = []
        for offset in (0, 64, 128):
            seq += 1
            updates.append(add(seq, entry(f"k{round_}-{offset}", offset)))
        seq += 1
        updates.append(remove(seq, 128))
        assert inv.apply(updates)
    assert keys(inv) == [(DRAM, 0, "k49-0"), (DRAM, 64, "k49-64")]
    record = len(inventory_module._encode(add(seq, entry("k49-0", 0))))
    assert os.path.getsize(path) < HEADER.size + 20 * record  # not 200 records
    inv.close()
    assert keys(reopened(segments)) == [(DRAM, 0, "k49-0"), (DRAM, 64, "k49-64")]


def test_a_failed_write_holds_the_sequence_back_until_a_rewrite_succeeds(segments, monkeypatch,
                                                                         caplog):
    inv = Inventory(segments)
    inv.apply([add(1, entry("a", 0))])
    real_write = inventory_module._write_all
    calls = []

    def full_disk(fd, data):
        calls.append(1)
        if len(calls) == 1:
            real_write(fd, bytes(data)[:5])  # half a record, then the disk is full
            raise OSError(28, "No space left on device")
        real_write(fd, data)

    monkeypatch.setattr(inventory_module, "_write_all", full_disk)
    with caplog.at_level(logging.ERROR, logger="mooncake.worker"):
        assert inv.apply([add(2, entry("b", 64))])
    assert "event=inventory_write_failed" in caplog.text
    assert inv.seq == 1  # not acknowledged: the master sends update 2 again
    assert inv.apply([add(2, entry("b", 64)), add(3, entry("c", 128))])
    assert inv.seq == 3
    inv.close()
    # the torn half-record was rewritten away, not left in front of later appends
    assert keys(reopened(segments)) == [(DRAM, 0, "a"), (DRAM, 64, "b"), (DRAM, 128, "c")]
