"""`mooncake-master`: parses options, serves MasterService and HTTP, ticks the state, stops on SIGTERM."""
from __future__ import annotations

import asyncio
import logging
import sys
import time

from mooncake_master.auth import Authenticator, load_tokens
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

log = logging.getLogger("mooncake.master")

TICK_INTERVAL_S = 0.1
MASTER_SERVICE = pb.DESCRIPTOR.services_by_name["MasterService"].full_name  # for health checks

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
]


class MasterHttp:
    """The master's HTTP endpoints: read-only views of the state, under its lock (none
    mutates, so none asks for the admin token)."""

    def __init__(self, state: MasterState, lock, registry):
        self.state = state
        self.lock = lock
        self.registry = registry  # master/metrics.py: this master's alone
        self.server = HttpServer({"/health": self.health, "/stats": self.stats,
                                  "/get_all_segments": self.get_all_segments,
                                  "/metrics": self.metrics})

    async def metrics(self, _query):
        return metrics_response(self.registry)

    async def health(self, _query):
        return 200, "application/json", b'{"status": "ok"}\n'

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
    state = MasterState(MasterConfig(lease_ttl_s=settings.lease_ttl,
                                     worker_ttl_s=settings.worker_ttl,
                                     put_timeout_s=settings.put_timeout,
                                     high_watermark=settings.high_watermark,
                                     eviction_ratio=settings.eviction_ratio),
                        # put ids start at the wall clock in microseconds: above any earlier
                        # master's, which is how adoption tells their objects apart
                        first_put_id=time.time_ns() // 1000)
    servicer = MasterServicer(state, auth=auth)
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
                meta=servicer.meta_addr or "off", tls="on" if tls.serving else "off"))
    await health.set_serving(True)
    write_ready_file(settings.ready_file, {"grpc": grpc_addr, "http": http_addr,
                                           "meta": servicer.meta_addr})
    mover = Mover(state, servicer.lock, tls=tls)
    servicer.on_moves_planned = mover.wake
    ticker = asyncio.create_task(tick_loop(state, servicer.lock, mover, stop))
    moving = asyncio.create_task(mover.run(stop))
    await stop.wait()
    log.info(kv("master_stopping", master_id=servicer.master_id))
    await health.shutdown()
    await ticker
    await moving
    await meta.stop()
    await server.stop(grace=1.0)
    await http.server.stop()
    return 0


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
    return asyncio.run(serve(settings, auth, tls))


if __name__ == "__main__":
    sys.exit(main())
