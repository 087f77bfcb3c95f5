"""`MooncakeDistributedStore`: Mooncake's Python store class (mooncake.store), answered by our
Client, so that SGLang's, vLLM's and LMCache's Mooncake integrations run on this store as they
are. Mooncake's names, signatures and return conventions: writes return 0 or a negative
Mooncake code (-200 when out of space), reads the byte count or a negative code, `get` b""
on a miss, `is_exist` 1/0/negative.

This class is the outermost "never raise into the inference server" wrapper (STYLE.md 10):
every MooncakeError becomes its code here, in `_answer`, which logs it and counts it in
`error_counts`. A miss is not logged. Errors of the caller's own making that Mooncake raises
too (a wrong argument type) still raise.
"""
from __future__ import annotations

import collections
import ctypes
import functools
import logging
import operator
import threading
from typing import Sequence

from mooncake_client.client import ONE_KEY_FAULTS, BatchError, Client, ReplicaConfig, ReplicaInfo
from mooncake_client.shared_client import NotSetUpError, SharedClient
from mooncake_client.compat.config import (MooncakeConfig, master_spec, parse_size,
                                           setting_number, transports_for)
from mooncake_proto.errors import ErrorCode, InvalidArgumentError, MooncakeError

log = logging.getLogger("mooncake_client.compat")

OK = 0
INVALID_PARAMS = int(ErrorCode.INVALID_PARAMS)
OBJECT_NOT_FOUND = int(ErrorCode.OBJECT_NOT_FOUND)
_QUIET_CODES = (OBJECT_NOT_FOUND, int(ErrorCode.REPLICA_IS_NOT_READY))
# health_check's answers, as Mooncake's
HEALTHY, NOT_INITIALIZED, MASTER_UNREACHABLE = 0, 1, 2


class ReplicateConfig:
    """Mooncake's replica settings, set as attributes (its constructor takes no arguments).
    preferred_segment(s) name a worker (a worker id, as `batch_get_replica_desc` reports
    it); this store's own `get_hostname()` means "this node", which is where writes go
    first anyway."""

    def __init__(self):
        self.replica_num = 1
        self.with_soft_pin = False
        self.with_hard_pin = False
        self.preferred_segments: list[str] = []
        self.preferred_segment = ""
        self.prefer_alloc_in_same_node = False

    def __str__(self) -> str:
        return (f"ReplicateConfig: {{ replica_num: {self.replica_num}, with_soft_pin: "
                f"{int(self.with_soft_pin)}, with_hard_pin: {int(self.with_hard_pin)}, "
                f"preferred_segments: [{', '.join(self.preferred_segments)}], "
                f"preferred_segment: {self.preferred_segment}, "
                f"prefer_alloc_in_same_node: {int(self.prefer_alloc_in_same_node)} }}")


class BufferHandle:
    """Mooncake's BufferHandle: ptr() and size() here, len() and the buffer protocol from
    the ctypes array each handle is (buffer_handle)."""
    __slots__ = ()

    def ptr(self) -> int:
        return ctypes.addressof(self)

    def size(self) -> int:
        return len(self)


@functools.lru_cache(maxsize=256)
def _handle_type(size: int) -> type:
    # a ctypes array type per length: KV pages come in a handful of sizes
    return type("BufferHandle", (BufferHandle, ctypes.Array),
                {"_type_": ctypes.c_ubyte, "_length_": size})


def buffer_handle(data: bytes):
    """A BufferHandle over a fresh bytes object: ptr(), size(), len() and the buffer protocol
    (bytes(h), memoryview(h), numpy.frombuffer(h)) on its storage, without a copy. The handle
    keeps the bytes alive; nobody else holds them, so writing through it is safe."""
    address = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value if data else 0
    handle = _handle_type(len(data)).from_address(address) if data else _handle_type(0)()
    handle.owner = data
    return handle


class MemoryDescriptor:
    """Where a DRAM replica lies: `buffer_descriptor` as Mooncake's (size, address, endpoint)."""

    def __init__(self, replica: ReplicaInfo):
        self.buffer_descriptor = BufferDescriptor(replica.length, replica.offset,
                                                  replica.data_addr)


class BufferDescriptor:
    def __init__(self, size: int, buffer_address: int, transport_endpoint: str):
        self.size, self.buffer_address = size, buffer_address
        self.transport_endpoint = transport_endpoint

    def __repr__(self) -> str:
        return (f"<Descriptor size={self.size} buffer_address={self.buffer_address} "
                f"transport_endpoint={self.transport_endpoint}>")


class DiskDescriptor:
    """Where an SSD replica lies: in the worker's SSD segment file, at an offset."""

    def __init__(self, replica: ReplicaInfo):
        self.file_path = f"{replica.worker_id}:ssd/{replica.segment_id}@{replica.offset}"
        self.object_size = replica.length


class ReplicaDescriptor:
    """One replica, with Mooncake's accessors and our worker id, tier and state beside them."""

    def __init__(self, replica: ReplicaInfo):
        self.replica = replica
        self.worker_id, self.tier = replica.worker_id, replica.tier
        self.status = replica.state

    def is_memory_replica(self) -> bool:
        return self.tier == "DRAM"

    def is_disk_replica(self) -> bool:
        return self.tier == "SSD"

    def get_memory_descriptor(self) -> MemoryDescriptor:
        if not self.is_memory_replica():
            raise RuntimeError("not a memory replica")
        return MemoryDescriptor(self.replica)

    def get_disk_descriptor(self) -> DiskDescriptor:
        if not self.is_disk_replica():
            raise RuntimeError("not a disk replica")
        return DiskDescriptor(self.replica)

    def __repr__(self) -> str:
        return f"<ReplicaDescriptor {self.worker_id} {self.tier} {self.status}>"


class MooncakeDistributedStore:
    """Mooncake's store API over a Client. Thread-safe as the Client is."""

    def __init__(self):
        self._shared = SharedClient()  # a replaced client is closed by its last call
        self._hostname = ""
        self._counts_lock = threading.Lock()
        self.error_counts: collections.Counter[int] = collections.Counter()

    # ---- lifecycle ----

    def setup(self, local_hostname, metadata_server: str | None = None,
              global_segment_size: int | str = 16 << 20, local_buffer_size: int | str = 16 << 20,
              protocol: str = "tcp", rdma_devices: str = "",
              master_server_addr: str = "127.0.0.1:50051", engine=None, **options) -> int:
        """Connects to the master. Mooncake's seven positional arguments, then keywords; or
        one dict (Mooncake's setup(dict) form, keys as the argument names). The segment
        sizes are checked but give no memory here: the node's mooncake-worker serves the
        pool, and our transports need no staging buffer or transfer-engine metadata. 0, or
        a negative code (-600 for bad arguments, -900 when no master answers)."""
        if isinstance(local_hostname, dict):
            if metadata_server is not None:
                raise TypeError("setup(dict) takes no other arguments")
            return self._setup_from(_dict_settings(local_hostname))
        unknown = sorted(set(options) - _SETUP_KEYS - set(_CLIENT_OPTIONS))
        if unknown:  # as Mooncake's binding answers an unknown keyword
            raise TypeError(f"setup() got an unexpected keyword argument {unknown[0]!r}")
        return self._setup_from(dict(
            local_hostname=local_hostname, metadata_server=metadata_server,
            global_segment_size=global_segment_size, local_buffer_size=local_buffer_size,
            protocol=protocol, rdma_devices=rdma_devices,
            master_server_addr=master_server_addr, **options))

    def setup_from_env(self) -> int:
        """setup() from MOONCAKE_CONFIG_PATH (JSON) or MOONCAKE_MASTER and MOONCAKE_*."""
        try:
            config = MooncakeConfig.from_env()
        except MooncakeError as exc:
            return self._failed("setup", exc)
        return self._setup_from(dict(
            local_hostname=config.local_hostname, metadata_server=config.metadata_server,
            global_segment_size=config.global_segment_size,
            local_buffer_size=config.local_buffer_size, protocol=config.protocol,
            rdma_devices=config.device_name, master_server_addr=config.master_server_address))

    def _setup_from(self, settings: dict) -> int:
        try:
            client = self._connect(settings)
        except MooncakeError as exc:
            return self._failed("setup", exc)
        self._hostname = str(settings["local_hostname"])
        self._shared.replace(client)
        return OK

    @staticmethod
    def _connect(settings: dict) -> Client:
        for required in ("local_hostname", "metadata_server"):
            if not settings.get(required):
                raise InvalidArgumentError(f"setup: {required} is required")
        for size in ("global_segment_size", "local_buffer_size"):
            parse_size(settings.get(size, 0))  # Mooncake refuses a malformed size too
        if str(settings.get("tenant_id") or "default") != "default":
            # Mooncake keeps a key space per tenant; here one cluster is one key space, and
            # sharing it silently would hand one tenant's KV to another
            raise InvalidArgumentError(f"setup: tenant_id {settings['tenant_id']!r}: tenants "
                                       f"are not supported; run a cluster per tenant")
        options = {name: setting_number(settings[name], float, f"setup {name}")
                   for name in _CLIENT_OPTIONS if name in settings}
        client = Client(master_spec(str(settings.get("master_server_addr") or "")),
                        transports=transports_for(str(settings.get("protocol") or "tcp")),
                        **options)
        try:
            client.master_id()  # Mooncake's setup fails when no master serves: so does ours
        except BaseException:
            client.close()
            raise
        return client

    def close(self) -> int:
        """Closes the store: later calls answer -600; its client closes now, or when the last
        call still in flight on it ends."""
        self._shared.replace(None)
        return OK

    def health_check(self) -> int:
        """0 healthy, 1 not set up (or closed), 2 the master does not answer."""
        try:
            with self._shared.use() as client:
                client.master_id()
        except NotSetUpError:
            return NOT_INITIALIZED
        except MooncakeError:
            return MASTER_UNREACHABLE
        return HEALTHY

    def get_hostname(self) -> str:
        """The name setup was given: as a preferred segment it means this node."""
        return self._hostname

    # ---- buffers ----

    def register_buffer(self, buffer_ptr: int, size: int) -> int:
        pointer = _pointer(buffer_ptr)
        return self._answer("register_buffer", lambda c: c.register_buffer(pointer, size))

    def unregister_buffer(self, buffer_ptr: int) -> int:
        def unregister(client: Client) -> None:
            if not client.unregister_buffer(_pointer(buffer_ptr)):
                raise InvalidArgumentError(f"unregister_buffer: {buffer_ptr:#x} is not registered")
        return self._answer("unregister_buffer", unregister)

    # ---- writes: 0 or a negative code ----

    def put(self, key: str, value, config: ReplicateConfig | None = None) -> int:
        return self._write_codes("put", [key], [value], None, config)[0]

    def put_parts(self, key: str, *parts, config: ReplicateConfig | None = None) -> int:
        """The parts, joined, as one object (no joining copy). All empty: nothing stored, 0."""
        def put(client: Client) -> None:
            if not parts or all(memoryview(p).nbytes == 0 for p in parts):
                log.warning("put_parts %r: the parts hold no bytes; nothing stored", key)
                return
            client.put_parts(key, parts, self._placement(config))  # its byte count: not ours
        return self._answer("put_parts", put)

    def put_batch(self, keys: Sequence[str], values: Sequence,
                  config: ReplicateConfig | None = None) -> int:
        """0 when every key was stored, else the first failed key's code."""
        codes = self._write_codes("put_batch", keys, values, None, config)
        return next((code for code in codes if code), OK)

    def put_from(self, key: str, buffer_ptr: int, size: int,
                 config: ReplicateConfig | None = None) -> int:
        return self._write_codes("put_from", [key], [_pointer(buffer_ptr)], [size], config)[0]

    def batch_put_from(self, keys: Sequence[str], buffer_ptrs: Sequence[int],
                       sizes: Sequence[int], config: ReplicateConfig | None = None) -> list[int]:
        return self._write_codes("batch_put_from", keys, _pointers(buffer_ptrs), sizes, config)

    def batch_put_from_multi_buffers(self, keys: Sequence[str],
                                     all_buffer_ptrs: Sequence[Sequence[int]],
                                     all_sizes: Sequence[Sequence[int]],
                                     config: ReplicateConfig | None = None) -> list[int]:
        """Each object is its buffers' bytes in order (per-layer K/V pages)."""
        return self._write_codes("batch_put_from_multi_buffers", keys,
                                 [_pointers(p) for p in all_buffer_ptrs],
                                 [list(s) for s in all_sizes], config)

    def _write_codes(self, call: str, keys, buffers, sizes, config) -> list[int]:
        """One batch write; per key 0 or its code (a whole-call failure: its code for all)."""
        keys = list(keys)
        if len(buffers) != len(keys) or (sizes is not None and len(sizes) != len(keys)):
            log.warning("%s: %d keys, %d buffers, %s sizes", call, len(keys), len(buffers),
                        "no" if sizes is None else len(sizes))
            return [INVALID_PARAMS] * len(keys)
        try:
            with self._shared.use() as client:
                client.batch_put_from(keys, list(buffers), self._placement(config),
                                      None if sizes is None else list(sizes))
            return [OK] * len(keys)
        except BatchError as exc:
            for error in exc.errors.values():
                self._failed(call, error)
            return [exc.errors[k].code if k in exc.errors else OK for k in keys]
        except NotSetUpError as exc:
            return [self._failed(call, exc)] * len(keys)
        except InvalidArgumentError as exc:
            if len(keys) == 1:
                return [self._failed(call, exc)]
            # refused before anything was written (a buffer not registered, say): each key
            # alone, so that the others are stored. Not for other errors: a PutStart that
            # may have reached the master must not be sent again.
            return [self._write_codes(call, [k], [b], None if sizes is None else [s], config)[0]
                    for k, b, s in zip(keys, buffers, sizes or [None] * len(keys))]
        except MooncakeError as exc:
            return [self._failed(call, exc)] * len(keys)

    # ---- reads: the byte count or a negative code; get: b"" on a miss ----

    def get(self, key: str) -> bytes:
        return self.get_batch([key])[0]

    def get_batch(self, keys: Sequence[str]) -> list[bytes]:
        """Each object's bytes, b"" for a miss or a failure (Mooncake's convention: ask
        is_exist, or use get_into, to tell them apart)."""
        values = self._read_values("get_batch", list(keys))
        return [b"" if v is None or isinstance(v, int) else v for v in values]

    def get_buffer(self, key: str):
        return self.batch_get_buffer([key])[0]

    def batch_get_buffer(self, keys: Sequence[str]) -> list:
        """Per key a BufferHandle over the object's bytes, or None (a miss or a failure)."""
        values = self._read_values("batch_get_buffer", list(keys))
        return [None if v is None or isinstance(v, int) else buffer_handle(v) for v in values]

    def get_into(self, key: str, buffer_ptr: int, size: int) -> int:
        return self.batch_get_into([key], [_pointer(buffer_ptr)], [size])[0]

    def batch_get_into(self, keys: Sequence[str], buffer_ptrs: Sequence[int],
                       sizes: Sequence[int]) -> list[int]:
        """Reads each object into its registered buffer (size: the buffer's capacity);
        per key the object's size, or -704 for a miss, -600 when the buffer is too small."""
        return self._read_into("batch_get_into", list(keys), _pointers(buffer_ptrs), sizes)

    def batch_get_into_multi_buffers(self, keys: Sequence[str],
                                     all_buffer_ptrs: Sequence[Sequence[int]],
                                     all_sizes: Sequence[Sequence[int]],
                                     prefer_alloc_in_same_node: bool = False) -> list[int]:
        return self._read_into("batch_get_into_multi_buffers", list(keys),
                               [_pointers(p) for p in all_buffer_ptrs],
                               [list(s) for s in all_sizes])

    def _read_values(self, call: str, keys: list[str]) -> list:
        """Per key: bytes, None for a miss, or the code of its failure."""
        return self._per_key(call, keys, lambda c, ks: c.batch_get(ks))

    def _read_into(self, call: str, keys: list[str], buffers, sizes) -> list[int]:
        if len(buffers) != len(keys) or len(sizes) != len(keys):
            log.warning("%s: %d keys, %d buffers, %d sizes", call, len(keys), len(buffers),
                        len(sizes))
            return [INVALID_PARAMS] * len(keys)
        def read(client: Client, picked: list[int]) -> list:  # positions: keys may repeat
            return client.batch_get_into([keys[i] for i in picked],
                                         [buffers[i] for i in picked], [sizes[i] for i in picked])
        results = self._per_key(call, list(range(len(keys))), read)
        return [OBJECT_NOT_FOUND if r is None else r for r in results]

    def _per_key(self, call: str, items: list, batch) -> list:
        """batch(client, items) as one call. When it fails with what one key can cause (a
        buffer too small, a lost replica, a lease run out), each item alone, so that it is that
        key's code only; any other failure (no master, no permission) is every key's code."""
        try:
            with self._shared.use() as client:
                try:
                    return list(batch(client, items))
                except ONE_KEY_FAULTS:
                    if len(items) <= 1:
                        raise
                return [self._one(call, batch, client, item) for item in items]
        except MooncakeError as exc:
            return [self._failed(call, exc)] * len(items)

    def _one(self, call: str, batch, client: Client, item):
        try:
            return batch(client, [item])[0]
        except MooncakeError as exc:
            return self._failed(call, exc)

    # ---- metadata ----

    def is_exist(self, key: str) -> int:
        return self.batch_is_exist([key])[0]

    def batch_is_exist(self, keys: Sequence[str]) -> list[int]:
        """Per key 1 (present, and leased: a get tends to follow), 0, or a negative code."""
        found = self._per_key("batch_is_exist", list(keys), lambda c, ks: c.batch_exists(ks))
        return [int(f) if isinstance(f, bool) else f for f in found]

    def batch_exists_prefix(self, keys: Sequence[str]) -> int:
        """Beyond Mooncake: how many keys from the first are all present (one master call),
        or a negative code."""
        return self._answer("batch_exists_prefix", lambda c: c.batch_exists_prefix(keys))

    def get_size(self, key: str) -> int:
        """The object's size, or -704 for a miss."""
        def size(client: Client) -> int:
            replicas = client.get_replicas(key)
            if not replicas:
                raise _Miss()
            return replicas[0].length
        return self._answer("get_size", size)

    def get_replica_desc(self, key: str) -> list[ReplicaDescriptor]:
        return self.batch_get_replica_desc([key]).get(key, [])

    def batch_get_replica_desc(self, keys: Sequence[str]) -> dict[str, list[ReplicaDescriptor]]:
        """key -> its replicas; a missing key maps to [] (all keys are left out on a failure)."""
        keys = list(keys)
        found = self._answer("batch_get_replica_desc", lambda c: c.batch_get_replicas(keys))
        if isinstance(found, int):
            return {}
        return {k: [ReplicaDescriptor(r) for r in replicas] for k, replicas in zip(keys, found)}

    def remove(self, key: str, force: bool = False) -> int:
        """0, -704 when the key does not exist, -706 while it is leased (unless force)."""
        return self.batch_remove([key], force)[0]

    def batch_remove(self, keys: Sequence[str], force: bool = False) -> list[int]:
        keys = list(keys)
        try:
            with self._shared.use() as client:
                removed = client.batch_remove(keys, force)
            return [OK if r else OBJECT_NOT_FOUND for r in removed]
        except BatchError as exc:
            for error in exc.errors.values():
                self._failed("batch_remove", error)
            return [exc.errors[k].code if r is None else OK if r else OBJECT_NOT_FOUND
                    for k, r in zip(keys, exc.results)]
        except MooncakeError as exc:
            return [self._failed("batch_remove", exc)] * len(keys)

    def remove_all(self, force: bool = False) -> int:
        """How many objects were removed, or a negative code."""
        return self._answer("remove_all", lambda c: c.remove_all(force))

    # ---- the one place errors become codes ----

    def _answer(self, call: str, action):
        """action(client)'s result (0 for None), or the code of the MooncakeError it raised."""
        try:
            with self._shared.use() as client:
                result = action(client)
        except _Miss:
            return OBJECT_NOT_FOUND
        except MooncakeError as exc:
            return self._failed(call, exc)
        return OK if result is None else result

    def _failed(self, call: str, error: MooncakeError) -> int:
        code = int(error.code) or int(ErrorCode.INTERNAL_ERROR)
        with self._counts_lock:
            self.error_counts[code] += 1
        if code not in _QUIET_CODES:
            log.warning("%s failed: code=%d %.300s", call, code, error)  # keys run to 4 KiB
        return code

    def _placement(self, config: ReplicateConfig | None) -> ReplicaConfig | None:
        if config is None:
            return None
        preferred = (list(config.preferred_segments) or [config.preferred_segment])[0]
        if preferred in ("", self._hostname):
            preferred = None  # this node: where placement puts a writer's replica first
        return ReplicaConfig(replica_num=max(1, int(config.replica_num)),
                             preferred_worker=preferred, soft_pin=bool(config.with_soft_pin),
                             hard_pin=bool(config.with_hard_pin))


# setup(dict) keys under the names Mooncake's JSON config (and LMCache, which passes it on)
# uses for what setup calls master_server_addr and rdma_devices
_DICT_ALIASES = {"master_server_address": "master_server_addr", "device_name": "rdma_devices"}


def _dict_settings(given: dict) -> dict:
    """setup(dict)'s settings: Mooncake's defaults for what is missing, aliases resolved, and
    keys it would not read ignored (with a log line), as Mooncake ignores them."""
    settings = {"global_segment_size": 16 << 20, "local_buffer_size": 16 << 20,
                "protocol": "tcp", "rdma_devices": "", "master_server_addr": "127.0.0.1:50051"}
    for key, value in given.items():
        key = _DICT_ALIASES.get(key, key)
        if key in _SETUP_KEYS or key in _CLIENT_OPTIONS:
            if value is not None and value != "":
                settings[key] = value
        else:
            log.warning("setup: ignoring %r, a setting Mooncake's client does not read", key)
    return settings


def _pointer(value) -> int:
    """A raw address as an int: numpy and torch integers too, as Mooncake's binding takes them
    (anything else is a TypeError there and here)."""
    return operator.index(value)


def _pointers(values) -> list[int]:
    return [operator.index(v) for v in values]


class _Miss(Exception):
    """get_size's miss: -704 without a log line."""


# ours, beside Mooncake's: how long calls wait for a master, or for a transfer (Client's)
_CLIENT_OPTIONS = ("master_retry_s", "rpc_timeout_s", "transfer_timeout_s")
_SETUP_KEYS = frozenset({
    "local_hostname", "metadata_server", "global_segment_size", "local_buffer_size",
    "protocol", "rdma_devices", "master_server_addr",
    # Mooncake's later keywords: accepted; nothing here depends on them
    "ipc_socket_path", "enable_ssd_offload", "ssd_offload_path", "tenant_id",
    "enable_client_http_server", "client_http_port"})
