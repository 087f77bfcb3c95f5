"""`mooncake-bench`: put/get throughput and latency per transport and size; a table and JSON.

`--local` starts its own master and two workers on loopback (real processes) and stops them;
`--master H:P` measures an existing cluster. Performance goals are checked with this program,
never with timed assertions in tests.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import sys
import time
import uuid

from mooncake_client.client import Client
from mooncake_client.local_cluster import LocalCluster
from mooncake_proto.units import format_size, parse_size

OPS = ("put", "get", "put_from", "get_into")


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


def measure(label: dict, size: int, fn, count: int) -> dict:
    """Runs fn(i) count times; throughput over the whole loop, latency per call."""
    latencies = []
    cpu0, t0 = _cpu_s(), time.perf_counter()
    for i in range(count):
        start = time.perf_counter()
        fn(i)
        latencies.append(time.perf_counter() - start)
    elapsed, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    latencies.sort()
    return {**label, "size_bytes": size, "count": count,
            "gb_per_s": round(size * count / elapsed / 1e9, 3),
            "items_per_s": round(count / elapsed, 1),
            "p50_us": round(_percentile(latencies, 0.50) * 1e6, 1),
            "p99_us": round(_percentile(latencies, 0.99) * 1e6, 1),
            "client_cpu_pct": round(100 * cpu / elapsed, 1)}


def run_size(client: Client, transport: str, size: int, count: int) -> list[dict]:
    prefix = f"bench/{uuid.uuid4().hex[:8]}/{size}"
    payload = os.urandom(size)
    buffer = bytearray(size)
    keys = [f"{prefix}/{i}" for i in range(count)]
    label = {"transport": transport}
    rows = [measure({**label, "op": "put"}, size, lambda i: client.put(keys[i], payload), count),
            measure({**label, "op": "get"}, size, lambda i: client.get(keys[i]), count)]
    if client.get(keys[0]) != payload:
        raise SystemExit(f"mooncake-bench: wrong bytes read back for {keys[0]}")
    client.remove_all(force=True)
    keys = [k + "/from" for k in keys]
    rows.append(measure({**label, "op": "put_from"}, size,
                        lambda i: client.put_from(keys[i], payload), count))
    rows.append(measure({**label, "op": "get_into"}, size,
                        lambda i: client.get_into(keys[i], buffer), count))
    client.remove_all(force=True)
    return rows


def print_table(rows: list[dict]) -> None:
    header = f"{'op':<9} {'transport':<9} {'size':>8} {'count':>6} {'GB/s':>7} {'items/s':>9} " \
             f"{'p50 us':>8} {'p99 us':>8} {'cpu %':>6}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['op']:<9} {r['transport']:<9} {format_size(r['size_bytes']):>8} {r['count']:>6} "
              f"{r['gb_per_s']:>7.2f} {r['items_per_s']:>9.0f} {r['p50_us']:>8.0f} "
              f"{r['p99_us']:>8.0f} {r['client_cpu_pct']:>6.0f}")


def count_for(size: int, volume: int, max_count: int) -> int:
    return max(10, min(max_count, volume // size))


def run(args, master: str) -> list[dict]:
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    progress = Progress(len(sizes) * len(transports))
    rows = []
    for transport in transports:
        with Client(master, transports=(transport,)) as client:
            for size in sizes:
                count = count_for(size, parse_size(args.volume), args.max_count)
                rows.extend(run_size(client, transport, size, count))
                progress.step(f"{transport} {format_size(size)}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mooncake-bench", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--master", help="measure an existing cluster at H:P")
    where.add_argument("--local", action="store_true",
                       help="start a master and two workers on loopback, measure, stop them")
    parser.add_argument("--sizes", default="4KiB,64KiB,1MiB,4MiB,16MiB")
    parser.add_argument("--transports", default="shm,tcp")
    parser.add_argument("--volume", default="256MiB", help="bytes written per size and op")
    parser.add_argument("--max-count", type=int, default=2000, help="most operations per row")
    parser.add_argument("--dram", default="1GiB", help="DRAM per worker with --local")
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    args = parser.parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if args.local:
        with LocalCluster(workers=2, dram=args.dram) as cluster:
            rows = run(args, cluster.master_addr)
    else:
        rows = run(args, args.master)
    print_table(rows)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"command": " ".join(["mooncake-bench", *(argv or sys.argv[1:])]),
                       "started": started, "host": platform.node(), "cpus": os.cpu_count(),
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
