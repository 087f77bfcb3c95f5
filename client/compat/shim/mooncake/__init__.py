"""mooncake-pool's stand-in for Mooncake's `mooncake` package, on the path only for those who
opt in (mooncake_client/compat/alias.py). `mooncake.store` is ours. Any other module of a real
Mooncake wheel installed beside it (mooncake.engine, mooncake.mooncake_config, ...) still loads
from that wheel: its directory joins this package's path, after ours, and its own __init__
runs here, so the package offers what it offers."""
import importlib.machinery
import os
import sys

_SHIM_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _real_package_dirs() -> list:
    elsewhere = [p for p in sys.path if os.path.abspath(p or os.curdir) != _SHIM_ROOT]
    spec = importlib.machinery.PathFinder.find_spec("mooncake", elsewhere)
    return list(spec.submodule_search_locations or []) if spec is not None else []


for _directory in _real_package_dirs():
    __path__.append(_directory)
    _init = os.path.join(_directory, "__init__.py")
    if os.path.exists(_init):
        with open(_init, "rb") as _file:
            exec(compile(_file.read(), _init, "exec"), globals())
    break  # one real package at most: the one Python would have found
