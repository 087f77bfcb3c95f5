from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tier(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIER_UNSPECIFIED: _ClassVar[Tier]
    TIER_DRAM: _ClassVar[Tier]
    TIER_SSD: _ClassVar[Tier]

class ReplicaState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLICA_STATE_UNSPECIFIED: _ClassVar[ReplicaState]
    REPLICA_PENDING: _ClassVar[ReplicaState]
    REPLICA_COMPLETE: _ClassVar[ReplicaState]
TIER_UNSPECIFIED: Tier
TIER_DRAM: Tier
TIER_SSD: Tier
REPLICA_STATE_UNSPECIFIED: ReplicaState
REPLICA_PENDING: ReplicaState
REPLICA_COMPLETE: ReplicaState

class SegmentInfo(_message.Message):
    __slots__ = ("segment_id", "tier", "size_bytes", "path")
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    segment_id: int
    tier: Tier
    size_bytes: int
    path: str
    def __init__(self, segment_id: _Optional[int] = ..., tier: _Optional[_Union[Tier, str]] = ..., size_bytes: _Optional[int] = ..., path: _Optional[str] = ...) -> None: ...

class ReplicaDescriptor(_message.Message):
    __slots__ = ("worker_id", "segment_id", "tier", "offset", "length", "state", "data_addr", "node_id", "path", "segment_size", "grant", "grpc_addr", "rdma")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DATA_ADDR_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_SIZE_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    GRPC_ADDR_FIELD_NUMBER: _ClassVar[int]
    RDMA_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    segment_id: int
    tier: Tier
    offset: int
    length: int
    state: ReplicaState
    data_addr: str
    node_id: str
    path: str
    segment_size: int
    grant: bytes
    grpc_addr: str
    rdma: bool
    def __init__(self, worker_id: _Optional[str] = ..., segment_id: _Optional[int] = ..., tier: _Optional[_Union[Tier, str]] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., state: _Optional[_Union[ReplicaState, str]] = ..., data_addr: _Optional[str] = ..., node_id: _Optional[str] = ..., path: _Optional[str] = ..., segment_size: _Optional[int] = ..., grant: _Optional[bytes] = ..., grpc_addr: _Optional[str] = ..., rdma: bool = ...) -> None: ...

class ReplicaConfig(_message.Message):
    __slots__ = ("replica_num", "preferred_worker", "soft_pin", "hard_pin")
    REPLICA_NUM_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_WORKER_FIELD_NUMBER: _ClassVar[int]
    SOFT_PIN_FIELD_NUMBER: _ClassVar[int]
    HARD_PIN_FIELD_NUMBER: _ClassVar[int]
    replica_num: int
    preferred_worker: str
    soft_pin: bool
    hard_pin: bool
    def __init__(self, replica_num: _Optional[int] = ..., preferred_worker: _Optional[str] = ..., soft_pin: bool = ..., hard_pin: bool = ...) -> None: ...

class KeyStatus(_message.Message):
    __slots__ = ("key", "code", "message")
    KEY_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    key: str
    code: int
    message: str
    def __init__(self, key: _Optional[str] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class InventoryEntry(_message.Message):
    __slots__ = ("key", "put_id", "segment_id", "offset", "size", "replica_num", "soft_pin", "hard_pin")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PUT_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_NUM_FIELD_NUMBER: _ClassVar[int]
    SOFT_PIN_FIELD_NUMBER: _ClassVar[int]
    HARD_PIN_FIELD_NUMBER: _ClassVar[int]
    key: str
    put_id: int
    segment_id: int
    offset: int
    size: int
    replica_num: int
    soft_pin: bool
    hard_pin: bool
    def __init__(self, key: _Optional[str] = ..., put_id: _Optional[int] = ..., segment_id: _Optional[int] = ..., offset: _Optional[int] = ..., size: _Optional[int] = ..., replica_num: _Optional[int] = ..., soft_pin: bool = ..., hard_pin: bool = ...) -> None: ...

class InventoryUpdate(_message.Message):
    __slots__ = ("seq", "removed", "entry")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    seq: int
    removed: bool
    entry: InventoryEntry
    def __init__(self, seq: _Optional[int] = ..., removed: bool = ..., entry: _Optional[_Union[InventoryEntry, _Mapping]] = ...) -> None: ...

class DrainStatus(_message.Message):
    __slots__ = ("draining", "objects_left", "bytes_left")
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_LEFT_FIELD_NUMBER: _ClassVar[int]
    BYTES_LEFT_FIELD_NUMBER: _ClassVar[int]
    draining: bool
    objects_left: int
    bytes_left: int
    def __init__(self, draining: bool = ..., objects_left: _Optional[int] = ..., bytes_left: _Optional[int] = ...) -> None: ...

class RegisterWorkerRequest(_message.Message):
    __slots__ = ("worker_id", "node_id", "data_addr", "grpc_addr", "http_addr", "segments", "rdma", "inventory")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_ADDR_FIELD_NUMBER: _ClassVar[int]
    GRPC_ADDR_FIELD_NUMBER: _ClassVar[int]
    HTTP_ADDR_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    RDMA_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    node_id: str
    data_addr: str
    grpc_addr: str
    http_addr: str
    segments: _containers.RepeatedCompositeFieldContainer[SegmentInfo]
    rdma: bool
    inventory: _containers.RepeatedCompositeFieldContainer[InventoryEntry]
    def __init__(self, worker_id: _Optional[str] = ..., node_id: _Optional[str] = ..., data_addr: _Optional[str] = ..., grpc_addr: _Optional[str] = ..., http_addr: _Optional[str] = ..., segments: _Optional[_Iterable[_Union[SegmentInfo, _Mapping]]] = ..., rdma: bool = ..., inventory: _Optional[_Iterable[_Union[InventoryEntry, _Mapping]]] = ...) -> None: ...

class RegisterWorkerResponse(_message.Message):
    __slots__ = ("grant_key", "heartbeat_interval_ms", "master_id", "inventory", "adopted", "rejected")
    GRANT_KEY_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    MASTER_ID_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    ADOPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    grant_key: bytes
    heartbeat_interval_ms: int
    master_id: str
    inventory: _containers.RepeatedCompositeFieldContainer[InventoryEntry]
    adopted: int
    rejected: int
    def __init__(self, grant_key: _Optional[bytes] = ..., heartbeat_interval_ms: _Optional[int] = ..., master_id: _Optional[str] = ..., inventory: _Optional[_Iterable[_Union[InventoryEntry, _Mapping]]] = ..., adopted: _Optional[int] = ..., rejected: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("worker_id", "inventory_seq", "draining")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_SEQ_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    inventory_seq: int
    draining: bool
    def __init__(self, worker_id: _Optional[str] = ..., inventory_seq: _Optional[int] = ..., draining: bool = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("registered", "updates", "more", "drain")
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    registered: bool
    updates: _containers.RepeatedCompositeFieldContainer[InventoryUpdate]
    more: bool
    drain: DrainStatus
    def __init__(self, registered: bool = ..., updates: _Optional[_Iterable[_Union[InventoryUpdate, _Mapping]]] = ..., more: bool = ..., drain: _Optional[_Union[DrainStatus, _Mapping]] = ...) -> None: ...

class DeregisterRequest(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    def __init__(self, worker_id: _Optional[str] = ...) -> None: ...

class DeregisterResponse(_message.Message):
    __slots__ = ("objects_lost",)
    OBJECTS_LOST_FIELD_NUMBER: _ClassVar[int]
    objects_lost: int
    def __init__(self, objects_lost: _Optional[int] = ...) -> None: ...

class PutStartRequest(_message.Message):
    __slots__ = ("keys", "sizes", "config", "client_node_id")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SIZES_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[str]
    sizes: _containers.RepeatedScalarFieldContainer[int]
    config: ReplicaConfig
    client_node_id: str
    def __init__(self, keys: _Optional[_Iterable[str]] = ..., sizes: _Optional[_Iterable[int]] = ..., config: _Optional[_Union[ReplicaConfig, _Mapping]] = ..., client_node_id: _Optional[str] = ...) -> None: ...

class PutStartItem(_message.Message):
    __slots__ = ("status", "replicas", "put_id", "retry_after_ms")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    PUT_ID_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    status: KeyStatus
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaDescriptor]
    put_id: int
    retry_after_ms: int
    def __init__(self, status: _Optional[_Union[KeyStatus, _Mapping]] = ..., replicas: _Optional[_Iterable[_Union[ReplicaDescriptor, _Mapping]]] = ..., put_id: _Optional[int] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class PutStartResponse(_message.Message):
    __slots__ = ("items", "put_timeout_ms")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    PUT_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[PutStartItem]
    put_timeout_ms: int
    def __init__(self, items: _Optional[_Iterable[_Union[PutStartItem, _Mapping]]] = ..., put_timeout_ms: _Optional[int] = ...) -> None: ...

class PutFinishRequest(_message.Message):
    __slots__ = ("keys", "put_ids")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    PUT_IDS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[str]
    put_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, keys: _Optional[_Iterable[str]] = ..., put_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class KeysRequest(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, keys: _Optional[_Iterable[str]] = ...) -> None: ...

class KeysResponse(_message.Message):
    __slots__ = ("statuses",)
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    statuses: _containers.RepeatedCompositeFieldContainer[KeyStatus]
    def __init__(self, statuses: _Optional[_Iterable[_Union[KeyStatus, _Mapping]]] = ...) -> None: ...

class GetReplicasItem(_message.Message):
    __slots__ = ("status", "size", "replicas")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    status: KeyStatus
    size: int
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaDescriptor]
    def __init__(self, status: _Optional[_Union[KeyStatus, _Mapping]] = ..., size: _Optional[int] = ..., replicas: _Optional[_Iterable[_Union[ReplicaDescriptor, _Mapping]]] = ...) -> None: ...

class GetReplicasResponse(_message.Message):
    __slots__ = ("items", "lease_ttl_ms")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_MS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[GetReplicasItem]
    lease_ttl_ms: int
    def __init__(self, items: _Optional[_Iterable[_Union[GetReplicasItem, _Mapping]]] = ..., lease_ttl_ms: _Optional[int] = ...) -> None: ...

class ExistsResponse(_message.Message):
    __slots__ = ("statuses",)
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    statuses: _containers.RepeatedCompositeFieldContainer[KeyStatus]
    def __init__(self, statuses: _Optional[_Iterable[_Union[KeyStatus, _Mapping]]] = ...) -> None: ...

class ExistsPrefixResponse(_message.Message):
    __slots__ = ("present", "stopped_by")
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    STOPPED_BY_FIELD_NUMBER: _ClassVar[int]
    present: int
    stopped_by: KeyStatus
    def __init__(self, present: _Optional[int] = ..., stopped_by: _Optional[_Union[KeyStatus, _Mapping]] = ...) -> None: ...

class RemoveRequest(_message.Message):
    __slots__ = ("keys", "force")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[str]
    force: bool
    def __init__(self, keys: _Optional[_Iterable[str]] = ..., force: bool = ...) -> None: ...

class RemoveAllRequest(_message.Message):
    __slots__ = ("force",)
    FORCE_FIELD_NUMBER: _ClassVar[int]
    force: bool
    def __init__(self, force: bool = ...) -> None: ...

class RemoveAllResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: int
    def __init__(self, removed: _Optional[int] = ...) -> None: ...

class HelloRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HelloResponse(_message.Message):
    __slots__ = ("master_id", "meta_addr")
    MASTER_ID_FIELD_NUMBER: _ClassVar[int]
    META_ADDR_FIELD_NUMBER: _ClassVar[int]
    master_id: str
    meta_addr: str
    def __init__(self, master_id: _Optional[str] = ..., meta_addr: _Optional[str] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ("prefix", "limit", "start_after")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    START_AFTER_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    limit: int
    start_after: str
    def __init__(self, prefix: _Optional[str] = ..., limit: _Optional[int] = ..., start_after: _Optional[str] = ...) -> None: ...

class KeyListing(_message.Message):
    __slots__ = ("key", "size", "state", "tiers", "soft_pin", "hard_pin", "last_access_age_s")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    SOFT_PIN_FIELD_NUMBER: _ClassVar[int]
    HARD_PIN_FIELD_NUMBER: _ClassVar[int]
    LAST_ACCESS_AGE_S_FIELD_NUMBER: _ClassVar[int]
    key: str
    size: int
    state: ReplicaState
    tiers: _containers.RepeatedScalarFieldContainer[Tier]
    soft_pin: bool
    hard_pin: bool
    last_access_age_s: float
    def __init__(self, key: _Optional[str] = ..., size: _Optional[int] = ..., state: _Optional[_Union[ReplicaState, str]] = ..., tiers: _Optional[_Iterable[_Union[Tier, str]]] = ..., soft_pin: bool = ..., hard_pin: bool = ..., last_access_age_s: _Optional[float] = ...) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys", "truncated")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[KeyListing]
    truncated: bool
    def __init__(self, keys: _Optional[_Iterable[_Union[KeyListing, _Mapping]]] = ..., truncated: bool = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ("worker_id", "cancel")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    cancel: bool
    def __init__(self, worker_id: _Optional[str] = ..., cancel: bool = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("worker_id", "node_id", "data_addr", "segments", "registered", "rdma")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_ADDR_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    RDMA_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    node_id: str
    data_addr: str
    segments: _containers.RepeatedCompositeFieldContainer[SegmentInfo]
    registered: bool
    rdma: bool
    def __init__(self, worker_id: _Optional[str] = ..., node_id: _Optional[str] = ..., data_addr: _Optional[str] = ..., segments: _Optional[_Iterable[_Union[SegmentInfo, _Mapping]]] = ..., registered: bool = ..., rdma: bool = ...) -> None: ...

class RdmaConnectRequest(_message.Message):
    __slots__ = ("client_endpoint", "grant")
    CLIENT_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    client_endpoint: bytes
    grant: bytes
    def __init__(self, client_endpoint: _Optional[bytes] = ..., grant: _Optional[bytes] = ...) -> None: ...

class RdmaSegment(_message.Message):
    __slots__ = ("segment_id", "addr", "rkey", "size_bytes")
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    RKEY_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    segment_id: int
    addr: int
    rkey: int
    size_bytes: int
    def __init__(self, segment_id: _Optional[int] = ..., addr: _Optional[int] = ..., rkey: _Optional[int] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class RdmaConnectResponse(_message.Message):
    __slots__ = ("worker_endpoint", "segments")
    WORKER_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    worker_endpoint: bytes
    segments: _containers.RepeatedCompositeFieldContainer[RdmaSegment]
    def __init__(self, worker_endpoint: _Optional[bytes] = ..., segments: _Optional[_Iterable[_Union[RdmaSegment, _Mapping]]] = ...) -> None: ...

class MoveItem(_message.Message):
    __slots__ = ("src_segment_id", "src_offset", "dst_segment_id", "dst_offset", "length", "read_grant", "write_grant", "dst_data_addr")
    SRC_SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    SRC_OFFSET_FIELD_NUMBER: _ClassVar[int]
    DST_SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    DST_OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    READ_GRANT_FIELD_NUMBER: _ClassVar[int]
    WRITE_GRANT_FIELD_NUMBER: _ClassVar[int]
    DST_DATA_ADDR_FIELD_NUMBER: _ClassVar[int]
    src_segment_id: int
    src_offset: int
    dst_segment_id: int
    dst_offset: int
    length: int
    read_grant: bytes
    write_grant: bytes
    dst_data_addr: str
    def __init__(self, src_segment_id: _Optional[int] = ..., src_offset: _Optional[int] = ..., dst_segment_id: _Optional[int] = ..., dst_offset: _Optional[int] = ..., length: _Optional[int] = ..., read_grant: _Optional[bytes] = ..., write_grant: _Optional[bytes] = ..., dst_data_addr: _Optional[str] = ...) -> None: ...

class MoveRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[MoveItem]
    def __init__(self, items: _Optional[_Iterable[_Union[MoveItem, _Mapping]]] = ...) -> None: ...

class MoveResponse(_message.Message):
    __slots__ = ("statuses",)
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    statuses: _containers.RepeatedCompositeFieldContainer[KeyStatus]
    def __init__(self, statuses: _Optional[_Iterable[_Union[KeyStatus, _Mapping]]] = ...) -> None: ...
