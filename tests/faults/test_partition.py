"""A worker cut off by a network partition (issue 5, fault suite).

The test makes a network namespace joined to this one by a veth pair (as root, with iproute2)
and runs one worker inside it; the master, the other workers and the client stay outside and
reach it over the pair. Taking the host end of the pair down is the partition: the master
declares the worker dead and heals its objects elsewhere; meanwhile some of its objects are
removed or written again. When the link comes back the worker registers with its inventory
and the master keeps only what is still current: nothing stale is ever served.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys

import pytest
from faultkit import (HEAL_TIMEOUT_S, WORKER_TTL, Stopwatch, alive_workers, content,
                      replica_workers, report, tcp_client, unreadable,
                      wait_for_inventories, write)
from polling import wait_until

from mooncake_client.local_cluster import Daemon, LocalCluster

KiB = 1 << 10


def _ip(*args: str, netns: str | None = None) -> None:
    command = ["ip", *(["netns", "exec", netns, "ip"] if netns else []), *args]
    subprocess.run(command, check=True, capture_output=True, timeout=10)


class Partitionable:
    """A network namespace with a veth pair to this one: host side .1, namespace side .2."""

    def __init__(self):
        tag = f"{os.getpid() % 10000}{random.randrange(100)}"
        self.netns, self.host_if, self.ns_if = f"mcf{tag}", f"mch{tag}", f"mcn{tag}"
        subnet = random.randrange(16, 250)
        self.host_ip, self.ns_ip = f"10.213.{subnet}.1", f"10.213.{subnet}.2"

    def create(self) -> "Partitionable":
        _ip("netns", "add", self.netns)
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _ip("link", "set", self.ns_if, "netns", self.netns)
        _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        _ip("addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if, netns=self.netns)
        _ip("link", "set", self.ns_if, "up", netns=self.netns)
        _ip("link", "set", "lo", "up", netns=self.netns)
        return self

    def cut(self) -> None:
        _ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        _ip("link", "set", self.host_if, "up")

    def destroy(self) -> None:
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=10)


@pytest.fixture
def partitionable():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2's `ip`")
    net = Partitionable()
    try:
        net.create()
    except subprocess.CalledProcessError as exc:
        net.destroy()
        pytest.skip(f"cannot make a network namespace here: {exc.stderr.decode().strip()}")
    yield net
    net.destroy()


def _worker_in(net: Partitionable, cluster: LocalCluster, worker_id: str) -> Daemon:
    """A worker inside the namespace, started like LocalCluster's own."""
    ready = os.path.join(cluster.dir, f"{worker_id}.ready.json")
    log_path = os.path.join(cluster.dir, f"{worker_id}.log")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", net.netns, sys.executable, "-m", "mooncake_worker",
             "--master", cluster.master_addr, "--dram", "32MiB", "--worker-id", worker_id,
             "--host", net.ns_ip, "--data-port", "0", "--grpc-port", "0", "--http-port", "0",
             "--shm-dir", cluster.shm_dir, "--drain-timeout", "0s", "--ready-file", ready],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    daemon = Daemon(worker_id, proc, ready, log_path)
    cluster.workers[worker_id] = daemon  # stopped with the cluster
    daemon.wait_ready()
    return daemon


@pytest.mark.timeout(120)
def test_a_partitioned_worker_is_dead_to_the_pool_and_its_stale_replicas_never_come_back(
        tmp_path, partitionable):
    net = partitionable
    with LocalCluster(workers=2, dram="32MiB", workdir=str(tmp_path / "c"),
                      master_args=("--host", net.host_ip, "--worker-ttl", WORKER_TTL),
                      worker_args=("--host", net.host_ip)) as cluster:
        http = cluster.master.info["http"]
        cut_off = "worker-cut"
        _worker_in(net, cluster, cut_off)
        with tcp_client(cluster.master_addr) as client:
            size = 128 * KiB
            both = write(client, [f"p2-{i}" for i in range(16)], size, replica_num=2,
                         preferred=cut_off)
            only = write(client, [f"p1-{i}" for i in range(12)], size, preferred=cut_off)
            assert all(cut_off in replica_workers(client, k) for k in [*both, *only])
            wait_for_inventories(cluster, 2 * len(both) + len(only))
            net.cut()
            clock = Stopwatch()
            assert unreadable(client, both) == []  # through the replicas outside
            wait_until(lambda: cut_off not in alive_workers(http), 15, "declared dead")
            dead_s = clock()
            wait_until(lambda: all(len(replica_workers(client, k)) == 2 for k in both),
                       HEAL_TIMEOUT_S, "healed outside the partition")
            healed_s = clock()
            # while it is away: some objects are removed, some written again
            removed = [*list(both)[:4], *list(only)[:4]]
            rewritten = [*list(both)[4:8], *list(only)[4:8]]
            for key in removed + rewritten:
                client.remove(key, force=True)
            write(client, rewritten, size, version=1)
            net.heal()
            clock = Stopwatch()
            untouched = [k for k in only if k not in removed and k not in rewritten]
            # it registers again with its inventory: its untouched objects come back
            wait_until(lambda: cut_off in alive_workers(http)
                       and unreadable(client, {k: only[k] for k in untouched}) == [], 30,
                       "the worker back, its current objects adopted")
            back_s = clock()
            expected = {k: content(k, size, version=1) for k in rewritten}
            expected |= {k: v for k, v in {**both, **only}.items()
                         if k not in removed and k not in rewritten}
            assert unreadable(client, expected) == []
            assert client.batch_get(removed) == [None] * len(removed)
            assert not any(cut_off in replica_workers(client, k) for k in rewritten)
            report("network partition of a worker", objects=len(both) + len(only),
                   removed_while_cut=len(removed), rewritten_while_cut=len(rewritten),
                   readable_after=len(expected), declared_dead_s=dead_s, healed_s=healed_s,
                   rejoined_s=back_s)
