"""Workers killed, paused and restarted under a running master (issue 5, fault suite)."""
from __future__ import annotations

import signal
import threading
import time

import pytest
from faultkit import (HEAL_TIMEOUT_S, TRANSFER_TIMEOUT_S, WORKER_TTL, Stopwatch, alive_workers,
                      content, replica_workers, report, tcp_client, unreadable,
                      wait_for_inventories, write)
from polling import wait_until

from mooncake_client.local_cluster import LocalCluster
from mooncake_proto.errors import MooncakeError, TransferError

KiB = 1 << 10


@pytest.fixture
def make_cluster(tmp_path):
    clusters = []

    def make(workers: int = 3, **kwargs) -> LocalCluster:
        kwargs.setdefault("master_args", ("--worker-ttl", WORKER_TTL))
        c = LocalCluster(workers=workers, dram="32MiB", workdir=str(tmp_path / f"c{len(clusters)}"),
                         **kwargs)
        clusters.append(c)
        return c.start()

    yield make
    for c in clusters:
        c.stop()


@pytest.mark.timeout(90)
def test_kill_9_a_worker_every_object_reads_at_once_and_heals_to_two_replicas(make_cluster):
    cluster = make_cluster()
    http = cluster.master.info["http"]
    with tcp_client(cluster.master_addr) as client:
        objects = write(client, [f"k9-{i}" for i in range(48)], 256 * KiB, replica_num=2)
        victim = "worker-0"
        on_victim = [k for k in objects if victim in replica_workers(client, k)]
        assert on_victim
        cluster.workers[victim].kill()
        clock = Stopwatch()
        assert unreadable(client, objects) == []  # the other replica serves, at once
        read_s = clock()
        wait_until(lambda: victim not in alive_workers(http), 10, "the master declares it dead")
        dead_s = clock()

        def healed() -> bool:
            return all(len(set(w := replica_workers(client, k))) == 2 and victim not in w
                       for k in on_victim)
        wait_until(healed, HEAL_TIMEOUT_S, "every object back to 2 live replicas")
        assert unreadable(client, objects) == []
        report("kill -9 worker, replica_num=2", objects=len(objects), on_victim=len(on_victim),
               readable_after=len(objects), all_read_s=read_s, declared_dead_s=dead_s,
               healed_s=clock())


@pytest.mark.timeout(90)
def test_a_paused_worker_is_fallen_through_and_rejoins_with_its_objects(make_cluster):
    cluster = make_cluster()
    http = cluster.master.info["http"]
    victim = "worker-0"
    with tcp_client(cluster.master_addr) as client:
        both = write(client, [f"pause2-{i}" for i in range(16)], 128 * KiB, replica_num=2,
                     preferred=victim)
        only = write(client, [f"pause1-{i}" for i in range(8)], 128 * KiB, preferred=victim)
        wait_for_inventories(cluster, 2 * len(both) + len(only))
        cluster.workers[victim].pause()
        try:
            clock = Stopwatch()
            assert unreadable(client, both) == []  # each falls through to its other replica
            fell_through_s = clock()
            clock = Stopwatch()
            with pytest.raises(TransferError):
                client.get(next(iter(only)))
            failed_s = clock()
            # bounded: the transfer timeout, not forever (generous for a loaded VM)
            assert failed_s < 3 * TRANSFER_TIMEOUT_S + 5
            wait_until(lambda: victim not in alive_workers(http), 10, "declared dead")
        finally:
            cluster.workers[victim].resume()
        clock = Stopwatch()
        # it heartbeats again, is told it is unknown, registers with its inventory: the
        # objects only it held are adopted again
        wait_until(lambda: unreadable(client, only) == [], 20, "its objects read again")
        rejoin_s = clock()
        assert unreadable(client, both) == []
        report("SIGSTOP worker past its ttl, SIGCONT", objects=len(both) + len(only),
               two_replica_fell_through_s=fell_through_s, one_replica_failed_in_s=failed_s,
               readable_after=len(both) + len(only), rejoined_s=rejoin_s)


@pytest.mark.timeout(90)
def test_a_worker_restarted_with_its_id_brings_its_objects_back(make_cluster):
    cluster = make_cluster(workers=2)
    http = cluster.master.info["http"]
    victim = "worker-0"
    with tcp_client(cluster.master_addr) as client:
        objects = write(client, [f"rs-{i}" for i in range(24)], 256 * KiB, preferred=victim)
        # a restart within the ttl: the master still knows it and keeps its replicas
        clock = Stopwatch()
        cluster.restart_worker(victim, signal.SIGKILL)
        quick_s = clock()
        assert unreadable(client, objects) == []
        # a restart after it was declared dead: its inventory brings the objects back
        wait_for_inventories(cluster, len(objects))
        cluster.workers[victim].kill()
        wait_until(lambda: victim not in alive_workers(http), 10, "declared dead")
        assert client.batch_get(list(objects)) == [None] * len(objects)  # misses meanwhile
        clock = Stopwatch()
        cluster.restart_worker(victim, signal.SIGKILL)
        wait_until(lambda: unreadable(client, objects) == [], 10, "objects readable again")
        report("kill -9 + restart worker with its id", objects=len(objects),
               readable_after=len(objects), restart_within_ttl_s=quick_s,
               readopted_after_death_s=clock())


@pytest.mark.timeout(90)
def test_a_put_in_flight_while_its_target_dies_is_never_a_committed_object_missing_bytes(
        make_cluster):
    cluster = make_cluster(workers=2)
    victim = "worker-0"
    size = 1 << 20  # 24 of them fit the victim's 32 MiB below the watermark: none is evicted
    outcomes: dict[str, str] = {}
    started = threading.Event()

    def writer():
        with tcp_client(cluster.master_addr, master_retry_s=0) as client:
            for i in range(24):
                key = f"inflight-{i}"
                try:
                    write(client, [key], size, preferred=victim)
                    outcomes[key] = "ok"
                except MooncakeError as exc:
                    outcomes[key] = type(exc).__name__
                started.set()

    thread = threading.Thread(target=writer)
    thread.start()
    assert started.wait(30)
    cluster.workers[victim].kill()
    thread.join(60)
    assert not thread.is_alive()
    cluster.restart_worker(victim, signal.SIGKILL)  # its segment file still holds the bytes
    with tcp_client(cluster.master_addr) as client:
        got = dict(zip(outcomes, client.batch_get(list(outcomes))))
    wrong = [k for k, data in got.items() if data is not None and data != content(k, size)]
    assert wrong == []
    missing = [k for k, v in outcomes.items() if v == "ok" and got[k] is None]
    assert missing == []  # a put that said yes reads back, the worker came back with it
    report("put in flight while its worker is killed", puts=len(outcomes),
           succeeded=sum(v == "ok" for v in outcomes.values()),
           failed=sum(v != "ok" for v in outcomes.values()),
           readable_after=sum(d is not None for d in got.values()), wrong_bytes=len(wrong))


@pytest.mark.timeout(90)
def test_sigterm_drains_a_worker_before_it_leaves(make_cluster):
    cluster = make_cluster(workers=2, drain_timeout="30s")
    victim = "worker-0"
    with tcp_client(cluster.master_addr) as client:
        objects = write(client, [f"drain-{i}" for i in range(24)], 256 * KiB, preferred=victim)
        assert all(replica_workers(client, k) == [victim] for k in objects)
        clock = Stopwatch()
        assert cluster.workers[victim].stop(signal.SIGTERM, timeout_s=40) == 0
        drained_s = clock()
        assert unreadable(client, objects) == []
        assert all(replica_workers(client, k) == ["worker-1"] for k in objects)
        report("SIGTERM drain", objects=len(objects), readable_after=len(objects),
               drain_s=drained_s)
    # the last worker would drain for its whole --drain-timeout (nowhere to copy to)
    cluster.workers["worker-1"].kill()
