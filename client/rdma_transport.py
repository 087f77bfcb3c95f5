"""The `rdma` transport: one-sided RDMA READ/WRITE between the caller's buffers and workers'
registered segments, over RC queue pairs set up through each worker's RdmaConnect RPC.

Same interface as the transports in transports.py: `usable(replica)`, `read`, `write`,
`close`; a failed transfer is recorded in `Transfer.error`, never raised. Without a usable
device here (or a build without rdma-core) it logs one `rdma_unavailable` line, `usable()` is
always False, and reads/writes handed to it anyway go over TCP.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time

import grpc

from mooncake_client.transports import TcpTransport, Transfer
from mooncake_native import rdma
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto import mooncake_pb2_grpc as pb_grpc
from mooncake_proto import rpc
from mooncake_proto.daemon import kv
from mooncake_proto.errors import MooncakeError, RdmaUnavailableError, TransferError

log = logging.getLogger("mooncake.client")

MAX_BATCH = 64               # work requests chained per post; a batch waits for its last one
MAX_WORK_BYTES = 1 << 30     # one work request moves at most this; longer replicas are split


@dataclasses.dataclass(slots=True)
class _Peer:
    """Our connected queue pair to one worker and where its segments are."""
    qp: rdma.QueuePair
    segments: dict[int, pb.RdmaSegment]
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


class RdmaTransport:
    name = "rdma"

    def __init__(self, timeout_s: float, device: str = "", fallback: TcpTransport | None = None,
                 tls: rpc.Tls = rpc.NO_TLS):
        """tls: how to reach workers' gRPC (RdmaConnect), as the client reaches the master."""
        self.timeout_s = timeout_s
        self.tls = tls
        self.fallback = fallback if fallback is not None else TcpTransport(timeout_s)
        self._context: rdma.Context | None = None
        self._peers: dict[str, _Peer] = {}        # by worker gRPC address
        self._refused: dict[str, str] = {}        # workers that serve no RDMA, and why
        self._lock = threading.Lock()
        try:
            self._context = rdma.Context(device)
        except (MooncakeError, OSError) as exc:
            log.info(kv("rdma_unavailable", reason=str(exc), fallback="tcp"))

    @property
    def available(self) -> bool:
        return self._context is not None

    def usable(self, replica: pb.ReplicaDescriptor) -> bool:
        # an SSD segment is a file, never registered with the adapter: tcp serves it (sendfile)
        return (self._context is not None and replica.rdma and bool(replica.grpc_addr)
                and replica.tier != pb.TIER_SSD and replica.grpc_addr not in self._refused)

    def read(self, transfers: list[Transfer]) -> None:
        self._run(transfers, rdma.OP_READ)

    def write(self, transfers: list[Transfer]) -> None:
        self._run(transfers, rdma.OP_WRITE)

    def close(self) -> None:
        with self._lock:
            self._peers.clear()
        if self._context is not None:
            context, self._context = self._context, None
            context.close()  # queue pairs, then registrations, then the device
        self.fallback.close()

    def _run(self, transfers: list[Transfer], op: int) -> None:
        if self._context is None:
            _over(self.fallback, op)(transfers)
            return
        by_worker: dict[str, list[Transfer]] = {}
        for t in transfers:
            by_worker.setdefault(t.replica.grpc_addr, []).append(t)
        for addr, group in by_worker.items():
            self._run_on_worker(addr, group, op)

    def _run_on_worker(self, addr: str, group: list[Transfer], op: int) -> None:
        try:
            peer = self._peer(addr, group[0].replica)
        except RdmaUnavailableError as exc:
            # the worker lost or never had its device; its TCP data port still serves
            self._refused[addr] = str(exc)
            log.info(kv("rdma_refused", worker=addr, reason=str(exc), fallback="tcp"))
            _over(self.fallback, op)(group)
            return
        except (MooncakeError, OSError, grpc.RpcError) as exc:
            _fail(group, f"RDMA connect: {exc}")
            return
        with peer.lock:
            try:
                self._move(addr, peer, group, op)
            except (MooncakeError, OSError) as exc:
                verb = "read" if op == rdma.OP_READ else "write"
                _fail([t for t in group if not t.done and t.error is None],
                      f"RDMA {verb}: {exc}")

    def _move(self, addr: str, peer: _Peer, group: list[Transfer], op: int) -> None:
        """Registers the buffers, moves every transfer in chained batches, deregisters.
        A failed or timed-out batch leaves the queue pair in error: it is destroyed (which
        stops the adapter touching our buffers) before the buffers are deregistered."""
        regions: list[rdma.MemoryRegion] = []
        work: list[tuple[int, int, int, int, int]] = []
        started: list[Transfer] = []
        try:
            for t in group:
                if self._stage(peer, t, op, regions, work):
                    started.append(t)
            if work:
                try:
                    peer.qp.run(op, work, int(self.timeout_s * 1000))
                except BaseException:
                    self._drop(addr, peer)
                    raise
            for t in started:
                t.done = True
        finally:
            for region in regions:
                self._context.release(region)

    def _stage(self, peer: _Peer, t: Transfer, op: int, regions: list, work: list) -> bool:
        """Registers t's buffers (into regions) and adds its work requests; False when t is
        settled without moving bytes (its error recorded)."""
        r = t.replica
        segment = peer.segments.get(r.segment_id)
        if op == rdma.OP_WRITE and time.monotonic() > t.deadline:
            t.error = TransferError(f"{_describe(r)}: put timeout passed before the RDMA write")
            return False
        if segment is None or r.offset + r.length > segment.size_bytes:
            t.error = TransferError(f"{_describe(r)}: range is outside the registered segment")
            return False
        # a READ lands in the caller's parts (or fresh bytes); a WRITE gathers its parts
        parts = t.target_parts() if op == rdma.OP_READ else t.parts
        if sum(p.nbytes for p in parts) != r.length:
            t.error = TransferError(f"{_describe(r)}: buffers hold "
                                    f"{sum(p.nbytes for p in parts)} bytes, replica {r.length}")
            return False
        remote = segment.addr + r.offset
        for part in parts:
            if part.nbytes == 0:
                continue
            # a READ writes our memory (local write); a WRITE's source may be read-only bytes
            region = self._context.register(part, rdma.LOCAL_WRITE if op == rdma.OP_READ else 0)
            regions.append(region)
            for off in range(0, region.length, MAX_WORK_BYTES):
                work.append((region.addr + off, region.lkey, remote + off, segment.rkey,
                             min(MAX_WORK_BYTES, region.length - off)))
            remote += region.length
        return True

    def _peer(self, addr: str, replica: pb.ReplicaDescriptor) -> _Peer:
        """The connected queue pair to the worker at addr, connecting on first use. A worker
        restarted at the same address fails the next batch; the peer is dropped then and the
        batch after reconnects."""
        with self._lock:
            peer = self._peers.get(addr)
        if peer is not None:
            return peer
        qp = self._context.queue_pair(MAX_BATCH)
        try:
            reply = self._rdma_connect(addr, qp.local.pack(), replica.grant)
            qp.connect(rdma.Endpoint.unpack(reply.worker_endpoint))
        except BaseException:
            self._context.release(qp)
            raise
        peer = _Peer(qp, {s.segment_id: s for s in reply.segments})
        with self._lock:
            existing = self._peers.setdefault(addr, peer)
        if existing is not peer:  # another thread connected meanwhile: keep one
            self._context.release(qp)
        return existing

    def _rdma_connect(self, addr: str, endpoint: bytes, grant: bytes) -> pb.RdmaConnectResponse:
        with rpc.client_channel(addr, self.tls) as channel:
            try:
                return pb_grpc.WorkerServiceStub(channel).RdmaConnect(
                    pb.RdmaConnectRequest(client_endpoint=endpoint, grant=grant),
                    timeout=self.timeout_s)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    raise RdmaUnavailableError(f"{addr}: {exc.details()}") from exc
                raise rpc.error_from_rpc(exc, addr) from exc

    def _drop(self, addr: str, peer: _Peer) -> None:
        with self._lock:
            if self._peers.get(addr) is peer:
                del self._peers[addr]
        try:
            self._context.release(peer.qp)
        except OSError as exc:  # the batch's own error is the one to report
            log.warning(kv("rdma_qp_destroy_failed", worker=addr, reason=str(exc)))


def _over(transport: TcpTransport, op: int):
    return transport.read if op == rdma.OP_READ else transport.write


def _fail(group: list[Transfer], reason: str) -> None:
    for t in group:
        t.error = TransferError(f"{_describe(t.replica)}: {reason}")


def _describe(replica: pb.ReplicaDescriptor) -> str:
    return f"worker {replica.worker_id} at {replica.grpc_addr or replica.data_addr}"
