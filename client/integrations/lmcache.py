"""LMCache's remote connector on this store: `MooncakePoolConnector` (plugin type "mooncakepool").

It stores LMCache's chunks (MemoryObjs) with our Client, zero-copy both ways, in the layout
of LMCache's own `mooncakestore` connector (a RemoteMetadata header then the KV bytes when
extra_config's save_chunk_meta is true, the default; the bare KV bytes when false), so either
connector reads what the other wrote. Over LMCache 0.5.6's mooncakestore it adds: one master
round trip per lookup (batched_async_contains), a working batched_get_non_blocking and
single get, real booleans from exists, remove_sync and ping.

Load it through LMCache's remote_storage_plugins (the local CPU backend must be on: it is
the buffer pool chunks are read into):

    chunk_size: 256
    local_cpu: true
    max_local_cpu_size: 5
    remote_serde: naive
    remote_storage_plugins: ["mooncakepool"]
    extra_config:
      remote_storage_plugin.mooncakepool.module_path: mooncake_client.integrations.lmcache
      remote_storage_plugin.mooncakepool.class_name: MooncakePoolAdapter
      mooncake_pool.master: "10.0.0.1:50051"   # or "h1:p,h2:p", or "etcd://h:p/CLUSTER"
      mooncake_pool.transports: "shm,tcp"      # optional; default: from Mooncake's protocol
      save_chunk_meta: true                    # as LMCache's mooncakestore (false: bare KV)

The plugin name must be "mooncakepool" or "mooncakepool.<instance>" (the adapter matches on
the type; "mooncakestore" is LMCache's built-in connector, which wins that name). A
mooncakestore config works by switching to this plugin: without mooncake_pool.master, the
master and protocol come from where LMCache's mooncakestore connector reads them
(MOONCAKE_CONFIG_PATH's JSON, else extra_config's mooncake_master_server_addr,
master_server_address and protocol). Other keys, all optional: mooncake_pool.replica_num
(1), mooncake_pool.token (else $MOONCAKE_TOKEN), mooncake_pool.rpc_timeout_s (10),
mooncake_pool.master_retry_s (15), mooncake_pool.transfer_timeout_s (10),
mooncake_pool.put_wait_s (10); unknown mooncake_pool.* keys are errors.

Errors: a miss is None / False / a shorter prefix. A fault of the store (no master, a failed
transfer, no space) never reaches LMCache's engine: `_safely` below is the one place that
turns it into a miss or a skipped put, logs one line and counts it in `errors` (STYLE.md 10);
ping alone answers the fault's code, which is what LMCache asks of it. A configuration LMCache
cannot run with (no master, an unknown key) is IrrecoverableException at construction: LMCache
would otherwise retry it every 10 seconds, forever.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import logging
import os
import struct
from typing import Callable, List, Optional, Sequence

from lmcache.utils import CacheEngineKey
from lmcache.v1.config import LMCacheEngineConfig
from lmcache.v1.exceptions import IrrecoverableException
from lmcache.v1.memory_management import MemoryObj
from lmcache.v1.metadata import LMCacheMetadata
from lmcache.v1.protocol import RemoteMetadata
from lmcache.v1.storage_backend.connector import (ConnectorAdapter, ConnectorContext,
                                                  extract_plugin_type)
from lmcache.v1.storage_backend.connector.base_connector import RemoteConnector

from mooncake_client.client import ONE_KEY_FAULTS, BatchError, Client, ReplicaConfig
from mooncake_client.compat.config import (MooncakeConfig, master_spec, setting_number,
                                           transport_names, transports_for)
from mooncake_client.shared_client import SharedClient
from mooncake_proto.errors import InvalidArgumentError, MooncakeError

log = logging.getLogger("mooncake_client.integrations.lmcache")

PLUGIN_TYPE = "mooncakepool"
PREFIX = "mooncake_pool."
BAD_OBJECT = "bad_object"  # `errors` key: an entry whose layout this engine cannot load
LIST_PAGE = 10_000  # the master's cap on one ListKeys answer


# ---- settings ----

@dataclasses.dataclass(frozen=True, slots=True)
class PoolSettings:
    """How the connector reaches the pool: extra_config's mooncake_pool.* keys, falling back to
    the sources LMCache's mooncakestore connector reads."""
    master: str
    transports: tuple[str, ...]
    replica_num: int = 1
    token: Optional[str] = None
    rpc_timeout_s: float = 10.0
    master_retry_s: float = 15.0
    transfer_timeout_s: float = 10.0
    put_wait_s: float = 10.0

    @classmethod
    def from_extra_config(cls, extra: Optional[dict], environ=os.environ) -> "PoolSettings":
        extra = dict(extra or {})
        ours = {k[len(PREFIX):]: v for k, v in extra.items()
                if k.startswith(PREFIX) and v is not None}
        unknown = sorted(set(ours) - _SETTING_KEYS)
        if unknown:
            raise InvalidArgumentError(f"unknown extra_config keys: "
                                       f"{', '.join(PREFIX + k for k in unknown)}")
        master, protocol = str(ours.get("master") or ""), "tcp"
        if not master or "transports" not in ours:
            theirs, protocol = _mooncake_source(extra, environ)
            master = master or theirs
        if not master:
            raise InvalidArgumentError(
                "no master for the mooncakepool connector: set extra_config's "
                "mooncake_pool.master (or master_server_address, or MOONCAKE_CONFIG_PATH)")
        transports = (transport_names(ours["transports"]) if "transports" in ours
                      else transports_for(protocol))
        replica_num = _number(ours, "replica_num", int, 1)
        if replica_num < 1:
            raise InvalidArgumentError(f"{PREFIX}replica_num must be >= 1, got {replica_num}")
        return cls(master=master_spec(master, environ), transports=transports,
                   replica_num=replica_num,
                   token=None if ours.get("token") is None else str(ours["token"]),
                   **{k: _number(ours, k, float, None) for k in _SECONDS_KEYS if k in ours})

    def client(self) -> Client:
        return Client(self.master, transports=self.transports, token=self.token,
                      rpc_timeout_s=self.rpc_timeout_s, master_retry_s=self.master_retry_s,
                      transfer_timeout_s=self.transfer_timeout_s, put_wait_s=self.put_wait_s)


_SECONDS_KEYS = ("rpc_timeout_s", "master_retry_s", "transfer_timeout_s", "put_wait_s")
_SETTING_KEYS = frozenset({"master", "transports", "replica_num", "token", *_SECONDS_KEYS})


def _number(ours: dict, key: str, kind: type, default):
    if key not in ours:
        return default
    return setting_number(ours[key], kind, f"extra_config {PREFIX}{key}")


def _mooncake_source(extra: dict, environ) -> tuple[str, str]:
    """(master address, protocol) where LMCache 0.5.6's mooncakestore connector finds them:
    MOONCAKE_CONFIG_PATH's JSON wins, else extra_config, prefixed keys over bare ones."""
    path = environ.get("MOONCAKE_CONFIG_PATH")
    if path:
        config = MooncakeConfig.from_file(path)
        return config.master_server_address, config.protocol
    master = (extra.get("mooncake_master_server_addr")
              or extra.get("mooncake_master_server_address")
              or extra.get("master_server_address") or "")
    protocol = extra.get("mooncake_protocol") or extra.get("protocol") or "tcp"
    return str(master), str(protocol)


class _BadObject(Exception):
    """An entry read whole whose bytes do not form a chunk of this engine."""


# ---- the connector ----

class MooncakePoolConnector(RemoteConnector):
    """LMCache's RemoteConnector over our Client. LMCache's InstrumentedRemoteConnector,
    which wraps every connector, drops the caller's reference on each MemoryObj after put and
    batched_put return: those methods leave ref counts alone. Objects returned by the gets
    carry the one reference allocate gave them, for the caller; ones not returned are released
    here."""

    def __init__(self, loop: asyncio.AbstractEventLoop, local_cpu_backend,
                 config: LMCacheEngineConfig, metadata: Optional[LMCacheMetadata] = None,
                 settings: Optional[PoolSettings] = None):
        """metadata: LMCache's ConnectorContext has it (MooncakePoolAdapter passes it); loaded
        as a bare RemoteConnector class, LMCache passes none and the CPU backend's is used."""
        if metadata is None:
            metadata = getattr(local_cpu_backend, "metadata", None)
        super().__init__(config, metadata)
        self.loop = loop
        self.local_cpu_backend = local_cpu_backend
        try:
            self.settings = settings or PoolSettings.from_extra_config(config.extra_config)
        except InvalidArgumentError as exc:
            raise IrrecoverableException(f"mooncakepool connector: {exc}") from exc
        self.replica_config = ReplicaConfig(replica_num=self.settings.replica_num)
        # calls share the Client with close, which waits for them: a transfer thread that
        # outlives a cancelled coroutine may still be copying out of a mapped segment
        self._shared = SharedClient(self.settings.client())
        # Mooncake code (int) or BAD_OBJECT -> how often it made a miss or a skipped put (a
        # failed call counts once, a BatchError once per key that failed)
        self.errors: collections.Counter = collections.Counter()
        log.info("lmcache connector: master=%s transports=%s save_chunk_meta=%s",
                 self.settings.master, ",".join(self.settings.transports), self.save_chunk_meta)

    def __repr__(self) -> str:
        return f"<MooncakePoolConnector master={self.settings.master}>"

    @property
    def client(self) -> Optional[Client]:
        return self._shared.client

    # ---- the one place store faults become misses ----

    def _safely(self, op: str, fallback, call: Callable[[Client], object]):
        """call(client), or fallback after logging and counting the MooncakeError it raised
        (a closed connector's calls raise NotSetUpError: misses too)."""
        try:
            with self._shared.use() as client:
                return call(client)
        except MooncakeError as exc:
            self._failed(op, exc)
            return fallback

    def _failed(self, op: str, exc: MooncakeError) -> None:
        failures = list(exc.errors.values()) if isinstance(exc, BatchError) else [exc]
        for error in failures:
            self.errors[int(error.code)] += 1
        log.warning("lmcache %s failed (%d error(s), a miss or a skipped put): code=%d %s",
                    op, len(failures), int(exc.code), exc)

    def _bad(self, key: str, why: str) -> None:
        self.errors[BAD_OBJECT] += 1
        log.warning("lmcache get %r: not a chunk of this engine (%s); treated as a miss", key, why)

    # ---- lookups ----

    async def exists(self, key: CacheEngineKey) -> bool:
        return await asyncio.to_thread(self.exists_sync, key)

    def exists_sync(self, key: CacheEngineKey) -> bool:
        return bool(self._safely("exists", False, lambda c: c.exists(key.to_string())))

    def support_batched_async_contains(self) -> bool:
        return True

    async def batched_async_contains(self, lookup_id: str, keys: List[CacheEngineKey],
                                     pin: bool = False) -> int:
        """How many keys from the first are stored, in one master round trip. pin is not
        needed: the answer grants each present key a read lease (lease_ttl, 10 s by default),
        which keeps it from eviction until the get that follows a lookup."""
        return await asyncio.to_thread(self.batched_contains, keys)

    def support_batched_contains(self) -> bool:
        return True

    def batched_contains(self, keys: List[CacheEngineKey]) -> int:
        names = [k.to_string() for k in keys]
        return self._safely("contains", 0, lambda c: c.batch_exists_prefix(names))

    # ---- writes ----

    async def put(self, key: CacheEngineKey, memory_obj: MemoryObj):
        await self.batched_put([key], [memory_obj])

    def support_batched_put(self) -> bool:
        return True

    async def batched_put(self, keys: List[CacheEngineKey], memory_objs: List[MemoryObj]):
        """One two-phase put for the batch, each object written from its MemoryObj's memory
        (with the header in front as a second buffer, no joining copy). A key that fails (no
        space once eviction had put_wait_s to free some, a transfer fault) is skipped; the
        others are stored. Existing keys count as stored (first writer wins)."""
        if not keys:
            return
        names = [k.to_string() for k in keys]
        parts = [self._object_parts(obj) for obj in memory_objs]
        # our own reference while the thread reads the buffers: if this coroutine is
        # cancelled, LMCache drops its reference at once and must not free them under it
        for obj in memory_objs:
            obj.ref_count_up()
        try:
            await self._in_thread(functools.partial(self._write, names, parts, memory_objs))
        except RuntimeError:
            # the executor refused the call (shutting down): _write, which drops our
            # references, never ran
            for obj in memory_objs:
                obj.ref_count_down()
            raise

    def _write(self, names: list[str], parts: list, memory_objs: Sequence[MemoryObj]) -> None:
        try:
            self._safely("put", None,
                         lambda c: c.batch_put_from(names, parts, self.replica_config))
        finally:
            for obj in memory_objs:
                obj.ref_count_down()

    def _object_parts(self, memory_obj: MemoryObj) -> list:
        """The buffers of one stored object: [header, kv] or [kv], kv being a view of the
        MemoryObj's own memory. The header is mooncakestore's (RemoteMetadata.serialize)."""
        kv = memory_obj.byte_array
        if not self.save_chunk_meta:
            return [kv]
        header = RemoteMetadata(len(kv), memory_obj.get_shapes(), memory_obj.get_dtypes(),
                                memory_obj.get_memory_format()).serialize()
        return [header, kv]

    # ---- reads ----

    async def get(self, key: CacheEngineKey) -> Optional[MemoryObj]:
        return (await self.batched_get([key]))[0]

    def support_batched_get(self) -> bool:
        return True

    async def batched_get(self, keys: List[CacheEngineKey]) -> List[Optional[MemoryObj]]:
        """Each key's chunk, read straight into a MemoryObj from the local CPU backend (None
        for a miss, a fault, or no free local memory). One master round trip for the batch."""
        if not keys:
            return []
        names = [k.to_string() for k in keys]
        slots = [self._slot() for _ in keys]
        wanted = [i for i, slot in enumerate(slots) if slot is not None]
        results: list[Optional[MemoryObj]] = [None] * len(keys)
        if not wanted:
            return results
        wanted_names, buffers = [names[i] for i in wanted], [slots[i][2] for i in wanted]
        read = functools.partial(self._safely, "get", None,
                                 lambda c: self._read(c, wanted_names, buffers))
        def release() -> None:
            for i in wanted:
                slots[i][0].ref_count_down()
        try:
            sizes = await self._in_thread(read, on_cancel=release)
        except asyncio.CancelledError:
            raise  # released by on_cancel, once the thread is done with the buffers
        except BaseException:
            release()  # the thread never ran, or failed outside the store: nobody else will
            raise
        for i, size in zip(wanted, sizes or [None] * len(wanted)):
            results[i] = self._loaded(names[i], slots[i][0], slots[i][1], size)
        return results

    async def _in_thread(self, call: Callable, on_cancel: Optional[Callable] = None):
        """call() on a worker thread. Cancelling the caller (LMCache does, past its
        blocking_timeout_secs) neither stops nor skips it: it may be using LMCache's buffers,
        so it runs to its end, and on_cancel (freeing them) runs after."""
        future = asyncio.get_running_loop().run_in_executor(None, call)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if on_cancel is not None:
                future.add_done_callback(lambda _: on_cancel())
            raise

    def _slot(self):
        """(MemoryObj of a full chunk, header buffer or None, the buffers to read into), or
        None when the local CPU backend has no room now. No busy wait: this runs on LMCache's
        event loop, and a chunk it cannot hold is better a miss than a stalled loop."""
        obj = self.local_cpu_backend.allocate(self.meta_shapes, self.meta_dtypes, self.meta_fmt,
                                              busy_loop=False)
        if obj is None:
            return None
        if not self.save_chunk_meta:
            return obj, None, obj.byte_array
        header = bytearray(self.remote_metadata_bytes)
        return obj, header, [header, obj.byte_array]

    def _read(self, client: Client, names: list[str], buffers: list) -> list[Optional[int]]:
        try:
            return client.batch_get_into(names, buffers)
        except ONE_KEY_FAULTS:
            if len(names) == 1:
                raise
            # an entry larger than its buffer (written under another chunk size or the other
            # save_chunk_meta), a lost replica or a lease run out fails the whole batch: read
            # key by key, so only that key is lost
            return [self._safely("get", None, lambda c, n=name, b=buffer: c.get_into(n, b))
                    for name, buffer in zip(names, buffers)]

    def _loaded(self, name: str, obj: MemoryObj, header: Optional[bytearray],
                size: Optional[int]) -> Optional[MemoryObj]:
        """The MemoryObj holding an entry of `size` bytes just read, trimmed to it; None (and
        obj released) for a miss or bytes that are no chunk of this engine."""
        if size is None:
            obj.ref_count_down()
            return None
        try:
            if header is None:
                return self._trimmed(obj, size)
            return self._from_header(obj, bytes(header), size - self.remote_metadata_bytes)
        except _BadObject as exc:
            obj.ref_count_down()
            self._bad(name, str(exc))
            return None

    def _trimmed(self, obj: MemoryObj, kv_bytes: int) -> MemoryObj:
        """obj cut to its first kv_bytes (a prompt's last chunk is partial), as LMCache does."""
        try:
            obj = self.reshape_partial_chunk(obj, kv_bytes)
        except ValueError as exc:
            raise _BadObject(str(exc)) from None
        if kv_bytes != self.full_chunk_size_bytes and len(self.meta_shapes) == 1:
            # reshape_partial_chunk (0.5.6) updates meta.shape only: get_shapes() would still
            # report a full chunk, and a put of this object would write a wrong header
            obj.meta.shapes = [obj.meta.shape]
        return obj

    def _from_header(self, obj: MemoryObj, header: bytes, kv_bytes: int) -> Optional[MemoryObj]:
        """The chunk the header describes: obj itself, trimmed for a partial chunk, when it
        has this engine's layout; else a copy into a MemoryObj of the header's own shapes
        (layer-wise chunks, several groups, another dtype or format). An entry of this
        engine's dtype and format whose size is no whole number of its tokens, or that is
        larger than its full chunk, is a miss."""
        meta = _parse_header(header, kv_bytes)
        if meta.dtypes == self.meta_dtypes and meta.fmt == self.meta_fmt \
                and len(meta.shapes) == 1 == len(self.meta_shapes):
            obj = self._trimmed(obj, kv_bytes)
            if obj.meta.shape == meta.shapes[0]:
                return obj
        exact = self.local_cpu_backend.allocate(meta.shapes, meta.dtypes, meta.fmt,
                                                busy_loop=False)
        if exact is not None and exact.get_size() != kv_bytes:
            exact.ref_count_down()
            raise _BadObject(f"header shapes {meta.shapes} do not hold {kv_bytes} bytes")
        if exact is not None:
            exact.raw_data[:kv_bytes].copy_(obj.raw_data.view(-1)[:kv_bytes])
        obj.ref_count_down()
        return exact

    # ---- prefix loads, removal, admin ----

    def support_batched_get_non_blocking(self) -> bool:
        return True

    async def batched_get_non_blocking(self, lookup_id: str,
                                       keys: List[CacheEngineKey]) -> List[MemoryObj]:
        """The chunks of the longest prefix of keys that is all stored (LMCache's base version
        calls get() key by key; mooncakestore's get() raises, so its prefetch always missed)."""
        objs = await self.batched_get(keys)
        prefix: list[MemoryObj] = []
        for i, obj in enumerate(objs):
            if obj is None:
                for rest in objs[i + 1:]:
                    if rest is not None:
                        rest.ref_count_down()
                break
            prefix.append(obj)
        return prefix

    def remove_sync(self, key: CacheEngineKey) -> bool:
        """True when the entry existed. Forced: LMCache removes to drop data, and a forced
        remove is still safe for readers (the master frees a leased range only when its
        lease ends)."""
        return bool(self._safely("remove", False, lambda c: c.remove(key.to_string(), True)))

    def support_ping(self) -> bool:
        return True

    async def ping(self) -> int:
        """0 when a master serves this client, else the Mooncake code of what went wrong."""
        try:
            await asyncio.to_thread(self._master_id)
        except MooncakeError as exc:
            self._failed("ping", exc)
            return int(exc.code)
        return 0

    async def list(self) -> List[str]:
        """Every key in the pool (LMCache's and any other user's). On a master run with
        --tokens this needs an admin token (mooncake_pool.token); without one it is [] and
        the PERMISSION_DENIED is counted."""
        return await asyncio.to_thread(self._safely, "list", [], self._list_all)

    def _master_id(self) -> str:
        with self._shared.use() as client:
            return client.master_id()

    def _list_all(self, client: Client) -> list[str]:
        names: list[str] = []
        while True:
            page, more = client.list_keys(limit=LIST_PAGE,
                                               start_after=names[-1] if names else "")
            names.extend(info.key for info in page)
            if not more or not page:
                return names

    async def close(self):
        """Closes the Client once the transfers in flight are done; later calls are misses."""
        await asyncio.to_thread(self._shared.replace, None)


def _parse_header(header: bytes, kv_bytes: int) -> RemoteMetadata:
    if kv_bytes <= 0:
        raise _BadObject("shorter than its header")
    try:
        meta = RemoteMetadata.deserialize(header)
    except (ValueError, KeyError, struct.error) as exc:
        raise _BadObject(f"unreadable header: {exc}") from None
    if meta.length != kv_bytes:
        raise _BadObject(f"header says {meta.length} KV bytes, the entry holds {kv_bytes}")
    return meta


# ---- the plugin entry ----

class MooncakePoolAdapter(ConnectorAdapter):
    """What LMCache's remote_storage_plugins loader instantiates (class_name above): it builds
    the connector for plugin URLs of type "mooncakepool", with LMCache's metadata (which the
    scheduler role, having no CPU backend, needs)."""

    def __init__(self) -> None:
        super().__init__("")  # no URL scheme: reached through remote_storage_plugins only

    def can_parse(self, url: str) -> bool:
        return url.startswith("plugin://") and \
            extract_plugin_type(url[len("plugin://"):]) == PLUGIN_TYPE

    def create_connector(self, context: ConnectorContext) -> RemoteConnector:
        return MooncakePoolConnector(context.loop, context.local_cpu_backend, context.config,
                                     context.metadata)
