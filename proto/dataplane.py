"""The TCP data-plane wire format between clients and a worker's data port.

A request is a fixed header, the grant, then (for WRITE) the payload. Requests may be
pipelined on one persistent connection; responses come back in order. A malformed or
unauthorised request gets an error response and the connection is closed. Both ends are in C
(native/src/tcp_client.c, native/src/server_conn.c); this module is the format's Python
statement, used by tests that speak to a worker byte by byte.

    request:  magic "MCD1", op u8, flags u8, grant_len u16, segment_id u32, offset u64, length u64
    response: status i32 (0 or a Mooncake code), length u64, then `length` bytes for a READ

The aligned form, magic "MCD2" (what our client sends), pads with zeros to multiples of
ALIGN (64) bytes: the request header with its grant, the response header (to 64 bytes), and
every payload in either direction. Payloads then start 64-byte aligned in the stream. With
MCD1's 12-byte response header they start misaligned, and on the AMD EPYC VMs we measure on
the kernel's socket copies (rep movsb) of a misaligned 4 MiB payload run 2-3 times slower:
1.7-2 ms per 4 MiB read against 0.8-1.1 ms aligned. The worker answers each request in the
form it came in, so MCD1 clients keep working.

Workers before the aligned form (native library < 3.3.0) speak only MCD1. An MCD2 header is
malformed to them: they answer MCD1_ONLY_REFUSAL (INVALID_PARAMS, length 0, 12 bytes) as soon
as its 28 bytes are in, without reading the grant or a payload, and close. Our client takes
exactly that, as the first answer of an exchange followed by the close, to mean such a worker:
it connects again, runs the exchange once more in MCD1 (nothing of it had been applied) and
keeps MCD1 for that address (native/tcp.py, PeerForms). A worker that speaks MCD2 answers
every MCD2 request, a refusal included, with a 64-byte header.
"""
from __future__ import annotations

import socket
import struct

from mooncake_proto.errors import ErrorCode

MAGIC = b"MCD1"
MAGIC_ALIGNED = b"MCD2"
REQUEST = struct.Struct("!4sBBHIQQ")
RESPONSE = struct.Struct("!iQ")
ALIGN = 64
ALIGNED_RESPONSE_BYTES = 64
OP_READ = 1
OP_WRITE = 2
MAX_GRANT_LEN = 2048
MCD1_ONLY_REFUSAL = RESPONSE.pack(ErrorCode.INVALID_PARAMS, 0)  # an old worker's answer to MCD2


def pad(n: int) -> int:
    """The zeros that follow n bytes in the aligned form."""
    return -n % ALIGN


def encode_request(op: int, segment_id: int, offset: int, length: int, grant: bytes,
                   aligned: bool = False) -> bytes:
    """A request's header and grant (and, aligned, their padding); a WRITE's payload follows,
    aligned: padded with pad(length) zeros."""
    head = REQUEST.pack(MAGIC_ALIGNED if aligned else MAGIC, op, 0, len(grant), segment_id,
                        offset, length) + grant
    return head + bytes(pad(len(head))) if aligned else head


def encode_response(status: int, payload: bytes = b"", length: int | None = None,
                    aligned: bool = False) -> bytes:
    """An answer: its header (`length` defaults to the payload's), then the payload (and,
    aligned, its padding)."""
    length = len(payload) if length is None else length
    head = RESPONSE.pack(status, length)
    if not aligned:
        return head + payload
    return head + bytes(ALIGNED_RESPONSE_BYTES - RESPONSE.size) + payload + \
        bytes(pad(len(payload)))


def recv_exact_into(sock: socket.socket, view: memoryview) -> None:
    """Fills view from sock (recv_into: straight into the caller's memory)."""
    while view.nbytes:
        n = sock.recv_into(view)
        if n == 0:
            raise ConnectionError("peer closed the connection mid-message")
        view = view[n:]
