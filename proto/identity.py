"""Node and worker identity: how a client knows a worker shares its node (and so its shm)."""
from __future__ import annotations

import hashlib
import socket


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return "unknown-boot"


def node_id() -> str:
    """Host name plus kernel boot id: equal only for processes that can share /dev/shm files."""
    return f"{socket.gethostname()}/{_boot_id()}"


def default_worker_id(*data_dirs: str) -> str:
    """Stable across restarts: host name plus a digest of the directories holding the segments."""
    host = socket.gethostname()
    digest = hashlib.sha256("\0".join((host,) + data_dirs).encode()).hexdigest()[:8]
    return f"{host}-{digest}"
