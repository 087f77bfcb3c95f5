"""A worker's life with real processes: its inventory files beside the segments, registration
retried through master restarts, SIGTERM with and without a drain, restarts with its id."""
import os
import signal
import time
import urllib.request

import pytest

from mooncake_client import Client
from mooncake_proto.errors import MooncakeError
from mooncake_worker.inventory import HEADER, MAGIC, log_path_for
from mooncake_worker.node import dram_segment_path, ssd_segment_path
from polling import wait_until

pytestmark = pytest.mark.timeout(90)


def put_eventually(client: Client, key: str, value: bytes, timeout_s: float = 20) -> None:
    """A put, retried while the cluster comes back (a master restarting, workers rejoining)."""
    def attempt():
        try:
            client.put(key, value)
            return True
        except MooncakeError:
            return False
    wait_until(attempt, timeout_s, f"put {key}")


def test_inventory_logs_live_beside_the_segments_and_follow_their_files(fresh_cluster):
    cluster = fresh_cluster(workers=1, dram="8MiB", ssd="8MiB")
    dram = dram_segment_path(cluster.shm_dir, "worker-0")
    ssd = ssd_segment_path(cluster.ssd_dir, "worker-0")
    for segment in (dram, ssd):
        with open(log_path_for(segment), "rb") as f:
            header = f.read(HEADER.size)
        magic, _, _, size, inode = HEADER.unpack(header)
        assert (magic, size, inode) == (MAGIC, 8 << 20, os.stat(segment).st_ino)
        assert os.stat(log_path_for(segment)).st_mode & 0o777 == 0o600
    metrics = urllib.request.urlopen(
        f"http://{cluster.workers['worker-0'].info['http']}/metrics", timeout=5).read().decode()
    for line in ("mooncake_worker_inventory_entries 0.0", "mooncake_worker_draining 0.0",
                 "mooncake_worker_replicated_items_total 0.0",
                 "mooncake_worker_replication_failures_total 0.0"):
        assert line in metrics.splitlines()
    # the same id and sizes: the segment files and their logs are taken up again
    worker = cluster.restart_worker("worker-0")
    assert worker.wait_for_log("event=inventory_loaded")
    assert "event=inventory_discarded" not in worker.log_tail(200)
    # another DRAM size recreates that segment: its inventory goes, the SSD one stays
    cluster.workers["worker-0"].stop()
    worker = cluster.start_worker("worker-0", dram="16MiB")
    line = worker.wait_for_log("event=inventory_discarded")
    assert f"path={log_path_for(dram)}" in line and "reason=segment_file_new" in line
    assert f"path={log_path_for(ssd)} segment_id=1" in worker.log_tail(200)  # loaded


def test_workers_retry_through_a_master_restart_and_register_again(fresh_cluster):
    cluster = fresh_cluster(workers=1, dram="8MiB")
    cluster.master.kill()
    # a worker (re)started while no master answers keeps trying, with backoff
    late = cluster.restart_worker("worker-0", wait=False)
    late.wait_for_log("event=register_failed")
    assert late.running
    cluster.restart_master()  # empty metadata, on the same ports
    late.wait_ready()
    with Client(cluster.master_addr, rpc_timeout_s=5) as client:
        put_eventually(client, "after-restart", b"v" * 1000)
        assert client.get("after-restart") == b"v" * 1000
    # a running worker whose master restarts finds out from a heartbeat and registers again
    cluster.restart_master(signal.SIGKILL)
    late.wait_for_log("event=master_forgot_us")
    # (the first registration's line is there already: wait for the second one)
    wait_until(lambda: sum("event=registered" in line
                           for line in late.log_tail(500).splitlines()) == 2,
               10, "registered with the restarted master")


def test_sigterm_without_a_drain_stops_at_once(fresh_cluster):
    cluster = fresh_cluster(workers=1, dram="8MiB")  # LocalCluster: --drain-timeout 0s
    worker = cluster.workers["worker-0"]
    started = time.monotonic()
    assert worker.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5
    assert "event=drain_started" not in worker.log_tail(200)
    assert "event=worker_stopping" in worker.log_tail(200)


def test_a_drain_ends_and_the_worker_exits_cleanly(fresh_cluster):
    cluster = fresh_cluster(workers=1, dram="8MiB", drain_timeout="20s")
    worker = cluster.workers["worker-0"]
    started = time.monotonic()
    assert worker.stop(signal.SIGTERM, timeout_s=30) == 0
    # nothing to copy away: done at once (a master that does not drain: after 2 s)
    assert time.monotonic() - started < 10
    log = worker.log_tail(200)
    assert "event=drain_started" in log and "timeout_s=20.0" in log
    assert "event=drained" in log or "event=drain_unsupported" in log
    assert "event=deregister" in log  # deregistered, or why not


def test_a_second_signal_ends_a_drain_at_once(fresh_cluster):
    cluster = fresh_cluster(workers=1, dram="8MiB", drain_timeout="30s")
    worker = cluster.workers["worker-0"]
    cluster.master.pause()  # the drain's heartbeats go unanswered
    try:
        worker.proc.send_signal(signal.SIGTERM)
        worker.wait_for_log("event=drain_started")
        started = time.monotonic()
        assert worker.stop(signal.SIGINT) == 0
        assert time.monotonic() - started < 1.5
        log = worker.log_tail(200)
        assert "event=stop_requested signal=SIGTERM" in log
        assert "event=stop_at_once signal=SIGINT" in log and "event=drain_interrupted" in log
        assert "event=deregister" not in log
    finally:
        cluster.master.resume()
