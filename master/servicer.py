"""MasterService over gRPC: decodes a request, calls MasterState, signs grants, encodes the answer.

No metadata logic lives here (STYLE.md 1 and 5); domain errors leave through rpc.abort_with.
"""
from __future__ import annotations

import functools
import logging
import secrets
import threading
import time
import uuid

from mooncake_master.auth import Authenticator, Role
from mooncake_master.metrics import RpcStats
from mooncake_master.listing import list_keys
from mooncake_master.state import (DrainStatus, InventoryEntry, MasterState, PlacementConfig,
                                   SegmentSpec)
from mooncake_native.answer import (GET_REPLICAS, PUT_START, DescriptorSegment,
                                    ReplicasAnswer, encode_updates)
from mooncake_proto import grants
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto import mooncake_pb2_grpc as pb_grpc
from mooncake_proto.daemon import kv
from mooncake_proto.errors import ErrorCode, MooncakeError, NotFoundError, UnavailableError
from mooncake_proto.rpc import Encoded, abort_with, bearer_token

log = logging.getLogger("mooncake.master")

HEARTBEAT_INTERVAL_MS = 1000
MAX_CACHED_DESCRIPTORS = 4096  # segments' shared descriptor fields kept (_segment_descriptor)
_INTERNAL_ERROR = int(ErrorCode.INTERNAL_ERROR)  # what a call that raised a bug counts as


def _fill_status(status: pb.KeyStatus, key: str, result) -> None:
    """Sets a KeyStatus in place: an item's status, or `statuses.add()` of a batch answer.
    An OK result sets only the key (code 0 and no message are the defaults: setting them
    costs as much as the key on every item of every read)."""
    status.key = key
    if result.code:
        status.code, status.message = result.code, result.message


def _fill_entry(out: pb.InventoryEntry, e: InventoryEntry) -> None:
    out.key, out.put_id, out.segment_id, out.offset, out.size = \
        e.key, e.put_id, e.segment_id, e.offset, e.size
    out.replica_num, out.soft_pin, out.hard_pin = e.replica_num, e.soft_pin, e.hard_pin


def _fill_drain(out: pb.DrainStatus, status: DrainStatus) -> pb.DrainStatus:
    out.draining, out.objects_left, out.bytes_left = \
        status.draining, status.objects_left, status.bytes_left
    return out


def _heartbeat_answer(result) -> Encoded:
    """The HeartbeatResponse's bytes: its updates encoded in C (native/answer.py; 2.3 us
    each through protobuf objects, with the GIL held), the other fields by protobuf, in
    field-number order as protobuf itself writes them."""
    head = pb.HeartbeatResponse(registered=result.registered)
    tail = pb.HeartbeatResponse(more=result.more)
    if result.drain is not None:
        _fill_drain(tail.drain, result.drain)
    return Encoded(head.SerializeToString() + encode_updates(result.updates)
                   + tail.SerializeToString(), [])


def _with_statuses(response, keys, results):
    """Fills a batch answer's `statuses` (KeysResponse, ExistsResponse) and returns it."""
    for key, r in zip(keys, results):
        _fill_status(response.statuses.add(), key, r)
    return response


class _Unlocked:
    """An answer that a method builds once the servicer's lock is released, from snapshots it
    took under the lock: encoding a heartbeat's inventory updates (about a microsecond each)
    or a registration's whole inventory would otherwise hold up every read for milliseconds.
    Its time is not part of the call's recorded duration."""

    __slots__ = ("build",)

    def __init__(self, build):
        self.build = build


class _CallFailed(Exception):
    """A whole-call domain error, carried out of the lock before the RPC is aborted."""

    def __init__(self, error: MooncakeError):
        super().__init__(str(error))
        self.error = error


def _serialized(role: Role):
    """Checks that the caller's token may make a call that needs `role` (the one place that
    does: gRPC calls and the framed port's both come through here), then runs the RPC under the
    servicer's lock: the framed port's threads call the same methods (master/meta_server.py),
    and MasterState must see one call at a time. The body never awaits while it holds the
    lock; an abort (which does await) happens after release. Every call is recorded in
    `rpc_stats` (master/metrics.py) here too, while the lock is held."""
    def decorate(method):
        name = method.__name__

        @functools.wraps(method)
        async def locked(self, request, context):
            started = time.perf_counter()
            if not self.auth.open:
                try:
                    self.auth.check(bearer_token(context.invocation_metadata()), role, name)
                except MooncakeError as refused:
                    log.warning(kv("call_refused", method=name, peer=context.peer(),
                                   code=refused.code, reason=refused))
                    with self.lock:
                        self.rpc_stats.observe(name, time.perf_counter() - started, refused.code)
                    await abort_with(context, refused)
            if self.standby_reason:  # under etcd HA, only the leader answers (master/ha.py)
                await abort_with(context, UnavailableError(self.standby_reason))
            try:
                with self.lock:
                    code, response = _INTERNAL_ERROR, None  # unless it returns
                    try:
                        response = await method(self, request, context)
                        code = 0
                    except _CallFailed as failed:
                        code = failed.error.code
                        raise
                    finally:  # per-key codes of the answer, or the whole call's failure
                        self.rpc_stats.observe(
                            name, time.perf_counter() - started, code,
                            None if isinstance(response, _Unlocked) else response)
            except _CallFailed as failed:
                await abort_with(context, failed.error)
            return response.build() if isinstance(response, _Unlocked) else response
        locked.required_role = role  # tests check that every MasterService call has one
        return locked
    return decorate


class MasterServicer(pb_grpc.MasterServiceServicer):
    def __init__(self, state: MasterState, clock=time.monotonic, wall_clock=time.time,
                 auth: Authenticator | None = None):
        self.state = state
        self.auth = auth or Authenticator()  # none given: an open master
        self.clock = clock
        self.wall_clock = wall_clock
        self.master_id = uuid.uuid4().hex[:12]
        self.lock = threading.RLock()  # every access to `state`: RPCs, the tick, HTTP views
        self.meta_addr = ""  # the framed metadata port, once it listens (master/meta_server.py)
        self.on_moves_planned = lambda: None  # wakes the mover (master/mover.py), any thread
        self.rpc_stats = RpcStats()  # under `lock`, like the state (master/metrics.py)
        # non-empty while this master is a standby: every call is refused with UNAVAILABLE
        # and this text (which names the leader when known), so callers move on to the leader
        self.standby_reason = ""
        self.started_at = clock()
        # (worker id, segment id) -> (registration identity, DescriptorSegment)
        self._descriptors: dict[tuple[str, int], tuple] = {}

    @_serialized(Role.CLIENT)
    async def Hello(self, request, context):
        return pb.HelloResponse(master_id=self.master_id, meta_addr=self.meta_addr)

    # ---- workers ----

    @_serialized(Role.WORKER)
    async def RegisterWorker(self, request, context):
        key = secrets.token_bytes(grants.KEY_BYTES)
        segments = [SegmentSpec(s.segment_id, s.tier, s.size_bytes, s.path) for s in request.segments]
        inventory = [InventoryEntry(e.key, e.put_id, e.segment_id, e.offset, e.size,
                                    e.replica_num, e.soft_pin, e.hard_pin)
                     for e in request.inventory]
        done = await self._run(context, self.state.register_worker, request.worker_id,
                               request.node_id, request.data_addr, request.grpc_addr,
                               request.http_addr, segments, key, self.clock(), request.rdma,
                               inventory)
        log.info(kv("worker_registered", worker_id=request.worker_id, data=request.data_addr,
                    node=request.node_id, segments=len(segments), restarted=done.restarted,
                    inventory=len(inventory), adopted=done.adopted, rejected=done.rejected,
                    holds=len(done.inventory)))
        self._wake_mover()  # adopted objects short of replicas may be copied

        def answer():  # done.inventory holds snapshots (InventoryEntry), not live objects
            response = pb.RegisterWorkerResponse(grant_key=key, master_id=self.master_id,
                                                 heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
                                                 adopted=done.adopted, rejected=done.rejected)
            for e in done.inventory:
                _fill_entry(response.inventory.add(), e)
            return response
        return _Unlocked(answer)

    @_serialized(Role.WORKER)
    async def Heartbeat(self, request, context):
        result = self.state.heartbeat(request.worker_id, self.clock(), request.inventory_seq,
                                      request.draining)
        return _Unlocked(lambda: _heartbeat_answer(result))  # updates and drain are snapshots

    @_serialized(Role.WORKER)
    async def DeregisterWorker(self, request, context):
        lost = self.state.deregister_worker(request.worker_id, self.clock())
        if lost is None:
            raise _CallFailed(NotFoundError(f"worker {request.worker_id!r} is not registered"))
        log.info(kv("worker_deregistered", worker_id=request.worker_id, objects_lost=len(lost)))
        return pb.DeregisterResponse(objects_lost=len(lost))

    # ---- objects ----

    @_serialized(Role.CLIENT)
    async def PutStart(self, request, context):
        if not self.state.workers and \
                self.clock() - self.started_at < self.state.config.worker_ttl_s:
            # just started (a restart, a fail-over): workers are about to register and bring
            # their objects back; "no space" would be a lie that clients do not retry
            raise _CallFailed(UnavailableError(
                "the master has just started and no worker has registered yet"))
        cfg = request.config
        config = PlacementConfig(replica_num=cfg.replica_num or 1,
                                 preferred_worker=cfg.preferred_worker, soft_pin=cfg.soft_pin,
                                 hard_pin=cfg.hard_pin)
        results = await self._run(context, self.state.put_start, list(request.keys),
                                  list(request.sizes), config, request.client_node_id, self.clock())
        timeout_s = self.state.config.put_timeout_s
        answer = self._replicas_answer(PUT_START, request.keys, results)
        self._wake_mover()
        return Encoded(answer.encode(grants.Op.WRITE, self._expiry_ms(timeout_s),
                                     int(timeout_s * 1000)), [r.code for r in results])

    @_serialized(Role.CLIENT)
    async def PutEnd(self, request, context):
        return await self._finish_call(self.state.put_end, request, context)

    @_serialized(Role.CLIENT)
    async def PutRevoke(self, request, context):
        return await self._finish_call(self.state.put_revoke, request, context)

    @_serialized(Role.CLIENT)
    async def GetReplicas(self, request, context):
        """The hot path of every read: its answer is encoded in C (native/answer.py)."""
        results = await self._run(context, self.state.get_replicas, list(request.keys),
                                  self.clock(), False)  # encoded below, under the lock
        ttl_s = self.state.config.lease_ttl_s
        answer = self._replicas_answer(GET_REPLICAS, request.keys, results)
        self._wake_mover()  # reads may have made an SSD object hot enough to promote
        return Encoded(answer.encode(grants.Op.READ, self._expiry_ms(ttl_s), int(ttl_s * 1000)),
                       [r.code for r in results])

    @_serialized(Role.CLIENT)
    async def Exists(self, request, context):
        results = await self._run(context, self.state.exists, list(request.keys), self.clock())
        return _with_statuses(pb.ExistsResponse(), request.keys, results)

    @_serialized(Role.CLIENT)
    async def ExistsPrefix(self, request, context):
        present, stopped_by = await self._run(context, self.state.exists_prefix,
                                              list(request.keys), self.clock())
        response = pb.ExistsPrefixResponse(present=present)
        if stopped_by is not None:
            _fill_status(response.stopped_by, request.keys[present], stopped_by)
        return response

    @_serialized(Role.CLIENT)
    async def Remove(self, request, context):
        results = await self._run(context, self.state.remove, list(request.keys), request.force,
                                  self.clock())
        return _with_statuses(pb.KeysResponse(), request.keys, results)

    @_serialized(Role.ADMIN)
    async def RemoveAll(self, request, context):
        removed = self.state.remove_all(request.force, self.clock())
        log.info(kv("remove_all", force=request.force, removed=removed))
        return pb.RemoveAllResponse(removed=removed)

    # ---- admin ----

    @_serialized(Role.ADMIN)
    async def ListKeys(self, request, context):
        listings, truncated = list_keys(self.state.objects, request.prefix, request.limit,
                                        request.start_after, self.clock())
        response = pb.ListKeysResponse(truncated=truncated)
        for item in listings:
            response.keys.add(key=item.key, size=item.size, state=item.state, tiers=item.tiers,
                              soft_pin=item.soft_pin, hard_pin=item.hard_pin,
                              last_access_age_s=item.last_access_age_s)
        return response

    @_serialized(Role.ADMIN)
    async def DrainWorker(self, request, context):
        status = self.state.drain(request.worker_id, request.cancel)
        if status is None:
            raise _CallFailed(NotFoundError(f"worker {request.worker_id!r} is not registered"))
        log.info(kv("drain_cancelled" if request.cancel else "drain", worker_id=request.worker_id,
                    objects_left=status.objects_left, bytes_left=status.bytes_left))
        return _fill_drain(pb.DrainStatus(), status)

    # ---- helpers ----

    def _wake_mover(self) -> None:
        if self.state.unsent_moves:
            self.on_moves_planned()

    @staticmethod
    async def _run(context, method, *args):
        """Calls a state method; a whole-call domain error ends the RPC with its status and
        code (raised here, aborted by `_serialized` once the lock is released)."""
        try:
            return method(*args)
        except MooncakeError as exc:
            raise _CallFailed(exc) from exc

    async def _finish_call(self, method, request, context):
        put_ids = list(request.put_ids) if request.put_ids else None
        results = await self._run(context, method, list(request.keys), self.clock(), put_ids)
        return _with_statuses(pb.KeysResponse(), request.keys, results)

    def _expiry_ms(self, ttl_s: float) -> int:
        return int((self.wall_clock() + ttl_s + self.state.config.grant_margin_s) * 1000)

    def _replicas_answer(self, layout: int, keys, results) -> ReplicasAnswer:
        """A GetReplicas or PutStart answer's items (native/answer.py: C writes the bytes and
        signs a grant per replica): per key its status, then its size (GetReplicas) or put
        id and retry pause (PutStart), and its replicas."""
        answer = ReplicasAnswer(layout)
        answer.add_results(keys, results, self._segment_descriptor)
        return answer

    def _segment_descriptor(self, worker_id: str, segment_id: int) -> DescriptorSegment:
        """The descriptor fields every replica on one segment shares, as the C answer encoder
        holds them with its worker's grant key; rebuilt when the worker registers again (a
        restart keeps its WorkerInfo and segments but brings a new grant key and
        addresses)."""
        worker = self.state.workers[worker_id]
        identity = (worker.grant_key, worker.data_addr, worker.node_id, worker.grpc_addr,
                    worker.rdma)
        cached = self._descriptors.get((worker_id, segment_id))
        if cached is not None and cached[0] == identity:
            return cached[1]
        segment = worker.segments[segment_id]
        shared = pb.ReplicaDescriptor(
            worker_id=worker_id, segment_id=segment_id, data_addr=worker.data_addr,
            node_id=worker.node_id, path=segment.path, segment_size=segment.size_bytes,
            grpc_addr=worker.grpc_addr, rdma=worker.rdma)
        entry = DescriptorSegment(worker.grant_key, worker_id, segment_id, shared)
        if len(self._descriptors) >= MAX_CACHED_DESCRIPTORS:
            self._descriptors.clear()  # workers come and go; the live ones refill it
        self._descriptors[(worker_id, segment_id)] = (identity, entry)
        return entry
