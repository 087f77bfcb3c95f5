"""cffi build script (API mode, out-of-line): compiles native/src/*.c into mooncake_native._native.

Run by setuptools at install (`cffi_modules` in setup.py). The declarations cffi sees are the
CDEF-BEGIN..CDEF-END blocks of the headers in native/include, so the C header stays the one
place an interface is written. The RDMA transport is compiled in when rdma-core's headers are
present (`HAS_RDMA`); otherwise its functions report that it was not built.
"""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import tempfile

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CDEF_BLOCK = re.compile(r"/\* CDEF-BEGIN \*/(.*?)/\* CDEF-END \*/", re.S)
DEFINE = re.compile(r"^#define\s+(\w+)\s+.*$", re.M)  # cffi reads the value from C


IN_PLACE = __name__ == "__main__"  # `python native/build_native.py`: a development build


def _rel(path: str) -> str:
    # setuptools wants sources relative to setup.py; cffi's in-place build runs elsewhere
    return path if IN_PLACE else os.path.relpath(path, ROOT)


def _has_header(header: str) -> bool:
    """True when the C compiler finds `header` (a preprocessor-only probe)."""
    if os.environ.get("MOONCAKE_NATIVE_NO_RDMA") and "infiniband" in header:
        return False
    cc = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as tmp:
        probe = os.path.join(tmp, "probe.c")
        with open(probe, "w") as f:
            f.write(f"#include <{header}>\n")
        result = subprocess.run([cc, "-E", probe], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    return result.returncode == 0


def _headers() -> list[str]:
    names = sorted(glob.glob(os.path.join(HERE, "include", "mc_*.h")))
    common = os.path.join(HERE, "include", "mc_common.h")
    return [common] + [n for n in names if n != common]  # common types first


def _cdefs() -> str:
    blocks = []
    for path in _headers():
        with open(path, encoding="utf-8") as f:
            blocks.extend(DEFINE.sub(r"#define \1 ...", block)
                          for block in CDEF_BLOCK.findall(f.read()))
    return "\n".join(blocks)


HAS_RDMA = _has_header("infiniband/verbs.h")

ffibuilder = FFI()
ffibuilder.cdef(_cdefs())
ffibuilder.set_source(
    "mooncake_native._native",
    "\n".join(f'#include "{os.path.basename(h)}"' for h in _headers()),
    sources=[_rel(p) for p in sorted(glob.glob(os.path.join(HERE, "src", "*.c")))],
    include_dirs=[_rel(os.path.join(HERE, "include"))],
    libraries=["crypto", "pthread"] + (["ibverbs"] if HAS_RDMA else []),
    define_macros=[("_GNU_SOURCE", "1")] + ([("MC_BUILD_RDMA", "1")] if HAS_RDMA else []),
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-fvisibility=hidden"],
)

if __name__ == "__main__" and len(sys.argv) > 1:
    # `build_native.py DIR`: a variant build left in DIR only (the tests build one with
    # MOONCAKE_NATIVE_NO_RDMA=1 to check the stubs); prints the library's path
    print(ffibuilder.compile(tmpdir=os.path.abspath(sys.argv[1])))
elif __name__ == "__main__":
    # native/_native*.so next to the Python wrappers, as an editable install leaves it
    built = ffibuilder.compile(tmpdir=os.path.join(ROOT, "build", "cffi"))
    for old in glob.glob(os.path.join(HERE, "_native*.so")):
        os.unlink(old)  # an older build with another suffix would shadow this one
    target = os.path.join(HERE, os.path.basename(built))
    os.replace(built, target)
    print(f"built {target} (HAS_RDMA={int(HAS_RDMA)})")
