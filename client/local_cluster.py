"""Starts a real master and workers as child processes on loopback and stops them.

Used by `mooncake-bench --local`, by the cluster tests and, as `python -m
mooncake_client.local_cluster`, by deploy/local-cluster.sh: port 0 everywhere and
`--ready-file` readiness, so nothing waits on a fixed port or a sleep. Fault tests kill
(`Daemon.kill`), pause and restart daemons: a worker comes back with its id and segment files
(`restart_worker`), the master on the ports it got the first time (`restart_master`), so the
addresses workers and clients were given stay good.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
SHM_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") else None


class ClusterError(RuntimeError):
    pass


@dataclasses.dataclass
class Daemon:
    name: str
    proc: subprocess.Popen
    ready_file: str
    log_path: str
    info: dict = dataclasses.field(default_factory=dict)
    log_offset: int = 0  # where this process's lines start in log_path (restarts append)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> dict:
        """Blocks until the daemon writes its ready file; raises with its log if it dies first."""
        deadline = time.monotonic() + timeout_s
        while not os.path.exists(self.ready_file):
            if self.proc.poll() is not None:
                raise ClusterError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ClusterError(f"{self.name} not ready after {timeout_s}s:\n{self.log_tail()}")
            time.sleep(0.01)  # polling the readiness file, not waiting a guessed time
        with open(self.ready_file, encoding="utf-8") as f:
            self.info = json.load(f)
        return self.info

    def wait_for_log(self, text: str, timeout_s: float = READY_TIMEOUT_S) -> str:
        """Blocks until a line of the daemon's log contains `text` and returns that line (for
        what a daemon does instead of becoming ready: a refused registration, say)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for line in self._log_lines():
                if text in line:
                    return line
            if self.proc.poll() is not None:
                raise ClusterError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ClusterError(f"{self.name} logged no {text!r} in {timeout_s}s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.02)  # polling the log, not waiting a guessed time

    def log_tail(self, lines: int = 40) -> str:
        """The last lines this process logged."""
        return "".join(self._log_lines()[-lines:]) or "(no log)"

    def _log_lines(self) -> list[str]:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                return f.read().decode("utf-8", errors="replace").splitlines(keepends=True)
        except OSError:
            return []

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def pause(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGSTOP, then waits until every thread of the daemon is stopped: a group stop
        starts only when one of its threads runs, so on a busy host a daemon can still
        answer a request for a while after the signal is sent."""
        self.proc.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + timeout_s
        while not self._all_threads_stopped():
            if time.monotonic() > deadline:
                raise ClusterError(f"{self.name} did not stop within {timeout_s}s")
            time.sleep(0.001)  # polling the threads' state, not waiting a guessed time

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def _all_threads_stopped(self) -> bool:
        task_dir = f"/proc/{self.proc.pid}/task"
        try:
            for tid in os.listdir(task_dir):
                with open(f"{task_dir}/{tid}/stat", encoding="ascii") as f:
                    state = f.read().rpartition(")")[2].split()[0]
                if state not in ("T", "t"):
                    return False
        except FileNotFoundError:
            return False
        return True

    def kill(self) -> int:
        """kill -9: no clean-up of any kind, as a crash or the OOM killer would leave it."""
        return self.stop(signal.SIGKILL)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Sends sig and waits for the exit (SIGKILL after timeout_s); the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class LocalCluster:
    """A master plus `workers` workers of `dram` each (and an SSD segment file of `ssd` each,
    when given), all on 127.0.0.1. Workers get `--drain-timeout drain_timeout` (default 0s:
    a stop does not wait for a drain; a test of drains asks for one), before worker_args."""

    def __init__(self, workers: int = 2, dram: str = "256MiB", master_args: tuple = (),
                 worker_args: tuple = (), workdir: str | None = None, ssd: str | None = None,
                 drain_timeout: str = "0s", master: str | None = None,
                 shm_root: str | None = None):
        """master: a master spec to point the workers at (masters the caller runs, e.g. an
        etcd HA pair) instead of starting one. shm_root: the tmpfs the workers' DRAM segments
        go in (default /dev/shm), e.g. one mounted with huge=within_size."""
        self.dir = workdir or tempfile.mkdtemp(prefix="mooncake-cluster-")
        os.makedirs(self.dir, exist_ok=True)
        self._own_dir = workdir is None
        self._shm_dir: str | None = None  # made when a worker first needs it (shm_dir)
        self._shm_root = shm_root or SHM_ROOT
        self.n_workers, self.dram, self.ssd = workers, dram, ssd
        # SSD segment files (on the work directory's disk): stop() deletes exactly this one
        self.ssd_dir = tempfile.mkdtemp(prefix="ssd-", dir=self.dir) if ssd else None
        self.master_args, self.worker_args = list(master_args), list(worker_args)
        self.drain_timeout = drain_timeout
        self.master: Daemon | None = None
        self._master_ports: list[str] = []  # --port, --http-port, --meta-port it first got
        self._master_grpc = master or ""
        self._external_master = master is not None
        self.workers: dict[str, Daemon] = {}
        self._worker_specs: dict[str, tuple[str | None, tuple]] = {}  # id -> (dram, extra)

    @property
    def shm_dir(self) -> str:
        """A directory of its own for segment files, made when first asked for (a cluster used
        only to run masters makes none): stop() deletes exactly this one."""
        if self._shm_dir is None:
            self._shm_dir = tempfile.mkdtemp(prefix="mooncake-cluster-", dir=self._shm_root)
        return self._shm_dir

    @property
    def master_addr(self) -> str:
        """The master's gRPC address (a restarted master keeps it)."""
        return self._master_grpc or self.master.info["grpc"]

    def start(self) -> "LocalCluster":
        try:
            if self._external_master:
                for i in range(self.n_workers):
                    self.start_worker(f"worker-{i}")
                return self
            self.master = self._spawn("master", "mooncake_master",
                                      ["--port", "0", "--http-port", "0", "--meta-port", "0"]
                                      + self.master_args)
            info = self.master.wait_ready()
            self._master_grpc = info["grpc"]
            self._master_ports = [info[name].rpartition(":")[2]
                                  for name in ("grpc", "http", "meta")]
            for i in range(self.n_workers):
                self.start_worker(f"worker-{i}")
        except BaseException:
            self.stop()
            raise
        return self

    def start_worker(self, worker_id: str, dram: str | None = None, extra: tuple = (),
                     wait: bool = True) -> Daemon:
        """Starts a worker (extra flags after the cluster's own); waits for its ready file
        unless `wait` is False."""
        ssd = ["--ssd", self.ssd_dir, "--ssd-size", self.ssd] if self.ssd else []
        daemon = self._spawn(worker_id, "mooncake_worker", [
            "--master", self.master_addr, "--dram", dram or self.dram, "--worker-id", worker_id,
            "--data-port", "0", "--grpc-port", "0", "--http-port", "0",
            "--shm-dir", self.shm_dir, "--drain-timeout", self.drain_timeout]
            + ssd + self.worker_args + list(extra))
        self.workers[worker_id] = daemon
        self._worker_specs[worker_id] = (dram, tuple(extra))
        if wait:
            daemon.wait_ready()
        return daemon

    def restart_worker(self, worker_id: str, sig: int = signal.SIGTERM,
                       wait: bool = True) -> Daemon:
        """Stops the worker with sig (SIGKILL: kill -9) if it still runs, then starts it again
        with the same id, flags and segment files; waits for its ready file unless `wait` is
        False (a worker becomes ready once the master accepts it)."""
        self.workers[worker_id].stop(sig)
        dram, extra = self._worker_specs[worker_id]
        return self.start_worker(worker_id, dram=dram, extra=extra, wait=wait)

    def restart_master(self, sig: int = signal.SIGTERM, wait: bool = True) -> Daemon:
        """Stops the master with sig (SIGKILL: kill -9) if it still runs, then starts a new one
        (empty metadata) on the gRPC, HTTP and metadata ports the first one got."""
        self.master.stop(sig)
        grpc_port, http_port, meta_port = self._master_ports
        self.master = self._spawn("master", "mooncake_master",
                                  ["--port", grpc_port, "--http-port", http_port,
                                   "--meta-port", meta_port] + self.master_args)
        if wait:
            self.master.wait_ready()
        return self.master

    def _spawn(self, name: str, module: str, args: list[str]) -> Daemon:
        ready = os.path.join(self.dir, f"{name}.ready.json")
        if os.path.exists(ready):
            os.unlink(ready)
        log_path = os.path.join(self.dir, f"{name}.log")
        log = open(log_path, "ab")
        offset = log.tell()
        proc = subprocess.Popen([sys.executable, "-m", module, *args, "--ready-file", ready],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        return Daemon(name, proc, ready, log_path, log_offset=offset)

    def stop(self) -> None:
        for daemon in list(self.workers.values()):
            daemon.stop()
        if self.master is not None:
            self.master.stop()
        if self._shm_dir is not None:  # segment files: this cluster's only
            shutil.rmtree(self._shm_dir, ignore_errors=True)
        if self.ssd_dir:
            shutil.rmtree(self.ssd_dir, ignore_errors=True)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Runs a LocalCluster until SIGINT or SIGTERM, printing its addresses (and writing them as
    JSON to --ready-file once every daemon is ready)."""
    parser = argparse.ArgumentParser(prog="python -m mooncake_client.local_cluster",
                                     description="A master and workers on 127.0.0.1 until "
                                                 "Ctrl-C (logs and segment files go at stop).")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dram", default="256MiB", help="DRAM segment per worker")
    parser.add_argument("--ssd", default=None, help="SSD segment per worker (default: none)")
    parser.add_argument("--dir", default=None,
                        help="for logs and ready files, kept (default: a temporary directory)")
    parser.add_argument("--ready-file", default="", help="write the addresses here as JSON")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    cluster = LocalCluster(workers=args.workers, dram=args.dram, ssd=args.ssd, workdir=args.dir)
    try:
        cluster.start()
        master = cluster.master.info
        print(f"master    grpc {master['grpc']}  http {master['http']}  meta {master['meta']}")
        for name, worker in cluster.workers.items():
            print(f"{name:<9} data {worker.info['data']}  http {worker.info['http']}")
        print(f"logs in {cluster.dir}\ntry: mooncake-admin --master {master['grpc']} "
              f"--http {master['http']} stat\nCtrl-C stops the cluster", flush=True)
        if args.ready_file:
            from mooncake_proto.daemon import write_ready_file
            write_ready_file(args.ready_file, {
                "master": master, "dir": cluster.dir,
                "workers": {name: w.info for name, w in cluster.workers.items()}})
        stop.wait()
    except ClusterError as exc:
        print(f"local cluster: {exc}", file=sys.stderr)
        return 1
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
