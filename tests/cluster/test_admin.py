"""`mooncake-admin` as a subprocess against real daemons: put, ls, get, rm, stat, workers, --json,
its one-line failures, and ListKeys under tokens (an admin call)."""
import json
import os
import subprocess
import sys

import pytest

from mooncake_client import Client, ReplicaConfig
from mooncake_client.admin import collect_keys
from mooncake_client.local_cluster import LocalCluster

CALL_TIMEOUT_S = 60  # a subprocess on a busy host: generous, and never a timed assertion
MiB = 1 << 20


def admin(cluster, *args, stdin: bytes = b"", env: dict | None = None,
          addresses: bool = True) -> subprocess.CompletedProcess:
    where = ["--master", cluster.master_addr, "--http", cluster.master.info["http"]] \
        if addresses else []
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MOONCAKE_")}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "mooncake_client.admin", *where, *args],
                          input=stdin, capture_output=True, timeout=CALL_TIMEOUT_S, env=environ)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def failed(result: subprocess.CompletedProcess) -> str:
    """The one line a failure prints."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mooncake-admin: "), lines
    return lines[0]


def test_put_ls_get_rm(cluster, tmp_path):
    payload = os.urandom(MiB + 7)
    (tmp_path / "in").write_bytes(payload)
    assert ok(admin(cluster, "put", "adm/file", str(tmp_path / "in"))).startswith(
        "stored adm/file: 1.0MiB")
    ok(admin(cluster, "put", "adm/stdin", "-", "--replicas", "2", "--hard-pin", stdin=b"hello"))
    line = failed(admin(cluster, "put", "adm/stdin", "-", stdin=b"other"))
    assert "exists" in line  # not overwritten: first writer wins, and the tool says so

    rows = ok(admin(cluster, "ls", "adm/")).splitlines()
    assert rows[0].split() == ["KEY", "SIZE", "STATE", "TIERS", "PIN", "ACCESSED"]
    assert [r.split()[:5] for r in rows[1:]] == [
        ["adm/file", "1.0MiB", "COMPLETE", "DRAM", "-"],
        ["adm/stdin", "5B", "COMPLETE", "DRAM,DRAM", "hard"]]

    ok(admin(cluster, "get", "adm/file", "-o", str(tmp_path / "out")))
    assert (tmp_path / "out").read_bytes() == payload
    assert admin(cluster, "get", "adm/stdin").stdout == b"hello"
    assert "no such key" in failed(admin(cluster, "get", "adm/none"))

    # the get above leased the key: rm is refused until the lease ends, unless --force
    assert "--force" in failed(admin(cluster, "rm", "adm/file"))
    assert ok(admin(cluster, "rm", "adm/file", "--force")) == "removed adm/file\n"
    assert "no such key" in failed(admin(cluster, "rm", "adm/file"))
    assert ok(admin(cluster, "ls", "adm/")).splitlines()[1].startswith("adm/stdin")


def test_json_output(cluster, tmp_path):
    ok(admin(cluster, "put", "json/a", "-", "--soft-pin", stdin=b"x" * 3000))
    listing = json.loads(ok(admin(cluster, "--json", "ls", "json/")))
    [entry] = listing["keys"]
    assert listing["truncated"] is False
    assert {k: v for k, v in entry.items() if k != "last_access_age_s"} == {
        "key": "json/a", "size": 3000, "state": "COMPLETE", "tiers": ["DRAM"],
        "soft_pin": True, "hard_pin": False}
    assert entry["last_access_age_s"] >= 0
    got = json.loads(ok(admin(cluster, "get", "json/a", "-o", str(tmp_path / "a"), "--json")))
    assert got == {"key": "json/a", "size": 3000, "output": str(tmp_path / "a")}
    assert json.loads(ok(admin(cluster, "rm", "json/a", "--force", "--json"))) == \
        {"key": "json/a", "removed": True}


def test_ls_limit_and_paging(cluster):
    with Client(cluster.master_addr) as c:
        c.batch_put([f"page/{i:02d}" for i in range(7)], [b"p"] * 7)
        keys, more = collect_keys(c, "page/", 0, page=3)  # three ListKeys calls
        assert [k.key for k in keys] == [f"page/{i:02d}" for i in range(7)] and not more
        keys, more = collect_keys(c, "page/", 5, page=2)
        assert len(keys) == 5 and more
    result = admin(cluster, "ls", "page/", "--limit", "4")
    assert len(ok(result).splitlines()) == 1 + 4
    assert "more match" in result.stderr.decode()
    listing = json.loads(ok(admin(cluster, "ls", "page/", "--limit", "4", "--json")))
    assert len(listing["keys"]) == 4 and listing["truncated"] is True
    assert ok(admin(cluster, "ls", "nothing-here/")) == ""


def test_stat_and_workers(cluster):
    with Client(cluster.master_addr) as c:
        c.put("stat/one", b"s" * 4096)
    stats = json.loads(ok(admin(cluster, "stat", "--json")))
    assert stats["workers"] == 2 and stats["objects"] >= 1
    assert stats["tiers"]["DRAM"]["total_bytes"] == 2 * 64 * MiB
    assert stats["tiers"]["DRAM"]["used_bytes"] >= 4096
    for counter in ("evicted_objects", "demotions", "promotions", "moves"):
        assert stats[counter] >= 0
    text = ok(admin(cluster, "stat"))
    assert "workers        2" in text and "TIER" in text and "128MiB" in text

    workers = json.loads(ok(admin(cluster, "workers", "--json")))
    assert sorted(w["worker_id"] for w in workers) == ["worker-0", "worker-1"]
    for w in workers:
        assert w["dram_total_bytes"] == 64 * MiB and w["data_addr"].startswith("127.0.0.1:")
        assert 0.0 <= w["dram_fragmentation"] <= 1.0
    rows = ok(admin(cluster, "workers")).splitlines()
    assert rows[0].split()[:3] == ["WORKER", "NODE", "DATA"] and len(rows) == 3
    assert all("/64MiB" in row for row in rows[1:])


def test_addresses_from_the_environment(cluster):
    env = {"MOONCAKE_MASTER": cluster.master_addr,
           "MOONCAKE_MASTER_HTTP": cluster.master.info["http"]}
    assert json.loads(ok(admin(cluster, "stat", "--json", env=env, addresses=False)))["workers"] == 2
    ok(admin(cluster, "ls", env=env, addresses=False))


def test_unreachable_addresses_fail_in_one_line(cluster):
    line = failed(admin(cluster, "stat", "--http", "127.0.0.1:1"))
    assert "127.0.0.1:1/stats" in line
    line = failed(admin(cluster, "ls", "--master", "127.0.0.1:1", "--timeout", "2s"))
    assert "127.0.0.1:1" in line
    assert "no-such-file" in failed(admin(cluster, "put", "k", "/no-such-file"))


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    d = tmp_path_factory.mktemp("admin-secured")
    (d / "tokens.yaml").write_text("worker: w0rker\nclient: cl1ent\nadmin: adm1n\n")
    (d / "worker.token").write_text("w0rker\n")
    with LocalCluster(workers=1, dram="32MiB", workdir=str(d / "cluster"),
                      master_args=("--tokens", str(d / "tokens.yaml")),
                      worker_args=("--token-file", str(d / "worker.token"))) as c:
        yield c


def test_listing_keys_needs_an_admin_token(secured):
    # a client token may put (without the lease-free existence check) but not list
    ok(admin(secured, "put", "sec/k", "-", "--token", "cl1ent", stdin=b"v"))
    assert "admin" in failed(admin(secured, "ls", "--token", "cl1ent"))
    assert "token" in failed(admin(secured, "ls"))
    listing = json.loads(ok(admin(secured, "ls", "--json", env={"MOONCAKE_TOKEN": "adm1n"})))
    assert [k["key"] for k in listing["keys"]] == ["sec/k"]


def test_drain_copies_a_workers_sole_objects_away_and_cancel_puts_it_back(fresh_cluster):
    cluster = fresh_cluster(workers=2, dram="32MiB")
    with Client(cluster.master_addr, transports=("tcp",)) as c:
        keys = [f"drain/{i}" for i in range(12)]
        for key in keys:
            c.put(key, key.encode() * 1000,
                  config=ReplicaConfig(preferred_worker="worker-0"))
        assert {r.worker_id for k in keys for r in c.get_replicas(k)} == {"worker-0"}
        out = ok(admin(cluster, "drain", "worker-0", "--wait"))
        assert "worker-0" in out
        # every object now has a copy on worker-1: stopping worker-0 loses nothing
        assert all("worker-1" in [r.worker_id for r in c.get_replicas(k)] for k in keys)
        cluster.workers["worker-0"].stop()
        assert c.batch_get(keys) == [k.encode() * 1000 for k in keys]
        ok(admin(cluster, "drain", "worker-1", "--cancel"))
        assert "not registered" in failed(admin(cluster, "drain", "nobody"))
