"""Throwaway TLS certificates for tests, made with the openssl command line: a CA, and a
certificate it signs for 127.0.0.1 and localhost (what every local cluster listens on)."""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess

# P-256 keys: generated in milliseconds, and gRPC's TLS takes them
_NEW_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclasses.dataclass(frozen=True)
class Certs:
    ca: str    # the CA certificate (PEM): what callers verify with
    cert: str  # the server certificate for 127.0.0.1, signed by ca
    key: str   # its private key


def have_openssl() -> bool:
    return shutil.which("openssl") is not None


def make_certs(directory: str, name: str = "test") -> Certs:
    os.makedirs(directory, exist_ok=True)
    path = lambda suffix: os.path.join(directory, f"{name}-{suffix}")  # noqa: E731
    _openssl("req", "-x509", *_NEW_KEY, "-keyout", path("ca.key"), "-out", path("ca.pem"),
             "-days", "2", "-subj", f"/CN=mooncake {name} CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _openssl("req", *_NEW_KEY, "-keyout", path("server.key"), "-out", path("server.csr"),
             "-subj", "/CN=127.0.0.1")
    with open(path("server.ext"), "w", encoding="ascii") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", path("server.csr"), "-CA", path("ca.pem"),
             "-CAkey", path("ca.key"), "-CAcreateserial", "-out", path("server.pem"),
             "-days", "2", "-extfile", path("server.ext"))
    return Certs(path("ca.pem"), path("server.pem"), path("server.key"))


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr}")
