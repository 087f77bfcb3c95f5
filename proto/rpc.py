"""The one factory for every gRPC channel and server: message sizes, keepalive, shared options.

Security (TLS, tokens) will be added here so that no caller builds a channel of its own.
"""
from __future__ import annotations

import grpc

MAX_MESSAGE_BYTES = 64 << 20

_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.optimization_target", "latency"),  # small messages, one at a time: latency first
]
_SERVER_OPTIONS = _OPTIONS + [
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.so_reuseport", 0),
]


def client_channel(target: str) -> grpc.Channel:
    """A blocking channel, for the client SDK."""
    return grpc.insecure_channel(target, options=_OPTIONS)


def aio_channel(target: str) -> grpc.aio.Channel:
    """An asyncio channel, for daemons talking to other daemons."""
    return grpc.aio.insecure_channel(target, options=_OPTIONS)


def aio_server() -> grpc.aio.Server:
    return grpc.aio.server(options=_SERVER_OPTIONS)


def bind(server: grpc.aio.Server, host: str, port: int) -> str:
    """Binds host:port (port 0 picks one) and returns the address actually bound."""
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC on {host}:{port}")
    return f"{host}:{bound}"


# ---- errors across gRPC: one table out (servicers), one function back (clients) ----

CODE_METADATA_KEY = "mooncake-code"

_STATUS_FOR_ERROR = {
    "InvalidArgumentError": grpc.StatusCode.INVALID_ARGUMENT,
    "NoSpaceError": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "NotFoundError": grpc.StatusCode.NOT_FOUND,
    "AlreadyExistsError": grpc.StatusCode.ALREADY_EXISTS,
    "HasLeaseError": grpc.StatusCode.FAILED_PRECONDITION,
    "UnauthenticatedError": grpc.StatusCode.UNAUTHENTICATED,
    "PermissionDeniedError": grpc.StatusCode.PERMISSION_DENIED,
    "UnavailableError": grpc.StatusCode.UNAVAILABLE,
    # not UNAVAILABLE: gRPC callers retry that, and a worker without a device stays without one
    "RdmaUnavailableError": grpc.StatusCode.FAILED_PRECONDITION,
}


async def abort_with(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    """Ends an RPC with the status for a domain error, carrying its Mooncake code."""
    from mooncake_proto.errors import ErrorCode
    code = int(getattr(exc, "code", ErrorCode.INTERNAL_ERROR))
    status = _STATUS_FOR_ERROR.get(type(exc).__name__, grpc.StatusCode.INTERNAL)
    context.set_trailing_metadata(((CODE_METADATA_KEY, str(code)),))
    await context.abort(status, str(exc))


def error_from_rpc(exc: grpc.RpcError, target: str):
    """The typed MooncakeError for a failed call to `target`."""
    from mooncake_proto import errors
    for key, value in (exc.trailing_metadata() or ()):
        if key == CODE_METADATA_KEY:
            return errors.error_for_code(int(value), f"{target}: {exc.details()}")
    status = exc.code()
    detail = f"{target}: {status.name.lower()}: {exc.details()}"
    if status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                  grpc.StatusCode.CANCELLED):
        return errors.UnavailableError(detail)
    if status == grpc.StatusCode.UNAUTHENTICATED:
        return errors.UnauthenticatedError(detail)
    if status == grpc.StatusCode.PERMISSION_DENIED:
        return errors.PermissionDeniedError(detail)
    if status in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
        return errors.InvalidArgumentError(detail)
    return errors.InternalError(detail)
