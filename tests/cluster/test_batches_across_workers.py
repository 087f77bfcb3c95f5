"""Batches whose objects live on several workers: over tcp every worker's part runs at once
(native/tcp.py exchange_many), and a worker that is gone fails only its own part, which falls
back to the other replicas."""
import gc
import os

from mooncake_client import Client, ReplicaConfig


def _spread(n: int) -> list[ReplicaConfig]:
    return [ReplicaConfig(preferred_worker=f"worker-{i % 2}") for i in range(n)]


def test_a_batch_spread_over_workers_reads_and_writes_every_byte(fresh_cluster):
    cluster = fresh_cluster(workers=2, dram="64MiB")
    with Client(cluster.master_addr, transports=("tcp",)) as c:
        keys = [f"spread/{i}" for i in range(16)]
        values = [os.urandom(size) for size in (1, 4095, 4096, 65537) * 4]
        for key, value, config in zip(keys, values, _spread(len(keys))):
            c.put(key, value, config)
        assert {r.worker_id for k in keys for r in c.get_replicas(k)} == {"worker-0", "worker-1"}
        assert c.batch_get(keys) == values
        buffers = [bytearray(len(v) + 3) for v in values]
        assert c.batch_get_into(keys, buffers) == [len(v) for v in values]
        assert [bytes(b[:len(v)]) for b, v in zip(buffers, values)] == values
        # a batch write spread the same way: two replicas each, on both workers at once
        c.batch_put_from([f"{k}/2" for k in keys], values, ReplicaConfig(replica_num=2))
        assert c.batch_get([f"{k}/2" for k in keys]) == values


def test_a_stopped_worker_fails_only_its_part_of_a_batch(fresh_cluster):
    cluster = fresh_cluster(workers=2, dram="64MiB")
    with Client(cluster.master_addr, transports=("tcp",)) as c:
        keys = [f"gone/{i}" for i in range(12)]
        for key in keys:
            c.put(key, key.encode() * 1000, ReplicaConfig(replica_num=2))
        assert c.batch_get(keys) == [k.encode() * 1000 for k in keys]  # pools a connection each
        cluster.workers["worker-0"].stop()
        # the pooled connection to worker-0 is dead and a new one is refused: those reads
        # move to worker-1's replicas; the rest were read from worker-1 at the same time
        assert c.batch_get(keys) == [k.encode() * 1000 for k in keys]
        gc.collect()  # failed exchanges leave nothing the collector cannot free
