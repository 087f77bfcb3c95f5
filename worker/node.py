"""The worker's running state: its segments, data server, gRPC and HTTP listeners, master link."""
from __future__ import annotations

import asyncio
import logging
import os
import random
import stat

import grpc

from mooncake_native.data_server import DataServer
from mooncake_native.file_segment import FileSegment
from mooncake_native.segment import SEGMENT_FILE_PREFIX, SegmentMapping
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto import mooncake_pb2_grpc as pb_grpc
from mooncake_proto import rpc
from mooncake_proto.daemon import HttpServer, json_response, kv, metrics_response
from mooncake_proto.identity import node_id
from mooncake_worker.metrics import worker_registry
from mooncake_worker.mover import ReplicaMover
from mooncake_worker.rdma_endpoint import WorkerRdma
from mooncake_worker.servicer import WorkerServicer

log = logging.getLogger("mooncake.worker")

DRAM_SEGMENT_ID = 0
SSD_SEGMENT_ID = 1
REGISTER_BACKOFF_MAX_S = 2.0
WORKER_SERVICE = pb.DESCRIPTOR.services_by_name["WorkerService"].full_name  # for health checks
RPC_TIMEOUT_S = 5.0


def _segment_path(directory: str, worker_id: str, tier: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in worker_id)
    return os.path.join(directory, f"{SEGMENT_FILE_PREFIX}{safe}-{tier}")


def dram_segment_path(shm_dir: str, worker_id: str) -> str:
    return _segment_path(shm_dir, worker_id, "dram")


def ssd_segment_path(ssd_dir: str, worker_id: str) -> str:
    return _segment_path(ssd_dir, worker_id, "ssd")


def open_ssd_segment(path: str, size_bytes: int) -> FileSegment:
    """The SSD segment file: the one a previous run left (bytes kept, so the objects in it can
    be re-adopted), or a new one. A file of another size is replaced, not resized: its
    offsets describe another layout, and a new inode tells same-node clients to reopen."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode) and st.st_size != size_bytes:
        log.warning(kv("ssd_segment_recreated", path=path, old_bytes=st.st_size,
                       size_bytes=size_bytes))
        os.unlink(path)
    return FileSegment(path, size_bytes, create=True)  # refuses a symlink or a non-file


class WorkerNode:
    def __init__(self, worker_id: str, masters: list[str], dram_bytes: int, shm_dir: str,
                 rdma_device: str = "", ssd_dir: str = "", ssd_bytes: int = 0,
                 token: str = "", tls: rpc.Tls = rpc.NO_TLS):
        """ssd_dir and ssd_bytes (both or neither) add the SSD segment, served from a file.
        token: the worker token sent to the master; tls: the certificate the WorkerService
        serves with and the CA that verifies the master (proto/rpc.py)."""
        if bool(ssd_dir) != bool(ssd_bytes):
            raise ValueError("an SSD segment needs both a directory and a size")
        self.worker_id = worker_id
        self.node_id = node_id()
        self.masters = masters
        self.token, self.tls = token, tls
        self.dram = SegmentMapping(dram_segment_path(shm_dir, worker_id), dram_bytes, create=True)
        self.ssd = open_ssd_segment(ssd_segment_path(ssd_dir, worker_id), ssd_bytes) \
            if ssd_dir else None
        # segment id -> the mapping or file behind it (what MoveReplicas copies between)
        self.segments: dict[int, SegmentMapping | FileSegment] = {DRAM_SEGMENT_ID: self.dram}
        if self.ssd is not None:
            self.segments[SSD_SEGMENT_ID] = self.ssd
        self.data_server = DataServer(
            worker_id, {DRAM_SEGMENT_ID: self.dram.view},
            file_segments={SSD_SEGMENT_ID: self.ssd} if self.ssd is not None else None)
        self.mover = ReplicaMover(worker_id, self.segments, lambda: self.data_server.grant_key)
        self.rdma = WorkerRdma.open({DRAM_SEGMENT_ID: self.dram.view}, rdma_device)
        self.data_addr = self.grpc_addr = self.http_addr = ""
        self.registered = False
        self.heartbeat_interval_s = 1.0
        self._grpc_server: grpc.aio.Server | None = None
        self._grpc_health: rpc.Health | None = None  # SERVING while registered
        self.registry = worker_registry(self)
        self._http = HttpServer({"/health": self._health, "/stats": self._stats,
                                 "/metrics": self._metrics})
        self._master_index = 0
        self._channel: grpc.aio.Channel | None = None

    def _master_stub(self) -> tuple[str, pb_grpc.MasterServiceStub]:
        master = self.masters[self._master_index % len(self.masters)]
        if self._channel is None:
            self._channel = rpc.aio_channel(master, self.tls, self.token)
        return master, pb_grpc.MasterServiceStub(self._channel)

    async def _next_master(self) -> None:
        """Moves to the next master address (a standby, or the same one restarted)."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        self._master_index += 1

    def segment_infos(self) -> list[pb.SegmentInfo]:
        infos = [pb.SegmentInfo(segment_id=DRAM_SEGMENT_ID, tier=pb.TIER_DRAM,
                                size_bytes=self.dram.size_bytes, path=self.dram.path)]
        if self.ssd is not None:
            infos.append(pb.SegmentInfo(segment_id=SSD_SEGMENT_ID, tier=pb.TIER_SSD,
                                        size_bytes=self.ssd.size_bytes, path=self.ssd.path))
        return infos

    async def start(self, host: str, data_port: int, grpc_port: int, http_port: int) -> None:
        self.data_addr = self.data_server.start(host, data_port)
        self._grpc_server = rpc.aio_server()
        rpc.add_servicer(self._grpc_server, pb_grpc.add_WorkerServiceServicer_to_server,
                         WorkerServicer(self))
        self._grpc_health = await rpc.Health(self._grpc_server, WORKER_SERVICE).start()
        self.grpc_addr = rpc.bind(self._grpc_server, host, grpc_port, self.tls)
        await self._grpc_server.start()
        self.http_addr = await self._http.start(host, http_port)

    async def stop(self) -> None:
        if self._grpc_health is not None:
            await self._grpc_health.shutdown()
        if self._channel is not None:
            await self._channel.close()
        self.data_server.stop()
        await self._http.stop()
        if self._grpc_server is not None:
            await self._grpc_server.stop(grace=1.0)
        # a cancelled MoveReplicas leaves its copy running in a thread: wait for it
        await asyncio.to_thread(self.mover.close)
        self.rdma.close()  # queue pairs and registrations before the memory they name
        self.dram.close()  # the files stay: a restarted worker finds its bytes there
        if self.ssd is not None:
            self.ssd.close()

    async def register(self, stop: asyncio.Event) -> bool:
        """Registers with the first master that accepts, retrying with backoff until stopped."""
        delay = 0.05
        request = pb.RegisterWorkerRequest(
            worker_id=self.worker_id, node_id=self.node_id, data_addr=self.data_addr,
            grpc_addr=self.grpc_addr, http_addr=self.http_addr, segments=self.segment_infos(),
            rdma=self.rdma.serving)
        while not stop.is_set():
            master, stub = self._master_stub()
            try:
                reply = await stub.RegisterWorker(request, timeout=RPC_TIMEOUT_S)
                self.data_server.grant_key = reply.grant_key
                self.heartbeat_interval_s = max(reply.heartbeat_interval_ms, 50) / 1000
                await self._set_registered(True)
                log.info(kv("registered", worker_id=self.worker_id, master=master,
                            master_id=reply.master_id, data=self.data_addr))
                return True
            except grpc.aio.AioRpcError as exc:
                # a refused token will not fix itself: said louder than a master not up yet
                refused = exc.code() in (grpc.StatusCode.UNAUTHENTICATED,
                                         grpc.StatusCode.PERMISSION_DENIED)
                log.log(logging.ERROR if refused else logging.WARNING,
                        kv("register_failed", master=master, code=exc.code().name,
                           detail=exc.details(), retry_in_s=f"{delay:.2f}"))
                await self._next_master()
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay * (0.5 + random.random()))
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, REGISTER_BACKOFF_MAX_S)
        return False

    async def heartbeat_loop(self, stop: asyncio.Event) -> None:
        """Heartbeats the master; registers again when the master no longer knows us."""
        failing = False
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.heartbeat_interval_s)
                return
            except asyncio.TimeoutError:
                pass
            master, stub = self._master_stub()
            try:
                reply = await stub.Heartbeat(pb.HeartbeatRequest(worker_id=self.worker_id),
                                             timeout=RPC_TIMEOUT_S)
                if failing:
                    log.info(kv("heartbeat_restored", master=master))
                failing = False
                if not reply.registered:
                    log.warning(kv("master_forgot_us", master=master))
                    await self._set_registered(False)
                    await self.register(stop)
            except grpc.aio.AioRpcError as exc:
                if not failing:
                    log.warning(kv("heartbeat_failed", master=master, code=exc.code().name))
                failing = True
                await self._next_master()

    async def _set_registered(self, registered: bool) -> None:
        self.registered = registered
        if self._grpc_health is not None:
            await self._grpc_health.set_serving(registered)

    async def _metrics(self, _query: str):
        return metrics_response(self.registry)

    async def _health(self, _query: str):
        status = 200 if self.registered else 503
        return status, "application/json", (b'{"status": "ok"}\n' if self.registered
                                             else b'{"status": "registering"}\n')

    async def _stats(self, _query: str):
        ds = self.data_server
        return json_response({"worker_id": self.worker_id, "registered": self.registered,
                              "bytes_in": ds.bytes_in, "bytes_out": ds.bytes_out,
                              "requests_refused": ds.refused, "dram_bytes": self.dram.size_bytes,
                              "ssd_bytes": self.ssd.size_bytes if self.ssd is not None else 0,
                              "moved_items": self.mover.items_moved,
                              "moved_bytes": self.mover.bytes_moved,
                              "moves_refused": self.mover.items_refused})
