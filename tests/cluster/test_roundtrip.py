"""Put and get through real daemons: every size class over shm and tcp, zero-copy and batch forms."""
import os

import numpy as np
import pytest

from mooncake_client import Client, ReplicaConfig
from mooncake_proto.errors import InvalidArgumentError

SIZES = [1, 63, 64, 65, 4096, 65_537, 1 << 20, (4 << 20) + 3, 8 << 20]


@pytest.fixture(params=["shm", "tcp"])
def transport_client(request, cluster):
    with Client(cluster.master_addr, transports=(request.param,)) as c:
        yield c


@pytest.mark.parametrize("size", SIZES)
def test_put_get_round_trip_every_size(transport_client, size):
    key = f"rt/{transport_client.transport_names[0]}/{size}"
    data = os.urandom(size)
    transport_client.put(key, data)
    assert transport_client.get(key) == data
    buffer = bytearray(size + 10)
    assert transport_client.get_into(key, buffer) == size
    assert bytes(buffer[:size]) == data


def test_zero_copy_forms_accept_numpy_slices(transport_client):
    name = transport_client.transport_names[0]
    source = np.arange(3 * 1024 * 1024, dtype=np.uint8)
    chunk = source[1000:1000 + (1 << 20)]  # an unaligned slice of a bigger array
    assert transport_client.put_from(f"np/{name}", chunk) == 1 << 20
    target = np.zeros(2 << 20, dtype=np.uint8)
    window = target[7:7 + (1 << 20)]
    assert transport_client.get_into(f"np/{name}", window) == 1 << 20
    assert np.array_equal(window, chunk)
    assert not target[:7].any() and not target[7 + (1 << 20):].any()


def test_batch_forms(transport_client):
    name = transport_client.transport_names[0]
    keys = [f"batch/{name}/{i}" for i in range(20)]
    values = [os.urandom(100 + i * 997) for i in range(20)]
    transport_client.batch_put(keys, values)
    assert transport_client.batch_get(keys + [f"batch/{name}/missing"]) == values + [None]
    buffers = [bytearray(len(v)) for v in values]
    assert transport_client.batch_get_into(keys, buffers) == [len(v) for v in values]
    assert [bytes(b) for b in buffers] == values
    assert transport_client.batch_exists([keys[0], "batch/none"]) == [True, False]


def test_first_writer_wins(client):
    client.put("fww", b"first")
    client.put("fww", b"second")  # an existing key is success, and changes nothing
    assert client.get("fww") == b"first"


def test_miss_returns_none_and_false(client):
    assert client.get("never-written") is None
    assert client.get_into("never-written", bytearray(8)) is None
    assert client.exists("never-written") is False
    assert client.get_replicas("never-written") == []
    assert client.remove("never-written") is False


def test_remove_then_miss(client):
    client.put("rm/me", b"x" * 1000)
    assert client.exists("rm/me")
    assert client.remove("rm/me", force=True) is True
    assert client.get("rm/me") is None and not client.exists("rm/me")


def test_two_replicas_land_on_distinct_workers(client):
    client.put("two", b"y" * 5000, ReplicaConfig(replica_num=2))
    replicas = client.get_replicas("two")
    assert len(replicas) == 2
    assert len({r.worker_id for r in replicas}) == 2
    assert all(r.state == "COMPLETE" and r.tier == "DRAM" for r in replicas)


def test_preferred_worker_gets_the_first_replica(client):
    for worker_id in ("worker-0", "worker-1"):
        client.put(f"pref/{worker_id}", b"z", ReplicaConfig(preferred_worker=worker_id))
        assert client.get_replicas(f"pref/{worker_id}")[0].worker_id == worker_id


def test_buffer_too_small_is_an_error_not_a_miss(client):
    client.put("small-buffer", b"a" * 100)
    with pytest.raises(InvalidArgumentError, match="100 bytes"):
        client.get_into("small-buffer", bytearray(99))


def test_concurrent_clients_from_threads(cluster):
    from concurrent.futures import ThreadPoolExecutor

    def work(n):
        with Client(cluster.master_addr, transports=("shm", "tcp") if n % 2 else ("tcp",)) as c:
            for i in range(20):
                data = bytes([n, i]) * (1000 + i)
                c.put(f"thr/{n}/{i}", data)
                assert c.get(f"thr/{n}/{i}") == data
        return n

    with ThreadPoolExecutor(4) as pool:
        assert sorted(pool.map(work, range(4))) == [0, 1, 2, 3]
