"""SGLang's HiCache storage on this store, against a real cluster. SGLang pins a CUDA build of
torch and does not install on this machine, so its cache controller's calls are made here as
sglang 0.5.23 makes them (managers/cache_controller.py): the dynamic backend factory's
cls(storage_config, {}), register_mem_pool_host, batch_exists per batch of pages, then
batch_set_v1 / batch_get_v1 with host-pool indices. The host pools below mirror
get_page_buffer_meta of SGLang's MHA and MLA host pools (mem_cache/pool_host/mha.py, mla.py)
byte for byte; SGLang's own objects, not ours. Then SGLang's Mooncake backend's own calls on
MooncakeDistributedStore (mem_cache/storage/mooncake_store/mooncake_store.py), answered by the
compat store."""
import dataclasses
import os
import uuid

import pytest

from mooncake_client.compat import MooncakeDistributedStore, ReplicateConfig
from mooncake_proto.errors import InvalidArgumentError

if os.environ.get("MOONCAKE_REQUIRE_INTEGRATIONS") == "1":
    import torch
else:
    torch = pytest.importorskip("torch")

from mooncake_client.integrations.sglang import MooncakePoolStore  # noqa: E402

LAYERS, HEADS, HEAD_DIM, PAGE = 3, 2, 8, 4  # tokens per page


@dataclasses.dataclass
class StorageConfig:
    """SGLang's HiCacheStorageConfig's fields (built by keyword, as its order changes)."""
    tp_rank: int = 0
    tp_size: int = 1
    pp_rank: int = 0
    pp_size: int = 1
    attn_cp_rank: int = 0
    attn_cp_size: int = 1
    is_mla_model: bool = False
    enable_storage_metrics: bool = False
    is_page_first_layout: bool = True
    model_name: str | None = "Qwen/Qwen3-8B"
    extra_config: dict | None = None


class MHAHostPool:
    """MHATokenToKVPoolHost's buffer and get_page_buffer_meta (page_first and layer_first)."""

    def __init__(self, layout: str, size: int = 64, seed: int = 0):
        self.layout, self.size, self.page_size = layout, size, PAGE
        self.layer_num, self.head_num, self.head_dim = LAYERS, HEADS, HEAD_DIM
        self.dtype = torch.float16
        dims = (2, LAYERS, size, HEADS, HEAD_DIM) if layout == "layer_first" \
            else (2, size, LAYERS, HEADS, HEAD_DIM)
        self.kv_buffer = torch.randn(dims, generator=torch.Generator().manual_seed(seed)) \
            .to(self.dtype)

    def get_page_buffer_meta(self, indices):
        itemsize = self.dtype.itemsize
        base, indices = self.kv_buffer.data_ptr(), indices.tolist()
        v_offset = self.layer_num * self.size * self.head_num * self.head_dim * itemsize
        pointers = []
        for i in range(0, len(indices), self.page_size):
            if self.layout == "layer_first":
                for layer in range(self.layer_num):
                    k = base + indices[i] * self.head_num * self.head_dim * itemsize \
                        + layer * self.size * self.head_num * self.head_dim * itemsize
                    pointers += [k, k + v_offset]
            else:
                k = base + indices[i] * self.layer_num * self.head_num * self.head_dim * itemsize
                pointers += [k, k + v_offset]
        per_layer = 1 if self.layout == "layer_first" else self.layer_num
        size = per_layer * itemsize * self.page_size * self.head_num * self.head_dim
        return pointers, [size] * len(pointers)

    def page(self, first_token: int):
        if self.layout == "layer_first":
            return self.kv_buffer[:, :, first_token:first_token + PAGE].clone()
        return self.kv_buffer[:, first_token:first_token + PAGE].clone()


class MLAHostPool:
    """MLATokenToKVPoolHost's page_first buffer and get_page_buffer_meta."""

    def __init__(self, size: int = 64, seed: int = 0, kv_cache_dim: int = 24):
        self.size, self.page_size, self.layer_num, self.kv_cache_dim = size, PAGE, LAYERS, kv_cache_dim
        self.dtype = torch.bfloat16
        self.kv_buffer = torch.randn((size, LAYERS, 1, kv_cache_dim),
                                     generator=torch.Generator().manual_seed(seed)).to(self.dtype)

    def get_page_buffer_meta(self, indices):
        itemsize, indices = self.dtype.itemsize, indices.tolist()
        pointers = [self.kv_buffer.data_ptr() + i * self.layer_num * self.kv_cache_dim * itemsize
                    for i in indices[::self.page_size]]
        size = self.layer_num * itemsize * self.page_size * self.kv_cache_dim
        return pointers, [size] * len(pointers)

    def page(self, first_token: int):
        return self.kv_buffer[first_token:first_token + PAGE].clone()


def _backend(cluster, **config) -> MooncakePoolStore:
    """As SGLang's dynamic factory builds a backend: cls(storage_config, kwargs)."""
    extra = {"backend_name": "mooncake_pool", "module_path": "mooncake_client.integrations.sglang",
             "class_name": "MooncakePoolStore", "interface_v1": 1,
             "master": cluster.master_addr, "key_prefix": f"test-{uuid.uuid4().hex[:8]}"}
    extra.update(config.pop("extra", {}))
    return MooncakePoolStore(StorageConfig(extra_config=extra, **config), {})


def _indices(pages: list[int]):
    return torch.tensor([p * PAGE + t for p in pages for t in range(PAGE)], dtype=torch.int64)


def _hashes(n: int) -> list[str]:
    return [uuid.uuid4().hex for _ in range(n)]


@pytest.mark.parametrize("layout", ["page_first", "layer_first"])
def test_mha_pages_back_up_and_load_as_the_controller_drives_them(cluster, layout):
    writer, reader = _backend(cluster), None
    source, target = MHAHostPool(layout, seed=1), MHAHostPool(layout, seed=2)
    writer.register_mem_pool_host(source)
    hashes = _hashes(6)
    assert writer.batch_exists(hashes) == 0
    assert writer.batch_set_v1(hashes[:4], _indices([0, 1, 2, 3])) == [True] * 4
    assert writer.batch_set_v1(hashes[:4], _indices([0, 1, 2, 3])) == [True] * 4  # stored: True
    assert writer.batch_exists(hashes) == 4

    reader = _backend(cluster, extra={"key_prefix": writer.key_prefix.rstrip("_")})
    reader.register_mem_pool_host(target)
    assert reader.batch_get_v1(hashes[:4], _indices([10, 11, 12, 13])) == [True] * 4
    for source_page, target_page in zip([0, 1, 2, 3], [10, 11, 12, 13]):
        assert torch.equal(target.page(target_page * PAGE), source.page(source_page * PAGE))
    # a page missing in the middle: the controller loads the leading run of True
    assert reader.batch_get_v1([hashes[0], hashes[5], hashes[1]], _indices([14, 15, 9])) == \
        [True, False, True]
    for backend in (writer, reader):
        backend.close()


def test_mha_ranks_store_their_own_heads_and_a_missing_v_ends_the_prefix(cluster):
    rank0 = _backend(cluster, tp_rank=0, tp_size=2)
    rank1 = _backend(cluster, tp_rank=1, tp_size=2, extra={"key_prefix": rank0.key_prefix[:-1]})
    pool0, pool1 = MHAHostPool("page_first", seed=3), MHAHostPool("page_first", seed=4)
    rank0.register_mem_pool_host(pool0)
    rank1.register_mem_pool_host(pool1)
    hashes = _hashes(3)
    assert rank0.batch_set_v1(hashes, _indices([0, 1, 2])) == [True] * 3
    assert rank0.batch_exists(hashes) == 3 and rank1.batch_exists(hashes) == 0  # per rank
    # the V object of rank 0's second page goes missing: pages from there on are not whole
    assert rank0.client.remove(f"{rank0.key_prefix}{hashes[1]}_0_v", force=True)
    assert rank0.batch_exists(hashes) == 1
    rank0.close()
    rank1.close()


def test_mla_pages_are_written_once_and_read_by_every_rank(cluster):
    writer = _backend(cluster, is_mla_model=True, tp_rank=0, tp_size=2)
    other = _backend(cluster, is_mla_model=True, tp_rank=1, tp_size=2,
                     extra={"key_prefix": writer.key_prefix[:-1]})
    source, target = MLAHostPool(seed=5), MLAHostPool(seed=6)
    writer.register_mem_pool_host(source)
    other.register_mem_pool_host(target)
    hashes = _hashes(2)
    assert other.batch_set_v1(hashes, _indices([0, 1])) == [True, True]  # not a writer
    assert other.batch_exists(hashes) == 0
    assert writer.batch_set_v1(hashes, _indices([0, 1])) == [True, True]
    assert writer.client.exists(f"{writer.key_prefix}{hashes[0]}__k")  # SGLang's MLA name
    assert other.batch_exists(hashes) == 2
    assert other.batch_get_v1(hashes, _indices([7, 9])) == [True, True]
    assert torch.equal(target.page(7 * PAGE), source.page(0))
    assert torch.equal(target.page(9 * PAGE), source.page(PAGE))
    writer.close()
    other.close()


def test_the_per_tensor_interface_without_interface_v1(cluster):
    backend = _backend(cluster)
    pages = [torch.randn(64) for _ in range(3)]
    hashes = _hashes(3)
    assert backend.batch_set(hashes, pages) is True
    assert backend.exists(hashes[0]) and not backend.exists(uuid.uuid4().hex)
    targets = [torch.zeros(64) for _ in range(3)]
    got = backend.batch_get([hashes[0], uuid.uuid4().hex, hashes[2]], targets)
    assert got[0] is targets[0] and got[1] is None and got[2] is targets[2]
    assert torch.equal(targets[0], pages[0]) and torch.equal(targets[2], pages[2])
    assert backend.set(hashes[1], pages[1]) is True
    assert torch.equal(backend.get(hashes[1], torch.zeros(64)), pages[1])
    backend.close()


def test_one_lost_page_fails_that_page_only(fresh_cluster):
    cluster = fresh_cluster(workers=2, dram="16MiB")
    # tcp only: a dead worker's shm segment outlives it, and would still be read
    backend = _backend(cluster, extra={"transports": "tcp", "transfer_timeout_s": 2})
    pool, target = MHAHostPool("page_first", seed=9), MHAHostPool("page_first", seed=10)
    backend.register_mem_pool_host(pool)
    hashes = _hashes(6)
    # two backups: each batch lands on the freest worker of the node, so the halves differ
    assert backend.batch_set_v1(hashes[:3], _indices(range(3))) == [True] * 3
    assert backend.batch_set_v1(hashes[3:], _indices(range(3, 6))) == [True] * 3
    holders = {name: backend.client.get_replicas(name)[0].worker_id
               for key in hashes for name in backend._object_keys(key)}  # noqa: SLF001
    lost = sorted(set(holders.values()))[0]
    cluster.workers[lost].kill()
    backend.register_mem_pool_host(target)
    loaded = backend.batch_get_v1(hashes, _indices(range(8, 14)))
    expected = [all(holders[n] != lost for n in backend._object_keys(k)) for k in hashes]  # noqa: SLF001
    assert loaded == expected and any(expected) and not all(expected)
    for page, ok in enumerate(expected):
        if ok:
            assert torch.equal(target.page((8 + page) * PAGE), pool.page(page * PAGE))
    backend.close()


def test_ranks_of_the_per_tensor_interface_keep_their_own_heads(cluster):
    rank0 = _backend(cluster, tp_rank=0, tp_size=2)
    rank1 = _backend(cluster, tp_rank=1, tp_size=2, extra={"key_prefix": rank0.key_prefix[:-1]})
    page = _hashes(1)
    heads0, heads1 = torch.randn(32), torch.randn(32)
    assert rank0.set(page[0], heads0) and rank1.set(page[0], heads1)
    assert torch.equal(rank1.get(page[0], torch.zeros(32)), heads1)
    assert torch.equal(rank0.get(page[0], torch.zeros(32)), heads0)
    rank0.close()
    rank1.close()


def test_layouts_it_would_store_wrongly_are_refused_at_start(cluster):
    extra = {"master": cluster.master_addr}
    for fields in ({"dcp_size": 2}, {"should_split_heads": True}):
        config = StorageConfig(extra_config=extra, is_mla_model=True)
        for name, value in fields.items():
            setattr(config, name, value)
        with pytest.raises(InvalidArgumentError):
            MooncakePoolStore(config, {})


def test_sglangs_writer_rule_is_followed_when_it_says(cluster):
    config = StorageConfig(is_mla_model=True, tp_rank=1, tp_size=2,
                           extra_config={"master": cluster.master_addr})
    config.is_storage_writer = True  # SGLang: tp_rank == dcp_rank decides, not rank 0
    backend = MooncakePoolStore(config, {})
    assert backend.writes
    backend.close()


def test_after_close_every_call_is_a_miss(cluster):
    backend = _backend(cluster)
    backend.register_mem_pool_host(MHAHostPool("page_first"))
    backend.close()
    hashes = _hashes(2)
    assert backend.batch_exists(hashes) == 0
    assert backend.batch_get_v1(hashes, _indices([0, 1])) == [False, False]
    assert backend.batch_set_v1(hashes, _indices([0, 1])) == [False, False]
    assert backend.exists(hashes[0]) is False and backend.batch_set(hashes, [b"1", b"2"]) is False


def test_faults_are_misses_and_failed_pages_never_exceptions(fresh_cluster):
    cluster = fresh_cluster(workers=1, dram="16MiB")
    backend = _backend(cluster, extra={"master_retry_s": 0, "rpc_timeout_s": 2})
    pool = MHAHostPool("page_first")
    backend.register_mem_pool_host(pool)
    hashes = _hashes(2)
    assert backend.batch_set_v1(hashes, _indices([0, 1])) == [True, True]
    cluster.stop()
    assert backend.batch_exists(hashes) == 0
    assert backend.batch_get_v1(hashes, _indices([2, 3])) == [False, False]
    assert backend.batch_set_v1(hashes, _indices([2, 3])) == [False, False]
    assert backend.exists(hashes[0]) is False
    assert sum(backend.errors.values()) == 4
    backend.close()


def test_a_backend_without_a_master_says_where_to_give_one(monkeypatch):
    for name in ("MOONCAKE_CONFIG_PATH", "MOONCAKE_MASTER"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(Exception, match="no master"):
        MooncakePoolStore(StorageConfig(extra_config={}), {})


def test_sglang_mooncake_backends_own_calls_on_the_compat_store(cluster):
    """MooncakeStore (SGLang's Mooncake backend) unchanged, as far as the store sees it."""
    store = MooncakeDistributedStore()
    # setup: 7 positional + the transfer engine (None), keywords it may add
    assert store.setup("localhost", "P2PHANDSHAKE", (4 << 30) // 1, 16 << 20, "tcp", "",
                       cluster.master_addr, None, enable_ssd_offload=False) == 0
    # warmup: put 4 KiB under a random key, is_exist == 1, get back the same bytes
    warmup_key = "sglang_mooncake_store_warmup_key" + uuid.uuid4().hex
    assert store.put(warmup_key, bytes(4096)) == 0
    assert store.is_exist(warmup_key) == 1 and store.get(warmup_key) == bytes(4096)
    pool = MHAHostPool("page_first", seed=7)
    tensor = pool.kv_buffer
    assert store.register_buffer(tensor.data_ptr(), tensor.numel() * tensor.element_size()) == 0
    hashes = _hashes(3)
    pointers, sizes = pool.get_page_buffer_meta(_indices([0, 1, 2]))
    keys = [f"{h}_0_{kv}" for h in hashes for kv in ("k", "v")]
    # batch_set_v1: batch_is_exist, then batch_put_from of the keys whose answer is not 1
    assert store.batch_is_exist(keys) == [0] * 6
    assert store.batch_put_from(keys, pointers, sizes) == [0] * 6
    # batch_exists: the first K or V key whose answer is not 1 ends the page prefix
    assert store.batch_is_exist(keys + ["absent_0_k"]) == [1] * 6 + [0]
    # batch_get_v1: batch_get_into, > 0 bytes read is a loaded object
    target = MHAHostPool("page_first", seed=8)
    t = target.kv_buffer
    assert store.register_buffer(t.data_ptr(), t.numel() * t.element_size()) == 0
    target_pointers, target_sizes = target.get_page_buffer_meta(_indices([4, 5, 6]))
    assert store.batch_get_into(keys, target_pointers, target_sizes) == sizes
    assert torch.equal(target.page(4 * PAGE), pool.page(0))
    replicate = ReplicateConfig()  # group semantics off: no group_ids attribute needed
    assert not hasattr(replicate, "group_ids")
    store.close()
