"""vLLM's MooncakeStoreConnector on this store. vLLM pins a CUDA build of torch and does not
install on this machine, so its worker's store calls are replayed here in the order and with
the arguments vLLM 0.34.0 makes them (kv_connector/v1/mooncake/store/worker.py and
vllm/distributed/mooncake_store.py), against a real cluster, and checked by return code and
content. The loading module (mooncake_client/integrations/vllm.py) is checked against a
stand-in vLLM package that imports `mooncake.store` as vLLM's worker does."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mooncake_client.compat import MooncakeDistributedStore, ReplicateConfig

NO_AVAILABLE_HANDLE = -200  # vLLM: MOONCAKE_NO_AVAILABLE_HANDLE
LAYERS, BLOCKS, BLOCK_BYTES = 4, 16, 4096
PREFIX = "Qwen/Qwen3-0.6B@tp_rank:0@pcp0@dcp0@pp_rank:0@group:0@"  # layout.py PoolKey


def _setup_like_vllm(master: str, tmp_path) -> MooncakeDistributedStore:
    """setup_mooncake_store: vLLM parses its JSON (units and all) and calls setup with seven
    positional arguments; anything but 0 raises in vLLM."""
    config_path = tmp_path / "vllm-mooncake.json"
    config_path.write_text(json.dumps({"metadata_server": "P2PHANDSHAKE", "protocol": "tcp",
                                       "master_server_address": master,
                                       "global_segment_size": "4GB",
                                       "local_buffer_size": "4GB"}))
    config = json.loads(config_path.read_text())
    store = MooncakeDistributedStore()
    assert store.setup("127.0.0.1", config["metadata_server"], 4 << 30, 4 << 30,
                       config["protocol"], "", config["master_server_address"]) == 0
    return store


class PagedKVCache:
    """vLLM's KV cache as its worker sees it: one tensor per layer, paged in blocks; a block's
    object is that block in every layer (batch_put_from_multi_buffers' per-layer pointers)."""

    def __init__(self, seed: int | None):
        rng = np.random.default_rng(seed)
        self.layers = [rng.integers(0, 256, (BLOCKS, BLOCK_BYTES), dtype=np.uint8)
                       if seed is not None else np.zeros((BLOCKS, BLOCK_BYTES), np.uint8)
                       for _ in range(LAYERS)]

    def register(self, store) -> None:
        for layer in self.layers:  # register_kv_caches: once per unique storage
            assert store.register_buffer(layer.ctypes.data, layer.nbytes) == 0

    def addrs_sizes(self, block_ids):
        addrs = [[layer[b].ctypes.data for layer in self.layers] for b in block_ids]
        return addrs, [[BLOCK_BYTES] * LAYERS for _ in block_ids]

    def block(self, block_id: int) -> bytes:
        return b"".join(layer[block_id].tobytes() for layer in self.layers)


def _keys(hashes):
    return [PREFIX + h for h in hashes]


def _lookup(store, keys) -> int:
    """The scheduler's lookup: batch_is_exist, a hit only where it answers 1, the longest
    all-present prefix."""
    hits = 0
    for answer in store.batch_is_exist(keys):
        if answer != 1:
            break
        hits += 1
    return hits


def _save(store, cache, keys, block_ids, config) -> list[int]:
    """The send thread: skip keys already stored, then one multi-buffer put of the rest."""
    missing = [i for i, e in enumerate(store.batch_is_exist(keys)) if e != 1]
    if not missing:
        return []
    addrs, sizes = cache.addrs_sizes([block_ids[i] for i in missing])
    return store.batch_put_from_multi_buffers([keys[i] for i in missing], addrs, sizes, config)


def test_save_lookup_load_and_reset_as_vllm_calls_them(cluster, tmp_path):
    producer, consumer = _setup_like_vllm(cluster.master_addr, tmp_path), \
        _setup_like_vllm(cluster.master_addr, tmp_path)
    prefill, decode = PagedKVCache(seed=1), PagedKVCache(seed=None)
    prefill.register(producer)
    decode.register(consumer)
    config = ReplicateConfig()  # MooncakeStoreWorker: one default config, reused
    hashes = [f"{i:032x}" for i in range(8)]
    keys = _keys(hashes)

    assert _lookup(consumer, keys) == 0
    assert _save(producer, prefill, keys[:6], list(range(6)), config) == [0] * 6
    assert _save(producer, prefill, keys[:6], list(range(6)), config) == []  # deduplicated
    assert _lookup(consumer, keys) == 6

    # load the 6 hits into other blocks of the decode instance, in vLLM's sub-batches
    targets = [10, 11, 12, 13, 14, 15]
    for chunk in (slice(0, 4), slice(4, 6)):
        addrs, sizes = decode.addrs_sizes(targets[chunk])
        assert consumer.batch_get_into_multi_buffers(keys[chunk], addrs, sizes) == \
            [LAYERS * BLOCK_BYTES] * len(targets[chunk])
    for source, target in zip(range(6), targets):
        assert decode.block(target) == prefill.block(source)

    # a block evicted (or never saved) between lookup and load: < 0 for that key only
    addrs, sizes = decode.addrs_sizes([0, 1])
    result = consumer.batch_get_into_multi_buffers([keys[0], keys[7]], addrs, sizes)
    assert result[0] == LAYERS * BLOCK_BYTES and result[1] < 0

    # VLLM_MOONCAKE_STORE_TIER_LOG: batch_get_replica_desc, the first replica's kind
    described = consumer.batch_get_replica_desc(keys[:2])
    assert all(described[k][0].is_memory_replica() for k in keys[:2])

    # reset_cache on worker rank 0: remove_all(force=True), leases or not
    assert producer.remove_all(force=True) >= 6
    assert _lookup(consumer, keys) == 0
    for store in (producer, consumer):
        assert store.close() == 0


def test_a_full_pool_answers_minus_200_for_back_pressure(fresh_cluster, tmp_path):
    cluster = fresh_cluster(workers=1, dram="4MiB")
    store = _setup_like_vllm(cluster.master_addr, tmp_path)
    pinned = ReplicateConfig()
    pinned.with_hard_pin = True  # nothing evictable: the pool is really full
    assert store.put("ballast", b"b" * ((4 << 20) - (8 << 10)), pinned) == 0  # 8 KiB left
    cache = PagedKVCache(seed=2)
    cache.register(store)
    keys = _keys([f"{i:032x}" for i in range(4)])
    # each block is 16 KiB: none fits, and the answer comes at once (no wait for eviction)
    assert _save(store, cache, keys, [0, 1, 2, 3], ReplicateConfig()) == [NO_AVAILABLE_HANDLE] * 4
    assert _lookup(store, keys) == 0
    assert store.remove("ballast", force=True) == 0
    assert _save(store, cache, keys, [0, 1, 2, 3], ReplicateConfig()) == [0] * 4
    assert _lookup(store, keys) == 4
    store.close()


STAND_IN = '''
class MooncakeStoreConnector:
    """vLLM's connector, reduced to the import its worker makes."""
    def __init__(self, master):
        from mooncake.store import MooncakeDistributedStore, ReplicateConfig
        self.store = MooncakeDistributedStore()
        self.ok = self.store.setup("127.0.0.1", "P2PHANDSHAKE", 1 << 30, 1 << 30, "tcp", "",
                                   master)
'''


def test_the_loading_module_gives_vllm_our_store(cluster, tmp_path):
    package = tmp_path / "vllm/distributed/kv_transfer/kv_connector/v1/mooncake/store"
    package.mkdir(parents=True)
    (package / "connector.py").write_text(STAND_IN)
    code = ("import importlib, sys\n"
            "module = importlib.import_module('mooncake_client.integrations.vllm')\n"
            "cls = getattr(module, 'MooncakePoolConnector')\n"  # as vLLM's factory finds it
            f"connector = cls({cluster.master_addr!r})\n"
            "print(type(connector.store).__module__, connector.ok,\n"
            "      connector.store.put('vllm-module', b'v'), connector.store.get('vllm-module'))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["mooncake_client.compat.store", "0", "0", "b'v'"]


def test_without_vllm_the_loading_module_says_so(tmp_path):
    result = subprocess.run([sys.executable, "-c", "import mooncake_client.integrations.vllm"],
                            capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    if "vllm" in sys.modules or _vllm_installed():
        pytest.skip("a real vLLM is installed here")
    assert result.returncode != 0 and "No module named 'vllm'" in result.stderr


def _vllm_installed() -> bool:
    import importlib.util
    return importlib.util.find_spec("vllm") is not None
