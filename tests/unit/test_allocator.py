"""Tests of OffsetAllocator: exact unit cases and a hypothesis state machine over alloc/free."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

from mooncake_master.allocator import OffsetAllocator, align_up


def checked(alloc: OffsetAllocator, length: int) -> int | None:
    offset = alloc.allocate(length)
    alloc.validate()
    return offset


def test_fresh_allocator_is_one_free_block():
    alloc = OffsetAllocator(4096)
    alloc.validate()
    assert (alloc.size_bytes, alloc.used_bytes, alloc.free_bytes) == (4096, 0, 4096)
    assert alloc.largest_free_bytes == 4096
    assert alloc.fragmentation == 0.0
    assert alloc.free_blocks() == {0: 4096}
    assert alloc.allocated_blocks() == {}


def test_allocation_reserves_aligned_sizes_back_to_back():
    alloc = OffsetAllocator(4096)
    assert checked(alloc, 1) == 0
    assert checked(alloc, 64) == 64
    assert checked(alloc, 65) == 128
    assert alloc.allocated_blocks() == {0: 64, 64: 64, 128: 128}
    assert alloc.reserved_size(128) == 128
    assert alloc.used_bytes == 256
    assert alloc.free_bytes == 4096 - 256
    assert alloc.free_blocks() == {256: 4096 - 256}


def test_custom_alignment():
    alloc = OffsetAllocator(1 << 20, alignment=4096)
    assert checked(alloc, 1) == 0
    assert checked(alloc, 4097) == 4096
    assert alloc.allocated_blocks() == {0: 4096, 4096: 8192}
    assert align_up(4097, 4096) == 8192
    assert align_up(4096, 4096) == 4096
    assert align_up(0, 64) == 0


@pytest.mark.parametrize("size, alignment", [(0, 64), (-1, 64), (64, 0), (64, 48), (1.5, 64)])
def test_bad_construction_raises(size, alignment):
    with pytest.raises(ValueError):
        OffsetAllocator(size, alignment)


@pytest.mark.parametrize("length", [0, -1, -64])
def test_allocate_non_positive_raises(length):
    alloc = OffsetAllocator(1024)
    with pytest.raises(ValueError):
        alloc.allocate(length)
    alloc.validate()
    assert alloc.used_bytes == 0


def test_exact_fit_fills_the_segment():
    alloc = OffsetAllocator(1024)
    assert checked(alloc, 1024) == 0
    assert (alloc.used_bytes, alloc.free_bytes, alloc.largest_free_bytes) == (1024, 0, 0)
    assert alloc.fragmentation == 0.0
    assert checked(alloc, 1) is None
    alloc.free(0)
    alloc.validate()
    assert alloc.free_blocks() == {0: 1024}


def test_exhaustion_returns_none_and_changes_nothing():
    alloc = OffsetAllocator(1024)
    offsets = [checked(alloc, 64) for _ in range(16)]
    assert sorted(offsets) == list(range(0, 1024, 64))
    before = alloc.allocated_blocks()
    assert checked(alloc, 1) is None
    assert alloc.allocated_blocks() == before
    assert alloc.used_bytes == 1024


def test_larger_than_segment_returns_none():
    alloc = OffsetAllocator(1000)
    assert checked(alloc, 1001) is None
    assert checked(alloc, 1 << 40) is None
    assert alloc.used_bytes == 0


def test_unaligned_segment_tail_is_usable_only_when_aligned_size_fits():
    alloc = OffsetAllocator(100)
    assert checked(alloc, 10) == 0
    assert alloc.free_bytes == 36
    assert checked(alloc, 30) is None  # reserves 64, only 36 left
    alloc.free(0)
    alloc.validate()
    assert alloc.free_blocks() == {0: 100}
    assert checked(alloc, 100) is None  # align_up(100) = 128 > 100
    assert checked(alloc, 64) == 0


def test_free_coalesces_with_both_neighbours():
    alloc = OffsetAllocator(256)
    a, b, c, d = (checked(alloc, 64) for _ in range(4))
    assert (a, b, c, d) == (0, 64, 128, 192)
    alloc.free(a)
    alloc.free(c)
    alloc.validate()
    assert alloc.free_blocks() == {0: 64, 128: 64}
    alloc.free(b)  # joins left (a) and right (c)
    alloc.validate()
    assert alloc.free_blocks() == {0: 192}
    alloc.free(d)
    alloc.validate()
    assert alloc.free_blocks() == {0: 256}


def test_free_coalesces_with_right_neighbour_only():
    alloc = OffsetAllocator(256)
    a, b = checked(alloc, 64), checked(alloc, 64)
    alloc.free(b)  # joins the tail free block at 128
    alloc.validate()
    assert alloc.free_blocks() == {64: 192}
    alloc.free(a)
    assert alloc.free_blocks() == {0: 256}


def test_fragmentation_numbers():
    alloc = OffsetAllocator(1024)
    offsets = [checked(alloc, 256) for _ in range(4)]
    assert offsets == [0, 256, 512, 768]
    alloc.free(0)
    alloc.free(512)
    alloc.validate()
    assert alloc.free_bytes == 512
    assert alloc.largest_free_bytes == 256
    assert alloc.fragmentation == pytest.approx(0.5)
    assert checked(alloc, 257) is None  # 512 bytes free, but not in one piece
    alloc.free(256)  # 0..768 becomes one block
    assert alloc.largest_free_bytes == 768
    assert alloc.fragmentation == 0.0


def test_fragmentation_three_quarters():
    alloc = OffsetAllocator(512)
    offsets = [checked(alloc, 64) for _ in range(8)]
    for offset in offsets[::2]:
        alloc.free(offset)
    alloc.validate()
    assert alloc.largest_free_bytes == 64
    assert alloc.fragmentation == pytest.approx(1 - 64 / 256)


def test_block_in_floor_bin_is_found_by_scan():
    # A 448-byte block lives in bin 8 ([256, 512)); a 320-byte request looks from bin 9 up,
    # finds nothing there, and must fall back to scanning bin 8.
    alloc = OffsetAllocator(512)
    assert checked(alloc, 448) == 0
    assert checked(alloc, 64) == 448
    alloc.free(0)
    assert alloc.free_blocks() == {0: 448}
    assert checked(alloc, 320) == 0
    assert alloc.free_blocks() == {320: 128}


def test_floor_bin_scan_skips_blocks_too_small():
    alloc = OffsetAllocator(1024)
    a = checked(alloc, 256)
    checked(alloc, 64)
    b = checked(alloc, 320)
    checked(alloc, 384)  # fills the segment: 256 + 64 + 320 + 384
    assert alloc.free_bytes == 0
    alloc.free(a)
    alloc.free(b)
    assert alloc.free_blocks() == {0: 256, 320: 320}
    assert checked(alloc, 300) == 320
    assert checked(alloc, 300) is None  # only the 256 block is left in bin 8


def test_double_free_and_unknown_offset_raise():
    alloc = OffsetAllocator(1024)
    offset = checked(alloc, 100)
    alloc.free(offset)
    with pytest.raises(ValueError):
        alloc.free(offset)
    with pytest.raises(ValueError):
        alloc.free(12345)
    other = checked(alloc, 100)
    with pytest.raises(ValueError):
        alloc.free(other + 64)  # inside a block, not its start
    alloc.validate()
    assert alloc.allocated_blocks() == {other: 128}


def test_reserved_size_of_unknown_offset_raises():
    alloc = OffsetAllocator(1024)
    with pytest.raises(ValueError):
        alloc.reserved_size(0)


def test_allocated_blocks_is_a_copy():
    alloc = OffsetAllocator(1024)
    checked(alloc, 64)
    alloc.allocated_blocks().clear()
    assert alloc.allocated_blocks() == {0: 64}


def test_many_small_blocks_reuse_freed_space():
    alloc = OffsetAllocator(64 * 1000)
    offsets = [checked(alloc, 64) for _ in range(1000)]
    for offset in offsets[:500]:
        alloc.free(offset)
    assert alloc.free_blocks() == {0: 64 * 500}
    assert checked(alloc, 64 * 500) == 0
    assert alloc.free_bytes == 0


@pytest.mark.parametrize("corrupt", [
    lambda a: setattr(a, "_used_bytes", a._used_bytes + 64),
    lambda a: a._allocated.__setitem__(0, 128),
    lambda a: a._allocated.pop(64),
    lambda a: setattr(a, "_bitmap", a._bitmap | 1),
    lambda a: a._bins[3].add(256),
    lambda a: a._free_by_end.clear(),
])
def test_validate_detects_corruption(corrupt):
    alloc = OffsetAllocator(1024)
    checked(alloc, 64)
    checked(alloc, 64)
    alloc.validate()
    corrupt(alloc)
    with pytest.raises(AssertionError):
        alloc.validate()


def test_validate_detects_uncoalesced_neighbours():
    alloc = OffsetAllocator(256)
    a = checked(alloc, 64)
    checked(alloc, 64)
    alloc.free(a)
    # Hand-free the second block without coalescing: two adjacent free blocks.
    del alloc._allocated[64]
    alloc._used_bytes -= 64
    alloc._insert_free(64, 64)
    with pytest.raises(AssertionError, match="coalesced"):
        alloc.validate()


class AllocatorMachine(RuleBasedStateMachine):
    """Random alloc/free sequences against a plain model of the reserved ranges."""

    def __init__(self):
        super().__init__()
        self.alloc: OffsetAllocator | None = None
        self.model: dict[int, int] = {}

    @initialize(size=st.integers(1, 1 << 16), alignment=st.sampled_from([1, 8, 64, 256]))
    def make(self, size, alignment):
        self.alloc = OffsetAllocator(size, alignment)

    @rule(data=st.data())
    def allocate(self, data):
        length = data.draw(st.one_of(st.integers(1, 512),
                                     st.integers(1, self.alloc.size_bytes)), label="length")
        largest = self.alloc.largest_free_bytes
        offset = self.alloc.allocate(length)
        reserved = align_up(length, self.alloc.alignment)
        # The bitmap plus the floor-bin scan make the search exact: None only when nothing fits.
        assert (offset is None) == (largest < reserved)
        if offset is not None:
            assert offset not in self.model
            self.model[offset] = reserved

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def free(self, data):
        offset = data.draw(st.sampled_from(sorted(self.model)), label="offset")
        self.alloc.free(offset)
        del self.model[offset]

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def double_free_raises(self, data):
        offset = data.draw(st.sampled_from(sorted(self.model)), label="offset")
        self.alloc.free(offset)
        del self.model[offset]
        with pytest.raises(ValueError):
            self.alloc.free(offset)

    @invariant()
    def consistent(self):
        if self.alloc is None:
            return
        self.alloc.validate()
        assert self.alloc.allocated_blocks() == self.model
        end = 0
        for offset in sorted(self.model):
            assert offset >= end, f"block at {offset} overlaps one ending at {end}"
            end = offset + self.model[offset]
            assert end <= self.alloc.size_bytes
        assert self.alloc.used_bytes == sum(self.model.values())
        assert self.alloc.free_bytes == self.alloc.size_bytes - self.alloc.used_bytes
        assert 0.0 <= self.alloc.fragmentation < 1.0

    def teardown(self):
        if self.alloc is None:
            return
        for offset in list(self.model):
            self.alloc.free(offset)
        self.alloc.validate()
        assert self.alloc.free_blocks() == {0: self.alloc.size_bytes}
        assert self.alloc.used_bytes == 0


AllocatorMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestAllocatorMachine = AllocatorMachine.TestCase


def test_reserve_takes_exactly_the_range_asked_for():
    alloc = OffsetAllocator(4096)
    alloc.reserve(1024, 100)
    assert alloc.allocated_blocks() == {1024: 128}
    assert alloc.free_blocks() == {0: 1024, 1152: 2944}
    alloc.reserve(0, 1024)
    assert alloc.free_blocks() == {1152: 2944}
    alloc.validate()
    for offset, length in ((1024, 64), (1100, 64), (1000, 64), (4096, 64), (4032, 128), (-64, 64)):
        with pytest.raises(ValueError):
            alloc.reserve(offset, length)  # taken, unaligned, overlapping or outside
    assert alloc.allocate(2944) == 1152  # the rest is still one block
    alloc.free(1024)
    alloc.free(0)
    alloc.free(1152)
    assert alloc.free_blocks() == {0: 4096}
    alloc.validate()
