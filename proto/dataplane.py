"""The TCP data-plane wire format between clients and a worker's data port.

A request is a fixed header, the grant, then (for WRITE) the payload. Requests may be
pipelined on one persistent connection; responses come back in order. A malformed or
unauthorised request gets an error response and the connection is closed. Both ends are in C
(native/src/tcp_client.c, native/src/server_conn.c); this module is the format's Python
statement, used by tests that speak to a worker byte by byte.

    request:  magic "MCD1", op u8, flags u8, grant_len u16, segment_id u32, offset u64, length u64
    response: status i32 (0 or a Mooncake code), length u64, then `length` bytes for a READ
"""
from __future__ import annotations

import socket
import struct

MAGIC = b"MCD1"
REQUEST = struct.Struct("!4sBBHIQQ")
RESPONSE = struct.Struct("!iQ")
OP_READ = 1
OP_WRITE = 2
MAX_GRANT_LEN = 2048


def encode_request(op: int, segment_id: int, offset: int, length: int, grant: bytes) -> bytes:
    return REQUEST.pack(MAGIC, op, 0, len(grant), segment_id, offset, length) + grant


def recv_exact_into(sock: socket.socket, view: memoryview) -> None:
    """Fills view from sock (recv_into: straight into the caller's memory)."""
    while view.nbytes:
        n = sock.recv_into(view)
        if n == 0:
            raise ConnectionError("peer closed the connection mid-message")
        view = view[n:]
