"""The common batch read, planned and run in C straight from the master's answer bytes.

Client's general read path builds a Transfer per key and a request per transfer, and asks
each transport about each replica: about 4 us of Python per key, the largest share of a
4 KiB batch-of-8 read over TCP (and slower still while the master's and worker's threads
spin beside it on a small VM). Here the answer is decoded in C (native/read_answer.py), the
transports are asked once per segment instead of once per key, and one C call copies the
shm replicas and runs every worker's requests straight into the targets.

It takes a batch only when the general path would read it the same way without asking
anything more: every key present or missing, targets that are fresh bytes objects (`get`)
or one buffer per key, replicas reached over shm (DRAM) or tcp. Anything else (an error
code, RDMA, an SSD replica over shm, scatter-gather targets, an answer larger than one
chunk) and any failure (a refusal, a lost connection, a replaced segment file) leaves the
batch to the general path, which reads it again from the same answer and reports what went
wrong as it always has. Results are handed back only when every key was read.
"""
from __future__ import annotations

import errno

from mooncake_client.transports import ShmTransport, TcpTransport, ranked_transport
from mooncake_native.binding import ffi
from mooncake_native.buffers import fresh_bytes_at
from mooncake_native.read_answer import SKIPPED, ReadAnswer, Route, TooVaried
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto.errors import MooncakeError


class FastReads:
    def __init__(self, transports: list, miss_codes: tuple[int, ...]):
        """transports: the client's, in its order of preference (DESIGN.md 4)."""
        self._transports = transports
        self._tcp = next((t for t in transports if isinstance(t, TcpTransport)), None)
        self._miss_codes = frozenset(int(c) for c in miss_codes)

    def read(self, answer: bytes, parts, results: list, chunk_bytes: int,
             stalled: dict[str, str]) -> int | None:
        """Reads every key of the batch `answer` answers (parts: each key's target, None for
        `get`; in all at most chunk_bytes, what the general path reads under one lease) and
        fills results (bytes, or the size read into the buffer; None for a miss); returns the
        answer's lease_ttl_ms. None when the batch is not one it takes, or a transfer failed:
        results are then untouched, no connection it used is left in doubt, and the workers
        it waited out (a timeout) are in stalled, so that the general path does not wait for
        them a second time."""
        try:
            decoded = ReadAnswer(answer, len(results))
        except (OSError, TooVaried):
            return None  # not an answer it can plan: the general path says what is wrong
        if decoded.n_items != len(results):
            return None
        targets, values = self._targets(decoded, parts, chunk_bytes)
        if targets is None:
            return None
        plan = self._routes(decoded, stalled)
        if plan is None:
            return None
        ranks, route_of, routes, conns = plan
        done = False
        try:
            statuses = decoded.run(ranks, route_of, routes, targets,
                                   self._tcp.timeout_s if self._tcp else 1.0)
            done = all(status == 0 or status == SKIPPED for status in statuses)
            # a refusal closes its connection on the worker's side, even as the last answer
            refused = any(status < 0 for status in statuses)
        except OSError:  # out of memory before anything moved: the general path tries
            refused = True
        except BaseException:
            refused = True
            raise
        finally:
            self._settle(routes, conns, refused)
        for index, (_, addr) in conns.items():
            if routes[index].result == -errno.ETIMEDOUT:
                stalled[addr] = "timed out"
        if not done:
            return None
        results[:] = values
        return decoded.lease_ttl_ms

    def _settle(self, routes: list[Route], conns: dict, refused: bool) -> None:
        """Pools each connection whose every request was answered, closes the others (the
        general path reconnects: a restarted worker, an MCD1 one)."""
        for index, (conn, addr) in conns.items():
            route = routes[index]
            if refused or (route.requests and route.result != route.requests):
                conn.close()
            else:
                self._tcp.checkin(addr, conn)

    def _targets(self, decoded: ReadAnswer, parts, chunk_bytes: int) -> tuple[list | None, list]:
        """Per item its target pointer (NULL for a miss) and its result; (None, []) when an
        item is neither present nor missing, a target is not one buffer that holds it, or
        the batch is larger than one chunk."""
        items = decoded.codes_and_sizes()
        if sum(size for code, size in items if not code) > chunk_bytes:
            return None, []
        targets, values = [], []
        miss, null, from_buffer = self._miss_codes, ffi.NULL, ffi.from_buffer
        for i, (code, size) in enumerate(items):
            if code:
                if code not in miss:
                    return None, []
                targets.append(null)
                values.append(None)
                continue
            if parts is None:
                data, pointer = fresh_bytes_at(size)
                targets.append(pointer)
                values.append(data)
                continue
            buffers = parts[i]
            if len(buffers) != 1 or buffers[0].nbytes < size:
                return None, []
            targets.append(from_buffer("char[]", buffers[0], require_writable=True))
            values.append(size)
        return targets, values

    def _routes(self, decoded: ReadAnswer, stalled: dict[str, str]):
        """Per segment its rank (transports.ranked_transport, as the general path ranks) and
        route index; the routes, and the connections checked out for them (by route index).
        Routes are made only to segments some item will be read from. None when one of those
        is best reached some other way (rdma, a file over shm) or cannot be reached now (a
        connection attempt that timed out goes into stalled)."""
        replicas = [decoded.descriptor(s) for s in range(decoded.segments)]
        choices = [ranked_transport(self._transports, replica) for replica in replicas]
        ranks = [None if choice is None else choice[0] for choice in choices]
        used = decoded.segments_used(ranks)
        route_of, routes = [], []
        conns: dict[int, tuple] = {}  # route index -> (DataConnection, address)
        by_addr: dict[str, int] = {}
        try:
            for s, (replica, choice) in enumerate(zip(replicas, choices)):
                if not used[s]:
                    ranks[s] = None  # no item's best: nothing to connect to
                    route_of.append(-1)
                    continue
                transport = choice[1]
                if isinstance(transport, ShmTransport):
                    route = _shm_route(transport, replica)
                    if route is None:
                        break
                    route_of.append(len(routes))
                    routes.append(route)
                elif isinstance(transport, TcpTransport):
                    index = by_addr.get(replica.data_addr)
                    if index is None:
                        try:
                            conn, _ = transport.checkout(replica.data_addr)
                        except OSError as exc:
                            if isinstance(exc, TimeoutError):  # not to be waited for twice
                                stalled[replica.data_addr] = "cannot connect: timed out"
                            break
                        index = by_addr[replica.data_addr] = len(routes)
                        conns[index] = (conn, replica.data_addr)
                        routes.append(Route.tcp(conn.fd, conn.form))
                    route_of.append(index)
                else:
                    break  # rdma: its own path
            else:
                return ranks, route_of, routes, conns
        except BaseException:
            for conn, _ in conns.values():
                conn.close()
            raise
        self._settle(routes, conns, refused=False)  # none was used
        return None


def _shm_route(shm: ShmTransport, replica: pb.ReplicaDescriptor) -> Route | None:
    """The replica's mapped DRAM segment (stat'ed as the general path does per batch), or
    None for an SSD file or a segment that cannot be opened now."""
    if replica.tier == pb.TIER_SSD:
        return None
    try:
        segment = shm.segment(replica)
    except (OSError, ValueError, MooncakeError):
        return None
    return Route.shm(segment.base, segment.size_bytes)

