"""Mooncake's configuration sources for the compat facade: a JSON file named by
MOONCAKE_CONFIG_PATH, else MOONCAKE_* variables, read as Mooncake's own MooncakeConfig reads
them; the translation of Mooncake's master address forms into ours; and the parsing of the
settings the compat store and the integrations take beside them."""
from __future__ import annotations

import dataclasses
import json
import os

from mooncake_proto import units
from mooncake_proto.errors import InvalidArgumentError

# Mooncake's defaults (mooncake-wheel/mooncake/mooncake_config.py)
DEFAULT_GLOBAL_SEGMENT_SIZE = 3355443200
DEFAULT_LOCAL_BUFFER_SIZE = 1 << 30
# the etcd cluster id Mooncake's "etcd://h:p;h:p" master form is taken to name: Mooncake has
# one election key per etcd, we have one per cluster id
DEFAULT_ETCD_CLUSTER_ID = "mooncake"

# Mooncake's units are binary whatever they are called: "4GB" is 4 GiB
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20,
               "mb": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
               "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}


def parse_size(value) -> int:
    """Bytes in an int or a string such as "4GB", "512mb", "1.5g" (1024-based, as Mooncake)."""
    if isinstance(value, bool):
        raise InvalidArgumentError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise InvalidArgumentError(f"a size cannot be negative: {value}")
        return value
    try:
        return units.parse_size(str(value), _SIZE_UNITS)
    except ValueError:
        raise InvalidArgumentError(f"not a size: {value!r} (try 4GB or 512MB)") from None


def setting_number(value, kind: type, name: str):
    """A number setting as kind (int, float): config files and dicts often carry them as
    strings. InvalidArgumentError, naming the setting, for anything else."""
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name}: not a number: {value!r}") from None


def transport_names(value) -> tuple[str, ...]:
    """A transports setting, "shm,tcp" or a list of names, as Client takes it."""
    names = value.split(",") if isinstance(value, str) else value
    return tuple(name.strip() for name in names if name.strip())


@dataclasses.dataclass(frozen=True)
class MooncakeConfig:
    """What `setup` needs, under Mooncake's names. Only master_server_address and protocol
    steer this store: segments belong to the node's mooncake-worker, and our transports need
    no transfer-engine metadata server or client-side staging buffer."""
    local_hostname: str = "localhost"
    metadata_server: str = "P2PHANDSHAKE"
    global_segment_size: int = DEFAULT_GLOBAL_SEGMENT_SIZE
    local_buffer_size: int = DEFAULT_LOCAL_BUFFER_SIZE
    protocol: str = "tcp"
    device_name: str = ""
    master_server_address: str = ""

    @classmethod
    def from_file(cls, path: str) -> "MooncakeConfig":
        """A Mooncake JSON config; local_hostname, metadata_server and master_server_address
        are required, as in Mooncake."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise InvalidArgumentError(f"Mooncake config {path}: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidArgumentError(f"Mooncake config {path}: not a JSON object")
        missing = [k for k in ("local_hostname", "metadata_server", "master_server_address")
                   if not data.get(k)]
        if missing:
            raise InvalidArgumentError(f"Mooncake config {path}: {', '.join(missing)} missing")
        return cls._from_mapping(data, f"Mooncake config {path}")

    @classmethod
    def from_env(cls, environ=os.environ) -> "MooncakeConfig":
        """MOONCAKE_CONFIG_PATH's file when it is set, else MOONCAKE_MASTER (required) and the
        other MOONCAKE_* variables Mooncake reads."""
        path = environ.get("MOONCAKE_CONFIG_PATH")
        if path:
            return cls.from_file(path)
        if not environ.get("MOONCAKE_MASTER"):
            raise InvalidArgumentError("neither MOONCAKE_CONFIG_PATH nor MOONCAKE_MASTER is set")
        return cls._from_mapping({
            "local_hostname": environ.get("MOONCAKE_LOCAL_HOSTNAME", "localhost"),
            "metadata_server": environ.get("MOONCAKE_TE_META_DATA_SERVER", "P2PHANDSHAKE"),
            "global_segment_size": environ.get("MOONCAKE_GLOBAL_SEGMENT_SIZE",
                                               DEFAULT_GLOBAL_SEGMENT_SIZE),
            "local_buffer_size": environ.get("MOONCAKE_LOCAL_BUFFER_SIZE",
                                             DEFAULT_LOCAL_BUFFER_SIZE),
            "protocol": environ.get("MOONCAKE_PROTOCOL", "tcp"),
            "device_name": environ.get("MOONCAKE_DEVICE", ""),
            "master_server_address": environ["MOONCAKE_MASTER"],
        }, "MOONCAKE_* variables")

    @classmethod
    def load_from_env(cls) -> "MooncakeConfig":
        """Mooncake's name (mooncake.mooncake_config.MooncakeConfig) for from_env."""
        return cls.from_env()

    @classmethod
    def _from_mapping(cls, data: dict, source: str) -> "MooncakeConfig":
        try:
            return cls(
                local_hostname=str(data.get("local_hostname", "localhost")),
                metadata_server=str(data.get("metadata_server", "P2PHANDSHAKE")),
                global_segment_size=parse_size(data.get("global_segment_size",
                                                        DEFAULT_GLOBAL_SEGMENT_SIZE)),
                local_buffer_size=parse_size(data.get("local_buffer_size",
                                                      DEFAULT_LOCAL_BUFFER_SIZE)),
                protocol=str(data.get("protocol", "tcp")),
                device_name=str(data.get("device_name", "") or ""),
                master_server_address=str(data.get("master_server_address", "")))
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"{source}: {exc}") from None


def master_spec(address: str, environ=os.environ) -> str:
    """Our master spec for one of Mooncake's: "host:port" as is, "etcd://h:p;h:p" (Mooncake's
    HA form: endpoints split by ';') as "etcd://h:p,h:p/CLUSTER", where CLUSTER is
    $MOONCAKE_CLUSTER_ID or "mooncake"; our own "etcd://h:p/CLUSTER" passes through."""
    address = address.strip()
    if not address:
        raise InvalidArgumentError("master_server_addr is empty")
    if not address.startswith("etcd://"):
        return address.replace(";", ",")
    rest = address[len("etcd://"):]
    if "/" in rest:
        return address
    endpoints = ",".join(e.strip() for e in rest.split(";") if e.strip())
    return f"etcd://{endpoints}/{environ.get('MOONCAKE_CLUSTER_ID', DEFAULT_ETCD_CLUSTER_ID)}"


def transports_for(protocol: str) -> tuple[str, ...]:
    """Our transports for Mooncake's protocol: "tcp" or "rdma" (rdma falls back to tcp when no
    device exists); shm serves whatever this node's worker holds either way."""
    protocol = (protocol or "tcp").strip().lower()
    if protocol == "tcp":
        return ("shm", "tcp")
    if protocol == "rdma":
        return ("shm", "rdma", "tcp")
    raise InvalidArgumentError(f"protocol must be 'tcp' or 'rdma', got {protocol!r}")
