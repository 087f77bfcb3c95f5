"""ListKeys' pure core (master/listing.py `list_keys`): prefix, order, pages, what a listing
says, and that listing leaves the state as it was (no lease, no access time)."""
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from mooncake_master import listing
from mooncake_master.model import ObjectMeta, Replica
from mooncake_master.listing import MAX_LIST_LIMIT, list_keys
from mooncake_master.state import (COMPLETE, PENDING, TIER_DRAM, TIER_SSD, MasterConfig,
                                   MasterState, PlacementConfig, SegmentSpec)

MiB = 1 << 20


def _state() -> MasterState:
    state = MasterState(MasterConfig(), random.Random(0))
    for i in range(2):
        state.register_worker(f"w{i}", f"n{i}", f"w{i}:1", f"w{i}:2", f"w{i}:3",
                              [SegmentSpec(0, TIER_DRAM, 4 * MiB, f"/dev/shm/w{i}")],
                              b"k" * 32, 0.0)
        state.heartbeat(f"w{i}", 0.0)  # holds its key: new ranges may go there
    return state


def _put(state, key, size=1000, now=0.0, end=True, **config):
    [result] = state.put_start([key], [size], PlacementConfig(**config), "", now)
    assert result.code == 0, result.message
    if end:
        state.put_end([key], now, [result.put_id])


def _object(key: str) -> ObjectMeta:
    return ObjectMeta(key=key, size=1, state=COMPLETE, replicas=[], replica_num=1,
                      lease_until=0.0, soft_pin=False, hard_pin=False, last_access=0.0,
                      put_started_at=0.0)


def test_a_page_is_the_prefix_in_key_order():
    state = _state()
    for key in ("b/2", "a/1", "b/10", "b/1", "c", "b"):
        _put(state, key)
    listings, more = list_keys(state.objects, "b/", 0, "", 1.0)
    assert [k.key for k in listings] == ["b/1", "b/10", "b/2"] and not more
    listings, more = list_keys(state.objects, "", 2, "", 1.0)
    assert [k.key for k in listings] == ["a/1", "b"] and more
    listings, more = list_keys(state.objects, "", 2, "b", 1.0)
    assert [k.key for k in listings] == ["b/1", "b/10"] and more
    assert list_keys(state.objects, "zz", 0, "", 1.0) == ([], False)


def test_a_listing_says_size_state_tiers_pins_and_age_and_changes_nothing():
    state = _state()
    _put(state, "k/replicated", size=3000, now=1.0, replica_num=2, hard_pin=True)
    _put(state, "k/pending", size=10, now=2.0, end=False, soft_pin=True)
    before = {k: (o.last_access, o.lease_until) for k, o in state.objects.items()}
    listings, _ = list_keys(state.objects, "k/", 0, "", 5.0)
    pending, replicated = listings
    assert (pending.state, pending.soft_pin, pending.hard_pin, pending.size) == \
        (PENDING, True, False, 10)
    assert (replicated.state, replicated.tiers, replicated.hard_pin, replicated.size) == \
        (COMPLETE, (TIER_DRAM, TIER_DRAM), True, 3000)
    assert replicated.last_access_age_s == 4.0 and pending.last_access_age_s == 3.0
    assert {k: (o.last_access, o.lease_until) for k, o in state.objects.items()} == before
    state.validate()
    assert list_keys(state.objects, "k/", 0, "", 0.0)[0][0].last_access_age_s == 0.0  # clamped


def test_tiers_are_one_per_replica_in_order():
    obj = _object("x")
    obj.replicas = [Replica("w0", 0, TIER_DRAM, 0, 1, COMPLETE),
                    Replica("w0", 1, TIER_SSD, 0, 1, COMPLETE)]
    assert list_keys({"x": obj}, "", 0, "", 0.0)[0][0].tiers == (TIER_DRAM, TIER_SSD)


def test_limit_zero_is_the_default_and_large_limits_are_capped():
    objects = {f"k{i:05d}": _object(f"k{i:05d}") for i in range(MAX_LIST_LIMIT + 5)}
    listings, more = list_keys(objects, "", 0, "", 0.0)
    assert len(listings) == listing.DEFAULT_LIST_LIMIT and more
    listings, more = list_keys(objects, "", 10 * MAX_LIST_LIMIT, "", 0.0)
    assert len(listings) == MAX_LIST_LIMIT and more
    assert listings[-1].key == f"k{MAX_LIST_LIMIT - 1:05d}"


@settings(max_examples=60, deadline=None)
@given(keys=st.sets(st.text(alphabet="ab/é\u4e2d", min_size=1, max_size=6), max_size=40),
       prefix=st.text(alphabet="ab/é", max_size=2), page=st.integers(1, 7))
def test_paging_with_start_after_lists_every_matching_key_once_in_order(keys, prefix, page):
    objects = {k: _object(k) for k in keys}
    seen, after = [], ""
    while True:
        listings, more = list_keys(objects, prefix, page, after, 0.0)
        assert len(listings) <= page
        seen += [k.key for k in listings]
        if not more:
            break
        after = listings[-1].key
    assert seen == sorted(k for k in keys if k.startswith(prefix))
    # key order is UTF-8 byte order (what clients in other languages sort by)
    assert seen == sorted(seen, key=lambda k: k.encode())
