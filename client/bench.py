"""`mooncake-bench`: the store's throughput and latency beside what this machine can do at all.

Per transport (`shm`, `tcp`) and size it measures baselines on the same volume, right
before the store's rows: for shm `memcpy` (numpy copying from distinct regions into one
buffer, like reads of distinct objects; the baseline of read rows) and `memcpy-w` (one buffer
into distinct regions, like writes of distinct objects; the baseline of write rows), for tcp
`socket` (a plain Python loopback stream from another process into one buffer). Then it runs put/get, put_from/get_into and
their batch forms (8 objects per call) and prints each row with its ratio to that baseline,
then the issue 3 targets with pass/fail. `--repeat N` measures everything N times back to
back and keeps the median row. `--local` starts its own master and two workers on
loopback and stops them, and (unless `--ssd 0`) a second small cluster with an SSD tier,
where writing four times its DRAM demotes the oldest objects: `ssd_get_into` rows read
those back from the SSD segment file (pread on the same node, sendfile over tcp). Performance goals are checked with this program, never with timed
assertions in tests.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
import uuid

import numpy as np

from mooncake_client.client import Client, ReplicaConfig
from mooncake_client.local_cluster import LocalCluster
from mooncake_proto.units import format_size, parse_size

BATCH = 8
OPS = ("put", "get", "put_from", "get_into", "batch_put_from", "batch_get", "batch_get_into")
BASELINE_FOR = {"shm": "memcpy", "tcp": "socket"}  # reads; shm writes: "memcpy-w"
WRITE_OPS = ("put", "put_from", "batch_put_from")


class Progress:
    """A one-line progress bar on stderr (a line per step when stderr is not a terminal)."""

    def __init__(self, total: int, width: int = 30):
        self.total, self.done, self.width = total, 0, width
        self.tty = sys.stderr.isatty()

    def step(self, label: str) -> None:
        self.done += 1
        filled = self.width * self.done // self.total
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"[{bar}] {self.done}/{self.total} {label}"
        if self.tty:
            sys.stderr.write("\r" + line.ljust(80) + ("\n" if self.done == self.total else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(label: dict, size: int, fn, calls: int, per_call: int = 1) -> dict:
    """Runs fn(i) `calls` times, each moving `per_call` objects of `size` bytes."""
    latencies = []
    cpu0, t0 = _cpu_s(), time.perf_counter()
    for i in range(calls):
        start = time.perf_counter()
        fn(i)
        latencies.append(time.perf_counter() - start)
    elapsed, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    latencies.sort()
    items = calls * per_call
    return {**label, "size_bytes": size, "batch": per_call, "count": items,
            "gb_per_s": round(size * items / elapsed / 1e9, 3),
            "items_per_s": round(items / elapsed, 1),
            "p50_us": round(_percentile(latencies, 0.50) * 1e6, 1),
            "p99_us": round(_percentile(latencies, 0.99) * 1e6, 1),
            "client_cpu_pct": round(100 * cpu / elapsed, 1)}


# ---- baselines ----

def memcpy_baseline(size: int, count: int, pool_bytes: int, into_pool: bool) -> dict:
    """numpy copies of `size` bytes between one buffer and distinct regions of a pool: from
    the regions (like reads of distinct objects; `memcpy`) or into them (like writes of
    distinct objects; `memcpy-w`, which pays for cold destination lines the other does not)."""
    regions = max(1, min(count, pool_bytes // size))
    pool = np.ones(regions * size, dtype=np.uint8)
    buffer = np.ones(size, dtype=np.uint8)  # touched: first-touch faults are set-up
    slots = [pool[i * size:(i + 1) * size] for i in range(regions)]
    if into_pool:
        return measure({"op": "baseline", "transport": "memcpy-w"}, size,
                       lambda i: np.copyto(slots[i % regions], buffer), count)
    return measure({"op": "baseline", "transport": "memcpy"}, size,
                   lambda i: np.copyto(buffer, slots[i % regions]), count)


_SENDER = """
import socket, sys
size, count, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
conn = socket.create_connection(("127.0.0.1", port))
payload = bytes(size)
for _ in range(count + 1):
    conn.sendall(payload)
conn.close()
"""


def socket_baseline(size: int, count: int) -> dict:
    """A plain Python loopback stream from another process, received into one buffer."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    sender = subprocess.Popen([sys.executable, "-c", _SENDER, str(size), str(count), str(port)])
    try:
        conn, _ = listener.accept()
        buffer = memoryview(bytearray(size))

        def receive(_i=0):
            view = buffer
            while view.nbytes:
                view = view[conn.recv_into(view):]
        receive()  # the first message pays for connection set-up
        row = measure({"op": "baseline", "transport": "socket"}, size, receive, count)
        conn.close()
    finally:
        listener.close()
        sender.wait(30)
    return row


# ---- store rows ----

def run_size(client: Client, transport: str, size: int, count: int) -> list[dict]:
    prefix = f"bench/{uuid.uuid4().hex[:8]}/{size}"
    payload = os.urandom(size)
    buffer = bytearray(size)
    batch_buffers = [bytearray(size) for _ in range(BATCH)]
    count = max(BATCH, count - count % BATCH)
    calls = count // BATCH
    keys = [f"{prefix}/{i}" for i in range(count)]
    label = {"transport": transport}

    def batch(i):
        return keys[i * BATCH:(i + 1) * BATCH]

    rows = [measure({**label, "op": "put"}, size, lambda i: client.put(keys[i], payload), count),
            measure({**label, "op": "get"}, size, lambda i: client.get(keys[i]), count)]
    _check(client.get(keys[0]), payload, keys[0])
    client.remove_all(force=True)
    rows.append(measure({**label, "op": "put_from"}, size,
                        lambda i: client.put_from(keys[i], payload), count))
    rows.append(measure({**label, "op": "get_into"}, size,
                        lambda i: client.get_into(keys[i], buffer), count))
    _check(buffer, payload, keys[-1])
    client.remove_all(force=True)
    rows.append(measure({**label, "op": "batch_put_from"}, size,
                        lambda i: client.batch_put_from(batch(i), [payload] * BATCH), calls, BATCH))
    rows.append(measure({**label, "op": "batch_get"}, size,
                        lambda i: client.batch_get(batch(i)), calls, BATCH))
    rows.append(measure({**label, "op": "batch_get_into"}, size,
                        lambda i: client.batch_get_into(batch(i), batch_buffers), calls, BATCH))
    _check(batch_buffers[-1], payload, keys[-1])
    client.remove_all(force=True)
    return rows


def _check(got, expected: bytes, key: str) -> None:
    if got is None or bytes(got) != expected:
        raise SystemExit(f"mooncake-bench: wrong bytes read back for {key}")


def run_ssd_size(client: Client, transport: str, size: int, volume: int) -> dict:
    """Writes `volume` bytes (four times the SSD cluster's DRAM) and reads back the oldest
    quarter, which eviction has demoted to the SSD tier."""
    prefix = f"bench/ssd/{uuid.uuid4().hex[:8]}/{size}"
    count = max(8, volume // size)
    keys = [f"{prefix}/{i}" for i in range(count)]
    payload = os.urandom(size)
    for key in keys:
        client.put_from(key, payload)
    oldest = keys[:count // 4]
    tiers = {r.tier for key in (oldest[0], oldest[-1]) for r in client.get_replicas(key)}
    if tiers != {"SSD"}:
        raise SystemExit(f"mooncake-bench: the oldest objects are on {tiers}, not on SSD; "
                         "give the SSD cluster less DRAM or write more")
    buffer = bytearray(size)
    row = measure({"transport": transport, "op": "ssd_get_into"}, size,
                  lambda i: client.get_into(oldest[i], buffer), len(oldest))
    _check(buffer, payload, oldest[-1])
    client.remove_all(force=True)
    return row


def run_ssd(args, master: str) -> list[dict]:
    rows = []
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    sizes = [parse_size(s) for s in args.ssd_sizes.split(",")]
    progress = Progress(len(transports) * len(sizes))
    for transport in transports:
        with Client(master, transports=(transport,)) as client:
            warm_up(client)
            for size in sizes:
                rows.append(run_ssd_size(client, transport, size, 4 * 2 * parse_size(args.ssd_dram)))
                progress.step(f"{transport} {format_size(size)} from SSD")
    return rows


# ---- report ----

def _find(rows, transport: str, op: str, size: int) -> dict | None:
    return next((r for r in rows if r["transport"] == transport and r["op"] == op
                 and r["size_bytes"] == size), None)


def baseline_kind(transport: str, op: str) -> str:
    kind = BASELINE_FOR.get(transport, "memcpy")
    return "memcpy-w" if kind == "memcpy" and op in WRITE_OPS else kind


def add_ratios(rows: list[dict], baselines: list[dict]) -> None:
    for row in rows:
        base = _find(baselines, baseline_kind(row["transport"], row["op"]), "baseline",
                     row["size_bytes"])
        row["x_baseline"] = round(row["gb_per_s"] / base["gb_per_s"], 4) if base else None


# (what, transport, op, size, field, bound, at least?)  from issue 3
TARGETS = [
    ("same-node get_into 4 MiB >= 0.85x memcpy", "shm", "get_into", 4 << 20, "x_baseline", 0.85, True),
    ("same-node batch put_from 8 x 4 MiB >= 0.7x memcpy (into distinct buffers)", "shm",
     "batch_put_from", 4 << 20, "x_baseline", 0.7, True),
    ("cross-process TCP get_into 4 MiB >= 0.8x socket stream", "tcp", "get_into", 4 << 20,
     "x_baseline", 0.8, True),
    ("4 KiB batch-of-8 get >= 50k items/s (shm)", "shm", "batch_get", 4 << 10, "items_per_s", 50_000, True),
    ("4 KiB batch-of-8 get >= 50k items/s (tcp)", "tcp", "batch_get", 4 << 10, "items_per_s", 50_000, True),
    ("single 4 KiB get p50 <= 150 us (shm)", "shm", "get", 4 << 10, "p50_us", 150, False),
    ("single 4 KiB get p50 <= 150 us (tcp)", "tcp", "get", 4 << 10, "p50_us", 150, False),
]


def check_targets(rows: list[dict]) -> list[dict]:
    out = []
    for what, transport, op, size, field, bound, at_least in TARGETS:
        row = _find(rows, transport, op, size)
        value = row.get(field) if row else None
        met = None if value is None else (value >= bound if at_least else value <= bound)
        out.append({"target": what, "value": value, "met": met})
    return out


def print_table(rows: list[dict]) -> None:
    header = f"{'op':<15} {'transport':<9} {'size':>8} {'count':>6} {'GB/s':>7} {'x base':>6} " \
             f"{'items/s':>9} {'p50 us':>8} {'p99 us':>8} {'cpu %':>6}"
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = "" if r.get("x_baseline") is None else f"{r['x_baseline']:.2f}"
        print(f"{r['op']:<15} {r['transport']:<9} {format_size(r['size_bytes']):>8} "
              f"{r['count']:>6} {r['gb_per_s']:>7.2f} {ratio:>6} {r['items_per_s']:>9.0f} "
              f"{r['p50_us']:>8.0f} {r['p99_us']:>8.0f} {r['client_cpu_pct']:>6.0f}")


def print_targets(targets: list[dict]) -> None:
    print("\nissue 3 targets")
    for t in targets:
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[t["met"]]
        value = "-" if t["value"] is None else f"{t['value']:,.2f}"
        print(f"  {verdict:<13} {value:>12}  {t['target']}")


def count_for(size: int, volume: int, max_count: int) -> int:
    return max(10, min(max_count, volume // size))


def warm_up(client: Client) -> None:
    """Maps every worker's segment and opens connections before anything is timed: first use
    of a segment maps (and pre-faults) it, which belongs to start-up, not to a put."""
    keys = [f"bench/warm/{uuid.uuid4().hex[:8]}/{i}" for i in range(16)]
    for key in keys:
        client.put(key, b"w", ReplicaConfig(replica_num=2))
    client.batch_get(keys)
    client.remove_all(force=True)


def median_row(rows: list[dict]) -> dict:
    """Of repeated measurements of one row, the one with the median throughput."""
    ordered = sorted(rows, key=lambda r: r["gb_per_s"])
    return {**ordered[len(ordered) // 2], "repeats": len(rows)}


def baselines_for(transport: str, size: int, count: int, volume: int) -> list[dict]:
    if BASELINE_FOR.get(transport, "memcpy") == "memcpy":
        return [memcpy_baseline(size, count, volume, into_pool=False),
                memcpy_baseline(size, count, volume, into_pool=True)]
    return [socket_baseline(size, count)]


def run(args, master: str) -> tuple[list[dict], list[dict]]:
    """Per transport and size: its baseline, then the store's rows, each measured `repeat`
    times back to back (median kept), so a ratio compares numbers taken in the same minute
    (this kind of VM drifts by 2x and more over minutes)."""
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    volume = parse_size(args.volume)
    progress = Progress(len(sizes) * len(transports))
    rows, baselines = [], []
    for transport in transports:
        with Client(master, transports=(transport,)) as client:
            warm_up(client)
            for size in sizes:
                count = count_for(size, volume, args.max_count)
                base_runs, store_runs = [], []
                for _ in range(args.repeat):
                    base_runs.append(baselines_for(transport, size, count, volume))
                    store_runs.append(run_size(client, transport, size, count))
                # the same row from every repeat, median kept
                baselines.extend(median_row(list(same)) for same in zip(*base_runs))
                rows.extend(median_row(list(same)) for same in zip(*store_runs))
                progress.step(f"{transport} {format_size(size)}")
    add_ratios(rows, baselines)
    return rows, baselines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mooncake-bench", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--master", help="measure an existing cluster at H:P")
    where.add_argument("--local", action="store_true",
                       help="start a master and two workers on loopback, measure, stop them")
    parser.add_argument("--sizes", default="4KiB,64KiB,1MiB,4MiB,16MiB")
    parser.add_argument("--transports", default="shm,tcp")
    parser.add_argument("--volume", default="256MiB", help="bytes moved per size and op")
    parser.add_argument("--max-count", type=int, default=2000, help="most objects per row")
    parser.add_argument("--dram", default="4GiB", help="DRAM per worker with --local (removed "
                        "ranges stay held until their grants expire, so give room)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure every row (and its baseline) this many times, keep the median")
    parser.add_argument("--ssd", default="1GiB",
                        help="with --local: SSD segment per worker of the SSD-tier cluster "
                             "(0 skips the ssd_get_into rows)")
    parser.add_argument("--ssd-sizes", default="64KiB,4MiB", help="object sizes of the SSD rows")
    parser.add_argument("--ssd-dram", default="64MiB",
                        help="DRAM per worker of the SSD-tier cluster (4x its DRAM is written)")
    parser.add_argument("--shm-root", help="with --local: the tmpfs for the workers' DRAM "
                        "segments (default /dev/shm); one mounted with huge=within_size gives "
                        "them huge pages")
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    args = parser.parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.shm_root and not args.local:
        parser.error("--shm-root is for --local (an existing cluster's workers chose theirs)")
    if args.local:
        # a short lease: removed ranges come back sooner between repeats (reads take ms)
        with LocalCluster(workers=2, dram=args.dram, master_args=("--lease-ttl", "3s"),
                          shm_root=args.shm_root) as cluster:
            rows, baselines = run(args, cluster.master_addr)
        if parse_size(args.ssd):
            with LocalCluster(workers=2, dram=args.ssd_dram, ssd=args.ssd,
                              master_args=("--lease-ttl", "3s"), shm_root=args.shm_root) as cluster:
                ssd_rows = run_ssd(args, cluster.master_addr)
            add_ratios(ssd_rows, baselines)
            rows.extend(ssd_rows)
    else:
        rows, baselines = run(args, args.master)
    targets = check_targets(rows)
    print_table(baselines + rows)
    print_targets(targets)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"command": " ".join(["mooncake-bench", *(argv or sys.argv[1:])]),
                       "started": started, "host": platform.node(), "cpus": os.cpu_count(),
                       "repeat": args.repeat, "shm_root": args.shm_root or "/dev/shm",
                       "baselines": baselines, "rows": rows, "targets": targets}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
