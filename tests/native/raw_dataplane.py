"""A raw client of the worker's data port for the data-server tests: exact reads, one answer,
one refusal. Each test file keeps its own way of connecting and building requests."""
import socket

from mooncake_proto import dataplane as wire


def recv_exact(sock: socket.socket, n: int) -> bytes:
    view = memoryview(bytearray(n))
    wire.recv_exact_into(sock, view)
    return bytes(view)


def response(sock: socket.socket, read: bool = False) -> tuple[int, int, bytes]:
    """One answer: (status, length, the bytes of a READ)."""
    status, length = wire.RESPONSE.unpack(recv_exact(sock, wire.RESPONSE.size))
    return status, length, recv_exact(sock, length) if read and status == 0 else b""


def refusal_of(sock: socket.socket) -> int:
    """The error status of a refused request; asserts the server then closes the connection."""
    status, length = wire.RESPONSE.unpack(recv_exact(sock, wire.RESPONSE.size))
    assert length == 0
    assert sock.recv(1) == b""
    return status
