"""Freeing space: eviction at the high watermark and on a failed allocation, demotion of DRAM
replicas to their worker's SSD segment, promotion of hot SSD objects back to DRAM; and the
moves they plan, which recovery.py's copies to other workers (REPLICATE) share.

A mixin of MasterState, pure like it (time passed in). Moves are planned here and carried out
by the master's mover (master/mover.py), which asks the worker to copy, then calls
`finish_move`; until then the object keeps serving reads from its old replica, and the
target range is reserved so that nothing else lands there.

Victims are chosen least recently accessed first: `objects` is kept in access order (a touch
moves the key to the end), so the scan stops as soon as it has found enough.
"""
from __future__ import annotations

import dataclasses

from mooncake_master.allocator import align_up
from mooncake_master.model import (COMPLETE, DEMOTE, PROMOTE, REPLICATE, TIER_DRAM, TIER_SSD,
                                   Move, ObjectMeta, PendingFree, Replica, Segment, TickReport)

# outcomes the mover reports for a move
MOVE_DONE = "done"        # the worker copied the bytes
MOVE_FAILED = "failed"    # the worker answered that it did not (it writes nothing more)
MOVE_UNKNOWN = "unknown"  # no answer: the worker may write the target until its grant expires

# how soon a writer that got SPACE_BEING_FREED asks again while a demotion copies
MOVE_RETRY_S = 0.02
MIN_RETRY_S = 0.005
# a worker busy with inventory updates heartbeats, and so acknowledges, every 50 ms
# (worker/node.py BUSY_HEARTBEAT_S): a writer waiting for such a range asks a few times
ACK_RETRY_S = 0.02


def _replica_on(obj: ObjectMeta, seg: Segment) -> Replica | None:
    for replica in obj.replicas:
        if replica.worker_id == seg.worker_id and replica.segment_id == seg.segment_id:
            return replica
    return None


class Tiering:
    # -- eviction -------------------------------------------------------------------------

    def _evictable(self, obj: ObjectMeta, now: float) -> bool:
        """Leased, uncommitted, hard-pinned and moving objects stay where they are."""
        return (obj.state == COMPLETE and not obj.hard_pin and not obj.moving
                and obj.lease_until <= now)

    def _victims(self, seg: Segment, want_bytes: float,
                 now: float) -> list[tuple[ObjectMeta, Replica]]:
        """Replicas on seg to free for want_bytes: least recently accessed first, soft-pinned
        objects only once everything else on the segment is taken."""
        chosen, soft, total = [], [], 0
        for obj in self.objects.values():
            if total >= want_bytes:
                return chosen
            if not self._evictable(obj, now):
                continue
            replica = _replica_on(obj, seg)
            if replica is None:
                continue
            if obj.soft_pin:
                soft.append((obj, replica))
                continue
            chosen.append((obj, replica))
            total += replica.length
        for obj, replica in soft:
            if total >= want_bytes:
                break
            chosen.append((obj, replica))
            total += replica.length
        return chosen

    def _evict_from(self, seg: Segment, want_bytes: float, now: float,
                    report: TickReport) -> None:
        """Frees, or starts freeing, about want_bytes of seg: a DRAM replica is demoted to its
        worker's SSD while the SSD has room (making room there by LRU first), else dropped."""
        for obj, replica in self._victims(seg, want_bytes, now):
            if seg.tier == TIER_DRAM and self._demote(obj, replica, now, report):
                report.moves_planned += 1
            else:
                self._drop_replica(obj, replica, now, report)

    def _demote(self, obj: ObjectMeta, replica: Replica, now: float, report: TickReport) -> bool:
        worker = self.workers[replica.worker_id]
        for seg in worker.segments.values():
            if seg.tier != TIER_SSD or seg.size_bytes < obj.size:
                continue
            dst = self._allocate_in(seg, obj.size)
            if dst is None:  # the SSD tier evicts by LRU (drops: there is no tier below)
                self._evict_from(seg, obj.size, now, report)
                dst = self._allocate_in(seg, obj.size)
            if dst is not None:
                self._start_move(DEMOTE, obj, replica, dst, now)
                self.counters["demotions"] += 1
                return True
        return False

    def _drop_replica(self, obj: ObjectMeta, replica: Replica, now: float,
                      report: TickReport) -> None:
        """Forgets one replica; the object goes with its last one (it becomes a miss)."""
        self.counters["evicted_replicas"] += 1
        if len(obj.replicas) == 1:
            self._delete(obj, now)
            report.evicted_keys.append(obj.key)
            self.counters["evicted_objects"] += 1
            return
        obj.replicas = [r for r in obj.replicas if r is not replica]
        self._release(replica, self._grants_expire_at(obj), now,
                      self._note_forgotten(obj, replica))

    def _evict_over_watermark(self, now: float, report: TickReport) -> None:
        """Every segment whose use, less what is already leaving it, is past the high
        watermark frees eviction_ratio of its size."""
        leaving = None  # computed once a segment is over: it scans every pending free
        for worker in self.workers.values():
            if worker.worker_id in self.registering:
                continue  # its demotions would be refused until it holds its new key
            for seg in worker.segments.values():
                limit = self.config.high_watermark * seg.size_bytes
                if seg.allocator.used_bytes <= limit:
                    continue  # the usual tick
                if leaving is None:
                    leaving = self._leaving_bytes(now, float("inf"))
                used = seg.allocator.used_bytes - leaving.get((seg.worker_id, seg.segment_id), 0)
                if used > limit:
                    self._evict_from(seg, self.config.eviction_ratio * seg.size_bytes, now,
                                     report)

    def _leaving_bytes(self, now: float, within_s: float) -> dict[tuple[str, int], int]:
        """Bytes per (worker, segment) on their way out: demotions copying, and ranges that
        come free within within_s (once the grants on them expire)."""
        leaving: dict[tuple[str, int], int] = {}
        for pending in self.pending_frees:
            if pending.free_at - now <= within_s:
                at = (pending.worker_id, pending.segment_id)
                leaving[at] = leaving.get(at, 0) + pending.length
        for move in self.moves.values():
            if move.kind == REPLICATE or self._object_of(move) is None:
                continue  # a copy to another worker frees nothing; or its object went
            at = (move.src.worker_id, move.src.segment_id)
            leaving[at] = leaving.get(at, 0) + move.src.length
        return leaving

    def _make_room(self, size: int, preferred_worker: str, client_node_id: str,
                   now: float, report: TickReport) -> float | None:
        """After a placement found no room for size bytes: frees or starts freeing some.
        Returns 0.0 when room was freed now (place again), seconds to wait when room is on
        its way (a demotion copying, ranges waiting for old grants), None when nothing can
        be freed (NO_SPACE)."""
        seg = self._segment_to_evict(size, preferred_worker, client_node_id, now)
        if seg is not None:
            # a writer retrying while a demotion copies must not demote one more object per
            # retry: what already leaves soon (an eviction's own grants) counts
            soon = self._leaving_bytes(now, 2 * self.config.grant_margin_s)
            want = max(size, self.config.eviction_ratio * seg.size_bytes) \
                - soon.get((seg.worker_id, seg.segment_id), 0)
            free_before = seg.allocator.free_bytes
            if want > 0:
                self._evict_from(seg, want, now, report)
            if seg.allocator.free_bytes > free_before:
                return 0.0
        return self._room_coming_in_s(size, now)

    def _segment_to_evict(self, size: int, preferred_worker: str, client_node_id: str,
                          now: float) -> Segment | None:
        """The writer's preferred (local) DRAM segment when it has a victim, else the DRAM
        segment that holds the least recently accessed evictable object."""
        first = self._preferred(preferred_worker, client_node_id)
        if first is not None:
            for seg in first.segments.values():
                if seg.tier == TIER_DRAM and seg.size_bytes >= size \
                        and self._victims(seg, 1, now):
                    return seg
        for obj in self.objects.values():
            if not self._evictable(obj, now):
                continue
            for replica in obj.replicas:
                worker = self.workers[replica.worker_id]
                seg = worker.segments[replica.segment_id]
                if seg.tier == TIER_DRAM and seg.size_bytes >= size and self._takes_new(worker):
                    return seg  # (room freed where nothing new goes would be lost)
        return None

    def _room_coming_in_s(self, size: int, now: float) -> float | None:
        """How soon space may come free on a DRAM segment that could hold size bytes: a
        demotion in flight, a range waiting for the grants on it to expire, a lease running
        out on an object that may then be evicted; None when nothing but an explicit remove
        can free any (space freed where the object cannot fit is no reason to wait)."""
        def could_hold(worker_id: str, segment_id: int) -> bool:
            worker = self.workers[worker_id]
            seg = worker.segments[segment_id]
            return seg.tier == TIER_DRAM and seg.size_bytes >= size and self._takes_new(worker)
        if any(could_hold(m.src.worker_id, m.src.segment_id) for m in self.moves.values()
               if m.kind != REPLICATE):
            return MOVE_RETRY_S
        # a range waiting for its worker to acknowledge an inventory update comes free with
        # the heartbeat that brings the acknowledgement
        waits = [max(p.free_at - now, ACK_RETRY_S if p.after_seq else 0.0)
                 for p in self.pending_frees if could_hold(p.worker_id, p.segment_id)]
        waits.extend(obj.lease_until - now for obj in self.objects.values()
                     if obj.lease_until > now and obj.state == COMPLETE and not obj.hard_pin
                     and any(could_hold(r.worker_id, r.segment_id) for r in obj.replicas))
        return max(MIN_RETRY_S, min(waits)) if waits else None

    # -- promotion ------------------------------------------------------------------------

    def _note_read(self, obj: ObjectMeta, now: float) -> None:
        """Counts a read of an object held on SSD only; promotes it once read often enough."""
        if obj.moving:
            return
        for r in obj.replicas:  # a plain loop: this runs for every key of every read
            if r.tier == TIER_DRAM:
                return
        window = self.config.promotion_window_s
        obj.ssd_hits = [t for t in obj.ssd_hits if now - t <= window] + [now]
        if len(obj.ssd_hits) >= self.config.promotion_hits:
            self._promote(obj, now)

    def _promote(self, obj: ObjectMeta, now: float) -> None:
        """Copies an SSD replica to its worker's DRAM when that stays under the watermark
        (promotion never evicts: it would only push another object down)."""
        for replica in obj.replicas:
            if not self._takes_new(self.workers[replica.worker_id]):
                continue  # draining: its objects are on their way out; or not yet serving
            for seg in self.workers[replica.worker_id].segments.values():
                limit = self.config.high_watermark * seg.size_bytes
                needed = align_up(obj.size, seg.allocator.alignment)  # what allocate takes
                if seg.tier != TIER_DRAM or seg.allocator.used_bytes + needed > limit:
                    continue
                dst = self._allocate_in(seg, obj.size)
                if dst is not None:
                    self._start_move(PROMOTE, obj, replica, dst, now)
                    self.counters["promotions"] += 1
                    return

    # -- moves ----------------------------------------------------------------------------

    def _object_of(self, move: Move) -> ObjectMeta | None:
        """The object a move copies, while it lives: None once it was removed (or removed and
        written again: the same key, another put_id, another object)."""
        obj = self.objects.get(move.key)
        return obj if obj is not None and obj.put_id == move.put_id else None

    def _start_move(self, kind: str, obj: ObjectMeta, src: Replica, dst: Replica,
                    now: float) -> None:
        move = Move(self._next_move_id, kind, obj.key, obj.put_id, src, dst, now)
        self._next_move_id += 1
        self.moves[move.move_id] = move
        self.unsent_moves += 1
        obj.moving = True

    def take_moves(self, now: float) -> list[Move]:
        """The moves not handed to the mover yet (copies), now marked as sent."""
        if not self.unsent_moves:
            return []
        taken = []
        for move in self.moves.values():
            if move.sent_at is None:
                move.sent_at = now
                taken.append(dataclasses.replace(move, src=dataclasses.replace(move.src),
                                                 dst=dataclasses.replace(move.dst)))
        self.unsent_moves = 0
        return taken

    def finish_move(self, move_id: int, outcome: str, now: float) -> bool:
        """Swaps the copied replica in (MOVE_DONE; a REPLICATE copy is added instead), or gives
        the target range back. True when the object now lives in the new place."""
        move = self.moves.pop(move_id, None)
        if move is None:
            return False  # abandoned on timeout, or its worker was dropped
        obj = self._object_of(move)
        if obj is not None:
            obj.moving = False
        done = outcome == MOVE_DONE
        if move.kind == REPLICATE:
            kept = self._finish_replicate(obj, move.dst, done)
        else:
            kept = done and self._swap_in(obj, move, now)
        if kept:
            return True
        free_at = self._move_grant_expires_at(move) if outcome == MOVE_UNKNOWN else now
        self._release(move.dst, free_at, now)
        return False

    def _swap_in(self, obj: ObjectMeta | None, move: Move, now: float) -> bool:
        """Replaces the moved replica by its copy; False when the object or that replica is
        gone meanwhile."""
        index = next((i for i, r in enumerate(obj.replicas) if r is move.src), None) \
            if obj is not None else None
        if index is None:
            return False
        move.dst.state = COMPLETE
        obj.replicas[index] = move.dst
        obj.ssd_hits = []
        removed = self._note_forgotten(obj, move.src)
        self._note_inventory(obj, move.dst, removed=False)
        # readers holding the old range's grants finish before it is reused
        self._release(move.src, self._grants_expire_at(obj), now, removed)
        return True

    def _move_grant_expires_at(self, move: Move) -> float:
        sent = move.waiting_since
        return sent + self.config.move_timeout_s + 2 * self.config.grant_margin_s

    def _abandon_stalled_moves(self, now: float, report: TickReport) -> None:
        for move in [m for m in self.moves.values()
                     if now - m.waiting_since > self.config.move_timeout_s]:
            if move.sent_at is None:
                self.unsent_moves -= 1
            self.finish_move(move.move_id, MOVE_FAILED if move.sent_at is None else MOVE_UNKNOWN,
                             now)
            report.moves_abandoned += 1

    def _forget_moves_of(self, worker_id: str, now: float) -> list[PendingFree]:
        """Drops the moves from or to a worker being forgotten. Returns the target ranges on
        it that old grants may still write, for _held_after_drop; a target on another worker
        (a copy from the dropped one) is released once the move's write grant expires."""
        held = []
        for move in [m for m in self.moves.values()
                     if worker_id in (m.src.worker_id, m.dst.worker_id)]:
            del self.moves[move.move_id]
            if move.sent_at is None:
                self.unsent_moves -= 1
            obj = self._object_of(move)
            if obj is not None:
                obj.moving = False
                if move.kind == REPLICATE:
                    self._queue_heal(obj)  # from another source, or to another worker
            expires = self._move_grant_expires_at(move) if move.sent_at is not None else now
            dst = move.dst
            if dst.worker_id != worker_id:
                self._release(dst, expires, now)
            elif move.sent_at is not None:
                held.append(PendingFree(dst.worker_id, dst.segment_id, dst.offset, dst.length,
                                        expires))
        return held
