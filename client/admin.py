"""`mooncake-admin`: an operator's view of a running pool (stat, workers, ls), one-object get, put,
rm, and draining a worker before it is stopped.

Cluster figures come from the master's HTTP `/stats`, keys from the admin-only `ListKeys`
RPC, drains from the admin-only `DrainWorker` RPC, objects through the ordinary `Client`.
`--master` is any master spec (proto/discovery.py), etcd:// included: the leader's HTTP
address then comes from etcd too. Tables for people, `--json` for programs; any failure is
one line on stderr and exit status 1 (2 for a bad command line).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

from mooncake_client.client import Client, DrainProgress, KeyInfo, ReplicaConfig
from mooncake_proto.discovery import ETCD_SCHEME, MasterLocator
from mooncake_proto.errors import HasLeaseError, MooncakeError, PermissionDeniedError
from mooncake_proto.rpc import check_token
from mooncake_proto.units import human_size, parse_duration

PROG = "mooncake-admin"
DEFAULT_MASTER = "127.0.0.1:50051"
MASTER_HTTP_PORT = 9003  # the master's default --http-port: --http points there unless given
LIST_PAGE = 10_000  # the master's cap on one ListKeys answer
CALL_TIMEOUT_S = 10.0  # --timeout's default, and the most one call of drain may take
DRAIN_TIMEOUT = "10m"  # --timeout's default for drain: the whole --wait
DRAIN_POLL_S = 0.5  # drain --wait asks for progress this often
TIER_NAMES = {1: "DRAM", 2: "SSD"}
# what the environment may say (a flag wins): addresses, and what Client reads itself
ENV_VARS = ("MOONCAKE_MASTER", "MOONCAKE_MASTER_HTTP", "MOONCAKE_TOKEN", "MOONCAKE_TLS_CA")


class AdminError(Exception):
    """A failure to report as one line (the command itself was well formed)."""


class DrainTimeout(AdminError):
    """drain --wait ran out of time; `progress` is the master's last answer."""

    def __init__(self, message: str, progress: "DrainProgress"):
        super().__init__(message)
        self.progress = progress


# ---- the command line ----

def _common_options() -> argparse.ArgumentParser:
    """Options taken before or after the command (`--json stat` and `stat --json`).
    SUPPRESS: a subcommand's copy must not reset what was given before it."""
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--master", metavar="H:P[,H:P...]|etcd://H:P/CLUSTER_ID",
                        help="master gRPC address(es), or the etcd endpoints and cluster id "
                             f"of an HA cluster (default $MOONCAKE_MASTER or {DEFAULT_MASTER})")
    common.add_argument("--http", metavar="H:P",
                        help="master HTTP address, for stat and workers (default "
                             f"$MOONCAKE_MASTER_HTTP, else the leader's from etcd, else the "
                             f"first master's host, port {MASTER_HTTP_PORT})")
    common.add_argument("--token", help="bearer token (default $MOONCAKE_TOKEN; visible in ps: "
                                        "prefer the variable or --token-file)")
    common.add_argument("--token-file", metavar="FILE", help="file holding the bearer token")
    common.add_argument("--tls-ca", metavar="PEM",
                        help="CA of the master's certificate: gRPC over TLS "
                             "(default $MOONCAKE_TLS_CA)")
    common.add_argument("--timeout", metavar="DURATION",
                        help="per call, riding out a master fail-over included (default "
                             f"10s); for drain, the whole command (default {DRAIN_TIMEOUT}: "
                             "--wait's bound)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    return common


def _count(minimum: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value
    parse.__name__ = f"integer >= {minimum}"  # what argparse names in its error
    return parse


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[common],
        description="Inspect a mooncake pool and read, write or remove single objects.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser("stat", parents=[common], help="cluster summary")
    commands.add_parser("workers", parents=[common], help="one row per worker")
    ls = commands.add_parser("ls", parents=[common], help="keys by prefix (admin token)")
    ls.add_argument("prefix", nargs="?", default="", help="key prefix (default: every key)")
    ls.add_argument("--limit", type=_count(0), default=1000, help="at most this many (0: all)")
    get = commands.add_parser("get", parents=[common], help="read an object")
    get.add_argument("key")
    get.add_argument("-o", "--output", metavar="FILE", help="write here (default stdout)")
    put = commands.add_parser("put", parents=[common], help="write an object")
    put.add_argument("key")
    put.add_argument("file", metavar="FILE|-", help="bytes to store (- reads stdin)")
    put.add_argument("--replicas", type=_count(1), default=1,
                     help="replicas on distinct workers")
    pins = put.add_mutually_exclusive_group()
    pins.add_argument("--soft-pin", action="store_true", help="evicted only after the rest")
    pins.add_argument("--hard-pin", action="store_true", help="never evicted")
    rm = commands.add_parser("rm", parents=[common], help="remove an object")
    rm.add_argument("key")
    rm.add_argument("--force", action="store_true", help="remove even under a read lease")
    drain = commands.add_parser(
        "drain", parents=[common], help="move a worker's objects away before stopping it "
                                        "(admin token)")
    drain.add_argument("worker_id", metavar="WORKER_ID")
    how = drain.add_mutually_exclusive_group()
    how.add_argument("--wait", action="store_true",
                     help="until no object is held by it alone (exit 1 past --timeout)")
    how.add_argument("--cancel", action="store_true", help="put it back in service")
    return parser


def _settle(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fills what was not given from the environment and the defaults."""
    env = os.environ
    args.master = getattr(args, "master", None) or env.get("MOONCAKE_MASTER") or DEFAULT_MASTER
    args.http = getattr(args, "http", None) or env.get("MOONCAKE_MASTER_HTTP") \
        or _default_http(args.master)  # None: the leader's, read from etcd when needed
    args.json = getattr(args, "json", False)
    args.tls_ca = getattr(args, "tls_ca", None)  # None: Client reads $MOONCAKE_TLS_CA
    default_timeout = DRAIN_TIMEOUT if args.command == "drain" else f"{CALL_TIMEOUT_S:g}s"
    try:
        args.timeout = parse_duration(getattr(args, "timeout", default_timeout))
        args.token = _token(getattr(args, "token", None), getattr(args, "token_file", None))
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    # drain's --timeout bounds the whole command; each of its calls at most CALL_TIMEOUT_S
    args.call_timeout = min(args.timeout, CALL_TIMEOUT_S) if args.command == "drain" \
        else args.timeout
    if args.command == "get" and args.json and not args.output:
        parser.error("get --json needs -o FILE: stdout carries the object's bytes")


def _default_http(master: str) -> str | None:
    if master.strip().startswith(ETCD_SCHEME):
        return None
    first_host = master.split(",")[0].strip().rpartition(":")[0] or "127.0.0.1"
    return f"{first_host}:{MASTER_HTTP_PORT}"


def _token(token: str | None, token_file: str | None) -> str:
    if token is not None and token_file:
        raise ValueError("--token and --token-file: give one")
    if token_file:
        with open(token_file, encoding="ascii", errors="replace") as f:
            token = f.read()
    token = (os.environ.get("MOONCAKE_TOKEN", "") if token is None else token).strip()
    return check_token(token) if token else ""


# ---- output ----

def table(headers: list[str], rows: list[list[str]], right: tuple[int, ...] = ()) -> str:
    """Aligned columns, two spaces apart; the columns in `right` aligned right (numbers)."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(headers)] + [line(r) for r in rows])


def human_age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _shown(key: str) -> str:
    # keys are opaque: one with a newline or a control character must not break the table
    return key if key.isprintable() and key.strip() == key and key else repr(key)


def _percent(used: int, total: int) -> str:
    return f"{100 * used / total:.1f}%" if total else "-"


def _size(n: int) -> str:
    return f"{n} byte{'' if n == 1 else 's'}" if n < 1024 else f"{human_size(n)} ({n} bytes)"


def _emit(args, data, text: str) -> None:
    print(json.dumps(data, indent=1) if args.json else text)


# ---- stat and workers: the master's /stats ----

def fetch_stats(http_addr: str, token: str, timeout_s: float) -> dict:
    url = f"http://{http_addr}/stats"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # no proxy: the master is reached directly, whatever http_proxy says
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=timeout_s) as r:
            return json.load(r)
    except urllib.error.HTTPError as exc:
        raise AdminError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AdminError(f"{url}: {reason} (--http is the master's HTTP address, "
                         "its --http-port)") from None
    except ValueError as exc:
        raise AdminError(f"{url}: not JSON: {exc}") from None


def stat_summary(stats: dict) -> dict:
    tiers = {name: {"used_bytes": t.get("used_bytes", 0), "total_bytes": t.get("total_bytes", 0),
                    "replicas": t.get("replicas", 0)}
             for name, t in stats.get("tiers", {}).items()}
    counters = ("evicted_objects", "evicted_replicas", "demotions", "promotions", "moves",
                "pending_frees")
    return {"objects": stats.get("objects", 0), "pending": stats.get("pending", 0),
            "workers": len(stats.get("workers", [])), "tiers": tiers,
            **{name: stats.get(name, 0) for name in counters}}


def render_stat(s: dict) -> str:
    pairs = [("objects", f"{s['objects']} ({s['pending']} pending)"),
             ("workers", str(s["workers"])),
             ("evictions", f"{s['evicted_objects']} objects, {s['evicted_replicas']} replicas"),
             ("demotions", str(s["demotions"])), ("promotions", str(s["promotions"])),
             ("moves", f"{s['moves']} in flight"), ("pending frees", str(s["pending_frees"]))]
    head = "\n".join(f"{k:<14} {v}" for k, v in pairs)
    rows = [[name, human_size(t["used_bytes"]), human_size(t["total_bytes"]),
             _percent(t["used_bytes"], t["total_bytes"]), str(t["replicas"])]
            for name, t in s["tiers"].items()]
    return head + "\n\n" + table(["TIER", "USED", "TOTAL", "USE", "REPLICAS"], rows,
                                 right=(1, 2, 3, 4))


def worker_rows(stats: dict) -> list[dict]:
    rows = []
    for w in stats.get("workers", []):
        row = {"worker_id": w.get("worker_id", ""), "node_id": w.get("node_id", ""),
               "data_addr": w.get("data_addr", "")}
        for seg in w.get("segments", []):
            tier = TIER_NAMES.get(seg.get("tier"), f"tier{seg.get('tier')}").lower()
            row[f"{tier}_used_bytes"] = seg.get("used_bytes", 0)
            row[f"{tier}_total_bytes"] = seg.get("size_bytes", 0)
            row[f"{tier}_fragmentation"] = seg.get("fragmentation", 0.0)
        rows.append(row)
    return rows


def render_workers(rows: list[dict]) -> str:
    def tier(row, name):
        if f"{name}_total_bytes" not in row:
            return "-", "-"
        used, total = row[f"{name}_used_bytes"], row[f"{name}_total_bytes"]
        return (f"{human_size(used)}/{human_size(total)} {_percent(used, total)}",
                f"{row[f'{name}_fragmentation']:.2f}")
    lines = []
    for row in rows:
        (dram, dram_frag), (ssd, ssd_frag) = tier(row, "dram"), tier(row, "ssd")
        lines.append([row["worker_id"], row["node_id"], row["data_addr"], dram, ssd,
                      dram_frag if ssd_frag == "-" else f"{dram_frag}/{ssd_frag}"])
    return table(["WORKER", "NODE", "DATA", "DRAM USED/TOTAL", "SSD USED/TOTAL", "FRAG"], lines,
                 right=(3, 4, 5))


# ---- ls, get, put, rm: through the Client ----

def collect_keys(client: Client, prefix: str, limit: int,
                 page: int = LIST_PAGE) -> tuple[list[KeyInfo], bool]:
    """Up to `limit` keys (0: all), `page` per call; and whether more match."""
    keys: list[KeyInfo] = []
    after = ""
    while True:
        want = page if limit == 0 else min(page, limit - len(keys))
        got, more = client.list_keys(prefix, want, after)
        keys.extend(got)
        if not more or not got:
            return keys, False
        if limit and len(keys) >= limit:
            return keys, True
        after = got[-1].key


def render_keys(keys: list[KeyInfo]) -> str:
    rows = [[_shown(k.key), human_size(k.size), k.state, ",".join(k.tiers) or "-",
             "hard" if k.hard_pin else "soft" if k.soft_pin else "-",
             human_age(k.last_access_age_s)] for k in keys]
    return table(["KEY", "SIZE", "STATE", "TIERS", "PIN", "ACCESSED"], rows, right=(1, 5))


def cmd_ls(args, client: Client) -> None:
    keys, truncated = collect_keys(client, args.prefix, args.limit)
    data = {"keys": [{"key": k.key, "size": k.size, "state": k.state, "tiers": list(k.tiers),
                      "soft_pin": k.soft_pin, "hard_pin": k.hard_pin,
                      "last_access_age_s": round(k.last_access_age_s, 3)} for k in keys],
            "truncated": truncated}
    if keys or args.json:
        _emit(args, data, render_keys(keys))
    if truncated and not args.json:
        print(f"{PROG}: {len(keys)} keys shown, more match (--limit N, 0 for all)",
              file=sys.stderr)


def cmd_get(args, client: Client) -> None:
    data = client.get(args.key)
    if data is None:
        raise AdminError(f"get {args.key!r}: no such key")
    if args.output:
        with open(args.output, "wb") as f:
            f.write(data)
        _emit(args, {"key": args.key, "size": len(data), "output": args.output},
              f"{args.output}: {_size(len(data))}")
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


def _present(client: Client, key: str) -> bool | None:
    """Whether key exists, asked without granting a lease (ListKeys); None when this token
    may not list keys."""
    try:
        page, _ = client.list_keys(key, 1)
    except PermissionDeniedError:
        return None
    return bool(page) and page[0].key == key


def cmd_put(args, client: Client) -> None:
    if args.file == "-":
        data = sys.stdin.buffer.read()
    else:
        with open(args.file, "rb") as f:
            data = f.read()
    if _present(client, args.key):
        # a put of an existing key keeps the old bytes (first writer wins): say so
        raise AdminError(f"put {args.key!r}: the key exists; rm it first to replace it")
    client.put(args.key, data, ReplicaConfig(replica_num=args.replicas,
                                             soft_pin=args.soft_pin, hard_pin=args.hard_pin))
    _emit(args, {"key": args.key, "size": len(data)},
          f"stored {_shown(args.key)}: {_size(len(data))}")


def cmd_rm(args, client: Client) -> None:
    try:
        removed = client.remove(args.key, force=args.force)
    except HasLeaseError:
        raise AdminError(f"rm {args.key!r}: under a read lease (a get or exists within the "
                         "master's --lease-ttl); --force removes it anyway") from None
    if not removed:
        raise AdminError(f"rm {args.key!r}: no such key")
    _emit(args, {"key": args.key, "removed": True}, f"removed {_shown(args.key)}")


# ---- drain ----

def drain_summary(p: DrainProgress, timeout_s: float | None = None) -> dict:
    """What drain prints with --json: the last answer, and whether the worker may be stopped
    (whether nothing is left only on it)."""
    done = p.draining and p.objects_left == 0
    summary = {"worker_id": p.worker_id, "draining": p.draining,
               "objects_left": p.objects_left, "bytes_left": p.bytes_left, "done": done}
    if timeout_s is not None:
        summary["timed_out"] = not done
    return summary


def render_drain(p: DrainProgress) -> str:
    if not p.draining:
        return f"{p.worker_id}: in service (not draining)"
    if p.objects_left == 0:
        return f"{p.worker_id}: drained: no object is held by it alone; it can be stopped"
    objects = f"{p.objects_left} object{'' if p.objects_left == 1 else 's'}"
    return f"{p.worker_id}: draining, {objects} ({human_size(p.bytes_left)}) held by it alone"


def follow_drain(ask, timeout_s: float, report, clock=time.monotonic,
                 sleep=time.sleep) -> DrainProgress:
    """Asks `ask()` for the drain's progress every DRAIN_POLL_S until nothing is left on the
    worker alone, calling `report` with each answer that differs from the one before.
    AdminError after timeout_s."""
    give_up_at = clock() + timeout_s
    progress = ask()
    report(progress)
    while not (progress.draining and progress.objects_left == 0):
        if not progress.draining:
            raise AdminError(f"drain {progress.worker_id}: the master stopped draining it "
                             "(cancelled meanwhile, or the worker left)")
        if clock() + DRAIN_POLL_S > give_up_at:
            raise DrainTimeout(f"drain {progress.worker_id}: {progress.objects_left} object(s) "
                               f"({human_size(progress.bytes_left)}) still held by it alone "
                               f"after {timeout_s:g}s; it is still draining (run drain again "
                               "to follow it, or --cancel)", progress)
        sleep(DRAIN_POLL_S)
        latest = ask()
        if latest != progress:
            report(latest)
        progress = latest
    return progress


def cmd_drain(args, client: Client) -> None:
    if not args.wait:
        progress = client.drain_worker(args.worker_id, cancel=args.cancel)
        _emit(args, drain_summary(progress), render_drain(progress))
        return
    report = (lambda p: None) if args.json else (lambda p: print(render_drain(p), flush=True))
    try:
        progress = follow_drain(lambda: client.drain_worker(args.worker_id), args.timeout,
                                report)
    except DrainTimeout as exc:
        if args.json:
            print(json.dumps(drain_summary(exc.progress, args.timeout), indent=1))
        raise
    if args.json:
        print(json.dumps(drain_summary(progress, args.timeout), indent=1))


def master_http(args) -> str:
    """--http, or the elected leader's HTTP address under etcd HA."""
    if args.http:
        return args.http
    try:
        return MasterLocator(args.master).leader().http
    except MooncakeError as exc:
        raise AdminError(f"{exc} (--http gives the master's HTTP address)") from None


def run(args) -> None:
    if args.command in ("stat", "workers"):
        stats = fetch_stats(master_http(args), args.token, args.timeout)
        if args.command == "stat":
            summary = stat_summary(stats)
            _emit(args, summary, render_stat(summary))
        else:
            rows = worker_rows(stats)
            _emit(args, rows, render_workers(rows))
        return
    commands = {"ls": cmd_ls, "get": cmd_get, "put": cmd_put, "rm": cmd_rm, "drain": cmd_drain}
    with Client(args.master, token=args.token, tls_ca=args.tls_ca,
                rpc_timeout_s=args.call_timeout, transfer_timeout_s=args.call_timeout,
                master_retry_s=args.call_timeout) as client:
        commands[args.command](args, client)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _settle(args, parser)
    try:
        run(args)
    except (AdminError, MooncakeError, OSError) as exc:
        text = " ".join(str(exc).split())  # one line, whatever the error carried
        print(f"{PROG}: {text}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
