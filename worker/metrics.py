"""The worker's Prometheus metrics (`mooncake_worker_*`), read at scrape time from the C data
server's counters, the replica mover and the segments.

Only the bytes the worker itself moves are counted: TCP requests on its data port, the
copies between its DRAM and SSD segments and the copies it sends to other workers. Same-node
clients copy through shared memory and RDMA clients read and write the registered DRAM
one-sidedly, neither touching the worker's CPU, so neither shows here. Each worker has a registry of its own (never prometheus_client's
global one), so several can live in one process (tests).
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class WorkerCollector:
    def __init__(self, node):
        self.node = node  # mooncake_worker.node.WorkerNode

    def collect(self):
        node = self.node
        data = node.data_server.stats()
        transport = CounterMetricFamily(
            "mooncake_worker_transport_bytes",
            "Object bytes through the worker: in = written into a segment, out = read from one",
            labels=["transport", "direction"])
        transport.add_metric(["tcp", "in"], data.get("bytes_in", 0))
        transport.add_metric(["tcp", "out"], data.get("bytes_out", 0))
        yield transport
        yield CounterMetricFamily("mooncake_worker_data_requests",
                                  "Data-port READ/WRITE requests served",
                                  value=data.get("requests", 0))
        yield CounterMetricFamily("mooncake_worker_data_requests_refused",
                                  "Data-port requests refused (bad grant, range, request)",
                                  value=data.get("refused", 0))
        yield GaugeMetricFamily("mooncake_worker_data_connections",
                                "Data-port connections open", value=data.get("connections", 0))
        yield CounterMetricFamily("mooncake_worker_data_connections_accepted",
                                  "Data-port connections accepted since start",
                                  value=data.get("connections_total", 0))
        yield from _mover_families(node.mover, node.ssd is not None)
        sizes = GaugeMetricFamily("mooncake_worker_segment_size_bytes",
                                  "Size of the worker's segment of a tier", labels=["tier"])
        sizes.add_metric(["DRAM"], node.dram.size_bytes)
        if node.ssd is not None:
            sizes.add_metric(["SSD"], node.ssd.size_bytes)
        yield sizes
        yield GaugeMetricFamily("mooncake_worker_registered",
                                "1 while a master has accepted this worker, else 0",
                                value=1 if node.registered else 0)
        yield GaugeMetricFamily("mooncake_worker_draining",
                                "1 while the worker is stopping and its objects are copied away",
                                value=1 if node.draining else 0)
        yield GaugeMetricFamily("mooncake_worker_inventory_entries",
                                "Committed replicas in the worker's inventory",
                                value=len(node.inventory))


def _mover_families(mover, has_ssd: bool):
    labels = ["src", "dst"]
    # both directions from the start on a worker that has an SSD tier: rate() needs a zero
    moves = {("DRAM", "SSD"): (0, 0), ("SSD", "DRAM"): (0, 0)} if has_ssd else {}
    moves.update(mover.moved_snapshot())
    items = CounterMetricFamily("mooncake_worker_moved_items",
                                "Replicas copied between the worker's tiers (demotions: "
                                "src=DRAM dst=SSD; promotions: src=SSD dst=DRAM)", labels=labels)
    moved = CounterMetricFamily("mooncake_worker_moved_bytes",
                                "Bytes copied between the worker's tiers", labels=labels)
    for (src, dst), (n, length) in sorted(moves.items()):
        items.add_metric([src, dst], n)
        moved.add_metric([src, dst], length)
    failed = CounterMetricFamily("mooncake_worker_move_failures",
                                 "Copies between the worker's tiers that it refused or failed",
                                 value=mover.items_failed)
    return [items, moved, failed,
            CounterMetricFamily("mooncake_worker_replicated_items",
                                "Replicas copied to other workers (re-replication, drains)",
                                value=mover.items_replicated),
            CounterMetricFamily("mooncake_worker_replicated_bytes",
                                "Bytes copied to other workers", value=mover.bytes_replicated),
            CounterMetricFamily("mooncake_worker_replication_failures",
                                "Copies to other workers refused here, refused there or failed",
                                value=mover.replications_failed)]


def worker_registry(node) -> CollectorRegistry:
    """A registry of this worker's metrics alone (never the process-wide default)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(node))
    return registry
