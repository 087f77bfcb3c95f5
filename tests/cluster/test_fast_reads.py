"""Batch reads planned and run in C from the master's answer (client/fast_reads.py), against a
real cluster: which batches they take, that they return what the general path returns, and
that anything they cannot finish is read again by the general path."""
import os
import socket

import pytest

from mooncake_client import Client, ReplicaConfig
from mooncake_client import client as client_module
from mooncake_native import read_answer

pytestmark = pytest.mark.timeout(120)


class Planner:
    """Counts the general path's plans (Client._plan_reads) of one client."""

    def __init__(self, client: Client, monkeypatch):
        self.calls = 0
        real = client._plan_reads

        def counted(*args):
            self.calls += 1
            return real(*args)
        monkeypatch.setattr(client, "_plan_reads", counted)


def _written_over_tcp(fresh_cluster, prefix: str, values: list) -> tuple[Client, list[str]]:
    """A tcp client of a new one-worker cluster, and the keys it wrote `values` under."""
    cluster = fresh_cluster(workers=1, dram="64MiB")
    client = Client(cluster.master_addr, transports=("tcp",))
    keys = [f"{prefix}/{i}" for i in range(len(values))]
    client.batch_put_from(keys, values)
    return client, keys


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_plain_batches_skip_the_general_planner_and_read_every_byte(fresh_cluster, monkeypatch,
                                                                    transport):
    cluster = fresh_cluster(workers=2, dram="64MiB")
    with Client(cluster.master_addr, transports=(transport,)) as c:
        keys = [f"fast/{i}" for i in range(12)]
        values = [os.urandom(size) for size in (1, 4095, 4096, 65537, 7, 3 << 20) * 2]
        c.batch_put_from(keys[:6], values[:6])
        c.batch_put_from(keys[6:], values[6:], ReplicaConfig(replica_num=2))  # both workers
        planner = Planner(c, monkeypatch)
        asked = keys + ["fast/missing"]
        assert c.batch_get(asked) == values + [None]
        buffers = [bytearray(len(v) + 5) for v in values] + [bytearray(1)]
        assert c.batch_get_into(asked, buffers) == [len(v) for v in values] + [None]
        assert [bytes(b[:len(v)]) for b, v in zip(buffers, values)] == values
        assert planner.calls == 0
        # what the general path plans: a small batch, a scatter-gather target
        assert c.batch_get(keys[:client_module.FAST_READ_MIN_KEYS - 1]) == \
            values[:client_module.FAST_READ_MIN_KEYS - 1]
        assert planner.calls == 1
        parts = [bytearray(4000), bytearray(1000)]
        targets = [parts] + [bytearray(len(v)) for v in values[3:8]]
        assert c.batch_get_into(keys[2:8], targets) == [len(v) for v in values[2:8]]
        assert bytes(parts[0] + parts[1])[:4096] == values[2]
        assert [bytes(t) for t in targets[1:]] == values[3:8]
        assert planner.calls == 2


def test_a_dead_pooled_connection_is_read_again_by_the_general_path(fresh_cluster,
                                                                   monkeypatch):
    values = [os.urandom(4096) for _ in range(8)]
    c, keys = _written_over_tcp(fresh_cluster, "dead", values)
    with c:
        assert c.batch_get(keys) == values  # leaves a pooled connection to the worker
        (pooled,) = [conn for conns in c._transports[0]._idle.values() for conn in conns]
        with socket.socket(fileno=os.dup(pooled.fd)) as same:
            same.shutdown(socket.SHUT_RDWR)  # as a worker's restart or idle timeout would
        planner = Planner(c, monkeypatch)
        assert c.batch_get(keys) == values  # the fast path gave it up; the general path read it
        assert planner.calls == 1
        assert c.batch_get(keys) == values  # and the next batch is fast again
        assert planner.calls == 1


def test_a_batch_the_worker_refuses_is_read_again_by_the_general_path(fresh_cluster,
                                                                     monkeypatch):
    c, keys = _written_over_tcp(fresh_cluster, "refused", [b"x" * 100] * 4)
    with c:
        real_run = read_answer.ReadAnswer.run

        def with_forged_grants(self, *args):
            answer = bytearray(self.answer)  # the fast path's copy; the client keeps its own
            for j in range(self._info.replicas):
                grant = self.replicas[j].grant
                answer[grant.at + grant.len - 1] ^= 1  # the MAC's last byte
            self.answer = bytes(answer)
            return real_run(self, *args)
        monkeypatch.setattr(read_answer.ReadAnswer, "run", with_forged_grants)
        planner = Planner(c, monkeypatch)
        assert c.batch_get(keys) == [b"x" * 100] * 4  # the worker refused the first request
        assert planner.calls == 1
