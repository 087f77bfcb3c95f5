"""SGLang's HiCache storage backend on this store: `MooncakePoolStore`, loaded by SGLang's
dynamic backend factory, moving KV pages between SGLang's host pool and the pool with no copy.

    python -m sglang.launch_server ... --enable-hierarchical-cache \\
        --hicache-storage-backend dynamic --hicache-storage-backend-extra-config \\
        '{"backend_name": "mooncake_pool", "module_path": "mooncake_client.integrations.sglang",
          "class_name": "MooncakePoolStore", "interface_v1": 1,
          "master": "10.0.0.1:50051"}'

Extra-config keys of ours: `master` (a master spec, as Client takes it; else
$MOONCAKE_CONFIG_PATH's master_server_address or $MOONCAKE_MASTER), `transports` ("shm,tcp"),
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
from typing import Any, List, Optional

from mooncake_client.client import BatchError, Client, ReplicaConfig
from mooncake_client.compat.config import MooncakeConfig, master_spec
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
    options = {name: float(settings[name]) for name in
               ("rpc_timeout_s", "transfer_timeout_s", "master_retry_s") if name in settings}
    transports = settings.get("transports", "shm,rdma,tcp")
    if isinstance(transports, str):
        transports = [t.strip() for t in transports.split(",") if t.strip()]
    return Client(master_spec(str(master)), transports=tuple(transports), **options)


class MooncakePoolStore(HiCacheStorage):
    """SGLang's HiCacheStorage over a Client. SGLang builds it as cls(storage_config, kwargs)
    and hands it the host pool with register_mem_pool_host right after."""

    def __init__(self, storage_config, kwargs: Optional[dict] = None):
        settings = dict(getattr(storage_config, "extra_config", None) or {})
        self.storage_config = storage_config
        self.client = client_from_settings(settings)
        self.mem_pool_host = None
        self.replica_config = ReplicaConfig(replica_num=int(settings.get("replica_num", 1)))
        self.is_mla = bool(getattr(storage_config, "is_mla_model", False))
        self.writes = not self.is_mla or getattr(storage_config, "tp_rank", 0) == 0
        model = getattr(storage_config, "model_name", None) or ""
        prefix = settings.get("key_prefix", model.replace("/", "-"))
        self.key_prefix = f"{prefix}_" if prefix else ""
        rank, pp_rank = getattr(storage_config, "tp_rank", 0), getattr(storage_config, "pp_rank", 0)
        pipelined = getattr(storage_config, "pp_size", 1) > 1
        # SGLang's Mooncake backend's suffixes: per rank for MHA, shared by the ranks for MLA
        self.suffix = (f"{pp_rank}" if pipelined else "") if self.is_mla else \
            (f"{rank}_{pp_rank}" if pipelined else f"{rank}")
        self.errors: collections.Counter[int] = collections.Counter()

    # ---- set-up ----

    def register_mem_pool_host(self, mem_pool_host) -> None:
        """Registers the host pool's buffers: the pointers batch_get_v1/batch_set_v1 hand the
        store lie inside them."""
        self.mem_pool_host = mem_pool_host
        buffers = [mem_pool_host.kv_buffer]
        if hasattr(mem_pool_host, "get_hybrid_pool_buffer"):  # side pools (Mamba, DSA)
            buffers += list(mem_pool_host.get_hybrid_pool_buffer())
        for tensor in buffers:
            if tensor is None or tensor.numel() == 0:
                continue
            self.client.register_buffer(tensor.data_ptr(), tensor.numel() * tensor.element_size())

    # ---- the zero-copy interface (interface_v1) ----

    def batch_exists(self, keys: List[str], extra_info=None) -> int:
        """How many pages from the first are stored: one master call, which stops at the
        first absent object (and leases those before it: a get follows)."""
        per_page = len(self._object_keys("")) or 1
        try:
            present = self.client.batch_exists_prefix(
                [k for key in keys for k in self._object_keys(key)])
        except MooncakeError as exc:
            self._fault("batch_exists", exc)
            return 0
        return present // per_page

    def batch_set_v1(self, keys: List[str], host_indices, extra_info=None) -> List[bool]:
        """Writes each page from the host pool; True where every object of the page is stored
        (already stored counts). Ranks that do not write (MLA: rank 0 writes) report True."""
        if not self.writes:
            return [True] * len(keys)
        names, pointers, sizes = self._page_objects(keys, host_indices)
        try:
            self.client.batch_put_from(names, pointers, self.replica_config, sizes)
            failed = set()
        except BatchError as exc:
            for error in exc.errors.values():
                self._fault("batch_set_v1", error)
            failed = set(exc.errors)
        except MooncakeError as exc:
            self._fault("batch_set_v1", exc)
            return [False] * len(keys)
        return self._per_page(keys, names, lambda name: name not in failed)

    def batch_get_v1(self, keys: List[str], host_indices, extra_info=None) -> List[bool]:
        """Reads each page into the host pool; True where every object of the page was read
        whole (SGLang loads the leading run of True)."""
        names, pointers, sizes = self._page_objects(keys, host_indices)
        try:
            read = self.client.batch_get_into(names, pointers, sizes)
        except MooncakeError as exc:
            self._fault("batch_get_v1", exc)
            return [False] * len(keys)
        whole = {name: n is not None and n == sum(size)
                 for name, n, size in zip(names, read, sizes)}
        return self._per_page(keys, names, lambda name: whole[name])

    # ---- the per-tensor interface (without interface_v1) ----

    def get(self, key: str, target_location: Any = None, target_sizes: Any = None):
        """The page's bytes into target_location (a flat host tensor); it, or None."""
        return self.batch_get([key], [target_location], target_sizes and [target_sizes])[0]

    def batch_get(self, keys: List[str], target_locations: Any = None,
                  target_sizes: Any = None) -> List[Any]:
        try:
            read = self.client.batch_get_into([self.key_prefix + k for k in keys],
                                              list(target_locations))
        except MooncakeError as exc:
            self._fault("batch_get", exc)
            return [None] * len(keys)
        return [None if n is None else target for n, target in zip(read, target_locations)]

    def set(self, key: str, value: Any = None, target_location: Any = None,
            target_sizes: Any = None) -> bool:
        return self.batch_set([key], [value])

    def batch_set(self, keys: List[str], values: Any = None, target_locations: Any = None,
                  target_sizes: Any = None) -> bool:
        """True only when every page was stored."""
        try:
            self.client.batch_put_from([self.key_prefix + k for k in keys], list(values),
                                       self.replica_config)
            return True
        except MooncakeError as exc:
            self._fault("batch_set", exc)
            return False

    def exists(self, key: str) -> bool:
        try:
            return self.client.exists(self.key_prefix + key)
        except MooncakeError as exc:
            self._fault("exists", exc)
            return False

    def clear(self) -> None:
        """Removes every object of the pool (an admin call where the cluster has tokens)."""
        try:
            removed = self.client.remove_all(force=True)
            log.info("hicache storage cleared: %d objects removed", removed)
        except MooncakeError as exc:
            self._fault("clear", exc)

    def get_stats(self):
        return None

    def close(self) -> None:
        self.client.close()

    # ---- pages and objects ----

    def _object_keys(self, page: str) -> list[str]:
        name = f"{self.key_prefix}{page}_{self.suffix}"
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

    def _per_page(self, keys: List[str], names: list[str], ok) -> List[bool]:
        per_page = len(names) // max(len(keys), 1)
        return [all(ok(name) for name in names[i * per_page:(i + 1) * per_page])
                for i in range(len(keys))]

    def _fault(self, call: str, error: MooncakeError) -> None:
        self.errors[int(error.code)] += 1
        log.warning("%s failed: code=%d %s", call, error.code, error)
