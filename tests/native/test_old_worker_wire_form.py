"""The C client and the peer copier against a real worker data server from before the aligned
wire form: the native library of 3d2b6cf^ (3.2.0), built from this repository's history into a
temporary directory (a few seconds without RDMA) and run in a process of its own. Skipped where
the history is not there (a shallow clone). The scripted peers of test_tcp_client_mcd1.py
cover the cases a real worker never produces."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mooncake_native.data_server import DataServer
from mooncake_native.tcp import (FORM_ALIGNED, FORM_MCD1, OP_READ, OP_WRITE, DataRequest,
                                 PeerForms, exchange_many)
from mooncake_proto import grants
from mooncake_proto.errors import ErrorCode
from mooncake_worker.peer_copy import PeerCopy, PeerWriter

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
BEFORE_ALIGNED = "3d2b6cf^"      # the last native library that speaks only MCD1
WORKER = "worker-mcd1"
SEGMENT_BYTES = 4 << 20
DRAM_BYTES = 1 << 20             # the conftest's `dram`: the peer copier's source
ODD_SIZES = [1, 63, 64, 65, 4097, 100_000, 0, 12]

SERVE = r"""
import json, sys
from mooncake_native import VERSION
from mooncake_native.data_server import DataServer
segment = bytearray(int(sys.argv[3]))
server = DataServer(sys.argv[2], {0: memoryview(segment)})
server.grant_key = bytes.fromhex(sys.argv[1])
print(VERSION, server.start("127.0.0.1", 0), flush=True)
sys.stdin.read()  # until the test closes our stdin
server.stop()
print(json.dumps(server.stats()), flush=True)
"""


@pytest.fixture(scope="module")
def old_library(tmp_path_factory):
    """A package tree of the old mooncake_native and mooncake_proto, its library built."""
    tree = tmp_path_factory.mktemp("before-aligned")
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE_ALIGNED, "native",
                                  "proto"], capture_output=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"no {BEFORE_ALIGNED} in this checkout's history: {exc}")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True, timeout=30)
    env = {**os.environ, "MOONCAKE_NATIVE_NO_RDMA": "1"}
    built = subprocess.run([sys.executable, str(tree / "native" / "build_native.py"),
                            str(tree / "build")], env=env, capture_output=True, text=True,
                           timeout=60)
    assert built.returncode == 0, built.stderr[-3000:]
    library = Path(built.stdout.strip().splitlines()[-1])
    os.replace(library, tree / "native" / library.name)
    packages = tree / "packages"
    packages.mkdir()
    (packages / "mooncake_native").symlink_to(tree / "native")
    (packages / "mooncake_proto").symlink_to(tree / "proto")
    return packages


class OldWorker:
    """The old data server in its own process; `stats` once stopped."""

    def __init__(self, packages: Path, key: bytes):
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVE, key.hex(), WORKER, str(SEGMENT_BYTES)],
            env={**os.environ, "PYTHONPATH": str(packages)}, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        version, self.addr = self.process.stdout.readline().split()  # its readiness line
        assert version == "3.2.0"
        self.stats = None

    def stop(self):
        if self.process.poll() is None:
            self.stats = json.loads(self.process.communicate(timeout=30)[0])


@pytest.fixture
def old_worker(old_library, key):
    worker = OldWorker(old_library, key)
    yield worker
    worker.stop()
    if worker.process.poll() is None:
        worker.process.kill()


def grant(key, op, length=SEGMENT_BYTES):
    expiry = int(time.time() * 1000) + 60_000
    return grants.sign(key, grants.Grant(grants.Op(op), WORKER, 0, 0, length, expiry))


def test_reads_and_writes_fall_back_and_land_once(old_worker, key):
    blobs = [os.urandom(size) for size in ODD_SIZES]
    offsets = [sum(ODD_SIZES[:i]) for i in range(len(ODD_SIZES))]
    write_grant, read_grant = grant(key, OP_WRITE), grant(key, OP_READ)
    forms = PeerForms()
    conn = forms.connect(old_worker.addr, 10)
    try:
        writes = [DataRequest(OP_WRITE, 0, at, len(b), write_grant, [memoryview(b)])
                  for at, b in zip(offsets, blobs)]
        assert conn.exchange(writes, 10) == len(writes) and conn.form == FORM_MCD1
        targets = [bytearray(len(b)) for b in blobs]
        reads = [DataRequest(OP_READ, 0, at, len(t), read_grant,
                             [memoryview(t)[:len(t) // 2], memoryview(t)[len(t) // 2:]])
                 for at, t in zip(offsets, targets)]
        assert conn.exchange(reads, 10) == len(reads)
        assert [bytes(t) for t in targets] == blobs
    finally:
        conn.close()
    again = forms.connect(old_worker.addr, 10)  # starts in MCD1
    try:
        assert again.form == FORM_MCD1
        forged = grant(key, OP_READ)[:-1] + b"\0"
        reqs = [DataRequest(OP_READ, 0, 0, 1, read_grant, [memoryview(bytearray(1))]),
                DataRequest(OP_READ, 0, 0, 1, forged, [memoryview(bytearray(1))])]
        assert again.exchange(reqs, 10) == 2
        assert [r.status for r in reqs] == [0, ErrorCode.PERMISSION_DENIED]
    finally:
        again.close()
    old_worker.stop()
    # each write once (bytes_in), the one aligned header and the forged grant refused
    assert old_worker.stats["bytes_in"] == sum(ODD_SIZES)
    assert old_worker.stats["refused"] == 2


def test_a_batch_over_an_old_and_a_new_worker(old_worker, key, dram):
    new = DataServer(WORKER, {0: dram.view})
    new.grant_key = key
    new_addr = new.start("127.0.0.1", 0)
    forms = PeerForms()
    conns = [forms.connect(old_worker.addr, 10), forms.connect(new_addr, 10)]
    payload = os.urandom(DRAM_BYTES)
    try:
        batches = [(c, [DataRequest(OP_WRITE, 0, 0, DRAM_BYTES, grant(key, OP_WRITE),
                                    [memoryview(payload)])]) for c in conns]
        assert exchange_many(batches, 10) == [1, 1]
        targets = [bytearray(DRAM_BYTES) for _ in conns]
        batches = [(c, [DataRequest(OP_READ, 0, i * 4096, 4096, grant(key, OP_READ),
                                    [memoryview(t)[i * 4096:(i + 1) * 4096]])
                        for i in range(DRAM_BYTES // 4096)]) for c, t in zip(conns, targets)]
        assert exchange_many(batches, 10) == [DRAM_BYTES // 4096] * 2
        assert targets == [payload, payload]
        assert [c.form for c in conns] == [FORM_MCD1, FORM_ALIGNED]
    finally:
        for conn in conns:
            conn.close()
        new.stop()


def test_a_new_worker_copies_to_an_old_one(old_worker, key, dram):
    """Healing during a rolling upgrade: the peer copier writes to an older worker."""
    dram.view[:] = os.urandom(DRAM_BYTES)
    writer = PeerWriter(timeout_s=5)
    copies = [PeerCopy(dram, 0, 0, 0, DRAM_BYTES, grant(key, OP_WRITE)),
              PeerCopy(dram, 1000, 0, DRAM_BYTES, 333, grant(key, OP_WRITE))]
    try:
        writer.write(old_worker.addr, copies)
        writer.write(old_worker.addr, copies[1:])  # a pooled connection, already MCD1
    finally:
        writer.close()
    assert [c.error for c in copies] == [None, None]
    conn = PeerForms().connect(old_worker.addr, 10)
    target = bytearray(DRAM_BYTES + 333)
    try:
        assert conn.exchange([DataRequest(OP_READ, 0, 0, len(target), grant(key, OP_READ),
                                          [memoryview(target)])], 10) == 1
    finally:
        conn.close()
    assert bytes(target) == bytes(dram.view) + bytes(dram.view[1000:1333])
    old_worker.stop()
    assert old_worker.stats["bytes_in"] == DRAM_BYTES + 2 * 333
