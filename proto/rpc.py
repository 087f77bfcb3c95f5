"""The one factory for every gRPC channel and server: message sizes, keepalive, TLS, tokens.

No caller builds a channel or a listening port of its own, so one place decides how every
process talks: TLS when a `Tls` says so (a server needs a certificate and key, a caller the CA
that signed its peer's certificate), and the bearer token a channel presents on every call
(`authorization: Bearer <token>`, checked by the master: master/auth.py).

Every daemon's server also carries the standard gRPC health service (`grpc.health.v1.Health`,
`Health` below). The token check lives in the master's servicer wrapper, not in the server,
so health checks pass without a token: load balancers and kubelet probes have none, and the
answer tells nothing but "serving" or "not serving". (The channels' token interceptors add
the token to unary calls only; a health Watch, a stream, goes without one, as it may.)
"""
from __future__ import annotations

import collections
import dataclasses

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc

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
# a channel of its own connections: gRPC otherwise shares them (and their reconnect back-off)
# across a process's channels, so a new channel to a restarted master would wait out the old
# one's back-off
_CHANNEL_OPTIONS = _OPTIONS + [("grpc.use_local_subchannel_pool", 1)]
_SERVER_OPTIONS = _OPTIONS + [
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.so_reuseport", 0),
]


AUTH_METADATA_KEY = "authorization"
BEARER = "bearer "  # the scheme, matched without regard to case (RFC 6750)
MAX_TOKEN_BYTES = 4096


@dataclasses.dataclass(frozen=True)
class Tls:
    """PEM bytes: this process's certificate chain and key (what it serves with), and the CA
    it verifies the servers it calls with. Either half may be empty: no TLS that way."""
    cert: bytes = b""
    key: bytes = b""
    ca: bytes = b""

    @classmethod
    def load(cls, cert_path: str = "", key_path: str = "", ca_path: str = "") -> "Tls":
        """Reads the files given (empty paths: none); ValueError or OSError says what is wrong."""
        if bool(cert_path) != bool(key_path):
            raise ValueError("--tls-cert and --tls-key go together")
        return cls(_read_pem(cert_path, "CERTIFICATE"), _read_pem(key_path, "PRIVATE KEY"),
                   _read_pem(ca_path, "CERTIFICATE"))

    @property
    def serving(self) -> bool:
        """Servers listen with TLS."""
        return bool(self.cert)

    @property
    def calling(self) -> bool:
        """Channels use TLS and verify their server against `ca`."""
        return bool(self.ca)


NO_TLS = Tls()


def _read_pem(path: str, kind: str) -> bytes:
    if not path:
        return b""
    with open(path, "rb") as f:
        data = f.read()
    if b"-----BEGIN " not in data or kind.encode() not in data:
        raise ValueError(f"{path}: not a PEM {kind.lower()}")
    return data


def check_token(token: str) -> str:
    """The token, if it can travel in gRPC metadata: 1..4096 printable ASCII characters, no
    spaces; ValueError otherwise."""
    if not token:
        raise ValueError("empty token")
    if len(token) > MAX_TOKEN_BYTES or not all("!" <= ch <= "~" for ch in token):
        raise ValueError(f"a token is 1..{MAX_TOKEN_BYTES} printable ASCII characters "
                         "without spaces")
    return token


def bearer_token(metadata) -> str:
    """The token of a call's `authorization: Bearer <token>` metadata ("" when none)."""
    for key, value in metadata or ():
        if key == AUTH_METADATA_KEY and isinstance(value, str) \
                and value[:len(BEARER)].lower() == BEARER:
            return value[len(BEARER):].strip()
    return ""


def client_channel(target: str, tls: Tls = NO_TLS, token: str = "") -> grpc.Channel:
    """A blocking channel, for the client SDK: TLS when `tls.ca` is set, `token` on every call."""
    if tls.calling:
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(tls.ca),
                                      options=_CHANNEL_OPTIONS)
    else:
        channel = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
    return grpc.intercept_channel(channel, _BearerToken(token)) if token else channel


def aio_channel(target: str, tls: Tls = NO_TLS, token: str = "") -> grpc.aio.Channel:
    """An asyncio channel, for daemons talking to other daemons (as client_channel)."""
    interceptors = [_AioBearerToken(token)] if token else None
    if tls.calling:
        return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(tls.ca),
                                       options=_CHANNEL_OPTIONS, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS,
                                     interceptors=interceptors)


def aio_server() -> grpc.aio.Server:
    return grpc.aio.server(options=_SERVER_OPTIONS)


class Encoded:
    """An answer a servicer serialized itself (the master's GetReplicas, PutStart and
    Heartbeat answers, master/servicer.py): gRPC and the framed port send `payload` as it is.
    `key_codes` are its items' per-key codes, for the call statistics (master/metrics.py)."""

    __slots__ = ("payload", "key_codes")

    def __init__(self, payload: bytes, key_codes: list[int]):
        self.payload, self.key_codes = payload, key_codes

    def SerializeToString(self) -> bytes:  # what the framed port calls on any answer
        return self.payload


def add_servicer(server: grpc.aio.Server, add_to_server, servicer) -> None:
    """Registers `servicer` through its generated `add_..._to_server`, except that a request
    that does not decode (a string that is not UTF-8, a truncated field) is answered
    INVALID_ARGUMENT with the Mooncake code INVALID_PARAMS, as the framed port answers it,
    instead of gRPC's UNKNOWN and a traceback in the log per garbage request; and that an
    `Encoded` answer is sent as the bytes it holds."""
    add_to_server(servicer, _DecodingServer(server))


class _Undecodable:
    def __init__(self, reason: str):
        self.reason = reason


class _DecodingServer:
    """What the generated registration calls on a server, with every handler wrapped."""

    def __init__(self, server: grpc.aio.Server):
        self._server = server

    def add_generic_rpc_handlers(self, handlers) -> None:
        self._server.add_generic_rpc_handlers(tuple(_DecodingHandler(h) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self._server.add_registered_method_handlers(
            service, {name: _refusing_undecodable(h) for name, h in handlers.items()})


class _DecodingHandler(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler):
        self._inner = inner

    def service(self, handler_call_details):
        return _refusing_undecodable(self._inner.service(handler_call_details))


def _refusing_undecodable(handler):
    """A unary handler whose decoding failure reaches the call as a refusal, and which sends
    an Encoded answer's bytes (the others: none of ours, left as they are)."""
    if handler is None or handler.unary_unary is None:
        return handler
    decode, behaviour = handler.request_deserializer, handler.unary_unary
    encode = handler.response_serializer

    def serialize(response) -> bytes:
        return response.payload if type(response) is Encoded else encode(response)

    def deserialize(raw: bytes):
        try:
            return decode(raw)
        except DecodeError as exc:
            return _Undecodable(str(exc))

    async def call(request, context):
        if isinstance(request, _Undecodable):
            from mooncake_proto.errors import InvalidArgumentError
            await abort_with(context, InvalidArgumentError(
                f"undecodable request: {request.reason}"))
        return await behaviour(request, context)

    return grpc.unary_unary_rpc_method_handler(
        call, request_deserializer=deserialize, response_serializer=serialize)


def bind(server: grpc.aio.Server, host: str, port: int, tls: Tls = NO_TLS) -> str:
    """Binds host:port (port 0 picks one), with TLS when `tls.cert` is set, and returns the
    address actually bound."""
    address = f"{host}:{port}"
    if tls.serving:
        bound = server.add_secure_port(
            address, grpc.ssl_server_credentials([(tls.key, tls.cert)]))
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot bind gRPC on {address}")
    return f"{host}:{bound}"


class Health:
    """The health service on one daemon's server: `""` (the whole server) and `service` (the
    full name of the daemon's own service) answer NOT_SERVING until `set_serving(True)`,
    and NOT_SERVING for good after `shutdown()`. Call `start()` before the server serves."""

    def __init__(self, server: grpc.aio.Server, service: str):
        self._servicer = grpc_health.aio.HealthServicer()
        self.services = ("", service)
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)

    async def start(self) -> "Health":
        await self.set_serving(False)
        return self

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving \
            else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self.services:
            await self._servicer.set(name, status)

    async def shutdown(self) -> None:
        """NOT_SERVING from now on (watchers hear it) while the server drains its calls."""
        await self._servicer.enter_graceful_shutdown()


# every MasterService and WorkerService call is unary-unary: a stream would go out without
# the token, and the master would refuse it (closed by default)
class _CallDetails(collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                         "compression")), grpc.ClientCallDetails):
    pass


class _BearerToken(grpc.UnaryUnaryClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call of a blocking channel."""

    def __init__(self, token: str):
        self._metadatum = (AUTH_METADATA_KEY, f"Bearer {check_token(token)}")

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(_CallDetails(
            details.method, details.timeout, (*(details.metadata or ()), self._metadatum),
            details.credentials, getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None)), request)


class _AioBearerToken(grpc.aio.UnaryUnaryClientInterceptor):
    """The same for an asyncio channel."""

    def __init__(self, token: str):
        self._metadatum = (AUTH_METADATA_KEY, f"Bearer {check_token(token)}")

    async def intercept_unary_unary(self, continuation, details, request):
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._metadatum)
        return await continuation(grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials,
            details.wait_for_ready), request)


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
    if status == grpc.StatusCode.UNIMPLEMENTED:
        return errors.NotSupportedError(detail)
    return errors.InternalError(detail)
