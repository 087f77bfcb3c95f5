"""etcd HA with real masters and a real etcd: one leader, standbys that refuse naming it, and a
standby that takes over when the leader is killed (within the lease ttl), stopped (at once),
fenced (its key gone: it exits) or when etcd comes up late."""
import re
import signal
import time

import grpc
import pytest

from etcd_server import EtcdServer, etcd, free_port, http_health, role_of, start_ha_master  # noqa: F401
from mooncake_client import Client
from mooncake_client.local_cluster import LocalCluster
from mooncake_master.ha import EXIT_LEADERSHIP_LOST
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto import mooncake_pb2_grpc as pb_grpc
from mooncake_proto.discovery import Etcd, MasterLocator, leader_key
from mooncake_proto.errors import UnavailableError
from polling import wait_until


@pytest.fixture
def masters(tmp_path):
    """Starts HA masters in a cluster directory of the test's own; stops them all after."""
    cluster = LocalCluster(workers=0, workdir=str(tmp_path))
    started = []

    def start(name, etcd_endpoint, cluster_id, *extra):
        started.append(start_ha_master(cluster, name, etcd_endpoint, cluster_id, extra))
        return started[-1]

    yield start
    for daemon in started:
        daemon.stop(signal.SIGKILL)


def _elapsed_until(condition, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    wait_until(condition, timeout_s, what)
    return time.monotonic() - started


@pytest.mark.timeout(60)
def test_one_leader_and_a_standby_that_refuses_naming_it_then_leads_at_sigterm(etcd, masters):
    a = masters("a", etcd.endpoint, "pair", "--leader-ttl", "5s")
    b = masters("b", etcd.endpoint, "pair", "--leader-ttl", "5s")
    assert (a.info["role"], b.info["role"]) == ("leader", "standby")
    assert http_health(a) == {"status": "ok", "role": "leader"}
    assert http_health(b) == {"status": "ok", "role": "standby"}
    assert MasterLocator(etcd.spec("pair")).addresses() == [a.info["grpc"]]
    # the standby refuses every call, over gRPC and the framed port alike, naming the leader
    with grpc.insecure_channel(b.info["grpc"]) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            pb_grpc.MasterServiceStub(channel).Exists(pb.KeysRequest(keys=["k"]), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert a.info["grpc"] in refused.value.details()
    with Client(b.info["grpc"], master_retry_s=0) as client:
        with pytest.raises(UnavailableError, match=f"the leader is master .* at {a.info['grpc']}"):
            client.exists("k")
    with Client(etcd.spec("pair")) as client:  # the etcd spec goes to the leader
        assert client.exists("k") is False
    # SIGTERM: the leader resigns (revokes its lease), so the standby wins at its next look,
    # long before the 5 s lease could have run out
    a.proc.send_signal(signal.SIGTERM)
    took = _elapsed_until(lambda: role_of(b) == "leader", 4, "the standby leads")
    assert took < 2.5, f"took {took:.1f}s: as long as waiting for the lease"
    assert a.proc.wait(10) == 0
    assert "event=leader_resigned" in a.log_tail()
    assert "event=leader_elected" in b.log_tail() and http_health(b)["role"] == "leader"
    assert MasterLocator(etcd.spec("pair")).addresses() == [b.info["grpc"]]


@pytest.mark.timeout(60)
def test_a_killed_leader_is_replaced_within_the_lease_ttl_and_returns_as_standby(etcd, masters):
    ttl_s = 2
    a = masters("a", etcd.endpoint, "kill", "--leader-ttl", f"{ttl_s}s")
    b = masters("b", etcd.endpoint, "kill", "--leader-ttl", f"{ttl_s}s")
    assert (a.info["role"], b.info["role"]) == ("leader", "standby")
    a.stop(signal.SIGKILL)  # no resignation: the lease must run out
    took = _elapsed_until(lambda: role_of(b) == "leader", ttl_s + 3, "the standby leads")
    assert took <= ttl_s + 1.5
    # the killed master, started again, stands by behind the new leader
    a = masters("a2", etcd.endpoint, "kill", "--leader-ttl", f"{ttl_s}s")
    assert a.info["role"] == "standby"
    assert "the leader is master" in a.log_tail() and b.info["grpc"] in a.log_tail()


@pytest.mark.timeout(60)
def test_a_leader_whose_key_is_gone_stops_at_once_and_the_standby_takes_over(etcd, masters):
    """Fencing: a leader that can no longer be sure it leads must not act as one."""
    a = masters("a", etcd.endpoint, "fence", "--leader-ttl", "3s")
    b = masters("b", etcd.endpoint, "fence", "--leader-ttl", "3s")
    Etcd([etcd.endpoint]).call(lambda c: c.delete(leader_key("fence")))  # an operator's slip
    assert a.proc.wait(5) == EXIT_LEADERSHIP_LOST  # within a refresh period (1 s)
    # the standby may have taken the free key before the leader's next refresh saw it gone
    assert re.search(r"event=leadership_lost .*reason=\"the leader key is (gone|held by master "
                     + b.info["master_id"] + ")", a.log_tail())
    wait_until(lambda: role_of(b) == "leader", 3, "the standby leads")


@pytest.mark.timeout(60)
def test_masters_stand_by_until_etcd_comes_up(tmp_path, masters):
    port = free_port()
    a = masters("a", f"127.0.0.1:{port}", "late")
    assert a.info["role"] == "standby"
    with Client(a.info["grpc"], master_retry_s=0) as client:
        with pytest.raises(UnavailableError, match="etcd is unreachable"):
            client.exists("k")
    server = EtcdServer(str(tmp_path / "etcd"), client_port=port)
    (tmp_path / "etcd").mkdir()
    server.start()
    try:
        wait_until(lambda: role_of(a) == "leader", 5, "the master leads once etcd is up")
        with Client(server.spec("late")) as client:
            assert client.exists("k") is False
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_a_leader_cut_off_from_etcd_stops_leading_before_its_lease_can_expire(tmp_path, masters):
    """Fencing on time: without a refresh, etcd lets a standby win once the lease expires;
    the leader must have stopped acting before then."""
    ttl_s = 2
    (tmp_path / "etcd").mkdir()
    server = EtcdServer(str(tmp_path / "etcd")).start()
    try:
        a = masters("a", server.endpoint, "cut", "--leader-ttl", f"{ttl_s}s")
        assert a.info["role"] == "leader"
        server.stop()
        started = time.monotonic()
        line = a.wait_for_log("event=leadership_lost", timeout_s=ttl_s + 3)
        assert time.monotonic() - started < ttl_s, line
        assert "could not be refreshed" in line or "did not answer" in line
        assert a.proc.wait(10) == EXIT_LEADERSHIP_LOST
    finally:
        server.stop()
