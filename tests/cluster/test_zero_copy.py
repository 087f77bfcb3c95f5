"""The zero-copy SDK against real daemons over shm and tcp: unaligned numpy slices,
scatter-gather (one object from/into several buffers), registered raw pointers, CPU tensors,
and content checks under concurrent threads and processes."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mooncake_client import Client
from mooncake_proto.errors import InvalidArgumentError

SIZES = [1, 4095, 65_537, (1 << 20) + 3, (4 << 20) + 1]


@pytest.fixture(params=["shm", "tcp"])
def transport_client(request, cluster):
    with Client(cluster.master_addr, transports=(request.param,)) as c:
        yield c


def _data(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("offset", [1, 7])
def test_unaligned_numpy_slices_round_trip(transport_client, size, offset, request):
    key = f"zc/{request.node.name}"
    src = np.zeros(size + 16, dtype=np.uint8)
    src[offset:offset + size] = _data(size, size)
    assert transport_client.put_from(key, src[offset:offset + size]) == size
    dst = np.zeros(size + 16, dtype=np.uint8)
    assert transport_client.get_into(key, dst[offset + 1:offset + 1 + size]) == size
    assert np.array_equal(dst[offset + 1:offset + 1 + size], src[offset:offset + size])
    assert not dst[:offset + 1].any() and not dst[offset + 1 + size:].any()


def test_scatter_gather_per_layer_blocks(transport_client, request):
    """One object per token block written from, and read into, per-layer K and V slices."""
    layers, block = 4, 3000
    kv = _data(2 * layers * block, 5).reshape(2, layers, block)
    key = f"zc/{request.node.name}"
    parts = [kv[k, layer] for layer in range(layers) for k in (0, 1)]
    assert transport_client.put_parts(key, parts) == 2 * layers * block
    out = np.zeros_like(kv)
    targets = [out[k, layer] for layer in range(layers) for k in (0, 1)]
    assert transport_client.get_into(key, targets) == 2 * layers * block
    assert np.array_equal(out, kv)
    # the bytes are stored in part order: a plain get sees the concatenation
    assert transport_client.get(key) == b"".join(p.tobytes() for p in parts)


def test_batch_scatter_gather_and_oversized_targets(transport_client, request):
    keys = [f"zc/{request.node.name}/{i}" for i in range(5)]
    objects = [[_data(100 + i, i), _data(7, i + 50)] for i in range(5)]
    assert transport_client.batch_put_from(keys, objects) == [107 + i for i in range(5)]
    targets = [[np.zeros(50, np.uint8), np.zeros(200, np.uint8)] for _ in keys]
    assert transport_client.batch_get_into(keys, targets) == [107 + i for i in range(5)]
    for (a, b), (x, y) in zip(objects, targets):
        got = np.concatenate([x, y])[:a.size + b.size]
        assert np.array_equal(got, np.concatenate([a, b]))


def test_registered_raw_pointers(transport_client, request):
    pool = np.zeros(1 << 20, dtype=np.uint8)
    pool[1000:1000 + 5000] = _data(5000, 9)
    base = pool.ctypes.data
    key = f"zc/{request.node.name}"
    with pytest.raises(InvalidArgumentError, match="register_buffer"):
        transport_client.put_from(key, base + 1000, size=5000)
    transport_client.register_buffer(base, pool.nbytes)
    assert transport_client.put_from(key, base + 1000, size=5000) == 5000
    assert transport_client.get_into(key, base + 200_000, size=8000) == 5000
    assert np.array_equal(pool[200_000:205_000], pool[1000:6000])
    with pytest.raises(InvalidArgumentError):
        transport_client.get_into(key, base + pool.nbytes - 10, size=5000)  # past the end
    with pytest.raises(InvalidArgumentError, match="needs its size"):
        transport_client.get_into(key, base)
    assert transport_client.unregister_buffer(base)
    with pytest.raises(InvalidArgumentError):
        transport_client.get_into(key, base, size=5000)


class FakeCpuTensor:
    """What the SDK reads of a torch tensor: data_ptr, numel, element_size, contiguity, device."""

    class device:
        type = "cpu"

    def __init__(self, array: np.ndarray):
        self.array = array

    def data_ptr(self):
        return self.array.ctypes.data

    def numel(self):
        return self.array.size

    def element_size(self):
        return self.array.itemsize

    def is_contiguous(self):
        return self.array.flags.c_contiguous


def test_cpu_tensors_without_buffer_protocol(transport_client, request):
    src = FakeCpuTensor(_data(4000, 3).view(np.float32))
    key = f"zc/{request.node.name}"
    assert transport_client.put_from(key, src) == 4000
    dst = FakeCpuTensor(np.zeros(1000, np.float32))
    assert transport_client.get_into(key, dst) == 4000
    assert dst.array.tobytes() == src.array.tobytes()  # random bits: compare bytes, not floats (NaN)
    gpu = FakeCpuTensor(np.zeros(4, np.float32))
    gpu.device = type("device", (), {"type": "cuda"})
    with pytest.raises(InvalidArgumentError, match="cuda"):
        transport_client.get_into(key, gpu)


def test_real_torch_tensors(transport_client, request):
    torch = pytest.importorskip("torch")
    src = torch.arange(3000, dtype=torch.float16).reshape(30, 100)
    key = f"zc/{request.node.name}"
    assert transport_client.put_from(key, src) == 6000
    dst = torch.zeros(30, 100, dtype=torch.float16)
    assert transport_client.get_into(key, dst) == 6000
    assert torch.equal(src, dst)
    with pytest.raises(InvalidArgumentError, match="contiguous"):
        transport_client.get_into(key, torch.zeros(100, 60, dtype=torch.float16).t())


@pytest.mark.timeout(120)
def test_concurrent_threads_mixed_sizes_verify_content(cluster):
    from concurrent.futures import ThreadPoolExecutor

    def work(n):
        transports = ("shm",) if n % 2 else ("tcp",)
        with Client(cluster.master_addr, transports=transports) as c:
            rng = np.random.default_rng(n)
            for i in range(25):
                size = int(rng.integers(1, 600_000))
                data = _data(size, n * 1000 + i)
                key = f"zc/threads/{n}/{i}"
                c.put_from(key, data)
                out = np.empty(size, np.uint8)
                assert c.get_into(key, out) == size and np.array_equal(out, data)
        return n

    with ThreadPoolExecutor(6) as pool:
        assert sorted(pool.map(work, range(6))) == list(range(6))


_PROCESS = textwrap.dedent("""
    import sys
    import numpy as np
    from mooncake_client import Client
    master, n, peers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with Client(master, transports=("shm", "tcp") if n % 2 else ("tcp",)) as c:
        for i in range(30):
            data = np.random.default_rng(n * 100 + i).integers(0, 256, 70_000 + i, dtype=np.uint8)
            c.put_from(f"zc/proc/{n}/{i}", data)
        for other in range(peers):  # read what the others wrote, as far as it exists yet
            for i in range(30):
                want = np.random.default_rng(other * 100 + i).integers(0, 256, 70_000 + i,
                                                                       dtype=np.uint8)
                got = c.get(f"zc/proc/{other}/{i}")
                assert got is None or got == want.tobytes(), (other, i)
    print("ok")
""")


@pytest.mark.timeout(120)
def test_concurrent_processes_verify_content(cluster):
    procs = [subprocess.Popen([sys.executable, "-c", _PROCESS, cluster.master_addr, str(n), "4"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=100)
        assert p.returncode == 0 and out.strip() == "ok", err
    with Client(cluster.master_addr) as c:  # everything is there once all have finished
        for n in range(4):
            for i in range(30):
                want = np.random.default_rng(n * 100 + i).integers(0, 256, 70_000 + i,
                                                                   dtype=np.uint8)
                assert c.get(f"zc/proc/{n}/{i}") == want.tobytes()
