"""Process plumbing every daemon shares: key=value logs, the ready file, stop signals, a tiny HTTP server."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import tempfile
from typing import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

HttpHandler = Callable[[str], Awaitable[tuple[int, str, bytes]]]


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
        return f"ts={ts}.{int(record.msecs):03d} level={record.levelname.lower()} " \
               f"logger={record.name} {record.getMessage()}"


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def kv(event: str, **fields) -> str:
    """One log line: `event=NAME k=v ...`, values with spaces quoted."""
    parts = [f"event={event}"]
    for key, value in fields.items():
        text = str(value)
        parts.append(f"{key}={json.dumps(text) if (' ' in text or not text) else text}")
    return " ".join(parts)


def write_ready_file(path: str | None, info: dict) -> None:
    """Atomically writes the daemon's bound addresses, so a reader never sees half a file."""
    if not path:
        return
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ready-")
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
    os.replace(tmp, path)


def stop_event() -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT (graceful stop)."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)
    return event


class HttpServer:
    """GET-only HTTP/1.1 server on the event loop, for /health, /metrics and friends."""

    def __init__(self, routes: dict[str, HttpHandler]):
        self.routes = routes
        self._server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> str:
        self._server = await asyncio.start_server(self._serve, host, port)
        bound = self._server.sockets[0].getsockname()
        return f"{host}:{bound[1]}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            method, target, _ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            path, _, query = target.partition("?")
            handler = self.routes.get(path)
            if method != "GET":
                status, ctype, body = 405, "text/plain", b"only GET\n"
            elif handler is None:
                status, ctype, body = 404, "text/plain", b"not found\n"
            else:
                status, ctype, body = await handler(query)
            head = (f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
                    f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n")
            writer.write(head.encode() + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                ValueError, ConnectionError):
            pass  # a malformed or vanished HTTP client only loses its own connection
        finally:
            writer.close()


def json_response(obj) -> tuple[int, str, bytes]:
    return 200, "application/json", (json.dumps(obj, indent=1) + "\n").encode()


def metrics_response(registry) -> tuple[int, str, bytes]:
    """A Prometheus text exposition of `registry` (a daemon's own CollectorRegistry)."""
    return 200, CONTENT_TYPE_LATEST, generate_latest(registry)
