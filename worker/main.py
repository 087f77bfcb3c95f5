"""`mooncake-worker`: parses options, starts a WorkerNode, registers, heartbeats, and on SIGTERM
or SIGINT drains (up to --drain-timeout), deregisters and stops; a second signal stops at once."""
from __future__ import annotations

import asyncio
import logging
import signal
import sys

from mooncake_native import rdma
from mooncake_proto import rpc
from mooncake_proto.cli import BOOL, DURATION, SIZE, Option, load_settings
from mooncake_proto.daemon import kv, setup_logging, write_ready_file
from mooncake_proto.discovery import MasterLocator
from mooncake_proto.errors import InvalidArgumentError, MooncakeError
from mooncake_proto.identity import default_worker_id
from mooncake_worker.node import Stopped, WorkerNode, unless_set

log = logging.getLogger("mooncake.worker")


def _masters(text: str) -> str:
    """A master spec (proto/discovery.py): addresses, or etcd endpoints and a cluster id."""
    try:
        return MasterLocator(str(text)).spec
    except InvalidArgumentError as exc:
        raise ValueError(str(exc)) from None


OPTIONS = [
    Option("--master", None, _masters,
           "master address(es) H:P[,H:P...], or etcd://H:P[,H:P...]/CLUSTER_ID to follow the "
           "leader of masters run with --etcd (required)"),
    Option("--dram", None, SIZE, "DRAM segment size, e.g. 4GiB (required)"),
    Option("--host", "127.0.0.1", str, "address to listen on and advertise"),
    Option("--data-port", 0, int, "TCP data-plane port (0 picks one)"),
    Option("--grpc-port", 0, int, "WorkerService gRPC port (0 picks one)"),
    Option("--http-port", 9300, int, "HTTP port for /metrics, /health and /stats (0 picks one)"),
    Option("--worker-id", "", str, "stable identity (default: host name + data directories)"),
    Option("--shm-dir", "/dev/shm", str, "directory of the DRAM segment file"),
    Option("--ssd", "", str, "directory of the SSD segment file (with --ssd-size)"),
    Option("--ssd-size", 0, SIZE, "SSD segment size, e.g. 64GiB (with --ssd)"),
    Option("--ready-file", "", str, "write bound addresses here as JSON once registered"),
    Option("--log-level", "info", str, "debug, info, warning or error"),
    Option("--rdma-device", "", str, "RDMA device to serve on (default: the first active one)"),
    Option("--list-rdma-devices", False, BOOL, "print this host's RDMA devices and exit",
           is_switch=True),
    Option("--token-file", "", str, "file holding the worker token of the master's --tokens"),
    Option("--tls-cert", "", str, "PEM certificate chain: serve gRPC over TLS (with --tls-key)"),
    Option("--tls-key", "", str, "PEM private key of --tls-cert"),
    Option("--tls-ca", "", str, "PEM CA file: call the master over TLS, verifying it with it"),
    Option("--drain-timeout", "30s", DURATION,
           "on SIGTERM, wait this long for the master to copy away the objects only this "
           "worker holds, then deregister (0: stop without draining)"),
]


def read_token_file(path: str) -> str:
    """The token in a token file (surrounding whitespace ignored); ValueError when unusable."""
    if not path:
        return ""
    with open(path, encoding="ascii", errors="replace") as f:
        token = f.read().strip()
    try:
        return rpc.check_token(token)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


class StopSignals:
    """SIGTERM or SIGINT: the first asks for a graceful stop (drain, deregister), the next one
    for a stop at once."""

    def __init__(self):
        self.graceful = asyncio.Event()
        self.at_once = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._received, sig)

    def _received(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if not self.graceful.is_set():
            log.info(kv("stop_requested", signal=name))
            self.graceful.set()
        elif not self.at_once.is_set():
            log.warning(kv("stop_at_once", signal=name))
            self.at_once.set()


async def serve(settings, token: str, tls: rpc.Tls) -> int:
    signals = StopSignals()
    # the SSD directory joins the identity only when given: ids of DRAM-only workers stay
    worker_id = settings.worker_id or default_worker_id(
        settings.shm_dir, *([settings.ssd] if settings.ssd else []))
    node = WorkerNode(worker_id, settings.master, settings.dram, settings.shm_dir,
                      settings.rdma_device, settings.ssd, settings.ssd_size, token=token,
                      tls=tls)
    await node.start(settings.host, settings.data_port, settings.grpc_port, settings.http_port)
    ssd = ({"ssd_bytes": node.ssd.size_bytes, "ssd_segment": node.ssd.path}
           if node.ssd is not None else {})
    log.info(kv("worker_listening", worker_id=worker_id, data=node.data_addr,
                grpc=node.grpc_addr, http=node.http_addr, dram_bytes=settings.dram,
                segment=node.dram.path, tls="on" if tls.serving else "off",
                inventory=len(node.inventory), **ssd))
    heartbeats = None
    try:
        if await node.register(signals.graceful):
            write_ready_file(settings.ready_file, {
                "worker_id": worker_id, "data": node.data_addr, "grpc": node.grpc_addr,
                "http": node.http_addr, "node_id": node.node_id})
            heartbeats = asyncio.create_task(node.heartbeat_loop(signals.graceful))
            await signals.graceful.wait()
            try:  # the loop ends at once (its call is cancelled); the drain heartbeats instead
                await unless_set(signals.at_once, heartbeats)
            except Stopped:
                pass
            if node.registered and settings.drain_timeout > 0 and not signals.at_once.is_set():
                await node.drain(settings.drain_timeout, signals.at_once)
    finally:
        log.info(kv("worker_stopping", worker_id=worker_id))
        if heartbeats is not None:
            heartbeats.cancel()  # a no-op once it has finished
            try:
                await heartbeats
            except asyncio.CancelledError:
                pass
        await node.stop()
    return 0


def rdma_device_table() -> str:
    """This host's RDMA ports as a small table, or why there are none."""
    try:
        ports = rdma.list_devices()
    except (MooncakeError, OSError) as exc:
        return f"no RDMA devices found ({exc})"
    if not ports:
        return "no RDMA devices found"
    rows = [("DEVICE", "PORT", "STATE", "LINK", "MTU", "LID", "GUID")]
    rows += [(p.name, str(p.port), p.state, p.link_layer, str(p.active_mtu), str(p.lid),
              f"{p.guid:016x}") for p in ports]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


def main(argv: list[str] | None = None) -> int:
    settings = load_settings("mooncake-worker",
                             "Contributes DRAM (and optionally SSD) to the pool and moves bytes.",
                             OPTIONS, argv)
    if settings.list_rdma_devices:
        print(rdma_device_table())
        return 0
    if not settings.master or not settings.dram:
        print("mooncake-worker: --master and --dram are required", file=sys.stderr)
        return 2
    if bool(settings.ssd) != bool(settings.ssd_size):
        print("mooncake-worker: --ssd and --ssd-size go together", file=sys.stderr)
        return 2
    try:  # bad security files stop the worker before it serves anything
        token = read_token_file(settings.token_file)
        tls = rpc.Tls.load(settings.tls_cert, settings.tls_key, settings.tls_ca)
    except (OSError, ValueError) as exc:
        print(f"mooncake-worker: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    return asyncio.run(serve(settings, token, tls))


if __name__ == "__main__":
    sys.exit(main())
