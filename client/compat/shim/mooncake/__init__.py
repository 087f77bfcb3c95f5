"""mooncake-pool's stand-in for Mooncake's `mooncake` package, on the path only for those who
opt in (mooncake_client/compat/alias.py). `mooncake.store` is ours. Any other module of a real
Mooncake wheel installed beside it (mooncake.engine, mooncake.mooncake_config, ...) still loads
from that wheel: its directory joins this package's path, after ours, and its own __init__
runs here, so the package offers what it offers."""
import importlib.machinery
import os
import sys

MOONCAKE_POOL_SHIM = True  # how a copy of this file (another install, a symlink) is known


def _is_shim(directory: str) -> bool:
    try:
        with open(os.path.join(directory, "__init__.py"), encoding="utf-8") as init:
            return "\nMOONCAKE_POOL_SHIM = True" in init.read()
    except OSError:
        return False


def _real_package_dirs() -> list:
    """The directory of the `mooncake` package Python would find without any shim."""
    elsewhere = [p for p in sys.path
                 if not _is_shim(os.path.join(os.path.abspath(p or os.curdir), "mooncake"))]
    spec = importlib.machinery.PathFinder.find_spec("mooncake", elsewhere)
    return list(spec.submodule_search_locations or []) if spec is not None else []


def _adopt(directory: str) -> None:
    """Puts the real package's directory on our path and runs its __init__ here, with its own
    __file__ while it runs (code that looks beside itself finds its files)."""
    __path__.append(directory)
    init = os.path.join(directory, "__init__.py")
    if os.path.exists(init):
        ours = globals()["__file__"]
        globals()["__file__"] = init
        try:
            with open(init, "rb") as source:
                exec(compile(source.read(), init, "exec"), globals())
        finally:
            globals()["__file__"] = ours


for _directory in _real_package_dirs()[:1]:  # the one package Python would have found
    _adopt(_directory)
