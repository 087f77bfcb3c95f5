"""`mooncake-master`: parses options, serves MasterService and HTTP, ticks the state, stops on SIGTERM.

With `--etcd` it is one of a cluster's masters: it leads or stands by as master/ha.py decides,
and a leader that loses its lease exits with EXIT_LEADERSHIP_LOST for its supervisor to start
it again (as a standby, with nothing in memory).
"""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
import sys
import time

from mooncake_master.auth import Authenticator, load_tokens
from mooncake_master.ha import EXIT_LEADERSHIP_LOST, Election, LeadershipLost, Role
from mooncake_master.meta_server import MetaServer
from mooncake_master.metrics import master_registry
from mooncake_master.mover import Mover
from mooncake_master.state import MasterConfig, MasterState
from mooncake_master.servicer import MasterServicer
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto import mooncake_pb2_grpc as pb_grpc
from mooncake_proto import rpc
from mooncake_proto.cli import DURATION, Option, load_settings
from mooncake_proto.daemon import HttpServer, json_response, kv, metrics_response, \
    setup_logging, stop_event, write_ready_file
from mooncake_proto.discovery import (ETCD_TIMEOUT_S, Etcd, EtcdError, LeaderRecord,
                                      check_cluster_id, parse_endpoints)

log = logging.getLogger("mooncake.master")

TICK_INTERVAL_S = 0.1
GIL_SWITCH_INTERVAL_S = 0.0005  # see main()
MASTER_SERVICE = pb.DESCRIPTOR.services_by_name["MasterService"].full_name  # for health checks
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def _etcd_endpoints(text) -> list[str]:
    return parse_endpoints(text) if str(text).strip() else []


def _cluster_id(text) -> str:
    return check_cluster_id(str(text)) if str(text) else ""


OPTIONS = [
    Option("--host", "127.0.0.1", str, "address to listen on (0.0.0.0 for every interface)"),
    Option("--port", 50051, int, "gRPC port (0 picks one)"),
    Option("--http-port", 9003, int,
           "HTTP port for /metrics, /health, /stats, /get_all_segments (0 picks one)"),
    Option("--meta-port", 50052, int,
           "framed metadata port for clients' hot calls (0 picks one, -1 turns it off)"),
    Option("--lease-ttl", "10s", DURATION, "read lease granted by GetReplicas and Exists"),
    Option("--worker-ttl", "10s", DURATION, "silence after which a worker is declared dead"),
    Option("--put-timeout", "30s", DURATION, "a PENDING put older than this is revoked"),
    Option("--high-watermark", 0.90, float,
           "a segment fuller than this fraction evicts (demotes to SSD, or drops) LRU objects"),
    Option("--eviction-ratio", 0.05, float, "fraction of a segment one eviction frees"),
    Option("--ready-file", "", str, "write bound addresses here as JSON once serving"),
    Option("--log-level", "info", str, "debug, info, warning or error"),
    Option("--tokens", "", str,
           "YAML file of bearer tokens (worker:, client:, admin:); without it the master is open"),
    Option("--tls-cert", "", str, "PEM certificate chain: serve gRPC over TLS (with --tls-key)"),
    Option("--tls-key", "", str, "PEM private key of --tls-cert"),
    Option("--tls-ca", "", str, "PEM CA file: call workers over TLS, verifying them with it"),
    Option("--etcd", "", _etcd_endpoints,
           "etcd client endpoints H:P[,H:P...]: elect a leader among the masters of "
           "--cluster-id (the others stand by); workers and clients then use "
           "etcd://ENDPOINTS/CLUSTER_ID"),
    Option("--cluster-id", "", _cluster_id, "the cluster's name in etcd (with --etcd)"),
    Option("--leader-ttl", "3s", DURATION,
           "etcd lease of the leader (whole seconds): a standby takes over this long after "
           "the leader dies (at once when it stops)"),
    Option("--advertise-host", "", str,
           "host published in etcd for clients to reach this master by (default: --host, "
           "or this machine's host name when --host is 0.0.0.0)"),
]


class MasterHttp:
    """The master's HTTP endpoints: read-only views of the state, under its lock (none
    mutates, so none asks for the admin token)."""

    def __init__(self, state: MasterState, lock, registry):
        self.state = state
        self.lock = lock
        self.registry = registry  # master/metrics.py: this master's alone
        self.role: Role | None = None  # under etcd HA: leader or standby (None: a lone master)
        self.server = HttpServer({"/health": self.health, "/stats": self.stats,
                                  "/get_all_segments": self.get_all_segments,
                                  "/metrics": self.metrics})

    async def metrics(self, _query):
        return metrics_response(self.registry)

    async def health(self, _query):
        if self.role is None:
            return 200, "application/json", b'{"status": "ok"}\n'
        return 200, "application/json", (json.dumps({"status": "ok", "role": self.role.value})
                                         + "\n").encode()

    async def stats(self, _query):
        with self.lock:
            stats = self.state.stats()
        return json_response(stats)

    async def get_all_segments(self, _query):
        # SGLang polls this for readiness: one registered segment name a line
        with self.lock:
            names = [f"{w.worker_id}/{sid}" for w in self.state.workers.values()
                     for sid in w.segments]
        return 200, "text/plain", ("\n".join(names) + ("\n" if names else "")).encode()


async def tick_loop(state: MasterState, lock, mover: Mover, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=TICK_INTERVAL_S)
        except asyncio.TimeoutError:
            pass
        with lock:
            report = state.tick(time.monotonic())
        if report.moves_planned or report.heals_planned:
            mover.wake()
        if report.heals_planned or report.heals_given_up:
            log.info(kv("healing", copies_planned=report.heals_planned,
                        given_up=report.heals_given_up))
        if report.evicted_keys or report.moves_planned:
            log.info(kv("evicted", dropped=len(report.evicted_keys),
                        demotions_planned=report.moves_planned))
        if report.moves_abandoned:
            log.warning(kv("moves_abandoned", count=report.moves_abandoned))
        for worker_id in report.dead_workers:
            log.warning(kv("worker_dead", worker_id=worker_id))
        if report.revoked_keys:
            log.warning(kv("puts_timed_out", count=len(report.revoked_keys)))
        if report.lost_keys:
            log.warning(kv("objects_lost", count=len(report.lost_keys)))


async def serve(settings, auth: Authenticator, tls: rpc.Tls) -> int:
    stop = stop_event()
    if not 0 < settings.high_watermark <= 1 or not 0 < settings.eviction_ratio <= 1:
        log.error(kv("bad_option", detail="--high-watermark and --eviction-ratio must be in (0, 1]"))
        return 2
    if bool(settings.etcd) != bool(settings.cluster_id):
        log.error(kv("bad_option", detail="--etcd and --cluster-id go together"))
        return 2
    state = MasterState(MasterConfig(lease_ttl_s=settings.lease_ttl,
                                     worker_ttl_s=settings.worker_ttl,
                                     put_timeout_s=settings.put_timeout,
                                     high_watermark=settings.high_watermark,
                                     eviction_ratio=settings.eviction_ratio),
                        # put ids start at the wall clock in microseconds: above any earlier
                        # master's, which is how adoption tells their objects apart
                        first_put_id=time.time_ns() // 1000)
    servicer = MasterServicer(state, auth=auth)
    if settings.etcd:  # nothing is served before etcd says this master leads
        servicer.standby_reason = f"standby of cluster {settings.cluster_id}: electing a leader"
    server = rpc.aio_server()
    rpc.add_servicer(server, pb_grpc.add_MasterServiceServicer_to_server, servicer)
    health = await rpc.Health(server, MASTER_SERVICE).start()
    grpc_addr = rpc.bind(server, settings.host, settings.port, tls)
    await server.start()
    meta = MetaServer(servicer)
    if settings.meta_port >= 0 and tls.serving:
        log.info(kv("meta_port_off", reason="the framed metadata port has no TLS; "
                                            "clients make every call over gRPC"))
    elif settings.meta_port >= 0:
        servicer.meta_addr = await meta.start(settings.host, settings.meta_port)
    http = MasterHttp(state, servicer.lock,
                      master_registry(state, servicer.lock, servicer.rpc_stats))
    http_addr = await http.server.start(settings.host, settings.http_port)
    log_security(auth, tls)
    log.info(kv("master_serving", master_id=servicer.master_id, grpc=grpc_addr, http=http_addr,
                meta=servicer.meta_addr or "off", tls="on" if tls.serving else "off",
                gc_frozen_objects=gc.get_freeze_count()))
    ready = {"grpc": grpc_addr, "http": http_addr, "meta": servicer.meta_addr}
    election = None
    if settings.etcd:
        election = await start_election(settings, servicer, http, health, ready)
    else:
        await health.set_serving(True)
        write_ready_file(settings.ready_file, ready)
    mover = Mover(state, servicer.lock, tls=tls)
    servicer.on_moves_planned = mover.wake
    ticker = asyncio.create_task(tick_loop(state, servicer.lock, mover, stop))
    moving = asyncio.create_task(mover.run(stop))
    lost = asyncio.create_task(run_election(election, stop)) if election else None
    await stop.wait()
    log.info(kv("master_stopping", master_id=servicer.master_id))
    exit_code = 0
    if lost is not None and await lost:  # resigned first (SIGTERM), so a standby takes over
        exit_code = EXIT_LEADERSHIP_LOST
    await health.shutdown()
    await ticker
    await moving
    await meta.stop()
    await server.stop(grace=1.0)
    await http.server.stop()
    return exit_code


async def start_election(settings, servicer: MasterServicer, http: MasterHttp,
                         health: rpc.Health, ready: dict) -> Election:
    """Takes part in the cluster's election (master/ha.py): one campaign before the ready file
    (which says the role, and is written again whenever it changes), the rest in run_election."""
    tasks: set[asyncio.Task] = set()

    def on_role(role: Role, detail: str) -> None:
        servicer.standby_reason = detail if role is Role.STANDBY else ""
        http.role = role
        task = asyncio.get_running_loop().create_task(health.set_serving(role is Role.LEADER))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        write_ready_file(settings.ready_file, {**ready, "role": role.value,
                                               "master_id": servicer.master_id})

    host = advertised_host(settings.host, settings.advertise_host)
    record = LeaderRecord(grpc=_with_host(ready["grpc"], host),
                          meta=_with_host(ready["meta"], host) if ready["meta"] else "",
                          http=_with_host(ready["http"], host), master_id=servicer.master_id)
    # an etcd request must end well inside a lease refresh period
    etcd = Etcd(settings.etcd, timeout_s=min(ETCD_TIMEOUT_S, max(0.2, settings.leader_ttl / 3)))
    election = Election(etcd, settings.cluster_id, settings.leader_ttl, record, on_role)
    try:
        await election.campaign_once()
    except EtcdError as exc:
        log.warning(kv("etcd_unreachable", cluster_id=settings.cluster_id, error=exc))
    return election


async def run_election(election: Election, stop: asyncio.Event) -> bool:
    """Runs the election until stop; True when this master lost its leadership (it then
    stops: main exits with EXIT_LEADERSHIP_LOST)."""
    try:
        await election.run(stop)
        return False
    except LeadershipLost:
        pass
    except Exception:  # a bug: nobody keeps the lease alive now, so stop leading all the same
        log.exception(kv("election_failed", cluster_id=election.cluster_id))
        election.fence("the election loop failed")
    stop.set()
    return True


def advertised_host(host: str, advertise_host: str) -> str:
    if advertise_host:
        return advertise_host
    return socket.gethostname() if host.strip("[]") in WILDCARD_HOSTS else host


def _with_host(addr: str, host: str) -> str:
    port = addr.rpartition(":")[2]
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def log_security(auth: Authenticator, tls: rpc.Tls) -> None:
    if tls.serving and not tls.calling:
        log.warning(kv("tls_without_ca", detail="gRPC is served over TLS but, without "
                       "--tls-ca, calls to workers (demotions, promotions) are not"))
    if auth.open:
        log.warning(kv("no_authentication", detail="no --tokens: anyone who reaches the master "
                       "may register workers and read, write or remove every object"))
        return
    log.info(kv("authentication", **{f"{role}_tokens": n for role, n in auth.counts.items()}))
    if not tls.serving:
        log.warning(kv("tokens_in_clear", detail="tokens without --tls-cert travel unencrypted; "
                       "anyone on the path can read and reuse them"))


def main(argv: list[str] | None = None) -> int:
    settings = load_settings("mooncake-master", "Assigns replicas and leases for the pool.",
                             OPTIONS, argv)
    try:  # bad security files stop the master before it serves anything
        auth = Authenticator(load_tokens(settings.tokens) if settings.tokens else None)
        tls = rpc.Tls.load(settings.tls_cert, settings.tls_key, settings.tls_ca)
    except (OSError, ValueError) as exc:
        print(f"mooncake-master: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    # The event loop's thread (gRPC: heartbeats, registrations, the tick) and the framed port's
    # threads share the GIL. Python hands it over every 5 ms by default: a read arriving while
    # a heartbeat's answer is encoded would wait that long. Handing it over every 0.5 ms keeps
    # such waits short at a cost in throughput the master does not notice.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    # Everything imported so far (protobuf descriptors, gRPC, our modules: about 32k objects)
    # lives as long as the process. Out of the collector's way, a full collection with 2000
    # objects stored takes 0.6 ms instead of 10, and it holds the GIL every read needs.
    # (Collected first: garbage frozen would never be freed.)
    gc.collect()
    gc.freeze()
    return asyncio.run(serve(settings, auth, tls))


if __name__ == "__main__":
    sys.exit(main())
