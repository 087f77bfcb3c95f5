"""Writes replica bytes from this worker's segments to another worker's data port.

Re-replication after a death and drains: the master asks a worker that holds a replica to copy
it to a range it reserved on another worker (MoveItem.dst_data_addr), under a WRITE grant it
signed for that worker. The mover checks the local READ grant; this module moves the bytes
with the C client the SDK uses (mooncake_native.tcp), as the other worker's data server sees
any writer: a DRAM source goes straight from the mapping, an SSD source through a bounce
buffer, CHUNK_BYTES per request (the data server accepts a request for any part of a granted
range). The copies for one destination go as pipelined exchanges over one pooled connection.
A destination that is dead, paused or cut off fails what is left within `timeout_s` of
silence (TRANSFER_FAIL); one that refuses a request fails that copy with its answer's code.
Not thread-safe: the mover runs one batch at a time.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

from mooncake_native.file_segment import FileSegment
from mooncake_native.segment import SegmentMapping
from mooncake_native.tcp import OP_WRITE, STATUS_PENDING, DataConnection, DataRequest, PeerForms
from mooncake_proto.errors import MooncakeError, TransferError, error_for_code

PEER_TIMEOUT_S = 5.0        # silence after which a destination counts as gone
CHUNK_BYTES = 4 << 20       # an SSD source is read and sent this much per request
BOUNCE_BYTES = 16 << 20     # SSD bytes read ahead of one exchange


@dataclasses.dataclass(slots=True)
class PeerCopy:
    """A granted local range to write to one destination; `error` is set when it failed."""
    source: SegmentMapping | FileSegment
    src_offset: int
    dst_segment_id: int
    dst_offset: int
    length: int
    write_grant: bytes
    error: MooncakeError | None = None


@dataclasses.dataclass(slots=True)
class _Piece:
    copy: PeerCopy
    at: int       # offset inside the copy
    length: int

    @property
    def from_file(self) -> bool:
        return isinstance(self.copy.source, FileSegment)


class PeerWriter:
    def __init__(self, timeout_s: float = PEER_TIMEOUT_S, chunk_bytes: int = CHUNK_BYTES,
                 bounce_bytes: int = BOUNCE_BYTES):
        if not 0 < chunk_bytes <= bounce_bytes:
            raise ValueError("chunk_bytes must be positive and fit in bounce_bytes")
        self.timeout_s = timeout_s
        self.chunk_bytes, self.bounce_bytes = chunk_bytes, bounce_bytes
        self._idle: dict[str, DataConnection] = {}  # data address -> a connection to reuse
        self._forms = PeerForms()  # destinations older than the aligned wire form get MCD1
        self._bounce: memoryview | None = None      # allocated on the first SSD source

    def write(self, addr: str, copies: Sequence[PeerCopy]) -> None:
        """Writes every copy to the worker at addr (host:port); failed ones get `error`."""
        round_: list[_Piece] = []
        file_bytes = 0
        for piece in self._pieces(copies):
            if piece.from_file and file_bytes + piece.length > self.bounce_bytes:
                self._run_round(addr, round_)
                round_, file_bytes = [], 0
            round_.append(piece)
            file_bytes += piece.length if piece.from_file else 0
        if round_:
            self._run_round(addr, round_)

    def close(self) -> None:
        for conn in self._idle.values():
            conn.close()
        self._idle.clear()

    def _pieces(self, copies: Sequence[PeerCopy]) -> Iterator[_Piece]:
        for copy in copies:
            step = self.chunk_bytes if isinstance(copy.source, FileSegment) else copy.length
            if copy.length == 0 or step == 0:
                yield _Piece(copy, 0, 0)
                continue
            for at in range(0, copy.length, step):
                yield _Piece(copy, at, min(step, copy.length - at))

    def _run_round(self, addr: str, pieces: list[_Piece]) -> None:
        """Reads the round's SSD pieces into the bounce buffer, then sends every piece."""
        sent: list[_Piece] = []
        requests: list[DataRequest] = []
        bounce_at = 0
        for piece in pieces:
            copy = piece.copy
            if copy.error is not None:
                continue
            start = copy.src_offset + piece.at
            if piece.from_file:
                if self._bounce is None:
                    self._bounce = memoryview(bytearray(self.bounce_bytes))
                part = self._bounce[bounce_at:bounce_at + piece.length]
                bounce_at += piece.length
                try:
                    copy.source.read_into(start, part)
                except (OSError, ValueError, MooncakeError) as exc:
                    copy.error = TransferError(f"reading the source failed: {exc}")
                    continue
            else:
                part = copy.source.view[start:start + piece.length]
            requests.append(DataRequest(OP_WRITE, copy.dst_segment_id,
                                        copy.dst_offset + piece.at, piece.length,
                                        copy.write_grant, [part]))
            sent.append(piece)
        self._exchange(addr, sent, requests)

    def _exchange(self, addr: str, pieces: list[_Piece], requests: list[DataRequest]) -> None:
        """Sends the requests, on a fresh connection again after a refusal (the destination
        closes after one); a connection that fails fails every piece still unanswered."""
        retried_stale = False
        while requests:
            try:
                conn, reused = self._checkout(addr)
            except OSError as exc:
                _fail(pieces, f"cannot connect to {addr}: {_reason(exc)}")
                return
            try:
                conn.exchange(requests, self.timeout_s)  # fills each request's status
            except OSError as exc:  # ProtocolError included: the connection is unusable
                conn.close()
                pieces, requests = _settle(addr, pieces, requests)
                if reused and not retried_stale and not isinstance(exc, TimeoutError):
                    retried_stale = True  # an idle connection the destination closed
                    continue
                _fail(pieces, f"worker at {addr}: {_reason(exc)}")
                return
            pieces, requests = _settle(addr, pieces, requests)
            if requests:
                conn.close()
            else:
                self._checkin(addr, conn)

    def _checkout(self, addr: str) -> tuple[DataConnection, bool]:
        conn = self._idle.pop(addr, None)
        if conn is not None:
            return conn, True
        return self._forms.connect(addr, self.timeout_s), False

    def _checkin(self, addr: str, conn: DataConnection) -> None:
        old = self._idle.pop(addr, None)
        if old is not None:
            old.close()
        self._idle[addr] = conn


def _settle(addr: str, pieces: list[_Piece], requests: list[DataRequest]
            ) -> tuple[list[_Piece], list[DataRequest]]:
    """Records refusals; returns the pieces (and their requests) still to send, dropping those
    of copies that failed meanwhile."""
    for piece, request in zip(pieces, requests):
        if request.status < 0 and piece.copy.error is None:
            piece.copy.error = error_for_code(
                request.status, f"worker at {addr} refused the write of segment "
                                f"{request.segment_id} range {request.offset}+{request.length}")
    left = [(p, r) for p, r in zip(pieces, requests)
            if r.status == STATUS_PENDING and p.copy.error is None]
    return [p for p, _ in left], [r for _, r in left]


def _fail(pieces: list[_Piece], reason: str) -> None:
    for piece in pieces:
        if piece.copy.error is None:
            piece.copy.error = TransferError(reason)


def _reason(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc) or type(exc).__name__
