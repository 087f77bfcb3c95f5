"""Fixtures the native tests share (their raw data-port client is raw_dataplane.py): a grant
key, and segments sized by the test module's DRAM_BYTES and SSD_BYTES."""
import os

import pytest

from mooncake_native.file_segment import FileSegment
from mooncake_native.segment import SegmentMapping
from mooncake_proto import grants


@pytest.fixture
def key():
    """A worker's grant key."""
    return os.urandom(grants.KEY_BYTES)


@pytest.fixture
def dram(tmp_path, request):
    """A DRAM segment file of the test module's DRAM_BYTES, mapped."""
    mapping = SegmentMapping(str(tmp_path / "dram"), request.module.DRAM_BYTES, create=True)
    yield mapping
    mapping.close()


@pytest.fixture
def ssd(tmp_path, request):
    """An SSD segment file of the test module's SSD_BYTES."""
    with FileSegment(str(tmp_path / "ssd"), request.module.SSD_BYTES, create=True) as segment:
        yield segment
