"""The RDMA layer up to the device: feature flag, discovery, descriptor encoding, the
built-without-rdma-core path, and the client transport's data path over an emulated adapter."""
import ctypes
import errno
import importlib.util
import logging
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from mooncake_client import rdma_transport
from mooncake_client.rdma_transport import RdmaTransport
from mooncake_client.transports import Transfer
from mooncake_native import rdma
from mooncake_native.binding import HAS_RDMA, check, ffi, lib
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto.errors import InvalidArgumentError, RdmaUnavailableError, TransferError

ROOT = pathlib.Path(__file__).resolve().parents[2]
HOST_HAS_DEVICES = bool(os.path.isdir("/sys/class/infiniband")
                        and os.listdir("/sys/class/infiniband"))
no_devices_here = pytest.mark.skipif(HOST_HAS_DEVICES, reason="this host has RDMA devices")


def _build_script():
    spec = importlib.util.spec_from_file_location("build_native_probe",
                                                  ROOT / "native" / "build_native.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_has_rdma_follows_the_headers():
    if os.environ.get("MOONCAKE_NATIVE_NO_RDMA"):
        pytest.skip("this build was asked to leave RDMA out")
    assert HAS_RDMA == _build_script()._has_header("infiniband/verbs.h")


@no_devices_here
def test_no_devices_listed_here():
    if not HAS_RDMA:
        pytest.skip("built without rdma-core")
    assert rdma.list_devices() == []
    assert rdma.unavailable_reason() == "no RDMA device found"


@no_devices_here
def test_opening_a_device_fails_clearly():
    with pytest.raises(RdmaUnavailableError, match="no RDMA device found"):
        rdma.Context()
    if HAS_RDMA:  # the C call on its own says the same, as -ENODEV through check()
        out = ffi.new("mc_rdma_context **")
        with pytest.raises(OSError, match="no RDMA device found") as info:
            check(lib.mc_rdma_open(b"mlx5_0", -1, out), "opening RDMA device")
        assert info.value.errno == errno.ENODEV


# ---- endpoint descriptor ----

ENDPOINT = rdma.Endpoint(lid=0x1234, gid=bytes(range(16)), qpn=0xABCDEF, psn=0x123456,
                         port=1, mtu=4096)


@pytest.mark.parametrize("endpoint", [
    ENDPOINT,
    rdma.Endpoint(lid=0, gid=b"\0" * 10 + b"\xff\xff\x0a\x00\x00\x01", qpn=2, psn=0, port=2,
                  mtu=1024),
    rdma.Endpoint(lid=0xFFFF, gid=b"\xff" * 16, qpn=0xFFFFFF, psn=0xFFFFFF, port=255, mtu=256),
])
def test_endpoint_round_trip(endpoint):
    packed = endpoint.pack()
    assert len(packed) == rdma.DESCRIPTOR_BYTES == 32
    assert packed[0] == rdma.DESCRIPTOR_VERSION == 1
    assert rdma.Endpoint.unpack(packed) == endpoint


def test_endpoint_layout_is_fixed():
    """The bytes other processes read: a change here needs a new descriptor version."""
    assert ENDPOINT.pack().hex() == ("01010500" "1234" "0000" "00abcdef" "00123456"
                                     "000102030405060708090a0b0c0d0e0f")


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b[:31], "has 31 bytes, expected 32"),
    (lambda b: b + b"\0", "has 33 bytes, expected 32"),
    (lambda b: b"", "has 0 bytes"),
    (lambda b: b"\x02" + b[1:], "version 2, expected 1"),
    (lambda b: b"\x00" + b[1:], "version 0, expected 1"),
    (lambda b: b[:2] + b"\x06" + b[3:], "bad port, mtu or reserved"),
    (lambda b: b[:3] + b"\x01" + b[4:], "bad port, mtu or reserved"),
    (lambda b: b[:1] + b"\x00" + b[2:], "bad port, mtu or reserved"),
    (lambda b: b[:8] + b"\x01" + b[9:], "exceed 24 bits"),
])
def test_endpoint_rejects_bad_descriptors(mutate, message):
    with pytest.raises(InvalidArgumentError, match=message):
        rdma.Endpoint.unpack(mutate(ENDPOINT.pack()))


@pytest.mark.parametrize("changes, message", [
    ({"mtu": 1500}, "mtu 1500"),
    ({"qpn": 1 << 24}, "24-bit"),
    ({"port": 0}, "port non-zero"),
    ({"gid": b"short"}, "gid must be 16 bytes"),
])
def test_endpoint_pack_rejects_bad_fields(changes, message):
    import dataclasses
    with pytest.raises(InvalidArgumentError, match=message):
        dataclasses.replace(ENDPOINT, **changes).pack()


# ---- a build without rdma-core ----

NO_RDMA_PROBE = textwrap.dedent("""
    import errno, importlib.util, sys
    spec = importlib.util.spec_from_file_location("mooncake_native._native", sys.argv[1])
    native = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(native)
    sys.modules["mooncake_native._native"] = native   # before the package's binding loads one
    from mooncake_native import binding, rdma
    from mooncake_proto.errors import RdmaUnavailableError
    from mooncake_worker.main import rdma_device_table
    assert not binding.HAS_RDMA
    out = binding.ffi.new("mc_rdma_port_info[]", 4)
    assert binding.lib.mc_rdma_list_ports(out, 4) == -errno.ENOSYS
    assert binding.last_error() == "built without rdma-core headers", binding.last_error()
    try:
        rdma.list_devices()
        raise SystemExit("list_devices did not refuse")
    except RdmaUnavailableError as exc:
        assert str(exc) == "mooncake_native built without RDMA"
    assert rdma.unavailable_reason() == "mooncake_native built without RDMA"
    e = rdma.Endpoint(1, bytes(16), 5, 6, 1, 2048)
    assert rdma.Endpoint.unpack(e.pack()) == e   # the format needs no verbs
    print(rdma_device_table())
""")


@pytest.mark.timeout(180)
def test_build_without_rdma_core_reports_enosys(tmp_path):
    """Compiles the library once more with MOONCAKE_NATIVE_NO_RDMA=1 into a temporary
    directory (about 10 s) and drives the stubs through the Python wrapper."""
    env = {**os.environ, "MOONCAKE_NATIVE_NO_RDMA": "1"}
    built = subprocess.run([sys.executable, str(ROOT / "native" / "build_native.py"),
                            str(tmp_path)], env=env, capture_output=True, text=True,
                           timeout=150)
    assert built.returncode == 0, built.stderr[-3000:]
    library = built.stdout.strip().splitlines()[-1]
    probe = subprocess.run([sys.executable, "-c", NO_RDMA_PROBE, library], capture_output=True,
                           text=True, timeout=30)
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert probe.stdout.strip() == \
        "no RDMA devices found (mooncake_native built without RDMA)"


# ---- the client transport ----

def test_transport_without_device_falls_back_to_tcp(caplog):
    caplog.set_level(logging.INFO, logger="mooncake.client")
    transport = RdmaTransport(timeout_s=1.0)
    try:
        lines = [r.getMessage() for r in caplog.records if "rdma" in r.getMessage()]
        assert len(lines) == 1 and lines[0].startswith("event=rdma_unavailable reason=")
        assert "fallback=tcp" in lines[0]
        replica = pb.ReplicaDescriptor(worker_id="w", grpc_addr="127.0.0.1:1", rdma=True,
                                       data_addr="127.0.0.1:1", length=1)
        assert not transport.available and not transport.usable(replica)
        calls = []
        transport.fallback.read = lambda ts: calls.append(("read", ts))
        transport.fallback.write = lambda ts: calls.append(("write", ts))
        t = [Transfer(replica)]
        transport.read(t)
        transport.write(t)
        assert calls == [("read", t), ("write", t)]
    finally:
        transport.close()


class FakeQueuePair:
    """Stands in for the adapter: moves bytes by address, as one-sided READ/WRITE would."""

    def __init__(self):
        self.local = rdma.Endpoint(1, bytes(16), 7, 9, 1, 4096)
        self.batches, self.fail_with, self.closed = [], None, False

    def run(self, op, work, timeout_ms):
        if self.fail_with is not None:
            raise self.fail_with
        self.batches.append(list(work))
        for local, _lkey, remote, _rkey, length in work:
            src, dst = (remote, local) if op == rdma.OP_READ else (local, remote)
            ctypes.memmove(dst, src, length)

    def connect(self, remote):
        assert remote.qpn == 77

    def close(self):
        self.closed = True


class FakeContext:
    """Registration is real buffer pinning via cffi (addresses are real); verbs are not."""

    def __init__(self):
        self.qps, self.live_regions = [], 0

    def register(self, buffer, access=0):
        region = rdma.MemoryRegion.__new__(rdma.MemoryRegion)
        region._cdata = ffi.from_buffer(buffer, require_writable=bool(access))
        region.addr, region.length = int(ffi.cast("uintptr_t", region._cdata)), len(region._cdata)
        region.lkey = region.rkey = 5
        self.live_regions += 1
        return region

    def queue_pair(self, max_batch):
        self.qps.append(FakeQueuePair())
        return self.qps[-1]

    def release(self, child):
        if isinstance(child, rdma.MemoryRegion):
            ffi.release(child._cdata)
            self.live_regions -= 1
        else:
            child.close()

    def close(self):
        pass


@pytest.fixture
def emulated(monkeypatch):
    """An RdmaTransport whose device is FakeContext and whose worker is one bytearray."""
    segment = bytearray(1 << 16)
    segment_addr = ctypes.addressof(ctypes.c_char.from_buffer(segment))
    transport = RdmaTransport(timeout_s=1.0)
    transport._context = FakeContext()
    connects = []

    def rdma_connect(addr, endpoint, grant):
        connects.append((addr, rdma.Endpoint.unpack(endpoint), grant))
        return pb.RdmaConnectResponse(
            worker_endpoint=rdma.Endpoint(1, bytes(16), 77, 3, 1, 4096).pack(),
            segments=[pb.RdmaSegment(segment_id=0, addr=segment_addr, rkey=5,
                                     size_bytes=len(segment))])
    monkeypatch.setattr(transport, "_rdma_connect", rdma_connect)
    yield transport, segment, connects
    transport._context = None


def _replica(offset, length):
    return pb.ReplicaDescriptor(worker_id="w0", grpc_addr="127.0.0.1:9", rdma=True, offset=offset,
                                length=length, grant=b"g", segment_id=0)


def test_emulated_write_then_read_moves_the_right_bytes(emulated, monkeypatch):
    transport, segment, connects = emulated
    monkeypatch.setattr(rdma_transport, "MAX_WORK_BYTES", 1000)  # split into work requests
    assert transport.usable(_replica(0, 1))
    payload = os.urandom(2500)
    view = memoryview(payload)
    writes = [Transfer(_replica(100, 2500), parts=[view[:1200], view[1200:]]),  # gathered
              Transfer(_replica(5000, 3), parts=[memoryview(b"abc")])]
    transport.write(writes)
    assert all(t.done and t.error is None for t in writes)
    assert segment[100:2600] == payload and segment[5000:5003] == b"abc"
    assert [w[4] for w in transport._context.qps[0].batches[0]] == [1000, 200, 1000, 300, 3]
    head, tail = bytearray(7), bytearray(3)
    reads = [Transfer(_replica(100, 2500)),
             Transfer(_replica(4997, 10), parts=[memoryview(head), memoryview(tail)])]
    transport.read(reads)  # scattered
    assert reads[0].result == payload and reads[1].done
    assert bytes(head + tail) == bytes(segment[4997:5007])
    assert len(connects) == 1 and connects[0][0] == "127.0.0.1:9" and connects[0][2] == b"g"
    assert transport._context.live_regions == 0  # every registration was released


def test_emulated_ssd_replicas_are_left_to_tcp(emulated):
    """An SSD segment is a file the worker never registers: rdma must not claim its replicas."""
    transport, _, _ = emulated
    ssd = _replica(0, 8)
    ssd.tier, ssd.segment_id = pb.TIER_SSD, 1
    assert transport.usable(_replica(0, 8)) and not transport.usable(ssd)


def test_emulated_refusals_are_recorded_not_raised(emulated):
    transport, segment, _ = emulated
    late = Transfer(_replica(0, 4), parts=[memoryview(b"late")], deadline=0.0)
    outside = Transfer(_replica(len(segment) - 2, 4), parts=[memoryview(b"over")])
    short = Transfer(_replica(0, 4), parts=[memoryview(b"abc")])
    transport.write([late, outside, short])
    assert isinstance(late.error, TransferError) and "put timeout" in late.error.message
    assert "outside the registered segment" in outside.error.message
    assert "buffers hold 3 bytes, replica 4" in short.error.message
    assert not (late.done or outside.done or short.done)


def test_emulated_failed_batch_fails_its_transfers_and_reconnects(emulated):
    transport, _, connects = emulated
    transport.read([Transfer(_replica(0, 8))])
    qp = transport._context.qps[0]
    qp.fail_with = OSError(errno.EIO, "RDMA transfer failed: remote access error")
    failed = [Transfer(_replica(0, 8)), Transfer(_replica(8, 8))]
    transport.read(failed)
    assert all(not t.done and "remote access error" in t.error.message for t in failed)
    assert qp.closed and transport._context.live_regions == 0
    again = Transfer(_replica(0, 8))
    transport.read([again])
    assert again.done and len(connects) == 2  # a fresh queue pair after the failure


def test_emulated_refusal_by_worker_switches_it_to_tcp(emulated, monkeypatch):
    transport, _, _ = emulated

    def refuse(addr, endpoint, grant):
        raise RdmaUnavailableError(f"{addr}: worker w0 serves no RDMA: no RDMA device found")
    monkeypatch.setattr(transport, "_rdma_connect", refuse)
    over_tcp = []
    transport.fallback.read = over_tcp.extend
    t = Transfer(_replica(0, 8))
    transport.read([t])
    assert over_tcp == [t] and not transport.usable(_replica(0, 8))


# ---- real hardware (skipped on hosts without an active RDMA port) ----

needs_device = pytest.mark.skipif(rdma.unavailable_reason() is not None,
                                  reason="no active RDMA device on this host")


@needs_device
@pytest.mark.timeout(30)
def test_loopback_write_then_read_on_a_real_device():
    """Two queue pairs of one adapter connected to each other: what a client and a worker on
    two hosts do, with the segment and the user buffer in one process."""
    with rdma.Context() as context:
        assert context.port.active and rdma.list_devices()
        segment, user = bytearray(1 << 20), bytearray(os.urandom(1 << 16))
        seg = context.register(segment, rdma.LOCAL_WRITE | rdma.REMOTE_READ | rdma.REMOTE_WRITE)
        mine = context.register(user, rdma.LOCAL_WRITE)
        client, worker = context.queue_pair(8), context.queue_pair(1)
        client.connect(rdma.Endpoint.unpack(worker.local.pack()))
        worker.connect(rdma.Endpoint.unpack(client.local.pack()))
        half = len(user) // 2
        client.run(rdma.OP_WRITE, [(mine.addr, mine.lkey, seg.addr + 4096, seg.rkey, half),
                                   (mine.addr + half, mine.lkey, seg.addr + 4096 + half,
                                    seg.rkey, half)], timeout_ms=5000)
        assert segment[4096:4096 + len(user)] == user
        back = bytearray(len(user))
        region = context.register(back, rdma.LOCAL_WRITE)
        client.run(rdma.OP_READ, [(region.addr, region.lkey, seg.addr + 4096, seg.rkey,
                                   len(user))], timeout_ms=5000)
        assert back == user
