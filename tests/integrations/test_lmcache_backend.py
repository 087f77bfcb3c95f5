"""LMCache's remote connector on this store (mooncake_client/integrations/lmcache.py), driven
through the real lmcache package's own plugin loader against a real local cluster: contents
round trip in both layouts, lookups, prefix loads, faults, and entries shared both ways with
LMCache's own `mooncakestore` connector running on our compat store."""
import asyncio
import json
import os
import sys
import threading

import pytest

if os.environ.get("MOONCAKE_REQUIRE_INTEGRATIONS") == "1":
    import lmcache  # noqa: F401  (CI: a missing lmcache is a failure, never a skip)
else:
    lmcache = pytest.importorskip("lmcache")

import torch  # noqa: E402  (lmcache brings it)
from lmcache.utils import CacheEngineKey  # noqa: E402
from lmcache.v1.config import LMCacheEngineConfig  # noqa: E402
from lmcache.v1.metadata import LMCacheMetadata  # noqa: E402
from lmcache.v1.protocol import RemoteMetadata  # noqa: E402
from lmcache.v1.storage_backend.connector import CreateConnector  # noqa: E402
from lmcache.v1.storage_backend.local_cpu_backend import LocalCPUBackend  # noqa: E402
from lmcache.v1.storage_backend.remote_backend import RemoteBackend  # noqa: E402

from mooncake_client import Client  # noqa: E402
from mooncake_client.integrations import lmcache as pool_lmcache  # noqa: E402
from mooncake_client.integrations.lmcache import (MooncakePoolConnector,  # noqa: E402
                                                  PoolSettings)
from mooncake_proto.errors import ErrorCode, InvalidArgumentError  # noqa: E402

MODULE = "mooncake_client.integrations.lmcache"
KV_SHAPE = (2, 2, 256, 2, 8)  # layers, K/V, tokens, heads, head size: 32 KiB bf16 chunks
TOKEN_BYTES = 128


def _plugin(class_name: str = "MooncakePoolAdapter", name: str = "mooncakepool") -> dict:
    return {f"remote_storage_plugin.{name}.module_path": MODULE,
            f"remote_storage_plugin.{name}.class_name": class_name}


class Engine:
    """What LMCache builds for one inference worker: config, metadata, the local CPU backend,
    the connector loop, and connectors made by LMCache's CreateConnector."""

    def __init__(self, extra: dict, plugins=("mooncakepool",), kv_shape=KV_SHAPE):
        self.cfg = LMCacheEngineConfig.from_defaults(
            chunk_size=256, local_cpu=True, max_local_cpu_size=0.05, remote_serde="naive",
            remote_storage_plugins=list(plugins), extra_config=extra)
        self.md = LMCacheMetadata(model_name="m", world_size=1, local_world_size=1,
                                  worker_id=0, local_worker_id=0, kv_dtype=torch.bfloat16,
                                  kv_shape=kv_shape)
        self.cpu = LocalCPUBackend(self.cfg, self.md)
        self.loop = asyncio.new_event_loop()
        self.connectors = []
        # every MemoryObj the CPU backend hands out, the connectors' included: a leak shows as
        # one whose ref count is not back to 0 (CPython would free it silently on drop)
        self.allocated = []
        allocate = self.cpu.allocate

        def tracked(*args, **kwargs):
            obj = allocate(*args, **kwargs)
            if obj is not None:
                self.allocated.append(obj)
            return obj
        self.cpu.allocate = tracked

    def connector(self, plugin: str = "mooncakepool"):
        """LMCache's InstrumentedRemoteConnector around the connector the plugin loader made."""
        conn = CreateConnector(f"plugin://{plugin}", self.loop, self.cpu, self.cfg, self.md,
                               plugin_name=plugin)
        self.connectors.append(conn)
        return conn

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def chunk(self, seed: int, tokens: int = 256):
        shape = torch.Size([2, 2, tokens, 16])
        obj = self.cpu.allocate([shape], [torch.bfloat16], None)
        gen = torch.Generator().manual_seed(seed)
        obj.raw_data.copy_(torch.randint(0, 256, (obj.get_size(),), dtype=torch.uint8,
                                         generator=gen))
        return obj

    def held(self) -> list:
        """MemoryObjs still referenced: [] once a test released what it was given."""
        return [obj for obj in self.allocated if obj.get_ref_count() > 0]

    def close(self):
        for conn in self.connectors:
            self.run(conn.close())
        self.loop.close()
        for obj in self.held():  # what a failed test left behind
            _release(*[obj] * obj.get_ref_count())
        self.cpu.close()


@pytest.fixture
def engines():
    made = []

    def make(extra: dict, **kwargs) -> Engine:
        made.append(Engine(extra, **kwargs))
        return made[-1]

    yield make
    for engine in made:
        engine.close()


_seq = iter(range(1, 1 << 30))


def _keys(n: int) -> list:
    base = next(_seq) << 8
    return [CacheEngineKey("m", 1, 0, base + i, torch.bfloat16) for i in range(n)]


def _put(engine: Engine, conn, keys, objs) -> None:
    """A put as RemoteBackend makes it: it takes a reference for the connector, which
    LMCache's InstrumentedRemoteConnector drops once the put returns."""
    for obj in objs:
        obj.ref_count_up()
    engine.run(conn.batched_put(keys, objs))
    assert [obj.get_ref_count() for obj in objs] == [1] * len(objs)  # ours again, no more


def _same(got, want) -> bool:
    """Same shape and bytes (compared as bytes: random bits make NaNs, which no float equals)."""
    size = want.get_size()
    return got.get_size() == size and got.tensor.shape == want.tensor.shape \
        and torch.equal(got.raw_tensor[:size], want.raw_tensor[:size])


def _release(*objs) -> None:
    for obj in objs:
        if obj is not None:
            obj.ref_count_down()


def _pool_engine(engines, cluster, save_chunk_meta: bool, **extra) -> tuple:
    engine = engines({**_plugin(), "mooncake_pool.master": cluster.master_addr,
                      "save_chunk_meta": save_chunk_meta, **extra})
    return engine, engine.connector()


# ---- loading ----

@pytest.mark.timeout(60)
@pytest.mark.parametrize("class_name,plugin", [("MooncakePoolAdapter", "mooncakepool"),
                                               ("MooncakePoolAdapter", "mooncakepool.b"),
                                               ("MooncakePoolConnector", "pool")])
def test_lmcache_plugin_loader_builds_the_connector(cluster, engines, class_name, plugin):
    engine = engines({**_plugin(class_name, plugin), "mooncake_pool.master": cluster.master_addr,
                      "mooncake_pool.transports": "tcp", "mooncake_pool.replica_num": "2"},
                     plugins=(plugin,))
    conn = engine.connector(plugin)
    inner = conn.getWrappedConnector()
    assert isinstance(inner, MooncakePoolConnector)
    assert inner.settings.transports == ("tcp",) and inner.replica_config.replica_num == 2
    assert engine.run(conn.ping()) == 0 and conn.support_ping()
    assert all([conn.support_batched_get(), conn.support_batched_put(),
                conn.support_batched_async_contains(), conn.support_batched_get_non_blocking(),
                conn.support_batched_contains()])


@pytest.mark.timeout(60)
def test_the_documented_yaml_loads(cluster, tmp_path):
    """The configuration in the module's docstring (the README's), as LMCache reads a file."""
    lines = pool_lmcache.__doc__.splitlines()
    start = lines.index("    chunk_size: 256")
    yaml_text = "\n".join(line[4:] for line in lines[start:lines.index("", start)])
    yaml_text = yaml_text.replace("10.0.0.1:50051", cluster.master_addr)
    (tmp_path / "lmcache.yaml").write_text(yaml_text.replace("max_local_cpu_size: 5",
                                                            "max_local_cpu_size: 0.05"))
    engine = Engine({})
    try:
        engine.cfg = LMCacheEngineConfig.from_file(str(tmp_path / "lmcache.yaml"))
        conn = engine.connector()
        assert isinstance(conn.getWrappedConnector(), MooncakePoolConnector)
        assert engine.run(conn.ping()) == 0
    finally:
        engine.close()


# ---- round trips ----

@pytest.mark.timeout(60)
@pytest.mark.parametrize("save_chunk_meta", [True, False])
def test_round_trip_by_content_and_the_stored_layout(cluster, engines, save_chunk_meta):
    engine, conn = _pool_engine(engines, cluster, save_chunk_meta)
    keys, objs = _keys(3), [engine.chunk(seed) for seed in range(3)]
    _put(engine, conn, keys, objs)
    allocated = len(engine.allocated)
    got = engine.run(conn.batched_get(keys + _keys(1)))
    assert got[3] is None
    assert len(engine.allocated) - allocated == 4  # read in place: one buffer a key, no copy
    for obj, back in zip(objs, got):
        assert back is not obj and back.get_ref_count() == 1
        assert torch.equal(back.raw_tensor, obj.raw_tensor)
        assert back.get_shapes() == obj.get_shapes() and back.tensor.shape == obj.tensor.shape
    single = engine.run(conn.get(keys[1]))
    assert torch.equal(single.raw_tensor, objs[1].raw_tensor)
    with Client(cluster.master_addr) as client:  # the object layout of LMCache's mooncakestore
        stored = client.get(keys[0].to_string())
    kv = objs[0].raw_tensor.numpy().tobytes()
    if save_chunk_meta:
        header = RemoteMetadata(len(kv), objs[0].get_shapes(), objs[0].get_dtypes(),
                                objs[0].get_memory_format()).serialize()
        assert stored == header + kv and len(header) == 28
    else:
        assert stored == kv
    _release(*objs, *got, single)
    assert engine.held() == []  # every buffer the connector allocated went back


@pytest.mark.timeout(60)
@pytest.mark.parametrize("save_chunk_meta", [True, False])
def test_a_partial_last_chunk(cluster, engines, save_chunk_meta):
    engine, conn = _pool_engine(engines, cluster, save_chunk_meta)
    keys, objs = _keys(2), [engine.chunk(1), engine.chunk(2, tokens=5)]
    _put(engine, conn, keys, objs)
    full, part = engine.run(conn.batched_get(keys))
    assert torch.equal(full.raw_tensor, objs[0].raw_tensor)
    assert part.get_size() == 5 * TOKEN_BYTES == objs[1].get_size()
    assert part.tensor.shape == torch.Size([2, 2, 5, 16])
    assert part.get_shapes() == [torch.Size([2, 2, 5, 16])]  # consistent for a later put
    assert _same(part, objs[1])
    _release(*objs, full, part)
    assert engine.held() == []


@pytest.mark.timeout(60)
def test_entries_of_another_layout(cluster, engines):
    """What another engine's config wrote: another shape (copied into an object of its own
    shapes), bare KV read as headed (no chunk: a miss), headed read as bare (too big for its
    buffer: a miss that costs no other key of the batch)."""
    headed, headed_conn = _pool_engine(engines, cluster, True)
    bare, bare_conn = _pool_engine(engines, cluster, False)
    odd_key, bare_key, headed_key, good_key = _keys(4)
    odd = headed.cpu.allocate([torch.Size([2, 2, 16, 256])], [torch.bfloat16], None)
    odd.raw_data.copy_(torch.arange(odd.get_size()) % 251)
    chunks = [bare.chunk(1), headed.chunk(2), bare.chunk(3)]
    # bare KV that starts like a header, but one of a length the entry does not have
    chunks[0].raw_data[:28].copy_(torch.frombuffer(bytearray(RemoteMetadata(
        12345, chunks[0].get_shapes(), chunks[0].get_dtypes(),
        chunks[0].get_memory_format()).serialize()), dtype=torch.uint8))
    _put(headed, headed_conn, [odd_key, headed_key], [odd, chunks[1]])
    _put(bare, bare_conn, [bare_key, good_key], [chunks[0], chunks[2]])
    got_odd, got_bare = headed.run(headed_conn.batched_get([odd_key, bare_key]))
    assert _same(got_odd, odd) and got_odd.get_shapes() == odd.get_shapes()
    assert got_bare is None
    assert headed_conn.getWrappedConnector().errors == {pool_lmcache.BAD_OBJECT: 1}
    got_headed, got_good = bare.run(bare_conn.batched_get([headed_key, good_key]))
    assert got_headed is None and _same(got_good, chunks[2])
    assert bare_conn.getWrappedConnector().errors == {ErrorCode.INVALID_PARAMS: 1}
    _release(odd, got_odd, got_good, *chunks)
    assert headed.held() == [] and bare.held() == []


@pytest.mark.timeout(60)
def test_cancelled_calls_keep_their_buffers_until_the_thread_is_done(cluster, engines):
    """LMCache cancels a get that outlives blocking_timeout_secs, and drops its reference on a
    put's object as soon as the put coroutine ends: memory a transfer thread still uses must
    not go back to the allocator before that thread is done."""
    engine, conn = _pool_engine(engines, cluster, True)
    client = conn.getWrappedConnector().client
    entered, gate = threading.Event(), threading.Event()

    def gated(real):
        def call(*args, **kwargs):
            entered.set()
            assert gate.wait(30)
            return real(*args, **kwargs)
        return call

    async def cancel_once_entered(coro):
        task = asyncio.ensure_future(coro)
        assert await asyncio.to_thread(entered.wait, 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async def settle():  # until the transfer thread is done and its callback ran
        while engine.held():
            await asyncio.sleep(0.01)

    key = _keys(1)[0]
    obj = engine.chunk(5)
    want = obj.raw_tensor.numpy().tobytes()
    client.batch_put_from = gated(client.batch_put_from)
    obj.ref_count_up()  # RemoteBackend's reference, dropped by the wrapper on cancellation
    engine.run(cancel_once_entered(conn.batched_put([key], [obj])))
    _release(obj)  # the test's own: only the connector's is left, held by the writing thread
    assert engine.held() == [obj]
    gate.set()
    engine.run(asyncio.wait_for(settle(), 30))
    with Client(cluster.master_addr) as reader:
        assert reader.get(key.to_string())[28:] == want

    entered.clear()
    gate.clear()
    client.batch_get_into = gated(client.batch_get_into)
    engine.run(cancel_once_entered(conn.batched_get([key])))
    assert len(engine.held()) == 1  # the buffer being read into
    gate.set()
    engine.run(asyncio.wait_for(settle(), 30))


# ---- lookups, prefixes, removal ----

@pytest.mark.timeout(60)
def test_lookup_is_one_round_trip_and_counts_the_prefix(cluster, engines):
    engine, conn = _pool_engine(engines, cluster, True)
    keys = _keys(5)
    objs = [engine.chunk(seed) for seed in range(5)]
    _put(engine, conn, [keys[i] for i in (0, 1, 3)], [objs[i] for i in (0, 1, 3)])
    client = conn.getWrappedConnector().client
    calls = []
    link = client._link
    for name in ("call", "grpc_call"):  # the framed port, and gRPC (the first ExistsPrefix)
        real = getattr(link, name)
        setattr(link, name, lambda method, *a, real=real, **kw:
                calls.append(method) or real(method, *a, **kw))
    assert engine.run(conn.batched_async_contains("lookup-1", keys)) == 2
    assert engine.run(conn.batched_async_contains("lookup-1b", keys)) == 2
    assert calls == ["ExistsPrefix"] * 2  # LMCache's own mooncakestore asks once per key
    del link.call, link.grpc_call
    assert conn.batched_contains(keys) == 2 and conn.batched_contains(keys[2:]) == 0
    assert engine.run(conn.batched_async_contains("lookup-2", [])) == 0
    prefix = engine.run(conn.batched_get_non_blocking("lookup-1", keys))
    assert len(prefix) == 2
    assert all(torch.equal(p.raw_tensor, o.raw_tensor) for p, o in zip(prefix, objs))
    assert engine.run(conn.batched_get_non_blocking("lookup-3", keys[2:])) == []
    _release(*objs, *prefix)
    assert engine.held() == []  # the hit after the gap (keys[3]) was released too


@pytest.mark.timeout(60)
def test_exists_is_a_bool_remove_sync_and_list(cluster, engines):
    engine, conn = _pool_engine(engines, cluster, False)
    key, missing = _keys(2)
    obj = engine.chunk(7)
    _put(engine, conn, [key], [obj])
    assert engine.run(conn.exists(key)) is True and conn.exists_sync(key) is True
    assert engine.run(conn.exists(missing)) is False and conn.exists_sync(missing) is False
    assert key.to_string() in engine.run(conn.list())
    assert conn.remove_sync(key) is True  # forced: the lease exists just granted is no bar
    assert conn.exists_sync(key) is False and conn.remove_sync(key) is False
    assert engine.run(conn.get(key)) is None
    assert not conn.getWrappedConnector().errors
    _release(obj)
    assert engine.held() == []


# ---- the path LMCache's engine takes ----

@pytest.mark.timeout(60)
def test_through_lmcache_remote_backend(cluster, engines):
    """RemoteBackend, as LMCache's storage manager creates one per plugin, with its
    connector loop on a thread of its own."""
    engine = engines({**_plugin(), "mooncake_pool.master": cluster.master_addr})
    thread = threading.Thread(target=engine.loop.run_forever, daemon=True)
    thread.start()
    backend = RemoteBackend(engine.cfg, engine.md, engine.loop, engine.cpu, "cpu",
                            plugin_name="mooncakepool")
    try:
        assert isinstance(backend.connection.getWrappedConnector(), MooncakePoolConnector)
        keys, objs = _keys(3), [engine.chunk(seed, tokens=256 if seed < 2 else 9)
                                for seed in range(3)]
        for key, obj in zip(keys, objs):
            backend.submit_put_task(key, obj).result(timeout=30)
        assert [obj.get_ref_count() for obj in objs] == [1, 1, 1]
        assert backend.contains(keys[0]) is True and backend.contains(_keys(1)[0]) is False
        lookup = asyncio.run_coroutine_threadsafe(
            backend.batched_async_contains("req", keys + _keys(1)), engine.loop)
        assert lookup.result(timeout=30) == 3
        got = backend.batched_get_blocking(keys)
        assert all(torch.equal(g.raw_tensor, o.raw_tensor) for g, o in zip(got, objs))
        assert backend.remove(keys[0]) is True and backend.contains(keys[0]) is False
        _release(*objs, *got)
        assert engine.held() == []
    finally:
        backend.close()
        engine.connectors.clear()
        engine.loop.call_soon_threadsafe(engine.loop.stop)
        thread.join(timeout=10)


# ---- faults ----

@pytest.mark.timeout(60)
def test_no_space_and_a_stopped_cluster_never_raise_into_lmcache(fresh_cluster, engines):
    cluster = fresh_cluster(workers=1, dram="4MiB")
    # 8 MiB chunks: more than the only worker's segment, so a full chunk has no room anywhere
    engine = engines({**_plugin(), "mooncake_pool.master": cluster.master_addr,
                      "mooncake_pool.master_retry_s": 0, "mooncake_pool.rpc_timeout_s": 2,
                      "mooncake_pool.put_wait_s": 0}, kv_shape=(2, 2, 256, 32, 128))
    conn = engine.connector()
    errors = conn.getWrappedConnector().errors
    big_key, key = _keys(2)
    shape = torch.Size([2, 2, 256, 4096])
    big = engine.cpu.allocate([shape], [torch.bfloat16], None)
    small = engine.cpu.allocate([torch.Size([2, 2, 8, 4096])], [torch.bfloat16], None)
    _put(engine, conn, [big_key, key], [big, small])  # the one that fits is stored
    assert errors == {ErrorCode.NO_AVAILABLE_HANDLE: 1}
    assert conn.exists_sync(big_key) is False and conn.exists_sync(key) is True

    cluster.stop()
    assert engine.run(conn.get(key)) is None
    assert engine.run(conn.batched_get([key, big_key])) == [None, None]
    _put(engine, conn, [key], [small])
    assert conn.exists_sync(key) is False and engine.run(conn.exists(key)) is False
    assert engine.run(conn.batched_async_contains("l", [key])) == 0
    assert engine.run(conn.batched_get_non_blocking("l", [key])) == []
    assert conn.remove_sync(key) is False and engine.run(conn.list()) == []
    assert engine.run(conn.ping()) == ErrorCode.RPC_FAIL
    assert errors[ErrorCode.RPC_FAIL] == 10 and errors[ErrorCode.NO_AVAILABLE_HANDLE] == 1
    _release(big, small)
    assert engine.held() == []  # the buffers of the failed reads were released


# ---- settings ----

def test_settings_and_their_fallbacks(tmp_path, monkeypatch):
    monkeypatch.delenv("MOONCAKE_CONFIG_PATH", raising=False)
    with pytest.raises(InvalidArgumentError, match="no master"):
        PoolSettings.from_extra_config({"save_chunk_meta": False})
    with pytest.raises(InvalidArgumentError, match="mooncake_pool.replicas"):
        PoolSettings.from_extra_config({"mooncake_pool.master": "h:1",
                                        "mooncake_pool.replicas": 2})
    with pytest.raises(InvalidArgumentError, match="replica_num must be >= 1"):
        PoolSettings.from_extra_config({"mooncake_pool.master": "h:1",
                                        "mooncake_pool.replica_num": 0})
    with pytest.raises(InvalidArgumentError, match="rpc_timeout_s"):
        PoolSettings.from_extra_config({"mooncake_pool.master": "h:1",
                                        "mooncake_pool.rpc_timeout_s": "soon"})
    # an existing mooncakestore config: its keys, as LMCache reads them
    theirs = PoolSettings.from_extra_config({"master_server_address": "10.0.0.1:50051",
                                             "protocol": "rdma"})
    assert (theirs.master, theirs.transports) == ("10.0.0.1:50051", ("shm", "rdma", "tcp"))
    prefixed = PoolSettings.from_extra_config({"master_server_address": "a:1",
                                               "mooncake_master_server_addr": "b:2"})
    assert prefixed.master == "b:2"
    ours = PoolSettings.from_extra_config({"master_server_address": "a:1",
                                           "mooncake_pool.master": "etcd://e:2379/c1",
                                           "mooncake_pool.transports": "shm, tcp"})
    assert (ours.master, ours.transports) == ("etcd://e:2379/c1", ("shm", "tcp"))
    config = tmp_path / "mooncake.json"
    config.write_text(json.dumps({"local_hostname": "n1", "metadata_server": "P2PHANDSHAKE",
                                  "master_server_address": "etcd://e1:2379;e2:2379",
                                  "protocol": "tcp"}))
    monkeypatch.setenv("MOONCAKE_CONFIG_PATH", str(config))
    from_file = PoolSettings.from_extra_config({"master_server_address": "ignored:1"})
    assert from_file.master == "etcd://e1:2379,e2:2379/mooncake"
    assert from_file.transports == ("shm", "tcp")


def test_the_integrations_package_does_not_need_lmcache():
    import subprocess
    code = ("import sys, mooncake_client.integrations\n"
            "assert 'lmcache' not in sys.modules and 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert pool_lmcache.PLUGIN_TYPE == "mooncakepool"


# ---- sharing entries with LMCache's own mooncakestore connector ----

@pytest.fixture
def mooncake_alias(monkeypatch):
    """`from mooncake.store import MooncakeDistributedStore` finds our compat store, as with
    `mooncake_client.compat.alias.install()` in an inference server; undone afterwards."""
    from mooncake_client.compat import alias
    if any(m == "mooncake" or m.startswith("mooncake.") for m in sys.modules):
        pytest.fail("mooncake was imported before the alias could be installed")
    monkeypatch.delenv("MOONCAKE_CONFIG_PATH", raising=False)
    saved_path = list(sys.path)
    alias.install()
    yield
    sys.path[:] = saved_path
    for name in [m for m in sys.modules if m == "mooncake" or m.startswith("mooncake.")]:
        del sys.modules[name]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("save_chunk_meta", [True, False])
def test_entries_are_shared_with_lmcache_mooncakestore(cluster, engines, mooncake_alias,
                                                       save_chunk_meta):
    # one mooncakestore config for both: ours only adds the plugin's two keys
    engine = engines({**_plugin(), "local_hostname": "127.0.0.1",
                      "metadata_server": "P2PHANDSHAKE", "protocol": "tcp",
                      "master_server_address": cluster.master_addr,
                      "save_chunk_meta": save_chunk_meta},
                     plugins=("mooncakestore", "mooncakepool"))
    theirs, ours = engine.connector("mooncakestore"), engine.connector("mooncakepool")
    assert type(theirs.getWrappedConnector()).__name__ == "MooncakestoreConnector"
    assert type(theirs.getWrappedConnector().store).__module__ == "mooncake_client.compat.store"
    ours_keys, their_keys = _keys(2), _keys(2)
    ours_objs = [engine.chunk(1), engine.chunk(2, tokens=7)]
    their_objs = [engine.chunk(3), engine.chunk(4, tokens=7)]
    _put(engine, ours, ours_keys, ours_objs)
    _put(engine, theirs, their_keys, their_objs)
    assert [engine.run(theirs.exists(k)) for k in ours_keys] == [1, 1]
    assert [ours.exists_sync(k) for k in their_keys] == [True, True]
    read_by_them = engine.run(theirs.batched_get(ours_keys + their_keys))
    read_by_us = engine.run(ours.batched_get(their_keys + ours_keys))
    for got, want in zip(read_by_them, ours_objs + their_objs):
        assert _same(got, want)
    for got, want in zip(read_by_us, their_objs + ours_objs):
        assert _same(got, want)
    assert engine.run(ours.batched_async_contains("l", their_keys + _keys(1))) == 2
    _release(*ours_objs, *their_objs, *read_by_them, *read_by_us)
    assert engine.held() == []


def test_a_configuration_it_cannot_run_with_is_irrecoverable(engines, monkeypatch):
    """LMCache retries a connector that failed to build every 10 s, except on
    IrrecoverableException: no master, or an unknown key, will not mend by waiting."""
    from lmcache.v1.exceptions import IrrecoverableException
    monkeypatch.delenv("MOONCAKE_CONFIG_PATH", raising=False)
    engine = engines({"save_chunk_meta": False})
    with pytest.raises(IrrecoverableException, match="no master"):
        MooncakePoolConnector(engine.loop, engine.cpu, engine.cfg, engine.md)
