"""The master's queue of inventory updates: one flat object per change, a snapshot of the
replica it names, answered as the proto InventoryUpdate it always was (pure state, no
sockets)."""
import pytest
from test_recovery import new_state
from test_state import commit, put

from mooncake_master.servicer import _heartbeat_answer
from mooncake_master.state import InventoryEntry, InventoryUpdate
from mooncake_proto import mooncake_pb2 as pb

pytestmark = pytest.mark.timeout(30)


def test_an_update_is_the_entry_it_changes_with_its_seq():
    state = new_state(workers=1)
    commit(state, "a", size=4096, replica_num=1, soft_pin=True)
    [update] = state.workers["w0"].updates
    obj = state.objects["a"]
    [replica] = obj.replicas
    assert isinstance(update, InventoryUpdate) and isinstance(update.entry, InventoryEntry)
    assert update.entry is update
    assert (update.seq, update.removed) == (1, False)
    assert (update.key, update.put_id, update.segment_id, update.offset, update.size,
            update.replica_num, update.soft_pin, update.hard_pin) == \
        ("a", obj.put_id, replica.segment_id, replica.offset, 4096, 1, True, False)


def test_a_queued_update_is_a_snapshot_of_the_object_when_queued():
    state = new_state(workers=1)
    commit(state, "a", replica_num=1)
    assert state.remove(["a"], False, 1.0)[0].code == 0
    commit(state, "b", replica_num=1)
    obj = state.objects["b"]
    obj.soft_pin = obj.hard_pin = True  # what a later change to the object would do
    obj.replica_num = 3
    updates = state.workers["w0"].updates
    assert [(u.key, u.seq, u.removed) for u in updates] == \
        [("a", 1, False), ("a", 2, True), ("b", 3, False)]
    assert (updates[2].soft_pin, updates[2].hard_pin, updates[2].replica_num) == \
        (False, False, 1)


def test_a_heartbeat_answer_encodes_the_flat_updates_as_before():
    state = new_state(workers=1)
    commit(state, "k", size=100, replica_num=1, hard_pin=True)
    assert state.remove(["k"], False, 1.0)[0].code == 0
    result = state.heartbeat("w0", 2.0, acked_seq=0)
    obj_entry = dict(key="k", put_id=result.updates[0].put_id, segment_id=0,
                     offset=result.updates[0].offset, size=100, replica_num=1, hard_pin=True)
    expected = pb.HeartbeatResponse(registered=True, updates=[
        pb.InventoryUpdate(seq=1, entry=pb.InventoryEntry(**obj_entry)),
        pb.InventoryUpdate(seq=2, removed=True, entry=pb.InventoryEntry(**obj_entry))])
    assert _heartbeat_answer(result).SerializeToString() == expected.SerializeToString()


def test_a_put_committed_on_a_worker_that_began_draining_is_copied_away_first():
    state = new_state(workers=2)
    assert [r.code for r in put(state, ["drained"], [100], preferred="w0")] == [0]
    assert [r.code for r in put(state, ["kept"], [100], preferred="w1")] == [0]
    state.drain("w0")
    state.tick(0.2)  # plans the drain's copies: the pending put is not one of them yet
    assert not state._drain_queue
    assert [r.code for r in state.put_end(["drained", "kept"], 0.5)] == [0, 0]
    state.validate()
    assert list(state._drain_queue) == ["drained"]
    assert [u.key for u in state.workers["w0"].updates] == ["drained"]
    assert [u.key for u in state.workers["w1"].updates] == ["kept"]
