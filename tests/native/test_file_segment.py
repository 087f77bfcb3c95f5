"""FileSegment: the SSD tier's segment file, opened with segment.c's checks and moved with pread/pwrite."""
import os

import numpy as np
import pytest

from mooncake_native import FileSegment
from mooncake_native.binding import ffi, lib
from mooncake_proto.errors import InvalidArgumentError

pytestmark = pytest.mark.timeout(30)

SIZE = 1 << 20


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "mooncake-test-ssd")


def test_create_sizes_allocates_and_sets_the_mode_whatever_the_umask(path):
    old = os.umask(0o077)
    try:
        with FileSegment(path, SIZE, create=True) as seg:
            assert seg.writable and seg.fd >= 0
    finally:
        os.umask(old)
    st = os.stat(path)
    assert st.st_size == SIZE and oct(st.st_mode & 0o777) == "0o660"
    assert st.st_blocks * 512 >= SIZE  # allocated now, not at the first write
    assert seg.closed and seg.fd == -1
    seg.close()  # idempotent


def test_reopen_keeps_contents_and_identity(path):
    with FileSegment(path, SIZE, create=True) as seg:
        seg.write_from(100, b"hello")
        identity = seg.identity
    with FileSegment(path, SIZE, create=True) as again:  # a worker restart: not truncated
        assert again.identity == identity
        out = bytearray(5)
        again.read_into(100, out)
        assert out == b"hello"
    with FileSegment(path, SIZE) as reader:
        assert not reader.writable and reader.identity == identity
        assert identity == (os.stat(path).st_dev, os.stat(path).st_ino, SIZE)


@pytest.mark.parametrize("offset, length", [(0, 1), (1, 3), (4095, 4097), (12345, 65536 + 7),
                                            (SIZE - 1, 1), (SIZE, 0), (3, SIZE - 3)])
def test_unaligned_reads_and_writes_land_exactly(path, offset, length):
    data = np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8)
    with FileSegment(path, SIZE, create=True) as seg:
        assert seg.write_from(offset, data) == length
        target = np.full(length + 2, 7, dtype=np.uint8)
        assert seg.read_into(offset, memoryview(target)[1:1 + length]) == length
    assert np.array_equal(target[1:1 + length], data)
    assert target[0] == 7 and target[-1] == 7  # nothing outside the target
    with open(path, "rb") as f:
        f.seek(offset)
        assert f.read(length) == data.tobytes()
        assert os.fstat(f.fileno()).st_size == SIZE


def test_ranges_read_only_and_closed_segments_are_refused(path):
    with FileSegment(path, SIZE, create=True) as seg:
        for offset, length in [(SIZE - 1, 2), (SIZE + 1, 0), (-1, 1)]:
            with pytest.raises(InvalidArgumentError, match="outside segment"):
                seg.read_into(offset, bytearray(length))
            with pytest.raises(InvalidArgumentError, match="outside segment"):
                seg.write_from(offset, bytes(length))
        with pytest.raises(BufferError):
            seg.read_into(0, b"read-only target")
    with FileSegment(path, SIZE) as reader:
        with pytest.raises(InvalidArgumentError, match="read-only"):
            reader.write_from(0, b"x")
    with pytest.raises(ValueError, match="closed"):
        reader.read_into(0, bytearray(1))
    with pytest.raises(InvalidArgumentError, match="create needs writable"):
        FileSegment(path, SIZE, create=True, writable=False)


def test_open_refuses_symlinks_non_files_short_and_missing_files(tmp_path):
    target = tmp_path / "real"
    target.write_bytes(b"x" * 4096)
    link = tmp_path / "mooncake-link"
    link.symlink_to(target)
    with pytest.raises(OSError):
        FileSegment(str(link), 4096)  # O_NOFOLLOW
    with pytest.raises(OSError):
        FileSegment(str(link), 4096, create=True)  # nor made through one
    fifo = tmp_path / "mooncake-fifo"
    os.mkfifo(fifo)
    with pytest.raises(InvalidArgumentError, match="not a regular file"):
        FileSegment(str(fifo), 4096)  # read-only: must not wait for a writer
    with pytest.raises(IsADirectoryError):
        FileSegment(str(tmp_path), 4096, writable=True)
    with pytest.raises(InvalidArgumentError, match="not a regular file"):
        FileSegment(str(tmp_path), 4096)  # a directory opens read-only, then fails the check
    with pytest.raises(InvalidArgumentError, match="has 4096 bytes"):
        FileSegment(str(target), 8192)
    with pytest.raises(FileNotFoundError):
        FileSegment(str(tmp_path / "missing"), 4096)
    with pytest.raises(InvalidArgumentError, match="size must be positive"):
        FileSegment(str(target), 0)


def test_a_file_truncated_underneath_reads_as_an_error_not_short_data(path):
    with FileSegment(path, SIZE, create=True) as seg:
        os.truncate(path, 4096)
        with pytest.raises(OSError, match="ends before byte 4096"):
            seg.read_into(0, bytearray(8192))


def test_c_read_and_write_loop_over_short_counts_and_report_errors(path):
    with FileSegment(path, SIZE, create=True) as seg:
        big = os.urandom(SIZE)
        assert lib.mc_file_write(seg.fd, 0, big, SIZE) == 0
        out = ffi.new("char[]", SIZE)
        assert lib.mc_file_read(seg.fd, 0, out, SIZE) == 0
        assert ffi.buffer(out)[:] == big
        assert lib.mc_file_read(-1, 0, out, 1) < 0
        assert "Bad file descriptor" in ffi.string(lib.mc_last_error()).decode()
