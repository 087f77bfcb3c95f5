"""A raw client of the worker's data port for the data-server tests: exact reads, one answer,
one refusal; and a server to point it at. Each test file keeps its own way of connecting and
building requests."""
import socket

from mooncake_native.data_server import DataServer
from mooncake_proto import dataplane as wire


def start_server(worker_id: str, memory: dict, key: bytes, **kwargs) -> DataServer:
    """A C data server of worker_id on 127.0.0.1 (port 0, `addr` set) serving `memory`
    ({segment id: buffer}) under grant key `key`; kwargs as DataServer takes them."""
    server = DataServer(worker_id, memory, **kwargs)
    server.grant_key = key
    server.addr = server.start("127.0.0.1", 0)
    return server


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
