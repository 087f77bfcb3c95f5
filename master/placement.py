"""Where new ranges go: the preferred (writer's own) worker first, the rest by free ratio
among a random sample of workers, so that a freshly joined empty worker does not attract
every write. Draining workers, and workers whose registration is not complete, get nothing
new. A mixin of MasterState: it reads `workers`, `registering`, `config` and `rng`, and
only allocates; deciding what to free when nothing fits is tiering.py's job."""
from __future__ import annotations

from mooncake_master.model import PENDING, TIER_DRAM, Replica, Segment, WorkerInfo


class Placement:
    def _dram_segments(self) -> list[Segment]:
        return [seg for worker in self.workers.values() for seg in worker.segments.values()
                if seg.tier == TIER_DRAM]

    @staticmethod
    def _free_ratio(worker: WorkerInfo) -> float:
        return max((s.free_ratio for s in worker.segments.values() if s.tier == TIER_DRAM),
                   default=-1.0)

    def _takes_new(self, worker: WorkerInfo) -> bool:
        """New ranges go to it: not draining, and registered with its key in use."""
        return not worker.draining and worker.worker_id not in self.registering

    @staticmethod
    def _has_dram(worker: WorkerInfo) -> bool:
        return any(s.tier == TIER_DRAM for s in worker.segments.values())

    @staticmethod
    def _allocate_in(seg: Segment, size: int) -> Replica | None:
        offset = seg.allocator.allocate(size)
        if offset is None:
            return None
        return Replica(worker_id=seg.worker_id, segment_id=seg.segment_id, tier=seg.tier,
                       offset=offset, length=size, state=PENDING)

    def _allocate_on(self, worker: WorkerInfo, size: int, tier: int = TIER_DRAM) -> Replica | None:
        segments = sorted((s for s in worker.segments.values() if s.tier == tier),
                          key=lambda s: (-s.free_ratio, s.segment_id))
        for seg in segments:
            replica = self._allocate_in(seg, size)
            if replica is not None:
                return replica
        return None

    def _preferred(self, preferred_worker: str, client_node_id: str) -> WorkerInfo | None:
        worker = self.workers.get(preferred_worker)
        if worker is not None and self._takes_new(worker):
            return worker
        if not client_node_id:
            return None
        local = [w for w in self.workers.values()
                 if w.node_id == client_node_id and self._has_dram(w) and self._takes_new(w)]
        if not local:
            return None
        return min(local, key=lambda w: (-self._free_ratio(w), w.worker_id))

    def _place(self, size: int, replica_num: int, preferred_worker: str,
               client_node_id: str, batch_first: WorkerInfo | None = None) -> list[Replica]:
        """Up to replica_num PENDING replicas on distinct workers, preferred (local) one first.

        batch_first: the preferred worker chosen once for a whole put batch (put_start), so
        that a batch's objects share a worker while it has room: reading them back together
        is then one exchange with one worker, not one per local worker (with two workers on
        the writer's node, choosing the freest per key alternated between them)."""
        replicas: list[Replica] = []
        first = batch_first
        replica = None if first is None else self._allocate_on(first, size)
        if replica is None:  # no batch choice, or it is full: the freest local worker now
            first = self._preferred(preferred_worker, client_node_id)
            if first is not None and first is not batch_first:
                replica = self._allocate_on(first, size)
        if replica is not None:
            replicas.append(replica)
        if len(replicas) == replica_num:
            return replicas  # the common case (one replica, room on the writer's node): no scan
        # Sorted so that the injected rng alone decides the sample.
        rest = sorted(wid for wid, w in self.workers.items()
                      if (first is None or wid != first.worker_id) and self._has_dram(w)
                      and self._takes_new(w))
        sample_size = max(1, self.config.placement_sample)
        while len(replicas) < replica_num and rest:
            sample = self.rng.sample(rest, min(sample_size, len(rest)))
            sampled = set(sample)
            rest = [wid for wid in rest if wid not in sampled]
            sample.sort(key=lambda wid: -self._free_ratio(self.workers[wid]))
            for wid in sample:
                if len(replicas) == replica_num:
                    break
                replica = self._allocate_on(self.workers[wid], size)
                if replica is not None:
                    replicas.append(replica)
        return replicas
