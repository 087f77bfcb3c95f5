"""Offset allocation inside one segment: which [offset, offset+size) ranges are taken or free.

A TLSF-like allocator. Free blocks sit in size bins (bin k holds sizes in [2^k, 2^(k+1))) and
an int bitmap marks the non-empty bins, so finding a block that surely fits is a couple of bit
operations. Freed blocks coalesce with both neighbours through `_free_by_offset` and
`_free_by_end`, so the segment never holds two adjacent free blocks.
"""
from __future__ import annotations


def align_up(n: int, alignment: int) -> int:
    """`n` rounded up to a multiple of `alignment` (a power of two)."""
    return (n + alignment - 1) & ~(alignment - 1)


class OffsetAllocator:
    """Hands out non-overlapping [offset, offset+size) ranges of one segment."""

    ALIGNMENT = 64

    def __init__(self, size_bytes: int, alignment: int = ALIGNMENT):
        if not isinstance(size_bytes, int) or size_bytes < 1:
            raise ValueError(f"segment size must be a positive int, got {size_bytes!r}")
        if alignment < 1 or alignment & (alignment - 1):
            raise ValueError(f"alignment must be a power of two, got {alignment!r}")
        self.size_bytes = size_bytes
        self.alignment = alignment
        self._allocated: dict[int, int] = {}
        self._free_by_offset: dict[int, int] = {}
        self._free_by_end: dict[int, int] = {}
        self._bins: list[set[int]] = [set() for _ in range(size_bytes.bit_length())]
        self._bitmap = 0
        self._used_bytes = 0
        self._reserve_hint = 0  # where the free block after the last reserve() starts
        self._insert_free(0, size_bytes)

    # -- queries --------------------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        return self._used_bytes

    @property
    def free_bytes(self) -> int:
        return self.size_bytes - self._used_bytes

    @property
    def largest_free_bytes(self) -> int:
        if not self._bitmap:
            return 0
        top = self._bitmap.bit_length() - 1
        return max(self._free_by_offset[off] for off in self._bins[top])

    @property
    def fragmentation(self) -> float:
        """1 - largest free block / free bytes: 0.0 when free space is one block (or none)."""
        free = self.free_bytes
        if free == 0:
            return 0.0
        return 1.0 - self.largest_free_bytes / free

    def reserved_size(self, offset: int) -> int:
        try:
            return self._allocated[offset]
        except KeyError:
            raise ValueError(f"no block allocated at offset {offset}") from None

    def allocated_blocks(self) -> dict[int, int]:
        """offset -> reserved size of every allocated block (a copy)."""
        return dict(self._allocated)

    def free_blocks(self) -> dict[int, int]:
        """offset -> size of every free block (a copy)."""
        return dict(self._free_by_offset)

    # -- mutation -------------------------------------------------------------------------

    def allocate(self, length: int) -> int | None:
        """Reserve align_up(length) bytes; the offset, or None when no free block fits."""
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive int, got {length!r}")
        size = align_up(length, self.alignment)
        offset = self._find_fit(size)
        if offset is None:
            return None
        block_size = self._remove_free(offset)
        if block_size > size:
            self._insert_free(offset + size, block_size - size)
        self._allocated[offset] = size
        self._used_bytes += size
        return offset

    def reserve(self, offset: int, length: int) -> None:
        """Reserve exactly [offset, offset + align_up(length)): for ranges that must keep their
        place in a fresh allocator (a re-registered worker's ranges that grants still cover).
        ValueError unless the range is aligned, inside the segment and entirely free."""
        size = align_up(length, self.alignment)
        if length < 1 or offset < 0 or offset % self.alignment or offset + size > self.size_bytes:
            raise ValueError(f"cannot reserve {length} bytes at offset {offset}")
        # ranges reserved in offset order (a worker's inventory, adopted sorted) each fall in
        # the free block the previous one left behind: O(1). Otherwise O(free blocks), which
        # is fine off the data path (registration only).
        hint = self._reserve_hint
        hint_size = self._free_by_offset.get(hint, 0)
        if hint <= offset and offset + size <= hint + hint_size:
            block = hint
        else:
            block = next((start for start, block_size in self._free_by_offset.items()
                          if start <= offset and offset + size <= start + block_size), None)
        if block is None:
            raise ValueError(f"range [{offset}, {offset + size}) is not free")
        block_end = block + self._remove_free(block)
        if offset > block:
            self._insert_free(block, offset - block)
        if block_end > offset + size:
            self._insert_free(offset + size, block_end - offset - size)
        self._allocated[offset] = size
        self._used_bytes += size
        self._reserve_hint = offset + size

    def free(self, offset: int) -> None:
        """Free the block allocated at `offset`; ValueError on an unknown offset or double free."""
        size = self._allocated.pop(offset, None)
        if size is None:
            raise ValueError(f"no block allocated at offset {offset} (unknown or already freed)")
        self._used_bytes -= size
        end = offset + size
        if end in self._free_by_offset:
            size += self._remove_free(end)
        left = self._free_by_end.get(offset)
        if left is not None:
            size += self._remove_free(left)
            offset = left
        self._insert_free(offset, size)

    # -- internals ------------------------------------------------------------------------

    def _find_fit(self, size: int) -> int | None:
        # Every block in bin ceil(log2(size)) or above is >= size, so any of them fits.
        ceil_bin = (size - 1).bit_length()
        candidates = self._bitmap >> ceil_bin << ceil_bin
        if candidates:
            bin_index = (candidates & -candidates).bit_length() - 1
            return next(iter(self._bins[bin_index]))
        # Only bin floor(log2(size)) may still hold a block big enough; it needs a scan.
        floor_bin = size.bit_length() - 1
        if floor_bin == ceil_bin or floor_bin >= len(self._bins):
            return None
        for offset in self._bins[floor_bin]:
            if self._free_by_offset[offset] >= size:
                return offset
        return None

    def _insert_free(self, offset: int, size: int) -> None:
        self._free_by_offset[offset] = size
        self._free_by_end[offset + size] = offset
        bin_index = size.bit_length() - 1
        self._bins[bin_index].add(offset)
        self._bitmap |= 1 << bin_index

    def _remove_free(self, offset: int) -> int:
        size = self._free_by_offset.pop(offset)
        del self._free_by_end[offset + size]
        bin_index = size.bit_length() - 1
        members = self._bins[bin_index]
        members.remove(offset)
        if not members:
            self._bitmap &= ~(1 << bin_index)
        return size

    def validate(self) -> None:
        """Raise AssertionError on any broken invariant of the block and bin indexes."""
        self._validate_tiling()
        self._validate_bins()

    def _validate_tiling(self) -> None:
        overlap = self._allocated.keys() & self._free_by_offset.keys()
        assert not overlap, f"offsets both free and allocated: {sorted(overlap)}"
        blocks = sorted(
            [(off, size, False) for off, size in self._allocated.items()]
            + [(off, size, True) for off, size in self._free_by_offset.items()]
        )
        cursor, previous_free = 0, False
        for offset, size, is_free in blocks:
            assert size > 0, f"empty block at {offset}"
            assert offset == cursor, f"block at {offset} but previous block ends at {cursor}"
            assert offset % self.alignment == 0, f"block at {offset} is not aligned"
            assert not (is_free and previous_free), f"free block at {offset} not coalesced"
            if not is_free:
                assert size % self.alignment == 0, f"reserved size {size} at {offset} unaligned"
            cursor, previous_free = offset + size, is_free
        assert cursor == self.size_bytes, f"blocks end at {cursor}, segment at {self.size_bytes}"
        used = sum(self._allocated.values())
        assert used == self._used_bytes, f"used_bytes {self._used_bytes} != blocks sum {used}"

    def _validate_bins(self) -> None:
        expected_ends = {off + size: off for off, size in self._free_by_offset.items()}
        assert expected_ends == self._free_by_end, "free_by_end disagrees with free_by_offset"
        binned: set[int] = set()
        for bin_index, members in enumerate(self._bins):
            bit_set = bool(self._bitmap >> bin_index & 1)
            assert bit_set == bool(members), f"bitmap bit {bin_index} is {bit_set} for {members}"
            for offset in members:
                size = self._free_by_offset.get(offset)
                assert size is not None, f"bin {bin_index} holds {offset}, which is not free"
                assert size.bit_length() - 1 == bin_index, f"size {size} in wrong bin {bin_index}"
            assert not (binned & members), f"offsets in two bins: {binned & members}"
            binned |= members
        assert self._bitmap >> len(self._bins) == 0, "bitmap has bits beyond the last bin"
        assert binned == self._free_by_offset.keys(), "free blocks missing from the bins"
