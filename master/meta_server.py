"""The master's framed metadata port (proto/metaframe.py) over the same servicer as gRPC.

Each frame is decoded, handed to the MasterServicer method of the same name with a small
context object, and the answer framed back: no second implementation of any call. A call
runs to completion synchronously (the servicer's methods never wait on anything but an
abort, which raises here) under the servicer's lock, which every gRPC call, the tick and the
HTTP views also take. A malformed frame gets an error answer and loses its connection; other
connections go on. A connection's auth frame (proto/metaframe.py) gives it a token; each
call hands that token to the servicer as gRPC metadata, so the servicer's one check decides.
"""
from __future__ import annotations

import logging
import socket
import threading
import time

from google.protobuf.message import DecodeError

from mooncake_native.binding import spin_readable
from mooncake_proto import metaframe
from mooncake_proto.daemon import kv
from mooncake_proto.errors import ErrorCode
from mooncake_proto.rpc import AUTH_METADATA_KEY, CODE_METADATA_KEY

log = logging.getLogger("mooncake.master.meta")

MAX_CONNECTIONS = 1024  # each holds a thread
IDLE_TIMEOUT_S = 300.0  # a connection silent this long (also mid-frame) is dropped


class CallEnded(Exception):
    """A servicer aborted the call (rpc.abort_with): the whole call failed with `code`."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class FrameContext:
    """The part of grpc.aio.ServicerContext the servicer uses, for one framed call."""

    def __init__(self, token: str = "", peer: str = ""):
        self.code = ErrorCode.INTERNAL_ERROR
        self._metadata = ((AUTH_METADATA_KEY, f"Bearer {token}"),) if token else ()
        self._peer = peer

    def invocation_metadata(self):
        return self._metadata

    def peer(self) -> str:
        return f"meta:{self._peer}"

    def set_trailing_metadata(self, metadata) -> None:
        for key, value in metadata:
            if key == CODE_METADATA_KEY:
                self.code = int(value)

    async def abort(self, _status, message: str):
        raise CallEnded(self.code, message)


class MetaServer:
    """Threads, one per connection, each blocking in recv: a call is answered by the thread
    that read it, with no event-loop hop (about half the latency of an asyncio server here).
    The servicer serialises every call on its lock, so MasterState still sees one at a time."""

    def __init__(self, servicer):
        self.servicer = servicer
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = False

    async def start(self, host: str, port: int) -> str:
        self._listener = socket.create_server((host, port), backlog=128)
        threading.Thread(target=self._accept_loop, name="meta-accept", daemon=True).start()
        return f"{host}:{self._listener.getsockname()[1]}"

    async def stop(self) -> None:
        self._stopping = True
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            except OSError:
                pass
            self._listener.close()
        with self._lock:
            for conn in list(self._conns):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                conn, peer = self._listener.accept()
            except OSError as exc:
                if self._stopping:
                    return
                log.error(kv("meta_accept_failed", error=exc))  # e.g. EMFILE: keep serving
                time.sleep(0.05)
                continue
            with self._lock:
                busy = len(self._conns) >= MAX_CONNECTIONS
                if not busy:
                    self._conns.add(conn)
            if busy:
                self._refuse_busy(conn, _peer(peer))
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            metaframe.use_kernel_timeouts(conn, IDLE_TIMEOUT_S)
            threading.Thread(target=self._serve, args=(conn, _peer(peer)), name="meta-conn",
                             daemon=True).start()

    def _serve(self, conn: socket.socket, peer: str) -> None:
        token = ""  # until the connection's auth frame
        try:
            while True:
                spin_readable(conn.fileno())  # a client's next call often follows at once
                head = metaframe.recv_exact(conn, metaframe.REQUEST.size, True)
                if head is None:
                    break
                magic, method_id, length = metaframe.REQUEST.unpack(head)
                if magic != metaframe.MAGIC or length > metaframe.MAX_FRAME_BYTES \
                        or method_id not in metaframe.METHODS and method_id != metaframe.AUTH \
                        or method_id == metaframe.AUTH and length > metaframe.MAX_TOKEN_BYTES:
                    return self._refuse(conn, peer, "malformed frame header")
                body = metaframe.recv_exact(conn, length)
                if method_id == metaframe.AUTH:
                    token = self._authenticate(conn, peer, body)
                    if token is None:
                        return
                    continue
                try:
                    status, payload = self.answer(method_id, body, token, peer)
                except DecodeError:
                    name = metaframe.METHODS[method_id][0]
                    return self._refuse(conn, peer, f"undecodable {name} request")
                conn.sendall(metaframe.RESPONSE.pack(status, len(payload)) + payload)
        except OSError as exc:
            if not self._stopping:
                log.info(kv("meta_connection_lost", peer=peer, error=exc))
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def answer(self, method_id: int, body: bytes, token: str = "",
               peer: str = "") -> tuple[int, bytes]:
        """Runs one decoded call for a connection that presented `token`; (status, payload)
        to frame back."""
        name, request_type, _ = metaframe.METHODS[method_id]
        request = request_type.FromString(body)  # DecodeError: the caller refuses the frame
        call = getattr(self.servicer, name)(request, FrameContext(token, peer))
        try:
            call.send(None)
        except StopIteration as done:
            return _framed_answer(name, done.value.SerializeToString())
        except CallEnded as exc:
            return exc.code, str(exc).encode()
        except Exception as exc:  # a bug: answer as gRPC would (internal error), keep serving
            log.exception(kv("meta_call_failed", method=name))
            return ErrorCode.INTERNAL_ERROR, f"{name}: internal error: {exc}".encode()
        call.close()  # it waited on something: servicer methods must not (see module doc)
        log.error(kv("meta_call_suspended", method=name))
        return ErrorCode.INTERNAL_ERROR, f"{name}: cannot be served on the framed port".encode()

    def _authenticate(self, conn: socket.socket, peer: str, body: bytes) -> str | None:
        """Answers an auth frame: the connection's token from now on, or None once a token the
        master does not know has been answered and the connection shut. Only a known token is
        kept; whether it may make a call is the servicer's check, per call."""
        token = body.decode("ascii", errors="replace")
        auth = self.servicer.auth
        if auth.open or auth.roles_of(token):
            conn.sendall(metaframe.RESPONSE.pack(0, 0))
            return token
        log.warning(kv("meta_auth_refused", peer=peer, reason="unknown bearer token"))
        _answer_and_shut(conn, ErrorCode.UNAUTHENTICATED, "unknown bearer token")
        return None

    def _refuse_busy(self, conn: socket.socket, peer: str) -> None:
        """At the connection cap: an answer the client reads as "not sent" (it uses gRPC)."""
        log.warning(kv("meta_connection_refused", peer=peer, reason="too many connections"))
        _answer_and_shut(conn, metaframe.STATUS_BUSY, "too many connections")
        conn.close()

    def _refuse(self, conn: socket.socket, peer: str, reason: str) -> None:
        log.warning(kv("meta_request_refused", peer=peer, reason=reason))
        _answer_and_shut(conn, ErrorCode.INVALID_PARAMS, reason)


def _framed_answer(name: str, payload: bytes) -> tuple[int, bytes]:
    """(0, payload), or an error when the answer is larger than any client may accept (a
    batch of long keys, each echoed in its status): gRPC refuses such an answer too."""
    if len(payload) <= metaframe.MAX_FRAME_BYTES:
        return 0, payload
    log.warning(kv("meta_answer_too_large", method=name, bytes=len(payload)))
    return ErrorCode.INVALID_PARAMS, (
        f"{name}: the answer of {len(payload)} bytes is over the {metaframe.MAX_FRAME_BYTES} "
        "byte frame limit; ask for fewer or shorter keys").encode()


def _answer_and_shut(conn: socket.socket, status: int, message: str) -> None:
    """A last answer, then no more from us (the caller closes the connection)."""
    body = message.encode()
    try:
        conn.sendall(metaframe.RESPONSE.pack(status, len(body)) + body)
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _peer(peer) -> str:
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
