"""RDMA over libibverbs from Python: device listing, endpoint descriptors, contexts, queue pairs.

A thin layer over native/src/rdma.c: every C call's return code goes through
`binding.check`. What is missing (no rdma-core at build time, no device on this host) is
reported up front as `RdmaUnavailableError` with a plain reason, so callers can log one line
and use another transport.
"""
from __future__ import annotations

import dataclasses
import itertools
import threading

from mooncake_native.binding import HAS_RDMA, check, ffi, lib
from mooncake_proto.errors import InvalidArgumentError, RdmaUnavailableError

NOT_BUILT = "mooncake_native built without RDMA"
NO_DEVICE = "no RDMA device found"
DESCRIPTOR_VERSION = lib.MC_RDMA_DESC_VERSION
DESCRIPTOR_BYTES = lib.MC_RDMA_DESC_BYTES
OP_READ, OP_WRITE = lib.MC_RDMA_OP_READ, lib.MC_RDMA_OP_WRITE
LOCAL_WRITE = lib.MC_RDMA_LOCAL_WRITE
REMOTE_READ, REMOTE_WRITE = lib.MC_RDMA_REMOTE_READ, lib.MC_RDMA_REMOTE_WRITE
MAX_PORTS = 64  # ports listed at most; a host has a handful
_PORT_STATES = {lib.MC_RDMA_PORT_DOWN: "DOWN", lib.MC_RDMA_PORT_INIT: "INIT",
                lib.MC_RDMA_PORT_ARMED: "ARMED", lib.MC_RDMA_PORT_ACTIVE: "ACTIVE"}
_LINK_LAYERS = {lib.MC_RDMA_LINK_INFINIBAND: "InfiniBand", lib.MC_RDMA_LINK_ETHERNET: "Ethernet"}


@dataclasses.dataclass(frozen=True, slots=True)
class PortInfo:
    """One port of one RDMA device."""
    name: str
    guid: int
    port: int
    state: str          # "ACTIVE", "DOWN", ...
    active_mtu: int     # bytes
    link_layer: str     # "InfiniBand" or "Ethernet" (RoCE)
    lid: int

    @property
    def active(self) -> bool:
        return self.state == "ACTIVE"

    @classmethod
    def _from_c(cls, info) -> "PortInfo":
        return cls(ffi.string(info.name).decode(errors="replace"), info.guid, info.port,
                   _PORT_STATES.get(info.port_state, str(info.port_state)), info.active_mtu,
                   _LINK_LAYERS.get(info.link_layer, str(info.link_layer)), info.lid)


def list_devices() -> list[PortInfo]:
    """Every port of every RDMA device on this host; [] when there is none."""
    if not HAS_RDMA:
        raise RdmaUnavailableError(NOT_BUILT)
    out = ffi.new("mc_rdma_port_info[]", MAX_PORTS)
    count = check(lib.mc_rdma_list_ports(out, MAX_PORTS), "listing RDMA devices")
    return [PortInfo._from_c(out[i]) for i in range(min(count, MAX_PORTS))]


def unavailable_reason(device: str = "") -> str | None:
    """Why RDMA cannot be used here (with `device`, or any active one); None when it can."""
    if not HAS_RDMA:
        return NOT_BUILT
    try:
        ports = list_devices()
    except OSError as exc:
        return str(exc)
    if not ports:
        return NO_DEVICE
    if not any(p.active and (not device or p.name == device) for p in ports):
        names = ", ".join(sorted({p.name for p in ports}))
        return f"no active RDMA port on {device or 'any device'} (devices: {names})"
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """What a peer needs to connect its queue pair to ours (exchanged over gRPC)."""
    lid: int
    gid: bytes          # 16 bytes
    qpn: int
    psn: int
    port: int
    mtu: int            # bytes

    def pack(self) -> bytes:
        """The fixed, versioned wire form (encoded in C: the one place the layout lives)."""
        if len(self.gid) != 16:
            raise InvalidArgumentError(f"gid must be 16 bytes, got {len(self.gid)}")
        c = ffi.new("mc_rdma_endpoint *", {"lid": self.lid, "qpn": self.qpn, "psn": self.psn,
                                             "port": self.port, "mtu": self.mtu})
        ffi.memmove(c.gid, self.gid, 16)
        out = ffi.new("uint8_t[]", DESCRIPTOR_BYTES)
        n = check(lib.mc_rdma_endpoint_pack(c, out, DESCRIPTOR_BYTES), "packing RDMA endpoint")
        return ffi.buffer(out, n)[:]

    @classmethod
    def unpack(cls, data: bytes) -> "Endpoint":
        c = ffi.new("mc_rdma_endpoint *")
        check(lib.mc_rdma_endpoint_unpack(data, len(data), c), "RDMA endpoint descriptor")
        return cls._from_c(c)

    @classmethod
    def _from_c(cls, c) -> "Endpoint":
        return cls(c.lid, ffi.buffer(c.gid, 16)[:], c.qpn, c.psn, c.port, c.mtu)


class MemoryRegion:
    """A registered buffer: the adapter may move bytes into or out of it by lkey/rkey."""

    def __init__(self, context: "Context", buffer, access: int):
        writable = bool(access & (LOCAL_WRITE | REMOTE_WRITE))
        # holds the buffer exported (and so alive and unmoved) until close()
        self._cdata = ffi.from_buffer(buffer, require_writable=writable)
        self.addr = int(ffi.cast("uintptr_t", self._cdata))
        self.length = len(self._cdata)
        mr, lkey, rkey = ffi.new("mc_rdma_mr **"), ffi.new("uint32_t *"), ffi.new("uint32_t *")
        check(lib.mc_rdma_register(context._c, self._cdata, self.length, access, mr, lkey, rkey),
              f"registering {self.length} bytes for RDMA")
        self._mr, self.lkey, self.rkey = mr[0], lkey[0], rkey[0]

    def close(self) -> None:
        if self._mr is not None:
            mr, self._mr = self._mr, None
            check(lib.mc_rdma_deregister(mr), "deregistering RDMA memory")
            ffi.release(self._cdata)  # the buffer's owner may resize or free it again


class QueuePair:
    """An RC queue pair; one thread at a time posts on it (the transport holds a lock)."""

    _batch_ids = itertools.count(1)

    def __init__(self, context: "Context", max_batch: int):
        qp, local = ffi.new("mc_rdma_qp **"), ffi.new("mc_rdma_endpoint *")
        check(lib.mc_rdma_qp_create(context._c, max_batch, qp, local), "creating a queue pair")
        self._qp = qp[0]
        self.local = Endpoint._from_c(local)
        self.max_batch = max_batch

    def connect(self, remote: Endpoint) -> None:
        c = ffi.new("mc_rdma_endpoint *", {"lid": remote.lid, "qpn": remote.qpn,
                                             "psn": remote.psn, "port": remote.port,
                                             "mtu": remote.mtu})
        ffi.memmove(c.gid, remote.gid, 16)
        check(lib.mc_rdma_qp_connect(self._qp, c), f"connecting queue pair {self.local.qpn}")

    def run(self, op: int, work: list[tuple[int, int, int, int, int]], timeout_ms: int) -> None:
        """Moves every (local_addr, lkey, remote_addr, rkey, length), max_batch per chain.
        Raises on failure or timeout; the queue pair must then be closed, not reused."""
        for start in range(0, len(work), self.max_batch):
            chunk = work[start:start + self.max_batch]
            items = ffi.new("mc_rdma_work[]", [
                {"local_addr": a, "lkey": lk, "remote_addr": ra, "rkey": rk, "length": n}
                for a, lk, ra, rk, n in chunk])
            batch_id = next(self._batch_ids)
            check(lib.mc_rdma_post(self._qp, op, items, len(chunk), batch_id), "RDMA post")
            check(lib.mc_rdma_poll(self._qp, batch_id, timeout_ms), "RDMA completion")

    def close(self) -> None:
        if self._qp is not None:
            qp, self._qp = self._qp, None
            check(lib.mc_rdma_qp_destroy(qp), "destroying a queue pair")


class Context:
    """An open device port with its protection domain; owns the queue pairs and
    registrations made through it, and closes them (queue pairs first) with itself."""

    def __init__(self, device: str = "", gid_index: int = -1):
        reason = unavailable_reason(device)
        if reason is not None:
            raise RdmaUnavailableError(reason)
        out = ffi.new("mc_rdma_context **")
        check(lib.mc_rdma_open(device.encode(), gid_index, out), "opening RDMA device")
        self._c = out[0]
        info = ffi.new("mc_rdma_port_info *")
        check(lib.mc_rdma_context_port(self._c, info), "RDMA port")
        self.port = PortInfo._from_c(info)
        self._lock = threading.Lock()
        self._children: set[QueuePair | MemoryRegion] = set()

    def register(self, buffer, access: int = LOCAL_WRITE) -> MemoryRegion:
        return self._own(MemoryRegion(self, buffer, access))

    def queue_pair(self, max_batch: int = 64) -> QueuePair:
        return self._own(QueuePair(self, max_batch))

    def release(self, child: QueuePair | MemoryRegion) -> None:
        """Closes a queue pair or registration made here."""
        with self._lock:
            self._children.discard(child)
        child.close()

    def _own(self, child):
        with self._lock:
            self._children.add(child)
        return child

    def close(self) -> None:
        with self._lock:
            children, self._children = self._children, set()
        # queue pairs before registrations: a destroyed queue pair no longer touches memory
        for child in sorted(children, key=lambda c: not isinstance(c, QueuePair)):
            child.close()
        if self._c is not None:
            c, self._c = self._c, None
            check(lib.mc_rdma_close(c), "closing RDMA device")

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
