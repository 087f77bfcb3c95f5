"""The master's framed metadata port (proto/metaframe.py) over the same servicer as gRPC.

Each frame is decoded, handed to the MasterServicer method of the same name with a small
context object, and the answer framed back: no second implementation of any call. It runs on
the master's event loop, like the gRPC servicer, so MasterState keeps a single thread.
A malformed frame gets an error answer and loses its connection; other connections go on.
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
        self._tasks: set[asyncio.Task] = set()

    async def start(self, host: str, port: int) -> str:
        self._server = await asyncio.start_server(self._serve, host, port)
        return f"{host}:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())
        peer = writer.get_extra_info("peername")
        try:
            while True:
                try:
                    head = await reader.readexactly(metaframe.REQUEST.size)
                except asyncio.IncompleteReadError:
                    return  # a clean close between calls
                if not await self._one_call(head, reader, writer, peer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info(kv("meta_connection_lost", peer=_peer(peer), error=exc))
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(asyncio.current_task())
            writer.close()

    async def _one_call(self, head: bytes, reader, writer, peer) -> bool:
        """Serves one frame; False when the connection must close (malformed frame)."""
        magic, method_id, length = metaframe.REQUEST.unpack(head)
        method = metaframe.METHODS.get(method_id)
        if magic != metaframe.MAGIC or method is None or length > metaframe.MAX_FRAME_BYTES:
            return await self._refuse(writer, peer, "malformed frame header")
        body = await reader.readexactly(length)
        name, request_type, _ = method
        try:
            request = request_type.FromString(body)
        except DecodeError:
            return await self._refuse(writer, peer, f"undecodable {name} request")
        self.calls += 1
        try:
            response = await getattr(self.servicer, name)(request, FrameContext())
            status, payload = 0, response.SerializeToString()
        except CallEnded as exc:
            status, payload = exc.code, str(exc).encode()
        except Exception as exc:  # a bug: answer as gRPC would (internal error), keep serving
            log.exception(kv("meta_call_failed", method=name))
            status, payload = ErrorCode.INTERNAL_ERROR, f"{name}: internal error: {exc}".encode()
        writer.write(metaframe.RESPONSE.pack(status, len(payload)) + payload)
        await writer.drain()
        return True

    async def _refuse(self, writer, peer, reason: str) -> bool:
        self.refused += 1
        log.warning(kv("meta_request_refused", peer=_peer(peer), reason=reason))
        message = reason.encode()
        writer.write(metaframe.RESPONSE.pack(ErrorCode.INVALID_PARAMS, len(message)) + message)
        await writer.drain()
        return False


def _peer(peer) -> str:
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
