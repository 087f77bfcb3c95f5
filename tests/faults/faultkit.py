"""What the fault tests share: objects written with known contents, checked by content, and
questions to the master (which workers are alive, how many objects it knows)."""
from __future__ import annotations

import json
import os
import time
import urllib.request

from mooncake_client import Client, ReplicaConfig

WORKER_TTL = "2s"       # deaths are declared within 2 s of silence (plus a tick)
TRANSFER_TIMEOUT_S = 1.0  # a paused or cut-off worker fails a transfer within this
HEAL_TIMEOUT_S = 40.0     # ample for a handful of MiB on this 2-core VM


def content(key: str, size: int, version: int = 0) -> bytes:
    """Bytes that only this key (and version) has: a misplaced or stale read shows."""
    seed = f"{key}/{version}/".encode()
    return (seed * (size // len(seed) + 1))[:size]


def write(client: Client, keys: list[str], size: int, replica_num: int = 1,
          preferred: str | None = None, version: int = 0) -> dict[str, bytes]:
    objects = {k: content(k, size, version) for k in keys}
    config = ReplicaConfig(replica_num=replica_num, preferred_worker=preferred)
    client.batch_put(list(objects), list(objects.values()), config)
    return objects


def unreadable(client: Client, objects: dict[str, bytes]) -> list[str]:
    """The keys that do not read back exactly (a miss counts)."""
    got = client.batch_get(list(objects))
    return [k for k, data in zip(objects, got) if data != objects[k]]


def replica_workers(client: Client, key: str) -> list[str]:
    return [r.worker_id for r in client.get_replicas(key)]


def master_stats(http_addr: str) -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{http_addr}/stats", timeout=5) as r:
        return json.load(r)


def alive_workers(http_addr: str) -> set[str]:
    """The workers the master serves from: registered, and heartbeating since (before its
    first heartbeat a worker is `registering`: nothing is granted on it)."""
    try:
        return {w["worker_id"] for w in master_stats(http_addr)["workers"]
                if not w["registering"]}
    except OSError:
        return set()


def inventory_size(worker) -> int:
    """Entries in a worker's inventory (its /stats), -1 when it does not answer."""
    try:
        return master_stats(worker.info["http"]).get("inventory_entries", -1)
    except OSError:
        return -1


def wait_for_inventories(cluster, entries: int) -> None:
    """Until the workers' inventories hold `entries` in all: commits reach them in heartbeat
    replies, once a second, and a worker that dies sooner than that comes back without its
    newest objects (DESIGN.md 3: the last heartbeat interval may be lost)."""
    from polling import wait_until
    wait_until(lambda: sum(inventory_size(w) for w in cluster.workers.values()) == entries,
               10, f"{entries} entries in the workers' inventories")


def tcp_client(master: str, **kwargs) -> Client:
    """Bytes over TCP only: a worker on this node would otherwise be read through its shared
    memory file, which no pause or partition stops."""
    kwargs.setdefault("transfer_timeout_s", TRANSFER_TIMEOUT_S)
    return Client(master, transports=("tcp",), **kwargs)


class Stopwatch:
    def __init__(self):
        self.started = time.monotonic()

    def __call__(self) -> float:
        return round(time.monotonic() - self.started, 2)


def report(name: str, **numbers) -> None:
    """One line per scenario, in the test log and in $MOONCAKE_FAULT_REPORT (a JSON line
    each) when set: the closing notes' numbers come from there."""
    line = {"scenario": name, **numbers}
    print("fault-report", json.dumps(line))
    path = os.environ.get("MOONCAKE_FAULT_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
