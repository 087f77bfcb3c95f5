"""Tests of worker inventories, adoption, re-replication and drains (master/recovery.py): exact
transitions of the pure state under an injected clock, validate() after every step."""
from __future__ import annotations

import random

from test_state import commit, heartbeat_all, put, register
from test_tiering import finish, take, tick

from mooncake_master.state import (COMPLETE, MOVE_DONE, MOVE_FAILED, MOVE_UNKNOWN, REPLICATE,
                                   TIER_DRAM, TIER_SSD, InventoryEntry, MasterConfig,
                                   MasterState, SegmentSpec)
from mooncake_proto.errors import ErrorCode

OK = ErrorCode.OK
EPOCH = 1_000_000  # the first master's put ids start here; a restarted one's further up


def new_state(workers: int = 3, dram: int = 1 << 20, first_put_id: int = EPOCH,
              **config) -> MasterState:
    config.setdefault("worker_ttl_s", 10.0)
    state = MasterState(MasterConfig(**config), random.Random(0), first_put_id=first_put_id)
    state.tick(0.0)  # a master's first tick starts its rebuild grace (healing waits it out)
    for i in range(workers):
        register(state, f"w{i}", dram=dram)
    return state


def specs(worker_id: str, dram: int = 1 << 20, ssd: int = 0) -> list[SegmentSpec]:
    out = [SegmentSpec(0, TIER_DRAM, dram, f"/dev/shm/{worker_id}")]
    if ssd:
        out.append(SegmentSpec(1, TIER_SSD, ssd, f"/ssd/{worker_id}"))
    return out


def rejoin(state: MasterState, worker_id: str, inventory, now: float, **sizes):
    """A worker registers with an inventory; the Registration."""
    done = state.register_worker(worker_id, f"node-{worker_id}", f"{worker_id}:1",
                                 f"{worker_id}:2", f"{worker_id}:3", specs(worker_id, **sizes),
                                 b"k" * 32, now, inventory=inventory)
    state.heartbeat(worker_id, now)  # its first, right after: it holds the new key
    state.validate()
    return done


def inventory_of(state: MasterState, worker_id: str) -> list[InventoryEntry]:
    """What the worker's inventory holds after applying every update the master queued."""
    held: dict[tuple[int, int], InventoryEntry] = {}
    for update in state.workers[worker_id].updates:
        at = (update.entry.segment_id, update.entry.offset)
        if update.removed:
            assert held.pop(at).key == update.entry.key
        else:
            held[at] = update.entry
    return sorted(held.values(), key=lambda e: e.key)


def keys_of(entries) -> list[str]:
    return sorted(e.key for e in entries)


def kill(state: MasterState, worker_id: str, now: float):
    heartbeat_all(state, now, but=(worker_id,))
    report = state.tick(now)
    state.validate()
    assert report.dead_workers == [worker_id]
    return report


def run_heals(state: MasterState, now: float, outcome: str = MOVE_DONE) -> list:
    """One tick plans copies, the mover takes them and reports outcome; the moves."""
    tick(state, now)
    moves = take(state, now)
    for move in moves:
        finish(state, move.move_id, outcome, now)
    return moves


# -- inventory updates --------------------------------------------------------------------


def test_commits_removals_and_moves_reach_the_workers_inventories():
    state = new_state(workers=2)
    commit(state, "a", replica_num=2)
    commit(state, "b", preferred="w0")
    put(state, ["pending"], [100], preferred="w0")  # not committed: not in any inventory
    assert keys_of(inventory_of(state, "w0")) == ["a", "b"]
    assert keys_of(inventory_of(state, "w1")) == ["a"]
    [entry] = [e for e in inventory_of(state, "w0") if e.key == "a"]
    assert (entry.put_id, entry.size, entry.replica_num) == (state.objects["a"].put_id, 1000, 2)
    assert state.remove(["a"], False, 1.0)[0].code == OK
    assert keys_of(inventory_of(state, "w0")) == ["b"] and inventory_of(state, "w1") == []
    assert [(u.seq, u.removed) for u in state.workers["w0"].updates] == \
        [(1, False), (2, False), (3, True)]


def test_a_heartbeat_hands_out_the_updates_after_the_acknowledged_one():
    state = new_state(workers=1, updates_per_heartbeat=2)
    for key in "abc":
        commit(state, key)
    first = state.heartbeat("w0", 1.0, acked_seq=0)
    assert [u.seq for u in first.updates] == [1, 2] and first.more
    second = state.heartbeat("w0", 1.1, acked_seq=2)
    assert [u.seq for u in second.updates] == [3] and not second.more
    assert state.heartbeat("w0", 1.2, acked_seq=3).updates == []
    assert state.workers["w0"].updates == []


def test_a_worker_too_far_behind_registers_again_and_takes_the_whole_inventory():
    state = new_state(workers=1, max_inventory_updates=2)
    for key in "abc":
        commit(state, key)
    assert state.heartbeat("w0", 1.0).registered is False  # three updates: over the limit
    done = rejoin(state, "w0", [], 2.0)
    assert done.restarted and keys_of(done.inventory) == ["a", "b", "c"]
    assert state.heartbeat("w0", 2.5).registered and state.workers["w0"].updates == []


# -- adoption -----------------------------------------------------------------------------


def test_a_new_master_adopts_every_inventory_and_the_objects_read_as_before():
    old = new_state(workers=2)
    commit(old, "two", replica_num=2, hard_pin=True)
    commit(old, "one", preferred="w1", soft_pin=True)
    inventories = {w: inventory_of(old, w) for w in ("w0", "w1")}
    new = new_state(workers=0, first_put_id=2 * EPOCH)  # restarted later: larger ids
    first = rejoin(new, "w0", inventories["w0"], 0.0)
    assert (first.adopted, first.rejected, first.restarted) == (1, 0, False)
    second = rejoin(new, "w1", inventories["w1"], 0.5)
    assert (second.adopted, second.rejected) == (2, 0)
    assert keys_of(second.inventory) == ["one", "two"]
    for key in ("one", "two"):
        before, after = old.objects[key], new.objects[key]
        assert sorted((r.worker_id, r.offset) for r in after.replicas) == \
            sorted((r.worker_id, r.offset) for r in before.replicas)
        assert (after.put_id, after.size, after.state, after.replica_num, after.hard_pin,
                after.soft_pin) == (before.put_id, before.size, COMPLETE, before.replica_num,
                                    before.hard_pin, before.soft_pin)
    # a new put lands beside the adopted ranges, and takes an id above theirs
    [result] = put(new, ["new"], [1000], preferred="w0")
    assert result.code == OK and result.put_id >= 2 * EPOCH
    assert result.replicas[0].offset not in {r.offset for r in new.objects["two"].replicas}


def test_stale_entries_are_refused_and_their_ranges_stay_free():
    state = new_state(workers=2)
    commit(state, "removed", preferred="w0")
    commit(state, "rewritten", preferred="w0")
    commit(state, "kept", replica_num=2)
    stale = inventory_of(state, "w0")
    state.remove(["removed", "rewritten"], False, 1.0)
    commit(state, "rewritten", preferred="w1", now=1.5)
    kill(state, "w0", 11.0)
    done = rejoin(state, "w0", stale, 12.0)
    # removed: gone for good; rewritten: another put id now; kept: a copy of a known object
    assert (done.adopted, done.rejected) == (1, 2) and keys_of(done.inventory) == ["kept"]
    assert sorted(r.worker_id for r in state.objects["kept"].replicas) == ["w0", "w1"]
    assert [r.worker_id for r in state.objects["rewritten"].replicas] == ["w1"]
    assert "removed" not in state.objects


def test_an_object_lost_with_its_worker_comes_back_with_it():
    state = new_state(workers=2)
    commit(state, "only", preferred="w0")
    inventory = inventory_of(state, "w0")
    report = kill(state, "w0", 11.0)
    assert report.lost_keys == ["only"] and "only" not in state.objects
    done = rejoin(state, "w0", inventory, 12.0)
    assert done.adopted == 1 and state.objects["only"].replicas[0].worker_id == "w0"


def test_a_lost_object_removed_or_written_again_meanwhile_is_not_adopted():
    state = new_state(workers=2)
    commit(state, "removed", preferred="w0")
    commit(state, "rewritten", preferred="w0")
    inventory = inventory_of(state, "w0")
    kill(state, "w0", 11.0)
    assert state.remove(["removed"], False, 11.5)[0].code == ErrorCode.OBJECT_NOT_FOUND
    commit(state, "rewritten", preferred="w1", now=11.5)
    done = rejoin(state, "w0", inventory, 12.0)
    assert (done.adopted, done.rejected) == (0, 2)
    assert "removed" not in state.objects
    assert [r.worker_id for r in state.objects["rewritten"].replicas] == ["w1"]


def test_an_earlier_masters_object_deleted_here_is_not_adopted_again():
    old = new_state(workers=2)
    commit(old, "k", replica_num=2)
    inventories = {w: inventory_of(old, w) for w in ("w0", "w1")}
    new = new_state(workers=0, first_put_id=2 * EPOCH)
    rejoin(new, "w0", inventories["w0"], 0.0)
    assert new.remove(["k"], False, 1.0)[0].code == OK
    done = rejoin(new, "w1", inventories["w1"], 2.0)  # w1 was away during the removal
    assert done.adopted == 0 and "k" not in new.objects


def test_overlapping_or_out_of_range_entries_are_refused():
    state = new_state(workers=0)
    good = InventoryEntry("a", 5, 0, 0, 1000, 1, False, False)
    entries = [good, InventoryEntry("b", 6, 0, 512, 1000, 1, False, False),   # overlaps a
               InventoryEntry("c", 7, 0, (1 << 20) - 64, 1000, 1, False, False),  # past the end
               InventoryEntry("d", 8, 3, 0, 1000, 1, False, False),       # no such segment
               InventoryEntry("", 9, 0, 4096, 10, 1, False, False)]       # not a key
    done = rejoin(state, "w0", entries, 0.0)
    assert (done.adopted, done.rejected) == (1, 4) and list(state.objects) == ["a"]


def test_a_restart_with_the_same_files_keeps_the_replicas_and_answers_them():
    state = new_state(workers=1)
    commit(state, "a")
    commit(state, "b")
    inventory = inventory_of(state, "w0")[:1]  # the worker missed b's update
    done = rejoin(state, "w0", inventory + [InventoryEntry("ghost", 1, 0, 8192, 10, 1,
                                                           False, False)], 1.0)
    assert done.restarted and (done.adopted, done.rejected) == (0, 1)
    assert keys_of(done.inventory) == ["a", "b"]


# -- re-replication -----------------------------------------------------------------------


def test_a_dead_workers_objects_are_copied_back_up_to_their_replica_num():
    state = new_state(workers=3)
    commit(state, "k", replica_num=2, preferred="w0")
    holders = {r.worker_id for r in state.objects["k"].replicas}
    victim = "w0"
    kill(state, victim, 11.0)
    assert len(state.objects["k"].replicas) == 1
    [move] = run_heals(state, 11.5)
    assert move.kind == REPLICATE and move.dst.worker_id not in holders
    replicas = state.objects["k"].replicas
    assert len(replicas) == 2 and len({r.worker_id for r in replicas}) == 2
    assert all(r.state == COMPLETE for r in replicas)
    assert "k" in keys_of(inventory_of(state, move.dst.worker_id))
    assert state.counters["replications"] == 1
    assert run_heals(state, 12.0) == []  # healed: nothing more to copy


def test_healing_waits_for_the_rebuild_grace_after_a_master_start():
    old = new_state(workers=2)
    commit(old, "k", replica_num=2)
    new = new_state(workers=0, first_put_id=2 * EPOCH, worker_ttl_s=10.0)
    tick(new, 0.0)  # the grace starts at the first tick
    rejoin(new, "w0", inventory_of(old, "w0"), 1.0)
    register(new, "w2", now=1.0)
    assert run_heals(new, 5.0) == []  # w1 may still come with the second replica
    rejoin(new, "w1", inventory_of(old, "w1"), 6.0)
    assert len(new.objects["k"].replicas) == 2
    assert run_heals(new, 10.5) == []  # nothing is short any more


def test_healing_keeps_to_its_bytes_in_flight_budget():
    state = new_state(workers=3, heal_bytes_in_flight=2500)
    for key in "abcde":
        commit(state, key, 1000, replica_num=2, preferred="w0")
    kill(state, "w0", 11.0)
    tick(state, 11.5)
    assert sorted(m.key for m in state.moves.values()) == ["a", "b", "c"]  # 3 x 1000 > 2500
    for move in take(state, 11.5):
        finish(state, move.move_id, MOVE_DONE, 11.5)
    assert sorted(m.key for m in run_heals(state, 12.0)) == ["d", "e"]
    assert all(len(o.replicas) == 2 for o in state.objects.values())


def test_failed_copies_are_retried_then_given_up():
    state = new_state(workers=3, heal_attempts=2)
    commit(state, "k", replica_num=2, preferred="w0")
    kill(state, "w0", 11.0)
    [first] = run_heals(state, 11.5, MOVE_FAILED)
    [second] = run_heals(state, 12.0, MOVE_UNKNOWN)  # the write grant may still be used
    assert run_heals(state, 12.5) == []
    assert len(state.objects["k"].replicas) == 1 and state.counters["heals_given_up"] == 1
    held = [p for p in state.pending_frees if p.offset == second.dst.offset
            and p.worker_id == second.dst.worker_id]
    assert len(held) == 1


def test_a_copy_whose_target_dies_is_forgotten_and_planned_again():
    state = new_state(workers=4)
    commit(state, "k", replica_num=2, preferred="w0")
    kill(state, "w0", 11.0)
    tick(state, 11.5)
    [move] = take(state, 11.5)
    heartbeat_all(state, 22.0, but=(move.dst.worker_id,))
    report = state.tick(22.0)
    state.validate()
    assert report.dead_workers == [move.dst.worker_id]
    assert finish(state, move.move_id, MOVE_DONE, 22.0) is False
    [again] = [m for m in state.moves.values()]
    assert again.kind == REPLICATE and again.dst.worker_id not in (move.dst.worker_id, "w0")


def test_a_copy_from_a_dying_source_releases_its_target_after_the_write_grant():
    state = new_state(workers=3, move_timeout_s=30.0, grant_margin_s=2.0)
    commit(state, "k", replica_num=2, preferred="w0")
    kill(state, "w0", 11.0)
    tick(state, 11.5)
    [move] = take(state, 11.5)
    heartbeat_all(state, 22.0, but=(move.src.worker_id,))
    state.tick(22.0)
    state.validate()
    assert "k" not in state.objects  # its last replica went with the source
    held = [p for p in state.pending_frees if p.worker_id == move.dst.worker_id]
    assert [p.free_at for p in held] == [11.5 + 30.0 + 4.0]


# -- drains -------------------------------------------------------------------------------


def test_a_drain_copies_sole_replicas_away_and_takes_no_new_placements():
    state = new_state(workers=2)
    commit(state, "sole", preferred="w0")
    commit(state, "both", replica_num=2)
    commit(state, "elsewhere", preferred="w1")
    status = state.drain("w0")
    assert (status.draining, status.objects_left, status.bytes_left) == (True, 1, 1000)
    [result] = put(state, ["new"], [1000], preferred="w0")
    assert [r.worker_id for r in result.replicas] == ["w1"]
    [move] = run_heals(state, 11.0)
    assert (move.key, move.dst.worker_id) == ("sole", "w1")
    assert state.drain("w0").objects_left == 0
    lost = state.deregister_worker("w0", 12.0)
    state.validate()
    assert lost == [] and all(o.replicas for o in state.objects.values())


def test_a_worker_drains_itself_through_its_heartbeats():
    state = new_state(workers=2)
    commit(state, "sole", preferred="w0")
    beat = state.heartbeat("w0", 1.0, draining=True)
    assert beat.drain.draining and beat.drain.objects_left == 1
    run_heals(state, 11.0)
    assert state.heartbeat("w0", 11.5, draining=True).drain.objects_left == 0


def test_a_cancelled_drain_puts_the_worker_back_in_service():
    state = new_state(workers=2)
    state.drain("w0")
    status = state.drain("w0", cancel=True)
    assert not status.draining and not state.workers["w0"].draining
    [result] = put(state, ["k"], [1000], preferred="w0")
    assert result.replicas[0].worker_id == "w0"
    assert state.drain("nobody") is None and state.deregister_worker("nobody", 1.0) is None


def test_an_object_committed_on_a_draining_worker_is_copied_too():
    state = new_state(workers=2)
    [result] = put(state, ["late"], [1000], preferred="w0")
    state.drain("w0")
    assert state.put_end(["late"], 1.0, [result.put_id])[0].code == OK
    assert state.drain("w0").objects_left == 1
    [move] = run_heals(state, 11.0)
    assert move.key == "late" and state.drain("w0").objects_left == 0


def test_a_dead_worker_back_with_its_files_gets_even_what_its_inventory_missed():
    # commits reach an inventory with the next heartbeat: a worker killed sooner comes back
    # without them, and the master offers what it remembers of the dead worker
    state = new_state(workers=2)
    commit(state, "synced", preferred="w0")
    inventory = inventory_of(state, "w0")
    commit(state, "unsynced", preferred="w0")
    kill(state, "w0", 11.0)
    done = rejoin(state, "w0", inventory, 12.0)
    assert (done.adopted, done.rejected) == (2, 0)
    assert keys_of(done.inventory) == ["synced", "unsynced"]


def test_what_a_dead_worker_held_is_forgotten_when_it_comes_back_with_other_files():
    state = new_state(workers=2)
    commit(state, "k", preferred="w0")
    kill(state, "w0", 11.0)
    done = rejoin(state, "w0", [], 12.0, dram=2 << 20)  # a new, larger segment file
    assert done.adopted == 0 and "k" not in state.objects


def test_a_freed_range_is_reused_only_after_its_worker_has_the_removal():
    # otherwise: the range goes to a new object, the master dies before the worker heard of
    # either change, and the next master adopts the old key over the new object's bytes
    state = new_state(workers=1, dram=4096)
    commit(state, "old", 4096)
    state.heartbeat("w0", 1.0, state.workers["w0"].update_seq)
    assert state.remove(["old"], False, 2.0)[0].code == OK
    assert put(state, ["new"], [4096], now=2.0)[0].code == ErrorCode.SPACE_BEING_FREED
    state.heartbeat("w0", 2.6, acked_seq=1)  # the add of "old", not its removal
    assert state.tick(2.6).freed_ranges == 0
    assert put(state, ["new"], [4096], now=2.6)[0].code == ErrorCode.SPACE_BEING_FREED
    state.heartbeat("w0", 3.0, acked_seq=state.workers["w0"].update_seq)
    state.validate()
    assert state.pending_frees == []  # freed by the heartbeat itself, not the next tick
    assert put(state, ["new"], [4096], now=3.0)[0].code == OK


def test_a_worker_registering_again_releases_the_ranges_waiting_for_its_acknowledgement():
    state = new_state(workers=1, dram=4096)
    commit(state, "old", 4096)
    state.remove(["old"], False, 1.0)
    assert len(state.pending_frees) == 1
    rejoin(state, "w0", [], 2.0, dram=4096)  # a restart: its inventory is the master's answer
    assert state.tick(2.0).freed_ranges == 1


def test_a_drain_does_not_wait_out_the_rebuild_grace():
    state = new_state(workers=2)  # started at 0: healing waits until 10
    commit(state, "sole", preferred="w0")
    state.drain("w0")
    [move] = run_heals(state, 1.0)
    assert move.key == "sole" and state.drain("w0").objects_left == 0
