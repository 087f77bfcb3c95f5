"""The master's metadata entities (one dataclass each) and its settings; no behaviour.

state.py changes them, placement.py and tiering.py help it; everything here is plain data
so that validate() and tests can look at any of it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mooncake_master.allocator import OffsetAllocator

# Values of the proto enums Tier and ReplicaState.
TIER_DRAM = 1
TIER_SSD = 2
PENDING = 1
COMPLETE = 2

TIER_NAMES = {TIER_DRAM: "DRAM", TIER_SSD: "SSD"}
MAX_REPLICA_NUM = 64


@dataclass(slots=True)
class MasterConfig:
    lease_ttl_s: float = 10.0
    worker_ttl_s: float = 10.0
    put_timeout_s: float = 30.0
    # grants outlive leases and put timeouts by this much (two nodes' clocks differ); a range
    # is reused only once every grant on it has expired
    grant_margin_s: float = 2.0
    max_batch: int = 4096
    max_key_bytes: int = 4096
    placement_sample: int = 4
    # eviction (DESIGN.md 2): a segment past high_watermark of its size frees eviction_ratio
    high_watermark: float = 0.90
    eviction_ratio: float = 0.05
    # an object on SSD only that is read promotion_hits times within promotion_window_s
    # goes back to DRAM (when DRAM has room below the watermark)
    promotion_hits: int = 2
    promotion_window_s: float = 60.0
    # a move the worker has not answered within this is abandoned (its target range waits
    # for the move's write grant to expire before reuse)
    move_timeout_s: float = 30.0
    # re-replication (a dead worker's objects, a drain): copies in flight at once, so that
    # healing leaves the workers' bandwidth to clients
    heal_bytes_in_flight: int = 256 << 20
    heal_moves_in_flight: int = 64
    heal_attempts: int = 3          # failed copies of one object before it is given up
    # inventory updates a worker has not fetched (heartbeat replies carry them); past this the
    # master stops queueing and has the worker register again to take the whole inventory
    max_inventory_updates: int = 1_000_000
    updates_per_heartbeat: int = 100_000
    # objects lost with a worker (or adopted and later deleted) remembered, to re-adopt (or
    # refuse) them when an inventory brings them back
    remembered_keys: int = 1_000_000
    # a freed range of a committed object is reused only once its worker has acknowledged
    # the inventory update that removes the object (see PendingFree.after_seq). Off: reused
    # as soon as no grant covers it (for tests of placement and eviction that do not
    # heartbeat; a master restart could then adopt an old object over new bytes)
    reuse_after_inventory_ack: bool = True


@dataclass(slots=True)
class SegmentSpec:
    segment_id: int
    tier: int
    size_bytes: int
    path: str


@dataclass(slots=True)
class Segment:
    worker_id: str
    segment_id: int
    tier: int
    size_bytes: int
    path: str
    allocator: OffsetAllocator

    @property
    def free_ratio(self) -> float:
        return self.allocator.free_bytes / self.size_bytes


@dataclass(slots=True)
class WorkerInfo:
    worker_id: str
    node_id: str
    data_addr: str
    grpc_addr: str
    http_addr: str
    segments: dict[int, Segment]
    grant_key: bytes
    last_heartbeat: float
    registered_at: float
    rdma: bool = False          # serves RdmaConnect: clients may use the rdma transport
    draining: bool = False      # leaving: no new placements; its sole replicas are copied away
    drain_keys: dict[str, int] = field(default_factory=dict)  # key -> put_id to move off it
    # changes to its inventory not yet acknowledged (recovery.py), numbered from 1
    updates: list["InventoryUpdate"] = field(default_factory=list)
    update_seq: int = 0
    acked_seq: int = 0          # the last update it has applied (its heartbeats say)
    resync: bool = False        # too many updates queued: it must register again


@dataclass(slots=True)
class Replica:
    worker_id: str
    segment_id: int
    tier: int
    offset: int
    length: int
    state: int


@dataclass(slots=True)
class ObjectMeta:
    key: str
    size: int
    state: int
    replicas: list[Replica]
    replica_num: int
    lease_until: float
    soft_pin: bool
    hard_pin: bool
    last_access: float
    put_started_at: float
    put_id: int = 0  # ties PutEnd/PutRevoke to the PutStart that allocated the ranges
    moving: bool = False  # a demotion or promotion of one replica is under way
    ssd_hits: list[float] = field(default_factory=list)  # reads while on SSD only, for promotion
    heal_failures: int = 0  # re-replication copies of it that failed


DEMOTE = "demote"    # DRAM -> SSD of the same worker, to free DRAM
PROMOTE = "promote"  # SSD -> DRAM of the same worker, for an object read often
REPLICATE = "replicate"  # to another worker: heals a dead worker's loss, drains a leaving one


@dataclass(slots=True)
class Move:
    """A copy of one replica to another segment of its worker (DEMOTE, PROMOTE: the master
    swaps the replica when the worker reports it done) or to another worker (REPLICATE: the
    copy is added). `dst` is reserved in its allocator meanwhile."""
    move_id: int
    kind: str
    key: str
    put_id: int          # the object's incarnation: a re-put of the key is another object
    src: Replica
    dst: Replica
    created_at: float
    sent_at: float | None = None  # None: not handed to the mover yet (0.0 is a time)

    @property
    def waiting_since(self) -> float:
        """When its timeout started: handed to the mover, else planned."""
        return self.created_at if self.sent_at is None else self.sent_at

    @property
    def worker_id(self) -> str:
        """The worker asked to copy: the one holding the source."""
        return self.src.worker_id


@dataclass(slots=True)
class PlacementConfig:
    replica_num: int = 1
    preferred_worker: str = ""
    soft_pin: bool = False
    hard_pin: bool = False


@dataclass(slots=True)
class KeyResult:
    code: int = 0
    message: str = ""
    size: int = 0
    replicas: list[Replica] = field(default_factory=list)
    put_id: int = 0
    retry_after_s: float = 0.0  # with SPACE_BEING_FREED


@dataclass(slots=True)
class TickReport:
    revoked_keys: list[str] = field(default_factory=list)
    dead_workers: list[str] = field(default_factory=list)
    lost_keys: list[str] = field(default_factory=list)
    freed_ranges: int = 0
    evicted_keys: list[str] = field(default_factory=list)   # dropped to free space
    moves_planned: int = 0
    moves_abandoned: int = 0
    heals_planned: int = 0
    heals_given_up: int = 0     # no worker had room, or copies kept failing


@dataclass(slots=True)
class PendingFree:
    """A range of a deleted object, held until the last grant that covers it has expired."""
    worker_id: str
    segment_id: int
    offset: int
    length: int
    free_at: float
    # the worker's inventory update that removes the object that was here: the range waits
    # until the worker has acknowledged it, so that no inventory lists an old object over a
    # new one's bytes (a master restarting then would adopt the old key with the new bytes)
    after_seq: int = 0


@dataclass(slots=True)
class InventoryEntry:
    """A committed replica as a worker's inventory records it (proto InventoryEntry)."""
    key: str
    put_id: int
    segment_id: int
    offset: int
    size: int
    replica_num: int
    soft_pin: bool
    hard_pin: bool


@dataclass(slots=True)
class InventoryUpdate(InventoryEntry):
    """A change to a worker's inventory (proto InventoryUpdate): the entry it adds or removes,
    with its seq. One object, not an update holding an entry: the master queues one per
    commit and free, under the lock every call needs."""
    seq: int
    removed: bool

    @property
    def entry(self) -> InventoryEntry:
        return self


@dataclass(slots=True)
class Registration:
    """What register_worker answers: the worker's inventory from now on, and how the one it
    sent was taken."""
    worker: WorkerInfo
    inventory: list[InventoryEntry]
    adopted: int
    rejected: int
    restarted: bool  # a known worker back with the same segments: its replicas were kept


@dataclass(slots=True)
class DrainStatus:
    draining: bool
    objects_left: int
    bytes_left: int


@dataclass(slots=True)
class HeartbeatResult:
    registered: bool
    updates: list[InventoryUpdate] = field(default_factory=list)
    more: bool = False
    drain: DrainStatus | None = None
