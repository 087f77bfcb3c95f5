"""The C encoder of GetReplicas and PutStart answers (native/answer.py): its bytes equal
protobuf's own encoding of the same message, grants signed in C verify, and inconsistent input
is refused."""
import hashlib
import hmac

import pytest

from mooncake_master.model import KeyResult, Replica
from mooncake_native.answer import GET_REPLICAS, PUT_START, DescriptorSegment, ReplicasAnswer
from mooncake_proto import grants
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto.errors import ErrorCode, InvalidArgumentError

pytestmark = pytest.mark.timeout(30)

EXPIRY_MS = 1_790_000_000_123
KEY_A, KEY_B = b"a" * 32, bytes(range(32))


def _shared(worker_id: str, segment_id: int, **fields) -> pb.ReplicaDescriptor:
    defaults = dict(data_addr="10.0.0.1:7000", node_id="node-1", path="/dev/shm/mooncake-w",
                    segment_size=1 << 30, grpc_addr="10.0.0.1:7001", rdma=False)
    defaults.update(fields)
    return pb.ReplicaDescriptor(worker_id=worker_id, segment_id=segment_id, **defaults)


class _Segment:
    """A segment as the test knows it: the C encoder's handle and what protobuf would need."""

    def __init__(self, key: bytes, worker_id: str, segment_id: int, **fields):
        self.shared = _shared(worker_id, segment_id, **fields)
        self.signer = grants.Signer(key, worker_id)
        self.native = DescriptorSegment(key, worker_id, segment_id, self.shared)


def _expected(items, lease_ttl_ms: int, op=grants.Op.READ) -> bytes:
    """Protobuf's encoding of the answer `items` describes, grants signed in Python."""
    response = pb.GetReplicasResponse(lease_ttl_ms=lease_ttl_ms)
    for key, code, message, size, replicas in items:
        item = response.items.add(size=size)
        _add_status_and_replicas(item, key, code, message, replicas, op)
    return response.SerializeToString()


def _add_status_and_replicas(item, key: str, code: int, message: str, replicas, op) -> None:
    """An item's status and replica descriptors as protobuf holds them, grants signed in
    Python for `op`."""
    item.status.key = key
    item.status.code, item.status.message = code, message
    for segment, tier, state, offset, length in replicas:
        d = item.replicas.add()
        d.CopyFrom(segment.shared)
        d.tier, d.state, d.offset, d.length = tier, state, offset, length
        d.grant = segment.signer.sign(op, segment.shared.segment_id, offset, length, EXPIRY_MS)


def _answer(items, layout: int = GET_REPLICAS) -> ReplicasAnswer:
    """`items` flattened as the servicer does it, from KeyResult and Replica objects: each
    (key, code, message, size, replicas), or for PUT_START (key, code, message, put_id,
    retry_after_ms, replicas)."""
    answer, segments, results = ReplicasAnswer(layout), {}, []
    for key, code, message, *numbers, replicas in items:
        for s, *_ in replicas:
            segments[(s.shared.worker_id, s.shared.segment_id)] = s.native
        result = KeyResult(code, message, replicas=[
            Replica(s.shared.worker_id, s.shared.segment_id, tier, offset, length, state)
            for s, tier, state, offset, length in replicas])
        if layout == PUT_START:
            result.put_id, result.retry_after_s = numbers[0], numbers[1] / 1000
        else:
            result.size = numbers[0]
        results.append(result)
    asked = []

    def segment_for(worker_id: str, segment_id: int) -> DescriptorSegment:
        asked.append((worker_id, segment_id))
        return segments[(worker_id, segment_id)]
    answer.add_results([item[0] for item in items], results, segment_for)
    assert len(asked) == len(set(asked)), "a segment asked for twice in one answer"
    return answer


def _encoded(items, lease_ttl_ms: int, op=grants.Op.READ) -> bytes:
    return _answer(items).encode(op, EXPIRY_MS, lease_ttl_ms)


def test_answers_equal_protobufs_encoding_field_for_field():
    dram = _Segment(KEY_A, "worker-a", 0)
    ssd = _Segment(KEY_A, "worker-a", 7, path="/ssd/mooncake-w", segment_size=1 << 40)
    other = _Segment(KEY_B, "wörker-b", 1, rdma=True, grpc_addr="")
    items = [
        ("k", 0, "", 4096, [(dram, 0, 2, 0, 4096)]),  # offset 0 and tier 0: left out
        ("kv/layer-3/blöck", 0, "", 1 << 33, [(ssd, 1, 2, (1 << 39) + 64, 1 << 33),
                                              (other, 0, 2, 12345, 1 << 33)]),
        ("missing", int(ErrorCode.OBJECT_NOT_FOUND), "key 'missing' not found", 0, []),
        ("pending", int(ErrorCode.REPLICA_IS_NOT_READY), "is being written — wait", 0, []),
        ("", 0, "", 0, []),  # an empty status and nothing else
        ("many", 0, "", 1, [(dram, 0, 2, 128 * i, 1) for i in range(40)]),
    ]
    for ttl in (10_000, 0):
        assert _encoded(items, ttl) == _expected(items, ttl)
    assert _encoded(items[:1], 1, grants.Op.WRITE) == _expected(items[:1], 1, grants.Op.WRITE)
    assert _encoded([], 10_000) == _expected([], 10_000)


def test_grants_signed_in_c_verify_with_the_workers_key():
    long_key = b"k" * 100  # longer than a SHA-256 block: HMAC hashes it first
    segment = _Segment(long_key, "w", 3)
    (item,) = pb.GetReplicasResponse.FromString(
        _encoded([("k", 0, "", 10, [(segment, 0, 2, 640, 10)])], 10_000)).items
    token = item.replicas[0].grant
    grant = grants.verify(long_key, token, "w", now_ms=EXPIRY_MS)
    assert (grant.op, grant.segment_id, grant.offset, grant.length, grant.expiry_ms) == \
        (grants.Op.READ, 3, 640, 10, EXPIRY_MS)
    body, mac = token[:-32], token[-32:]
    assert hmac.new(long_key, body, hashlib.sha256).digest() == mac
    with pytest.raises(grants.GrantError):
        grants.verify(KEY_A, token, "w", now_ms=EXPIRY_MS)


def test_a_batch_of_more_items_than_the_encoder_plans_on_its_stack():
    segment = _Segment(KEY_A, "w", 0)
    items = [(f"k{i}", 0 if i % 3 else int(ErrorCode.OBJECT_NOT_FOUND), "" if i % 3 else "miss",
              i, [(segment, 0, 2, i * 64, i + 1)] if i % 3 else []) for i in range(200)]
    assert _encoded(items, 10_000) == _expected(items, 10_000)


def test_an_answer_larger_than_the_scratch_buffer():
    segment = _Segment(KEY_A, "w", 0)
    items = [(f"{i:04d}/" + "x" * 4000, 0, "", i, [(segment, 0, 2, i * 64, i + 1)])
             for i in range(40)]  # about 170 KiB
    assert len(_encoded(items, 10_000)) > 64 << 10
    assert _encoded(items, 10_000) == _expected(items, 10_000)
    assert _encoded(items[:2], 10_000) == _expected(items[:2], 10_000)  # and back to small


def test_inconsistent_input_is_refused():
    segment = _Segment(KEY_A, "w", 0)
    one = [("k", 0, "", 1, [(segment, 0, 2, 0, 1)])]
    answer = _answer(one)
    answer._fields[-1] = -1  # a negative length
    with pytest.raises(InvalidArgumentError, match="negative"):
        answer.encode(grants.Op.READ, EXPIRY_MS, 1)
    answer = _answer(one)
    answer._fields[6] = 1  # a segment index past the table
    with pytest.raises(InvalidArgumentError, match="segment 1 of 1"):
        answer.encode(grants.Op.READ, EXPIRY_MS, 1)
    answer = _answer([("k", 0, "", 1, [])])
    answer._text.append(b"extra")
    with pytest.raises(InvalidArgumentError, match="left over"):
        answer.encode(grants.Op.READ, EXPIRY_MS, 1)
    with pytest.raises(InvalidArgumentError, match="op 9"):
        ReplicasAnswer().encode(9, EXPIRY_MS, 1)
    with pytest.raises(InvalidArgumentError, match="layout 7"):
        ReplicasAnswer(7).encode(grants.Op.READ, EXPIRY_MS, 1)
    answer = _answer([("k", 0, "", 1, [])])
    answer._fields[5] = 5  # retry_after_ms, a PutStart field
    with pytest.raises(InvalidArgumentError, match="retry_after_ms 5 in a GetReplicas"):
        answer.encode(grants.Op.READ, EXPIRY_MS, 1)
    answer = _answer([("k", 0, "", 1, 2**32, [])], PUT_START)
    with pytest.raises(InvalidArgumentError, match="retry_after_ms"):
        answer.encode(grants.Op.WRITE, EXPIRY_MS, 1)


def _expected_put_start(items, put_timeout_ms: int) -> bytes:
    """Protobuf's encoding of the PutStart answer `items` describes, WRITE grants signed in
    Python: (key, code, message, put_id, retry_after_ms, replicas)."""
    response = pb.PutStartResponse(put_timeout_ms=put_timeout_ms)
    for key, code, message, put_id, retry_after_ms, replicas in items:
        item = response.items.add(put_id=put_id, retry_after_ms=retry_after_ms)
        _add_status_and_replicas(item, key, code, message, replicas, grants.Op.WRITE)
    return response.SerializeToString()


def test_put_start_answers_equal_protobufs_encoding_field_for_field():
    dram = _Segment(KEY_A, "worker-a", 0)
    other = _Segment(KEY_B, "wörker-b", 1, rdma=True)
    items = [
        ("k", 0, "", 1_733_450_000_000_001, 0, [(dram, 0, 1, 0, 4096)]),  # PENDING replica
        ("two", 0, "", 1_733_450_000_000_002, 0, [(dram, 0, 1, 8192, 100),
                                                  (other, 0, 1, 1 << 40, 100)]),
        ("exists", int(ErrorCode.OBJECT_ALREADY_EXISTS), "key 'exists' already exists", 0, 0,
         []),
        ("wait", int(ErrorCode.SPACE_BEING_FREED), "eviction is freeing room", 0, 250, []),
        ("", 0, "", 0, 0, []),
    ]
    encoded = _answer(items, PUT_START).encode(grants.Op.WRITE, EXPIRY_MS, 30_000)
    assert encoded == _expected_put_start(items, 30_000)
    (first, *_) = pb.PutStartResponse.FromString(encoded).items
    grant = grants.verify(KEY_A, first.replicas[0].grant, "worker-a", now_ms=EXPIRY_MS)
    assert (grant.op, grant.offset, grant.length) == (grants.Op.WRITE, 0, 4096)


def test_a_segment_needs_a_key_and_a_grantable_worker_id():
    with pytest.raises(InvalidArgumentError, match="no grant key"):
        DescriptorSegment(b"", "w", 0, _shared("w", 0))
    with pytest.raises(InvalidArgumentError, match="worker id"):
        DescriptorSegment(KEY_A, "w" * 1025, 0, _shared("w" * 1025, 0))
