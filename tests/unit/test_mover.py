"""ReplicaMover: MoveReplicas' checks and copies between a real DRAM mapping and SSD file, and to
another worker's data server (a real C server in this process, on loopback)."""
import logging
import os
import threading
import time

import pytest

from mooncake_native.data_server import DataServer
from mooncake_native.file_segment import FileSegment
from mooncake_native.segment import SegmentMapping
from mooncake_proto import grants
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto.errors import ErrorCode
from mooncake_worker import mover as mover_module
from mooncake_worker.mover import BOUNCE_BYTES, ReplicaMover
from mooncake_worker.peer_copy import PeerWriter

pytestmark = pytest.mark.timeout(30)

WORKER = "w-mover"
KEY = b"k" * 32
DRAM, SSD = 0, 1
DRAM_BYTES, SSD_BYTES = 4 << 20, 12 << 20


@pytest.fixture
def segments(tmp_path):
    dram = SegmentMapping(str(tmp_path / "dram"), DRAM_BYTES, create=True)
    ssd = FileSegment(str(tmp_path / "ssd"), SSD_BYTES, create=True)
    yield {DRAM: dram, SSD: ssd}
    dram.close()
    ssd.close()


@pytest.fixture
def mover(segments):
    key = {"key": KEY}
    m = ReplicaMover(WORKER, segments, lambda: key["key"])
    m.key = key  # tests swap or clear it
    return m


def grant(op, segment_id, offset, length, key=KEY, worker=WORKER, ttl_ms=60_000) -> bytes:
    expiry = int(time.time() * 1000) + ttl_ms
    return grants.sign(key, grants.Grant(op, worker, segment_id, offset, length, expiry))


def item(src_seg, src_off, dst_seg, dst_off, length, **overrides) -> pb.MoveItem:
    fields = dict(src_segment_id=src_seg, src_offset=src_off, dst_segment_id=dst_seg,
                  dst_offset=dst_off, length=length,
                  read_grant=grant(grants.Op.COPY, src_seg, src_off, length),
                  write_grant=grant(grants.Op.WRITE, dst_seg, dst_off, length))
    fields.update(overrides)
    return pb.MoveItem(**fields)


def ssd_bytes(segments, offset, length) -> bytes:
    out = bytearray(length)
    segments[SSD].read_into(offset, out)
    return bytes(out)


def codes(statuses) -> list[int]:
    return [s.code for s in statuses]


def test_demotion_then_promotion_moves_exact_bytes(mover, segments):
    data = os.urandom(1 << 20)
    segments[DRAM].view[4097:4097 + len(data)] = data
    assert codes(mover.move_batch([item(DRAM, 4097, SSD, 9_000_001, len(data))])) == [0]
    assert ssd_bytes(segments, 9_000_001, len(data)) == data
    assert ssd_bytes(segments, 9_000_000, 1) == b"\0"
    segments[DRAM].view[4097:4097 + len(data)] = bytes(len(data))
    assert codes(mover.move_batch([item(SSD, 9_000_001, DRAM, 3, len(data))])) == [0]
    assert bytes(segments[DRAM].view[3:3 + len(data)]) == data
    assert (mover.items_moved, mover.bytes_moved) == (2, 2 * len(data))


def test_dram_to_dram_and_ssd_to_ssd_copies(mover, segments):
    data = os.urandom(BOUNCE_BYTES + 12345)  # SSD -> SSD crosses its bounce buffer
    segments[SSD].write_from(7, data)
    small = os.urandom(5000)
    segments[DRAM].view[0:5000] = small
    statuses = mover.move_batch([item(SSD, 7, SSD, SSD_BYTES - len(data), len(data)),
                                 item(DRAM, 0, DRAM, DRAM_BYTES - 5000, 5000)])
    assert codes(statuses) == [0, 0]
    assert ssd_bytes(segments, SSD_BYTES - len(data), len(data)) == data
    assert bytes(segments[DRAM].view[DRAM_BYTES - 5000:]) == small


def _forged(token: bytes) -> bytes:
    return token[:-1] + bytes([token[-1] ^ 1])


BAD_ITEMS = {
    "forged read grant": (lambda: item(DRAM, 0, SSD, 0, 64,
                                       read_grant=_forged(grant(grants.Op.COPY, DRAM, 0, 64))),
                          ErrorCode.PERMISSION_DENIED),
    "write grant under another key": (
        lambda: item(DRAM, 0, SSD, 0, 64,
                     write_grant=grant(grants.Op.WRITE, SSD, 0, 64, key=b"x" * 32)),
        ErrorCode.PERMISSION_DENIED),
    "grant for another worker": (
        lambda: item(DRAM, 0, SSD, 0, 64,
                     read_grant=grant(grants.Op.COPY, DRAM, 0, 64, worker="w-other")),
        ErrorCode.PERMISSION_DENIED),
    "expired grant": (lambda: item(DRAM, 0, SSD, 0, 64,
                                   write_grant=grant(grants.Op.WRITE, SSD, 0, 64, ttl_ms=-1)),
                      ErrorCode.PERMISSION_DENIED),
    "write grant as read grant": (
        lambda: item(DRAM, 0, SSD, 0, 64, read_grant=grant(grants.Op.WRITE, DRAM, 0, 64)),
        ErrorCode.PERMISSION_DENIED),
    "read grant short of the range": (
        lambda: item(DRAM, 0, SSD, 0, 64, read_grant=grant(grants.Op.COPY, DRAM, 0, 63)),
        ErrorCode.PERMISSION_DENIED),
    "write grant for the other segment": (
        lambda: item(DRAM, 0, SSD, 0, 64, write_grant=grant(grants.Op.WRITE, DRAM, 0, 64)),
        ErrorCode.PERMISSION_DENIED),
    "missing grant": (lambda: item(DRAM, 0, SSD, 0, 64, write_grant=b""),
                      ErrorCode.PERMISSION_DENIED),
    "granted but beyond the SSD segment": (
        lambda: item(DRAM, 0, SSD, SSD_BYTES - 32, 64), ErrorCode.INVALID_PARAMS),
    "granted but beyond the DRAM segment": (
        lambda: item(DRAM, DRAM_BYTES - 1, SSD, 0, 2), ErrorCode.INVALID_PARAMS),
    "unknown segment": (lambda: item(7, 0, SSD, 0, 64), ErrorCode.INVALID_PARAMS),
    "overlapping ranges": (lambda: item(SSD, 0, SSD, 32, 64), ErrorCode.INVALID_PARAMS),
}


@pytest.mark.parametrize("name", BAD_ITEMS)
def test_a_bad_item_gets_its_code_and_the_rest_of_the_batch_goes_on(mover, segments, name,
                                                                     caplog):
    build, code = BAD_ITEMS[name]
    segments[DRAM].view[0:64] = b"A" * 64
    segments[DRAM].view[DRAM_BYTES - 64:] = b"B" * 64
    with caplog.at_level(logging.INFO, logger="mooncake.worker"):
        statuses = mover.move_batch([item(DRAM, 0, SSD, 1 << 20, 64), build(),
                                     item(DRAM, DRAM_BYTES - 64, SSD, 2 << 20, 64)])
    assert codes(statuses) == [0, code, 0]
    assert statuses[1].message and not statuses[0].message
    assert ssd_bytes(segments, 1 << 20, 64) == b"A" * 64
    assert ssd_bytes(segments, 2 << 20, 64) == b"B" * 64
    assert ssd_bytes(segments, 0, 128) == bytes(128)  # the refused item wrote nothing
    assert mover.items_refused == (code == ErrorCode.PERMISSION_DENIED)
    [line] = [r.getMessage() for r in caplog.records if "replicas_moved" in r.getMessage()]
    assert line.startswith("event=replicas_moved items=3 failed=1 bytes=128 ms=")
    assert f"first_code={code}" in line


def test_an_unregistered_worker_moves_nothing(mover, segments):
    mover.key["key"] = None
    assert codes(mover.move_batch([item(DRAM, 0, SSD, 0, 8)])) == \
        [ErrorCode.UNAVAILABLE_IN_CURRENT_STATUS]


def test_a_swapped_key_refuses_grants_signed_under_the_old_one(mover):
    mover.key["key"] = b"n" * 32  # re-registration gave a new key
    assert codes(mover.move_batch([item(DRAM, 0, SSD, 0, 8)])) == [ErrorCode.PERMISSION_DENIED]


def test_a_grant_that_expires_during_the_copy_reports_lease_expired(mover, monkeypatch):
    real = mover_module._now_ms
    calls = []

    def clock():  # verification sees now; the check after the copy sees two minutes later
        calls.append(1)
        return real() + (120_000 if len(calls) > 2 else 0)

    monkeypatch.setattr(mover_module, "_now_ms", clock)
    assert codes(mover.move_batch([item(DRAM, 0, SSD, 0, 8)])) == [ErrorCode.LEASE_EXPIRED]


def test_an_io_error_is_a_transfer_failure(mover, segments):
    os.truncate(segments[SSD].path, 4096)  # the file lost its tail under the worker
    statuses = mover.move_batch([item(SSD, 8192, DRAM, 0, 100), item(SSD, 0, DRAM, 0, 100)])
    assert codes(statuses) == [ErrorCode.TRANSFER_FAIL, 0]
    assert "ends before byte" in statuses[0].message


def test_close_waits_for_the_running_batch_and_refuses_later_ones(mover, segments, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    real_copy = mover_module.copy_range

    def slow_copy(*args):
        entered.set()
        release.wait(10)
        real_copy(*args)

    monkeypatch.setattr(mover_module, "copy_range", slow_copy)
    result = []
    runner = threading.Thread(target=lambda: result.append(
        mover.move_batch([item(DRAM, 0, SSD, 0, 8)])))
    runner.start()
    assert entered.wait(10)
    closer = threading.Thread(target=mover.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # still copying: close() must not return yet
    release.set()
    closer.join(10)
    runner.join(10)
    assert codes(result[0]) == [0]
    assert codes(mover.move_batch([item(DRAM, 0, SSD, 0, 8)])) == \
        [ErrorCode.UNAVAILABLE_IN_CURRENT_STATUS]


# ---- copies to another worker (re-replication): a real data server as the destination ----

PEER = "w-peer"
PEER_KEY = b"p" * 32
PEER_DRAM_BYTES, PEER_SSD_BYTES = 8 << 20, 16 << 20


class Peer:
    """Another worker's data plane, in this process: its segments and its C data server."""

    def __init__(self, tmp_path, port: int = 0):
        self.dram = SegmentMapping(str(tmp_path / "peer-dram"), PEER_DRAM_BYTES, create=True)
        self.ssd = FileSegment(str(tmp_path / "peer-ssd"), PEER_SSD_BYTES, create=True)
        self.server = DataServer(PEER, {DRAM: self.dram.view}, file_segments={SSD: self.ssd})
        self.server.grant_key = PEER_KEY
        self.addr = self.server.start("127.0.0.1", port)

    def ssd_bytes(self, offset, length) -> bytes:
        out = bytearray(length)
        self.ssd.read_into(offset, out)
        return bytes(out)

    def stop(self):
        self.server.stop()

    def close(self):
        self.stop()
        self.dram.close()
        self.ssd.close()


@pytest.fixture
def peer(tmp_path):
    p = Peer(tmp_path)
    yield p
    p.close()


def to_peer(addr, src_seg, src_off, dst_seg, dst_off, length, **overrides) -> pb.MoveItem:
    fields = dict(dst_data_addr=addr,
                  write_grant=grant(grants.Op.WRITE, dst_seg, dst_off, length, key=PEER_KEY,
                                    worker=PEER))
    fields.update(overrides)
    return item(src_seg, src_off, dst_seg, dst_off, length, **fields)


def test_copies_to_another_worker_land_there_from_dram_and_from_ssd(mover, segments, peer):
    small, large = os.urandom(70_000), os.urandom(2 * (4 << 20) + 12345)  # SSD: in chunks
    segments[DRAM].view[100:100 + len(small)] = small
    segments[SSD].write_from(5, large)
    local = os.urandom(300)
    segments[DRAM].view[DRAM_BYTES - 300:] = local
    statuses = mover.move_batch([
        to_peer(peer.addr, DRAM, 100, DRAM, 1000, len(small)),
        item(DRAM, DRAM_BYTES - 300, SSD, 9_000_000, 300),  # a local demotion in between
        to_peer(peer.addr, SSD, 5, SSD, 7, len(large)),
    ])
    assert codes(statuses) == [0, 0, 0]
    assert bytes(peer.dram.view[1000:1000 + len(small)]) == small
    assert peer.ssd_bytes(7, len(large)) == large
    assert ssd_bytes(segments, 9_000_000, 300) == local
    assert (mover.items_replicated, mover.bytes_replicated) == (2, len(small) + len(large))
    assert (mover.items_moved, mover.replications_failed) == (1, 0)
    # a second batch reuses the pooled connection
    assert codes(mover.move_batch([to_peer(peer.addr, DRAM, 0, DRAM, 0, 10)])) == [0]
    assert peer.server.stats()["connections_total"] == 1


def test_many_ssd_items_go_through_the_bounce_buffer_in_rounds(segments, peer):
    key = {"key": KEY}
    mover = ReplicaMover(WORKER, segments, lambda: key["key"],
                         peers=PeerWriter(chunk_bytes=4096, bounce_bytes=3 * 4096))
    blobs = [os.urandom(n) for n in (1, 4096, 4097, 10_000, 3 * 4096, 5)]
    offsets, at = [], 0
    for blob in blobs:
        segments[SSD].write_from(at, blob)
        offsets.append(at)
        at += len(blob) + 17
    items = [to_peer(peer.addr, SSD, off, DRAM, off * 2, len(blob))
             for off, blob in zip(offsets, blobs)]
    assert codes(mover.move_batch(items)) == [0] * len(blobs)
    for off, blob in zip(offsets, blobs):
        assert bytes(peer.dram.view[off * 2:off * 2 + len(blob)]) == blob
    mover.close()


def test_a_refused_write_fails_its_item_only(mover, segments, peer, caplog):
    segments[DRAM].view[0:3000] = b"x" * 3000
    bad_grants = {
        "another key": grant(grants.Op.WRITE, DRAM, 100, 1000, key=b"z" * 32, worker=PEER),
        "this worker's own": grant(grants.Op.WRITE, DRAM, 100, 1000),
        "too short": grant(grants.Op.WRITE, DRAM, 100, 999, key=PEER_KEY, worker=PEER),
    }
    items = [to_peer(peer.addr, DRAM, 0, DRAM, 0, 1000)]
    for i, bad in enumerate(bad_grants.values()):
        items.append(to_peer(peer.addr, DRAM, 1000, DRAM, 100, 1000, write_grant=bad))
        items.append(to_peer(peer.addr, DRAM, 2000, DRAM, 10_000 * (i + 1), 1000))
    with caplog.at_level(logging.INFO, logger="mooncake.worker"):
        statuses = mover.move_batch(items)
    assert codes(statuses) == [0] + [ErrorCode.PERMISSION_DENIED, 0] * len(bad_grants)
    assert "refused the write" in statuses[1].message
    assert bytes(peer.dram.view[0:1000]) == b"x" * 1000
    assert bytes(peer.dram.view[100:1000]) == b"x" * 900  # from the first item only
    for i in range(len(bad_grants)):
        assert bytes(peer.dram.view[10_000 * (i + 1):10_000 * (i + 1) + 1000]) == b"x" * 1000
    assert mover.replications_failed == len(bad_grants)
    assert f"event=replicas_copied dst={peer.addr} items=7 failed=3" in caplog.text


def test_the_local_read_grant_is_checked_before_anything_is_sent(mover, peer):
    forged = _forged(grant(grants.Op.COPY, DRAM, 0, 64))
    statuses = mover.move_batch([to_peer(peer.addr, DRAM, 0, DRAM, 0, 64, read_grant=forged),
                                 to_peer(peer.addr, DRAM, 0, DRAM, 0, DRAM_BYTES + 1)])
    assert codes(statuses) == [ErrorCode.PERMISSION_DENIED, ErrorCode.INVALID_PARAMS]
    assert peer.server.stats()["connections_total"] == 0
    assert mover.items_refused == 1


def test_a_dead_destination_fails_its_items_at_once(mover, segments, tmp_path):
    dead = Peer(tmp_path)
    addr = dead.addr
    dead.close()  # nothing listens there any more
    started = time.monotonic()
    statuses = mover.move_batch([to_peer(addr, DRAM, 0, DRAM, 0, 64),
                                 to_peer(addr, DRAM, 64, DRAM, 64, 64)])
    assert codes(statuses) == [ErrorCode.TRANSFER_FAIL] * 2
    assert "cannot connect" in statuses[0].message
    assert time.monotonic() - started < 5


def test_a_silent_destination_fails_within_the_timeout(segments):
    import socket
    key = {"key": KEY}
    mover = ReplicaMover(WORKER, segments, lambda: key["key"], peers=PeerWriter(timeout_s=0.3))
    with socket.create_server(("127.0.0.1", 0)) as paused:  # accepts, never answers
        addr = f"127.0.0.1:{paused.getsockname()[1]}"
        started = time.monotonic()
        statuses = mover.move_batch([to_peer(addr, DRAM, 0, DRAM, 0, 1 << 20)])
        elapsed = time.monotonic() - started
    assert codes(statuses) == [ErrorCode.TRANSFER_FAIL]
    assert "timed out" in statuses[0].message and elapsed < 3
    mover.close()


def test_a_restarted_destination_gets_a_fresh_connection(mover, segments, tmp_path):
    first = Peer(tmp_path)
    assert codes(mover.move_batch([to_peer(first.addr, DRAM, 0, DRAM, 0, 64)])) == [0]
    port = int(first.addr.rpartition(":")[2])
    first.close()  # the pooled connection now leads nowhere
    second = Peer(tmp_path, port=port)
    try:
        segments[DRAM].view[0:64] = b"y" * 64
        assert codes(mover.move_batch([to_peer(second.addr, DRAM, 0, DRAM, 0, 64)])) == [0]
        assert bytes(second.dram.view[0:64]) == b"y" * 64
    finally:
        second.close()


def test_a_read_grant_that_expires_during_a_copy_to_a_peer_is_lease_expired(mover, peer,
                                                                           monkeypatch):
    real = mover_module._now_ms
    calls = []

    def clock():  # verification sees now; the check after the copy two minutes later
        calls.append(1)
        return real() + (120_000 if len(calls) > 1 else 0)

    monkeypatch.setattr(mover_module, "_now_ms", clock)
    assert codes(mover.move_batch([to_peer(peer.addr, DRAM, 0, DRAM, 0, 8)])) == \
        [ErrorCode.LEASE_EXPIRED]
