"""The opt-in alias: `from mooncake.store import MooncakeDistributedStore` finds ours.

Two ways in, both explicit:
- for a whole process tree (an inference server started from a shell):
      export PYTHONPATH="$(python -m mooncake_client.compat.alias)${PYTHONPATH:+:$PYTHONPATH}"
- inside one process, before anything imports `mooncake`:
      import mooncake_client.compat.alias; mooncake_client.compat.alias.install()

Either puts shim/ first on the path. Its `mooncake` package serves `mooncake.store` and leaves
every other module of a real Mooncake wheel, when one is installed, to that wheel
(shim/mooncake/__init__.py). Nothing changes for a process that does neither.
"""
from __future__ import annotations

import os
import sys

SHIM_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shim")


def install() -> None:
    """Puts the shim first on sys.path. Refused once `mooncake` was imported from elsewhere:
    the real module would stay in use, silently."""
    loaded = sys.modules.get("mooncake")
    if loaded is not None and not _is_shim(loaded):
        raise RuntimeError("mooncake was imported before the alias was installed: install it "
                           "first, or set PYTHONPATH (python -m mooncake_client.compat.alias)")
    if SHIM_DIR not in sys.path:
        sys.path.insert(0, SHIM_DIR)


def _is_shim(module) -> bool:
    return os.path.dirname(os.path.dirname(getattr(module, "__file__", "") or "")) == SHIM_DIR


if __name__ == "__main__":
    print(SHIM_DIR)
