"""Clients through master fail-overs and restarts: a Client given etcd:// follows the new leader
(and its framed port), one given a plain address rides out a kill -9 and restart on the same
port, and calls that may have reached a master are never sent twice."""
import json
import signal
import threading
import time
import urllib.request

import grpc
import pytest

from etcd_server import etcd, start_ha_master  # noqa: F401
from mooncake_client import Client
from mooncake_client.master_link import SAFE_TO_REPEAT, _may_retry
from mooncake_client.local_cluster import Daemon, LocalCluster
from mooncake_proto import rpc
from polling import wait_until


def _workers_at(master: Daemon) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{master.info['http']}/stats", timeout=2) as r:
            return len(json.load(r)["workers"])
    except OSError:
        return -1


def _start_worker(cluster: LocalCluster, worker_id: str, masters: str) -> Daemon:
    daemon = cluster._spawn(worker_id, "mooncake_worker", [
        "--master", masters, "--dram", "8MiB", "--worker-id", worker_id, "--data-port", "0",
        "--grpc-port", "0", "--http-port", "0", "--shm-dir", cluster.shm_dir])
    cluster.workers[worker_id] = daemon
    daemon.wait_ready()
    return daemon


@pytest.mark.timeout(60)
def test_a_client_given_etcd_follows_the_leader_through_a_kill(etcd, tmp_path):
    cluster = LocalCluster(workers=0, workdir=str(tmp_path))
    ha = ("--leader-ttl", "2s")
    a = start_ha_master(cluster, "a", etcd.endpoint, "follow", ha)
    b = start_ha_master(cluster, "b", etcd.endpoint, "follow", ha)
    try:
        assert (a.info["role"], b.info["role"]) == ("leader", "standby")
        # workers rotate through the masters they are given (etcd:// for them comes later)
        for name in ("w0", "w1"):
            _start_worker(cluster, name, f"{a.info['grpc']},{b.info['grpc']}")
        with Client(etcd.spec("follow"), rpc_timeout_s=3) as client:
            client.put("before", b"b" * 1000)
            assert client.get("before") == b"b" * 1000
            assert client._link.meta is not None and client._link.meta.addr == a.info["meta"]
            errors, done = [], threading.Event()

            def read_through_the_fail_over():
                while not done.is_set():
                    try:
                        client.exists("before")
                    except Exception as exc:  # noqa: BLE001 - any is a failure here
                        errors.append(exc)

            reader = threading.Thread(target=read_through_the_fail_over)
            reader.start()
            a.stop(signal.SIGKILL)
            try:
                wait_until(lambda: _workers_at(b) == 2, 20, "both workers registered at b")
            finally:
                done.set()
                reader.join(20)
            assert not errors, errors[:3]
            client.put("after", b"a" * 1000)  # placed by the new leader, on the workers
            assert client.get("after") == b"a" * 1000
            assert client._link.target == b.info["grpc"]
            assert client._link.meta is not None and client._link.meta.addr == b.info["meta"]
    finally:
        b.stop()
        a.stop(signal.SIGKILL)
        cluster.stop()


@pytest.mark.timeout(60)
def test_a_client_given_a_plain_address_rides_out_a_master_restart(tmp_path):
    cluster = LocalCluster(workers=1, dram="8MiB", workdir=str(tmp_path)).start()
    try:
        info = dict(cluster.master.info)
        args = ["--port", info["grpc"].rpartition(":")[2], "--http-port", "0",
                "--meta-port", info["meta"].rpartition(":")[2]]
        with Client(cluster.master_addr, rpc_timeout_s=3) as client:
            client.put("k", b"1")
            cluster.master.stop(signal.SIGKILL)

            def restart():
                cluster.master = cluster._spawn("master", "mooncake_master", args)
            # the outage's length, not a wait for readiness: the call below spans it
            restarting = threading.Timer(0.5, restart)
            restarting.start()
            started = time.monotonic()
            try:
                assert client.exists("k") in (True, False)  # retried until the master is back
            finally:
                restarting.join()
            assert time.monotonic() - started >= 0.5
            cluster.master.wait_ready()
            wait_until(lambda: _workers_at(cluster.master) == 1, 15, "the worker registered")
            client.put("k2", b"2")
            assert client.get("k2") == b"2"
    finally:
        cluster.stop()


@pytest.mark.timeout(30)
def test_no_master_within_the_bound_is_unavailable(tmp_path):
    from test_daemons import free_port
    from mooncake_proto.errors import UnavailableError
    with Client(f"127.0.0.1:{free_port()}", master_retry_s=1.0) as client:
        started = time.monotonic()
        with pytest.raises(UnavailableError, match="no master served the call within 1s"):
            client.exists("k")
        assert 1.0 <= time.monotonic() - started < 4


# ---- which failed calls may go again (a gRPC error as the channel reports it) ----

class _Failed(grpc.RpcError):
    def __init__(self, code, details, trailers=()):
        self._code, self._details, self._trailers = code, details, trailers

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailers


REFUSED = "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: " \
          "Failed to connect to remote host: Connection refused"
STANDBY = _Failed(grpc.StatusCode.UNAVAILABLE, "standby of cluster c: the leader is master x",
                  ((rpc.CODE_METADATA_KEY, "-900"),))
LOST = _Failed(grpc.StatusCode.UNAVAILABLE, "Stream removed (recvmsg:Connection reset by peer)")


@pytest.mark.parametrize("method", ["PutStart", "Remove", "RemoveAll", "GetReplicas", "PutEnd"])
def test_calls_that_never_reached_a_master_or_were_refused_unread_go_again(method):
    assert _may_retry(method, _Failed(grpc.StatusCode.UNAVAILABLE, REFUSED))
    assert _may_retry(method, STANDBY)


def test_calls_that_may_have_reached_a_master_go_again_only_when_harmless():
    assert {"GetReplicas", "Exists", "PutEnd", "PutRevoke", "Hello", "ListKeys"} <= SAFE_TO_REPEAT
    for method in ("PutStart", "Remove", "RemoveAll"):
        assert not _may_retry(method, LOST)
        assert not _may_retry(method, _Failed(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline"))
    for method in ("GetReplicas", "Exists", "PutEnd", "PutRevoke"):
        assert _may_retry(method, LOST)
        assert _may_retry(method, _Failed(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline"))


def test_refusals_that_waiting_cannot_fix_are_not_retried():
    tls = _Failed(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: "
                  "UNKNOWN: ipv4:127.0.0.1:1: Tls handshake failed (TSI_PROTOCOL_FAILURE)")
    assert not _may_retry("Exists", tls)
    for code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                 grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED):
        assert not _may_retry("Exists", _Failed(code, "no"))
