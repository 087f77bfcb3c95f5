"""SGLang's HiCache storage backend on this store: `MooncakePoolStore`, loaded by SGLang's
dynamic backend factory, moving KV pages between SGLang's host pool and the pool with no copy.

    python -m sglang.launch_server ... --enable-hierarchical-cache \\
        --hicache-storage-backend dynamic --hicache-storage-backend-extra-config \\
        '{"backend_name": "mooncake_pool", "module_path": "mooncake_client.integrations.sglang",
          "class_name": "MooncakePoolStore", "interface_v1": 1,
          "master": "10.0.0.1:50051"}'

Extra-config keys of ours: `master` (a master spec, as Client takes it; else
$MOONCAKE_CONFIG_PATH's master_server_address or $MOONCAKE_MASTER), `transports` (default
"shm,rdma,tcp"),
`replica_num` (1), `key_prefix` (default: the model name; tells models apart in one pool),
`rpc_timeout_s`, `transfer_timeout_s`, `master_retry_s` (Client's defaults); the token and
TLS CA come from $MOONCAKE_TOKEN and $MOONCAKE_TLS_CA. `"interface_v1": 1` makes SGLang call the
zero-copy batch_get_v1/batch_set_v1 with host-pool indices.

Each page is stored as SGLang's Mooncake backend stores it: MHA models one K and one V object
per page and tensor-parallel rank (`{page}_{rank}_k`, `_v`), MLA models one object per page
shared by all ranks (`{page}__k`). A layer-first host pool gives one buffer per layer: the page's
object is gathered from them in order (scatter-gather), where SGLang's Mooncake backend refuses.

What SGLang asks is answered in one master round trip per call: batch_exists with
Client.batch_exists_prefix (SGLang's Mooncake backend sends every key of the batch), writes
without an existence check first (an existing key is a success, and no bytes move for it).
A fault never raises into SGLang's cache controller: it is logged, counted in `errors`, and
answered as a miss or a failed page (STYLE.md 10).
"""
from __future__ import annotations

import collections
import logging
import os
import threading
from typing import Any, List, Optional

from mooncake_client.client import ONE_KEY_FAULTS, BatchError, Client, ReplicaConfig
from mooncake_client.compat.config import (MooncakeConfig, master_spec, setting_number,
                                           transport_names)
from mooncake_client.shared_client import SharedClient
from mooncake_proto.errors import InvalidArgumentError, MooncakeError

try:
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorage
except ImportError:  # SGLang absent: the class still answers the same calls (tests, tools)
    HiCacheStorage = object

log = logging.getLogger("mooncake_client.integrations.sglang")


def client_from_settings(settings: dict, environ=os.environ) -> Client:
    """A Client from a backend's settings (`master`, `transports`, timeouts), the master from
    Mooncake's sources when `master` is not given."""
    master = settings.get("master")
    if not master:
        try:
            master = MooncakeConfig.from_env(environ).master_server_address
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"no master: set `master` in the backend's settings, or "
                                       f"MOONCAKE_CONFIG_PATH or MOONCAKE_MASTER ({exc})") from None
    options = {name: setting_number(settings[name], float, f"extra_config {name}")
               for name in ("rpc_timeout_s", "transfer_timeout_s", "master_retry_s")
               if name in settings}
    return Client(master_spec(str(master)),
                  transports=transport_names(settings.get("transports", "shm,rdma,tcp")),
                  **options)


class MooncakePoolStore(HiCacheStorage):
    """SGLang's HiCacheStorage over a Client. SGLang builds it as cls(storage_config, kwargs)
    and hands it the host pool with register_mem_pool_host right after."""

    def __init__(self, storage_config, kwargs: Optional[dict] = None):
        settings = dict(getattr(storage_config, "extra_config", None) or {})
        _refuse_unsupported(storage_config)
        self.storage_config = storage_config
        self.replica_config = ReplicaConfig(replica_num=setting_number(
            settings.get("replica_num", 1), int, "extra_config replica_num"))
        self.mem_pool_host = None
        self.is_mla = bool(getattr(storage_config, "is_mla_model", False))
        rank, pp_rank = getattr(storage_config, "tp_rank", 0), getattr(storage_config, "pp_rank", 0)
        # SGLang's rule: every MHA rank writes its heads; one MLA rank writes the shared page
        self.writes = getattr(storage_config, "is_storage_writer",
                              not self.is_mla or rank == getattr(storage_config, "dcp_rank", 0))
        model = getattr(storage_config, "model_name", None) or ""
        prefix = settings.get("key_prefix", model.replace("/", "-"))
        self.key_prefix = f"{prefix}_" if prefix else ""
        pipelined = getattr(storage_config, "pp_size", 1) > 1
        # SGLang's Mooncake backend's suffixes: per rank for MHA, shared by the ranks for MLA
        self.suffix = (f"{pp_rank}" if pipelined else "") if self.is_mla else \
            (f"{rank}_{pp_rank}" if pipelined else f"{rank}")
        self.errors: collections.Counter[int] = collections.Counter()
        self._errors_lock = threading.Lock()
        # last: nothing above may fail with a Client left open. Calls share it with close,
        # which leaves it to the last of them (SGLang's backup and prefetch threads run
        # beside a detach)
        self._shared = SharedClient(client_from_settings(settings))

    @property
    def client(self) -> Client | None:
        return self._shared.client

    # ---- set-up ----

    def register_mem_pool_host(self, mem_pool_host) -> None:
        """Registers the host pool's buffers: the pointers batch_get_v1/batch_set_v1 hand the
        store lie inside them. A pool without a buffer of its own (a logical anchor) has none."""
        self.mem_pool_host = mem_pool_host
        kv = getattr(mem_pool_host, "kv_buffer", None)
        buffers = list(kv) if isinstance(kv, (list, tuple)) else [kv]
        if hasattr(mem_pool_host, "get_hybrid_pool_buffer"):  # side pools (Mamba, DSA)
            buffers += list(mem_pool_host.get_hybrid_pool_buffer())
        with self._shared.use() as client:
            for tensor in buffers:
                if tensor is not None and tensor.numel():
                    client.register_buffer(tensor.data_ptr(),
                                           tensor.numel() * tensor.element_size())

    # ---- the zero-copy interface (interface_v1) ----

    def batch_exists(self, keys: List[str], extra_info=None) -> int:
        """How many pages from the first are stored: one master call, which stops at the
        first absent object (and leases those before it: a get follows)."""
        per_page = len(self._object_keys(""))
        names = [name for key in keys for name in self._object_keys(key)]
        return self._run("batch_exists", 0,
                         lambda client: client.batch_exists_prefix(names) // per_page)

    def batch_set_v1(self, keys: List[str], host_indices, extra_info=None) -> List[bool]:
        """Writes each page from the host pool; True where every object of the page is stored
        (already stored counts). A rank that does not write (MLA: one writes for all) has
        nothing to do: True, as SGLang's controller does not even ask it."""
        if not self.writes or not keys:
            return [True] * len(keys)

        def write(client: Client) -> List[bool]:
            names, pointers, sizes = self._page_objects(keys, host_indices)
            try:
                client.batch_put_from(names, pointers, self.replica_config, sizes)
                failed = {}
            except BatchError as exc:
                failed = exc.errors
                for error in failed.values():
                    self._fault("batch_set_v1", error)
            return self._per_page(keys, [name not in failed for name in names])
        return self._run("batch_set_v1", [False] * len(keys), write)

    def batch_get_v1(self, keys: List[str], host_indices, extra_info=None) -> List[bool]:
        """Reads each page into the host pool; True where every object of the page was read
        whole (SGLang loads the leading run of True). A fault one page can cause (a replica
        lost, a lease run out, a buffer too small) fails that page only: the pages are read
        again one by one."""
        if not keys:
            return []

        def read(client: Client) -> List[bool]:
            names, pointers, sizes = self._page_objects(keys, host_indices)
            try:
                return self._per_page(keys, _whole(client, names, pointers, sizes))
            except ONE_KEY_FAULTS:  # counted once, by the page's own read below
                if len(keys) == 1:
                    raise
            per_page = len(names) // len(keys)
            pages = [slice(i * per_page, (i + 1) * per_page) for i in range(len(keys))]
            return [self._run("batch_get_v1", False, lambda c, p=p: all(
                _whole(c, names[p], pointers[p], sizes[p]))) for p in pages]
        return self._run("batch_get_v1", [False] * len(keys), read)

    # ---- the per-tensor interface (without interface_v1): one object per page ----

    def get(self, key: str, target_location: Any = None, target_sizes: Any = None):
        """The page's bytes into target_location (a flat host tensor); it, or None."""
        return self.batch_get([key], [target_location])[0]

    def batch_get(self, keys: List[str], target_locations: Any = None,
                  target_sizes: Any = None) -> List[Any]:
        targets = list(target_locations or [])

        def read(client: Client) -> List[Any]:
            read_sizes = client.batch_get_into([self._page_key(k) for k in keys], targets)
            return [None if n is None else t for n, t in zip(read_sizes, targets)]
        return self._run("batch_get", [None] * len(keys), read)

    def set(self, key: str, value: Any = None, target_location: Any = None,
            target_sizes: Any = None) -> bool:
        return self.batch_set([key], [value])

    def batch_set(self, keys: List[str], values: Any = None, target_locations: Any = None,
                  target_sizes: Any = None) -> bool:
        """True only when every page was stored (by this rank, or MLA's writing rank)."""
        if not self.writes:
            return True

        def write(client: Client) -> bool:
            client.batch_put_from([self._page_key(k) for k in keys], list(values),
                                  self.replica_config)
            return True
        return self._run("batch_set", False, write)

    def exists(self, key: str) -> bool:
        return self._run("exists", False, lambda client: client.exists(self._page_key(key)))

    def clear(self) -> None:
        """Removes every object of the pool (an admin call where the cluster has tokens)."""
        removed = self._run("clear", None, lambda client: client.remove_all(force=True))
        if removed is not None:
            log.info("hicache storage cleared: %d objects removed", removed)

    def get_stats(self):
        return None

    def close(self) -> None:
        """Closes the client once the calls in flight are done; later calls are misses."""
        self._shared.replace(None)

    # ---- the one place faults become misses ----

    def _run(self, call: str, on_fault, action):
        """action(client), or on_fault when it fails: a store fault, or host-pool metadata
        this backend cannot map to objects (both logged and counted)."""
        try:
            with self._shared.use() as client:
                return action(client)
        except MooncakeError as exc:
            self._fault(call, exc)
        except ValueError as exc:
            self._fault(call, InvalidArgumentError(str(exc)))
        return on_fault

    # ---- pages and objects ----

    def _object_keys(self, page: str) -> list[str]:
        name = self._page_key(page)
        return [f"{name}_k"] if self.is_mla else [f"{name}_k", f"{name}_v"]

    def _page_objects(self, keys: List[str], host_indices):
        """Each page's object names and, per object, the raw pointers into the host pool it is
        gathered from, with their sizes, as SGLang's pool reports them."""
        pointers, sizes = self.mem_pool_host.get_page_buffer_meta(host_indices)
        per_page = len(pointers) // max(len(keys), 1)
        if per_page * len(keys) != len(pointers) or per_page == 0:
            raise ValueError(f"the host pool gave {len(pointers)} buffers for {len(keys)} pages")
        names, object_pointers, object_sizes = [], [], []
        for i, key in enumerate(keys):
            page = list(zip(pointers[i * per_page:(i + 1) * per_page],
                            sizes[i * per_page:(i + 1) * per_page]))
            objects = self._object_keys(key)
            # MHA pools list each page as K, V (per layer: K0, V0, K1, V1, ...)
            groups = [page] if len(objects) == 1 else [page[0::2], page[1::2]]
            for name, group in zip(objects, groups):
                names.append(name)
                object_pointers.append([ptr for ptr, _ in group])
                object_sizes.append([size for _, size in group])
        return names, object_pointers, object_sizes

    def _page_key(self, page: str) -> str:
        """The per-tensor interface's object, the whole page, per rank as the objects above
        (whose names start with it)."""
        return f"{self.key_prefix}{page}_{self.suffix}"

    @staticmethod
    def _per_page(keys: List[str], object_ok: list[bool]) -> List[bool]:
        per_page = len(object_ok) // len(keys)
        return [all(object_ok[i * per_page:(i + 1) * per_page]) for i in range(len(keys))]

    def _fault(self, call: str, error: MooncakeError) -> None:
        with self._errors_lock:
            self.errors[int(error.code)] += 1
        log.warning("%s failed: code=%d %.300s", call, error.code, error)


def _whole(client: Client, names, pointers, sizes) -> list[bool]:
    """Reads the objects into their pointers: for each, whether all its bytes came."""
    read = client.batch_get_into(names, pointers, sizes)
    return [n is not None and n == sum(size) for n, size in zip(read, sizes)]


def _refuse_unsupported(storage_config) -> None:
    """Layouts this backend would store wrongly are refused at start, not met with wrong KV."""
    if getattr(storage_config, "dcp_size", 1) > 1:
        raise InvalidArgumentError("decode context parallelism (dcp_size > 1) is not supported "
                                   "by the mooncake_pool backend yet")
    if getattr(storage_config, "should_split_heads", False):
        raise InvalidArgumentError("split heads (a storage TP size unlike the model's) is not "
                                   "supported by the mooncake_pool backend yet")
