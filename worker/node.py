"""The worker's running state: its segments and their inventory, data server, gRPC and HTTP
listeners, and its link to the master (registration, heartbeats, drain, deregistration)."""
from __future__ import annotations

import asyncio
import logging
import os
import random
import stat
import time
from typing import Awaitable, TypeVar

import grpc

from mooncake_native.data_server import DataServer
from mooncake_native.file_segment import FileSegment
from mooncake_native.segment import SEGMENT_FILE_PREFIX, SegmentMapping
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto import mooncake_pb2_grpc as pb_grpc
from mooncake_proto import rpc
from mooncake_proto.daemon import HttpServer, json_response, kv, metrics_response
from mooncake_proto.discovery import MasterLocator
from mooncake_proto.errors import MooncakeError
from mooncake_proto.identity import node_id
from mooncake_worker.inventory import Inventory, SegmentFile, segment_kept
from mooncake_worker.metrics import worker_registry
from mooncake_worker.mover import ReplicaMover
from mooncake_worker.rdma_endpoint import WorkerRdma
from mooncake_worker.servicer import WorkerServicer

log = logging.getLogger("mooncake.worker")
T = TypeVar("T")

DRAM_SEGMENT_ID = 0
SSD_SEGMENT_ID = 1
REGISTER_BACKOFF_MAX_S = 2.0
WORKER_SERVICE = pb.DESCRIPTOR.services_by_name["WorkerService"].full_name  # for health checks
RPC_TIMEOUT_S = 5.0
# a master adopting a large inventory takes a while to answer the registration
REGISTER_TIMEOUT_PER_ENTRY_S = 50e-6
# what a registration's inventory may fill of a gRPC message (the rest: the other fields)
INVENTORY_MESSAGE_BYTES = rpc.MAX_MESSAGE_BYTES - (1 << 20)
MAX_ENTRY_BYTES = 4096 + 64  # a key of the longest kind and the integers beside it
# for BUSY_WINDOW_S after a reply with inventory updates, heartbeats come every
# BUSY_HEARTBEAT_S instead of every interval: the master reuses a freed range only once we
# acknowledge its removal, and a writer under eviction waits for that
BUSY_HEARTBEAT_S = 0.05
BUSY_WINDOW_S = 1.0
DRAIN_HEARTBEAT_S = 0.2      # heartbeats while draining (progress comes back in each reply)
DRAIN_MASTER_SILENCE_S = 2.0  # a master unreachable this long ends a drain
DRAIN_LOG_EVERY_S = 1.0
# where calls go while no master leads under etcd: a port that refuses at once, so the call
# fails fast and the next attempt reads etcd again
NO_LEADER = "127.0.0.1:1"


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
    def __init__(self, worker_id: str, masters: str | list[str], dram_bytes: int, shm_dir: str,
                 rdma_device: str = "", ssd_dir: str = "", ssd_bytes: int = 0,
                 token: str = "", tls: rpc.Tls = rpc.NO_TLS):
        """ssd_dir and ssd_bytes (both or neither) add the SSD segment, served from a file.
        token: the worker token sent to the master; tls: the certificate the WorkerService
        serves with and the CA that verifies the master (proto/rpc.py)."""
        if bool(ssd_dir) != bool(ssd_bytes):
            raise ValueError("an SSD segment needs both a directory and a size")
        self.worker_id = worker_id
        self.node_id = node_id()
        # where the master is (proto/discovery.py): a list rotated through on failures, or
        # the leader read from etcd, read again after each failure
        self.locator = MasterLocator(masters)
        self.masters = [NO_LEADER] if self.locator.is_etcd else self.locator.addresses()
        self.token, self.tls = token, tls
        # whether each segment file was already there, same size, is known only before the
        # open (which creates or resizes it): its inventory is worth keeping only then
        dram_path = dram_segment_path(shm_dir, worker_id)
        dram_kept = segment_kept(dram_path, dram_bytes)
        self.dram = SegmentMapping(dram_path, dram_bytes, create=True)
        _log_page_size(self.dram)
        self.ssd, ssd_kept = None, False
        if ssd_dir:
            ssd_path = ssd_segment_path(ssd_dir, worker_id)
            ssd_kept = segment_kept(ssd_path, ssd_bytes)
            self.ssd = open_ssd_segment(ssd_path, ssd_bytes)
        self.inventory = Inventory(self._inventory_segments(dram_kept, ssd_kept))
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
        self.draining = False
        self.heartbeat_interval_s = 1.0
        self._grpc_server: grpc.aio.Server | None = None
        self._grpc_health: rpc.Health | None = None  # SERVING while registered
        self.registry = worker_registry(self)
        self._http = HttpServer({"/health": self._health, "/stats": self._stats,
                                 "/metrics": self._metrics})
        self._master_index = 0
        self._channel: grpc.aio.Channel | None = None

    @property
    def master(self) -> str:
        """The master address the worker talks to now."""
        return self.masters[self._master_index % len(self.masters)]

    def _master_stub(self) -> tuple[str, pb_grpc.MasterServiceStub]:
        master = self.master
        if self._channel is None:
            self._channel = rpc.aio_channel(master, self.tls, self.token)
        return master, pb_grpc.MasterServiceStub(self._channel)

    async def _next_master(self) -> None:
        """Moves to the next master address (a standby, or the same one restarted); under
        etcd, to the leader etcd names now."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        if not self.locator.is_etcd:
            self._master_index += 1
            return
        await asyncio.to_thread(self.locator.invalidate, None)
        await self._resolve_leader()

    async def _resolve_leader(self) -> None:
        """Reads the leader's address from etcd; while none leads (or etcd is unreachable)
        calls go to NO_LEADER, which refuses at once, and the next failure reads again."""
        try:
            self.masters = await asyncio.to_thread(self.locator.addresses)
        except MooncakeError as exc:
            if self.masters != [NO_LEADER]:
                log.warning(kv("no_master_leads", spec=self.locator.spec, reason=exc))
            self.masters = [NO_LEADER]
        self._master_index = 0

    def _inventory_segments(self, dram_kept: bool, ssd_kept: bool) -> list[SegmentFile]:
        # the DRAM segment lives in tmpfs (gone with a reboot anyway): its log needs no fsync
        segments = [SegmentFile(DRAM_SEGMENT_ID, self.dram.path, self.dram.size_bytes,
                                self.dram.identity[1], dram_kept, durable=False)]
        if self.ssd is not None:
            segments.append(SegmentFile(SSD_SEGMENT_ID, self.ssd.path, self.ssd.size_bytes,
                                        self.ssd.identity[1], ssd_kept, durable=True))
        return segments

    def segment_infos(self) -> list[pb.SegmentInfo]:
        infos = [pb.SegmentInfo(segment_id=DRAM_SEGMENT_ID, tier=pb.TIER_DRAM,
                                size_bytes=self.dram.size_bytes, path=self.dram.path)]
        if self.ssd is not None:
            infos.append(pb.SegmentInfo(segment_id=SSD_SEGMENT_ID, tier=pb.TIER_SSD,
                                        size_bytes=self.ssd.size_bytes, path=self.ssd.path))
        return infos

    async def start(self, host: str, data_port: int, grpc_port: int, http_port: int) -> None:
        if self.locator.is_etcd:
            await self._resolve_leader()
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
        await asyncio.to_thread(self.inventory.close)  # waits for an apply in a thread
        self.rdma.close()  # queue pairs and registrations before the memory they name
        self.dram.close()  # the files stay: a restarted worker finds its bytes there
        if self.ssd is not None:
            self.ssd.close()

    async def register(self, stop: asyncio.Event, deadline: float | None = None) -> bool:
        """Registers with the first master that accepts, sending the inventory, retrying with
        backoff until stopped or `deadline` (time.monotonic()) passes. The master's answer
        becomes the inventory."""
        delay = 0.05
        # a large inventory takes a while to gather and copy: off the event loop
        request = await asyncio.to_thread(self._register_request)
        timeout_s = RPC_TIMEOUT_S + len(request.inventory) * REGISTER_TIMEOUT_PER_ENTRY_S
        while not stop.is_set() and _left(deadline) > 0:
            master, stub = self._master_stub()
            try:
                reply = await unless_set(stop, stub.RegisterWorker(
                    request, timeout=min(timeout_s, _left(deadline))))
            except Stopped:
                return False
            except grpc.aio.AioRpcError as exc:
                # a refused token will not fix itself: said louder than a master not up yet
                refused = exc.code() in (grpc.StatusCode.UNAUTHENTICATED,
                                         grpc.StatusCode.PERMISSION_DENIED)
                log.log(logging.ERROR if refused else logging.WARNING,
                        kv("register_failed", master=master, code=exc.code().name,
                           detail=exc.details(), retry_in_s=f"{delay:.2f}"))
                await self._next_master()
            else:
                await self._registered(master, reply, len(request.inventory))
                if await self._confirm(stop, deadline):
                    await self._set_registered(True)
                    return True
                # forgotten at once (another fail-over), or our inventory behind: again, with
                # the inventory as it is now
                request = await asyncio.to_thread(self._register_request)
            try:
                await asyncio.wait_for(stop.wait(), timeout=min(
                    delay * (0.5 + random.random()), max(_left(deadline), 0)))
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, REGISTER_BACKOFF_MAX_S)
        return False

    async def _registered(self, master: str, reply: pb.RegisterWorkerResponse,
                          sent: int) -> None:
        # the inventory before the grant key: no write under this registration reaches the
        # data port before the logs forget what the master rejected (those ranges are free)
        await asyncio.to_thread(self.inventory.replace, reply.inventory)
        self.data_server.grant_key = reply.grant_key
        self.heartbeat_interval_s = max(reply.heartbeat_interval_ms, 50) / 1000
        log.info(kv("registered", worker_id=self.worker_id, master=master,
                    master_id=reply.master_id, data=self.data_addr, inventory_sent=sent,
                    inventory=len(reply.inventory), adopted=reply.adopted,
                    rejected=reply.rejected))

    async def _confirm(self, stop: asyncio.Event, deadline: float | None) -> bool:
        """One heartbeat right after registering: the master grants nothing on this worker
        (no new ranges, no reads of its replicas) until a heartbeat shows that it holds the
        registration's grant key. False when the answer says to register again. A heartbeat
        that fails counts as done: the heartbeat loop's next one confirms (or moves on to
        another master), and the master stops waiting for us after worker_ttl."""
        timeout_s = max(min(RPC_TIMEOUT_S, _left(deadline)), 0.1)
        try:
            master, reply = await unless_set(stop, self._heartbeat(self.draining, timeout_s))
        except (Stopped, grpc.aio.AioRpcError) as exc:
            if isinstance(exc, grpc.aio.AioRpcError):
                log.warning(kv("first_heartbeat_failed", master=self.master,
                               code=exc.code().name))
            return True
        return await self._take_updates(master, reply)

    def _register_request(self) -> pb.RegisterWorkerRequest:
        return pb.RegisterWorkerRequest(
            worker_id=self.worker_id, node_id=self.node_id, data_addr=self.data_addr,
            grpc_addr=self.grpc_addr, http_addr=self.http_addr, segments=self.segment_infos(),
            rdma=self.rdma.serving, inventory=self._inventory_to_send())

    def _inventory_to_send(self) -> list[pb.InventoryEntry]:
        """The inventory, cut to what fits in one registration message (the entries left out
        are forgotten: the master's answer replaces the inventory)."""
        entries = self.inventory.entries()
        if len(entries) * MAX_ENTRY_BYTES <= INVENTORY_MESSAGE_BYTES:
            return entries
        total = 0
        for n, entry in enumerate(entries):
            total += entry.ByteSize() + 4  # + the field's tag and length
            if total > INVENTORY_MESSAGE_BYTES:
                log.error(kv("inventory_truncated", entries=len(entries), sent=n,
                             dropped=len(entries) - n))
                return entries[:n]
        return entries

    async def heartbeat_loop(self, stop: asyncio.Event) -> None:
        """Heartbeats the master every interval, keeping the inventory in step with its
        updates; registers again when the master no longer knows us or an update is missing."""
        failing = False
        at_once = False  # the master has more updates for us
        busy_until = 0.0  # see BUSY_WINDOW_S
        while not stop.is_set():
            if not at_once:
                wait_s = min(BUSY_HEARTBEAT_S, self.heartbeat_interval_s) \
                    if time.monotonic() < busy_until else self.heartbeat_interval_s
                try:
                    await asyncio.wait_for(stop.wait(), timeout=wait_s)
                    return
                except asyncio.TimeoutError:
                    pass
            at_once = False
            try:
                master, reply = await unless_set(stop, self._heartbeat(False, RPC_TIMEOUT_S))
            except Stopped:
                return
            except grpc.aio.AioRpcError as exc:
                if not failing:
                    log.warning(kv("heartbeat_failed", master=self.master,
                                   code=exc.code().name))
                failing = True
                await self._next_master()
                continue
            if failing:
                log.info(kv("heartbeat_restored", master=master))
            failing = False
            if not await self._take_updates(master, reply):
                await self._set_registered(False)
                await self.register(stop)
                continue
            at_once = reply.more and len(reply.updates) > 0
            if reply.updates:
                busy_until = time.monotonic() + BUSY_WINDOW_S

    async def _heartbeat(self, draining: bool, timeout_s: float
                         ) -> tuple[str, pb.HeartbeatResponse]:
        master, stub = self._master_stub()
        reply = await stub.Heartbeat(pb.HeartbeatRequest(
            worker_id=self.worker_id, inventory_seq=self.inventory.seq, draining=draining),
            timeout=timeout_s)
        return master, reply

    async def _take_updates(self, master: str, reply: pb.HeartbeatResponse) -> bool:
        """Applies a heartbeat reply's inventory updates (off the event loop: the SSD log is
        fsynced). False when the worker must register again."""
        if not reply.registered:
            log.warning(kv("master_forgot_us", master=master))
            return False
        if reply.updates and not await asyncio.to_thread(self.inventory.apply, reply.updates):
            log.warning(kv("inventory_resync", master=master, seq=self.inventory.seq))
            return False
        return True

    async def drain(self, timeout_s: float, at_once: asyncio.Event) -> None:
        """Stopping: heartbeats with draining=true (the master places nothing new here and
        copies the objects only this worker holds to others, over MoveReplicas, which keeps
        being served, as the data port is) until none are left or `timeout_s` passes, then
        deregisters. A master unreachable for DRAIN_MASTER_SILENCE_S, or `at_once` (a second
        signal), ends it without deregistering."""
        self.draining = True
        log.info(kv("drain_started", worker_id=self.worker_id, timeout_s=timeout_s))
        if await self._drain_until_done(_DrainProgress(timeout_s), at_once):
            await self.deregister()

    async def _drain_until_done(self, progress: "_DrainProgress", at_once: asyncio.Event
                                ) -> bool:
        """True when the drain ended (done, timed out, not supported): deregister."""
        silent_since: float | None = None
        while not at_once.is_set():
            if progress.timed_out():
                return True
            asked = time.monotonic()
            try:
                master, reply = await unless_set(
                    at_once, self._heartbeat(True, progress.call_timeout_s()))
            except Stopped:
                break
            except grpc.aio.AioRpcError as exc:
                silent_since = asked if silent_since is None else silent_since
                if time.monotonic() - silent_since >= DRAIN_MASTER_SILENCE_S:
                    log.warning(kv("drain_abandoned", reason="master_unreachable",
                                   code=exc.code().name, **progress.left()))
                    return False
                await self._next_master()
            else:
                silent_since = None
                if not await self._take_updates(master, reply):
                    await self._set_registered(False)  # a new master: tell it what we hold
                    if not await self.register(at_once, progress.rejoin_deadline()):
                        log.warning(kv("drain_abandoned", reason="not_registered"))
                        return False
                    continue
                if progress.update(reply.drain, master):
                    return True
            try:
                await asyncio.wait_for(at_once.wait(), timeout=DRAIN_HEARTBEAT_S)
            except asyncio.TimeoutError:
                pass
        log.warning(kv("drain_interrupted", **progress.left()))
        return False

    async def deregister(self) -> None:
        """Leaves the pool: the master forgets this worker and heals what it held. The
        inventory stays: started again, the worker offers its objects back."""
        master, stub = self._master_stub()
        try:
            reply = await stub.DeregisterWorker(pb.DeregisterRequest(worker_id=self.worker_id),
                                                timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            log.warning(kv("deregister_failed", master=master, code=exc.code().name,
                           detail=exc.details()))
            return
        await self._set_registered(False)
        log.info(kv("deregistered", master=master, objects_lost=reply.objects_lost))

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
                              "moves_refused": self.mover.items_refused,
                              "replicated_items": self.mover.items_replicated,
                              "replicated_bytes": self.mover.bytes_replicated,
                              "replications_failed": self.mover.replications_failed,
                              "inventory_entries": len(self.inventory),
                              "inventory_seq": self.inventory.seq,
                              "draining": self.draining})


class _DrainProgress:
    """A drain's deadline and the master's last DrainStatus; logs progress and the end."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.started = time.monotonic()
        self.deadline = self.started + timeout_s
        self.status = pb.DrainStatus()
        self._logged: tuple[int, int] | None = None
        self._logged_at = 0.0

    def left(self) -> dict[str, int]:
        return {"objects_left": self.status.objects_left, "bytes_left": self.status.bytes_left}

    def timed_out(self) -> bool:
        if time.monotonic() < self.deadline:
            return False
        log.warning(kv("drain_timeout", timeout_s=self.timeout_s, **self.left()))
        return True

    def call_timeout_s(self) -> float:
        return max(0.05, min(RPC_TIMEOUT_S, DRAIN_MASTER_SILENCE_S,
                             self.deadline - time.monotonic()))

    def rejoin_deadline(self) -> float:
        return min(self.deadline, time.monotonic() + DRAIN_MASTER_SILENCE_S)

    def update(self, status: pb.DrainStatus, master: str) -> bool:
        """Takes a heartbeat's DrainStatus; True when the drain is over."""
        self.status = status
        elapsed = time.monotonic() - self.started
        if status.draining and status.objects_left == 0:
            log.info(kv("drained", ms=f"{elapsed * 1000:.0f}"))
            return True
        if not status.draining and elapsed >= DRAIN_MASTER_SILENCE_S:
            log.warning(kv("drain_unsupported", master=master))  # it never said it drains
            return True
        progress = (status.objects_left, status.bytes_left)
        if status.draining and progress != self._logged and \
                time.monotonic() - self._logged_at >= DRAIN_LOG_EVERY_S:
            log.info(kv("drain_progress", **self.left()))
            self._logged, self._logged_at = progress, time.monotonic()
        return False


class Stopped(Exception):
    """The stop event came before the call's answer (the call is cancelled)."""


async def unless_set(event: asyncio.Event, call: Awaitable[T]) -> T:
    """Awaits call (a coroutine or a task), unless event is set first: then cancels it and
    raises Stopped (a stopping worker never waits out a hung master's RPC timeout)."""
    task = asyncio.ensure_future(call)
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        stopped = not task.done()
        if stopped:
            task.cancel()
    if stopped:
        raise Stopped
    return task.result()


def _left(deadline: float | None) -> float:
    """Seconds until deadline (time.monotonic()); infinite without one."""
    return float("inf") if deadline is None else deadline - time.monotonic()


def _log_page_size(segment: SegmentMapping) -> None:
    """Says whether huge pages back the DRAM segment: they are asked for, but a tmpfs gives
    them only when mounted with huge= (README: Deployment)."""
    huge = segment.huge_page_bytes()
    if huge:
        log.info(kv("dram_segment_pages", path=segment.path, huge_page_bytes=huge,
                    size_bytes=segment.size_bytes))
    else:
        log.warning(kv("dram_segment_pages", path=segment.path, huge_page_bytes=0,
                       detail="4 KiB pages: large copies run about 15% slower; mount the "
                       "--shm-dir tmpfs with huge=within_size"))
