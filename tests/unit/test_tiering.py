"""Tests of eviction, demotion and promotion (master/tiering.py): exact transitions under an
injected clock with validate() after every step, and a hypothesis machine over random
sequences on workers with DRAM and SSD segments."""
from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule
from test_state import commit, heartbeat_all, put, register

from mooncake_master.allocator import align_up
from mooncake_master.state import (COMPLETE, DEMOTE, MOVE_DONE, MOVE_FAILED, MOVE_UNKNOWN,
                                   PENDING, PROMOTE, TIER_DRAM, TIER_SSD, MasterConfig,
                                   MasterState, Move, PlacementConfig, SegmentSpec)
from mooncake_master.tiering import MOVE_RETRY_S
from mooncake_proto.errors import ErrorCode

OK = ErrorCode.OK
NO_SPACE = ErrorCode.NO_AVAILABLE_HANDLE
BEING_FREED = ErrorCode.SPACE_BEING_FREED
DRAM_SEG, SSD_SEG = 0, 1  # the segment ids register() gives


def tiered(workers: int = 1, dram: int = 4096, ssd: int = 8192, **config) -> MasterState:
    """Workers w0.. with a DRAM segment (id 0) and, when ssd, an SSD segment (id 1). The
    watermark is off (1.0) unless a test sets it, so that only failed puts evict."""
    config.setdefault("high_watermark", 1.0)
    config.setdefault("worker_ttl_s", 1e9)
    config.setdefault("reuse_after_inventory_ack", False)  # test_recovery.py tests that
    state = MasterState(MasterConfig(**config), random.Random(0))
    for i in range(workers):
        register(state, f"w{i}", dram=dram, ssd=ssd)
    return state


def put1(state: MasterState, key: str, size: int, now: float, **kwargs):
    [result] = put(state, [key], [size], now, **kwargs)
    return result


def seg_used(state: MasterState, worker_id: str, segment_id: int) -> int:
    return state.workers[worker_id].segments[segment_id].allocator.used_bytes


def where(state: MasterState, key: str) -> list[tuple[str, int, int, int]]:
    """(worker, segment, tier, offset) of each replica of key."""
    return [(r.worker_id, r.segment_id, r.tier, r.offset) for r in state.objects[key].replicas]


def tick(state: MasterState, now: float):
    heartbeat_all(state, now)
    report = state.tick(now)
    state.validate()
    return report


def take(state: MasterState, now: float):
    moves = state.take_moves(now)
    state.validate()
    return moves


def finish(state: MasterState, move_id: int, outcome: str, now: float) -> bool:
    swapped = state.finish_move(move_id, outcome, now)
    state.validate()
    return swapped


def get(state: MasterState, key: str, now: float):
    [result] = state.get_replicas([key], now)
    state.validate()
    assert result.code == OK, result.message
    return result


def full_of(state: MasterState, keys: str, size: int = 1024, start: float = 0.0, **pins):
    """Commits one object per character of keys, one second apart (LRU order = keys)."""
    for i, key in enumerate(keys):
        commit(state, key, size, now=start + i, **pins)


def demote_one(state: MasterState, now: float = 1.0):
    """A failed put on w0's full DRAM plans the demotion of its LRU object; the move."""
    result = put1(state, "new", 1024, now)
    assert (result.code, result.retry_after_s) == (BEING_FREED, MOVE_RETRY_S)
    [move] = state.moves.values()
    return move


# -- choice of victims ------------------------------------------------------------------


def test_victims_are_least_recently_accessed_first():
    state = tiered(ssd=0, lease_ttl_s=1.0, grant_margin_s=0.5)
    full_of(state, "abcd")
    assert list(state.objects) == list("abcd")
    get(state, "a", 5.0)                               # a touch by get ...
    assert state.exists(["b"], 5.0)[0].code == OK      # ... or by exists moves a key last
    state.validate()
    assert list(state.objects) == list("cdab")
    offsets = {key: where(state, key)[0][3] for key in "abcd"}
    # leases ended at 6 and their grants at 7: at 10 every victim is freed at once
    for key, victim in [("e", "c"), ("f", "d"), ("g", "a"), ("h", "b")]:
        result = put1(state, key, 1024, 10.0)
        assert result.code == OK, result.message
        assert victim not in state.objects
        assert result.replicas[0].offset == offsets[victim]
        assert state.put_end([key], 10.0)[0].code == OK
    assert list(state.objects) == list("efgh")
    assert state.pending_frees == []
    assert (state.counters["evicted_objects"], state.counters["evicted_replicas"]) == (4, 4)


def test_the_writers_own_segment_is_evicted_first():
    state = tiered(workers=2, ssd=0)
    commit(state, "a", 4096, now=0.0, preferred="w1")
    commit(state, "b", 4096, now=1.0, preferred="w0")
    # the least recently used object (a) is on w1, but the writer is local to w0
    result = put1(state, "c", 4096, 5.0, preferred="w0")
    assert result.code == OK and result.replicas[0].worker_id == "w0"
    assert sorted(state.objects) == ["a", "c"]
    result = put1(state, "d", 1024, 5.0)  # no preference: the global LRU object goes
    assert result.code == OK and result.replicas[0].worker_id == "w1"
    assert sorted(state.objects) == ["c", "d"]


def test_soft_pinned_objects_go_only_after_every_unpinned_one():
    state = tiered(ssd=0)
    commit(state, "s1", 1024, now=0.0, soft_pin=True)
    commit(state, "u1", 1024, now=1.0)
    commit(state, "s2", 1024, now=2.0, soft_pin=True)
    commit(state, "u2", 1024, now=3.0)
    # the newcomers are hard-pinned so that only the four above are candidates
    for i, victim in enumerate(["u1", "u2", "s1", "s2"]):
        result = put1(state, f"x{i}", 1024, 10.0 + i, hard_pin=True)
        assert result.code == OK, result.message
        assert victim not in state.objects and len(state.objects) == 4
        assert state.put_end([f"x{i}"], 10.0 + i)[0].code == OK
    # a pool full of hard pins: nothing can go, and nothing is on its way
    result = put1(state, "y", 64, 20.0)
    assert (result.code, result.retry_after_s) == (NO_SPACE, 0.0)
    assert "nothing is evictable" in result.message


def test_hard_pinned_objects_are_never_evicted_nor_demoted():
    state = tiered(ssd=8192, high_watermark=0.5)
    full_of(state, "abcd", hard_pin=True)
    assert put1(state, "x", 64, 10.0).code == NO_SPACE
    report = tick(state, 20.0)  # 100% used, far past the watermark
    assert (report.evicted_keys, report.moves_planned) == ([], 0)
    assert state.moves == {} and sorted(state.objects) == list("abcd")
    assert all(where(state, k)[0][2] == TIER_DRAM for k in "abcd")
    assert state.remove(["b"], False, 21.0)[0].code == OK  # an explicit remove still works
    state.validate()
    assert put1(state, "x", 64, 21.0).code == OK


def test_a_hard_pinned_lru_object_is_skipped_for_a_newer_one():
    state = tiered(ssd=0)
    commit(state, "pinned", 2048, now=0.0, hard_pin=True)
    commit(state, "newer", 2048, now=1.0)
    assert put1(state, "c", 1024, 5.0).code == OK
    assert sorted(state.objects) == ["c", "pinned"]


def test_leased_and_pending_objects_are_not_evicted():
    state = tiered(ssd=0, lease_ttl_s=10.0, grant_margin_s=2.0, high_watermark=0.5)
    commit(state, "a", 2048, now=0.0)
    assert put1(state, "b", 2048, 0.0).code == OK  # stays PENDING
    get(state, "a", 1.0)                           # leased until 11
    # nothing can go now, but a's lease ends at 11: the writer is told to come back then
    result = put1(state, "c", 64, 5.0)
    assert (result.code, result.retry_after_s) == (BEING_FREED, pytest.approx(6.0))
    assert tick(state, 5.0).evicted_keys == []     # past the watermark, but nothing to take
    assert sorted(state.objects) == ["a", "b"]
    # the lease ends at 11, its grants (+2 margins) at 15: a goes, its range comes at 15
    result = put1(state, "c", 64, 11.0)
    assert (result.code, result.retry_after_s) == (BEING_FREED, pytest.approx(4.0))
    assert sorted(state.objects) == ["b"] and state.objects["b"].state == PENDING
    assert [(p.offset, p.free_at) for p in state.pending_frees] == [(0, 15.0)]
    assert tick(state, 14.0).evicted_keys == []    # what is already leaving is not taken twice
    assert tick(state, 15.0).freed_ranges == 1
    assert put1(state, "c", 64, 15.0).code == OK


def test_an_object_that_fits_nowhere_is_no_space_even_while_space_is_freed():
    # SPACE_BEING_FREED makes the writer wait: right only when what comes could hold it
    state = tiered(workers=2, dram=4096, ssd=0, lease_ttl_s=10.0)
    commit(state, "a", 1024, preferred="w0")
    get(state, "a", 0.0)
    assert state.remove(["a"], True, 1.0)[0].code == OK  # w0's range waits until 14
    assert len(state.pending_frees) == 1
    assert put1(state, "big", 8192, 2.0).code == NO_SPACE


def test_room_coming_on_a_too_small_segment_is_not_room_on_its_way():
    state = MasterState(MasterConfig(high_watermark=1.0, worker_ttl_s=1e9,
                                      reuse_after_inventory_ack=False), random.Random(0))
    register(state, "small", dram=2048, ssd=8192)
    register(state, "large", dram=8192)
    commit(state, "pinned", 8192, preferred="large", hard_pin=True)
    commit(state, "s1", 1024, now=1.0, preferred="small")
    commit(state, "s2", 1024, now=2.0, preferred="small")
    result = put1(state, "x", 2048, 3.0, preferred="small")
    assert result.code == BEING_FREED
    assert sorted(m.key for m in state.moves.values()) == ["s1", "s2"]
    # those demotions free nothing that a 4 KiB object could use: only "large" could hold it
    assert put1(state, "y", 4096, 3.0).code == NO_SPACE


# -- eviction at the high watermark -----------------------------------------------------


def test_tick_past_the_high_watermark_frees_about_eviction_ratio():
    state = tiered(dram=16 * 1024, ssd=0, high_watermark=0.9, eviction_ratio=0.15)
    commit(state, "k0", 1000, now=0.0, soft_pin=True)
    for i in range(1, 16):
        commit(state, f"k{i}", 1000, now=float(i))
    assert seg_used(state, "w0", DRAM_SEG) == 16 * 1024
    # 15% of 16 KiB is 2457.6 bytes: three 1000-byte objects, the unpinned LRU ones
    report = tick(state, 20.0)
    assert report.evicted_keys == ["k1", "k2", "k3"]
    assert seg_used(state, "w0", DRAM_SEG) == 13 * 1024  # under 90% (14745.6) again
    assert tick(state, 21.0).evicted_keys == []
    commit(state, "k16", 1000, now=22.0)
    commit(state, "k17", 1000, now=22.0)
    assert tick(state, 23.0).evicted_keys == ["k4", "k5", "k6"]
    assert state.counters["evicted_objects"] == 6


def test_watermark_counts_ranges_already_leaving():
    state = tiered(dram=4096, ssd=0, high_watermark=0.9, eviction_ratio=0.25,
                   lease_ttl_s=1.0, grant_margin_s=1.0)
    full_of(state, "abcd")
    for key in "abcd":
        get(state, key, 4.0)  # leases until 5, their grants until 7
    report = tick(state, 5.0)
    assert report.evicted_keys == ["a"]
    assert [(p.offset, p.free_at) for p in state.pending_frees] == [(0, 7.0)]
    assert tick(state, 6.0).evicted_keys == []  # 4 KiB used, 1 KiB of it leaving: 75%
    report = tick(state, 7.0)
    assert (report.freed_ranges, report.evicted_keys) == (1, [])
    assert seg_used(state, "w0", DRAM_SEG) == 3072


def test_watermark_demotes_while_the_ssd_has_room_and_counts_moves_as_leaving():
    state = tiered(dram=4096, ssd=8192, high_watermark=0.9, eviction_ratio=0.25)
    full_of(state, "abcd")
    report = tick(state, 5.0)
    assert (report.evicted_keys, report.moves_planned) == ([], 1)
    assert [(m.kind, m.key) for m in state.moves.values()] == [(DEMOTE, "a")]
    assert tick(state, 6.0).moves_planned == 0  # a's DRAM range is on its way out
    [move] = take(state, 6.0)
    assert finish(state, move.move_id, MOVE_DONE, 7.0)
    assert tick(state, 8.0).moves_planned == 0 and seg_used(state, "w0", DRAM_SEG) == 3072


# -- demotion ---------------------------------------------------------------------------


def test_failed_put_on_full_dram_demotes_to_the_same_workers_ssd():
    state = tiered(lease_ttl_s=10.0, grant_margin_s=2.0)
    full_of(state, "abcd")
    a_offset = where(state, "a")[0][3]
    result = put1(state, "e", 1024, 5.0)
    assert (result.code, result.retry_after_s) == (BEING_FREED, MOVE_RETRY_S)
    assert result.replicas == [] and "e" not in state.objects
    [move] = state.moves.values()
    assert (move.kind, move.key, move.put_id, move.created_at, move.sent_at) == \
        (DEMOTE, "a", state.objects["a"].put_id, 5.0, None)
    assert (move.src.worker_id, move.src.segment_id, move.src.tier, move.src.offset) == \
        ("w0", DRAM_SEG, TIER_DRAM, a_offset)
    assert (move.dst.worker_id, move.dst.segment_id, move.dst.tier, move.dst.length) == \
        ("w0", SSD_SEG, TIER_SSD, 1024)
    assert state.objects["a"].moving and state.unsent_moves == 1
    assert seg_used(state, "w0", SSD_SEG) == 1024  # the target is reserved
    assert state.counters["demotions"] == 1
    [taken] = take(state, 5.02)
    assert (taken.move_id, taken.sent_at) == (move.move_id, 5.02) and state.unsent_moves == 0
    assert take(state, 5.03) == []
    taken.dst.offset = 999  # a copy: the mover cannot change the plan
    state.validate()
    assert finish(state, move.move_id, MOVE_DONE, 6.0) is True
    assert where(state, "a") == [("w0", SSD_SEG, TIER_SSD, move.dst.offset)]
    assert state.objects["a"].replicas[0].state == COMPLETE
    assert not state.objects["a"].moving and state.moves == {}
    # never leased: its DRAM range is free at once, and the retried put gets it
    assert seg_used(state, "w0", DRAM_SEG) == 3 * 1024 and state.pending_frees == []
    result = put1(state, "e", 1024, 6.0)
    assert result.code == OK and result.replicas[0].offset == a_offset
    assert finish(state, move.move_id, MOVE_DONE, 6.0) is False  # once only
    assert [r.tier for r in get(state, "a", 7.0).replicas] == [TIER_SSD]


def test_reads_during_a_demotion_use_the_dram_replica_which_outlives_their_lease():
    state = tiered(lease_ttl_s=10.0, grant_margin_s=2.0)
    commit(state, "a", 1024, now=0.0)  # the only candidate
    full_of(state, "bcd", start=1.0, hard_pin=True)
    move = demote_one(state, 4.0)
    take(state, 4.0)
    result = get(state, "a", 4.5)  # lease until 14.5
    assert [(r.tier, r.offset) for r in result.replicas] == [(TIER_DRAM, move.src.offset)]
    assert finish(state, move.move_id, MOVE_DONE, 5.0) is True
    assert where(state, "a")[0][2] == TIER_SSD
    # the reader may copy until 14.5, its grant is good a margin longer, and a clock skew
    # of another margin: the DRAM range is held until 18.5
    assert [(p.segment_id, p.offset, p.free_at) for p in state.pending_frees] == \
        [(DRAM_SEG, move.src.offset, 18.5)]
    assert seg_used(state, "w0", DRAM_SEG) == 4096
    result = put1(state, "new", 1024, 5.0)
    assert (result.code, result.retry_after_s) == (BEING_FREED, pytest.approx(13.5))
    assert tick(state, 18.4).freed_ranges == 0
    assert tick(state, 18.5).freed_ranges == 1
    assert put1(state, "new", 1024, 18.5).replicas[0].offset == move.src.offset


def test_moving_objects_are_not_chosen_again():
    state = tiered(ssd=8192)
    full_of(state, "abcd")
    assert demote_one(state, 1.0).key == "a"
    # a is skipped, and counts: 2048 wanted, 1024 already leaving, so b goes, not c
    assert put1(state, "new2", 2048, 1.0).code == BEING_FREED
    assert sorted(m.key for m in state.moves.values()) == ["a", "b"]
    assert state.counters["demotions"] == 2
    # a writer asking again while those copy demotes nothing more
    assert put1(state, "new2", 2048, 1.02).code == BEING_FREED
    assert state.counters["demotions"] == 2


def test_finish_after_remove_frees_the_target_and_does_not_resurrect():
    state = tiered()
    full_of(state, "abcd")
    move = demote_one(state, 1.0)
    take(state, 1.0)
    assert state.remove(["a"], False, 1.5)[0].code == OK  # an explicit remove may take it
    state.validate()
    assert seg_used(state, "w0", DRAM_SEG) == 3 * 1024   # source free at once (no lease)
    assert seg_used(state, "w0", SSD_SEG) == 1024         # target still reserved
    assert finish(state, move.move_id, MOVE_DONE, 2.0) is False
    assert "a" not in state.objects and state.moves == {}
    assert seg_used(state, "w0", SSD_SEG) == 0 and state.pending_frees == []


def test_finish_after_remove_and_put_again_leaves_the_new_object_alone():
    state = tiered()
    full_of(state, "abcd")
    move = demote_one(state, 1.0)
    take(state, 1.0)
    assert state.remove(["a"], False, 1.5)[0].code == OK
    again = put1(state, "a", 512, 1.6)
    assert again.code == OK and again.put_id != move.put_id
    assert finish(state, move.move_id, MOVE_DONE, 2.0) is False
    assert where(state, "a") == [("w0", DRAM_SEG, TIER_DRAM, again.replicas[0].offset)]
    obj = state.objects["a"]
    assert (obj.state, obj.size, obj.moving, obj.put_id) == (PENDING, 512, False, again.put_id)
    assert seg_used(state, "w0", SSD_SEG) == 0 and state.moves == {}
    assert state.put_end(["a"], 2.0)[0].code == OK
    state.validate()


def test_a_stale_move_does_not_touch_a_new_object_of_the_same_key_that_is_moving():
    state = tiered()
    full_of(state, "abcd")
    old = demote_one(state, 1.0)
    take(state, 1.0)
    assert state.remove(["a"], False, 1.5)[0].code == OK
    commit(state, "a", 1024, now=1.5)
    for key in "bcd":  # the new a is now the least recently used object
        get(state, key, 2.0)
    assert put1(state, "x", 1024, 20.0).code == BEING_FREED
    [new] = [m for m in state.moves.values() if m.move_id != old.move_id]
    assert new.key == "a" and new.put_id != old.put_id and state.objects["a"].moving
    assert finish(state, old.move_id, MOVE_DONE, 20.5) is False
    assert state.objects["a"].moving and list(state.moves) == [new.move_id]
    take(state, 21.0)
    assert finish(state, new.move_id, MOVE_DONE, 21.0) is True
    assert where(state, "a") == [("w0", SSD_SEG, TIER_SSD, new.dst.offset)]


def test_failed_move_frees_its_target_now():
    state = tiered()
    full_of(state, "abcd")
    move = demote_one(state, 1.0)
    take(state, 1.0)
    assert finish(state, move.move_id, MOVE_FAILED, 2.0) is False
    assert where(state, "a") == [("w0", DRAM_SEG, TIER_DRAM, move.src.offset)]
    assert not state.objects["a"].moving
    assert seg_used(state, "w0", SSD_SEG) == 0 and state.pending_frees == []
    again = demote_one(state, 3.0)  # a is a candidate again
    assert again.key == "a" and again.move_id != move.move_id


def test_unanswered_move_holds_its_target_until_its_write_grant_expires():
    state = tiered(move_timeout_s=30.0, grant_margin_s=2.0)
    full_of(state, "abcd")
    move = demote_one(state, 1.0)
    take(state, 1.5)
    assert finish(state, move.move_id, MOVE_UNKNOWN, 3.0) is False
    assert where(state, "a")[0][2] == TIER_DRAM and not state.objects["a"].moving
    # the worker may still write it: sent at 1.5 + timeout 30 + two margins
    assert [(p.segment_id, p.offset, p.free_at) for p in state.pending_frees] == \
        [(SSD_SEG, move.dst.offset, 35.5)]
    assert seg_used(state, "w0", SSD_SEG) == 1024
    again = demote_one(state, 4.0)  # lands elsewhere on the SSD meanwhile
    assert again.dst.offset != move.dst.offset
    assert tick(state, 35.4).freed_ranges == 0
    assert tick(state, 35.5).freed_ranges == 1


def test_a_move_taken_at_time_zero_counts_as_sent():
    # 0.0 is a time like any other (the clock is injected): not a "not sent yet" mark
    state = tiered(move_timeout_s=30.0, grant_margin_s=2.0)
    for key in "abcd":
        commit(state, key, 1024, now=0.0)
    move = demote_one(state, 0.0)
    assert [m.move_id for m in take(state, 0.0)] == [move.move_id]
    assert state.unsent_moves == 0 and take(state, 0.0) == []
    report = tick(state, 31.0)  # sent, unanswered: its target waits out the write grant
    assert report.moves_abandoned == 1
    assert [(p.segment_id, p.offset, p.free_at) for p in state.pending_frees] == \
        [(SSD_SEG, move.dst.offset, 34.0)]


def test_moves_nobody_answers_are_abandoned_by_tick():
    state = tiered(dram=8192, ssd=8192, move_timeout_s=30.0, grant_margin_s=2.0)
    full_of(state, "abcdefgh")
    assert put1(state, "x", 1024, 10.0).code == BEING_FREED      # a, sent at 11
    [sent] = take(state, 11.0)
    assert put1(state, "y", 2048, 12.0).code == BEING_FREED      # b (a already leaves)
    assert sorted(((m.key, m.sent_at) for m in state.moves.values()), key=str) == \
        [("a", 11.0), ("b", None)]
    assert tick(state, 41.0).moves_abandoned == 0  # a: 30 s since sent, not more
    report = tick(state, 41.5)
    # a: the worker may still write its target until 11 + 30 + two margins
    assert report.moves_abandoned == 1 and not state.objects["a"].moving
    assert [(p.offset, p.free_at) for p in state.pending_frees] == [(sent.dst.offset, 45.0)]
    assert sorted(m.key for m in state.moves.values()) == ["b"]
    assert finish(state, sent.move_id, MOVE_DONE, 41.6) is False  # too late
    assert where(state, "a")[0][2] == TIER_DRAM
    report = tick(state, 42.5)
    # b: never handed to a worker, so no grant covers its target: free at once
    assert report.moves_abandoned == 1 and state.moves == {} and state.unsent_moves == 0
    assert seg_used(state, "w0", SSD_SEG) == 1024
    assert tick(state, 45.0).freed_ranges == 1
    assert seg_used(state, "w0", SSD_SEG) == 0


def test_a_dropped_worker_forgets_its_moves():
    state = tiered(workers=2, move_timeout_s=30.0, grant_margin_s=2.0, worker_ttl_s=10.0)
    full_of(state, "abcd", preferred="w0")
    full_of(state, "efgh", preferred="w1", start=4.0)
    assert put1(state, "x", 1024, 8.0, preferred="w0").code == BEING_FREED
    assert put1(state, "y", 2048, 8.0, preferred="w1").code == BEING_FREED
    assert sorted(m.key for m in state.moves.values()) == ["a", "e", "f"]
    take(state, 9.0)
    [on_w0] = [m for m in state.moves.values() if m.worker_id == "w0"]
    # w0 comes back with a new DRAM segment (its objects are gone): its move is forgotten,
    # but the target range its old write grant may still cover stays reserved until that
    # grant expires (9 + 30 + 2 margins)
    register(state, "w0", now=10.0, dram=8192, ssd=8192)
    assert sorted(m.key for m in state.moves.values()) == ["e", "f"]
    assert [(p.worker_id, p.segment_id, p.offset, p.free_at) for p in state.pending_frees] \
        == [("w0", SSD_SEG, on_w0.dst.offset, 43.0)]
    assert seg_used(state, "w0", SSD_SEG) == 1024
    assert finish(state, on_w0.move_id, MOVE_DONE, 11.0) is False
    assert not any(k in state.objects for k in "abcd")  # no inventory: nothing adopted
    # w1 dies: its moves go with it
    heartbeat_all(state, 20.5, but=("w1",))
    report = state.tick(20.5)
    state.validate()
    assert report.dead_workers == ["w1"] and sorted(report.lost_keys) == list("efgh")
    assert state.moves == {} and state.unsent_moves == 0


def demote_and_retry(state: MasterState, key: str, now: float) -> list[str]:
    """A put that has to wait for demotions: the mover copies, the retried put commits.
    The keys demoted."""
    assert put1(state, key, 1024, now).code == BEING_FREED
    moved = []
    for move in take(state, now):
        assert finish(state, move.move_id, MOVE_DONE, now)
        moved.append(move.key)
    commit(state, key, 1024, now=now)
    return moved


def test_a_full_ssd_evicts_its_lru_objects_to_make_room_for_a_demotion():
    state = tiered(ssd=2048)
    full_of(state, "abcd")
    assert demote_and_retry(state, "e", 5.0) == ["a"]
    assert demote_and_retry(state, "f", 6.0) == ["b"]
    assert seg_used(state, "w0", SSD_SEG) == 2048  # full
    a_ssd = where(state, "a")[0][3]
    result = put1(state, "g", 1024, 7.0)
    assert result.code == BEING_FREED
    # c goes down; the SSD drops its least recently used object (a: no tier below SSD)
    assert "a" not in state.objects and where(state, "b")[0][2] == TIER_SSD
    [move] = state.moves.values()
    assert (move.key, move.dst.segment_id, move.dst.offset) == ("c", SSD_SEG, a_ssd)
    assert state.counters["evicted_objects"] == 1 and state.counters["demotions"] == 3


def test_with_nothing_evictable_on_the_ssd_the_dram_victim_is_dropped():
    state = tiered(ssd=1024, lease_ttl_s=10.0)
    full_of(state, "abcd")
    assert demote_and_retry(state, "e", 5.0) == ["a"]
    get(state, "a", 6.0)  # the SSD's only object is leased: nothing can make room there
    result = put1(state, "f", 1024, 7.0)
    assert result.code == OK and state.moves == {}
    assert "b" not in state.objects and where(state, "a")[0][2] == TIER_SSD
    assert (state.counters["demotions"], state.counters["evicted_objects"]) == (1, 1)


def test_an_object_larger_than_the_ssd_is_dropped_not_demoted():
    state = tiered(ssd=1024)
    commit(state, "big", 2048, now=0.0)
    commit(state, "small", 2048, now=1.0)
    assert put1(state, "x", 1024, 2.0).code == OK
    assert sorted(state.objects) == ["small", "x"] and state.moves == {}


# -- promotion --------------------------------------------------------------------------


def on_ssd_only(state: MasterState, key: str, now: float, size: int = 1024) -> None:
    """Commits key on w0 and has a failed put demote it; w0's DRAM is empty after."""
    commit(state, key, size, now=now)
    free = state.workers["w0"].segments[DRAM_SEG].allocator.free_bytes
    commit(state, "filler", free, now=now, hard_pin=True)
    assert put1(state, "probe", 64, now).code == BEING_FREED
    [move] = take(state, now)
    assert move.key == key and finish(state, move.move_id, MOVE_DONE, now)
    assert state.remove(["filler"], False, now)[0].code == OK
    state.validate()
    assert where(state, key)[0][2] == TIER_SSD and seg_used(state, "w0", DRAM_SEG) == 0


def test_an_ssd_object_read_often_goes_back_to_dram():
    state = tiered(lease_ttl_s=10.0, grant_margin_s=2.0, promotion_hits=3,
                   promotion_window_s=60.0)
    on_ssd_only(state, "a", 0.0)
    ssd_offset = where(state, "a")[0][3]
    get(state, "a", 10.0)
    get(state, "a", 20.0)
    assert state.moves == {} and state.objects["a"].ssd_hits == [10.0, 20.0]
    result = get(state, "a", 30.0)  # the third read within 60 s plans the promotion ...
    assert [r.tier for r in result.replicas] == [TIER_SSD]  # ... this read still uses SSD
    [move] = state.moves.values()
    assert (move.kind, move.key, move.src.tier, move.dst.tier, move.dst.worker_id) == \
        (PROMOTE, "a", TIER_SSD, TIER_DRAM, "w0")
    assert state.objects["a"].moving and state.counters["promotions"] == 1
    get(state, "a", 31.0)  # reads while moving are not counted again
    assert len(state.moves) == 1 and state.objects["a"].ssd_hits == [10.0, 20.0, 30.0]
    take(state, 31.0)
    assert finish(state, move.move_id, MOVE_DONE, 32.0)
    assert where(state, "a") == [("w0", DRAM_SEG, TIER_DRAM, move.dst.offset)]
    assert state.objects["a"].ssd_hits == []
    # the last read's lease (41) and two margins hold the SSD range
    assert [(p.segment_id, p.offset, p.free_at) for p in state.pending_frees] == \
        [(SSD_SEG, ssd_offset, 45.0)]
    get(state, "a", 33.0)
    get(state, "a", 34.0)  # reads of a DRAM object are not counted
    assert state.objects["a"].ssd_hits == [] and state.moves == {}


def test_promotion_needs_its_hits_within_the_window():
    state = tiered(promotion_hits=2, promotion_window_s=10.0, lease_ttl_s=1.0)
    on_ssd_only(state, "a", 0.0)
    assert state.exists(["a"], 1.0)[0].code == OK  # exists is not a read
    get(state, "a", 2.0)
    get(state, "a", 12.5)  # 10.5 s later: the first hit has left the window
    assert state.moves == {} and state.objects["a"].ssd_hits == [12.5]
    get(state, "a", 22.5)  # exactly 10 s later: both count
    assert [m.kind for m in state.moves.values()] == [PROMOTE]


def test_promotion_only_while_dram_stays_under_the_watermark():
    state = tiered(dram=4096, promotion_hits=1, high_watermark=0.75, lease_ttl_s=1.0)
    on_ssd_only(state, "a", 0.0)
    commit(state, "b", 2048, now=1.0)
    commit(state, "c", 64, now=1.0)  # 2112 used: 2112 + 1024 is over 3072
    get(state, "a", 2.0)
    assert state.moves == {} and state.counters["promotions"] == 0
    assert state.remove(["c"], False, 3.0)[0].code == OK  # 2048 + 1024 is 3072: not over
    state.validate()
    get(state, "a", 4.0)
    [move] = state.moves.values()
    assert move.kind == PROMOTE
    assert seg_used(state, "w0", DRAM_SEG) == 3072


def test_promotion_counts_the_dram_bytes_it_really_takes():
    # 80% of 4 KiB is 3276.8 bytes; 970 bytes take 1024 in the allocator
    state = tiered(dram=4096, promotion_hits=1, high_watermark=0.8, lease_ttl_s=1.0)
    on_ssd_only(state, "a", 0.0, size=970)
    commit(state, "b", 2304, now=1.0)
    get(state, "a", 2.0)  # 2304 + 970 = 3274 fits, but 2304 + 1024 = 3328 would not
    assert state.moves == {}
    assert state.remove(["b"], False, 3.0)[0].code == OK
    commit(state, "b", 2240, now=3.0)
    get(state, "a", 4.0)  # 2240 + 1024 = 3264: under
    [move] = state.moves.values()
    assert move.kind == PROMOTE and seg_used(state, "w0", DRAM_SEG) == 3264


# -- counters ---------------------------------------------------------------------------


def test_stats_count_evictions_demotions_and_promotions():
    state = MasterState(MasterConfig(high_watermark=1.0, worker_ttl_s=1e9, promotion_hits=2,
                                     reuse_after_inventory_ack=False),
                        random.Random(0))
    register(state, "w0", dram=4096, ssd=1024)
    register(state, "w1", dram=4096)

    def counts():
        stats = state.stats()
        return tuple(stats[k] for k in ("evicted_objects", "evicted_replicas", "demotions",
                                         "promotions", "moves"))

    assert counts() == (0, 0, 0, 0, 0)
    commit(state, "both", 1024, now=0.0, replica_num=2, preferred="w1")
    commit(state, "w0fill", 2048, now=0.5, preferred="w0")
    commit(state, "w1fill", 3072, now=1.0, preferred="w1")
    commit(state, "w0fill2", 1024, now=1.5, preferred="w0")
    # w1 has no SSD: one replica of "both" is dropped, the object lives on in w0
    assert put1(state, "y", 1024, 2.0, preferred="w1").code == OK
    assert [r.worker_id for r in state.objects["both"].replicas] == ["w0"]
    assert counts() == (0, 1, 0, 0, 0)
    assert put1(state, "z", 1024, 4.0, preferred="w0").code == BEING_FREED  # "both" goes down
    assert counts() == (0, 1, 1, 0, 1)
    [move] = take(state, 4.0)
    assert finish(state, move.move_id, MOVE_DONE, 5.0)
    assert counts() == (0, 1, 1, 0, 0)
    assert state.stats()["tiers"]["SSD"] == {"total_bytes": 1024, "used_bytes": 1024,
                                             "replicas": 1}
    get(state, "both", 6.0)
    get(state, "both", 7.0)
    assert counts() == (0, 1, 1, 1, 1)
    [move] = take(state, 7.0)
    assert not finish(state, move.move_id, MOVE_FAILED, 8.0)
    assert counts() == (0, 1, 1, 1, 0)  # counted when planned
    assert put1(state, "q", 3072, 9.0, preferred="w1").code == OK  # w1fill goes whole
    assert "w1fill" not in state.objects
    assert counts() == (1, 2, 1, 1, 0)


# -- random sequences -------------------------------------------------------------------

KEYS = [f"k{i}" for i in range(10)]
WORKERS = ["w0", "w1", "w2"]
MARGIN = 1.0
ALIGN = 64
PINS = st.sampled_from(["", "", "soft", "hard"])
CRASH = "crash"  # a mover outcome of the machine's: the worker restarts during the copy


def span(offset: int, length: int) -> tuple[int, int]:
    return offset, offset + align_up(length, ALIGN)


@dataclass(frozen=True, slots=True)
class Grant:
    """A permission a client or worker may hold on a range until `until` (the grant's own
    expiry plus one margin of clock skew: what the master promises to wait out)."""
    op: str                   # "read" or "write"
    at: tuple[str, int]       # (worker, segment)
    start: int
    end: int
    until: float
    owner: tuple              # the range owner it was granted for (see Snapshot.owners)


@dataclass(frozen=True, slots=True)
class ObjSnap:
    put_id: int
    state: int
    hard_pin: bool
    soft_pin: bool
    moving: bool
    size: int
    replicas: dict            # (worker, segment) -> (tier, offset)


@dataclass(slots=True)
class Snapshot:
    objs: dict                # key -> ObjSnap, in the state's access order (LRU first)
    moves: dict               # move id -> (key, put_id, src (worker, segment), kind)
    owners: set               # ("obj", key, put_id, at, start, end) | ("move", id, at, start, end)
    free: dict                # (worker, segment) -> free bytes
    segments: dict            # (worker, segment) -> (tier, size)


class TieringMachine(RuleBasedStateMachine):
    """Random puts (pins, replica counts), reads, removes, ticks, moves and the mover's
    answers (DONE, FAILED, UNKNOWN, or the worker restarting mid-copy), worker restarts and
    deaths, over three workers with DRAM and optional SSD segments. After every step:

    - validate(): no two live ranges overlap, allocator accounting is exact;
    - grants: no range goes to a new owner (a replica or a move's target) while a grant on
      it may still be used: a read grant until lease + 2 margins from the read, a put's
      write grant until put_timeout + 2 margins from PutStart (over at its PutEnd), a
      move's write grant until move_timeout + 2 margins from take_moves (over when the
      worker answers DONE or FAILED); across restarts too (same segment files). The
      source of a move is not held for the worker's read: a copy of a removed object is
      thrown away;
    - what goes: an object, or one of its replicas, disappears only by remove, revoke,
      the put timeout, its worker's drop, or eviction; eviction (put_start and tick only)
      takes only what is evictable at that moment: COMPLETE, not hard-pinned, not leased
      (by the model's own lease record, which the state's must equal), not moving (a move
      the same tick abandons, or forgets with its worker, no longer counts). So a leased
      or hard-pinned committed object is never evicted. Remove without force refuses a
      leased object. Replicas never move inside a segment; finish_move alone moves one,
      to the other tier of its worker;
    - order: on each segment, the replicas one step takes are an LRU prefix of that
      segment's evictable unpinned ones, then of its soft-pinned ones, and soft-pinned
      ones only once every unpinned one is taken (leaving out objects that the same step
      made moving from another segment: they were no longer candidates);
    - NO_AVAILABLE_HANDLE: what the code promises is local to the moment of the call. It
      answers NO_AVAILABLE_HANDLE only if no object that is COMPLETE, unleased, not
      hard-pinned and not moving has a replica on a DRAM segment whose size holds the new
      object (aligned); it may still do so while a leased object's lease is about to end,
      or space is free but fragmented. SPACE_BEING_FREED (with retry_after_s > 0) only if
      a DRAM segment that could hold the object freed bytes during the call, or has a
      pending free or a demotion's source on it;
    - moves: a demotion copies DRAM to SSD of the same worker, a promotion SSD to DRAM; a
      promotion is planned exactly when the model counts promotion_hits reads of an
      SSD-only object within the window and a DRAM segment of its worker can take its
      aligned size without passing the high watermark; finish_move swaps exactly when
      the move is live, DONE, and the same incarnation (put_id) of the object exists;
      FAILED (and DONE for a gone object) frees the target at once, UNKNOWN holds it
      until the move's grant expires; a finished or forgotten move changes nothing.
    """

    def __init__(self):
        super().__init__()
        self.config = MasterConfig(
            lease_ttl_s=10.0, worker_ttl_s=10.0, put_timeout_s=30.0, grant_margin_s=MARGIN,
            max_batch=8, placement_sample=2, high_watermark=0.8, eviction_ratio=0.25,
            promotion_hits=2, promotion_window_s=20.0, move_timeout_s=15.0,
            heal_moves_in_flight=0)  # re-replication has its own machine (test_recovery.py)
        self.state: MasterState | None = None
        self.now = 0.0
        self.sizes: dict[str, tuple[int, int]] = {}
        self.files: dict[str, int] = {}  # a worker's segment files: a new number, new files
        self.leases: dict[tuple[str, int], float] = {}    # (key, put_id) -> lease until
        self.hits: dict[tuple[str, int], list[float]] = {}  # reads while on SSD only
        self.grants: list[Grant] = []
        self.taken: dict[int, Move] = {}                  # what the mover was handed

    @initialize(seed=st.integers(0, 2**32 - 1),
                dram=st.lists(st.sampled_from([1024, 2048, 3072]), min_size=3, max_size=3),
                ssd=st.lists(st.sampled_from([0, 1024, 2048, 4096]), min_size=3, max_size=3),
                fill=st.lists(st.tuples(st.integers(256, 1200), PINS), max_size=len(KEYS)))
    def start(self, seed, dram, ssd, fill):
        self.state = MasterState(self.config, random.Random(seed))
        for worker_id, d, s in zip(WORKERS, dram, ssd):
            self.sizes[worker_id] = (d, s)
            self._register(worker_id)
        for key, (size, pin) in zip(KEYS, fill):  # a pool under pressure from the start
            self.put(key, size, 1, pin, "", True)

    # -- the model's view ---------------------------------------------------------------

    def _snapshot(self) -> Snapshot:
        objs, owners = {}, set()
        for key, obj in self.state.objects.items():
            replicas = {}
            for r in obj.replicas:
                at = (r.worker_id, r.segment_id)
                replicas[at] = (r.tier, r.offset)
                owners.add(("obj", key, obj.put_id, at, *span(r.offset, r.length)))
            objs[key] = ObjSnap(obj.put_id, obj.state, obj.hard_pin, obj.soft_pin,
                                obj.moving, obj.size, replicas)
        moves = {}
        for move_id, m in self.state.moves.items():
            moves[move_id] = (m.key, m.put_id, (m.src.worker_id, m.src.segment_id), m.kind)
            owners.add(("move", move_id, (m.dst.worker_id, m.dst.segment_id),
                        *span(m.dst.offset, m.dst.length)))
        free, segments = {}, {}
        for worker in self.state.workers.values():
            for seg in worker.segments.values():
                free[(worker.worker_id, seg.segment_id)] = seg.allocator.free_bytes
                segments[(worker.worker_id, seg.segment_id)] = (seg.tier, seg.size_bytes)
        return Snapshot(objs, moves, owners, free, segments)

    def _lease(self, key: str, snap: ObjSnap) -> float:
        return self.leases.get((key, snap.put_id), 0.0)

    def _evictable(self, key: str, snap: ObjSnap, now: float, unmoved=frozenset()) -> bool:
        return (snap.state == COMPLETE and not snap.hard_pin and self._lease(key, snap) <= now
                and (not snap.moving or (key, snap.put_id) in unmoved))

    def _live_grants(self) -> list[Grant]:
        self.grants = [g for g in self.grants if g.until > self.now]
        return self.grants

    def _check_step(self, before: Snapshot, *, evicts: bool = False, gone_ok=(),
                    dropped=(), unmoved=frozenset(), swap=None) -> Snapshot:
        """The properties every step keeps (see the class docstring); the snapshot after."""
        self.state.validate()
        after = self._snapshot()
        grants = self._live_grants()
        for owner in after.owners - before.owners:
            at, start, end = owner[-3:]
            for g in grants:
                assert not (g.at == at and g.owner != owner and start < g.end and g.start < end), \
                    f"{owner} handed out under a grant until {g.until} for {g.owner}"
        for key, b in before.objs.items():
            a = after.objs.get(key)
            if a is not None and a.put_id != b.put_id:
                a = None
            if a is None and key in gone_ok:
                continue
            moved_from, moved_to = set(), set()
            if swap is not None and swap[:2] == (key, b.put_id) and a is not None:
                moved_from, moved_to = {swap[3]}, {swap[2]}
            lost = set(b.replicas) if a is None else set(b.replicas) - set(a.replicas)
            lost = {at for at in lost - moved_from if at[0] not in dropped}
            if a is not None:
                assert set(a.replicas) <= set(b.replicas) | moved_to, f"{key!r} gained a replica"
                assert all(a.replicas[at] == b.replicas[at]
                           for at in set(a.replicas) & set(b.replicas)), f"{key!r} moved in place"
            if lost:
                assert evicts, f"{key!r} lost {lost} in a step that does not evict"
                assert self._evictable(key, b, self.now, unmoved), \
                    f"{key!r} was evicted but was not evictable: {b}, lease {self._lease(key, b)}"
        if evicts:
            self._check_victim_order(before, after, unmoved, dropped)
        for key, a in after.objs.items():
            if a.state == COMPLETE:
                assert self.state.objects[key].lease_until == self._lease(key, a), key
        return after

    def _check_victim_order(self, before: Snapshot, after: Snapshot, unmoved, dropped) -> None:
        new_moves = {mid: m for mid, m in after.moves.items() if mid not in before.moves}
        for at in before.segments:
            if at[0] in dropped:
                continue

            def taken(key: str) -> bool:
                b, a = before.objs[key], after.objs.get(key)
                if a is None or a.put_id != b.put_id or at not in a.replicas:
                    return True
                return any(m[0] == key and m[1] == b.put_id and m[2] == at
                           for m in new_moves.values())

            def moved_elsewhere(key: str) -> bool:
                b = before.objs[key]
                return any(m[0] == key and m[1] == b.put_id for m in new_moves.values())

            candidates = [k for k, b in before.objs.items()
                          if at in b.replicas and self._evictable(k, b, self.now, unmoved)]
            marks = {soft: [taken(k) for k in candidates
                            if before.objs[k].soft_pin == soft
                            and (taken(k) or not moved_elsewhere(k))]
                     for soft in (False, True)}
            for soft, seq in marks.items():
                assert seq == sorted(seq, reverse=True), \
                    f"{at}: {'soft-pinned' if soft else 'unpinned'} victims are not the LRU " \
                    f"ones: {list(zip(candidates, seq))}"
            if any(marks[True]):
                assert all(marks[False]), f"{at}: a soft-pinned object went before an unpinned one"

    # -- rules ----------------------------------------------------------------------------

    def _register(self, worker_id: str):
        dram, ssd = self.sizes[worker_id]
        files = self.files.get(worker_id, 0)
        specs = [SegmentSpec(0, TIER_DRAM, dram, f"p{files}")]
        if ssd:
            specs.append(SegmentSpec(1, TIER_SSD, ssd, f"q{files}"))
        self.state.register_worker(worker_id, f"n{worker_id}", "d", "g", "h", specs, b"key",
                                   self.now)
        self.state.heartbeat(worker_id, self.now)

    @rule(key=st.sampled_from(KEYS), size=st.integers(1, 1200), replica_num=st.integers(1, 3),
          pin=PINS, preferred=st.sampled_from(["", *WORKERS]), end=st.booleans())
    def put(self, key, size, replica_num, pin, preferred, end):
        before = self._snapshot()
        counters = dict(self.state.counters)
        config = PlacementConfig(replica_num, preferred, soft_pin=pin == "soft",
                                 hard_pin=pin == "hard")
        [result] = self.state.put_start([key], [size], config, "", self.now)
        event(f"put_start: {ErrorCode(result.code).name}")
        after = self._check_step(before, evicts=True)
        if self.state.counters != counters:
            event("put_start evicted or demoted")
        if key in before.objs:
            assert result.code == ErrorCode.OBJECT_ALREADY_EXISTS
        elif result.code == OK:
            workers = [r.worker_id for r in result.replicas]
            assert 1 <= len(workers) <= replica_num and len(set(workers)) == len(workers)
            assert all(r.tier == TIER_DRAM for r in result.replicas)
            for r in result.replicas:
                self.grants.append(Grant(
                    "write", (r.worker_id, r.segment_id), *span(r.offset, r.length),
                    self.now + self.config.put_timeout_s + 2 * MARGIN,
                    ("obj", key, result.put_id, (r.worker_id, r.segment_id),
                     *span(r.offset, r.length))))
            if end:
                self.put_end(key)
        elif result.code == ErrorCode.NO_AVAILABLE_HANDLE:
            self._check_nothing_evictable(before, size)
        else:
            assert result.code == ErrorCode.SPACE_BEING_FREED, result
            assert result.retry_after_s > 0
            self._check_room_coming(before, after, size)

    def _could_hold(self, snap: Snapshot, at, size: int) -> bool:
        tier, seg_size = snap.segments[at]
        return tier == TIER_DRAM and align_up(size, ALIGN) <= seg_size

    def _check_nothing_evictable(self, before: Snapshot, size: int) -> None:
        for key, b in before.objs.items():
            if self._evictable(key, b, self.now):
                assert not any(self._could_hold(before, at, size) for at in b.replicas), \
                    f"NO_AVAILABLE_HANDLE for {size} bytes while {key!r} was evictable: {b}"

    def _check_room_coming(self, before: Snapshot, after: Snapshot, size: int) -> None:
        coming = {at for at in after.segments if after.free[at] > before.free.get(at, 0)}
        coming |= {(p.worker_id, p.segment_id) for p in self.state.pending_frees}
        coming |= {m[2] for m in after.moves.values()}
        # a lease running out on an object that may then be evicted
        coming |= {at for key, obj in self.state.objects.items()
                   if obj.state == COMPLETE and not obj.hard_pin and obj.lease_until > self.now
                   for at in [(r.worker_id, r.segment_id) for r in obj.replicas]}
        assert any(self._could_hold(after, at, size) for at in coming), \
            f"SPACE_BEING_FREED for {size} bytes, but no DRAM segment that could hold it is " \
            f"freeing anything"

    @rule(key=st.sampled_from(KEYS), size=st.integers(256, 1200), pin=PINS)
    def put_and_end(self, key, size, pin):
        # the usual client path, so that committed objects pile up and eviction has work
        self.put(key, size, 1, pin, "", True)

    @rule(key=st.sampled_from(KEYS))
    def put_end(self, key):
        before = self._snapshot()
        b = before.objs.get(key)
        [result] = self.state.put_end([key], self.now)
        self._check_step(before)
        assert result.code == (OK if b is not None else ErrorCode.OBJECT_NOT_FOUND)
        if b is not None:  # the writer is done: its write grants are not used any more
            self.grants = [g for g in self.grants if not (
                g.op == "write" and g.owner[:3] == ("obj", key, b.put_id))]

    @rule(key=st.sampled_from(KEYS))
    def put_revoke(self, key):
        before = self._snapshot()
        [result] = self.state.put_revoke([key], self.now)
        b = before.objs.get(key)
        self._check_step(before, gone_ok=[key] if b is not None and b.state == PENDING else ())
        if b is None:
            assert result.code == ErrorCode.OBJECT_NOT_FOUND
        else:
            assert result.code == (OK if b.state == PENDING else ErrorCode.INVALID_PARAMS)

    @rule(data=st.data(), also_exists=st.booleans())
    def get_moving(self, data, also_exists):
        # a read while a move copies (when one does): its lease must outlast the swap
        moving = sorted(k for k, o in self.state.objects.items() if o.moving)
        self.get(data.draw(st.sampled_from(moving or KEYS), label="key"), also_exists)

    @rule(key=st.sampled_from(KEYS), also_exists=st.booleans())
    def get(self, key, also_exists):
        before = self._snapshot()
        b = before.objs.get(key)
        visible = b is not None and b.state == COMPLETE
        if also_exists:  # integrations call exists right before get
            [present] = self.state.exists([key], self.now)
            assert present.code == (OK if visible else ErrorCode.OBJECT_NOT_FOUND)
        [result] = self.state.get_replicas([key], self.now)
        if visible:
            self._extend_lease(key, b)
        self._check_step(before)
        if not visible:
            assert result.code == (ErrorCode.OBJECT_NOT_FOUND if b is None
                                   else ErrorCode.REPLICA_IS_NOT_READY)
            return
        assert result.code == OK
        # reads use the replicas as they were: a move changes nothing until it is finished
        assert {(r.worker_id, r.segment_id): (r.tier, r.offset) for r in result.replicas} \
            == b.replicas
        for r in result.replicas:
            at = (r.worker_id, r.segment_id)
            self.grants.append(Grant("read", at, *span(r.offset, r.length),
                                     self.now + self.config.lease_ttl_s + 2 * MARGIN,
                                     ("obj", key, b.put_id, at, *span(r.offset, r.length))))
        self._check_promotion(key, b, before)

    @rule(data=st.data())
    def hot_read(self, data):
        # promotion_hits reads in a row of an object on SSD only (when there is one): it may
        # be promoted
        on_ssd = sorted(k for k, o in self.state.objects.items()
                        if all(r.tier == TIER_SSD for r in o.replicas))
        key = data.draw(st.sampled_from(on_ssd or KEYS), label="key")
        for _ in range(self.config.promotion_hits):
            self.get(key, False)

    def _extend_lease(self, key: str, b: ObjSnap) -> None:
        lease = (key, b.put_id)
        self.leases[lease] = max(self.leases.get(lease, 0.0), self.now + self.config.lease_ttl_s)

    def _check_promotion(self, key: str, b: ObjSnap, before: Snapshot) -> None:
        planned = [m for mid, m in self.state.moves.items() if mid not in before.moves]
        ssd_only = all(tier == TIER_SSD for tier, _ in b.replicas.values())
        if ssd_only:
            event("read of an object on SSD only")
        if b.moving or not ssd_only:
            assert planned == []
            return
        hits = self.hits.setdefault((key, b.put_id), [])
        hits[:] = [t for t in hits if self.now - t <= self.config.promotion_window_s]
        hits.append(self.now)
        if len(hits) < self.config.promotion_hits:
            assert planned == []
            return
        limit = self.config.high_watermark
        room = []
        for worker_id, _ in b.replicas:
            dram = self.state.workers[worker_id].segments[0].allocator
            need = align_up(b.size, ALIGN)
            if dram.used_bytes + need <= limit * dram.size_bytes and \
                    dram.largest_free_bytes >= need:
                room.append(worker_id)
        if not planned:
            event("promotion: no room under the watermark")
            assert not room, f"{key!r} read {len(hits)} times on SSD, not promoted: {room}"
            return
        [move] = planned
        event("promotion planned")
        assert (move.kind, move.key, move.src.tier, move.dst.tier) == \
            (PROMOTE, key, TIER_SSD, TIER_DRAM)
        dram = self.state.workers[move.worker_id].segments[0]
        assert dram.allocator.used_bytes <= limit * dram.size_bytes, "promotion passed the watermark"

    @rule(key=st.sampled_from(KEYS), force=st.booleans())
    def remove(self, key, force):
        before = self._snapshot()
        [result] = self.state.remove([key], force, self.now)
        b = before.objs.get(key)
        self._check_step(before, gone_ok=[key] if result.code == OK else ())
        if b is None:
            assert result.code == ErrorCode.OBJECT_NOT_FOUND
        elif b.state == PENDING:
            assert result.code == ErrorCode.REPLICA_IS_NOT_READY
        elif self._lease(key, b) > self.now and not force:
            assert result.code == ErrorCode.OBJECT_HAS_LEASE
        else:
            assert result.code == OK and key not in self.state.objects

    @precondition(lambda self: self.state is not None and len(self.state.objects) > 2)
    @rule(force=st.booleans())
    def remove_all(self, force):
        before = self._snapshot()
        doomed = [k for k, b in before.objs.items() if b.state == COMPLETE
                  and (force or self._lease(k, b) <= self.now)]
        assert self.state.remove_all(force, self.now) == len(doomed)
        self._check_step(before, gone_ok=doomed)
        assert not any(k in self.state.objects for k in doomed)

    @rule(dt=st.sampled_from([0.5, 2.0, 5.0, 11.0, 16.0, 31.0]))
    def advance(self, dt):
        self.now += dt
        self._tick()

    def _tick(self, but: tuple[str, ...] = ()):
        before = self._snapshot()
        # moves this tick gives up on (or forgets with their worker): their objects may go
        stalled = {(m.key, m.put_id) for m in self.state.moves.values()
                   if self.now - m.waiting_since > self.config.move_timeout_s
                   or m.worker_id in but}
        timed_out = [k for k, o in self.state.objects.items()
                     if o.state == PENDING and self.now - o.put_started_at > self.config.put_timeout_s]
        for worker_id in list(self.state.workers):
            if worker_id not in but:
                self.state.heartbeat(worker_id, self.now,
                                     self.state.workers[worker_id].update_seq)
        report = self.state.tick(self.now)
        event(f"tick: evicted={bool(report.evicted_keys)} planned={bool(report.moves_planned)} "
              f"abandoned={bool(report.moves_abandoned)}")
        assert sorted(report.dead_workers) == sorted(but)
        self._check_step(before, evicts=True, gone_ok=timed_out, dropped=but, unmoved=stalled)
        assert not any(m.worker_id in but for m in self.state.moves.values())
        assert all(self.now - m.waiting_since <= self.config.move_timeout_s
                   for m in self.state.moves.values())

    @rule()
    def take_moves(self):
        before = self._snapshot()
        unsent = sorted(mid for mid, m in self.state.moves.items() if m.sent_at is None)
        moves = self.state.take_moves(self.now)
        self._check_step(before)
        assert sorted(m.move_id for m in moves) == unsent
        for move in moves:
            assert move.sent_at == self.now
            assert move.src.worker_id == move.dst.worker_id
            assert {move.src.tier, move.dst.tier} == {TIER_DRAM, TIER_SSD}
            assert move.kind == (DEMOTE if move.src.tier == TIER_DRAM else PROMOTE)
            self.taken[move.move_id] = move
            at = (move.dst.worker_id, move.dst.segment_id)
            self.grants.append(Grant("write", at, *span(move.dst.offset, move.dst.length),
                                     self.now + self.config.move_timeout_s + 2 * MARGIN,
                                     ("move", move.move_id, at,
                                      *span(move.dst.offset, move.dst.length))))

    @precondition(lambda self: self.taken)
    @rule(data=st.data(), outcome=st.sampled_from([MOVE_DONE, MOVE_DONE, MOVE_FAILED,
                                                   MOVE_UNKNOWN]))
    def finish_move(self, data, outcome):
        self._finish(data.draw(st.sampled_from(sorted(self.taken)), label="move"), outcome)

    @rule(outcomes=st.lists(st.sampled_from([MOVE_DONE, MOVE_DONE, MOVE_DONE, MOVE_FAILED,
                                             MOVE_UNKNOWN, CRASH]), min_size=1, max_size=4))
    def mover(self, outcomes):
        """What master/mover.py does: take the planned moves, answer each. CRASH: the worker
        restarts during the copy, and the mover's call fails (MOVE_UNKNOWN)."""
        before = set(self.taken)
        self.take_moves()
        for i, move_id in enumerate(sorted(set(self.taken) - before)):
            outcome = outcomes[i % len(outcomes)]
            if outcome == CRASH:
                self.restart(self.taken[move_id].worker_id, new_files=False)
                outcome = MOVE_UNKNOWN
            self._finish(move_id, outcome)

    def _finish(self, move_id: int, outcome: str):
        move = self.taken[move_id]
        live = move_id in self.state.moves
        obj = self.state.objects.get(move.key)
        same = obj is not None and obj.put_id == move.put_id
        before = self._snapshot()
        at = (move.dst.worker_id, move.dst.segment_id)
        if live and outcome != MOVE_UNKNOWN:  # the worker answered: it writes no more
            self.grants = [g for g in self.grants if g.owner[:2] != ("move", move_id)]
        swapped = self.state.finish_move(move_id, outcome, self.now)
        event(f"finish_move: {move.kind} live={live} {outcome} swapped={swapped}")
        after = self._check_step(before, swap=(move.key, move.put_id, at,
                                               (move.src.worker_id, move.src.segment_id)))
        assert swapped == (live and outcome == MOVE_DONE and same)
        if not live:
            assert after.owners == before.owners and after.free == before.free
            return
        assert move_id not in self.state.moves
        if same:
            assert not self.state.objects[move.key].moving
        if swapped:
            assert after.objs[move.key].replicas[at] == (move.dst.tier, move.dst.offset)
            assert (move.src.worker_id, move.src.segment_id) not in after.objs[move.key].replicas
            self.hits.pop((move.key, move.put_id), None)
            return
        held = [p for p in self.state.pending_frees
                if (p.worker_id, p.segment_id, p.offset) == (*at, move.dst.offset)]
        if outcome == MOVE_UNKNOWN:
            expiry = move.sent_at + self.config.move_timeout_s + 2 * MARGIN
            assert [p.free_at for p in held] == [expiry]
        else:
            assert held == [] and after.free[at] > before.free[at]

    @rule(worker_id=st.sampled_from(WORKERS), new_files=st.booleans())
    def restart(self, worker_id, new_files):
        """A worker registers again (after a restart or its death): with the same files it
        keeps its replicas and moves; with new ones (its bytes are gone) it loses them."""
        before = self._snapshot()
        known = worker_id in self.state.workers
        # a dead worker back with its files re-adopts its objects (test_recovery.py): here it
        # comes back with new ones
        if new_files or not known:
            self.files[worker_id] = self.files.get(worker_id, 0) + 1
        self._register(worker_id)
        if known and not new_files:
            after = self._check_step(before)
            assert after.objs == before.objs and after.moves == before.moves
            return
        self._check_step(before, dropped=(worker_id,))
        assert not any(m.worker_id == worker_id for m in self.state.moves.values())

    @precondition(lambda self: self.state is not None and len(self.state.workers) > 1)
    @rule(data=st.data())
    def kill(self, data):
        victim = data.draw(st.sampled_from(sorted(self.state.workers)), label="victim")
        self.now += self.config.worker_ttl_s + 0.5
        self._tick(but=(victim,))
        assert victim not in self.state.workers


TieringMachine.TestCase.settings = settings(
    max_examples=600, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestTieringMachine = TieringMachine.TestCase
