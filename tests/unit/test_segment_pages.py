"""How much of a segment mapping huge pages back, read from smaps (native/segment.py): the
worker logs it at start, since a tmpfs without huge= gives 4 KiB pages whatever we ask."""
from mooncake_native.segment import SegmentMapping, smaps_pmd_bytes

SMAPS = """\
7f0000000000-7f0000400000 rw-s 00000000 00:1a 101 /dev/shm/mooncake-a-dram
Size:               4096 kB
Rss:                4096 kB
ShmemPmdMapped:     2048 kB
FilePmdMapped:         0 kB
VmFlags: rd wr sh mr mw me ms hg
7f0000400000-7f0000800000 rw-s 00000000 00:1a 102 /mnt/huge/mooncake-b-dram
Size:               4096 kB
ShmemPmdMapped:     4096 kB
VmFlags: rd wr sh mr mw me ms hg
7f0000800000-7f0000900000 rw-p 00000000 00:00 0
AnonHugePages:      1024 kB
"""


def test_the_huge_pages_of_the_mapping_at_an_address(tmp_path):
    smaps = tmp_path / "smaps"
    smaps.write_text(SMAPS)
    assert smaps_pmd_bytes(0x7f0000000000, str(smaps)) == 2048 << 10
    assert smaps_pmd_bytes(0x7f0000400000, str(smaps)) == 4096 << 10
    assert smaps_pmd_bytes(0x7f0000800000, str(smaps)) == 1024 << 10
    assert smaps_pmd_bytes(0x7f0000900000, str(smaps)) == 0  # no such mapping
    assert smaps_pmd_bytes(0x7f0000000000, str(tmp_path / "missing")) == 0


def test_a_real_mapping_reports_at_most_its_size(tmp_path):
    segment = SegmentMapping(str(tmp_path / "mooncake-seg"), 4 << 20, create=True)
    try:
        assert 0 <= segment.huge_page_bytes() <= segment.size_bytes
    finally:
        segment.close()
