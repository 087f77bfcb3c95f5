"""Client.close() while other threads are inside calls (client/call_gate.py): the calls
already running finish, later ones raise ClientClosedError, and the process never crashes."""
import subprocess
import sys

import pytest

from mooncake_client import Client, ClientClosedError

RACE = """
import sys, threading
import numpy as np
from mooncake_client import Client, ClientClosedError
master, transport = sys.argv[1], sys.argv[2]
data = bytes(range(256)) * 4096  # 1 MiB: long copies out of the shm segment or the socket
outcomes = {"read": 0, "closed": 0, "wrong": 0, "other": []}
lock = threading.Lock()
def note(what):
    with lock:
        if isinstance(what, str):
            outcomes[what] += 1
        else:
            outcomes["other"].append(repr(what))
for round_ in range(8):
    client = Client(master, transports=(transport,))
    client.put(f"close-race/{transport}", data)
    started = threading.Barrier(5)
    def reader():
        buffer = np.zeros(len(data), dtype=np.uint8)
        first = True
        while True:
            try:
                client.get_into(f"close-race/{transport}", buffer)
                client.batch_exists([f"close-race/{transport}", "absent"])
            except ClientClosedError:
                note("closed")
                return
            except Exception as exc:
                note(exc)
                return
            note("read" if buffer.tobytes() == data else "wrong")
            if first:  # every reader has read once: then the close comes, mid-call
                started.wait()
                first = False
    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    started.wait()
    client.close()  # under the readers' feet
    for t in threads:
        t.join()
print(outcomes["read"] > 0, outcomes["closed"], outcomes["wrong"], outcomes["other"][:3])
"""


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_close_while_other_threads_read_never_crashes(cluster, transport):
    # in a process of its own: a copy out of an unmapped segment would kill it (SIGSEGV)
    result = subprocess.run([sys.executable, "-c", RACE, cluster.master_addr, transport],
                            capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().split(maxsplit=3) == ["True", "32", "0", "[]"]


def test_calls_after_close_raise_and_a_second_close_is_harmless(cluster):
    client = Client(cluster.master_addr)
    client.put("closed/k", b"v")
    client.close()
    for call in (lambda: client.get("closed/k"), lambda: client.put("closed/j", b"v"),
                 lambda: client.exists("closed/k"), client.master_id,
                 lambda: client.batch_get_into(["closed/k"], [bytearray(1)])):
        with pytest.raises(ClientClosedError):
            call()
    client.close()
    with Client(cluster.master_addr) as other:  # the store itself is untouched
        assert other.get("closed/k") == b"v"
