"""Regenerates the checked-in gRPC stubs from mooncake.proto (used by `make proto` and the drift test).

The .proto is compiled as if it lived at mooncake_proto/mooncake.proto so that the generated
`_grpc` module imports its messages package-qualified (`from mooncake_proto import ...`).
"""
from __future__ import annotations

import pathlib
import shutil
import sys
import tempfile

PROTO_DIR = pathlib.Path(__file__).resolve().parent
PROTO_FILES = ("mooncake.proto",)
GENERATED = ("mooncake_pb2.py", "mooncake_pb2.pyi", "mooncake_pb2_grpc.py")


def generate(out_dir: pathlib.Path) -> None:
    """Writes the generated modules into out_dir."""
    from grpc_tools import protoc  # a dev dependency: only `make proto` and tests need it

    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        (root / "mooncake_proto").mkdir()
        for name in PROTO_FILES:
            shutil.copy(PROTO_DIR / name, root / "mooncake_proto" / name)
        args = ["protoc", f"-I{root}", f"--python_out={root}", f"--pyi_out={root}",
                f"--grpc_python_out={root}"]
        args += [f"mooncake_proto/{name}" for name in PROTO_FILES]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in GENERATED:
            shutil.copy(root / "mooncake_proto" / name, out_dir / name)


if __name__ == "__main__":
    generate(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_DIR)
