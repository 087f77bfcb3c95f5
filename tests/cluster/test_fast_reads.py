"""Batch reads planned and run in C from the master's answer (client/fast_reads.py), against a
real cluster: which batches they take, that they return what the general path returns, and
that anything they cannot finish is read again by the general path."""
import os
import socket

import pytest

from mooncake_client import Client, ReplicaConfig
from mooncake_client import client as client_module
from mooncake_native import read_answer
from mooncake_proto.errors import TransferError

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


def _forge(answer: bytes, grants) -> bytes:
    """answer with the last byte of each span in grants (their MACs) flipped."""
    forged = bytearray(answer)
    for grant in grants:
        forged[grant.at + grant.len - 1] ^= 1
    return bytes(forged)


@pytest.mark.parametrize("refused", ["first", "last"])
def test_a_batch_the_worker_refuses_is_read_again_and_its_connection_not_pooled(
        fresh_cluster, monkeypatch, refused):
    c, keys = _written_over_tcp(fresh_cluster, "refused", [b"x" * 100] * 4)
    with c:
        real_run = read_answer.ReadAnswer.run
        forged_once = []

        def with_forged_grants(self, *args):
            if not forged_once:  # the fast path's copy of the answer; the client keeps its own
                replicas = [self.replicas[j] for j in range(self._info.replicas)]
                self.answer = _forge(self.answer, [r.grant for r in replicas] if refused ==
                                     "first" else [replicas[-1].grant])
                forged_once.append(True)
            return real_run(self, *args)
        monkeypatch.setattr(read_answer.ReadAnswer, "run", with_forged_grants)
        planner = Planner(c, monkeypatch)
        dropped = _count_stale_drops(c, monkeypatch)
        assert c.batch_get(keys) == [b"x" * 100] * 4  # read again by the general path
        assert planner.calls == 1
        # the refused connection was closed, even when its refusal was the last answer: the
        # general path found no dead connection in the pool
        assert dropped == []
        assert c.batch_get(keys) == [b"x" * 100] * 4
        assert planner.calls == 1


def _count_stale_drops(c: Client, monkeypatch) -> list[str]:
    """The addresses whose idle connections the tcp transport drops as stale from now on (a
    pooled connection the worker had closed)."""
    tcp, dropped = c._transports[0], []
    real_drop = tcp._drop_idle
    monkeypatch.setattr(tcp, "_drop_idle", lambda addr: (dropped.append(addr),
                                                          real_drop(addr)))
    return dropped


def test_the_general_path_does_not_pool_a_connection_refused_last(fresh_cluster, monkeypatch):
    from mooncake_client import transports
    c, keys = _written_over_tcp(fresh_cluster, "refused-general", [b"y" * 100] * 3)
    keys = keys[:client_module.FAST_READ_MIN_KEYS - 1]  # the general path's batch
    with c:
        real_requests = transports.TcpTransport._requests
        forged_once = []

        def with_last_grant_forged(group, op):
            requests = real_requests(group, op)
            if not forged_once:
                last = requests[-1]
                last.grant = last.grant[:-1] + bytes([last.grant[-1] ^ 1])
                forged_once.append(True)
            return requests
        monkeypatch.setattr(transports.TcpTransport, "_requests",
                            staticmethod(with_last_grant_forged))
        with pytest.raises(TransferError):  # its only replica refused
            c.batch_get(keys)
        dropped = _count_stale_drops(c, monkeypatch)
        assert c.batch_get(keys) == [b"y" * 100] * len(keys)
        assert dropped == []  # no dead connection was pooled to be found stale


def test_a_dead_worker_holding_second_replicas_is_not_contacted(fresh_cluster, monkeypatch):
    cluster = fresh_cluster(workers=2, dram="64MiB")
    with Client(cluster.master_addr, transports=("tcp",)) as c:
        keys = [f"second/{i}" for i in range(8)]
        values = [os.urandom(1000) for _ in keys]
        c.batch_put_from(keys, values, ReplicaConfig(replica_num=2))
        firsts = {c.get_replicas(k)[0].worker_id for k in keys}
        assert len(firsts) == 1  # a batch's first replicas sit on one worker
        (first,) = firsts
        (second,) = set(cluster.workers) - firsts
        cluster.workers[second].stop()
        tcp = c._transports[0]
        asked = []
        real_checkout = tcp.checkout
        monkeypatch.setattr(tcp, "checkout", lambda addr: (asked.append(addr),
                                                           real_checkout(addr))[1])
        planner = Planner(c, monkeypatch)
        assert c.batch_get(keys) == values
        assert planner.calls == 0  # the C path read the first replicas
        assert {a for a in asked} == {c.get_replicas(keys[0])[0].data_addr}


def test_a_stalled_worker_is_waited_for_once(fresh_cluster, monkeypatch):
    cluster = fresh_cluster(workers=2, dram="64MiB")
    with Client(cluster.master_addr, transports=("tcp",), transfer_timeout_s=0.5) as c:
        keys = [f"stalled/{i}" for i in range(8)]
        values = [os.urandom(1000) for _ in keys]
        c.batch_put_from(keys, values, ReplicaConfig(replica_num=2))
        first = c.get_replicas(keys[0])[0]
        assert {c.get_replicas(k)[0].worker_id for k in keys} == {first.worker_id}
        only = [f"stalled-only/{i}" for i in range(4)]
        c.batch_put_from(only, values[:4], ReplicaConfig(preferred_worker=first.worker_id))
        tcp = c._transports[0]
        asked = []
        real_checkout = tcp.checkout
        monkeypatch.setattr(tcp, "checkout", lambda addr: (asked.append(addr),
                                                           real_checkout(addr))[1])
        cluster.workers[first.worker_id].pause()
        try:
            # the C path waits the stalled worker out once; the general path reads the
            # second replicas without waiting for it again
            assert c.batch_get(keys) == values
            assert asked.count(first.data_addr) == 1
            # objects only it holds fail as the general path fails them, after one wait
            with pytest.raises(TransferError, match="every replica failed.*timed out"):
                c.batch_get(only)
            assert asked.count(first.data_addr) == 2
        finally:
            cluster.workers[first.worker_id].resume()
