"""The master's metrics in-process, no sockets: what RpcStats records, what the collector reads
from a MasterState, and that each master's registry is its own."""
import threading

import prometheus_client

from mooncake_master.metrics import LATENCY_BUCKETS_S, MasterCollector, RpcStats, \
    master_registry
from mooncake_master.state import TIER_DRAM, TIER_SSD, MasterState, PlacementConfig, \
    SegmentSpec
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto.errors import ErrorCode
from mooncake_proto.rpc import Encoded

NOW = 1000.0


def _state(dram: int = 1 << 20, ssd: int = 0) -> MasterState:
    state = MasterState()
    segments = [SegmentSpec(0, TIER_DRAM, dram, "/dram")]
    if ssd:
        segments.append(SegmentSpec(1, TIER_SSD, ssd, "/ssd"))
    state.register_worker("w", "node", "127.0.0.1:1", "", "", segments, b"k" * 32, NOW)
    state.heartbeat("w", NOW)  # holds its key: new ranges may go there
    return state


def _put(state: MasterState, *keys: str, size: int = 1000) -> None:
    state.put_start(list(keys), [size] * len(keys), PlacementConfig(), "node", NOW)
    state.put_end(list(keys), NOW)


def test_each_master_has_a_registry_of_its_own():
    states = [_state(), _state()]
    _put(states[0], "a", "b")
    registries = [master_registry(s, threading.RLock(), RpcStats()) for s in states]
    objects = [r.get_sample_value("mooncake_master_objects", {"state": "complete"})
               for r in registries]
    assert objects == [2, 0]
    # nothing lands in prometheus_client's process-wide registry
    assert prometheus_client.REGISTRY.get_sample_value("mooncake_master_workers_alive") is None


def test_rpc_stats_record_latency_failures_and_per_key_codes():
    stats = RpcStats()
    answer = pb.ExistsResponse()
    answer.statuses.add(code=0)
    answer.statuses.add(code=ErrorCode.OBJECT_NOT_FOUND)
    stats.observe("Exists", 0.00003, 0, answer)
    stats.observe("Exists", 0.003, 0, answer)
    stats.observe("Exists", 99.0, ErrorCode.INVALID_PARAMS)  # over every bound
    puts = Encoded(b"", [ErrorCode.NO_AVAILABLE_HANDLE])  # as the servicer answers PutStart
    stats.observe("PutStart", 0.001, 0, puts)
    stats.observe("Hello", 0.001, 0, pb.HelloResponse())
    calls, latency, failures, keys = stats.families()
    assert {s.labels["method"]: s.value for s in calls.samples} == \
        {"Exists": 3, "PutStart": 1, "Hello": 1}
    buckets = {s.labels["le"]: s.value for s in latency.samples
               if s.name.endswith("_bucket") and s.labels["method"] == "Exists"}
    assert buckets[str(LATENCY_BUCKETS_S[0])] == 1
    assert buckets["0.005"] == 2 and buckets["2.5"] == 2 and buckets["+Inf"] == 3
    assert [(s.labels["method"], s.labels["code"], s.value) for s in failures.samples] == \
        [("Exists", "-600", 1)]
    assert {(s.labels["method"], s.labels["code"]): s.value for s in keys.samples} == \
        {("Exists", "0"): 2, ("Exists", "-704"): 2, ("PutStart", "-200"): 1}


def test_the_collector_reads_leases_tiers_and_segments_at_scrape_time():
    state = _state(dram=1 << 20, ssd=4 << 20)
    _put(state, "a", "b", "c")
    state.get_replicas(["a"], NOW)  # a read lease of lease_ttl_s
    clock = [NOW]
    registry = prometheus_client.CollectorRegistry()
    registry.register(MasterCollector(state, threading.RLock(), RpcStats(), lambda: clock[0]))
    value = registry.get_sample_value
    assert value("mooncake_master_leases_held") == 1
    assert value("mooncake_master_tier_objects", {"tier": "DRAM"}) == 3
    assert value("mooncake_master_tier_objects", {"tier": "SSD"}) == 0
    assert value("mooncake_master_tier_capacity_bytes", {"tier": "SSD"}) == 4 << 20
    assert value("mooncake_master_tier_used_bytes", {"tier": "DRAM"}) == \
        state.stats()["tiers"]["DRAM"]["used_bytes"] > 0
    ssd = {"worker_id": "w", "segment_id": "1", "tier": "SSD"}
    assert value("mooncake_master_segment_capacity_bytes", ssd) == 4 << 20
    assert value("mooncake_master_segment_fragmentation_ratio", ssd) == 0
    assert value("mooncake_master_workers_alive") == 1
    clock[0] = NOW + state.config.lease_ttl_s + 1
    assert value("mooncake_master_leases_held") == 0
