"""The framed metadata port: the master's object calls as one length-prefixed protobuf each way.

gRPC stays the complete control plane. This port carries the same calls, with the same
request and response messages and the same Mooncake codes, for clients that need a metadata
round trip faster than Python gRPC allows (measured here: about 225 us per unary call before
any work, against about 30 us for a framed exchange). Clients find the port through
MasterService.Hello. One request in flight per connection; answers come back in order.

    request:  magic "MCM1", method u8, length u32, then the request message
    response: status i32 (0, or the Mooncake code that ended the whole call), length u32,
              then the response message (status 0) or a UTF-8 error message

Authentication (a master started with --tokens, master/auth.py): a connection presents its
bearer token once, in a frame of method 0 before its first call:

    auth:     magic "MCM1", method 0 (AUTH), length u32 (at most 4096), then the token (ASCII)
    answer:   status 0 and length 0 when the master knows the token (an open master takes any);
              else status -1300 (UNAUTHENTICATED) and a message, and the master closes the
              connection

The token then stands for every call on that connection and is checked on each call exactly
as gRPC's `authorization: Bearer` metadata is: a call on a connection that has not
authenticated is answered -1300, one its token's role may not make -1301
(PERMISSION_DENIED); either way the connection stays open. Under TLS the master does not
open this port at all (it has no TLS): clients then make every call over gRPC.
"""
from __future__ import annotations

import socket
import struct

from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto.rpc import MAX_TOKEN_BYTES

MAGIC = b"MCM1"
REQUEST = struct.Struct("!4sBI")
RESPONSE = struct.Struct("!iI")
MAX_FRAME_BYTES = 64 << 20  # as gRPC's message cap (proto/rpc.py)
# the answer to a connection the master would not serve (at its connection cap): sent before
# reading anything, so the client knows its call was not made. Not a Mooncake code.
STATUS_BUSY = -10001

AUTH = 0  # the method id of the auth frame (its body is the token, not a message)


def auth_frame(token: str) -> bytes:
    body = token.encode("ascii")
    return REQUEST.pack(MAGIC, AUTH, len(body)) + body


# method id -> (MasterService method, request type, response type)
METHODS = {
    1: ("PutStart", pb.PutStartRequest, pb.PutStartResponse),
    2: ("PutEnd", pb.PutFinishRequest, pb.KeysResponse),
    3: ("PutRevoke", pb.PutFinishRequest, pb.KeysResponse),
    4: ("GetReplicas", pb.KeysRequest, pb.GetReplicasResponse),
    5: ("Exists", pb.KeysRequest, pb.ExistsResponse),
    6: ("Remove", pb.RemoveRequest, pb.KeysResponse),
    7: ("ExistsPrefix", pb.KeysRequest, pb.ExistsPrefixResponse),
}
METHOD_IDS = {name: method_id for method_id, (name, _, _) in METHODS.items()}
# safe to send again over gRPC when a framed call's answer was lost: they change no object
# (leases aside); the others could double-allocate or revoke
IDEMPOTENT = frozenset({"GetReplicas", "Exists", "ExistsPrefix"})

RECV_CHUNK_BYTES = 1 << 20
_TIMEVAL = struct.Struct("@ll")


def use_kernel_timeouts(sock: socket.socket, timeout_s: float) -> None:
    """Makes sock blocking, bounded by the kernel's SO_RCVTIMEO/SO_SNDTIMEO instead of a Python
    socket timeout, which polls before every recv and send: two system calls where one does,
    on every frame. A call that times out raises BlockingIOError (EAGAIN), an OSError as
    socket.timeout is."""
    sock.settimeout(None)
    timeout_s = max(timeout_s, 0.001)  # a zero timeval would mean "wait forever"
    seconds = int(timeout_s)
    timeval = _TIMEVAL.pack(seconds, int((timeout_s - seconds) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def recv_exact(sock: socket.socket, length: int, at_boundary: bool = False) -> bytes | None:
    """Exactly `length` bytes, read as they arrive (a claimed length alone allocates nothing
    up front); None when the peer closed before the first byte and `at_boundary` allows it
    (a clean close between frames)."""
    chunks, got = [], 0
    while got < length:
        chunk = sock.recv(min(RECV_CHUNK_BYTES, length - got))
        if not chunk:
            if got == 0 and at_boundary:
                return None
            raise ConnectionError("peer closed the connection mid-frame")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
