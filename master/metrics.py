"""The master's Prometheus metrics (`mooncake_master_*`): per-RPC counts, failures and latencies,
and gauges of the metadata read from the state at scrape time.

Every RPC, gRPC or framed, passes the servicer's `_serialized` wrapper, which records it in
an `RpcStats` while it holds the servicer's lock: plain ints and floats under a lock the call
holds anyway, about a third of a microsecond a call, where prometheus_client's own labelled
Histogram and Counter cost about a microsecond (each takes a lock of its own). The collector
turns them, and `MasterState.stats()`, into metric families when /metrics is scraped, under
the same lock, so one scrape sees one consistent state. Each master has a registry of its
own (never prometheus_client's global one), so several can live in one process (tests).
"""
from __future__ import annotations

import bisect
import time

from prometheus_client import CollectorRegistry
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)

from mooncake_master.model import TIER_NAMES
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto.rpc import Encoded

# upper bounds (seconds): a framed-port call takes tens of microseconds, a batch of
# thousands of keys tens of milliseconds, a call stuck behind the lock longer
LATENCY_BUCKETS_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                     0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# MasterState.counters key -> (metric name without _total, help)
_STATE_COUNTERS = {
    "evicted_objects": ("mooncake_master_evicted_objects",
                        "Objects dropped by eviction (their last replica went)"),
    "evicted_replicas": ("mooncake_master_evicted_replicas",
                         "Replicas dropped by eviction (not counting demotions)"),
    "demotions": ("mooncake_master_demotions", "DRAM -> SSD moves started"),
    "promotions": ("mooncake_master_promotions", "SSD -> DRAM moves started"),
    "replications": ("mooncake_master_replications",
                     "Copies to another worker started (healing after a death, drains)"),
    "heals_given_up": ("mooncake_master_heals_given_up",
                       "Objects left short of replicas: no worker had room, or copies failed"),
    "objects_lost": ("mooncake_master_objects_lost",
                     "Objects whose last replica went with a dead or departed worker"),
    "objects_adopted": ("mooncake_master_objects_adopted",
                        "Objects adopted from registering workers' inventories"),
    "inventory_rejected": ("mooncake_master_inventory_rejected",
                           "Inventory entries refused as stale at registration"),
}


class _MethodStats:
    __slots__ = ("count", "sum_s", "buckets", "failures", "key_results")

    def __init__(self):
        self.count = 0
        self.sum_s = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS_S) + 1)  # the last: over every bound
        self.failures: dict[int, int] = {}     # Mooncake code -> calls failed with it
        self.key_results: dict[int, int] = {}  # Mooncake code (0 OK) -> keys answered


class RpcStats:
    """Counts, latency histograms, whole-call failures and per-key answer codes of each
    MasterService method. No lock of its own: callers hold the servicer's lock."""

    def __init__(self):
        self.methods: dict[str, _MethodStats] = {}

    def observe(self, method: str, seconds: float, code: int, response=None) -> None:
        """One finished call: `code` is 0 or the Mooncake code it failed with as a whole;
        a batch answer's per-key statuses are tallied by code too (0 = OK)."""
        stats = self.methods.get(method)
        if stats is None:
            stats = self.methods[method] = _MethodStats()
        stats.count += 1
        stats.sum_s += seconds
        stats.buckets[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        if code:
            code = int(code)
            stats.failures[code] = stats.failures.get(code, 0) + 1
        elif response is not None:
            _tally_key_codes(response, stats.key_results)

    def families(self):
        calls = CounterMetricFamily("mooncake_master_rpc_calls",
                                    "MasterService calls answered (gRPC and framed port)",
                                    labels=["method"])
        latency = HistogramMetricFamily(
            "mooncake_master_rpc_duration_seconds",
            "Time from a call's arrival in the servicer to its answer, lock wait included",
            labels=["method"])
        failures = CounterMetricFamily(
            "mooncake_master_rpc_failures",
            "Calls that failed as a whole (refused token, invalid batch...), by Mooncake code",
            labels=["method", "code"])
        keys = CounterMetricFamily(
            "mooncake_master_rpc_key_results",
            "Per-key answers of batch calls by Mooncake code (0 OK, -704 a miss, -200 no space)",
            labels=["method", "code"])
        for method, stats in sorted(self.methods.items()):
            calls.add_metric([method], stats.count)
            cumulative, buckets = 0, []
            for bound, n in zip((*map(str, LATENCY_BUCKETS_S), "+Inf"), stats.buckets):
                cumulative += n
                buckets.append((bound, cumulative))
            latency.add_metric([method], buckets, stats.sum_s)
            for code, n in sorted(stats.failures.items()):
                failures.add_metric([method, str(code)], n)
            for code, n in sorted(stats.key_results.items()):
                keys.add_metric([method, str(code)], n)
        return [calls, latency, failures, keys]


def _tally_statuses(response, tally: dict[int, int]) -> None:
    for status in response.statuses:
        code = status.code
        tally[code] = tally.get(code, 0) + 1


def _tally_encoded(response: Encoded, tally: dict[int, int]) -> None:
    for code in response.key_codes:
        tally[code] = tally.get(code, 0) + 1


def _tally_prefix(response, tally: dict[int, int]) -> None:
    """ExistsPrefix: the present keys as OK, then the one it stopped at (keys past it were not
    looked at and count as nothing)."""
    if response.present:
        tally[0] = tally.get(0, 0) + response.present
    if response.HasField("stopped_by"):
        code = response.stopped_by.code
        tally[code] = tally.get(code, 0) + 1


def _tally_nothing(_response, _tally) -> None:
    pass


# answer type -> how to tally its per-key codes
_TALLY: dict[type, object] = {Encoded: _tally_encoded, pb.ExistsPrefixResponse: _tally_prefix}


def _tally_key_codes(response, tally: dict[int, int]) -> None:
    """Counts the per-key codes of a batch answer: KeysResponse and ExistsResponse carry
    `statuses`, an Encoded answer (GetReplicas, PutStart) `key_codes`, ExistsPrefixResponse
    a count and the code it stopped at; other answers none.
    Which, is decided once per answer type (a failed getattr on a message costs a microsecond,
    and a plain loop is half the cost of a comprehension over a one-key answer)."""
    tally_of = _TALLY.get(type(response))
    if tally_of is None:
        fields = response.DESCRIPTOR.fields_by_name
        tally_of = _tally_statuses if "statuses" in fields else _tally_nothing
        _TALLY[type(response)] = tally_of
    tally_of(response, tally)


class MasterCollector:
    """Reads the state and the RPC stats under the servicer's lock at each scrape."""

    def __init__(self, state, lock, rpc_stats: RpcStats, clock=time.monotonic):
        self.state, self.lock, self.rpc_stats, self.clock = state, lock, rpc_stats, clock

    def collect(self):
        with self.lock:
            stats = self.state.stats()
            leases, objects_per_tier = self._scan_objects(self.clock())
            families = self.rpc_stats.families()
        yield from families
        yield from _tier_families(stats, objects_per_tier)
        yield from _segment_families(stats)
        objects = GaugeMetricFamily("mooncake_master_objects", "Objects by state",
                                    labels=["state"])
        objects.add_metric(["complete"], stats["objects"] - stats["pending"])
        objects.add_metric(["pending"], stats["pending"])
        yield objects
        for key, (name, help_text) in _STATE_COUNTERS.items():
            yield CounterMetricFamily(name, help_text, value=stats.get(key, 0))
        yield _gauge("mooncake_master_moves_in_flight",
                     "Demotions, promotions and copies to other workers planned or copying",
                     stats["moves"])
        yield _gauge("mooncake_master_heal_queue",
                     "Objects waiting to be copied to another worker", stats["heal_queue"])
        yield _gauge("mooncake_master_workers_draining", "Workers being drained",
                     sum(1 for w in stats["workers"] if w["draining"]))
        yield _gauge("mooncake_master_leases_held", "Objects under a live read lease", leases)
        yield _gauge("mooncake_master_workers_alive", "Registered workers not yet declared dead",
                     len(stats["workers"]))
        yield _gauge("mooncake_master_pending_frees",
                     "Freed ranges waiting for the grants on them to expire before reuse",
                     stats["pending_frees"])

    def _scan_objects(self, now: float) -> tuple[int, dict[str, int]]:
        """Objects under a live lease, and objects with a replica on each tier (stats()
        counts replicas, not objects). One pass, under the lock: kept lean (a bit mask of
        tiers per object, no set), as it stalls every call for its length."""
        leases, by_mask = 0, {}
        for obj in self.state.objects.values():
            if obj.lease_until > now:
                leases += 1
            mask = 0
            for replica in obj.replicas:
                mask |= 1 << replica.tier
            by_mask[mask] = by_mask.get(mask, 0) + 1
        per_tier = {name: 0 for name in TIER_NAMES.values()}
        for mask, count in by_mask.items():
            for tier, name in TIER_NAMES.items():
                if mask >> tier & 1:
                    per_tier[name] += count
        return leases, per_tier


def _gauge(name: str, help_text: str, value) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _tier_families(stats: dict, objects_per_tier: dict[str, int]):
    families = {
        "capacity": GaugeMetricFamily("mooncake_master_tier_capacity_bytes",
                                      "Bytes of every registered segment of a tier",
                                      labels=["tier"]),
        "used": GaugeMetricFamily("mooncake_master_tier_used_bytes",
                                  "Bytes allocated in a tier (replicas, moves, pending frees)",
                                  labels=["tier"]),
        "replicas": GaugeMetricFamily("mooncake_master_tier_replicas", "Replicas on a tier",
                                      labels=["tier"]),
        "objects": GaugeMetricFamily("mooncake_master_tier_objects",
                                     "Objects with at least one replica on a tier",
                                     labels=["tier"]),
    }
    for tier, t in sorted(stats["tiers"].items()):
        families["capacity"].add_metric([tier], t["total_bytes"])
        families["used"].add_metric([tier], t["used_bytes"])
        families["replicas"].add_metric([tier], t["replicas"])
        families["objects"].add_metric([tier], objects_per_tier.get(tier, 0))
    return families.values()


def _segment_families(stats: dict):
    labels = ["worker_id", "segment_id", "tier"]
    capacity = GaugeMetricFamily("mooncake_master_segment_capacity_bytes",
                                 "Size of a worker's segment", labels=labels)
    used = GaugeMetricFamily("mooncake_master_segment_used_bytes",
                             "Bytes allocated in a worker's segment", labels=labels)
    fragmentation = GaugeMetricFamily(
        "mooncake_master_segment_fragmentation_ratio",
        "1 - largest free block / free bytes of a segment (0: its free space is one block)",
        labels=labels)
    for worker in stats["workers"]:
        for seg in worker["segments"]:
            values = [worker["worker_id"], str(seg["segment_id"]),
                      TIER_NAMES.get(seg["tier"], str(seg["tier"]))]
            capacity.add_metric(values, seg["size_bytes"])
            used.add_metric(values, seg["used_bytes"])
            fragmentation.add_metric(values, seg["fragmentation"])
    return [capacity, used, fragmentation]


def master_registry(state, lock, rpc_stats: RpcStats) -> CollectorRegistry:
    """A registry of this master's metrics alone (never the process-wide default)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MasterCollector(state, lock, rpc_stats))
    return registry
