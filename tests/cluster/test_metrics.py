"""Metrics and health as an operator scrapes them: master and worker /metrics over HTTP after
real puts, gets, evictions, demotions and promotions, and the gRPC health service of both."""
import signal
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from mooncake_client import Client
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto.errors import ErrorCode, InvalidArgumentError
from polling import wait_until

pytestmark = pytest.mark.timeout(90)

KiB, MiB = 1 << 10, 1 << 20
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Scrape:
    """One /metrics answer, parsed: value(name, **labels) of a sample."""

    def __init__(self, addr: str):
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
            text = r.read().decode()
        self.samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples[s.name, frozenset(s.labels.items())] = s.value

    def value(self, name: str, **labels) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def labelled(self, name: str) -> dict[frozenset, float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}


def master_scrape(cluster) -> Scrape:
    return Scrape(cluster.master.info["http"])


def worker_scrape(cluster, worker_id: str) -> Scrape:
    return Scrape(cluster.workers[worker_id].info["http"])



def _no_moves(cluster):
    return master_scrape(cluster).value("mooncake_master_moves_in_flight") == 0


def _settled(cluster, high_watermark: float = 0.90):
    """No move under way and none to come: DRAM at or under the watermark (a put may leave
    it fuller, and the next tick then plans one more demotion)."""
    m = master_scrape(cluster)
    return (m.value("mooncake_master_moves_in_flight") == 0
            and m.value("mooncake_master_tier_used_bytes", tier="DRAM")
            <= high_watermark * m.value("mooncake_master_tier_capacity_bytes", tier="DRAM"))


# ---- master ----

def test_master_counts_each_call_its_latency_and_its_keys_answers(fresh_cluster):
    cluster = fresh_cluster(workers=2, dram="16MiB")
    with Client(cluster.master_addr) as c:
        for i in range(5):
            c.put(f"m/{i}", b"v" * 1000)
        for i in range(3):
            assert c.get(f"m/{i}") == b"v" * 1000
        assert c.get("m/missing") is None
        assert c.exists("m/4") and not c.exists("m/nope")
        assert c.batch_exists_prefix(["m/0", "m/1", "m/nope", "m/2"]) == 2
    m = master_scrape(cluster)
    assert m.value("mooncake_master_rpc_calls_total", method="PutStart") == 5
    assert m.value("mooncake_master_rpc_calls_total", method="PutEnd") == 5
    assert m.value("mooncake_master_rpc_calls_total", method="GetReplicas") == 4
    assert m.value("mooncake_master_rpc_calls_total", method="RegisterWorker") == 2
    # a miss is an answer, not a failure: -704 among the keys' results, no failed call
    results = "mooncake_master_rpc_key_results_total"
    assert m.value(results, method="GetReplicas", code="0") == 3
    assert m.value(results, method="GetReplicas", code=str(ErrorCode.OBJECT_NOT_FOUND)) == 1
    assert m.value(results, method="Exists", code="0") == 1
    assert m.value(results, method="Exists", code=str(ErrorCode.OBJECT_NOT_FOUND)) == 1
    assert m.value(results, method="PutStart", code="0") == 5
    # a prefix probe: the keys it found, then the one it stopped at; m/2 was not looked at
    assert m.value(results, method="ExistsPrefix", code="0") == 2
    assert m.value(results, method="ExistsPrefix", code=str(ErrorCode.OBJECT_NOT_FOUND)) == 1
    assert not m.labelled("mooncake_master_rpc_failures_total")
    for method in ("PutStart", "PutEnd", "GetReplicas", "Exists"):
        count = m.value("mooncake_master_rpc_duration_seconds_count", method=method)
        assert count == m.value("mooncake_master_rpc_calls_total", method=method)
        assert m.value("mooncake_master_rpc_duration_seconds_bucket", method=method,
                       le="+Inf") == count
        assert m.value("mooncake_master_rpc_duration_seconds_sum", method=method) > 0
    buckets = sorted((float(dict(labels)["le"]), v) for labels, v in
                     m.labelled("mooncake_master_rpc_duration_seconds_bucket").items()
                     if dict(labels)["method"] == "PutStart")
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative


def test_master_gauges_mirror_the_state(fresh_cluster):
    # leases long enough to outlast a slow scrape on a busy host
    cluster = fresh_cluster(workers=2, dram="16MiB", master_args=("--lease-ttl", "120s"))
    with Client(cluster.master_addr) as c:
        for i in range(4):
            c.put(f"g/{i}", b"g" * (100 * KiB))
        c.get("g/0")  # one read lease
        c.exists("g/1")  # exists leases too
    m = master_scrape(cluster)
    assert m.value("mooncake_master_workers_alive") == 2
    assert m.value("mooncake_master_objects", state="complete") == 4
    assert m.value("mooncake_master_objects", state="pending") == 0
    assert m.value("mooncake_master_leases_held") == 2
    assert m.value("mooncake_master_tier_capacity_bytes", tier="DRAM") == 2 * 16 * MiB
    assert m.value("mooncake_master_tier_capacity_bytes", tier="SSD") == 0
    assert m.value("mooncake_master_tier_used_bytes", tier="DRAM") == 4 * 100 * KiB
    assert m.value("mooncake_master_tier_replicas", tier="DRAM") == 4
    assert m.value("mooncake_master_tier_objects", tier="DRAM") == 4
    for worker_id in ("worker-0", "worker-1"):
        labels = {"worker_id": worker_id, "segment_id": "0", "tier": "DRAM"}
        assert m.value("mooncake_master_segment_capacity_bytes", **labels) == 16 * MiB
        assert m.value("mooncake_master_segment_fragmentation_ratio", **labels) >= 0
    used = m.labelled("mooncake_master_segment_used_bytes")
    assert sum(used.values()) == 4 * 100 * KiB
    assert m.value("mooncake_master_pending_frees") == 0
    assert m.value("mooncake_master_moves_in_flight") == 0


def test_a_failed_call_is_counted_by_its_mooncake_code(cluster):
    before = master_scrape(cluster)
    with Client(cluster.master_addr) as c:
        with pytest.raises(InvalidArgumentError):
            c._link.call("PutStart", pb.PutStartRequest(keys=["a", "b"], sizes=[1]))
    after = master_scrape(cluster)
    labels = {"method": "PutStart", "code": str(ErrorCode.INVALID_PARAMS)}
    assert after.value("mooncake_master_rpc_failures_total", **labels) == \
        before.value("mooncake_master_rpc_failures_total", **labels) + 1


def test_eviction_is_counted_and_objects_stay_consistent(fresh_cluster):
    cluster = fresh_cluster(workers=1, dram="4MiB")  # no SSD: eviction drops
    count, size = 40, 256 * KiB  # 10 MiB into 4 MiB
    with Client(cluster.master_addr) as c:
        for i in range(count):
            c.put(f"e/{i}", b"e" * size)
    m = master_scrape(cluster)
    evicted = m.value("mooncake_master_evicted_objects_total")
    assert evicted >= count - 4 * MiB // size
    assert m.value("mooncake_master_evicted_replicas_total") == evicted  # one replica each
    assert m.value("mooncake_master_objects", state="complete") == count - evicted
    assert m.value("mooncake_master_tier_objects", tier="DRAM") == count - evicted
    assert m.value("mooncake_master_demotions_total") == 0


def test_demotions_and_promotions_move_master_and_worker_counters(fresh_cluster):
    cluster = fresh_cluster(workers=1, dram="4MiB", ssd="16MiB")
    count, size = 24, 256 * KiB  # 6 MiB: the oldest go down to SSD
    with Client(cluster.master_addr) as c:
        for i in range(count):
            c.put(f"d/{i}", b"d" * size)
        wait_until(lambda: _settled(cluster), 30, "demotions copied")
        m, w = master_scrape(cluster), worker_scrape(cluster, "worker-0")
        demoted = m.value("mooncake_master_demotions_total")
        assert demoted > 0 and m.value("mooncake_master_evicted_objects_total") == 0
        assert w.value("mooncake_worker_moved_items_total", src="DRAM", dst="SSD") == demoted
        assert w.value("mooncake_worker_moved_bytes_total", src="DRAM", dst="SSD") == \
            demoted * size
        assert m.value("mooncake_master_tier_objects", tier="SSD") == demoted
        assert m.value("mooncake_master_tier_objects", tier="DRAM") == count - demoted
        assert m.value("mooncake_master_tier_used_bytes", tier="SSD") == demoted * size
        # DRAM emptied, an SSD object read twice goes back up (d/0 was the first demoted)
        for i in range(1, count):
            c.remove(f"d/{i}", force=True)
        # their ranges come free once the worker has the removals (its next heartbeat)
        wait_until(lambda: master_scrape(cluster).value("mooncake_master_tier_used_bytes",
                                                         tier="DRAM") == 0, 10, "DRAM emptied")
        assert c.get("d/0") == b"d" * size and c.get("d/0") == b"d" * size
        wait_until(lambda: master_scrape(cluster).value("mooncake_master_promotions_total")
                    == 1 and _no_moves(cluster), 30, "the promotion copied")
    w = worker_scrape(cluster, "worker-0")
    assert w.value("mooncake_worker_moved_items_total", src="SSD", dst="DRAM") == 1
    assert w.value("mooncake_worker_moved_bytes_total", src="SSD", dst="DRAM") == size
    assert w.value("mooncake_worker_move_failures_total") == 0
    assert master_scrape(cluster).value("mooncake_master_tier_objects", tier="DRAM") == 1


# ---- worker ----

def test_worker_counts_tcp_bytes_requests_and_connections(cluster):
    data = bytes(range(256)) * (4 * KiB)  # 1 MiB
    before = {w: worker_scrape(cluster, w) for w in cluster.workers}
    with Client(cluster.master_addr, transports=("tcp",)) as c:
        c.put("w/tcp", data)
        assert c.get("w/tcp") == data
        during = {w: worker_scrape(cluster, w) for w in cluster.workers}
        [holder] = [r.worker_id for r in c.get_replicas("w/tcp")]
    b, d = before[holder], during[holder]
    moved = "mooncake_worker_transport_bytes_total"
    assert d.value(moved, transport="tcp", direction="in") - \
        b.value(moved, transport="tcp", direction="in") == len(data)
    assert d.value(moved, transport="tcp", direction="out") - \
        b.value(moved, transport="tcp", direction="out") == len(data)
    assert d.value("mooncake_worker_data_requests_total") - \
        b.value("mooncake_worker_data_requests_total") >= 2
    assert d.value("mooncake_worker_data_connections") >= 1  # the client keeps it open
    assert d.value("mooncake_worker_data_connections_accepted_total") >= 1
    assert d.value("mooncake_worker_data_requests_refused_total") == \
        b.value("mooncake_worker_data_requests_refused_total")


def test_worker_reports_its_segments_and_registration(cluster):
    for worker_id in cluster.workers:
        w = worker_scrape(cluster, worker_id)
        assert w.value("mooncake_worker_segment_size_bytes", tier="DRAM") == 64 * MiB
        assert not w.value("mooncake_worker_segment_size_bytes", tier="SSD")
        assert w.value("mooncake_worker_registered") == 1


# ---- gRPC health ----

def _check(addr: str, service: str = ""):
    with grpc.insecure_channel(addr) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10).status


def test_both_daemons_serve_grpc_health(cluster):
    assert _check(cluster.master_addr) == SERVING
    assert _check(cluster.master_addr, "mooncake.v1.MasterService") == SERVING
    for daemon in cluster.workers.values():
        assert _check(daemon.info["grpc"]) == SERVING
        assert _check(daemon.info["grpc"], "mooncake.v1.WorkerService") == SERVING
    with pytest.raises(grpc.RpcError) as info:
        _check(cluster.master_addr, "no.such.Service")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("daemon", ["master", "worker"])
def test_health_turns_not_serving_when_a_daemon_stops(fresh_cluster, daemon):
    cluster = fresh_cluster(workers=1, dram="8MiB")
    target = cluster.master if daemon == "master" else cluster.workers["worker-0"]
    with grpc.insecure_channel(target.info["grpc"]) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(),
                                                          timeout=30)
        assert next(watch).status == SERVING
        target.proc.send_signal(signal.SIGTERM)
        assert next(watch).status == NOT_SERVING
    assert target.proc.wait(30) == 0
