"""Store semantics through real daemons: replicas, leases, pins, eviction, the SSD tier."""
import random
import threading
import time

import pytest

from mooncake_client import Client, ReplicaConfig
from mooncake_proto.errors import ErrorCode, HasLeaseError, LeaseExpiredError, MooncakeError
from polling import wait_until

KiB, MiB = 1 << 10, 1 << 20


def _payload(key: str, size: int) -> bytes:
    """Bytes that name their key: a read that returned another object's range shows."""
    stamp = key.encode().ljust(64, b".")
    return (stamp * (size // len(stamp) + 1))[:size]



def _tiers(client: Client, key: str) -> list[str]:
    return [r.tier for r in client.get_replicas(key)]


def test_replicas_land_on_distinct_workers_best_effort(fresh_cluster):
    cluster = fresh_cluster(workers=3, dram="16MiB")
    with Client(cluster.master_addr) as c:
        c.put("three", b"3" * 5000, ReplicaConfig(replica_num=3))
        workers = [r.worker_id for r in c.get_replicas("three")]
        assert sorted(workers) == ["worker-0", "worker-1", "worker-2"]
        c.put("five", b"5" * 5000, ReplicaConfig(replica_num=5))  # only 3 workers exist
        assert len({r.worker_id for r in c.get_replicas("five")}) == 3
        c.put("here", b"h" * 5000, ReplicaConfig(replica_num=2, preferred_worker="worker-2"))
        assert c.get_replicas("here")[0].worker_id == "worker-2"


def test_remove_is_refused_under_a_lease_and_allowed_after(fresh_cluster):
    cluster = fresh_cluster(workers=1, dram="16MiB", master_args=("--lease-ttl", "1s"))
    with Client(cluster.master_addr) as c:
        c.put("leased", b"l" * 1000)
        assert c.get("leased") == b"l" * 1000  # grants a 1 s read lease
        with pytest.raises(HasLeaseError) as info:
            c.remove("leased")
        assert info.value.code == ErrorCode.OBJECT_HAS_LEASE == -706
        wait_until(lambda: not _refused(c, "leased"), 5.0, "remove after the lease")
        assert c.get("leased") is None
        c.put("forced", b"f" * 1000)
        assert c.exists("forced")  # exists leases too
        assert c.remove("forced", force=True) is True


def _refused(client: Client, key: str) -> bool:
    try:
        return client.remove(key) is not True
    except HasLeaseError:
        return True


def test_three_times_dram_with_a_big_ssd_loses_nothing_and_demotes_the_oldest(fresh_cluster):
    cluster = fresh_cluster(workers=1, dram="8MiB", ssd="64MiB")
    size, count = 256 * KiB, 96  # 24 MiB: three times the DRAM tier
    with Client(cluster.master_addr) as c:
        for i in range(count):
            c.put(f"tier/{i}", _payload(f"tier/{i}", size))
        assert _tiers(c, "tier/0") == ["SSD"]
        assert _tiers(c, f"tier/{count - 1}") == ["DRAM"]
        for i in range(count):
            assert c.get(f"tier/{i}") == _payload(f"tier/{i}", size), f"tier/{i}"


@pytest.mark.parametrize("transports", [("tcp",), ("shm",)])
def test_ssd_replicas_read_over_each_transport_and_hot_ones_come_back(fresh_cluster,
                                                                       transports):
    cluster = fresh_cluster(workers=1, dram="4MiB", ssd="32MiB")
    with Client(cluster.master_addr, transports=transports) as c:
        for i in range(32):  # 8 MiB through 4 MiB of DRAM
            c.put(f"ssd/{i}", _payload(f"ssd/{i}", 256 * KiB))
        for i in range(24, 32):  # the newest (in DRAM, never read): DRAM gets room to promote
            assert c.remove(f"ssd/{i}") is True
        cold = [f"ssd/{i}" for i in range(24) if _tiers(c, f"ssd/{i}") == ["SSD"]]
        assert len(cold) >= 8
        buffer = bytearray(256 * KiB)
        assert c.get_into(cold[0], buffer) == 256 * KiB  # second read within the window
        assert bytes(buffer) == _payload(cold[0], 256 * KiB)
        wait_until(lambda: _tiers(c, cold[0]) == ["DRAM"], 10.0, "promotion of a hot object")
        assert c.get(cold[0]) == _payload(cold[0], 256 * KiB)
        for key in cold[1:]:
            assert c.get(key) == _payload(key, 256 * KiB)


def test_writing_past_dram_and_ssd_never_raises_and_keeps_hard_pinned(fresh_cluster):
    cluster = fresh_cluster(workers=1, dram="4MiB", ssd="8MiB")
    with Client(cluster.master_addr) as c:
        pinned = {f"pin/{i}": _payload(f"pin/{i}", 256 * KiB) for i in range(4)}
        for key, data in pinned.items():
            c.put(key, data, ReplicaConfig(hard_pin=True))
        for i in range(160):  # 40 MiB through 12 MiB of pool
            c.put(f"flood/{i}", _payload(f"flood/{i}", 256 * KiB))
        for key, data in pinned.items():
            assert c.get(key) == data
            assert _tiers(c, key) == ["DRAM"]  # never demoted either
        assert c.get("flood/159") == _payload("flood/159", 256 * KiB)
        assert c.get("flood/0") is None  # the oldest went: the pool held 12 MiB


@pytest.mark.parametrize("ssd", [None, "4MiB"])
@pytest.mark.parametrize("transports", [("tcp",), ("shm",)])
def test_a_read_racing_eviction_gets_the_right_bytes_or_a_typed_error(fresh_cluster,
                                                                      transports, ssd):
    cluster = fresh_cluster(workers=2, dram="4MiB", ssd=ssd,
                            master_args=("--lease-ttl", "500ms"))
    size = 128 * KiB
    written: list[str] = []
    stop = threading.Event()
    outcomes = {"bytes": 0, "miss": 0, "error": 0}
    wrong: list[str] = []

    writer_errors: list[BaseException] = []

    def write():
        try:
            with Client(cluster.master_addr) as c:
                for i in range(240):  # 30 MiB through 8-16 MiB of pool, evicting all the while
                    key = f"race/{i}"
                    c.put(key, _payload(key, size))
                    written.append(key)
        except BaseException as exc:  # surfaced below; the readers must stop either way
            writer_errors.append(exc)
        finally:
            stop.set()

    def read(seed: int):
        rng = random.Random(seed)
        with Client(cluster.master_addr, transports=transports) as c:
            while not stop.is_set():
                if not written:
                    continue
                key = rng.choice(written[-24:])  # recent: likely evicted while being read
                try:
                    data = c.get(key)
                except MooncakeError:
                    outcomes["error"] += 1
                    continue
                if data is None:
                    outcomes["miss"] += 1
                elif data != _payload(key, size):
                    wrong.append(key)
                else:
                    outcomes["bytes"] += 1

    threads = [threading.Thread(target=write)] + [
        threading.Thread(target=read, args=(seed,)) for seed in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=100)
    assert not any(t.is_alive() for t in threads)
    assert writer_errors == []
    assert wrong == []
    assert outcomes["bytes"] > 0, outcomes


def test_a_long_batch_read_renews_its_lease_instead_of_letting_it_lapse(fresh_cluster,
                                                                        monkeypatch):
    from mooncake_client import client as client_module
    cluster = fresh_cluster(workers=1, dram="16MiB", master_args=("--lease-ttl", "1s"))
    keys = [f"long/{i}" for i in range(6)]
    with Client(cluster.master_addr, transports=("tcp",)) as c:
        for key in keys:
            c.put(key, _payload(key, 64 * KiB))
        monkeypatch.setattr(client_module, "READ_CHUNK_BYTES", 64 * KiB)  # a chunk per key
        tcp = c._transports[0]
        real_read = tcp.read

        def slow_read(transfers):  # a slow network: 6 x 0.3 s is well past the 1 s lease
            time.sleep(0.3)
            real_read(transfers)
        monkeypatch.setattr(tcp, "read", slow_read)
        assert c.batch_get(keys) == [_payload(k, 64 * KiB) for k in keys]
        # without renewal the same read outlives its lease: one chunk, from a worker that
        # stalls past it, read by the path planned in C and by the general one
        monkeypatch.setattr(client_module, "READ_CHUNK_BYTES", 1 << 40)
        monkeypatch.setattr(tcp, "read", real_read)
        worker = cluster.workers["worker-0"]
        real_plan, plans = c._plan_reads, []
        monkeypatch.setattr(c, "_plan_reads", lambda *args: (plans.append(1), real_plan(*args))[1])
        for general in (False, True):
            if general:
                assert plans == []  # the first pass was read by the path planned in C
                monkeypatch.setattr(c._fast_reads, "read", lambda *args: None)
            worker.pause()
            resume = threading.Timer(1.2, worker.resume)
            resume.start()
            try:
                with pytest.raises(LeaseExpiredError):
                    c.batch_get(keys)
            finally:
                resume.join()
