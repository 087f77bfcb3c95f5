"""Shared fixtures: real local clusters (master + workers on 127.0.0.1, port 0, ready files)."""
import pytest

from mooncake_client import Client
from mooncake_client.local_cluster import LocalCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two workers of 64 MiB, shared by the tests of one module (keys are unique per test)."""
    with LocalCluster(workers=2, dram="64MiB",
                      workdir=str(tmp_path_factory.mktemp("cluster"))) as c:
        yield c


@pytest.fixture
def client(cluster):
    with Client(cluster.master_addr) as c:
        yield c


@pytest.fixture
def tcp_client(cluster):
    with Client(cluster.master_addr, transports=("tcp",)) as c:
        yield c


@pytest.fixture
def fresh_cluster(tmp_path):
    """A cluster of its own, for tests that fill, kill or reconfigure it."""
    clusters = []

    def make(**kwargs):
        c = LocalCluster(workdir=str(tmp_path / f"c{len(clusters)}"), **kwargs)
        clusters.append(c)
        return c.start()

    yield make
    for c in clusters:
        c.stop()
