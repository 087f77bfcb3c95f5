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


DEMOTE = "demote"    # DRAM -> SSD of the same worker, to free DRAM
PROMOTE = "promote"  # SSD -> DRAM of the same worker, for an object read often


@dataclass(slots=True)
class Move:
    """A copy of one replica to another segment of its worker; the master swaps the replica
    when the worker reports it done. `dst` is reserved in its allocator meanwhile."""
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


@dataclass(slots=True)
class PendingFree:
    """A range of a deleted object, held until the last grant that covers it has expired."""
    worker_id: str
    segment_id: int
    offset: int
    length: int
    free_at: float
