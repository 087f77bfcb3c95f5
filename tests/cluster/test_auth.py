"""Tokens and TLS against real daemons: who may call what over gRPC and the framed port,
workers that may not register, TLS clusters, and the open cluster's warning."""
import os
import socket
import subprocess
import sys
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from mooncake_client import Client
from mooncake_client.local_cluster import LocalCluster
from mooncake_client.meta_channel import MetaChannel
from mooncake_proto import metaframe
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto.errors import (ErrorCode, InvalidArgumentError, PermissionDeniedError,
                                   UnauthenticatedError, UnavailableError)
from tls_certs import have_openssl, make_certs

WORKER, CLIENT, OTHER_CLIENT, ADMIN = "w0rker-token", "cl1ent-token", "cl1ent-2", "adm1n-token"
REFUSAL_WAIT_S = 20.0  # a refused worker logs its first refusal well within this


def _write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """One worker, a master with tokens of every role (no TLS)."""
    d = tmp_path_factory.mktemp("secured")
    tokens = _write(d / "tokens.yaml",
                    f"worker: {WORKER}\nclient: [{CLIENT}, {OTHER_CLIENT}]\nadmin: {ADMIN}\n")
    worker_token = _write(d / "worker.token", WORKER + "\n")
    with LocalCluster(workers=1, dram="32MiB", workdir=str(d / "cluster"),
                      master_args=("--tokens", tokens),
                      worker_args=("--token-file", worker_token)) as c:
        c.tokens_dir = d
        yield c


# ---- object calls ----

@pytest.mark.parametrize("framed", [True, False])
@pytest.mark.parametrize("token", ["", "not-a-known-token"])
def test_no_or_a_wrong_token_is_unauthenticated(secured, framed, token):
    with Client(secured.master_addr, token=token, framed_metadata=framed) as c:
        for call in (lambda: c.put("auth/x", b"x"), lambda: c.get("auth/x"),
                     lambda: c.exists("auth/x"), lambda: c.remove("auth/x"),
                     lambda: c.remove_all()):
            with pytest.raises(UnauthenticatedError) as info:
                call()
            assert info.value.code == ErrorCode.UNAUTHENTICATED == -1300
    assert "event=call_refused" in secured.master.log_tail(200)


@pytest.mark.parametrize("framed", [True, False])
def test_a_client_token_reads_and_writes_but_may_not_remove_all(secured, framed):
    key = f"auth/client/{framed}"
    with Client(secured.master_addr, token=CLIENT, framed_metadata=framed) as c:
        c.put(key, b"v" * 1000)
        assert c.get(key) == b"v" * 1000 and c.exists(key)
        assert (c._link.meta is not None) == framed  # the framed port was used when allowed
        with pytest.raises(PermissionDeniedError) as info:
            c.remove_all()
        assert info.value.code == ErrorCode.PERMISSION_DENIED == -1301
        assert c.remove(key, force=True) is True  # a client may remove (it just read: leased)
    with Client(secured.master_addr, token=OTHER_CLIENT) as c:  # any of a role's tokens
        c.put(key, b"w")
        assert c.get(key) == b"w"


def test_the_token_can_come_from_the_environment(secured, monkeypatch):
    monkeypatch.setenv("MOONCAKE_TOKEN", CLIENT)
    with Client(secured.master_addr) as c:
        c.put("auth/env", b"e")
        assert c.get("auth/env") == b"e"
    with Client(secured.master_addr, token="") as c:  # an explicit "" overrides it
        with pytest.raises(UnauthenticatedError):
            c.exists("auth/env")


def test_a_worker_token_may_not_make_object_calls(secured):
    with Client(secured.master_addr, token=WORKER) as c:
        with pytest.raises(PermissionDeniedError):
            c.put("auth/by-worker", b"w")


def test_an_admin_token_does_everything(secured):
    with Client(secured.master_addr, token=ADMIN) as c:
        c.put("auth/admin", b"a")
        assert c.get("auth/admin") == b"a"
        assert c.remove_all(force=True) >= 1
        assert c.get("auth/admin") is None


def test_a_token_that_cannot_travel_is_refused_by_the_client(secured):
    with pytest.raises(InvalidArgumentError):
        Client(secured.master_addr, token="two words")


# ---- what needs no token: health checks, and what /metrics counts of refusals ----

def test_health_checks_need_no_token(secured):
    """Probes (kubelet, load balancers) carry no token; the health service tells them only
    whether the daemon serves, so it is outside the token check (proto/rpc.py)."""
    for addr in (secured.master_addr, secured.workers["worker-0"].info["grpc"]):
        with grpc.insecure_channel(addr) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                              timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_refused_calls_are_counted_by_code(secured):
    def refusals():
        with urllib.request.urlopen(f"http://{secured.master.info['http']}/metrics",
                                    timeout=10) as r:
            text = r.read().decode()
        return {(s.labels["method"], s.labels["code"]): s.value
                for family in text_string_to_metric_families(text) for s in family.samples
                if s.name == "mooncake_master_rpc_failures_total"}
    before = refusals()
    with Client(secured.master_addr, token="", framed_metadata=False) as c:
        with pytest.raises(UnauthenticatedError):
            c.exists("auth/counted")
    with Client(secured.master_addr, token=CLIENT) as c:
        with pytest.raises(PermissionDeniedError):
            c.remove_all()
    after = refusals()
    for at in (("Exists", str(ErrorCode.UNAUTHENTICATED)),
               ("RemoveAll", str(ErrorCode.PERMISSION_DENIED))):
        assert after.get(at, 0) == before.get(at, 0) + 1, at


# ---- the framed port, frame by frame ----

def _exchange(sock: socket.socket, frame: bytes) -> tuple[int, bytes]:
    sock.sendall(frame)
    head = sock.recv(metaframe.RESPONSE.size, socket.MSG_WAITALL)
    if len(head) < metaframe.RESPONSE.size:
        return -1, b""  # closed
    status, length = metaframe.RESPONSE.unpack(head)
    return status, sock.recv(length, socket.MSG_WAITALL) if length else b""


def _call_frame(method: str, request) -> bytes:
    body = request.SerializeToString()
    return metaframe.REQUEST.pack(metaframe.MAGIC, metaframe.METHOD_IDS[method], len(body)) + body


def _connect(secured) -> socket.socket:
    host, port = secured.master.info["meta"].rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


EXISTS = _call_frame("Exists", pb.KeysRequest(keys=["auth/framed"]))


def test_framed_calls_without_an_auth_frame_are_unauthenticated(secured):
    with _connect(secured) as s:
        for frame in (EXISTS, _call_frame("PutStart", pb.PutStartRequest(keys=["k"], sizes=[1])),
                      _call_frame("GetReplicas", pb.KeysRequest(keys=["k"]))):
            status, body = _exchange(s, frame)
            assert status == ErrorCode.UNAUTHENTICATED and b"no bearer token" in body
        # the connection stays usable: it may still authenticate
        assert _exchange(s, metaframe.auth_frame(CLIENT)) == (0, b"")
        assert _exchange(s, EXISTS)[0] == 0


def test_a_framed_auth_frame_with_an_unknown_token_loses_its_connection(secured):
    with _connect(secured) as s:
        status, body = _exchange(s, metaframe.auth_frame("guess"))
        assert status == ErrorCode.UNAUTHENTICATED and b"unknown bearer token" in body
        assert s.recv(1) == b""
    assert "event=meta_auth_refused" in secured.master.log_tail(200)


def test_framed_roles_are_checked_per_call(secured):
    with _connect(secured) as s:
        assert _exchange(s, metaframe.auth_frame(WORKER)) == (0, b"")  # a known token
        status, body = _exchange(s, EXISTS)
        assert status == ErrorCode.PERMISSION_DENIED and b"needs a client token" in body
    with _connect(secured) as s:
        assert _exchange(s, metaframe.auth_frame(ADMIN)) == (0, b"")
        assert _exchange(s, EXISTS)[0] == 0


def test_an_oversized_auth_frame_is_refused_as_garbage(secured):
    with _connect(secured) as s:
        frame = metaframe.REQUEST.pack(metaframe.MAGIC, metaframe.AUTH, 5000) + b"x" * 5000
        assert _exchange(s, frame)[0] == ErrorCode.INVALID_PARAMS


def test_the_framed_channel_raises_unauthenticated(secured):
    addr = secured.master.info["meta"]
    request = pb.KeysRequest(keys=["auth/framed"])
    for token in ("", "guess"):
        channel = MetaChannel(addr, 2, token)
        with pytest.raises(UnauthenticatedError):
            channel.call("Exists", request, 5)
        channel.close()
    channel = MetaChannel(addr, 2, CLIENT)
    assert len(channel.call("Exists", request, 5).statuses) == 1
    channel.close()


# ---- workers ----

@pytest.mark.parametrize("token, code", [(None, "UNAUTHENTICATED"), ("bad", "UNAUTHENTICATED"),
                                         (CLIENT, "PERMISSION_DENIED")])
def test_a_worker_without_the_worker_token_cannot_register(secured, token, code):
    worker_id = f"intruder-{code.lower()}-{token}"
    token_file = "" if token is None else _write(secured.tokens_dir / f"{worker_id}.token", token)
    intruder = secured.start_worker(worker_id, dram="8MiB", extra=("--token-file", token_file),
                                    wait=False)
    try:
        line = intruder.wait_for_log("event=register_failed", REFUSAL_WAIT_S)
        assert f"code={code}" in line and "level=error" in line
        assert secured.master.wait_for_log("method=RegisterWorker peer=", REFUSAL_WAIT_S)
        assert not os.path.exists(intruder.ready_file) and intruder.proc.poll() is None
        segments = _http(secured.master.info["http"], "/get_all_segments").split()
        assert segments == ["worker-0/0"]
    finally:
        intruder.stop()


def test_a_worker_with_the_worker_token_registers(secured):
    daemon = secured.start_worker("worker-late", dram="8MiB")
    assert daemon.info["worker_id"] == "worker-late"
    assert "worker-late/0" in _http(secured.master.info["http"], "/get_all_segments").split()
    with Client(secured.master_addr, token=CLIENT) as c:  # heartbeats keep it alive
        c.put("auth/late", b"l")
        assert c.get("auth/late") == b"l"
    daemon.stop()


def _http(addr: str, path: str) -> str:
    with urllib.request.urlopen(f"http://{addr}{path}", timeout=5) as r:
        return r.read().decode()


# ---- start-up ----

def test_an_open_cluster_warns_at_start(fresh_cluster):
    cluster = fresh_cluster(workers=0)
    line = cluster.master.wait_for_log("event=no_authentication", 5)
    assert "level=warning" in line


def test_tokens_without_tls_warn_that_they_travel_in_clear(secured):
    assert "event=tokens_in_clear" in secured.master.log_tail(200)
    assert "event=authentication worker_tokens=1 client_tokens=2 admin_tokens=1" \
        in secured.master.log_tail(200)


@pytest.mark.parametrize("content, message", [
    ("workers: abc\n", "unknown key 'workers'"),
    ("client: 42\n", "a token must be a string"),
    ("client: []\n", "an empty list"),
    ("client: two words\n", "printable ASCII"),
    ("client: same\nadmin: same\n", "one token under both client and admin"),
    ("", "expected a mapping"),
    ("client: [a\n", "not YAML"),
])
def test_a_bad_tokens_file_stops_the_master(tmp_path, content, message):
    tokens = _write(tmp_path / "tokens.yaml", content)
    proc = _run("mooncake_master", "--tokens", tokens, "--port", "0", "--http-port", "0",
                "--meta-port", "-1")
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


@pytest.mark.parametrize("module, args, message", [
    ("mooncake_master", ("--tls-cert", "{d}/tokens.yaml"), "go together"),
    ("mooncake_master", ("--tls-ca", "{d}/tokens.yaml"), "not a PEM certificate"),
    ("mooncake_master", ("--tokens", "{d}/missing.yaml"), "No such file"),
    ("mooncake_worker", ("--token-file", "{d}/empty.token"), "empty token"),
    ("mooncake_worker", ("--token-file", "{d}/missing.token"), "No such file"),
])
def test_bad_security_files_stop_a_daemon(tmp_path, module, args, message):
    _write(tmp_path / "tokens.yaml", f"client: {CLIENT}\n")
    _write(tmp_path / "empty.token", "\n")
    common = (("--port", "0", "--http-port", "0", "--meta-port", "-1")
              if module == "mooncake_master" else ("--master", "127.0.0.1:9", "--dram", "1MiB"))
    proc = _run(module, *common, *(a.format(d=tmp_path) for a in args))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


# ---- TLS ----

@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    """TLS everywhere and tokens: a master and a worker with an SSD tier (so the master calls
    the worker too: demotions go over WorkerService)."""
    if not have_openssl():
        pytest.skip("the openssl command is needed to make test certificates")
    d = tmp_path_factory.mktemp("tls")
    certs = make_certs(str(d / "certs"))
    tls = ("--tls-cert", certs.cert, "--tls-key", certs.key, "--tls-ca", certs.ca)
    tokens = _write(d / "tokens.yaml", f"worker: {WORKER}\nclient: {CLIENT}\n")
    worker_token = _write(d / "worker.token", WORKER)
    with LocalCluster(workers=1, dram="4MiB", ssd="16MiB", workdir=str(d / "cluster"),
                      master_args=("--tokens", tokens) + tls,
                      worker_args=("--token-file", worker_token) + tls) as c:
        c.certs, c.tls_dir = certs, d
        yield c


def test_a_client_with_the_ca_works_and_the_framed_port_is_off(tls_cluster):
    assert tls_cluster.master.info["meta"] == ""
    assert "event=meta_port_off" in tls_cluster.master.log_tail(200)
    assert "event=tokens_in_clear" not in tls_cluster.master.log_tail(200)
    with Client(tls_cluster.master_addr, token=CLIENT, tls_ca=tls_cluster.certs.ca) as c:
        c.put("tls/one", b"t" * 5000)
        assert c.get("tls/one") == b"t" * 5000 and c.exists("tls/one")
        assert c._link.meta is None  # every call went over gRPC, under TLS


def test_the_ca_can_come_from_the_environment(tls_cluster, monkeypatch):
    monkeypatch.setenv("MOONCAKE_TLS_CA", tls_cluster.certs.ca)
    monkeypatch.setenv("MOONCAKE_TOKEN", CLIENT)
    with Client(tls_cluster.master_addr) as c:
        assert c.exists("tls/nothing") is False


def test_a_client_without_tls_or_with_another_ca_is_unavailable(tls_cluster):
    other = make_certs(str(tls_cluster.tls_dir / "other"), "other")
    for tls_ca in ("", other.ca):
        with Client(tls_cluster.master_addr, token=CLIENT, tls_ca=tls_ca,
                    rpc_timeout_s=3, master_retry_s=1) as c:
            with pytest.raises(UnavailableError):
                c.put("tls/refused", b"x")


def test_the_master_calls_workers_over_tls(tls_cluster):
    size, count = 256 << 10, 24  # 6 MiB into 4 MiB of DRAM: the oldest are demoted to SSD
    payload = lambda i: bytes([i]) * size  # noqa: E731
    with Client(tls_cluster.master_addr, token=CLIENT, tls_ca=tls_cluster.certs.ca) as c:
        for i in range(count):
            c.put(f"tls/tier/{i}", payload(i))
        assert [r.tier for r in c.get_replicas("tls/tier/0")] == ["SSD"]
        for i in range(count):
            assert c.get(f"tls/tier/{i}") == payload(i)
    log = tls_cluster.master.log_tail(400)
    assert "event=moves_finished" in log and "event=moves_failed" not in log


def test_a_worker_without_the_ca_cannot_register(tls_cluster):
    daemon = tls_cluster.start_worker("no-ca", dram="8MiB", wait=False,
                                      extra=("--tls-ca", ""))
    try:
        line = daemon.wait_for_log("event=register_failed", REFUSAL_WAIT_S)
        assert "code=UNAVAILABLE" in line and not os.path.exists(daemon.ready_file)
    finally:
        daemon.stop()
