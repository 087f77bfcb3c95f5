"""Surviving failures: worker inventories, adoption after restarts, re-replication, drains.

A mixin of MasterState, pure like it (time passed in). DESIGN.md 3:
- Each worker keeps an inventory of the committed replicas it holds. The master queues every
  change to it (a commit, a removal, a move) and hands the queue out in heartbeat replies;
  the worker acknowledges by sequence number.
- A worker that registers again with the same segments (a restart within worker_ttl) keeps
  its replicas: the master's own metadata is the truth, and the inventory it answers is
  rebuilt from it. A worker the master does not know (after a master restart or fail-over,
  or one declared dead that comes back) brings its inventory, and the master adopts what is
  still current: an object it does not know that an earlier master committed, an object it
  knows under the same put id that lacks replicas, an object lost with a worker that was
  not written again since. Anything else is stale and refused, never served.
- Objects that lost a replica with a dead worker are copied to another worker up to their
  replica_num (REPLICATE moves, a bounded number of bytes in flight). A draining worker gets
  no new placements, and the objects only it holds are copied away first.

Put ids identify an object's incarnation across masters: a master starts its ids at
`epoch_start` (the wall clock in microseconds in production), above any earlier master's, so
an id below it was issued before this master started.
"""
from __future__ import annotations

from collections.abc import Iterable

from mooncake_master.model import (COMPLETE, MAX_REPLICA_NUM, REPLICATE, TIER_DRAM, TIER_SSD,
                                   DrainStatus, HeartbeatResult, InventoryEntry,
                                   InventoryUpdate, ObjectMeta, Replica, TickReport, WorkerInfo)


class Recovery:
    # -- inventory updates ----------------------------------------------------------------

    def _note_inventory(self, obj: ObjectMeta, replica: Replica, removed: bool) -> int:
        """Queues one change to the inventory of the worker holding replica; its seq (0 when
        none was queued: the worker is gone, or will take its whole inventory anyway)."""
        worker = self.workers.get(replica.worker_id)
        if worker is None or worker.resync:
            return 0
        if len(worker.updates) >= self.config.max_inventory_updates:
            # it stopped fetching them: it registers again and takes the whole inventory
            worker.updates.clear()
            worker.resync = True
            return 0
        worker.update_seq = seq = worker.update_seq + 1
        worker.updates.append(_entry(obj, replica, InventoryUpdate, seq, removed))
        return seq

    def _note_committed(self, obj: ObjectMeta) -> None:
        draining = False  # a loop, not any(): a generator per commit costs as much as the rest
        for replica in obj.replicas:
            self._note_inventory(obj, replica, removed=False)
            draining = draining or self.workers[replica.worker_id].draining
        if draining:
            self._queue_heal(obj, urgent=True)  # a put placed just before the drain began

    def _note_forgotten(self, obj: ObjectMeta, replica: Replica) -> int:
        """A replica leaves the metadata: committed ones leave their worker's inventory.
        The removal's seq: its range is reused only once the worker has it (PendingFree)."""
        if replica.state == COMPLETE:
            return self._note_inventory(obj, replica, removed=True)
        return 0

    @staticmethod
    def _entries_on(obj: ObjectMeta, worker_id: str) -> list[InventoryEntry]:
        """obj's committed replicas on the worker, as its inventory holds them."""
        return [_entry(obj, r) for r in obj.replicas
                if r.worker_id == worker_id and r.state == COMPLETE]

    def _inventory_of(self, worker_id: str) -> list[InventoryEntry]:
        """Every committed replica on the worker, as its inventory should hold it
        (O(objects): only when a known worker registers again)."""
        return [e for obj in self.objects.values() for e in self._entries_on(obj, worker_id)]

    # -- heartbeats -----------------------------------------------------------------------

    def heartbeat(self, worker_id: str, now: float, acked_seq: int = 0,
                  draining: bool = False) -> HeartbeatResult:
        """Refreshes a worker's liveness and hands it the inventory updates after acked_seq;
        registered=False when it must register (again): unknown, or too far behind."""
        worker = self.workers.get(worker_id)
        if worker is None or worker.resync:
            return HeartbeatResult(registered=False)
        worker.last_heartbeat = now
        # it heartbeats only once it holds the key its registration's answer carried
        self.registering.pop(worker_id, None)
        if acked_seq > worker.acked_seq:
            worker.acked_seq = min(acked_seq, worker.update_seq)
            # at once: a writer may wait for that room, and the tick is 100 ms away
            self._free_due_ranges(now, worker.worker_id)
        if draining and not worker.draining:
            self._start_drain(worker)
        updates = worker.updates
        if updates and updates[0].seq <= acked_seq:
            # seqs are consecutive: the acknowledged ones are a prefix
            del updates[:min(len(updates), acked_seq - updates[0].seq + 1)]
        cap = self.config.updates_per_heartbeat
        drain = self.drain_status(worker) if worker.draining else None
        return HeartbeatResult(registered=True, updates=updates[:cap], more=len(updates) > cap,
                               drain=drain)

    # -- registration ---------------------------------------------------------------------


    def _adopt_inventory(self, worker: WorkerInfo, entries: Iterable[InventoryEntry],
                         now: float) -> list[InventoryEntry]:
        """Adopts what is current of a registering worker's inventory (in offset order, which
        keeps each reservation O(1)); the entries adopted."""
        adopted = []
        for entry in sorted(entries, key=lambda e: (e.segment_id, e.offset)):
            if self._adopt(worker, entry, now):
                adopted.append(entry)
        return adopted

    def _adopt(self, worker: WorkerInfo, e: InventoryEntry, now: float) -> bool:
        seg = worker.segments.get(e.segment_id)
        if seg is None or not isinstance(e.size, int) or e.size < 1 \
                or e.offset + e.size > seg.size_bytes or self._key_error(e.key) is not None:
            return False
        obj = self.objects.get(e.key)
        if obj is not None:
            # a copy of an object this master knows: the same incarnation, short of replicas
            if obj.put_id != e.put_id or obj.state != COMPLETE or obj.size != e.size \
                    or len(obj.replicas) >= obj.replica_num \
                    or any(r.worker_id == worker.worker_id for r in obj.replicas):
                return False
        elif e.put_id >= self.epoch_start:
            # this master's own object, gone meanwhile: back only if it was lost with a
            # worker (a remove, an eviction or a new put of the key made this copy stale)
            if self._lost.get(e.key) != e.put_id:
                return False
        elif (e.key, e.put_id) in self._buried:
            return False  # an earlier master's object, adopted here and deleted since
        try:
            seg.allocator.reserve(e.offset, e.size)
        except ValueError:
            return False  # overlaps another entry or a range still held: not trusted
        replica = Replica(worker.worker_id, seg.segment_id, seg.tier, e.offset, e.size, COMPLETE)
        if obj is not None:
            obj.replicas.append(replica)
            return True
        self._lost.pop(e.key, None)
        obj = ObjectMeta(key=e.key, size=e.size, state=COMPLETE, replicas=[replica],
                         replica_num=max(1, min(e.replica_num, MAX_REPLICA_NUM)),
                         lease_until=0.0, soft_pin=e.soft_pin, hard_pin=e.hard_pin,
                         last_access=now, put_started_at=now, put_id=e.put_id)
        self.objects[e.key] = obj
        self._next_put_id = max(self._next_put_id, e.put_id + 1)
        if obj.replica_num > 1:
            # its other replicas may be on workers that have not registered yet: healing
            # waits for the rebuild grace (tick) before it copies
            self._queue_heal(obj)
        return True

    def _remember(self, memory: dict, key, value) -> None:
        """Bounded memory of lost/buried objects: the oldest go first (forgetting one only
        means that a copy of it that comes back later is not adopted)."""
        memory.pop(key, None)
        memory[key] = value
        if len(memory) > self.config.remembered_keys:
            del memory[next(iter(memory))]

    def _note_deleted(self, obj: ObjectMeta) -> None:
        """An object leaves the metadata for good (remove, eviction, revoke)."""
        if obj.put_id < self.epoch_start and obj.state == COMPLETE:
            self._remember(self._buried, (obj.key, obj.put_id), True)

    # -- re-replication -------------------------------------------------------------------

    def _queue_heal(self, obj: ObjectMeta, urgent: bool = False) -> None:
        queue = self._drain_queue if urgent else self._heal_queue
        queue[obj.key] = obj.put_id

    def _healthy_replicas(self, obj: ObjectMeta) -> int:
        return sum(1 for r in obj.replicas
                   if r.state == COMPLETE and not self.workers[r.worker_id].draining)

    def _plan_heals(self, now: float, report: TickReport) -> None:
        """Starts copies for objects short of replicas (drained ones first), within the
        bytes-in-flight budget."""
        if self._heal_after is None:
            self._heal_after = now + self.config.worker_ttl_s  # rebuild grace after a start
        # drains go at once; healing waits out the grace (a second replica may be on a
        # worker that has not registered again yet)
        queues = [self._drain_queue] + ([self._heal_queue] if now >= self._heal_after else [])
        if not any(queues):
            return
        copying = [m for m in self.moves.values() if m.kind == REPLICATE]
        budget = self.config.heal_bytes_in_flight - sum(m.src.length for m in copying)
        slots = self.config.heal_moves_in_flight - len(copying)
        for queue in queues:
            busy: list[tuple[str, int]] = []
            while queue and budget > 0 and slots > 0:
                key = next(iter(queue))
                put_id = queue.pop(key)
                obj = self.objects.get(key)
                if obj is None or obj.put_id != put_id or obj.state != COMPLETE:
                    continue
                if obj.moving or (self._readable_replica(obj) is None and any(
                        r.worker_id in self.registering for r in obj.replicas)):
                    # after its demotion or copy, or once a holder completes its
                    # registration: the next pass
                    busy.append((key, put_id))
                    continue
                if self._healthy_replicas(obj) >= obj.replica_num:
                    continue
                if self._start_heal(obj, now):
                    report.heals_planned += 1
                    budget -= obj.size
                    slots -= 1
                else:
                    report.heals_given_up += 1
                    self.counters["heals_given_up"] += 1
            queue.update(busy)

    def _start_heal(self, obj: ObjectMeta, now: float) -> bool:
        """One REPLICATE move of obj to a worker without a replica of it; False when no
        worker has room (healing does not evict)."""
        src = self._readable_replica(obj)
        if src is None:
            return False
        dst = self._heal_target(obj)
        if dst is None:
            return False
        self._start_move(REPLICATE, obj, src, dst, now)
        self.counters["replications"] += 1
        return True

    def _readable_replica(self, obj: ObjectMeta) -> Replica | None:
        """The replica a copy of obj reads: complete, on a worker that holds its grant key
        (not registering), DRAM before SSD, a draining worker last. None when no replica
        can be read now."""
        sources = [r for r in obj.replicas
                   if r.state == COMPLETE and r.worker_id not in self.registering]
        return min(sources, key=lambda r: (r.tier != TIER_DRAM,
                                           self.workers[r.worker_id].draining), default=None)

    def _heal_target(self, obj: ObjectMeta) -> Replica | None:
        """A range on a worker holding no replica of obj and not draining: DRAM below the
        high watermark first, then SSD; the emptiest segment first."""
        holders = {r.worker_id for r in obj.replicas}
        for tier in (TIER_DRAM, TIER_SSD):
            segments = [seg for w in self.workers.values()
                        if w.worker_id not in holders and self._takes_new(w)
                        for seg in w.segments.values() if seg.tier == tier]
            segments.sort(key=lambda s: (-s.free_ratio, s.worker_id, s.segment_id))
            for seg in segments:
                if tier == TIER_DRAM and seg.allocator.used_bytes + obj.size \
                        > self.config.high_watermark * seg.size_bytes:
                    continue  # healing into a full DRAM would only evict something else
                dst = self._allocate_in(seg, obj.size)
                if dst is not None:
                    return dst
        return None

    def _finish_replicate(self, obj: ObjectMeta | None, dst: Replica, done: bool) -> bool:
        """A REPLICATE move ended: adds the copy, or counts the failure and tries again
        later. False when the copy is not kept (the caller frees its range)."""
        if obj is None:
            return False
        if not done:
            obj.heal_failures += 1
            if obj.heal_failures < self.config.heal_attempts:
                self._queue_heal(obj)
            else:
                self.counters["heals_given_up"] += 1
            return False
        if obj.state != COMPLETE or self._healthy_replicas(obj) >= obj.replica_num \
                or any(r.worker_id == dst.worker_id for r in obj.replicas):
            return False  # adopted meanwhile from a returning worker: enough copies
        dst.state = COMPLETE
        obj.replicas.append(dst)
        obj.heal_failures = 0
        self._note_inventory(obj, dst, removed=False)
        if self._healthy_replicas(obj) < obj.replica_num:
            self._queue_heal(obj)
        return True

    # -- drains and departures ------------------------------------------------------------

    def drain(self, worker_id: str, cancel: bool = False) -> DrainStatus | None:
        """Starts (or cancels) taking a worker out of service; its progress. None: unknown."""
        worker = self.workers.get(worker_id)
        if worker is None:
            return None
        if cancel:
            worker.draining = False
            worker.drain_keys.clear()
        elif not worker.draining:
            self._start_drain(worker)
        return self.drain_status(worker)

    def _start_drain(self, worker: WorkerInfo) -> None:
        """No new placements on it; the objects only draining workers hold are queued to be
        copied away first (one pass over the objects, once per drain)."""
        worker.draining = True
        for obj in self.objects.values():
            if any(r.worker_id == worker.worker_id for r in obj.replicas):
                worker.drain_keys[obj.key] = obj.put_id
                if self._healthy_replicas(obj) == 0:
                    self._queue_heal(obj, urgent=True)

    def drain_status(self, worker: WorkerInfo) -> DrainStatus:
        """Objects whose every replica is on draining workers, of those the worker held when
        its drain began (the ones that are gone or safe are dropped from the list)."""
        left = bytes_left = 0
        for key, put_id in list(worker.drain_keys.items()):
            obj = self.objects.get(key)
            if obj is None or obj.put_id != put_id \
                    or not any(r.worker_id == worker.worker_id for r in obj.replicas):
                del worker.drain_keys[key]
            elif self._healthy_replicas(obj) == 0:
                left += 1
                bytes_left += obj.size
            else:
                del worker.drain_keys[key]  # a copy lives on a worker that stays
        return DrainStatus(draining=worker.draining, objects_left=left, bytes_left=bytes_left)

    def deregister_worker(self, worker_id: str, now: float) -> list[str] | None:
        """A worker leaves (after its drain): forgotten as if dead, its objects healed. The
        keys lost with it (None: unknown worker)."""
        if worker_id not in self.workers:
            return None
        return self._drop_worker(worker_id, now)


def _entry(obj: ObjectMeta, replica: Replica, kind: type = InventoryEntry,
           *update) -> InventoryEntry:
    """The replica as its worker's inventory records it; with kind=InventoryUpdate and
    `update` (seq, removed), the queued change that carries it."""
    return kind(obj.key, obj.put_id, replica.segment_id, replica.offset, obj.size,
                obj.replica_num, obj.soft_pin, obj.hard_pin, *update)
