"""`Client`: the SDK inference servers embed. Metadata through the master, bytes through transports.

Every call is batch-shaped inside: one master round trip per phase for the whole batch, then
transfers grouped per transport. A miss is `None`/`False`; every fault raises a typed error.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import Iterable, Sequence

import grpc

from mooncake_client.meta_channel import MaybeSent, MetaChannel, NotSent
from mooncake_client.rdma_transport import RdmaTransport
from mooncake_client.transports import ShmTransport, TcpTransport, Transfer
from mooncake_native.buffers import RegisteredBuffers, as_parts, parts_size
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto import mooncake_pb2_grpc as pb_grpc
from mooncake_proto import metaframe, rpc
from mooncake_proto.errors import (ErrorCode, InvalidArgumentError, LeaseExpiredError,
                                   MooncakeError, NoSpaceError, TransferError,
                                   UnavailableError, error_for_code)
from mooncake_proto.identity import node_id

KNOWN_TRANSPORTS = ("shm", "rdma", "tcp")  # the default preference order (DESIGN.md 4)
MISS_CODES = (ErrorCode.OBJECT_NOT_FOUND, ErrorCode.REPLICA_IS_NOT_READY)
META_RETRY_S = 5.0  # a client without a framed metadata channel asks Hello again after this,
META_RETRY_MAX_S = 60.0  # doubling after each failure up to this
META_CONNECT_TIMEOUT_S = 0.5  # a port that drops SYNs must not stall a call for rpc_timeout_s
PUT_RETRY_MAX_S = 0.5  # a put told to wait for eviction asks again at least this often
READ_CHUNK_BYTES = 256 << 20  # a long batch read checks (and renews) its lease between chunks
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
    """Some keys of a batch write failed; `errors` maps each failed key to its error."""

    def __init__(self, errors: dict[str, MooncakeError]):
        first = next(iter(errors.values()))
        super().__init__(f"{len(errors)} key(s) failed, first: {first}", code=first.code)
        self.errors = errors


class Client:
    def __init__(self, master: str | Sequence[str], transports: Iterable[str] = KNOWN_TRANSPORTS,
                 rpc_timeout_s: float = 10.0, transfer_timeout_s: float = 10.0,
                 framed_metadata: bool = True, put_wait_s: float = 10.0,
                 token: str | None = None, tls_ca: str | None = None):
        """framed_metadata: send object calls over the master's framed metadata port when it
        offers one (found with Hello; gRPC otherwise, and for everything else).
        put_wait_s: how long a put waits for eviction to free room (a full pool evicts, and
        demotes to SSD, rather than refuse writes) before it raises NoSpaceError.
        token: the bearer token sent on every master call (None: $MOONCAKE_TOKEN; "": none).
        tls_ca: a PEM file of the CA that signed the master's and workers' certificates: gRPC
        then uses TLS (None: $MOONCAKE_TLS_CA; "": no TLS)."""
        self.masters = [m.strip() for m in master.split(",")] if isinstance(master, str) \
            else list(master)
        if not self.masters or not all(self.masters):
            raise InvalidArgumentError("Client needs at least one master address H:P")
        self.transport_names = tuple(transports)
        unknown = [t for t in self.transport_names if t not in KNOWN_TRANSPORTS]
        if unknown or not self.transport_names:
            raise InvalidArgumentError(
                f"transports must be chosen from {KNOWN_TRANSPORTS}, got {self.transport_names}")
        self.rpc_timeout_s = rpc_timeout_s
        self.put_wait_s = put_wait_s
        self._token, self._tls = _security(token, tls_ca)
        self.node_id = node_id()
        tcp = TcpTransport(transfer_timeout_s)  # also rdma's fallback: one connection pool
        self._transports = [ShmTransport(self.node_id) if name == "shm"
                            else RdmaTransport(transfer_timeout_s, fallback=tcp, tls=self._tls)
                            if name == "rdma" else tcp for name in self.transport_names]
        self._registered = RegisteredBuffers()
        # the framed port has no TLS: a client asked for TLS never sends its calls there
        self.framed_metadata = framed_metadata and not self._tls.calling
        self._meta: MetaChannel | None = None
        self._meta_checked_at = -float("inf")
        self._meta_failures = 0
        self._meta_lock = threading.Lock()
        self._switch_lock = threading.Lock()
        self._master_index = 0
        self._channel = rpc.client_channel(self.masters[0], self._tls, self._token)
        self._stub = pb_grpc.MasterServiceStub(self._channel)

    # ---- lifecycle ----

    def close(self) -> None:
        for transport in self._transports:
            transport.close()
        meta, self._meta = self._meta, None
        self.framed_metadata = False  # calls after close() must not reopen a channel
        if meta is not None:
            meta.close()
        self._channel.close()

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
        reply = self._call("PutStart", pb.PutStartRequest(
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
            for st in self._call("PutEnd", finish).statuses:
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
            self._call("PutRevoke", pb.PutFinishRequest(
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

    def batch_get(self, keys: Sequence[str]) -> list[bytes | None]:
        return self._read(list(keys), None)

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
            reply = self._call("GetReplicas", pb.KeysRequest(keys=[keys[i] for i in todo]))
            ttl_s = reply.lease_ttl_ms / 1000
            pending = self._plan_reads(keys, parts, todo, reply.items)
            todo = []
            while pending:
                chunk, pending = _take_chunk(pending, READ_CHUNK_BYTES)
                self._read_with_fallback(keys, chunk)
                if time.monotonic() > leased_at + ttl_s:
                    raise LeaseExpiredError(
                        f"read of {len(chunk)} object(s) finished after the {reply.lease_ttl_ms} "
                        "ms lease; the bytes may be stale")
                for i, _, transfer in chunk:
                    results[i] = transfer.result if parts is None else transfer.replica.length
                if pending and time.monotonic() > leased_at + ttl_s / 2:
                    todo = [entry[0] for entry in pending]  # renew for what is left
                    break
        return results

    def _plan_reads(self, keys: list[str], parts, indices: list[int], items):
        """(index, replica candidates, Transfer) for each key of `indices` that is present."""
        pending: list[tuple[int, list[pb.ReplicaDescriptor], Transfer]] = []
        for i, item in zip(indices, items):
            key = keys[i]
            if item.status.code in MISS_CODES:
                continue
            if item.status.code != ErrorCode.OK:
                raise error_for_code(item.status.code, f"get {key!r}: {item.status.message}")
            target = None
            if parts is not None:
                capacity = parts_size(parts[i])
                if capacity < item.size:
                    raise InvalidArgumentError(f"get {key!r}: object has {item.size} bytes, "
                                               f"buffer only {capacity}")
                target = _trim(parts[i], item.size)
            candidates = self._ordered(item.replicas)
            if not candidates:
                raise TransferError(f"get {key!r}: no allowed transport "
                                    f"({', '.join(self.transport_names)}) reaches any replica")
            pending.append((i, candidates, Transfer(candidates[0][1], target)))
        return pending

    def _read_with_fallback(self, keys, pending) -> None:
        """Reads each key from its best replica, moving to the next replica when one fails."""
        attempt = 0
        while pending:
            by_transport: dict[object, list] = {}
            for entry in pending:
                transport, replica = entry[1][attempt]
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
                        raise TransferError(f"get {keys[entry[0]]!r}: every replica failed, "
                                            f"last: {error}", code=error.code) from error
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
            for rank, transport in enumerate(self._transports):
                if transport.usable(replica):
                    tier_rank = 0 if replica.tier == pb.TIER_DRAM else 1
                    local_rank = 0 if transport.name == "shm" else 1
                    choices.append(((local_rank, tier_rank, rank), transport, replica))
                    break
        choices.sort(key=lambda c: c[0])
        return [(t, r) for _, t, r in choices]

    # ---- metadata ----

    def exists(self, key: str) -> bool:
        return self.batch_exists([key])[0]

    def batch_exists(self, keys: Sequence[str]) -> list[bool]:
        statuses = self._call("Exists", pb.KeysRequest(keys=list(keys))).statuses
        out = []
        for st in statuses:
            if st.code not in (ErrorCode.OK, *MISS_CODES):
                raise error_for_code(st.code, f"exists {st.key!r}: {st.message}")
            out.append(st.code == ErrorCode.OK)
        return out

    def remove(self, key: str, force: bool = False) -> bool:
        """Removes key; False when it did not exist. HasLeaseError while leased, unless force."""
        st = self._call("Remove", pb.RemoveRequest(keys=[key], force=force)).statuses[0]
        if st.code == ErrorCode.OBJECT_NOT_FOUND:
            return False
        if st.code != ErrorCode.OK:
            raise error_for_code(st.code, f"remove {key!r}: {st.message}")
        return True

    def remove_all(self, force: bool = False) -> int:
        return self._call("RemoveAll", pb.RemoveAllRequest(force=force)).removed

    def get_replicas(self, key: str) -> list[ReplicaInfo]:
        """The replicas of key (empty on a miss), for tools and tests. Grants a read lease."""
        item = self._call("GetReplicas", pb.KeysRequest(keys=[key])).items[0]
        if item.status.code in MISS_CODES:
            return []
        if item.status.code != ErrorCode.OK:
            raise error_for_code(item.status.code, f"get_replicas {key!r}: {item.status.message}")
        return [ReplicaInfo(r.worker_id, _TIER_NAMES.get(r.tier, "?"),
                            _STATE_NAMES.get(r.state, "?"), r.segment_id, r.offset, r.length,
                            r.data_addr) for r in item.replicas]

    def list_keys(self, prefix: str = "", limit: int = 1000,
                  start_after: str = "") -> tuple[list[KeyInfo], bool]:
        """The objects whose keys start with prefix, after start_after, in key order, at most
        limit (the master caps it at 10,000); and whether more match (ask again with the
        last key as start_after). Needs an admin token on a master with --tokens. Grants no
        lease and counts as no access."""
        reply = self._grpc_call("ListKeys", pb.ListKeysRequest(
            prefix=prefix, limit=limit, start_after=start_after))
        return [KeyInfo(k.key, k.size, _STATE_NAMES.get(k.state, "?"),
                        tuple(_TIER_NAMES.get(t, "?") for t in k.tiers), k.soft_pin,
                        k.hard_pin, k.last_access_age_s) for k in reply.keys], reply.truncated

    # ---- master calls ----

    def _call(self, method: str, request):
        """One master call: over the framed metadata port when there is one, else gRPC."""
        meta = self._meta_channel() if method in metaframe.METHOD_IDS else None
        if meta is not None:
            try:
                response = meta.call(method, request, self.rpc_timeout_s)
                self._meta_failures = 0
                return response
            except NotSent:
                self._forget_meta(meta)  # unreachable or busy: gRPC, and Hello again later
            except MaybeSent as exc:
                self._forget_meta(meta)
                if method not in metaframe.IDEMPOTENT:
                    raise UnavailableError(f"master {meta.addr} {method}: connection lost after "
                                           f"the call was sent ({exc}); its outcome is unknown")
        return self._grpc_call(method, request)

    def _grpc_call(self, method: str, request):
        """One master RPC; on an unreachable master, tries the next address once around."""
        last: grpc.RpcError | None = None
        for _ in range(len(self.masters)):
            index, stub = self._master_index, self._stub
            target = self.masters[index % len(self.masters)]
            try:
                return getattr(stub, method)(request, timeout=self.rpc_timeout_s)
            except grpc.RpcError as exc:
                last = exc
                if exc.code() != grpc.StatusCode.UNAVAILABLE or len(self.masters) == 1:
                    break
                self._switch_master(index)
        raise rpc.error_from_rpc(last, f"master {target} {method}")

    def _meta_channel(self) -> MetaChannel | None:
        """The framed metadata channel of the current master; asks Hello again after a
        back-off when there is none (an older master, the port turned off, or it failed)."""
        if self._meta is not None or not self.framed_metadata:
            return self._meta
        now = time.monotonic()
        wait_s = min(META_RETRY_MAX_S, META_RETRY_S * 2 ** max(0, self._meta_failures - 1))
        with self._meta_lock:
            if self._meta is None and now - self._meta_checked_at >= wait_s:
                self._meta_checked_at = now
                master = self.masters[self._master_index % len(self.masters)]
                try:
                    hello = self._stub.Hello(pb.HelloRequest(), timeout=self.rpc_timeout_s)
                except grpc.RpcError:
                    return None  # an older master without Hello, or unreachable: gRPC it is
                if hello.meta_addr and self.framed_metadata:
                    self._meta = MetaChannel(_reachable(hello.meta_addr, master),
                                             min(META_CONNECT_TIMEOUT_S, self.rpc_timeout_s),
                                             self._token)
            return self._meta

    def _forget_meta(self, meta: MetaChannel) -> None:
        with self._meta_lock:
            if self._meta is meta:
                self._meta = None
                self._meta_checked_at = time.monotonic()
                self._meta_failures += 1
        meta.close()

    def _switch_master(self, seen_index: int) -> None:
        """Moves to the next master address, once per failure however many threads saw it."""
        with self._switch_lock:
            if self._master_index != seen_index:
                return  # another thread already moved on
            meta = self._meta
            if meta is not None:
                self._forget_meta(meta)
            # the old channel is not closed here: other threads may still be inside a call
            # on it (they fail over the same way); it closes when the last user drops it
            self._master_index += 1
            self._channel = rpc.client_channel(
                self.masters[self._master_index % len(self.masters)], self._tls, self._token)
            self._stub = pb_grpc.MasterServiceStub(self._channel)


def _security(token: str | None, tls_ca: str | None) -> tuple[str, rpc.Tls]:
    """The token and TLS settings a Client was given, or those of its environment."""
    token = (os.environ.get("MOONCAKE_TOKEN", "") if token is None else token).strip()
    tls_ca = os.environ.get("MOONCAKE_TLS_CA", "") if tls_ca is None else tls_ca
    try:
        if token:
            rpc.check_token(token)
        return token, rpc.Tls.load(ca_path=tls_ca)
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(f"Client: {exc}") from exc


def _reachable(meta_addr: str, master: str) -> str:
    """The framed port's address as this client can reach it: a master listening on every
    interface advertises 0.0.0.0 (or ::), which means the host we reached it by."""
    host, _, port = meta_addr.rpartition(":")
    if host.strip("[]") in ("0.0.0.0", "::", ""):
        host = master.rpartition(":")[0]
    return f"{host}:{port}"


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
