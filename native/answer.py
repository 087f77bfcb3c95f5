"""Answers the master encodes in C, in one call each: GetReplicas and PutStart
(native/include/mc_answer.h), the serialized response with a signed grant per replica, and a
heartbeat's inventory updates (native/include/mc_inventory.h).

The caller flattens the answer into integers and text (`ReplicasAnswer`, `encode_updates`);
C writes the protobuf bytes, which equal what protobuf would encode for the same message.
"""
from __future__ import annotations

import array
import errno
import math
import threading

from mooncake_native.binding import check, ffi, lib
from mooncake_proto import mooncake_pb2 as pb

GET_REPLICAS = lib.MC_ANSWER_GET_REPLICAS
PUT_START = lib.MC_ANSWER_PUT_START
_SCRATCH_BYTES = 64 << 10  # an answer of this size or less needs no allocation of its own

_scratch = threading.local()
_new_unzeroed = ffi.new_allocator(should_clear_after_alloc=False)


class DescriptorSegment:
    """The descriptor fields every replica on one segment shares, serialized once, and the
    HMAC key schedule of its worker's grant key."""

    __slots__ = ("_segment",)

    def __init__(self, grant_key: bytes, worker_id: str, segment_id: int,
                 shared: pb.ReplicaDescriptor):
        """`shared` holds the fields of the segment (all but tier, offset, length, state and
        grant)."""
        head = pb.ReplicaDescriptor(worker_id=shared.worker_id,
                                    segment_id=shared.segment_id).SerializeToString()
        middle = pb.ReplicaDescriptor(data_addr=shared.data_addr, node_id=shared.node_id,
                                      path=shared.path,
                                      segment_size=shared.segment_size).SerializeToString()
        tail = pb.ReplicaDescriptor(grpc_addr=shared.grpc_addr,
                                    rdma=shared.rdma).SerializeToString()
        wid = worker_id.encode()
        segment = lib.mc_desc_segment_new(grant_key, len(grant_key), wid, len(wid), segment_id,
                                          head, len(head), middle, len(middle), tail, len(tail))
        if segment == ffi.NULL:
            check(-errno.EINVAL, "descriptor segment")  # raises, with the C side's message
        self._segment = ffi.gc(segment, lib.mc_desc_segment_free)


class ReplicasAnswer:
    """One GetReplicasResponse or PutStartResponse (`layout`: GET_REPLICAS or PUT_START)
    being flattened: add_results() its items, then encode()."""

    __slots__ = ("layout", "_fields", "_text", "_segments", "_index", "items")

    def __init__(self, layout: int = GET_REPLICAS):
        self.layout = layout
        self._fields: list[int] = []
        self._text: list[bytes] = []
        self._segments: list = []
        self._index: dict[tuple[str, int], int] = {}  # (worker, segment) -> in _segments
        self.items = 0

    def add_results(self, keys, results, segment_for) -> None:
        """An item per key, in order, from its KeyResult-like result (code, message, size for
        GetReplicas or put_id and retry_after_s for PutStart, replicas of worker_id,
        segment_id, tier, state, offset, length). segment_for(worker_id, segment_id) gives a
        replica's DescriptorSegment, asked once per segment of the batch. One loop: this
        runs for every key of every read."""
        fields, text, segments, index = self._fields, self._text, self._segments, self._index
        put_start = self.layout == PUT_START
        for key, r in zip(keys, results, strict=True):
            key_bytes = key.encode()
            message = r.message.encode() if r.message else b""
            replicas = r.replicas
            if put_start:
                retry_s = r.retry_after_s
                fields += (r.put_id, r.code, len(key_bytes), len(message), len(replicas),
                           max(1, math.ceil(retry_s * 1000)) if retry_s else 0)
            else:
                fields += (r.size, r.code, len(key_bytes), len(message), len(replicas), 0)
            text += (key_bytes, message)
            for d in replicas:
                where = (d.worker_id, d.segment_id)
                i = index.get(where)
                if i is None:
                    i = index[where] = len(segments)
                    segments.append(segment_for(*where)._segment)
                fields += (i, d.tier, d.state, d.offset, d.length)
        self.items += len(results)

    def encode(self, op: int, expiry_ms: int, ttl_ms: int) -> bytes:
        """The answer's bytes, each replica's grant signed for `op` until expiry_ms; ttl_ms is
        its lease_ttl_ms (GetReplicas) or put_timeout_ms (PutStart)."""
        fields, segments = _c_array("q", "int64_t[]", self._fields), self._segments
        text = b"".join(self._text)
        return _encoded(lib.mc_encode_replicas_answer, "replicas answer", self.layout,
                        segments, len(segments), fields, len(fields), text, len(text),
                        self.items, op, expiry_ms, ttl_ms)


def encode_updates(updates) -> bytes:
    """HeartbeatResponse `updates` fields for InventoryUpdate-like objects (seq, removed,
    key, put_id, segment_id, offset, size, replica_num, soft_pin, hard_pin): bytes to
    concatenate with the response's other fields."""
    fields: list[int] = []
    keys: list[bytes] = []
    for u in updates:
        key = u.key.encode()
        keys.append(key)
        fields += (u.seq, u.removed, u.put_id, u.segment_id, u.offset, u.size, u.replica_num,
                   u.soft_pin, u.hard_pin, len(key))
    text = b"".join(keys)
    return _encoded(lib.mc_encode_inventory_updates, "heartbeat inventory updates",
                    _c_array("Q", "uint64_t[]", fields), len(keys), text, len(text))


def _c_array(typecode: str, ctype: str, values: list[int]):
    """values as a C array, converted once by the array module (4x faster than cffi's
    conversion of a list, which a retry with a larger buffer would also pay again);
    OverflowError for a value the type cannot hold."""
    return ffi.from_buffer(ctype, array.array(typecode, values))


def _encoded(encode, what: str, *args) -> bytes:
    """What encode(out, cap, needed, *args) writes, into this thread's scratch buffer (the
    master answers on several threads), or into one of its own size when that is too small
    (a huge batch, thousands of updates)."""
    scratch = getattr(_scratch, "state", None)
    if scratch is None:
        scratch = _scratch.state = (ffi.new("uint8_t[]", _SCRATCH_BYTES), ffi.new("size_t *"))
    out, needed = scratch
    n = encode(out, len(out), needed, *args)
    if n == -errno.ENOSPC:
        out = _new_unzeroed("uint8_t[]", needed[0])  # C writes every byte it returns
        n = encode(out, len(out), needed, *args)
    return ffi.buffer(out, check(n, what))[:]
