"""The master's metadata: workers and their segments, objects and replicas, leases, pending frees.

Pure synchronous state with no I/O, no threads and no clock: every method takes `now`
(monotonic seconds) and randomness comes from the injected `random.Random`. The gRPC servicer
decodes a request, calls one method here and encodes the answer. `validate()` checks every
cross-index invariant; tests call it after every step.
"""
from __future__ import annotations

import bisect
import dataclasses
import random
from collections.abc import Callable, Sequence

from mooncake_master.allocator import OffsetAllocator, align_up
from mooncake_master.model import (COMPLETE, DEMOTE, MAX_REPLICA_NUM, PENDING, PROMOTE,
                                   REPLICATE, TIER_DRAM, TIER_NAMES, TIER_SSD, DrainStatus,
                                   HeartbeatResult, InventoryEntry, InventoryUpdate, KeyResult,
                                   MasterConfig, Move, ObjectMeta, PendingFree, PlacementConfig,
                                   Registration, Replica, Segment, SegmentSpec, TickReport,
                                   WorkerInfo)
from mooncake_master.placement import Placement
from mooncake_master.recovery import Recovery
from mooncake_master.tiering import MOVE_DONE, MOVE_FAILED, MOVE_UNKNOWN, Tiering
from mooncake_proto.errors import ErrorCode, InvalidArgumentError
from mooncake_proto.grants import MAX_WORKER_ID_BYTES

__all__ = ["COMPLETE", "DEMOTE", "PENDING", "PROMOTE", "REPLICATE", "TIER_DRAM", "TIER_SSD",
           "DrainStatus", "HeartbeatResult", "InventoryEntry", "InventoryUpdate", "KeyResult",
           "MasterConfig", "MasterState", "Move", "MOVE_DONE", "MOVE_FAILED", "MOVE_UNKNOWN",
           "PlacementConfig", "Registration", "SegmentSpec", "TickReport"]

# a put that a registering worker could take waits for its first heartbeat (sent at once,
# after the worker rewrote its inventory) up to JOIN_WAIT_S, asking again every JOIN_RETRY_S
# at first, a quarter of the time waited later
JOIN_WAIT_S = 5.0
JOIN_RETRY_S = 0.02


def _fail(code: ErrorCode, message: str) -> KeyResult:
    return KeyResult(code=int(code), message=message)


def _segment_signature(segments) -> dict:
    """What makes two registrations' segments the same files (SegmentSpec or Segment)."""
    return {s.segment_id: (s.tier, s.size_bytes, s.path) for s in segments}


def _free_at(pending: PendingFree) -> float:
    return pending.free_at


def _copy_replicas(replicas: list[Replica]) -> list[Replica]:
    # Callers get copies so that nothing outside can mutate the state behind validate().
    # (the constructor, not dataclasses.replace: this runs per replica of every get)
    return [Replica(r.worker_id, r.segment_id, r.tier, r.offset, r.length, r.state)
            for r in replicas]


class MasterState(Placement, Tiering, Recovery):
    """Every piece of metadata the master holds, and the only code that changes it."""

    def __init__(self, config: MasterConfig | None = None, rng: random.Random | None = None,
                 first_put_id: int = 1):
        """first_put_id: where this master's put ids start; production passes the wall clock
        in microseconds, so that ids stay unique across masters and an id below it marks an
        object an earlier master committed (recovery.py)."""
        self.config = config if config is not None else MasterConfig()
        self.rng = rng if rng is not None else random.Random()
        self.workers: dict[str, WorkerInfo] = {}
        # workers registered (or registered again) that have not heartbeat since, with when
        # the first of those registrations came: they may not hold the grant key yet, so a
        # grant under it would be refused; none is handed out on them until their first
        # heartbeat (which they send at once)
        self.registering: dict[str, float] = {}
        self.objects: dict[str, ObjectMeta] = {}
        # the PENDING objects of `objects`, oldest put first: the tick looks for stalled puts
        # here, not in every object
        self._pending_puts: dict[str, ObjectMeta] = {}
        self.pending_frees: list[PendingFree] = []
        # ranges of dropped workers that grants may still cover: if the worker registers
        # again (same segment file), they stay reserved until then
        self._held_after_drop: dict[str, list[PendingFree]] = {}
        self._next_put_id = self.epoch_start = first_put_id
        # recovery.py: keys lost with a worker (key -> put_id, re-adopted if a copy comes
        # back), earlier masters' objects deleted here ((key, put_id), never re-adopted),
        # objects to copy to another worker (key -> put_id; drained ones first), and when
        # healing may start (a rebuild grace after the first tick)
        self._lost: dict[str, int] = {}
        # what a dead worker held (its segments, its committed replicas), offered again for
        # adoption beside its own inventory if it comes back with the same segments: its
        # inventory may lack the commits of its last heartbeat interval
        self._held_by_dead: dict[str, tuple[dict, list[InventoryEntry]]] = {}
        self._buried: dict[tuple[str, int], bool] = {}
        self._heal_queue: dict[str, int] = {}
        self._drain_queue: dict[str, int] = {}
        self._heal_after: float | None = None
        self.moves: dict[int, Move] = {}   # demotions and promotions under way (tiering.py)
        self.unsent_moves = 0              # planned, not yet taken by the mover
        self._next_move_id = 1
        self.counters = {"evicted_objects": 0, "evicted_replicas": 0, "demotions": 0,
                         "promotions": 0, "replications": 0, "heals_given_up": 0,
                         "objects_lost": 0, "objects_adopted": 0, "inventory_rejected": 0}

    # -- workers --------------------------------------------------------------------------

    def register_worker(self, worker_id: str, node_id: str, data_addr: str, grpc_addr: str,
                        http_addr: str, segments: list[SegmentSpec], grant_key: bytes,
                        now: float, rdma: bool = False,
                        inventory: Sequence[InventoryEntry] = ()) -> Registration:
        """Adds a worker, adopting what is current of its inventory (recovery.py). A known id
        with the same segments is a restart: it keeps its replicas (the segment files kept
        their bytes) under its new addresses and grant key; with other segments its old
        replicas go first, as on death."""
        self._check_segments(worker_id, segments)
        old = self.workers.get(worker_id)
        if old is not None and _segment_signature(old.segments.values()) == \
                _segment_signature(segments):
            old.node_id, old.data_addr, old.grpc_addr, old.http_addr = \
                node_id, data_addr, grpc_addr, http_addr
            old.grant_key, old.rdma, old.last_heartbeat, old.registered_at = \
                grant_key, rdma, now, now
            old.updates.clear()
            old.update_seq, old.acked_seq, old.resync = 0, 0, False
            for pending in self.pending_frees:  # its inventory is the master's truth again
                if pending.worker_id == worker_id:
                    pending.after_seq = 0
            kept = self._inventory_of(worker_id)
            known = {(e.segment_id, e.offset, e.key, e.put_id) for e in kept}
            rejected = sum(1 for e in inventory
                           if (e.segment_id, e.offset, e.key, e.put_id) not in known)
            self.counters["inventory_rejected"] += rejected
            self.registering.setdefault(worker_id, now)
            return Registration(old, kept, adopted=0, rejected=rejected, restarted=True)
        if old is not None:
            self._drop_worker(worker_id, now)
        remembered = self._held_by_dead.pop(worker_id, None)
        if remembered is not None and remembered[0] == _segment_signature(segments):
            sent = {(e.segment_id, e.offset) for e in inventory}
            inventory = [*inventory, *(e for e in remembered[1]
                                       if (e.segment_id, e.offset) not in sent)]
        worker = WorkerInfo(
            worker_id=worker_id, node_id=node_id, data_addr=data_addr, grpc_addr=grpc_addr,
            http_addr=http_addr, grant_key=grant_key, last_heartbeat=now, registered_at=now,
            rdma=rdma,
            segments={
                spec.segment_id: Segment(
                    worker_id=worker_id, segment_id=spec.segment_id, tier=spec.tier,
                    size_bytes=spec.size_bytes, path=spec.path,
                    allocator=OffsetAllocator(spec.size_bytes))
                for spec in segments
            },
        )
        self.workers[worker_id] = worker
        adopted = self._adopt_inventory(worker, inventory, now)
        self._restore_held_ranges(worker, now)  # after adoption: those ranges are not free
        rejected = len(inventory) - len(adopted)
        self.counters["objects_adopted"] += len(adopted)
        self.counters["inventory_rejected"] += rejected
        self.registering.setdefault(worker_id, now)
        return Registration(worker, adopted, adopted=len(adopted), rejected=rejected,
                            restarted=False)

    def _restore_held_ranges(self, worker: WorkerInfo, now: float) -> None:
        """A worker back with the same segment files: ranges that a client may still read
        (through shm, under a live lease) or write (an old grant) are not handed out yet."""
        for held in self._held_after_drop.pop(worker.worker_id, []):
            segment = worker.segments.get(held.segment_id)
            if held.free_at <= now or segment is None:
                continue
            try:
                segment.allocator.reserve(held.offset, held.length)
            except ValueError:
                continue  # outside a smaller new segment: nothing there to protect
            self._add_pending_free(held)

    @staticmethod
    def _check_segments(worker_id: str, segments: list[SegmentSpec]) -> None:
        if not isinstance(worker_id, str) or not worker_id:
            raise InvalidArgumentError("worker_id must be a non-empty string")
        id_bytes = len(worker_id.encode())
        if id_bytes > MAX_WORKER_ID_BYTES:
            # every grant for it would fail to sign (or to verify): refused before it is placed on
            raise InvalidArgumentError(
                f"worker_id of {id_bytes} bytes; the limit is {MAX_WORKER_ID_BYTES}")
        if not segments:
            raise InvalidArgumentError(f"worker {worker_id} registers no segment")
        seen: set[int] = set()
        for spec in segments:
            if not isinstance(spec.size_bytes, int) or spec.size_bytes < 1:
                raise InvalidArgumentError(
                    f"segment {spec.segment_id} of {worker_id}: size {spec.size_bytes} must be > 0")
            if spec.tier not in TIER_NAMES:
                raise InvalidArgumentError(
                    f"segment {spec.segment_id} of {worker_id}: unknown tier {spec.tier}")
            if spec.segment_id in seen:
                raise InvalidArgumentError(
                    f"worker {worker_id} registers segment id {spec.segment_id} twice")
            seen.add(spec.segment_id)

    def _drop_worker(self, worker_id: str, now: float) -> list[str]:
        """Forget a worker and its replicas; the keys left with no replica (remembered in
        _lost, to adopt them again if the worker comes back), the others queued to heal. Its
        ranges that grants still cover (pending frees, leased or uncommitted replicas) are
        remembered in _held_after_drop, for the case that the worker registers again with
        the same files."""
        worker = self.workers.pop(worker_id)
        self.registering.pop(worker_id, None)
        held = [p for p in self.pending_frees if p.worker_id == worker_id]
        held.extend(self._forget_moves_of(worker_id, now))
        self.pending_frees = [p for p in self.pending_frees if p.worker_id != worker_id]
        lost: list[str] = []
        gone: list[InventoryEntry] = []  # what it held, for _held_by_dead
        for key, obj in list(self.objects.items()):
            kept = [r for r in obj.replicas if r.worker_id != worker_id]
            if len(kept) == len(obj.replicas):
                continue
            gone.extend(self._entries_on(obj, worker_id))
            free_at = self._grants_expire_at(obj)
            held.extend(PendingFree(r.worker_id, r.segment_id, r.offset, r.length, free_at)
                        for r in obj.replicas if r.worker_id == worker_id and free_at > 0)
            obj.replicas = kept
            if not kept:
                del self.objects[key]
                self._forget_pending_put(obj)
                lost.append(key)
                if obj.state == COMPLETE:
                    self._remember(self._lost, key, obj.put_id)
            elif obj.state == COMPLETE:
                self._queue_heal(obj)
        self._held_after_drop[worker_id] = held
        self._held_by_dead[worker_id] = (_segment_signature(worker.segments.values()),
                                         gone[:self.config.remembered_keys])
        self.counters["objects_lost"] += len(lost)
        return lost

    # -- validation of requests -----------------------------------------------------------

    def _check_batch(self, keys: Sequence[str]) -> None:
        if len(keys) > self.config.max_batch:
            raise InvalidArgumentError(
                f"batch of {len(keys)} keys is over the limit of {self.config.max_batch}")

    def _key_error(self, key: object) -> KeyResult | None:
        if not isinstance(key, str):
            return _fail(ErrorCode.INVALID_PARAMS,
                         f"key must be a string, got {type(key).__name__}")
        if not key:
            return _fail(ErrorCode.INVALID_PARAMS, "key is empty")
        try:
            n = len(key.encode("utf-8"))
        except UnicodeEncodeError:
            return _fail(ErrorCode.INVALID_PARAMS, "key is not valid UTF-8")
        if n > self.config.max_key_bytes:
            return _fail(ErrorCode.INVALID_PARAMS,
                         f"key is {n} bytes; the limit is {self.config.max_key_bytes}")
        return None

    # -- put ------------------------------------------------------------------------------

    def put_start(self, keys: Sequence[str], sizes: Sequence[int],
                  config: PlacementConfig | None, client_node_id: str,
                  now: float) -> list[KeyResult]:
        """Allocate replicas for each new key; first writer wins on existing keys."""
        config = config if config is not None else PlacementConfig()
        self._check_batch(keys)
        if len(keys) != len(sizes):
            raise InvalidArgumentError(f"{len(keys)} keys but {len(sizes)} sizes")
        if config.replica_num > MAX_REPLICA_NUM:
            raise InvalidArgumentError(
                f"replica_num {config.replica_num} is over the limit of {MAX_REPLICA_NUM}")
        results: list[KeyResult] = []
        failed_in_batch: dict[str, KeyResult] = {}
        # what making room evicts shows in `counters` (stats, metrics), not in a tick's report
        report = TickReport()
        batch_first = self._preferred(config.preferred_worker, client_node_id)
        for key, size in zip(keys, sizes):
            result = self._put_start_one(key, size, config, client_node_id, now,
                                         failed_in_batch, report, batch_first)
            if result.code != ErrorCode.OK and isinstance(key, str):
                failed_in_batch.setdefault(key, result)
            results.append(result)
        return results

    def _put_start_one(self, key: str, size: int, config: PlacementConfig,
                       client_node_id: str, now: float, failed_in_batch: dict[str, KeyResult],
                       report: TickReport, batch_first: WorkerInfo | None = None) -> KeyResult:
        error = self._key_error(key)
        if error is not None:
            return error
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            return _fail(ErrorCode.INVALID_PARAMS, f"size must be a positive int, got {size!r}")
        if key in self.objects:
            return _fail(ErrorCode.OBJECT_ALREADY_EXISTS, f"key {key!r} already exists")
        if key in failed_in_batch:
            # The first occurrence decides; "already exists" would pass a failure off as success.
            return dataclasses.replace(failed_in_batch[key])
        self._lost.pop(key, None)  # a new object under the key: a lost copy is stale now
        replica_num = max(1, config.replica_num)
        replicas = self._place(size, replica_num, config.preferred_worker, client_node_id,
                               batch_first)
        if len(replicas) < replica_num and self.registering:
            # a worker completing its registration may take it (or its other replicas): wait
            # for it, rather than evict, fail, or leave the object short of replicas for good
            joining = self._joining(size, now, {r.worker_id for r in replicas})
            if joining:
                for r in replicas:
                    self.workers[r.worker_id].segments[r.segment_id].allocator.free(r.offset)
                waited_s = now - min(self.registering[wid] for wid in joining)
                return KeyResult(code=int(ErrorCode.SPACE_BEING_FREED),
                                 message=f"waiting for {', '.join(joining)} to complete "
                                         f"its registration",
                                 retry_after_s=min(max(waited_s / 4, JOIN_RETRY_S), 0.5))
        wait_s = None
        if not replicas:
            wait_s = self._make_room(size, config.preferred_worker, client_node_id, now, report)
            if wait_s == 0.0:
                replicas = self._place(size, replica_num, config.preferred_worker,
                                       client_node_id)
        if not replicas:
            if wait_s is not None:
                return KeyResult(code=int(ErrorCode.SPACE_BEING_FREED),
                                 message=f"eviction is freeing room for {size} bytes",
                                 retry_after_s=max(wait_s, 0.001))
            largest = max((s.size_bytes for s in self._dram_segments()), default=0)
            return _fail(ErrorCode.NO_AVAILABLE_HANDLE,
                         f"no segment has room for {size} bytes and nothing is evictable "
                         f"(largest DRAM segment: {largest} bytes)")
        self.objects[key] = self._pending_puts[key] = ObjectMeta(
            key=key, size=size, state=PENDING, replicas=replicas, replica_num=replica_num,
            lease_until=0.0, soft_pin=config.soft_pin, hard_pin=config.hard_pin,
            last_access=now, put_started_at=now, put_id=self._next_put_id)
        self._next_put_id += 1
        return KeyResult(code=int(ErrorCode.OK), size=size, replicas=_copy_replicas(replicas),
                         put_id=self.objects[key].put_id)

    def _joining(self, size: int, now: float, holders: set[str]) -> list[str]:
        """Registering workers that could take a replica of size bytes once they heartbeat:
        not draining, not among holders, with a DRAM range that large free now, and
        registering for less than JOIN_WAIT_S (a worker that stays silent is waited for no
        longer: puts go on as if it were not there, well within a client's put_wait_s)."""
        wait_s = min(JOIN_WAIT_S, self.config.worker_ttl_s)
        joining = []
        for wid, since in self.registering.items():
            worker = self.workers[wid]
            if wid in holders or worker.draining or now - since >= wait_s:
                continue
            if any(s.tier == TIER_DRAM and s.allocator.largest_free_bytes
                   >= align_up(size, s.allocator.alignment) for s in worker.segments.values()):
                joining.append(wid)
        return sorted(joining)

    def put_end(self, keys: Sequence[str], now: float,
                put_ids: Sequence[int] | None = None) -> list[KeyResult]:
        """Make PENDING objects COMPLETE and visible; idempotent on COMPLETE ones.

        With put_ids, each key must still belong to the PutStart that returned that id: a
        writer whose put was revoked must not commit a newer writer's ranges."""
        def end(obj: ObjectMeta) -> KeyResult:
            if obj.state == PENDING:
                obj.state = COMPLETE
                self._forget_pending_put(obj)
                self._touch(obj, now)
                for replica in obj.replicas:
                    replica.state = COMPLETE
                self._note_committed(obj)
            return KeyResult(code=int(ErrorCode.OK), size=obj.size)
        return self._for_each_object(keys, end, put_ids)

    def put_revoke(self, keys: Sequence[str], now: float,
                   put_ids: Sequence[int] | None = None) -> list[KeyResult]:
        """Free and forget PENDING objects whose write failed (put_ids as for put_end)."""
        def revoke(obj: ObjectMeta) -> KeyResult:
            if obj.state != PENDING:
                return _fail(ErrorCode.INVALID_PARAMS, "object is committed; use remove")
            self._delete(obj, now)
            return KeyResult(code=int(ErrorCode.OK))
        return self._for_each_object(keys, revoke, put_ids)

    # -- reads ----------------------------------------------------------------------------

    def get_replicas(self, keys: Sequence[str], now: float,
                     copies: bool = True) -> list[KeyResult]:
        """COMPLETE replicas of each key, granting or extending its read lease.

        The hot path of every read: _for_each_object's loop written out here (without its
        put_id checks and per-key closure, and with _grant_lease, _touch and _note_read's
        test inlined: the calls were half its time). copies=False hands out the state's own
        Replica objects (and list), for a caller that only reads them before its next call
        into the state (the servicer, which encodes them at once): a copy per replica was a
        sixth of the call."""
        self._check_batch(keys)
        results = []
        objects = self.objects
        registering = self.registering
        lease_until = now + self.config.lease_ttl_s
        for key in keys:
            # a stored key passed _key_error when it was put (or adopted): only a miss checks
            obj = objects.get(key) if type(key) is str else None
            if obj is None or obj.state != COMPLETE:
                obj, error = self._lookup(key)
                results.append(error or _fail(ErrorCode.REPLICA_IS_NOT_READY,
                                              f"key {key!r} is being written"))
                continue
            # _grant_lease and _touch, written out
            if obj.lease_until < lease_until:
                obj.lease_until = lease_until
            obj.last_access = now
            objects[key] = objects.pop(key)
            replicas = obj.replicas
            dram = False  # _note_read's test, written out: it acts on objects on SSD only
            for r in replicas:
                if r.tier == TIER_DRAM:
                    dram = True
                if r.state != COMPLETE:
                    replicas = None  # a copy under way: hand out the complete ones only
            if not dram:
                self._note_read(obj, now)
            if replicas is None:
                replicas = [r for r in obj.replicas if r.state == COMPLETE]
            if registering:  # their grants would be refused for a moment: not handed out
                replicas = [r for r in replicas if r.worker_id not in registering]
                if not replicas:
                    results.append(_fail(ErrorCode.REPLICA_IS_NOT_READY,
                                         f"key {key!r}: its worker is completing registration"))
                    continue
            if copies:
                replicas = _copy_replicas(replicas)
            results.append(KeyResult(0, "", obj.size, replicas))
        return results

    def exists(self, keys: Sequence[str], now: float) -> list[KeyResult]:
        """OK for each COMPLETE key (and a lease, as a get tends to follow); else NOT_FOUND."""
        return self._for_each_object(keys, lambda obj: self._present(obj, now))

    def exists_prefix(self, keys: Sequence[str], now: float) -> tuple[int, KeyResult | None]:
        """How many keys from the first are all present, leasing each of those, and the result
        of the first that is not (NOT_FOUND or its error), None when all are. Keys past it are
        not looked at: they get no lease and no access."""
        self._check_batch(keys)
        for i, key in enumerate(keys):
            obj, error = self._lookup(key)
            result = error if error is not None else self._present(obj, now)
            if result.code:
                return i, result
        return len(keys), None

    def _present(self, obj: ObjectMeta, now: float) -> KeyResult:
        # A PENDING object is not visible yet: a get right after would not find it.
        if obj.state != COMPLETE:
            return _fail(ErrorCode.OBJECT_NOT_FOUND, f"key {obj.key!r} is being written")
        if self.registering and self._readable_replica(obj) is None:
            # as get_replicas: not readable for these milliseconds, so not present either
            return _fail(ErrorCode.REPLICA_IS_NOT_READY,
                         f"key {obj.key!r}: its worker is completing registration")
        self._grant_lease(obj, now)
        return KeyResult(code=int(ErrorCode.OK), size=obj.size)

    def _for_each_object(self, keys: Sequence[str], handle: Callable[[ObjectMeta], KeyResult],
                         put_ids: Sequence[int] | None = None) -> list[KeyResult]:
        """Validates the batch, then per key: its error (invalid, not found, another put's
        object) or handle(object)."""
        self._check_batch(keys)
        if put_ids is not None and len(put_ids) != len(keys):
            raise InvalidArgumentError(f"{len(keys)} keys but {len(put_ids)} put ids")
        results = []
        for i, key in enumerate(keys):
            obj, error = self._lookup(key)
            if error is None and put_ids is not None and put_ids[i] != obj.put_id:
                error = _fail(ErrorCode.OBJECT_NOT_FOUND,
                              f"key {key!r}: this put was revoked; the key belongs to another put")
            results.append(error if error is not None else handle(obj))
        return results

    def _grant_lease(self, obj: ObjectMeta, now: float) -> None:
        obj.lease_until = max(obj.lease_until, now + self.config.lease_ttl_s)
        self._touch(obj, now)

    def _touch(self, obj: ObjectMeta, now: float) -> None:
        """Marks an access: `objects` is kept least recently accessed first (tiering.py)."""
        obj.last_access = now
        self.objects[obj.key] = self.objects.pop(obj.key)

    def _lookup(self, key: str) -> tuple[ObjectMeta | None, KeyResult | None]:
        error = self._key_error(key)
        if error is not None:
            return None, error
        obj = self.objects.get(key)
        if obj is None:
            return None, _fail(ErrorCode.OBJECT_NOT_FOUND, f"key {key!r} not found")
        return obj, None

    # -- removal --------------------------------------------------------------------------

    def remove(self, keys: Sequence[str], force: bool, now: float) -> list[KeyResult]:
        """Forget COMPLETE objects; leased ones only with force (their ranges wait the lease)."""
        def remove_one(obj: ObjectMeta) -> KeyResult:
            if obj.state != COMPLETE:
                return _fail(ErrorCode.REPLICA_IS_NOT_READY, f"key {obj.key!r} is being written")
            if obj.lease_until > now and not force:
                return _fail(ErrorCode.OBJECT_HAS_LEASE,
                             f"key {obj.key!r} is leased for {obj.lease_until - now:.3f}s more")
            self._delete(obj, now)
            return KeyResult(code=int(ErrorCode.OK))
        for key in keys:  # a copy of one lost with a worker must not come back after this
            if isinstance(key, str):
                self._lost.pop(key, None)
        return self._for_each_object(keys, remove_one)

    def remove_all(self, force: bool, now: float) -> int:
        """Remove every COMPLETE object (leased ones only with force); how many went."""
        doomed = [obj for obj in self.objects.values()
                  if obj.state == COMPLETE and (force or obj.lease_until <= now)]
        for obj in doomed:
            self._delete(obj, now)
        self._lost.clear()
        return len(doomed)

    def _delete(self, obj: ObjectMeta, now: float) -> None:
        """Forgets obj; its ranges come free once no grant on them can be used (a move of
        it finishes on its own: finish_move finds the object gone)."""
        del self.objects[obj.key]
        self._forget_pending_put(obj)
        self._note_deleted(obj)
        free_at = self._grants_expire_at(obj)
        for replica in obj.replicas:
            self._release(replica, free_at, now, self._note_forgotten(obj, replica))

    def _release(self, replica: Replica, free_at: float, now: float,
                 after_seq: int = 0) -> None:
        """Frees a range now, or at free_at when a grant may still use it until then, and
        not before the holder has acknowledged inventory update after_seq (recovery.py)."""
        worker = self.workers.get(replica.worker_id)
        unacked = worker is not None and after_seq > worker.acked_seq \
            and self.config.reuse_after_inventory_ack
        if free_at > now or unacked:
            self._add_pending_free(PendingFree(
                worker_id=replica.worker_id, segment_id=replica.segment_id,
                offset=replica.offset, length=replica.length, free_at=free_at,
                after_seq=after_seq if unacked else 0))
        else:
            self._free_range(replica.worker_id, replica.segment_id, replica.offset)

    def _grants_expire_at(self, obj: ObjectMeta) -> float:
        """When no grant on obj's ranges can still be used: a reader may copy until its lease
        (plus margin) ends; an uncommitted put's writes may still arrive until its write grant
        expires. A committed object's writer is done, so only read grants count then."""
        # grants carry one margin for clock skew; holding a second one means a worker whose
        # clock runs behind by up to a margin still stops honouring them before reuse
        margin = 2 * self.config.grant_margin_s
        if obj.state == PENDING:
            return obj.put_started_at + self.config.put_timeout_s + margin
        return obj.lease_until + margin if obj.lease_until > 0 else 0.0

    def _forget_pending_put(self, obj: ObjectMeta) -> None:
        if self._pending_puts.get(obj.key) is obj:
            del self._pending_puts[obj.key]

    def _add_pending_free(self, pending: PendingFree) -> None:
        """pending_frees is kept in free_at order, so the tick and each heartbeat look only at
        the ranges whose grants have expired (tens of thousands can wait after a remove_all)."""
        bisect.insort(self.pending_frees, pending, key=_free_at)

    def _free_due_ranges(self, now: float, worker_id: str | None = None) -> int:
        """Frees the pending ranges whose grants have expired and whose removal their worker
        has acknowledged; how many. With worker_id: only that worker's that waited for an
        acknowledgement (the rest are the tick's)."""
        expired = bisect.bisect_right(self.pending_frees, now, key=_free_at)
        due, waiting = [], []
        for pending in self.pending_frees[:expired]:
            worker = self.workers[pending.worker_id]
            ready = pending.after_seq <= worker.acked_seq and (
                worker_id is None or (pending.worker_id == worker_id and pending.after_seq > 0))
            (due if ready else waiting).append(pending)
        if due:
            self.pending_frees[:expired] = waiting
            for pending in due:
                self._free_range(pending.worker_id, pending.segment_id, pending.offset)
        return len(due)

    def _free_range(self, worker_id: str, segment_id: int, offset: int) -> None:
        self.workers[worker_id].segments[segment_id].allocator.free(offset)

    # -- time -----------------------------------------------------------------------------

    def tick(self, now: float) -> TickReport:
        """Revoke stalled puts, bury silent workers, free ranges whose grants expired, give
        up on moves nobody answered, and evict from segments past the high watermark."""
        report = TickReport()
        self._abandon_stalled_moves(now, report)
        stalled = [obj for obj in self._pending_puts.values()
                   if now - obj.put_started_at > self.config.put_timeout_s]
        for obj in stalled:
            self._delete(obj, now)
            report.revoked_keys.append(obj.key)
        dead = [w.worker_id for w in self.workers.values()
                if now - w.last_heartbeat > self.config.worker_ttl_s]
        for worker_id in dead:
            report.lost_keys.extend(self._drop_worker(worker_id, now))
            report.dead_workers.append(worker_id)
        for worker_id, held in list(self._held_after_drop.items()):
            held = [p for p in held if p.free_at > now]
            if held:
                self._held_after_drop[worker_id] = held
            else:
                del self._held_after_drop[worker_id]
        report.freed_ranges = self._free_due_ranges(now)
        self._evict_over_watermark(now, report)
        self._plan_heals(now, report)
        return report

    # -- invariants and reporting ---------------------------------------------------------

    def validate(self) -> None:
        """Raise AssertionError on any broken cross-index invariant."""
        expected: dict[tuple[str, int], dict[int, int]] = {}
        assert self.registering.keys() <= self.workers.keys(), \
            f"unknown workers registering: {self.registering.keys() - self.workers.keys()}"
        for worker_id, worker in self.workers.items():
            assert worker.worker_id == worker_id, f"worker {worker.worker_id} under {worker_id}"
            for segment_id, seg in worker.segments.items():
                assert seg.segment_id == segment_id and seg.worker_id == worker_id, \
                    f"segment {seg.worker_id}/{seg.segment_id} under {worker_id}/{segment_id}"
                assert seg.allocator.size_bytes == seg.size_bytes, \
                    f"segment {worker_id}/{segment_id} allocator size differs"
                seg.allocator.validate()
                expected[(worker_id, segment_id)] = {}
        for key, obj in self.objects.items():
            self._validate_object(key, obj, expected)
        pending_puts = {key: obj for key, obj in self.objects.items() if obj.state == PENDING}
        assert pending_puts.keys() == self._pending_puts.keys() and all(
            self._pending_puts[key] is obj for key, obj in pending_puts.items()), \
            "the index of PENDING objects differs from the objects"
        for pending in self.pending_frees:
            self._expect_range(expected, pending.worker_id, pending.segment_id, pending.offset,
                               pending.length, f"pending free at {pending.free_at}")
        assert all(a.free_at <= b.free_at for a, b in zip(self.pending_frees,
                                                          self.pending_frees[1:])), \
            "pending frees out of free_at order"
        for move in self.moves.values():
            self._validate_move(move)
            self._expect_range(expected, move.dst.worker_id, move.dst.segment_id,
                               move.dst.offset, move.dst.length, f"target of move {move.move_id}")
        unsent = sum(1 for m in self.moves.values() if m.sent_at is None)
        assert unsent == self.unsent_moves, f"{unsent} unsent moves, counted {self.unsent_moves}"
        for (worker_id, segment_id), blocks in expected.items():
            allocated = self.workers[worker_id].segments[segment_id].allocator.allocated_blocks()
            assert allocated == blocks, (
                f"segment {worker_id}/{segment_id}: allocator holds {sorted(allocated.items())}, "
                f"replicas and pending frees account for {sorted(blocks.items())}")

    def _validate_object(self, key: str, obj: ObjectMeta,
                         expected: dict[tuple[str, int], dict[int, int]]) -> None:
        assert obj.key == key, f"object {obj.key!r} stored under {key!r}"
        assert obj.state in (PENDING, COMPLETE), f"{key!r}: bad state {obj.state}"
        assert obj.replicas, f"{key!r} has no replica"
        if obj.moving:
            assert any(m.key == key and m.put_id == obj.put_id for m in self.moves.values()), \
                f"{key!r} is moving without a move"
        workers = [r.worker_id for r in obj.replicas]
        assert len(set(workers)) == len(workers), f"{key!r} has two replicas on one worker"
        for replica in obj.replicas:
            assert replica.length == obj.size, \
                f"{key!r}: replica length {replica.length} != size {obj.size}"
            assert replica.state in (PENDING, COMPLETE), f"{key!r}: bad replica state"
            if obj.state == COMPLETE:
                assert replica.state == COMPLETE, f"{key!r} is COMPLETE with a PENDING replica"
            else:
                assert replica.state == PENDING, f"{key!r} is PENDING with a COMPLETE replica"
            seg = self.workers.get(replica.worker_id, None)
            seg = seg.segments.get(replica.segment_id) if seg is not None else None
            assert seg is not None and seg.tier == replica.tier, \
                f"{key!r}: replica on {replica.worker_id}/{replica.segment_id}, no such segment"
            self._expect_range(expected, replica.worker_id, replica.segment_id, replica.offset,
                               replica.length, f"replica of {key!r}")

    def _validate_move(self, move: Move) -> None:
        assert (move.src.worker_id != move.dst.worker_id) == (move.kind == REPLICATE), \
            f"{move.kind} move {move.move_id} from {move.src.worker_id} to {move.dst.worker_id}"
        assert move.dst.length == move.src.length, f"move {move.move_id} changes the length"
        obj = self._object_of(move)
        if obj is not None:
            assert obj.moving, f"{move.key!r} has move {move.move_id} but is not moving"
            assert sum(1 for m in self.moves.values()
                       if m.key == move.key and m.put_id == move.put_id) == 1, \
                f"{move.key!r} has two moves"

    def _expect_range(self, expected: dict[tuple[str, int], dict[int, int]], worker_id: str,
                      segment_id: int, offset: int, length: int, what: str) -> None:
        blocks = expected.get((worker_id, segment_id))
        assert blocks is not None, f"{what} is on unknown segment {worker_id}/{segment_id}"
        assert offset not in blocks, f"{what}: range {worker_id}/{segment_id}@{offset} used twice"
        alignment = self.workers[worker_id].segments[segment_id].allocator.alignment
        blocks[offset] = align_up(length, alignment)

    def stats(self) -> dict:
        """A JSON-able summary for /stats and the metrics endpoint."""
        tiers = {name: {"total_bytes": 0, "used_bytes": 0} for name in TIER_NAMES.values()}
        workers = []
        for worker in self.workers.values():
            segments = []
            for seg in worker.segments.values():
                used = seg.allocator.used_bytes
                tiers[TIER_NAMES[seg.tier]]["total_bytes"] += seg.size_bytes
                tiers[TIER_NAMES[seg.tier]]["used_bytes"] += used
                segments.append({"segment_id": seg.segment_id, "tier": seg.tier,
                                 "size_bytes": seg.size_bytes, "used_bytes": used,
                                 "fragmentation": seg.allocator.fragmentation})
            workers.append({"worker_id": worker.worker_id, "node_id": worker.node_id,
                            "data_addr": worker.data_addr, "draining": worker.draining,
                            "registering": worker.worker_id in self.registering,
                            "segments": segments})
        pending = 0
        replicas_per_tier = {tier: 0 for tier in TIER_NAMES}
        for obj in self.objects.values():  # one pass: it holds the master's lock
            pending += obj.state == PENDING
            for replica in obj.replicas:
                replicas_per_tier[replica.tier] += 1
        for tier, count in replicas_per_tier.items():
            tiers[TIER_NAMES[tier]]["replicas"] = count
        return {"objects": len(self.objects), "pending": pending,
                "pending_frees": len(self.pending_frees), "moves": len(self.moves),
                "heal_queue": len(self._heal_queue) + len(self._drain_queue),
                **self.counters, "workers": workers, "tiers": tiers}
