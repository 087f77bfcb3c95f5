"""Masters killed and restarted, and an HA leader's death (issue 5, fault suite)."""
from __future__ import annotations

import signal

import pytest
from etcd_server import EtcdServer, role_of, start_ha_master
from faultkit import (WORKER_TTL, Stopwatch, alive_workers, master_stats, report, tcp_client,
                      unreadable, wait_for_inventories, write)
from polling import wait_until

from mooncake_client.local_cluster import LocalCluster

KiB = 1 << 10


@pytest.mark.timeout(90)
def test_kill_9_and_restart_the_master_every_committed_object_reads_after_the_rebuild(tmp_path):
    with LocalCluster(workers=2, dram="32MiB", workdir=str(tmp_path / "c"),
                      master_args=("--worker-ttl", WORKER_TTL)) as cluster:
        http = cluster.master.info["http"]
        with tcp_client(cluster.master_addr) as client:
            objects = write(client, [f"m1-{i}" for i in range(40)], 128 * KiB)
            objects |= write(client, [f"m2-{i}" for i in range(20)], 128 * KiB, replica_num=2)
            # the workers learn of the commits in heartbeat replies (one a second): a master
            # dying sooner may lose those of the last interval (DESIGN.md 3)
            wait_for_inventories(cluster, 40 + 2 * 20)
            cluster.restart_master(signal.SIGKILL)
            clock = Stopwatch()
            # a put right away: the new master asks it to wait (UNAVAILABLE) until workers
            # are back, rather than answer "no space"; the client retries through that
            objects |= write(client, ["m-after-restart"], 128 * KiB)
            wait_until(lambda: len(alive_workers(http)) == 2, 20, "workers registered again")
            rebuilt_s = clock()
            assert master_stats(http)["objects"] == len(objects)
            assert unreadable(client, objects) == []  # the same client, carried on
            replicas = {k: len(client.get_replicas(k)) for k in objects}
            assert sorted(set(replicas.values())) == [1, 2]
            report("kill -9 + restart master", objects=len(objects),
                   readable_after=len(objects), rebuilt_s=rebuilt_s)


@pytest.mark.timeout(120)
def test_the_standby_serves_when_the_ha_leader_is_killed(tmp_path):
    etcd = EtcdServer(str(tmp_path)).start()
    spec = etcd.spec("faults")
    # the workers follow the leader through etcd; the masters are this test's own
    cluster = LocalCluster(workers=2, dram="32MiB", workdir=str(tmp_path / "c"), master=spec)
    masters = []
    try:
        args = ("--worker-ttl", WORKER_TTL)
        masters = [start_ha_master(cluster, f"master-{n}", etcd.endpoint, "faults", args)
                   for n in "ab"]
        wait_until(lambda: sorted(map(role_of, masters)) == ["leader", "standby"], 15,
                   "one leader, one standby")
        leader, standby = sorted(masters, key=lambda m: role_of(m) != "leader")
        cluster.start()
        with tcp_client(spec) as client:
            objects = write(client, [f"ha-{i}" for i in range(30)], 128 * KiB)
            wait_for_inventories(cluster, len(objects))
            leader.kill()
            clock = Stopwatch()
            wait_until(lambda: role_of(standby) == "leader", 20, "the standby leads")
            took_over_s = clock()
            wait_until(lambda: len(alive_workers(standby.info["http"])) == 2, 20,
                       "workers follow the new leader")
            assert unreadable(client, objects) == []
            report("kill -9 HA leader", objects=len(objects), readable_after=len(objects),
                   standby_leads_s=took_over_s, rebuilt_s=clock())
    finally:
        cluster.stop()
        for master in masters:
            master.stop()
        etcd.stop()
