"""The fuzz suite's cluster (real master and workers, shared by every fuzz test), the canary
that must survive every input, and the summary: inputs run and refusals per target, printed
at the end of the run and written as JSON ($MOONCAKE_FUZZ_REPORT, else fuzz-summary.json in
pytest's temporary directory)."""
import json
import os
import urllib.request

import pytest
from fuzzing import Canary, Tally

from mooncake_client import Client, ReplicaConfig
from mooncake_client.local_cluster import LocalCluster

TALLY = pytest.StashKey[Tally]()
REPORT = pytest.StashKey[str]()


def pytest_configure(config):
    config.stash[TALLY] = Tally()


def pytest_terminal_summary(terminalreporter, config):
    tally = config.stash.get(TALLY, None)
    if tally is None or not tally.inputs:
        return
    terminalreporter.section("fuzz summary")
    for line in tally.lines():
        terminalreporter.write_line(line)
    path = config.stash.get(REPORT, "")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(tally.as_json(), f, indent=2, sort_keys=True)
        terminalreporter.write_line(f"fuzz report: {path}")


@pytest.fixture(scope="session")
def tally(pytestconfig, tmp_path_factory):
    pytestconfig.stash[REPORT] = os.environ.get("MOONCAKE_FUZZ_REPORT") or str(
        tmp_path_factory.getbasetemp() / "fuzz-summary.json")
    return pytestconfig.stash[TALLY]


def _stats(addr: str) -> dict:
    with urllib.request.urlopen(f"http://{addr}/stats", timeout=10) as r:
        return json.load(r)


@pytest.fixture(scope="session")
def fuzz_cluster(tmp_path_factory, tally):
    """Two workers of 64 MiB; fuzzed puts are revoked 5 s after they start, so garbage
    allocations do not fill the pool for long."""
    cluster = LocalCluster(workers=2, dram="64MiB", master_args=("--put-timeout", "5s"),
                           workdir=str(tmp_path_factory.mktemp("fuzz-cluster")))
    with cluster:
        yield cluster
        for worker_id, daemon in cluster.workers.items():
            if daemon.proc.poll() is None:
                stats = _stats(daemon.info["http"])
                tally.daemon_counters[f"{worker_id}.requests_refused"] = \
                    stats["requests_refused"]
                tally.daemon_counters[f"{worker_id}.moves_refused"] = stats["moves_refused"]
        # a handler that raised where none should (answered, but not by design) logs this
        for daemon in [cluster.master, *cluster.workers.values()]:
            log = daemon.log_tail(10 ** 9)
            assert "Traceback" not in log and "level=error" not in log, daemon.log_path


@pytest.fixture(scope="session")
def canary(fuzz_cluster):
    # a tcp client: the canary's reads cross worker-0's data port, the one fuzzed
    with Client(fuzz_cluster.master_addr, transports=("tcp",)) as client:
        yield Canary(fuzz_cluster, client, ReplicaConfig(preferred_worker="worker-0"))
