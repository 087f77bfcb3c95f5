"""Tests of MasterState: exact transitions under an injected clock, and a hypothesis machine."""
from __future__ import annotations

import dataclasses
import json
import random

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

from mooncake_master.allocator import align_up
from mooncake_master.state import (COMPLETE, PENDING, TIER_DRAM, TIER_SSD, KeyResult,
                                   MasterConfig, MasterState, PlacementConfig, SegmentSpec)
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto.errors import ErrorCode, InvalidArgumentError

OK = ErrorCode.OK
MiB = 1 << 20


def register(state: MasterState, worker_id: str, now: float = 0.0, node_id: str | None = None,
             dram: int = MiB, ssd: int = 0, key: bytes = b"k" * 32):
    specs = [SegmentSpec(0, TIER_DRAM, dram, f"/dev/shm/{worker_id}")] if dram else []
    if ssd:
        specs.append(SegmentSpec(1, TIER_SSD, ssd, f"/ssd/{worker_id}"))
    worker = state.register_worker(worker_id, node_id or f"node-{worker_id}", f"{worker_id}:1",
                                   f"{worker_id}:2", f"{worker_id}:3", specs, key, now).worker
    state.heartbeat(worker_id, now)  # its first, right after: it holds the new key
    state.validate()
    return worker


def make_state(workers: int = 3, dram: int = MiB, seed: int = 0, **config) -> MasterState:
    # ranges come free without waiting for inventory acknowledgements (test_recovery.py)
    config.setdefault("reuse_after_inventory_ack", False)
    state = MasterState(MasterConfig(**config), random.Random(seed))
    for i in range(workers):
        register(state, f"w{i}", dram=dram)
    return state


def put(state: MasterState, keys, sizes, now: float = 0.0, replica_num: int = 1,
        preferred: str = "", node: str = "", **pins) -> list[KeyResult]:
    results = state.put_start(list(keys), list(sizes),
                              PlacementConfig(replica_num, preferred, **pins), node, now)
    state.validate()
    return results


def codes(results: list[KeyResult]) -> list[int]:
    return [r.code for r in results]


def call(state: MasterState, method: str, *args) -> list[int]:
    results = getattr(state, method)(*args)
    state.validate()
    return codes(results)


def commit(state: MasterState, key: str, size: int = 1000, now: float = 0.0, **kwargs):
    [result] = put(state, [key], [size], now, **kwargs)
    assert result.code == OK, result.message
    assert call(state, "put_end", [key], now) == [OK]
    return result


def used(state: MasterState, worker_id: str) -> int:
    return state.workers[worker_id].segments[0].allocator.used_bytes


def total_used(state: MasterState) -> int:
    return sum(s.allocator.used_bytes for w in state.workers.values()
               for s in w.segments.values())


# -- constants --------------------------------------------------------------------------


def test_constants_match_the_proto_enums():
    assert (TIER_DRAM, TIER_SSD) == (pb.TIER_DRAM, pb.TIER_SSD)
    assert (PENDING, COMPLETE) == (pb.REPLICA_PENDING, pb.REPLICA_COMPLETE)


# -- put / get / exists transitions -----------------------------------------------------


def test_put_start_creates_pending_object_with_pending_replica():
    state = make_state(workers=1)
    [result] = put(state, ["a"], [1000], now=5.0)
    assert (result.code, result.size, result.message) == (OK, 1000, "")
    [replica] = result.replicas
    assert (replica.worker_id, replica.segment_id, replica.tier) == ("w0", 0, TIER_DRAM)
    assert (replica.offset, replica.length, replica.state) == (0, 1000, PENDING)
    obj = state.objects["a"]
    assert (obj.state, obj.size, obj.replica_num, obj.lease_until) == (PENDING, 1000, 1, 0.0)
    assert (obj.put_started_at, obj.last_access) == (5.0, 5.0)
    assert obj.replicas == [replica]
    assert used(state, "w0") == align_up(1000, 64)


def test_pending_object_is_invisible_until_put_end():
    state = make_state()
    put(state, ["a"], [100], now=1.0)
    assert call(state, "get_replicas", ["a"], 2.0) == [ErrorCode.REPLICA_IS_NOT_READY]
    assert call(state, "exists", ["a"], 2.0) == [ErrorCode.OBJECT_NOT_FOUND]
    assert state.objects["a"].lease_until == 0.0
    assert call(state, "put_end", ["a"], 3.0) == [OK]
    obj = state.objects["a"]
    assert obj.state == COMPLETE
    assert [r.state for r in obj.replicas] == [COMPLETE]
    assert call(state, "put_end", ["a"], 4.0) == [OK]  # idempotent
    assert obj.state == COMPLETE


def test_get_returns_complete_replicas_and_grants_lease():
    state = make_state(lease_ttl_s=10.0)
    started = commit(state, "a", 4000, replica_num=2)
    [result] = state.get_replicas(["a"], 7.0)
    state.validate()
    assert (result.code, result.size) == (OK, 4000)
    assert [(r.worker_id, r.offset, r.state) for r in result.replicas] == \
        [(r.worker_id, r.offset, COMPLETE) for r in started.replicas]
    obj = state.objects["a"]
    assert (obj.lease_until, obj.last_access) == (17.0, 7.0)
    state.get_replicas(["a"], 9.5)
    assert obj.lease_until == 19.5


def test_exists_grants_lease_on_present_keys_only():
    state = make_state(lease_ttl_s=4.0)
    commit(state, "a")
    [present, missing] = state.exists(["a", "b"], 3.0)
    state.validate()
    assert (present.code, present.size) == (OK, 1000)
    assert missing.code == ErrorCode.OBJECT_NOT_FOUND
    assert state.objects["a"].lease_until == 7.0
    assert "b" not in state.objects


def test_exists_prefix_stops_at_the_first_absent_key_and_leases_the_prefix_only():
    state = make_state(lease_ttl_s=4.0)
    for key in ("p0", "p1", "p3"):
        commit(state, key)
    put(state, ["p2"], [100])  # PENDING: not visible yet
    order = list(state.objects)
    present, stopped_by = state.exists_prefix(["p0", "p1", "p2", "p3"], 3.0)
    state.validate()
    assert present == 2
    assert stopped_by.code == ErrorCode.OBJECT_NOT_FOUND and "being written" in stopped_by.message
    assert [state.objects[k].lease_until for k in ("p0", "p1", "p3")] == [7.0, 7.0, 0.0]
    # p3 lies past the stop: not touched (its access time and place in the eviction order)
    assert [state.objects[k].last_access for k in ("p0", "p1", "p3")] == [3.0, 3.0, 0.0]
    assert list(state.objects) == ["p3", "p2", "p0", "p1"] and order == ["p0", "p1", "p3", "p2"]


def test_exists_prefix_of_all_present_keys_and_of_bad_keys():
    state = make_state()
    commit(state, "a")
    commit(state, "b")
    assert state.exists_prefix(["a", "b"], 1.0) == (2, None)
    assert state.exists_prefix(["a", "a"], 1.0) == (2, None)  # a key may repeat
    assert state.exists_prefix([], 1.0) == (0, None)
    present, stopped_by = state.exists_prefix(["a", "", "b"], 1.0)
    assert (present, stopped_by.code) == (1, ErrorCode.INVALID_PARAMS)
    present, stopped_by = state.exists_prefix(["gone", "a"], 1.0)
    assert (present, stopped_by.code) == (0, ErrorCode.OBJECT_NOT_FOUND)
    with pytest.raises(InvalidArgumentError):
        state.exists_prefix(["a"] * (state.config.max_batch + 1), 1.0)


def test_unknown_keys_are_not_found_everywhere():
    state = make_state()
    nf = ErrorCode.OBJECT_NOT_FOUND
    assert call(state, "put_end", ["x"], 0.0) == [nf]
    assert call(state, "put_revoke", ["x"], 0.0) == [nf]
    assert call(state, "get_replicas", ["x"], 0.0) == [nf]
    assert call(state, "exists", ["x"], 0.0) == [nf]
    assert call(state, "remove", ["x"], False, 0.0) == [nf]
    assert call(state, "remove", ["x"], True, 0.0) == [nf]


def test_returned_replicas_are_copies():
    state = make_state()
    [result] = put(state, ["a"], [100])
    result.replicas[0].offset = 999
    state.put_end(["a"], 0.0)
    state.get_replicas(["a"], 0.0)[0].replicas[0].worker_id = "nobody"
    state.validate()
    assert state.objects["a"].replicas[0].offset == 0


def test_a_replica_being_copied_is_not_handed_out():
    state = make_state()
    put(state, ["a"], [100])
    state.put_end(["a"], 0.0)
    [done] = state.objects["a"].replicas
    copying = dataclasses.replace(done, worker_id="w-elsewhere", state=PENDING)
    state.objects["a"].replicas.append(copying)  # a re-replication under way
    for copies in (True, False):
        [result] = state.get_replicas(["a"], 0.0, copies)
        assert [(r.worker_id, r.state) for r in result.replicas] == [(done.worker_id, COMPLETE)]
        assert (result.replicas[0] is done) is not copies
    state.objects["a"].replicas.remove(copying)
    [result] = state.get_replicas(["a"], 0.0, copies=True)
    assert result.replicas == [done] and result.replicas[0] is not done


# -- revoke -----------------------------------------------------------------------------


def test_put_revoke_frees_pending_and_refuses_committed():
    state = make_state(workers=1)
    put(state, ["a", "b"], [1000, 1000])
    assert used(state, "w0") == 2048
    assert call(state, "put_revoke", ["a"], 1.0) == [OK]
    assert "a" not in state.objects
    # the revoked put's write grant (put_timeout + margin from PutStart) may still be in use; held two margins
    assert used(state, "w0") == 2048 and state.pending_frees[0].free_at == 34.0
    assert call(state, "put_end", ["a"], 1.0) == [ErrorCode.OBJECT_NOT_FOUND]
    assert call(state, "put_end", ["b"], 1.0) == [OK]
    heartbeat_all(state, 34.0)
    assert state.tick(34.0).freed_ranges == 1
    assert used(state, "w0") == 1024
    [refused] = state.put_revoke(["b"], 2.0)
    assert refused.code == ErrorCode.INVALID_PARAMS
    assert "remove" in refused.message
    assert state.objects["b"].state == COMPLETE


# -- first writer wins ------------------------------------------------------------------


def test_existing_key_is_already_exists_pending_or_complete():
    state = make_state()
    put(state, ["a"], [100])
    assert codes(put(state, ["a"], [5000])) == [ErrorCode.OBJECT_ALREADY_EXISTS]
    state.put_end(["a"], 0.0)
    assert codes(put(state, ["a"], [7000])) == [ErrorCode.OBJECT_ALREADY_EXISTS]
    assert state.objects["a"].size == 100
    assert total_used(state) == 128


def test_duplicate_within_one_batch_first_wins():
    state = make_state()
    results = put(state, ["a", "b", "a"], [100, 200, 300])
    assert codes(results) == [OK, OK, ErrorCode.OBJECT_ALREADY_EXISTS]
    assert results[2].replicas == []
    assert state.objects["a"].size == 100
    assert total_used(state) == 128 + 256


def test_duplicate_of_a_failed_put_repeats_the_failure():
    # "Already exists" would let a client count a failed put as success.
    state = make_state(workers=1, dram=4096)
    results = put(state, ["a", "a"], [8192, 100])
    assert codes(results) == [ErrorCode.NO_AVAILABLE_HANDLE] * 2
    assert "a" not in state.objects
    assert total_used(state) == 0


# -- placement --------------------------------------------------------------------------


def test_no_space_when_larger_than_every_segment():
    state = make_state(workers=2, dram=4096)
    [result] = put(state, ["big"], [4097])
    assert result.code == ErrorCode.NO_AVAILABLE_HANDLE
    assert "4097" in result.message and "no segment has room" in result.message
    assert result.replicas == []
    assert state.objects == {}
    assert total_used(state) == 0


def test_no_space_without_workers():
    state = make_state(workers=0)
    assert codes(put(state, ["a"], [1])) == [ErrorCode.NO_AVAILABLE_HANDLE]


def test_no_space_when_full_and_other_keys_still_proceed():
    state = make_state(workers=2, dram=4096)
    results = put(state, ["a", "b", "c", "d"], [4096, 4096, 1, 64])
    assert codes(results) == [OK, OK, ErrorCode.NO_AVAILABLE_HANDLE,
                              ErrorCode.NO_AVAILABLE_HANDLE]
    assert {r.replicas[0].worker_id for r in results[:2]} == {"w0", "w1"}
    state.put_revoke(["a"], 0.0)
    # the revoked range waits for its write grant: room is on its way, so "ask again later"
    [waiting] = put(state, ["c"], [1])
    assert waiting.code == ErrorCode.SPACE_BEING_FREED
    assert waiting.retry_after_s == pytest.approx(34.0)
    heartbeat_all(state, 34.0)
    state.tick(34.0)
    assert codes(put(state, ["c"], [1], now=34.0)) == [OK]


def test_replicas_go_to_distinct_workers():
    state = make_state(workers=5)
    [result] = put(state, ["a"], [1000], replica_num=5)
    assert sorted(r.worker_id for r in result.replicas) == ["w0", "w1", "w2", "w3", "w4"]
    assert state.objects["a"].replica_num == 5


def test_best_effort_fewer_workers_than_replicas():
    state = make_state(workers=2)
    [result] = put(state, ["a"], [1000], replica_num=3)
    assert result.code == OK
    assert sorted(r.worker_id for r in result.replicas) == ["w0", "w1"]
    assert state.objects["a"].replica_num == 3


def test_best_effort_skips_a_full_worker():
    state = make_state(workers=3, dram=4096)
    commit(state, "fill", 4096, preferred="w1")
    [result] = put(state, ["a"], [100], replica_num=3)
    assert result.code == OK
    assert sorted(r.worker_id for r in result.replicas) == ["w0", "w2"]


@pytest.mark.parametrize("replica_num", [0, -3])
def test_replica_num_below_one_means_one(replica_num):
    state = make_state(workers=3)
    [result] = put(state, ["a"], [100], replica_num=replica_num)
    assert result.code == OK and len(result.replicas) == 1
    assert state.objects["a"].replica_num == 1


def test_preferred_worker_comes_first():
    state = make_state(workers=6)
    for i in range(20):
        [result] = put(state, [f"k{i}"], [100], replica_num=3, preferred="w4")
        assert result.replicas[0].worker_id == "w4"
        assert len({r.worker_id for r in result.replicas}) == 3


def test_same_node_worker_is_preferred():
    state = make_state(workers=0)
    for i in range(5):
        register(state, f"w{i}", node_id=f"n{i}")
    for i in range(10):
        [result] = put(state, [f"k{i}"], [100], replica_num=2, node="n3")
        assert result.replicas[0].worker_id == "w3"


def test_a_batch_stays_on_one_local_worker_while_it_has_room():
    """Two workers on the writer's node: a put batch goes to the freer one whole (read back
    together, it is one exchange with one worker), the next batch to the other; keys that
    no longer fit on the batch's worker go to the other local worker, not to another node."""
    state = make_state(workers=0)
    for worker_id, node in (("a", "n"), ("b", "n"), ("far", "elsewhere")):
        register(state, worker_id, node_id=node, dram=64 * 1024)
    first = put(state, [f"x{i}" for i in range(8)], [1024] * 8, node="n")
    assert {r.replicas[0].worker_id for r in first} == {"a"}
    state.put_end([f"x{i}" for i in range(8)], 0.0)
    second = put(state, [f"y{i}" for i in range(8)], [1024] * 8, node="n")
    assert {r.replicas[0].worker_id for r in second} == {"b"}
    state.put_end([f"y{i}" for i in range(8)], 0.0)
    # "a" has 56 KiB free, "b" 56 KiB: a batch of 80 KiB fills "a" and goes on on "b"
    third = put(state, [f"z{i}" for i in range(10)], [8 * 1024] * 10, node="n")
    assert all(r.code == OK for r in third)
    where = [r.replicas[0].worker_id for r in third]
    assert where[0] == "a" and "far" not in where and set(where) == {"a", "b"}


def test_unknown_preferred_worker_falls_back_to_same_node():
    state = make_state(workers=0)
    for i in range(5):
        register(state, f"w{i}", node_id=f"n{i}")
    [result] = put(state, ["a"], [100], preferred="gone", node="n2")
    assert result.replicas[0].worker_id == "w2"


def test_full_preferred_worker_is_skipped():
    state = make_state(workers=3, dram=4096)
    commit(state, "fill", 4096, preferred="w0")
    [result] = put(state, ["a"], [100], preferred="w0")
    assert result.code == OK
    assert result.replicas[0].worker_id in ("w1", "w2")


def test_emptiest_sampled_worker_is_chosen():
    state = make_state(workers=3, dram=64 * 100, placement_sample=3)
    commit(state, "x", 64 * 50, preferred="w0")
    commit(state, "y", 64 * 25, preferred="w1")
    [one] = put(state, ["a"], [64])
    assert one.replicas[0].worker_id == "w2"
    [two] = put(state, ["b"], [64], replica_num=2)
    assert [r.worker_id for r in two.replicas] == ["w2", "w1"]


def test_small_sample_resamples_until_it_fits():
    # With one worker sampled at a time, three of four being full would fail without resampling.
    for seed in range(12):
        state = make_state(workers=4, dram=4096, seed=seed, placement_sample=1)
        for i in range(3):
            commit(state, f"fill{i}", 4096, preferred=f"w{i}")
        [result] = put(state, ["a"], [100])
        assert result.code == OK, f"seed {seed}: {result.message}"
        assert result.replicas[0].worker_id == "w3"


def test_placement_uses_dram_segments_only():
    state = make_state(workers=0)
    register(state, "ssd-only", dram=0, ssd=MiB)
    register(state, "both", dram=4096, ssd=MiB)
    [result] = put(state, ["a"], [1000], replica_num=2)
    assert [(r.worker_id, r.tier, r.segment_id) for r in result.replicas] == \
        [("both", TIER_DRAM, 0)]
    [big] = put(state, ["b"], [8192])
    assert big.code == ErrorCode.NO_AVAILABLE_HANDLE
    assert state.workers["ssd-only"].segments[1].allocator.used_bytes == 0


def test_pins_are_recorded():
    state = make_state()
    put(state, ["a"], [10], soft_pin=True)
    put(state, ["b"], [10], hard_pin=True)
    assert (state.objects["a"].soft_pin, state.objects["a"].hard_pin) == (True, False)
    assert (state.objects["b"].soft_pin, state.objects["b"].hard_pin) == (False, True)


# -- remove and leases ------------------------------------------------------------------


def test_lease_blocks_remove_until_it_ends():
    state = make_state(lease_ttl_s=10.0)
    commit(state, "a")
    state.get_replicas(["a"], 0.0)
    assert call(state, "remove", ["a"], False, 5.0) == [ErrorCode.OBJECT_HAS_LEASE]
    state.exists(["a"], 5.0)  # extends to 15
    assert call(state, "remove", ["a"], False, 14.9) == [ErrorCode.OBJECT_HAS_LEASE]
    assert call(state, "remove", ["a"], False, 15.0) == [OK]
    assert "a" not in state.objects
    # read grants outlive the lease by grant_margin_s; the range waits two margins
    assert [p.free_at for p in state.pending_frees] == [19.0]
    heartbeat_all(state, 19.0)
    state.tick(19.0)
    assert total_used(state) == 0
    assert state.pending_frees == []


def test_remove_unleased_frees_at_once():
    state = make_state()
    commit(state, "a", replica_num=2)
    assert call(state, "remove", ["a"], False, 0.0) == [OK]
    assert total_used(state) == 0
    assert call(state, "get_replicas", ["a"], 0.0) == [ErrorCode.OBJECT_NOT_FOUND]


def test_remove_pending_is_not_ready_even_with_force():
    state = make_state()
    put(state, ["a"], [10])
    assert call(state, "remove", ["a"], False, 0.0) == [ErrorCode.REPLICA_IS_NOT_READY]
    assert call(state, "remove", ["a"], True, 0.0) == [ErrorCode.REPLICA_IS_NOT_READY]
    assert state.objects["a"].state == PENDING


def test_force_remove_of_leased_object_holds_its_range_until_the_lease_ends():
    state = make_state(workers=1, dram=4096, lease_ttl_s=10.0, worker_ttl_s=100.0)
    commit(state, "a", 4096)
    state.get_replicas(["a"], 0.0)
    assert call(state, "remove", ["a"], True, 1.0) == [OK]
    assert "a" not in state.objects
    assert call(state, "exists", ["a"], 1.0) == [ErrorCode.OBJECT_NOT_FOUND]
    assert len(state.pending_frees) == 1 and state.pending_frees[0].free_at == 14.0
    assert used(state, "w0") == 4096
    [waiting] = put(state, ["b"], [1], now=2.0)  # room comes when the lease's grants end
    assert (waiting.code, waiting.retry_after_s) == (ErrorCode.SPACE_BEING_FREED, 12.0)
    assert state.tick(13.9).freed_ranges == 0
    state.validate()
    assert codes(put(state, ["b"], [1], now=13.9)) == [ErrorCode.SPACE_BEING_FREED]
    assert state.tick(14.0).freed_ranges == 1
    state.validate()
    assert state.pending_frees == [] and used(state, "w0") == 0
    [result] = put(state, ["b"], [4096], now=14.0)
    assert (result.code, result.replicas[0].offset) == (OK, 0)


def test_remove_all_skips_pending_and_leased_unless_forced():
    state = make_state(lease_ttl_s=10.0)
    for key in ("c1", "c2", "leased"):
        commit(state, key)
    put(state, ["pending"], [10])
    state.get_replicas(["leased"], 0.0)
    assert state.remove_all(False, 1.0) == 2
    state.validate()
    assert sorted(state.objects) == ["leased", "pending"]
    commit(state, "c3", now=1.0)
    assert state.remove_all(True, 1.0) == 2
    state.validate()
    assert sorted(state.objects) == ["pending"]
    assert len(state.pending_frees) == 1
    assert state.remove_all(True, 1.0) == 0


# -- time: put timeout, worker death ----------------------------------------------------


def heartbeat_all(state: MasterState, now: float, but: tuple[str, ...] = ()):
    for worker_id in list(state.workers):
        if worker_id not in but:
            # acknowledging every inventory update: ranges wait for that before reuse
            worker = state.workers[worker_id]
            assert state.heartbeat(worker_id, now, worker.update_seq).registered


def test_stalled_put_is_revoked_by_tick():
    state = make_state(put_timeout_s=30.0)
    put(state, ["a"], [100], now=0.0)
    put(state, ["b"], [100], now=10.0)
    commit(state, "c", now=0.0)
    heartbeat_all(state, 30.0)
    report = state.tick(30.0)
    state.validate()
    assert report.revoked_keys == [] and sorted(state.objects) == ["a", "b", "c"]
    heartbeat_all(state, 30.5)
    report = state.tick(30.5)
    state.validate()
    assert report.revoked_keys == ["a"]
    assert (report.dead_workers, report.lost_keys, report.freed_ranges) == ([], [], 0)
    assert sorted(state.objects) == ["b", "c"]
    assert total_used(state) == 128 + 128 + 1024  # a's range waits for its write grant
    assert call(state, "put_end", ["a"], 31.0) == [ErrorCode.OBJECT_NOT_FOUND]
    heartbeat_all(state, 34.0)
    assert state.tick(34.0).freed_ranges == 1
    assert total_used(state) == 128 + 1024


def test_silent_worker_dies_and_its_replicas_go():
    state = make_state(workers=2, worker_ttl_s=10.0)
    commit(state, "both", replica_num=2)
    commit(state, "only0", preferred="w0")
    commit(state, "only1", preferred="w1")
    put(state, ["pending0"], [10], preferred="w0")
    assert state.tick(10.0).dead_workers == []  # silent for exactly the ttl: still alive
    heartbeat_all(state, 15.0, but=("w0",))
    report = state.tick(20.5)
    state.validate()
    assert report.dead_workers == ["w0"]
    assert sorted(report.lost_keys) == ["only0", "pending0"]
    assert sorted(state.objects) == ["both", "only1"]
    assert [r.worker_id for r in state.objects["both"].replicas] == ["w1"]
    [result] = state.get_replicas(["both"], 21.0)
    assert [r.worker_id for r in result.replicas] == ["w1"]
    assert call(state, "get_replicas", ["only0"], 21.0) == [ErrorCode.OBJECT_NOT_FOUND]
    assert state.heartbeat("w0", 21.0).registered is False
    assert "w0" not in state.workers


def test_pending_frees_on_a_dead_worker_are_discarded():
    state = make_state(workers=2, lease_ttl_s=100.0, worker_ttl_s=10.0)
    commit(state, "a", preferred="w0")
    commit(state, "b", preferred="w1")
    state.get_replicas(["a", "b"], 0.0)
    state.remove(["a", "b"], True, 1.0)
    assert len(state.pending_frees) == 2
    heartbeat_all(state, 11.0, but=("w0",))
    report = state.tick(11.0)
    state.validate()
    assert report.dead_workers == ["w0"] and report.freed_ranges == 0
    assert [p.worker_id for p in state.pending_frees] == ["w1"]
    heartbeat_all(state, 103.9)
    assert state.tick(103.9).freed_ranges == 0  # lease 100 + 2 grant margins of 2 s
    heartbeat_all(state, 104.0)
    assert state.tick(104.0).freed_ranges == 1
    state.validate()
    assert total_used(state) == 0


def test_reregistration_is_a_restart():
    state = make_state(workers=2)
    commit(state, "both", replica_num=2)
    commit(state, "only0", preferred="w0")
    old = state.workers["w0"]
    worker = register(state, "w0", now=5.0, dram=2 * MiB, key=b"n" * 32)
    assert worker is state.workers["w0"] and worker is not old
    assert (worker.grant_key, worker.registered_at, worker.last_heartbeat) == \
        (b"n" * 32, 5.0, 5.0)
    assert worker.segments[0].size_bytes == 2 * MiB
    assert used(state, "w0") == 0
    assert sorted(state.objects) == ["both"]
    assert [r.worker_id for r in state.objects["both"].replicas] == ["w1"]


def test_worker_registration_records_everything():
    state = make_state(workers=0)
    worker = register(state, "w", node_id="n", dram=4096, ssd=8192)
    assert (worker.worker_id, worker.node_id, worker.data_addr, worker.grpc_addr,
            worker.http_addr) == ("w", "n", "w:1", "w:2", "w:3")
    seg = worker.segments[1]
    assert (seg.worker_id, seg.segment_id, seg.tier, seg.size_bytes, seg.path) == \
        ("w", 1, TIER_SSD, 8192, "/ssd/w")
    assert seg.allocator.size_bytes == 8192
    assert state.heartbeat("w", 3.0).registered and worker.last_heartbeat == 3.0


@pytest.mark.parametrize("worker_id, specs", [
    ("", [SegmentSpec(0, TIER_DRAM, 4096, "p")]),
    ("w0", []),
    ("w0", [SegmentSpec(0, TIER_DRAM, 0, "p")]),
    ("w0", [SegmentSpec(0, TIER_DRAM, -4096, "p")]),
    ("w0", [SegmentSpec(0, TIER_DRAM, 4096, "p"), SegmentSpec(0, TIER_SSD, 4096, "q")]),
    ("w0", [SegmentSpec(0, 7, 4096, "p")]),
])
def test_bad_registration_raises_and_changes_nothing(worker_id, specs):
    state = make_state(workers=1)
    commit(state, "a")
    before = state.workers["w0"]
    with pytest.raises(InvalidArgumentError):
        state.register_worker(worker_id, "n", "d", "g", "h", specs, b"k", 1.0)
    state.validate()
    assert state.workers == {"w0": before}
    assert list(state.objects) == ["a"]


# -- invalid input ----------------------------------------------------------------------


def test_invalid_keys_fail_alone():
    state = make_state(max_key_bytes=4096)
    keys = ["", 123, None, "x" * 4097, "\ud800", "é" * 2049, "é" * 2048, "ok"]
    results = put(state, keys, [10] * len(keys))
    bad = ErrorCode.INVALID_PARAMS
    assert codes(results) == [bad] * 6 + [OK, OK]
    assert all(r.message for r in results[:6])
    assert sorted(state.objects) == sorted(["é" * 2048, "ok"])


@pytest.mark.parametrize("method, extra, valid_key", [
    ("put_end", (), "ok"), ("put_revoke", (), "p"), ("get_replicas", (), "ok"),
    ("exists", (), "ok"), ("remove", (True,), "ok"),
])
def test_invalid_keys_on_every_call(method, extra, valid_key):
    state = make_state(max_key_bytes=8)
    commit(state, "ok")
    put(state, ["p"], [10])
    keys = ["", 7, "123456789", "\udfff", valid_key]
    got = call(state, method, keys, *extra, 0.0)
    assert got == [ErrorCode.INVALID_PARAMS] * 4 + [OK]


@pytest.mark.parametrize("size", [0, -1, -4096, 1.5, "10", None, True])
def test_invalid_sizes_fail_alone(size):
    state = make_state()
    results = put(state, ["bad", "good"], [size, 10])
    assert codes(results) == [ErrorCode.INVALID_PARAMS, OK]
    assert list(state.objects) == ["good"]
    assert total_used(state) == 64


def test_batch_limits_raise_and_change_nothing():
    state = make_state(max_batch=3)
    commit(state, "a")
    state.get_replicas(["a"], 0.0)
    lease = state.objects["a"].lease_until
    four = ["a", "b", "c", "d"]
    with pytest.raises(InvalidArgumentError):
        state.put_start(four, [1] * 4, PlacementConfig(), "", 1.0)
    for method, args in [("put_end", ()), ("put_revoke", ()), ("get_replicas", ()),
                         ("exists", ()), ("remove", (True,))]:
        with pytest.raises(InvalidArgumentError):
            getattr(state, method)(four, *args, 1.0)
    with pytest.raises(InvalidArgumentError):
        state.put_start(["b", "c"], [1], PlacementConfig(), "", 1.0)
    with pytest.raises(InvalidArgumentError):
        state.put_start(["b"], [1], PlacementConfig(replica_num=65), "", 1.0)
    state.validate()
    assert list(state.objects) == ["a"] and state.objects["a"].lease_until == lease
    assert total_used(state) == 1024
    assert codes(put(state, ["b", "c", "d"], [1, 1, 1], replica_num=64)) == [OK] * 3


# -- stats and validate -----------------------------------------------------------------


def test_stats():
    state = make_state(workers=0)
    register(state, "w0", node_id="n0", dram=4096, ssd=8192)
    register(state, "w1", node_id="n1", dram=4096)
    commit(state, "a", 1024, preferred="w0")
    put(state, ["b"], [64], preferred="w0")
    stats = state.stats()
    assert (stats["objects"], stats["pending"]) == (2, 1)
    assert stats["tiers"] == {"DRAM": {"total_bytes": 8192, "used_bytes": 1088, "replicas": 2},
                              "SSD": {"total_bytes": 8192, "used_bytes": 0, "replicas": 0}}
    w0 = stats["workers"][0]
    assert (w0["worker_id"], w0["node_id"], w0["data_addr"]) == ("w0", "n0", "w0:1")
    assert w0["segments"][0] == {"segment_id": 0, "tier": TIER_DRAM, "size_bytes": 4096,
                                 "used_bytes": 1088, "fragmentation": 0.0}
    assert [s["segment_id"] for s in w0["segments"]] == [0, 1]
    assert json.loads(json.dumps(stats)) == stats


def point_b_at_a_range(state):
    a, b = state.objects["a"], state.objects["b"]
    b.replicas[0] = dataclasses.replace(a.replicas[0], length=b.size)


@pytest.mark.parametrize("corrupt", [
    lambda s: s.workers["w0"].segments[0].allocator.free(s.objects["a"].replicas[0].offset),
    lambda s: s.objects["a"].replicas.append(s.objects["a"].replicas[0]),
    lambda s: s.objects["a"].replicas.clear(),
    lambda s: setattr(s.objects["a"].replicas[0], "state", PENDING),
    lambda s: setattr(s.objects["a"], "size", 999),
    lambda s: setattr(s.objects["a"].replicas[0], "worker_id", "ghost"),
    lambda s: setattr(s.objects["a"].replicas[0], "offset", 4096),
    lambda s: s.objects.pop("a"),
    lambda s: s.workers["w0"].segments[0].allocator.allocate(64),
    point_b_at_a_range,
])
def test_validate_detects_corruption(corrupt):
    state = make_state(workers=1)
    commit(state, "a", 100)
    commit(state, "b", 100)
    state.validate()
    corrupt(state)
    with pytest.raises(AssertionError):
        state.validate()


# -- random sequences -------------------------------------------------------------------

KEYS = ["k0", "k1", "k2"]
WORKERS = [f"w{i}" for i in range(4)]


class MasterMachine(RuleBasedStateMachine):
    """Random operation sequences; validate() after each, plus the lease-range guarantee."""

    def __init__(self):
        super().__init__()
        self.config = MasterConfig(lease_ttl_s=10.0, worker_ttl_s=10.0, put_timeout_s=30.0,
                                   max_batch=4, placement_sample=2,
                                   reuse_after_inventory_ack=False)
        self.state: MasterState | None = None
        self.now = 0.0
        # Ranges some reader holds a lease on: (worker, incarnation, offset, end, lease_until).
        self.leased: list[tuple[str, float, int, int, float]] = []

    @initialize(seed=st.integers(0, 2**32 - 1), sizes=st.lists(
        st.sampled_from([1024, 4096, 8192]), min_size=len(WORKERS), max_size=len(WORKERS)))
    def start(self, seed, sizes):
        self.state = MasterState(self.config, random.Random(seed))
        for worker_id, size in zip(WORKERS, sizes):
            self._register(worker_id, size)

    def _register(self, worker_id: str, size: int):
        self.leased = [lease for lease in self.leased if lease[0] != worker_id]
        self.state.register_worker(worker_id, f"n{worker_id}", "d", "g", "h",
                                   [SegmentSpec(0, TIER_DRAM, size, "p"),
                                    SegmentSpec(1, TIER_SSD, size, "q")], b"key", self.now)
        self.state.heartbeat(worker_id, self.now)

    @rule(keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=4),
          size=st.integers(1, 3000), replica_num=st.integers(0, 3),
          preferred=st.sampled_from(["", *WORKERS]))
    def put_start(self, keys, size, replica_num, preferred):
        existed = {k for k in keys if k in self.state.objects}
        results = self.state.put_start(keys, [size] * len(keys),
                                       PlacementConfig(replica_num, preferred), "nw1", self.now)
        seen: set[str] = set()
        for key, result in zip(keys, results):
            event(f"put_start: {ErrorCode(result.code).name}")
            if key in existed or (key in seen and key in self.state.objects):
                assert result.code == ErrorCode.OBJECT_ALREADY_EXISTS
            elif result.code == OK:
                self._check_new_replicas(result, replica_num, preferred)
            else:
                assert result.code in (ErrorCode.NO_AVAILABLE_HANDLE,
                                       ErrorCode.SPACE_BEING_FREED)
            seen.add(key)

    def _check_new_replicas(self, result: KeyResult, replica_num: int, preferred: str):
        workers = [r.worker_id for r in result.replicas]
        assert 1 <= len(workers) <= max(1, replica_num)
        assert len(set(workers)) == len(workers)
        if preferred in self.state.workers and preferred in workers:
            assert workers[0] == preferred
        for r in result.replicas:
            incarnation = self.state.workers[r.worker_id].registered_at
            end = r.offset + align_up(r.length, 64)
            for worker_id, inc, start, stop, until in self.leased:
                if worker_id == r.worker_id and inc == incarnation and until > self.now:
                    assert end <= start or r.offset >= stop, "leased range reallocated"

    @rule(key=st.sampled_from(KEYS), size=st.integers(1, 3000))
    def put_and_end(self, key, size):
        # The client's usual path in one step, so that leases and removals meet more often.
        self.put_start([key], size, 1, "")
        self.put_end(key)

    @rule(key=st.sampled_from(KEYS))
    def put_end(self, key):
        expected = OK if key in self.state.objects else ErrorCode.OBJECT_NOT_FOUND
        assert codes(self.state.put_end([key], self.now)) == [expected]

    @rule(key=st.sampled_from(KEYS))
    def put_revoke(self, key):
        obj = self.state.objects.get(key)
        [code] = codes(self.state.put_revoke([key], self.now))
        if obj is None:
            assert code == ErrorCode.OBJECT_NOT_FOUND
        else:
            assert code == (OK if obj.state == PENDING else ErrorCode.INVALID_PARAMS)

    @rule(keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=4))
    def get(self, keys):
        for key, result in zip(keys, self.state.get_replicas(keys, self.now)):
            if result.code != OK:
                continue
            assert result.replicas
            for r in result.replicas:
                incarnation = self.state.workers[r.worker_id].registered_at
                self.leased.append((r.worker_id, incarnation, r.offset,
                                    r.offset + align_up(r.length, 64),
                                    self.now + self.config.lease_ttl_s))

    @rule(key=st.sampled_from(KEYS))
    def exists(self, key):
        obj = self.state.objects.get(key)
        [code] = codes(self.state.exists([key], self.now))
        visible = obj is not None and obj.state == COMPLETE
        assert code == (OK if visible else ErrorCode.OBJECT_NOT_FOUND)

    @rule(key=st.sampled_from(KEYS), force=st.booleans())
    def remove(self, key, force):
        obj = self.state.objects.get(key)
        [code] = codes(self.state.remove([key], force, self.now))
        if obj is None:
            assert code == ErrorCode.OBJECT_NOT_FOUND
        elif obj.state == PENDING:
            assert code == ErrorCode.REPLICA_IS_NOT_READY
        elif obj.lease_until > self.now and not force:
            assert code == ErrorCode.OBJECT_HAS_LEASE
        else:
            assert code == OK and key not in self.state.objects
            if obj.lease_until > self.now:
                event("remove: forced past a lease")

    @rule(key=st.sampled_from(KEYS))
    def get_then_force_remove(self, key):
        # A reader holds the lease while the object goes: its range must stay unallocated.
        self.get([key])
        self.remove(key, True)

    @precondition(lambda self: self.state is not None and len(self.state.objects) > 1)
    @rule(force=st.booleans())
    def remove_all(self, force):
        self.state.remove_all(force, self.now)
        assert all(o.state == PENDING or (not force and o.lease_until > self.now)
                   for o in self.state.objects.values())

    @rule(dt=st.sampled_from([0.5, 3.0, 9.0, 12.0, 31.0]))
    def advance(self, dt):
        self.now += dt
        heartbeat_all(self.state, self.now)
        report = self.state.tick(self.now)
        event(f"tick: revoked={bool(report.revoked_keys)} freed={bool(report.freed_ranges)}")
        assert report.dead_workers == []
        assert not any(o.state == PENDING and self.now - o.put_started_at > 30.0
                       for o in self.state.objects.values())
        assert all(p.free_at > self.now for p in self.state.pending_frees)

    @precondition(lambda self: self.state is not None and self.state.workers)
    @rule(data=st.data())
    def kill_worker(self, data):
        victim = data.draw(st.sampled_from(sorted(self.state.workers)), label="victim")
        self.now += self.config.worker_ttl_s + 0.5
        heartbeat_all(self.state, self.now, but=(victim,))
        report = self.state.tick(self.now)
        assert report.dead_workers == [victim]
        event(f"kill: lost={bool(report.lost_keys)}")
        assert victim not in self.state.workers
        assert all(k not in self.state.objects for k in report.lost_keys)
        self.leased = [lease for lease in self.leased if lease[0] != victim]

    @rule(worker_id=st.sampled_from(WORKERS), size=st.sampled_from([1024, 4096, 8192]))
    def register(self, worker_id, size):
        self._register(worker_id, size)

    @invariant()
    def valid(self):
        if self.state is not None:
            self.state.validate()


MasterMachine.TestCase.settings = settings(
    max_examples=400, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestMasterMachine = MasterMachine.TestCase


def test_put_end_and_revoke_belong_to_their_put_start():
    state = make_state(workers=1, put_timeout_s=1.0)
    [first] = put(state, ["k"], [100], now=0.0)
    heartbeat_all(state, 1.5)
    assert state.tick(1.5).revoked_keys == ["k"]  # the first writer stalled
    [second] = put(state, ["k"], [100], now=1.5)
    assert second.put_id != first.put_id
    # the stalled writer wakes up: neither its commit nor its revoke touches the new put
    assert codes(state.put_end(["k"], 1.6, [first.put_id])) == [ErrorCode.OBJECT_NOT_FOUND]
    assert codes(state.put_revoke(["k"], 1.6, [first.put_id])) == [ErrorCode.OBJECT_NOT_FOUND]
    assert state.objects["k"].state == PENDING
    assert codes(state.put_end(["k"], 1.7, [second.put_id])) == [OK]
    assert state.objects["k"].state == COMPLETE
    state.validate()
    with pytest.raises(InvalidArgumentError):
        state.put_end(["k"], 1.8, [])


def test_a_worker_registering_again_with_the_same_segments_keeps_its_objects():
    # a restart within worker_ttl: the segment file kept the bytes, so the replicas stay where
    # they are (leased ones included) under the worker's new addresses and grant key
    state = make_state(workers=1, dram=4096, lease_ttl_s=10.0, worker_ttl_s=100.0)
    commit(state, "leased", 1024)
    commit(state, "unread", 1024)
    [pending] = put(state, ["pending"], [1024], now=0.5)
    state.get_replicas(["leased"], 1.0)
    before = {k: (o.replicas[0].offset, o.state) for k, o in state.objects.items()}
    worker = register(state, "w0", now=2.0, dram=4096, key=b"n" * 32)
    state.validate()
    assert worker.grant_key == b"n" * 32 and worker.last_heartbeat == 2.0
    assert {k: (o.replicas[0].offset, o.state) for k, o in state.objects.items()} == before
    assert codes(state.put_end(["pending"], 2.5, [pending.put_id])) == [OK]
    placed = [r.replicas[0].offset for r in put(state, ["a"], [1024], now=3.0)]
    assert placed[0] not in {offset for offset, _ in before.values()}


def _register_without_heartbeat(state: MasterState, worker_id: str, key: bytes,
                                now: float, dram: int = MiB) -> None:
    state.register_worker(worker_id, f"node-{worker_id}", f"{worker_id}:1", f"{worker_id}:2",
                          f"{worker_id}:3", [SegmentSpec(0, TIER_DRAM, dram,
                                                         f"/dev/shm/{worker_id}")], key, now)
    state.validate()


def test_nothing_is_granted_on_a_worker_until_it_heartbeats_with_its_new_key():
    # the worker takes the key from the registration's answer: a grant under it that reaches
    # the worker sooner is refused (a write right after a master restart failed so in CI)
    state = make_state(workers=2, dram=8192)
    commit(state, "on-w0", 1024, preferred="w0")
    commit(state, "on-both", 1024, replica_num=2)
    _register_without_heartbeat(state, "w0", b"n" * 32, 1.0, dram=8192)
    assert state.stats()["workers"][0]["registering"] is True
    [placed] = put(state, ["new"], [1024], now=1.0, preferred="w0")
    assert [r.worker_id for r in placed.replicas] == ["w1"]
    only_w0, both = state.get_replicas(["on-w0", "on-both"], 1.0)
    assert only_w0.code == ErrorCode.REPLICA_IS_NOT_READY and "registration" in only_w0.message
    assert [r.worker_id for r in both.replicas] == ["w1"]
    # exists agrees with get: not present while unreadable
    assert codes(state.exists(["on-w0", "on-both"], 1.0)) == [ErrorCode.REPLICA_IS_NOT_READY, OK]
    assert state.exists_prefix(["on-both", "on-w0"], 1.0)[0] == 1
    assert state.heartbeat("w0", 1.1).registered
    state.validate()
    assert state.stats()["workers"][0]["registering"] is False
    assert [r.worker_id for r in state.get_replicas(["on-w0"], 1.1)[0].replicas] == ["w0"]
    assert codes(state.exists(["on-w0"], 1.1)) == [OK]
    assert len(state.get_replicas(["on-both"], 1.1)[0].replicas) == 2
    [placed] = put(state, ["newer"], [1024], now=1.1, preferred="w0")
    assert [r.worker_id for r in placed.replicas] == ["w0"]


def test_a_put_waits_for_a_registering_worker_rather_than_evict_or_fail():
    state = make_state(workers=0, dram=4096)
    _register_without_heartbeat(state, "w0", b"n" * 32, 0.0, dram=4096)
    [waiting] = put(state, ["k"], [1024])
    assert waiting.code == ErrorCode.SPACE_BEING_FREED and waiting.retry_after_s > 0
    assert "w0" in waiting.message and "k" not in state.objects
    # one that stays silent is waited for 5 s at most (registering again does not restart
    # that), then the put goes on as if it were not there: here "no space"
    _register_without_heartbeat(state, "w0", b"m" * 32, 4.0, dram=4096)
    assert put(state, ["k"], [1024], now=4.5)[0].code == ErrorCode.SPACE_BEING_FREED
    assert put(state, ["k"], [1024], now=5.5)[0].code == ErrorCode.NO_AVAILABLE_HANDLE
    state.heartbeat("w0", 0.1)
    assert codes(put(state, ["k"], [1024], now=0.1)) == [OK]
    # full, with nothing registering: eviction or "no space" as before, not a wait
    commit(state, "fill", 3072 - 1024, now=0.2)
    state.heartbeat("w0", 0.3)
    assert put(state, ["big"], [8192], now=0.3)[0].code == ErrorCode.NO_AVAILABLE_HANDLE


def test_a_registering_worker_without_room_is_not_waited_for():
    # a restarted worker full of the objects it kept: the put evicts elsewhere at once
    state = make_state(workers=2, dram=4096)
    for worker_id in ("w0", "w1"):
        for i in range(4):
            commit(state, f"{worker_id}-{i}", 1024, preferred=worker_id)
    _register_without_heartbeat(state, "w0", b"n" * 32, 1.0, dram=4096)
    result = put(state, ["k"], [1024], now=1.0)[0]
    assert result.code in (OK, ErrorCode.SPACE_BEING_FREED)
    assert "registration" not in result.message
    assert all(r.worker_id == "w1" for r in result.replicas)


def test_healing_copies_to_a_registering_worker_only_after_its_heartbeat():
    state = make_state(workers=3, dram=8192, worker_ttl_s=5.0)
    commit(state, "k", 1024, replica_num=2, preferred="w0")
    holders = {r.worker_id for r in state.objects["k"].replicas}
    [other] = holders - {"w0"}
    [spare] = {"w0", "w1", "w2"} - holders
    _register_without_heartbeat(state, spare, b"n" * 32, 1.0, dram=8192)
    state._queue_heal(state.objects["k"])
    state.objects["k"].replica_num = 3
    state._heal_after = 0.0
    state.tick(1.0)
    assert all(m.dst.worker_id != spare for m in state.moves.values())
    state.heartbeat(spare, 1.1)
    state._queue_heal(state.objects["k"])
    state.tick(1.1)
    assert [m.dst.worker_id for m in state.moves.values()] == [spare]


def test_a_put_with_replicas_to_spare_waits_for_a_registering_worker():
    # else the object would keep one replica for good: nothing heals a put made short
    state = make_state(workers=2, dram=8192)
    _register_without_heartbeat(state, "w1", b"n" * 32, 1.0, dram=8192)
    [waiting] = put(state, ["k"], [1024], now=1.0, replica_num=2)
    assert waiting.code == ErrorCode.SPACE_BEING_FREED and total_used(state) == 0
    state.heartbeat("w1", 1.1)
    [placed] = put(state, ["k"], [1024], now=1.1, replica_num=2)
    assert sorted(r.worker_id for r in placed.replicas) == ["w0", "w1"]


def test_making_room_never_evicts_where_the_put_cannot_go():
    state = make_state(workers=2, dram=4096, worker_ttl_s=5.0)
    for worker_id in ("w0", "w1"):
        for i in range(3):
            commit(state, f"{worker_id}-{i}", 1024, preferred=worker_id)
    # w0 registered again and has been silent since: no longer waited for (dead at the next
    # tick), and no room freed on it would take the put
    _register_without_heartbeat(state, "w0", b"n" * 32, 1.0, dram=4096)
    result = put(state, ["k"], [2048], now=6.5)[0]
    assert result.code == OK and [r.worker_id for r in result.replicas] == ["w1"]
    assert {k for k in state.objects if k.startswith("w0-")} == {"w0-0", "w0-1", "w0-2"}


def test_a_copy_whose_only_source_is_registering_waits_instead_of_failing():
    state = make_state(workers=2, dram=8192, worker_ttl_s=5.0)
    commit(state, "k", 1024, preferred="w0")
    state.objects["k"].replica_num = 2
    _register_without_heartbeat(state, "w0", b"n" * 32, 1.0, dram=8192)
    state._queue_heal(state.objects["k"])
    state._heal_after = 0.0
    report = state.tick(1.0)
    assert not state.moves and report.heals_given_up == 0  # still queued
    state.heartbeat("w0", 1.1)
    state.tick(1.1)
    assert [(m.src.worker_id, m.dst.worker_id) for m in state.moves.values()] == [("w0", "w1")]


def test_a_dead_worker_coming_back_keeps_ranges_under_lease():
    state = make_state(workers=2, lease_ttl_s=10.0, worker_ttl_s=5.0)
    commit(state, "k", 1024, preferred="w0")
    state.get_replicas(["k"], 0.0)
    heartbeat_all(state, 6.0, but=("w0",))
    assert state.tick(6.0).dead_workers == ["w0"]
    state.remove(["k"], True, 6.5)  # lost with w0, then removed: not adopted when it returns
    register(state, "w0", now=7.0)
    state.validate()
    assert [p.free_at for p in state.pending_frees] == [14.0]
    heartbeat_all(state, 30.0)
    state.tick(30.0)
    register(state, "w1", now=30.0)  # nothing is held for w1, and stale holds are gone
    assert state.pending_frees == [] and total_used(state) == 0
