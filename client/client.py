"""`Client`: the SDK inference servers embed. Metadata through the master, bytes through transports.

Every call is batch-shaped inside: one master round trip per phase for the whole batch, then
transfers grouped per transport. A miss is `None`/`False`; every fault raises a typed error.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Iterable, Sequence

from mooncake_client.call_gate import CallGate, gated
from mooncake_client.fast_reads import FastReads
from mooncake_client.master_link import MasterLink, security
from mooncake_client.rdma_transport import RdmaTransport
from mooncake_client.transports import (ShmTransport, TcpTransport, Transfer, describe,
                                        ranked_transport)
from mooncake_native.buffers import RegisteredBuffers, as_parts, parts_size
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto.discovery import MasterLocator
from mooncake_proto.errors import (ErrorCode, InvalidArgumentError, LeaseExpiredError,
                                   MooncakeError, NoSpaceError, NotSupportedError,
                                   TransferError, error_for_code)
from mooncake_proto.identity import node_id

KNOWN_TRANSPORTS = ("shm", "rdma", "tcp")  # the default preference order (DESIGN.md 4)
MISS_CODES = (ErrorCode.OBJECT_NOT_FOUND, ErrorCode.REPLICA_IS_NOT_READY)
PUT_RETRY_MAX_S = 0.5  # a put told to wait for eviction asks again at least this often
READ_CHUNK_BYTES = 256 << 20  # a long batch read checks (and renews) its lease between chunks
# smaller batches read as fast through the general path (fast_reads.py): against it, paired
# runs found the C path 3-5 us slower at 2 keys, even at 4, 7-17 us faster at 8
FAST_READ_MIN_KEYS = 4
# what one key of a batch read can cause (a buffer too small, a lost replica, a lease run out):
# callers that answer per key (the compat store, the integrations) read such a batch again key
# by key, so that only that key fails; other faults (no master, no permission) are the call's
ONE_KEY_FAULTS = (InvalidArgumentError, TransferError, LeaseExpiredError)
_TIER_NAMES = {pb.TIER_DRAM: "DRAM", pb.TIER_SSD: "SSD"}
_STATE_NAMES = {pb.REPLICA_PENDING: "PENDING", pb.REPLICA_COMPLETE: "COMPLETE"}


@dataclasses.dataclass(frozen=True)
class ReplicaConfig:
    replica_num: int = 1
    preferred_worker: str | None = None
    soft_pin: bool = False
    hard_pin: bool = False


@dataclasses.dataclass(frozen=True)
class ReplicaInfo:
    worker_id: str
    tier: str          # "DRAM" or "SSD"
    state: str         # "PENDING" or "COMPLETE"
    segment_id: int
    offset: int
    length: int
    data_addr: str


@dataclasses.dataclass(frozen=True)
class DrainProgress:
    """One answer of `drain_worker`: the worker's objects that still have no replica elsewhere."""
    worker_id: str
    draining: bool
    objects_left: int
    bytes_left: int


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    """One object of `list_keys`."""
    key: str
    size: int
    state: str                # "PENDING" or "COMPLETE"
    tiers: tuple[str, ...]    # one per replica: "DRAM" or "SSD"
    soft_pin: bool
    hard_pin: bool
    last_access_age_s: float  # since its put's commit or its last get or exists


class BatchError(MooncakeError):
    """Some keys of a batch failed; `errors` maps each failed key to its error. `results`,
    where the call sets it, holds what every key came to, in order (None where it failed)."""

    def __init__(self, errors: dict[str, MooncakeError], results: list | None = None):
        first = next(iter(errors.values()))
        super().__init__(f"{len(errors)} key(s) failed, first: {first}", code=first.code)
        self.errors = errors
        self.results = results


class Client:
    def __init__(self, master: str | Sequence[str], transports: Iterable[str] = KNOWN_TRANSPORTS,
                 rpc_timeout_s: float = 10.0, transfer_timeout_s: float = 10.0,
                 framed_metadata: bool = True, put_wait_s: float = 10.0,
                 token: str | None = None, tls_ca: str | None = None,
                 master_retry_s: float = 15.0):
        """master: "H:P[,H:P...]" (or a list of those), or "etcd://H:P[,H:P...]/CLUSTER_ID"
        to follow the leader an etcd-HA cluster elects (proto/discovery.py).
        master_retry_s: how long a master call keeps trying while no master serves it (a
        restart, a fail-over): other addresses at once, then again with backoff; 0 tries
        each address once. Then UnavailableError (so a call takes at most about this plus
        one rpc_timeout_s). Calls that may have reached a master are not repeated unless
        that is harmless (SAFE_TO_REPEAT).
        framed_metadata: send object calls over the master's framed metadata port when it
        offers one (found with Hello; gRPC otherwise, and for everything else).
        put_wait_s: how long a put waits for eviction to free room (a full pool evicts, and
        demotes to SSD, rather than refuse writes) before it raises NoSpaceError.
        token: the bearer token sent on every master call (None: $MOONCAKE_TOKEN; "": none).
        tls_ca: a PEM file of the CA that signed the master's and workers' certificates: gRPC
        then uses TLS (None: $MOONCAKE_TLS_CA; "": no TLS)."""
        self._gate = CallGate()  # close() while calls run (call_gate.py)
        locator = MasterLocator(master)  # InvalidArgumentError for a bad spec
        if master_retry_s < 0:
            raise InvalidArgumentError(f"master_retry_s must be >= 0, got {master_retry_s}")
        self.transport_names = tuple(transports)
        unknown = [t for t in self.transport_names if t not in KNOWN_TRANSPORTS]
        if unknown or not self.transport_names:
            raise InvalidArgumentError(
                f"transports must be chosen from {KNOWN_TRANSPORTS}, got {self.transport_names}")
        self.put_wait_s = put_wait_s
        token, tls = security(token, tls_ca)
        self.node_id = node_id()
        tcp = TcpTransport(transfer_timeout_s)  # also rdma's fallback: one connection pool
        self._transports = [ShmTransport(self.node_id) if name == "shm"
                            else RdmaTransport(transfer_timeout_s, fallback=tcp, tls=tls)
                            if name == "rdma" else tcp for name in self.transport_names]
        self._registered = RegisteredBuffers()
        self._fast_reads = FastReads(self._transports, MISS_CODES)
        self._link = MasterLink(locator, rpc_timeout_s, master_retry_s, framed_metadata,
                                token, tls)

    # ---- lifecycle ----

    def close(self) -> None:
        """Frees the client's connections and shm mappings: at once when no call is running,
        else when the last running call returns. Calls made after it raise
        ClientClosedError; a second close does nothing."""
        self._gate.close(self._release)

    def _release(self) -> None:
        for transport in self._transports:
            transport.close()
        self._link.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- writes ----

    def put(self, key: str, data, config: ReplicaConfig | None = None) -> None:
        self.batch_put_from([key], [data], config)

    def put_from(self, key: str, buffer, config: ReplicaConfig | None = None,
                 size: int | None = None) -> int:
        """Writes buffer's bytes (see batch_put_from for what a buffer may be)."""
        return self.batch_put_from([key], [buffer], config, None if size is None else [size])[0]

    def put_parts(self, key: str, parts: Sequence, config: ReplicaConfig | None = None) -> int:
        """Writes the concatenation of several buffers as one object (no joining copy)."""
        return self.batch_put_from([key], [list(parts)], config)[0]

    def batch_put(self, keys: Sequence[str], values: Sequence, config: ReplicaConfig | None = None) -> None:
        self.batch_put_from(keys, values, config)

    @gated
    def batch_put_from(self, keys: Sequence[str], buffers: Sequence,
                       config: ReplicaConfig | None = None,
                       sizes: Sequence | None = None) -> list[int]:
        """Writes each buffer under its key; an existing key counts as success (first writer wins).

        A buffer is any buffer-protocol object (bytes, bytearray, memoryview, numpy array, CPU
        torch tensor), a raw pointer (int) inside a registered buffer with its size in
        `sizes`, or a list of those forming one object in order (scatter-gather). Bytes go
        from these buffers to the segment or socket without a Python-level copy.

        Returns the byte counts. Keys that fail are revoked and raised together in a BatchError
        (or as their own error for a single key) after the others are committed.
        """
        keys = list(keys)
        parts = self._buffers_parts(keys, buffers, sizes, writable=False)
        config = config or ReplicaConfig()
        wire_config = pb.ReplicaConfig(replica_num=config.replica_num,
                                       preferred_worker=config.preferred_worker or "",
                                       soft_pin=config.soft_pin, hard_pin=config.hard_pin)
        errors: dict[str, MooncakeError] = {}
        todo = list(range(len(keys)))
        give_up_at = time.monotonic() + self.put_wait_s
        while todo:
            waiting = self._put_round([keys[i] for i in todo], [parts[i] for i in todo],
                                      wire_config, errors)
            todo = [todo[j] for j in waiting]
            if not todo:
                break
            pause = min(max(waiting.values()), PUT_RETRY_MAX_S)
            if time.monotonic() + pause > give_up_at:
                for i in todo:
                    errors[keys[i]] = NoSpaceError(
                        f"put {keys[i]!r}: eviction did not free room within {self.put_wait_s}s")
                break
            time.sleep(pause)
        if errors:
            raise next(iter(errors.values())) if len(errors) == 1 and len(keys) == 1 \
                else BatchError(errors)
        return [parts_size(p) for p in parts]

    def _put_round(self, keys: list[str], parts: list[list[memoryview]],
                   config: pb.ReplicaConfig, errors: dict[str, MooncakeError]) -> dict[int, float]:
        """One PutStart, the writes and one PutEnd for keys; failures go into errors. Returns
        the positions (in keys) the master asked to try again once eviction has freed room,
        with the seconds it suggested."""
        started = time.monotonic()
        reply = self._link.call("PutStart", pb.PutStartRequest(
            keys=keys, sizes=[parts_size(p) for p in parts], client_node_id=self.node_id,
            config=config))
        deadline = started + reply.put_timeout_ms / 1000
        waiting: dict[int, float] = {}
        started_puts: dict[str, tuple[int, list[Transfer]]] = {}
        for j, (key, object_parts, item) in enumerate(zip(keys, parts, reply.items)):
            if item.status.code == ErrorCode.OK:
                started_puts[key] = (item.put_id,
                                     [Transfer(r, object_parts, deadline) for r in item.replicas])
            elif item.status.code == ErrorCode.SPACE_BEING_FREED:
                waiting[j] = item.retry_after_ms / 1000
            elif item.status.code != ErrorCode.OBJECT_ALREADY_EXISTS:
                errors[key] = error_for_code(item.status.code, f"put {key!r}: {item.status.message}")
        try:
            failed = self._write_all(started_puts)
        except BaseException:
            self._revoke_quietly(started_puts, started_puts)  # nothing may stay PENDING for us
            raise
        if failed:
            self._revoke_quietly(started_puts, failed)
            errors.update(failed)
        committed = [k for k in started_puts if k not in failed]
        if committed:
            finish = pb.PutFinishRequest(keys=committed,
                                         put_ids=[started_puts[k][0] for k in committed])
            for st in self._link.call("PutEnd", finish).statuses:
                if st.code != ErrorCode.OK:
                    errors[st.key] = error_for_code(st.code, f"put {st.key!r}: {st.message}")
        return waiting

    def _write_all(self, started_puts) -> dict[str, MooncakeError]:
        """Writes every replica of every key; returns the keys whose writes failed."""
        per_transport: dict[object, list[Transfer]] = {}
        for key, (_, transfers) in started_puts.items():
            for t in transfers:
                transport = self._transport_for(t.replica)
                if transport is None:
                    t.error = TransferError(
                        f"put {key!r}: no allowed transport ({', '.join(self.transport_names)}) "
                        f"reaches worker {t.replica.worker_id}")
                else:
                    per_transport.setdefault(transport, []).append(t)
        for transport, transfers in per_transport.items():
            transport.write(transfers)
        failed: dict[str, MooncakeError] = {}
        for key, (_, transfers) in started_puts.items():
            error = next((t.error for t in transfers if t.error is not None), None)
            if error is not None:
                failed[key] = error
        return failed

    def _revoke_quietly(self, started_puts, keys) -> None:
        """Revokes keys' PENDING puts; a failure here only delays the master's own timeout."""
        keys = list(keys)
        try:
            self._link.call("PutRevoke", pb.PutFinishRequest(
                keys=keys, put_ids=[started_puts[k][0] for k in keys]))
        except MooncakeError:
            pass

    def _transport_for(self, replica: pb.ReplicaDescriptor):
        for transport in self._transports:
            if transport.usable(replica):
                return transport
        return None

    # ---- reads ----

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None on a miss."""
        return self.batch_get([key])[0]

    def get_into(self, key: str, buffer, size: int | None = None) -> int | None:
        """Reads the object into buffer (see batch_get_into); returns its size, or None on a miss."""
        return self.batch_get_into([key], [buffer], None if size is None else [size])[0]

    @gated
    def batch_get(self, keys: Sequence[str]) -> list[bytes | None]:
        return self._read(list(keys), None)

    @gated
    def batch_get_into(self, keys: Sequence[str], buffers: Sequence,
                       sizes: Sequence | None = None) -> list[int | None]:
        """Reads each object into its buffer: a writable buffer-protocol object, a registered
        raw pointer (int) with its capacity in `sizes`, or a list of those the object's bytes
        fill in order (scatter-gather). Returns the sizes read, None for a miss."""
        keys = list(keys)
        return self._read(keys, self._buffers_parts(keys, buffers, sizes, writable=True))

    # ---- buffers ----

    def register_buffer(self, address: int, size: int) -> None:
        """Registers raw memory (e.g. a KV-cache pool) so put_from/get_into accept pointers into it."""
        self._registered.register(address, size)

    def unregister_buffer(self, address: int) -> bool:
        return self._registered.unregister(address)

    def _buffers_parts(self, keys, buffers, sizes, writable: bool) -> list[list[memoryview]]:
        if len(keys) != len(buffers) or (sizes is not None and len(sizes) != len(keys)):
            raise InvalidArgumentError(f"{len(keys)} keys but {len(buffers)} buffers"
                                       + ("" if sizes is None else f" and {len(sizes)} sizes"))
        if sizes is None:
            sizes = [None] * len(keys)
        return [as_parts(b, writable, s, self._registered) for b, s in zip(buffers, sizes)]

    def _read(self, keys: list[str], parts: list[list[memoryview]] | None):
        """One GetReplicas for the batch, then reads in chunks of READ_CHUNK_BYTES: before a
        chunk, a lease past half its life is renewed (a second GetReplicas for the keys
        left, with fresh replicas and grants); after it, a chunk that outlived its lease
        raises LeaseExpiredError rather than return bytes that may have been overwritten."""
        results: list = [None] * len(keys)
        todo = list(range(len(keys)))
        while todo:
            leased_at = time.monotonic()
            reply = self._link.call("GetReplicas", pb.KeysRequest(keys=[keys[i] for i in todo]),
                                    raw=True)
            stalled: dict[str, str] = {}  # workers the C path waited out: not asked again
            if type(reply) is bytes:
                ttl_ms = self._fast_reads.read(reply, parts, results, READ_CHUNK_BYTES,
                                               stalled) \
                    if len(todo) == len(keys) >= FAST_READ_MIN_KEYS else None
                if ttl_ms is not None:
                    read = sum(result is not None for result in results)
                    if read:  # as below: only bytes read are checked against their lease
                        _check_lease(leased_at, ttl_ms, read)
                    return results
                reply = pb.GetReplicasResponse.FromString(reply)
            ttl_s = reply.lease_ttl_ms / 1000
            pending = self._plan_reads(keys, parts, todo, reply.items, stalled)
            todo = []
            while pending:
                chunk, pending = _take_chunk(pending, READ_CHUNK_BYTES)
                self._read_with_fallback(keys, chunk)
                _check_lease(leased_at, reply.lease_ttl_ms, len(chunk))
                for i, _, transfer in chunk:
                    results[i] = transfer.result if parts is None else transfer.replica.length
                if pending and time.monotonic() > leased_at + ttl_s / 2:
                    todo = [entry[0] for entry in pending]  # renew for what is left
                    break
        return results

    def _plan_reads(self, keys: list[str], parts, indices: list[int], items,
                    stalled: dict[str, str] | None = None):
        """(index, replica candidates, Transfer) for each key of `indices` that is present.
        stalled: data addresses whose transfers just timed out (with the reason): their tcp
        replicas are not tried again; a key with no other fails as if they had been."""
        pending: list[tuple[int, list[pb.ReplicaDescriptor], Transfer]] = []
        for i, item in zip(indices, items):
            code = item.status.code
            if code:
                if code in MISS_CODES:
                    continue
                raise error_for_code(code, f"get {keys[i]!r}: {item.status.message}")
            target = None
            if parts is not None:
                target, size = parts[i], item.size
                if len(target) != 1 or target[0].nbytes != size:  # else: exactly the object
                    capacity = parts_size(target)
                    if capacity < size:
                        raise InvalidArgumentError(f"get {keys[i]!r}: object has {size} bytes, "
                                                   f"buffer only {capacity}")
                    target = _trim(target, size)
            candidates = self._ordered(item.replicas)
            if not candidates:
                raise TransferError(f"get {keys[i]!r}: no allowed transport "
                                    f"({', '.join(self.transport_names)}) reaches any replica")
            if stalled:
                candidates = _without_stalled(keys[i], candidates, stalled)
            pending.append((i, candidates, Transfer(candidates[0][1], target)))
        return pending

    def _read_with_fallback(self, keys, pending) -> None:
        """Reads each key from its best replica, moving to the next replica when one fails."""
        attempt = 0
        while pending:
            by_transport: dict[object, list] = {}
            for entry in pending:
                transport, replica = entry[1][attempt]
                if attempt:  # a Transfer starts out on its first candidate
                    entry[2].reset(replica)
                by_transport.setdefault(transport, []).append(entry)
            retry = []
            for transport, entries in by_transport.items():
                transport.read([e[2] for e in entries])
                for entry in entries:
                    error = entry[2].error
                    if error is None:
                        continue
                    if attempt + 1 >= len(entry[1]):
                        raise _every_replica_failed(keys[entry[0]], error) from error
                    retry.append(entry)
            pending, attempt = retry, attempt + 1

    def _ordered(self, replicas) -> list[tuple[object, pb.ReplicaDescriptor]]:
        """Replica choice (DESIGN.md 4): local shm, then remote DRAM, then SSD; transports in the
        order the caller allowed them."""
        if len(replicas) == 1:  # the common case, without the sort
            transport = self._transport_for(replicas[0])
            return [] if transport is None else [(transport, replicas[0])]
        choices = []
        for replica in replicas:
            choice = ranked_transport(self._transports, replica)
            if choice is not None:
                choices.append((choice[0], choice[1], replica))
        choices.sort(key=lambda c: c[0])
        return [(t, r) for _, t, r in choices]

    # ---- metadata ----

    @gated
    def master_id(self) -> str:
        """The serving master's id, asked of it: a check that a master serves this client
        (through restarts and fail-overs, as every call)."""
        return self._link.call("Hello", pb.HelloRequest()).master_id

    def exists(self, key: str) -> bool:
        return self.batch_exists([key])[0]

    @gated
    def batch_exists(self, keys: Sequence[str]) -> list[bool]:
        return self._batch_exists(keys)

    def _batch_exists(self, keys: Sequence[str]) -> list[bool]:
        statuses = self._link.call("Exists", pb.KeysRequest(keys=list(keys))).statuses
        out = []
        for st in statuses:
            if st.code not in (ErrorCode.OK, *MISS_CODES):
                raise error_for_code(st.code, f"exists {st.key!r}: {st.message}")
            out.append(st.code == ErrorCode.OK)
        return out

    @gated
    def batch_exists_prefix(self, keys: Sequence[str]) -> int:
        """How many of keys, from the first, are all present: an inference server stores a
        prompt's KV pages one key each and asks how long a prefix it can load. One master
        round trip, which stops at the first absent key; the present ones get a read lease,
        as with batch_exists. A fault on a key inside the batch raises, as there."""
        keys = list(keys)
        if not keys:
            return 0
        if self._link.knows.get("ExistsPrefix") is False:
            return _present_prefix(self._batch_exists(keys))
        request = pb.KeysRequest(keys=keys)
        try:
            if "ExistsPrefix" not in self._link.knows:
                # first asked over gRPC, whose UNIMPLEMENTED tells an older master (its framed
                # port would refuse the unknown method as a malformed frame)
                answer = self._link.grpc_call("ExistsPrefix", request)
                self._link.knows["ExistsPrefix"] = True
            else:
                answer = self._link.call("ExistsPrefix", request)
        except NotSupportedError:
            # an older master: the per-key answer serves, in one call still (it leases the
            # present keys past the first miss too)
            self._link.knows["ExistsPrefix"] = False
            return _present_prefix(self._batch_exists(keys))
        stopped_by = answer.stopped_by
        if answer.present < len(keys) and stopped_by.code not in MISS_CODES:
            raise error_for_code(stopped_by.code, f"exists {stopped_by.key!r}: {stopped_by.message}")
        return answer.present

    def remove(self, key: str, force: bool = False) -> bool:
        """Removes key; False when it did not exist. HasLeaseError while leased, unless force."""
        return self.batch_remove([key], force)[0]

    @gated
    def batch_remove(self, keys: Sequence[str], force: bool = False) -> list[bool]:
        """remove for each key, in one master round trip: False for a key that did not exist.
        Keys that fail (HasLeaseError while leased, unless force) are raised together in a
        BatchError, with the others' answers in its `results` (a single key: its own error)."""
        keys = list(keys)
        statuses = self._link.call("Remove", pb.RemoveRequest(keys=keys, force=force)).statuses
        removed, errors = [], {}
        for st in statuses:
            if st.code in (ErrorCode.OK, ErrorCode.OBJECT_NOT_FOUND):
                removed.append(st.code == ErrorCode.OK)
            else:
                errors[st.key] = error_for_code(st.code, f"remove {st.key!r}: {st.message}")
                removed.append(None)
        if errors:
            raise next(iter(errors.values())) if len(keys) == 1 else BatchError(errors, removed)
        return removed

    @gated
    def remove_all(self, force: bool = False) -> int:
        return self._link.call("RemoveAll", pb.RemoveAllRequest(force=force)).removed

    def get_replicas(self, key: str) -> list[ReplicaInfo]:
        """The replicas of key (empty on a miss), for tools and tests. Grants a read lease."""
        return self.batch_get_replicas([key])[0]

    @gated
    def batch_get_replicas(self, keys: Sequence[str]) -> list[list[ReplicaInfo]]:
        """get_replicas for each key, in one master round trip."""
        keys = list(keys)
        items = self._link.call("GetReplicas", pb.KeysRequest(keys=keys)).items
        out = []
        for key, item in zip(keys, items):
            if item.status.code and item.status.code not in MISS_CODES:
                raise error_for_code(item.status.code,
                                     f"get_replicas {key!r}: {item.status.message}")
            out.append([ReplicaInfo(r.worker_id, _TIER_NAMES.get(r.tier, "?"),
                                    _STATE_NAMES.get(r.state, "?"), r.segment_id, r.offset,
                                    r.length, r.data_addr)
                        for r in item.replicas] if not item.status.code else [])
        return out

    @gated
    def list_keys(self, prefix: str = "", limit: int = 1000,
                  start_after: str = "") -> tuple[list[KeyInfo], bool]:
        """The objects whose keys start with prefix, after start_after, in key order, at most
        limit (the master caps it at 10,000); and whether more match (ask again with the
        last key as start_after). Needs an admin token on a master with --tokens. Grants no
        lease and counts as no access."""
        reply = self._link.grpc_call("ListKeys", pb.ListKeysRequest(
            prefix=prefix, limit=limit, start_after=start_after))
        return [KeyInfo(k.key, k.size, _STATE_NAMES.get(k.state, "?"),
                        tuple(_TIER_NAMES.get(t, "?") for t in k.tiers), k.soft_pin,
                        k.hard_pin, k.last_access_age_s) for k in reply.keys], reply.truncated

    @gated
    def drain_worker(self, worker_id: str, cancel: bool = False) -> DrainProgress:
        """Marks a worker draining (no new placements; the master copies the objects only it
        holds to other workers), or back in service with cancel; asking again reports the
        progress. Needs an admin token on a master with --tokens."""
        reply = self._link.grpc_call("DrainWorker", pb.DrainRequest(worker_id=worker_id,
                                                                    cancel=cancel))
        return DrainProgress(worker_id, reply.draining, reply.objects_left, reply.bytes_left)


def _without_stalled(key: str, candidates: list, stalled: dict[str, str]) -> list:
    """candidates less the tcp replicas on stalled workers; TransferError (as the general path
    raises when every replica failed) when none is left."""
    left = [(t, r) for t, r in candidates if t.name != "tcp" or r.data_addr not in stalled]
    if not left:
        r = candidates[-1][1]
        raise _every_replica_failed(key, TransferError(f"{describe(r)}: {stalled[r.data_addr]}"))
    return left


def _present_prefix(found: list[bool]) -> int:
    return next((i for i, present in enumerate(found) if not present), len(found))


def _every_replica_failed(key: str, last: MooncakeError) -> TransferError:
    return TransferError(f"get {key!r}: every replica failed, last: {last}", code=last.code)


def _check_lease(leased_at: float, ttl_ms: int, count: int) -> None:
    """A read that finished after its lease raises rather than return bytes that may have
    been overwritten."""
    if time.monotonic() > leased_at + ttl_ms / 1000:
        raise LeaseExpiredError(f"read of {count} object(s) finished after the {ttl_ms} ms "
                                "lease; the bytes may be stale")


def _take_chunk(pending: list, limit_bytes: int) -> tuple[list, list]:
    """The first entries of pending up to limit_bytes (at least one), and the rest."""
    total = 0
    for n, entry in enumerate(pending):
        total += entry[2].replica.length
        if total > limit_bytes and n > 0:
            return pending[:n], pending[n:]
    return pending, []


def _trim(parts: list[memoryview], size: int) -> list[memoryview]:
    """The leading parts that hold exactly `size` bytes (a buffer may be larger than the object)."""
    out = []
    for part in parts:
        if size <= 0:
            break
        out.append(part[:size])
        size -= out[-1].nbytes
    return out
