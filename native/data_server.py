"""The worker's TCP data-plane server: a thin owner of the C server in native/src/data_server.c.

The C side moves every byte and checks every grant; this module hands it the segments and
the grant key, reads its counters, and logs the refusals and connection faults it queues,
from a thread of its own so the data path never waits on Python.
"""
from __future__ import annotations

import logging
import threading

from mooncake_native.binding import check, ffi, lib
from mooncake_native.file_segment import FileSegment
from mooncake_proto.daemon import kv

log = logging.getLogger("mooncake.worker.data")

_EVENT_LOG = {  # event kind -> (log level, event name)
    lib.MC_SERVER_EVENT_REFUSED: (logging.WARNING, "data_request_refused"),
    lib.MC_SERVER_EVENT_CONNECTION_LOST: (logging.INFO, "data_connection_lost"),
    lib.MC_SERVER_EVENT_CONNECTION_REJECTED: (logging.ERROR, "data_connection_refused"),
    lib.MC_SERVER_EVENT_ACCEPT_FAILED: (logging.ERROR, "data_accept_failed"),
}


class DataServer:
    """Serves granted READ/WRITE requests on `segments` (segment id -> writable buffer) and
    `file_segments` (segment id -> a writable FileSegment: the C server keeps its own
    descriptor, so the FileSegment may close at any time)."""

    def __init__(self, worker_id: str, segments: dict[int, memoryview],
                 max_connections: int = 0, idle_timeout_s: float = 0,
                 file_segments: dict[int, FileSegment] | None = None):
        self._worker_id = worker_id
        self._grant_key: bytes | None = None
        out = ffi.new("mc_server **")
        check(lib.mc_server_create(worker_id.encode(), out), "data server")
        self._server = out[0]
        self._log_thread: threading.Thread | None = None
        self._stopped = False
        self._final_stats: dict[str, int] | None = None  # the counters as stop() left them
        # the C server keeps raw pointers: these keep the buffers exported until stop()
        self._buffers = []
        try:
            check(lib.mc_server_set_limits(self._server, max_connections,
                                           int(idle_timeout_s * 1000)), "data server limits")
            for segment_id, view in segments.items():
                buffer = ffi.from_buffer(view, require_writable=True)
                self._buffers.append(buffer)
                check(lib.mc_server_add_segment(self._server, segment_id, buffer, len(buffer)),
                      f"segment {segment_id}")
            for segment_id, file in (file_segments or {}).items():
                check(lib.mc_server_add_file_segment(self._server, segment_id, file.fd,
                                                     file.size_bytes), f"segment {segment_id}")
        except Exception:
            self._close()
            raise

    @property
    def worker_id(self) -> str:
        return self._worker_id

    @worker_id.setter
    def worker_id(self, worker_id: str) -> None:
        check(lib.mc_server_set_worker_id(self._server, worker_id.encode()), "worker id")
        self._worker_id = worker_id

    @property
    def grant_key(self) -> bytes | None:
        return self._grant_key

    @grant_key.setter
    def grant_key(self, key: bytes | None) -> None:
        """Set when the master accepts our registration; None refuses every request again."""
        data = bytes(key or b"")
        check(lib.mc_server_set_grant_key(self._server, data, len(data)), "grant key")
        self._grant_key = data or None

    def start(self, host: str, port: int) -> str:
        bound = check(lib.mc_server_start(self._server, host.encode(), port),
                      "data server start")
        self._log_thread = threading.Thread(target=self._log_events, name="data-log",
                                            daemon=True)
        self._log_thread.start()
        return f"{host}:{bound}"

    def stop(self) -> None:
        """Closes the listener and every connection; segments are untouched once it returns."""
        if self._stopped:
            return
        self._stopped = True
        check(lib.mc_server_stop(self._server), "data server stop")
        if self._log_thread is not None:
            self._log_thread.join()  # returns once the C queue is closed and drained
        self._final_stats = self.stats()
        self._close()

    def stats(self) -> dict[str, int]:
        if self._server is None:
            return dict(self._final_stats or {})
        out = ffi.new("mc_server_stats *")
        lib.mc_server_get_stats(self._server, out)
        return {name: getattr(out, name) for name in
                ("bytes_in", "bytes_out", "requests", "refused", "connections",
                 "connections_total")}

    @property
    def bytes_in(self) -> int:
        return self.stats()["bytes_in"]

    @property
    def bytes_out(self) -> int:
        return self.stats()["bytes_out"]

    @property
    def refused(self) -> int:
        return self.stats()["refused"]

    def _log_events(self) -> None:
        event = ffi.new("mc_server_event *")
        while lib.mc_server_next_event(self._server, event):  # blocks without the GIL
            level, name = _EVENT_LOG.get(event.kind, (logging.ERROR, "data_server_event"))
            fields = {"peer": ffi.string(event.peer).decode(errors="replace")}
            if event.kind == lib.MC_SERVER_EVENT_REFUSED:
                fields["code"] = event.code
            fields["reason" if event.kind == lib.MC_SERVER_EVENT_REFUSED else "error"] = \
                ffi.string(event.reason).decode(errors="replace")
            if event.dropped:
                fields["events_dropped"] = event.dropped
            log.log(level, kv(name, **fields))

    def _close(self) -> None:
        """Frees the C server and lets the segment buffers go (their owners may close them)."""
        if self._server is not None:
            lib.mc_server_destroy(self._server)
            self._server = None
        for buffer in self._buffers:
            ffi.release(buffer)
        self._buffers.clear()
