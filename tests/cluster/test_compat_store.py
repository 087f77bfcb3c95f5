"""mooncake_client.compat.MooncakeDistributedStore against a real cluster: every method with
Mooncake's return conventions, checked by code and by content."""
import ctypes
import json
import subprocess
import sys

import numpy as np
import pytest

from mooncake_client.compat import BufferHandle, MooncakeDistributedStore, ReplicateConfig

OK, NO_SPACE, INVALID, NOT_FOUND, HAS_LEASE, RPC_FAIL = 0, -200, -600, -704, -706, -900


def _setup(cluster, **kwargs) -> MooncakeDistributedStore:
    store = MooncakeDistributedStore()
    # Mooncake's seven positional arguments, as every integration passes them
    assert store.setup("node-a", "P2PHANDSHAKE", 64 << 20, 16 << 20, "tcp", "",
                       cluster.master_addr, **kwargs) == OK
    return store


@pytest.fixture
def store(cluster):
    store = _setup(cluster)
    yield store
    store.close()


@pytest.fixture
def pool(store):
    """A registered raw buffer, as inference servers register their KV-cache pools."""
    memory = np.zeros(4 << 20, dtype=np.uint8)
    assert store.register_buffer(memory.ctypes.data, memory.nbytes) == OK
    yield memory
    assert store.unregister_buffer(memory.ctypes.data) == OK


def _fill(memory, offset: int, size: int, seed: int) -> bytes:
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
    memory[offset:offset + size] = data
    return data.tobytes()


def test_put_get_and_the_miss_conventions(store):
    assert store.put("compat-a", b"hello") == OK
    assert store.put("compat-a", b"other") == OK  # first writer wins, as Mooncake
    assert store.get("compat-a") == b"hello"
    assert store.get("compat-missing") == b""
    assert store.is_exist("compat-a") == 1 and store.is_exist("compat-missing") == 0
    assert store.batch_is_exist(["compat-a", "compat-missing", "compat-a"]) == [1, 0, 1]
    assert store.get_size("compat-a") == 5 and store.get_size("compat-missing") == NOT_FOUND
    assert store.put("compat-np", np.arange(1000, dtype=np.int32)) == OK
    assert store.get("compat-np") == np.arange(1000, dtype=np.int32).tobytes()
    assert store.put_batch(["compat-b1", "compat-b2"], [b"1", b"22"]) == OK
    assert store.get_batch(["compat-b1", "compat-missing", "compat-b2"]) == [b"1", b"", b"22"]
    assert store.put_parts("compat-parts", b"ab", bytearray(b"cd"), memoryview(b"ef")) == OK
    assert store.get("compat-parts") == b"abcdef"
    assert store.put_parts("compat-empty", b"", b"") == OK  # Mooncake stores nothing
    assert store.is_exist("compat-empty") == 0


def test_zero_copy_calls_on_a_registered_buffer(store, pool):
    base = pool.ctypes.data
    one = _fill(pool, 0, 4096, 1)
    two = _fill(pool, 8192, 10_000, 2)
    assert store.put_from("compat-zc-1", base, 4096) == OK
    assert store.batch_put_from(["compat-zc-2", "compat-zc-3"], [base + 8192, base + 1],
                                [10_000, 4095]) == [OK, OK]
    # get_into: the object's size; the size argument is the buffer's capacity
    assert store.get_into("compat-zc-1", base + (1 << 20), 8192) == 4096
    assert pool[1 << 20:(1 << 20) + 4096].tobytes() == one
    assert store.get_into("compat-zc-2", base + (2 << 20), 100) == INVALID  # too small
    assert store.get_into("compat-zc-missing", base, 4096) == NOT_FOUND
    results = store.batch_get_into(["compat-zc-2", "compat-zc-missing", "compat-zc-3"],
                                   [base + (2 << 20), base, base + (3 << 20) + 3],
                                   [10_000, 4096, 4095])
    assert results == [10_000, NOT_FOUND, 4095]
    assert pool[2 << 20:(2 << 20) + 10_000].tobytes() == two
    assert pool[(3 << 20) + 3:(3 << 20) + 4098].tobytes() == one[1:]
    # one key's buffer too small fails that key only
    assert store.batch_get_into(["compat-zc-1", "compat-zc-2"], [base + (1 << 20), base],
                                [4096, 16]) == [4096, INVALID]


def test_multi_buffer_objects_as_per_layer_pages(store, pool):
    base = pool.ctypes.data
    k = _fill(pool, 0, 3000, 3)
    v = _fill(pool, 4096, 5000, 4)
    assert store.batch_put_from_multi_buffers(
        ["compat-mb-0", "compat-mb-1"], [[base, base + 4096], [base + 4096]],
        [[3000, 5000], [5000]]) == [OK, OK]
    assert store.get("compat-mb-0") == k + v
    out = 1 << 20
    assert store.batch_get_into_multi_buffers(
        ["compat-mb-0", "compat-mb-missing"], [[base + out, base + out + 3000], [base]],
        [[3000, 5000], [10]]) == [8000, NOT_FOUND]
    assert pool[out:out + 8000].tobytes() == k + v
    assert store.batch_put_from_multi_buffers(["compat-mb-2"], [[base]], [[1], [2]]) == [INVALID]


def test_pointers_outside_registered_memory_are_refused_per_key(store, pool):
    stray = np.zeros(100, dtype=np.uint8)
    assert store.put_from("compat-stray", stray.ctypes.data, 100) == INVALID
    assert store.batch_put_from(["compat-stray-1", "compat-stray-2"],
                                [pool.ctypes.data, stray.ctypes.data], [100, 100]) == [OK, INVALID]
    assert store.is_exist("compat-stray-1") == 1 and store.is_exist("compat-stray-2") == 0
    assert store.batch_put_from(["k"], [1, 2], [3]) == [INVALID]  # lengths disagree


def test_buffer_handles_expose_the_bytes_without_a_copy(store):
    data = bytes(range(256)) * 64
    assert store.put("compat-handle", data) == OK
    handle = store.get_buffer("compat-handle")
    assert isinstance(handle, BufferHandle)
    assert (handle.size(), len(handle), bytes(handle)) == (len(data), len(data), data)
    assert memoryview(handle).nbytes == len(data)
    assert np.frombuffer(handle, dtype=np.uint8)[255] == 255
    assert ctypes.string_at(handle.ptr(), 4) == data[:4]
    handles = store.batch_get_buffer(["compat-handle", "compat-missing"])
    assert bytes(handles[0]) == data and handles[1] is None


def test_replica_config_and_descriptors(cluster, store):
    config = ReplicateConfig()
    config.replica_num = 2
    config.with_soft_pin = True
    assert "replica_num: 2" in str(config)
    assert store.put("compat-two", b"x" * 5000, config) == OK
    described = store.batch_get_replica_desc(["compat-two", "compat-missing"])
    assert described["compat-missing"] == []
    replicas = described["compat-two"]
    assert sorted(r.worker_id for r in replicas) == ["worker-0", "worker-1"]
    assert all(r.is_memory_replica() and not r.is_disk_replica() for r in replicas)
    assert {r.get_memory_descriptor().buffer_descriptor.size for r in replicas} == {5000}
    pinned = ReplicateConfig()
    pinned.preferred_segment = "worker-1"
    assert store.put("compat-pinned", b"p" * 100, pinned) == OK
    assert [r.worker_id for r in store.get_replica_desc("compat-pinned")] == ["worker-1"]
    mine = ReplicateConfig()
    mine.preferred_segment = store.get_hostname()  # LMCache's prefer_local_alloc: this node
    assert store.get_hostname() == "node-a"
    assert store.put("compat-mine", b"m", mine) == OK


def test_remove_conventions(cluster, store):
    assert store.put("compat-rm", b"r") == OK
    assert store.get("compat-rm") == b"r"  # leases it
    assert store.remove("compat-rm") == HAS_LEASE
    assert store.remove("compat-rm", force=True) == OK
    assert store.remove("compat-rm") == NOT_FOUND
    assert store.put_batch(["compat-rm-1", "compat-rm-2"], [b"1", b"2"]) == OK
    assert store.is_exist("compat-rm-1") == 1  # leases it
    assert store.batch_remove(["compat-rm-1", "compat-rm-2", "compat-rm-3"]) == \
        [HAS_LEASE, OK, NOT_FOUND]
    assert store.batch_remove(["compat-rm-1"], force=True) == [OK]


def test_remove_all_counts(fresh_cluster):
    cluster = fresh_cluster(workers=1, dram="16MiB")
    store = _setup(cluster)
    assert store.put_batch([f"all-{i}" for i in range(5)], [b"x"] * 5) == OK
    assert store.remove_all(force=True) == 5
    assert store.get_batch([f"all-{i}" for i in range(5)]) == [b""] * 5
    store.close()


def test_out_of_space_is_minus_200(fresh_cluster):
    cluster = fresh_cluster(workers=1, dram="4MiB")
    store = _setup(cluster)
    config = ReplicateConfig()
    config.with_hard_pin = True  # never evicted: the pool really is full
    assert store.put("full-0", b"f" * (3 << 20), config) == OK
    assert store.put("full-1", b"f" * (3 << 20)) == NO_SPACE
    assert store.error_counts[NO_SPACE] == 1
    store.close()


def test_setup_forms_and_failures(cluster, tmp_path, monkeypatch):
    store = MooncakeDistributedStore()
    assert store.get("x") == b"" and store.put("x", b"1") == INVALID  # not set up: no crash
    assert store.health_check() == 1
    assert store.setup({"local_hostname": "h", "metadata_server": "P2PHANDSHAKE",
                        "global_segment_size": "64MB", "protocol": "tcp",
                        "master_server_addr": cluster.master_addr}) == OK
    assert store.health_check() == 0
    assert store.put("compat-dict", b"d") == OK and store.close() == OK
    assert store.health_check() == 1 and store.get("compat-dict") == b""
    # the dict LMCache 0.5.6 passes: the JSON config's names, values as strings, its own keys
    assert store.setup({"local_hostname": "h", "metadata_server": "P2PHANDSHAKE",
                        "global_segment_size": "3355443200", "local_buffer_size": "1073741824",
                        "protocol": "tcp", "device_name": "",
                        "master_server_address": cluster.master_addr,
                        "transfer_timeout": "1"}) == OK
    assert store.get("compat-dict") == b"d"
    assert store.setup({"local_hostname": "h", "metadata_server": "m",
                        "master_server_addr": cluster.master_addr,
                        "master_retry_s": "soon"}) == INVALID
    with pytest.raises(TypeError, match="transfer_timeout"):  # as a keyword: as pybind says
        store.setup("h", "m", 1, 1, "tcp", "", cluster.master_addr, transfer_timeout=1)
    assert store.setup("h", "", 1, 1, "tcp", "", cluster.master_addr) == INVALID
    assert store.setup("h", "m", "lots", 1, "tcp", "", cluster.master_addr) == INVALID
    assert store.setup("h", "m", 1, 1, "carrier-pigeon", "", cluster.master_addr) == INVALID
    config = tmp_path / "mooncake.json"
    config.write_text(json.dumps({"local_hostname": "h", "metadata_server": "P2PHANDSHAKE",
                                  "global_segment_size": "3GB", "local_buffer_size": 1 << 30,
                                  "protocol": "rdma", "device_name": "",
                                  "master_server_address": cluster.master_addr}))
    monkeypatch.setenv("MOONCAKE_CONFIG_PATH", str(config))
    assert store.setup_from_env() == OK  # rdma: no device here, so tcp carries the bytes
    assert store.get("compat-dict") == b"d"
    store.close()


def test_setup_without_a_master_fails_with_rpc_fail():
    store = MooncakeDistributedStore()
    # master_retry_s (ours, as a keyword or dict key): Client's 15 s of riding out a restart
    assert store.setup("h", "P2PHANDSHAKE", 1, 1, "tcp", "", "127.0.0.1:1",
                       master_retry_s=0) == RPC_FAIL
    assert store.health_check() == 1


def test_tenants_are_refused_rather_than_shared(cluster):
    store = MooncakeDistributedStore()
    assert store.setup("h", "P2PHANDSHAKE", 1, 1, "tcp", "", cluster.master_addr,
                       tenant_id="default") == OK
    assert store.setup("h", "P2PHANDSHAKE", 1, 1, "tcp", "", cluster.master_addr,
                       tenant_id="team-b") == INVALID
    store.close()


def test_numpy_and_torch_style_integers_are_pointers(store, pool):
    base = np.int64(pool.ctypes.data)  # what arithmetic on array addresses often gives
    _fill(pool, 0, 64, 9)
    assert store.put_from("compat-np-ptr", base, 64) == OK
    assert store.get_into("compat-np-ptr", base + np.int64(4096), 64) == 64
    assert store.batch_get_into(["compat-np-ptr"], [np.uint64(base + 8192)], [64]) == [64]
    assert pool[4096:4160].tobytes() == pool[8192:8256].tobytes() == pool[:64].tobytes()
    with pytest.raises(TypeError):
        store.put_from("compat-float-ptr", float(base), 64)


def test_a_master_that_is_gone_is_one_failure_per_batch_not_one_per_key(fresh_cluster):
    cluster = fresh_cluster(workers=1, dram="16MiB")
    store = MooncakeDistributedStore()
    assert store.setup({"local_hostname": "h", "metadata_server": "P2PHANDSHAKE",
                        "master_server_addr": cluster.master_addr, "master_retry_s": 0,
                        "rpc_timeout_s": 2}) == OK
    assert store.put("gone-0", b"0") == OK
    cluster.stop()
    assert store.batch_is_exist(["gone-0", "gone-1", "gone-2"]) == [RPC_FAIL] * 3
    assert store.get_batch(["gone-0", "gone-1"]) == [b"", b""]
    assert store.error_counts[RPC_FAIL] == 2  # one master call each, not one per key
    store.close()


RACE = """
import sys, threading
import numpy as np
from mooncake_client.compat import MooncakeDistributedStore
master = sys.argv[1]
store = MooncakeDistributedStore()
setup = lambda: store.setup("h", "P2PHANDSHAKE", 1, 1, "tcp", "", master)
assert setup() == 0
data = bytes(range(256)) * 4096  # 1 MiB: long copies out of the shm segment
assert store.put("race", data) == 0
buffer = np.zeros(len(data), dtype=np.uint8)
stop, wrong = threading.Event(), []
def reader():
    while not stop.is_set():
        got = store.get("race")
        if got not in (data, b""):
            wrong.append(len(got))
        store.batch_is_exist(["race", "absent"])
threads = [threading.Thread(target=reader) for _ in range(4)]
for t in threads:
    t.start()
for _ in range(6):
    assert setup() == 0  # replaces the client under the readers' feet
store.close()
stop.set()
for t in threads:
    t.join()
print("wrong", len(wrong), "after close", store.get("race") == b"")
"""


def test_setup_and_close_while_other_threads_read_never_crash(cluster):
    # in a process of its own: a copy out of an unmapped segment would kill it (SIGSEGV)
    result = subprocess.run([sys.executable, "-c", RACE, cluster.master_addr],
                            capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["wrong", "0", "after", "close", "True"]
