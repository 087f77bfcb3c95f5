"""The master's framed metadata port (proto/metaframe.py) over the same servicer as gRPC.

Each frame is decoded, handed to the MasterServicer method of the same name with a small
context object, and the answer framed back: no second implementation of any call. It runs on
the master's event loop, like the gRPC servicer, so MasterState keeps a single thread. It is
an asyncio Protocol, not streams: a call is a callback that answers before it returns (the
servicer's methods never wait on anything but an abort, which raises here), which costs
far less per call than a task awaiting a reader. A malformed frame gets an error answer and
loses its connection; other connections go on.
"""
from __future__ import annotations

import asyncio
import logging

from google.protobuf.message import DecodeError

from mooncake_proto import metaframe
from mooncake_proto.daemon import kv
from mooncake_proto.errors import ErrorCode
from mooncake_proto.rpc import CODE_METADATA_KEY

log = logging.getLogger("mooncake.master.meta")


class CallEnded(Exception):
    """A servicer aborted the call (rpc.abort_with): the whole call failed with `code`."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class FrameContext:
    """The part of grpc.aio.ServicerContext the servicer uses, for one framed call."""

    def __init__(self):
        self.code = ErrorCode.INTERNAL_ERROR

    def set_trailing_metadata(self, metadata) -> None:
        for key, value in metadata:
            if key == CODE_METADATA_KEY:
                self.code = int(value)

    async def abort(self, _status, message: str):
        raise CallEnded(self.code, message)


class MetaServer:
    def __init__(self, servicer):
        self.servicer = servicer
        self.calls = 0
        self.refused = 0
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[_FrameConnection] = set()

    async def start(self, host: str, port: int) -> str:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _FrameConnection(self), host, port)
        return f"{host}:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for connection in list(self._connections):
                connection.transport.close()
            await self._server.wait_closed()

    def answer(self, method_id: int, body: bytes) -> tuple[int, bytes]:
        """Runs one decoded call; (status, payload) to frame back."""
        name, request_type, _ = metaframe.METHODS[method_id]
        request = request_type.FromString(body)  # DecodeError: the caller refuses the frame
        self.calls += 1
        call = getattr(self.servicer, name)(request, FrameContext())
        try:
            call.send(None)
        except StopIteration as done:
            return 0, done.value.SerializeToString()
        except CallEnded as exc:
            return exc.code, str(exc).encode()
        except Exception as exc:  # a bug: answer as gRPC would (internal error), keep serving
            log.exception(kv("meta_call_failed", method=name))
            return ErrorCode.INTERNAL_ERROR, f"{name}: internal error: {exc}".encode()
        call.close()  # it waited on something: servicer methods must not (see module doc)
        log.error(kv("meta_call_suspended", method=name))
        return ErrorCode.INTERNAL_ERROR, f"{name}: cannot be served on the framed port".encode()


class _FrameConnection(asyncio.Protocol):
    """One client connection: frames in, answers out in order."""

    def __init__(self, server: MetaServer):
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.server._connections.add(self)

    def connection_lost(self, exc) -> None:
        self.server._connections.discard(self)
        if exc is not None:
            log.info(kv("meta_connection_lost", peer=self.peer, error=exc))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_size = metaframe.REQUEST.size
        while len(self.buffer) >= head_size and not self.transport.is_closing():
            magic, method_id, length = metaframe.REQUEST.unpack_from(self.buffer)
            if magic != metaframe.MAGIC or method_id not in metaframe.METHODS \
                    or length > metaframe.MAX_FRAME_BYTES:
                return self._refuse("malformed frame header")
            if len(self.buffer) < head_size + length:
                return  # the rest of the frame is still on its way
            body = bytes(self.buffer[head_size:head_size + length])
            del self.buffer[:head_size + length]
            try:
                status, payload = self.server.answer(method_id, body)
            except DecodeError:
                return self._refuse(f"undecodable {metaframe.METHODS[method_id][0]} request")
            self.transport.write(metaframe.RESPONSE.pack(status, len(payload)) + payload)

    def _refuse(self, reason: str) -> None:
        self.server.refused += 1
        log.warning(kv("meta_request_refused", peer=self.peer, reason=reason))
        message = reason.encode()
        self.transport.write(metaframe.RESPONSE.pack(ErrorCode.INVALID_PARAMS, len(message))
                             + message)
        self.buffer.clear()
        self.transport.close()  # after the queued answer is written
