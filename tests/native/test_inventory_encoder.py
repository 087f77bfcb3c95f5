"""The C encoder of a heartbeat answer's inventory updates (native/answer.py encode_updates,
master/servicer.py _heartbeat_answer): its bytes equal protobuf's own encoding of the same
updates, the whole answer parses back to what was meant, and impossible fields are refused."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mooncake_master.model import DrainStatus, HeartbeatResult, InventoryUpdate
from mooncake_master.servicer import _heartbeat_answer
from mooncake_native.answer import encode_updates
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto.errors import InvalidArgumentError

pytestmark = pytest.mark.timeout(60)

U64 = st.integers(0, 2**64 - 1)
U32 = st.integers(0, 2**32 - 1)

updates = st.builds(
    InventoryUpdate, key=st.text(max_size=40), put_id=U64, segment_id=U32, offset=U64,
    size=U64, replica_num=U32, soft_pin=st.booleans(), hard_pin=st.booleans(), seq=U64,
    removed=st.booleans())


def _protobuf(update: InventoryUpdate) -> pb.InventoryUpdate:
    return pb.InventoryUpdate(seq=update.seq, removed=update.removed, entry=pb.InventoryEntry(
        key=update.key, put_id=update.put_id, segment_id=update.segment_id,
        offset=update.offset, size=update.size, replica_num=update.replica_num,
        soft_pin=update.soft_pin, hard_pin=update.hard_pin))


@settings(max_examples=300, deadline=None)
@given(st.lists(updates, max_size=20))
def test_updates_equal_protobufs_encoding(batch):
    expected = pb.HeartbeatResponse(updates=[_protobuf(u) for u in batch])
    assert encode_updates(batch) == expected.SerializeToString()


@settings(max_examples=100, deadline=None)
@given(st.lists(updates, max_size=5), st.booleans(), st.booleans(),
       st.none() | st.builds(DrainStatus, st.booleans(), U64, U64))
def test_a_whole_heartbeat_answer_is_protobufs_bytes(batch, registered, more, drain):
    result = HeartbeatResult(registered=registered, updates=batch, more=more, drain=drain)
    expected = pb.HeartbeatResponse(registered=registered, more=more,
                                    updates=[_protobuf(u) for u in batch])
    if drain is not None:
        expected.drain.draining = drain.draining
        expected.drain.objects_left, expected.drain.bytes_left = \
            drain.objects_left, drain.bytes_left
    assert _heartbeat_answer(result).SerializeToString() == expected.SerializeToString()


def test_thousands_of_updates_past_the_scratch_buffer():
    batch = [InventoryUpdate(f"bench/{i:06d}/ключ", 1_733_450_000_000_000 + i, 1, i * 4096, 4096,
                             1, False, i % 3 == 0, i + 1, i % 2 == 0) for i in range(5000)]
    encoded = encode_updates(batch)
    assert len(encoded) > 64 << 10
    parsed = pb.HeartbeatResponse.FromString(encoded)
    assert [_protobuf(u) for u in batch] == list(parsed.updates)
    assert encode_updates([]) == b""


@pytest.mark.parametrize("field, value", [
    ("seq", -1), ("offset", -5), ("put_id", 2**64),  # not a uint64 at all (cffi refuses)
    ("segment_id", 2**32), ("replica_num", 2**32), ("removed", 2),  # out of range (C does)
])
def test_impossible_fields_are_refused(field, value):
    update = InventoryUpdate("k", 1, 0, 0, 1, 1, False, False, 1, False)
    setattr(update, field, value)
    with pytest.raises((InvalidArgumentError, OverflowError)):
        encode_updates([update])
