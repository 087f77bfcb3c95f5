"""The C library's build, error mapping, threaded copies, segment mapping and buffer views."""
import errno
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from mooncake_native import binding, buffers
from mooncake_native.binding import ProtocolError, check, ffi, lib
from mooncake_native.buffers import RegisteredBuffers, as_parts, copy_batch, fresh_bytes
from mooncake_native.segment import SegmentMapping
from mooncake_proto.errors import InvalidArgumentError


def test_version_is_compiled_in_and_checked():
    assert binding.VERSION == binding.EXPECTED_VERSION
    assert ffi.string(lib.mc_version()).decode() == binding.VERSION


def test_has_rdma_follows_the_rdma_core_headers():
    headers = os.path.exists("/usr/include/infiniband/verbs.h")
    if os.environ.get("MOONCAKE_NATIVE_NO_RDMA"):
        headers = False
    assert binding.HAS_RDMA == headers


@pytest.mark.parametrize("rc, kind", [(-errno.ENOENT, FileNotFoundError),
                                      (-errno.ETIMEDOUT, TimeoutError),
                                      (-errno.ECONNRESET, ConnectionResetError),
                                      (-errno.EINVAL, InvalidArgumentError),
                                      (lib.MC_ERR_PROTOCOL, ProtocolError)])
def test_check_is_the_one_place_codes_become_exceptions(rc, kind):
    with pytest.raises(kind):
        check(rc, "ctx")
    assert check(7) == 7


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("size", [0, 1, 4095, 4096, (256 << 10) + 1, (1 << 20) - 3, (4 << 20) + 17])
def test_copy_moves_exact_bytes_for_every_size_and_thread_count(threads, size, streaming):
    check(lib.mc_copy_set_threads(threads))
    try:
        src = np.random.default_rng(size).integers(0, 256, size + 5, dtype=np.uint8)
        dst = np.zeros(size + 9, dtype=np.uint8)
        copy_batch([(memoryview(dst[3:3 + size]), memoryview(src[5:5 + size]))],  # unaligned
                   streaming)
        assert np.array_equal(dst[3:3 + size], src[5:5 + size])
        assert not dst[:3].any() and not dst[3 + size:].any()  # nothing outside the target
    finally:
        check(lib.mc_copy_set_threads(0))


def test_growing_the_pool_after_copies_does_not_replay_a_finished_copy():
    """A helper started late must wait for the next copy, not run the last one again (its
    buffers are gone by then: this crashed the suite once)."""
    rng = np.random.default_rng(3)
    try:
        for threads in (2, 3, 4, 5, 2, 6):
            check(lib.mc_copy_set_threads(threads))
            for _ in range(3):
                src = rng.integers(0, 256, 3 << 20, dtype=np.uint8)
                dst = np.zeros_like(src)
                copy_batch([(memoryview(dst), memoryview(src))])
                assert np.array_equal(dst, src)
    finally:
        check(lib.mc_copy_set_threads(0))


def test_batch_copy_splits_a_batch_across_threads_by_bytes():
    rng = np.random.default_rng(1)
    sizes = [1, 3 << 20, 17, 1 << 20, 5 << 20, 4096]
    srcs = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
    dsts = [np.zeros(n, dtype=np.uint8) for n in sizes]
    copy_batch([(memoryview(d), memoryview(s)) for d, s in zip(dsts, srcs)])
    assert all(np.array_equal(d, s) for d, s in zip(dsts, srcs))


def test_copy_refuses_mismatched_lengths_and_bad_thread_counts():
    with pytest.raises(InvalidArgumentError):
        copy_batch([(memoryview(bytearray(4)), memoryview(b"abc"))])
    with pytest.raises(InvalidArgumentError):
        check(lib.mc_copy_set_threads(99))


def test_concurrent_copies_from_threads_stay_correct():
    import threading
    errors = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        for _ in range(20):
            src = rng.integers(0, 256, 2 << 20, dtype=np.uint8)
            dst = np.empty_like(src)
            copy_batch([(memoryview(dst), memoryview(src))])
            if not np.array_equal(dst, src):
                errors.append(seed)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors


def test_segment_is_created_sized_mapped_and_survives_remapping(tmp_path):
    path = str(tmp_path / "mooncake-test-dram")
    seg = SegmentMapping(path, 1 << 20, create=True)
    assert os.stat(path).st_size == 1 << 20 and oct(os.stat(path).st_mode & 0o777) == "0o660"
    seg.view[100:105] = b"hello"
    identity = seg.identity
    seg.close()
    again = SegmentMapping(path, 1 << 20)
    assert bytes(again.view[100:105]) == b"hello" and again.identity == identity
    again.close()


def test_segment_refuses_symlinks_non_files_and_short_files(tmp_path):
    target = tmp_path / "real"
    target.write_bytes(b"x" * 4096)
    link = tmp_path / "mooncake-link"
    link.symlink_to(target)
    with pytest.raises(OSError):
        SegmentMapping(str(link), 4096)  # O_NOFOLLOW
    fifo = tmp_path / "mooncake-fifo"
    os.mkfifo(fifo)
    with pytest.raises(InvalidArgumentError, match="not a regular file"):
        SegmentMapping(str(fifo), 4096)
    with pytest.raises(IsADirectoryError):
        SegmentMapping(str(tmp_path), 4096)
    with pytest.raises(InvalidArgumentError, match="has 4096 bytes"):
        SegmentMapping(str(target), 8192)
    with pytest.raises(FileNotFoundError):
        SegmentMapping(str(tmp_path / "missing"), 4096)


def test_registered_buffers_accept_only_pointers_inside_a_registration():
    backing = np.arange(1 << 16, dtype=np.uint8)
    address = backing.ctypes.data
    registry = RegisteredBuffers()
    with pytest.raises(InvalidArgumentError, match="register_buffer"):
        registry.view(address, 16)
    registry.register(address, backing.nbytes)
    view = registry.view(address + 10, 6)
    assert bytes(view) == bytes(backing[10:16])
    with pytest.raises(InvalidArgumentError):
        registry.view(address + backing.nbytes - 4, 8)  # runs past the end
    assert registry.unregister(address) and not registry.unregister(address)


def test_parts_views_and_fresh_bytes():
    arr = np.zeros((4, 8), dtype=np.float16)
    parts = as_parts([arr[1], bytearray(3)], writable=True)
    assert [p.nbytes for p in parts] == [16, 3]
    with pytest.raises(InvalidArgumentError):
        as_parts(b"read-only", writable=True)
    with pytest.raises(InvalidArgumentError, match="C-contiguous"):
        as_parts(np.zeros((4, 4))[:, 1])
    data, view = fresh_bytes(5)
    view[:] = b"abcde"
    assert isinstance(data, (bytes, bytearray)) and data == b"abcde"
    assert buffers.parts_size(parts) == 19


@pytest.mark.parametrize("size", [1, buffers.UNZEROED_MIN_BYTES - 1, buffers.UNZEROED_MIN_BYTES,
                                  4 << 20])
def test_fresh_bytes_are_new_objects_that_the_copy_fills_whole(size):
    """Large ones come unzeroed (a get overwrites every byte): each call is a distinct object
    of the right size, and what the copy wrote is what it holds."""
    src = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    first, view = buffers.fresh_bytes(size)
    second, pointer = buffers.fresh_bytes_at(size)
    assert first is not second and len(first) == len(second) == size
    assert isinstance(second, bytes)
    copy_batch([(view, memoryview(src))])
    buffers.copy_rows([(pointer, buffers.ffi.from_buffer(src), size)])
    assert first == second == src.tobytes()


def test_large_copies_work_in_a_forked_child():
    """The child inherits the pool's state but not its threads; it must grow a new pool, not
    wait forever for helpers that do not exist."""
    src = np.random.default_rng(2).integers(0, 256, 4 << 20, dtype=np.uint8)
    dst = np.zeros_like(src)
    copy_batch([(memoryview(dst), memoryview(src))])  # the parent's pool exists now
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            child_dst = np.zeros_like(src)
            copy_batch([(memoryview(child_dst), memoryview(src))])
            ok = bool(np.array_equal(child_dst, src))
        finally:
            os._exit(0 if ok else 1)
    deadline_s = 20
    import time
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)  # polling a child's exit, bounded
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("a large copy in a forked child hung")


def test_c_calls_release_the_gil():
    """While one thread is inside a single long C copy, Python code runs in another (cffi
    releases the GIL around every call into the library). Were the GIL held, the counting
    loop could not finish before the copy did."""
    import threading
    src = np.ones(512 << 20, dtype=np.uint8)
    dst = np.empty_like(src)  # first touch inside the copy: it takes a while
    check(lib.mc_copy_set_threads(1))
    try:
        started = threading.Event()

        def copier():
            started.set()
            copy_batch([(memoryview(dst), memoryview(src))])

        thread = threading.Thread(target=copier)
        thread.start()
        started.wait(10)
        n = 0
        while n < 100_000:
            n += 1
        assert thread.is_alive()
        thread.join(60)
        assert dst[-1] == 1
    finally:
        check(lib.mc_copy_set_threads(0))


def test_spin_readable_sees_input_and_gives_up_when_none_comes():
    a, b = socket.socketpair()
    try:
        started = time.monotonic()
        assert binding.spin_readable(a.fileno()) is False  # nothing sent: the spin runs out
        assert time.monotonic() - started < 1.0  # 300 us by default, 100 ms at most
        b.send(b"x")
        assert binding.spin_readable(a.fileno()) is True
        b.close()
        a.recv(1)
        assert binding.spin_readable(a.fileno()) is True  # a close is input too
    finally:
        a.close()


@pytest.mark.parametrize("value, expected", [("0", 0), ("250", 250), ("", 300), ("x", 300),
                                             ("-5", 300), ("999999999", 100000)])
def test_spin_time_comes_from_the_environment(value, expected):
    code = ("from mooncake_native.binding import lib, spin_readable; import socket; "
            "a, b = socket.socketpair(); assert spin_readable(a.fileno()) is False; "
            "print(lib.mc_spin_us())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "MOONCAKE_SPIN_US": value}, timeout=60, check=True)
    assert int(out.stdout) == expected


class _Driver:
    """CUDA's driver as cuPointerGetAttribute answers for a few addresses (no GPU here)."""
    MEMORY_TYPE, IS_MANAGED = 2, 8

    def __init__(self, answers):
        self.answers = answers  # address -> {attribute: value}; absent: CUDA_ERROR_INVALID_VALUE

    def cuPointerGetAttribute(self, value_ref, attribute, address):
        known = self.answers.get(address.value)
        if known is None:
            return 1
        value_ref._obj.value = known[attribute]
        return 0


def test_gpu_memory_is_refused_at_registration_and_managed_and_host_memory_are_not(monkeypatch):
    host = np.zeros(64, dtype=np.uint8)
    device, managed = 0x7F0000000000, 0x7F1000000000
    monkeypatch.setattr(buffers, "_cuda_driver_lib", _Driver({
        device: {_Driver.MEMORY_TYPE: 2, _Driver.IS_MANAGED: 0},
        managed: {_Driver.MEMORY_TYPE: 2, _Driver.IS_MANAGED: 1}}))
    registered = RegisteredBuffers()
    with pytest.raises(InvalidArgumentError, match="GPU memory"):
        registered.register(device, 4096)
    registered.register(managed, 4096)
    registered.register(host.ctypes.data, 64)
    assert not buffers.is_device_memory(host.ctypes.data)


def test_without_a_cuda_driver_nothing_is_gpu_memory(monkeypatch):
    monkeypatch.setattr(buffers, "_cuda_driver_lib", False)
    assert not buffers.is_device_memory(0x7F0000000000)
