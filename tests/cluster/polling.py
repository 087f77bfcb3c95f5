"""Waiting for what time or background work makes true, in cluster tests (never readiness:
daemons signal that with their ready files)."""
import time


def wait_until(condition, timeout_s: float, what: str) -> None:
    """Polls condition until it holds (a lease running out, a copy finishing); raises after
    timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {timeout_s}s")
        time.sleep(0.02)
