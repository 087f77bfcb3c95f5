"""Faults through real daemons: a full pool, a dead worker, bad input; each a typed error."""
import os
import signal

import pytest

from mooncake_client import Client, ReplicaConfig
from mooncake_proto.errors import (ErrorCode, InvalidArgumentError, LeaseExpiredError, NoSpaceError,
                                   TransferError, UnavailableError)


@pytest.mark.parametrize("key", ["", "k" * 5000])
def test_bad_keys_are_invalid_argument(client, key):
    with pytest.raises(InvalidArgumentError) as info:
        client.put(key, b"data")
    assert info.value.code == ErrorCode.INVALID_PARAMS
    with pytest.raises(InvalidArgumentError):
        client.get(key)
    with pytest.raises(InvalidArgumentError):
        client.exists(key)


def test_negative_size_is_invalid_argument(cluster):
    # the SDK takes sizes from buffers, so send a raw PutStart as a buggy client would
    from mooncake_proto import mooncake_pb2 as pb
    from mooncake_proto.errors import error_for_code
    with Client(cluster.master_addr) as c:
        reply = c._link.call("PutStart", pb.PutStartRequest(keys=["neg"], sizes=[-5]))
        assert reply.items[0].status.code == ErrorCode.INVALID_PARAMS
        assert isinstance(error_for_code(reply.items[0].status.code), InvalidArgumentError)
        assert c.exists("neg") is False


def test_key_of_4096_bytes_is_fine(client):
    key = "é" * 2048  # 4096 bytes of UTF-8
    client.put(key, b"ok")
    assert client.get(key) == b"ok"


def test_full_pool_evicts_least_recently_used_instead_of_refusing(fresh_cluster):
    cluster = fresh_cluster(workers=2, dram="4MiB")
    with Client(cluster.master_addr) as c:
        written = {}
        for i in range(40):  # 20 MiB through an 8 MiB pool, no SSD tier: old objects go
            written[f"lru/{i}"] = os.urandom(512 * 1024)
            c.put(f"lru/{i}", written[f"lru/{i}"])
        present = [k for k in written if c.exists(k)]
        assert 8 <= len(present) <= 16 and "lru/39" in present and "lru/0" not in present
        for key in present:
            assert c.get(key) == written[key]
        assert c.get("lru/0") is None  # an evicted object is a miss, never wrong bytes


def test_no_space_only_when_nothing_is_evictable(fresh_cluster):
    cluster = fresh_cluster(workers=2, dram="4MiB")
    with Client(cluster.master_addr) as c:
        stored = {}
        pinned = ReplicaConfig(hard_pin=True)  # hard-pinned objects are never evicted
        with pytest.raises(NoSpaceError) as info:
            for i in range(100):
                data = os.urandom(512 * 1024)
                c.put(f"fill/{i}", data, config=pinned)
                stored[f"fill/{i}"] = data
        assert info.value.code == -200
        assert 10 <= len(stored) <= 16  # 8 MiB of pool, 512 KiB objects
        unread = stored.pop("fill/0")  # reads grant leases; this one stays unleased
        for key, data in stored.items():
            assert c.get(key) == data
        with pytest.raises(NoSpaceError):
            c.put("too-big", b"x" * (5 << 20))  # larger than any segment
        assert len(unread) and c.remove("fill/0") is True  # unleased: freed at once
        c.put("fits-again", b"y" * (512 * 1024))  # freed space is reusable
        assert c.get("fits-again") == b"y" * (512 * 1024)


def test_dead_worker_gives_a_clear_error_not_a_hang(fresh_cluster):
    cluster = fresh_cluster(workers=1, dram="16MiB")
    with Client(cluster.master_addr, transports=("tcp",), transfer_timeout_s=5) as c:
        c.put("on-the-dead", b"d" * 10_000)
        cluster.workers["worker-0"].stop(signal.SIGKILL)
        with pytest.raises(TransferError, match="worker-0"):
            c.get("on-the-dead")
        with pytest.raises(TransferError, match="worker-0"):
            c.put("to-the-dead", b"x")
        assert c.exists("to-the-dead") is False  # the failed put was revoked


def test_unreachable_master_is_unavailable(tmp_path):
    import socket
    with socket.socket() as s:  # a port that was free a moment ago: nobody listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Client(f"127.0.0.1:{port}", rpc_timeout_s=2, master_retry_s=1) as c:
        with pytest.raises(UnavailableError):
            c.get("anything")


def test_read_finishing_after_its_lease_raises_lease_expired(fresh_cluster):
    # a 1 ms lease: an 8 MiB read over TCP cannot finish inside it (about 3 ms here)
    cluster = fresh_cluster(workers=1, dram="32MiB", master_args=("--lease-ttl", "1ms"))
    with Client(cluster.master_addr, transports=("tcp",)) as c:
        c.put("short-lease", b"L" * (8 << 20))
        with pytest.raises(LeaseExpiredError) as info:
            c.get("short-lease")
        assert info.value.code == -707
