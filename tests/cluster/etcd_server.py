"""A real etcd for the HA tests, and masters that elect through it.

`EtcdServer` runs Debian's etcd-server (/usr/bin/etcd) on free loopback ports with a temporary
data directory and waits for its /health to say true. Without the binary the tests that need
it are skipped, unless MOONCAKE_REQUIRE_ETCD=1 (make test and CI set it): then they fail, so a
machine that lost its etcd cannot pass unnoticed.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

from mooncake_client.local_cluster import Daemon, LocalCluster

ETCD_START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
BIND_TRIES = 3


def etcd_binary() -> str:
    """The etcd binary, else a skip (a failure under MOONCAKE_REQUIRE_ETCD=1)."""
    found = shutil.which("etcd") or ("/usr/bin/etcd" if os.access("/usr/bin/etcd", os.X_OK)
                                     else None)
    if found:
        return found
    reason = "etcd not installed (Debian's etcd-server: `make system-deps` installs it)"
    if os.environ.get("MOONCAKE_REQUIRE_ETCD") == "1":
        pytest.fail(f"{reason}; MOONCAKE_REQUIRE_ETCD=1 says it must be here")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EtcdServer:
    """One etcd member on 127.0.0.1. `client_port` fixed: for a test that starts etcd after
    the masters (the port is free when chosen; a bind race then fails the start)."""

    def __init__(self, workdir: str, client_port: int | None = None):
        self.binary = etcd_binary()
        self.workdir = workdir
        self.client_port = client_port
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(workdir, "etcd.log")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def spec(self, cluster_id: str) -> str:
        """The master spec clients and workers follow the cluster's leader with."""
        return f"etcd://{self.endpoint}/{cluster_id}"

    def start(self) -> "EtcdServer":
        fixed = self.client_port is not None
        for attempt in range(1 if fixed else BIND_TRIES):
            if not fixed:
                self.client_port = free_port()
            if self._start_once(free_port()):
                return self
        raise RuntimeError(f"etcd did not start:\n{self.log_tail()}")

    def _start_once(self, peer_port: int) -> bool:
        """True once etcd is healthy; False when it exited first (a port taken meanwhile)."""
        data_dir = os.path.join(self.workdir, "etcd-data")
        shutil.rmtree(data_dir, ignore_errors=True)
        client, peer = f"http://{self.endpoint}", f"http://127.0.0.1:{peer_port}"
        with open(self.log_path, "ab") as log:
            # short raft timings: a one-member cluster elects itself in a fraction of a
            # second, and lease ttls of 1 s are allowed
            self.proc = subprocess.Popen(
                [self.binary, "--name", "test", "--data-dir", data_dir,
                 "--listen-client-urls", client, "--advertise-client-urls", client,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"test={peer}", "--heartbeat-interval", "50",
                 "--election-timeout", "250"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + ETCD_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if self._healthy():
                return True
            time.sleep(0.02)  # polling etcd's /health, not waiting a guessed time
        self.stop()
        raise RuntimeError(f"etcd not healthy after {ETCD_START_TIMEOUT_S}s:\n{self.log_tail()}")

    def _healthy(self) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"http://{self.endpoint}/health", timeout=1) as r:
                return json.load(r).get("health") == "true"
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    """One etcd for a test module; each test names a cluster id of its own."""
    server = EtcdServer(str(tmp_path_factory.mktemp("etcd"))).start()
    yield server
    server.stop()


# ---- masters under etcd HA ----

def start_ha_master(cluster: LocalCluster, name: str, etcd_endpoint: str, cluster_id: str,
                    extra: tuple = ()) -> Daemon:
    """A master of `cluster_id` (a leader or a standby) on free ports; waits for its ready
    file, which names its role. It is not `cluster.master`: the test stops it."""
    daemon = cluster._spawn(name, "mooncake_master", [
        "--port", "0", "--http-port", "0", "--meta-port", "0", "--etcd", etcd_endpoint,
        "--cluster-id", cluster_id, *extra])
    daemon.wait_ready()
    return daemon


def role_of(daemon: Daemon) -> str:
    """The role the master's ready file names now (it is written again on every change)."""
    try:
        with open(daemon.ready_file, encoding="utf-8") as f:
            return json.load(f).get("role", "")
    except (OSError, ValueError):
        return ""


def http_health(daemon: Daemon) -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{daemon.info['http']}/health", timeout=5) as r:
        return json.load(r)
