"""Where the master is: a master spec turned into addresses, and the etcd keys HA masters publish.

A master spec (the `--master` of workers and mooncake-admin, `Client(master)`) is one of

    H:P[,H:P...]                    master gRPC addresses, tried in this order
    etcd://H:P[,H:P...]/CLUSTER_ID  etcd's client endpoints (plain http, as `etcd
                                    --listen-client-urls` gives them) and the --cluster-id of
                                    `mooncake-master --etcd ... --cluster-id CLUSTER_ID`:
                                    the address is the elected leader's, read from etcd

Under etcd HA (master/ha.py) the leader holds the key `/mooncake/<CLUSTER_ID>/leader`, bound
to its etcd lease, whose value is a JSON object of its addresses (`LeaderRecord`): the key
vanishes when the leader stops or its lease runs out, and the next leader writes its own.

`MasterLocator(spec)` is the one place that reads a spec: `addresses()` are the candidates to
try now, in order; after a failure, `invalidate(addr)` moves a static list on past `addr` or
has the next `addresses()` read etcd again. It is thread-safe and blocking (an etcd read is an
HTTP request, bounded by `etcd_timeout_s`): asyncio callers wrap it in `asyncio.to_thread`.

etcd is spoken to through etcd3gw (etcd's grpc-gateway JSON API, `/v3/` on etcd 3.4 and
later), which needs no protobuf of its own. Proxy variables are ignored: etcd is reached
directly, like the master.
"""
from __future__ import annotations

import dataclasses
import json
import re
import threading
from typing import Callable, Sequence, TypeVar

from mooncake_proto.errors import InvalidArgumentError, UnavailableError

ETCD_SCHEME = "etcd://"
KEY_PREFIX = "/mooncake"
ETCD_TIMEOUT_S = 2.0  # one etcd request, connect included
_CLUSTER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^:/\[\]\s]+):([0-9]{1,5})$")

T = TypeVar("T")


def leader_key(cluster_id: str) -> str:
    return f"{KEY_PREFIX}/{cluster_id}/leader"


def check_cluster_id(cluster_id: str) -> str:
    """The id, if it can name a cluster's keys: letters, digits, '.', '_', '-' (no '/')."""
    if not _CLUSTER_ID.match(cluster_id or ""):
        raise ValueError(f"cluster id {cluster_id!r}: 1..128 of letters, digits, '.', '_', '-', "
                         "starting with a letter or digit")
    return cluster_id


def parse_endpoints(text: str) -> list[str]:
    """etcd client endpoints "H:P[,H:P...]" (an "http://" in front of each is allowed)."""
    endpoints = []
    for part in str(text).split(","):
        part = part.strip()
        if part.startswith("https://"):
            raise ValueError(f"etcd endpoint {part!r}: TLS to etcd is not supported; "
                             "give its plain-http client URL")
        part = part.removeprefix("http://").rstrip("/")
        if not part:
            continue
        if not _HOST_PORT.match(part) or not 0 < int(part.rpartition(":")[2]) < 65536:
            raise ValueError(f"etcd endpoint {part!r}: expected host:port")
        endpoints.append(part)
    if not endpoints:
        raise ValueError("give at least one etcd endpoint host:port")
    return endpoints


@dataclasses.dataclass(frozen=True)
class LeaderRecord:
    """What the leader publishes under its key: where each of its listeners is reached."""
    grpc: str
    meta: str = ""        # the framed metadata port ("" when off)
    http: str = ""
    master_id: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> "LeaderRecord":
        try:
            data = json.loads(raw)
            return cls(**{f.name: str(data.get(f.name, "")) for f in dataclasses.fields(cls)})
        except (ValueError, TypeError, AttributeError) as exc:
            raise UnavailableError(f"the leader key holds no leader record: {raw!r}") from exc


class EtcdError(UnavailableError):
    """No etcd endpoint answered (or one answered with an error)."""


class Etcd:
    """etcd3gw clients for each endpoint; `call(fn)` runs fn(client) on the endpoint that last
    answered, moving on to the others when it cannot be reached. Thread-safe: etcd3gw's
    requests sessions are used by one call at a time per endpoint."""

    def __init__(self, endpoints: Sequence[str], timeout_s: float = ETCD_TIMEOUT_S):
        import etcd3gw  # here: a process that never speaks to etcd never imports it
        import requests
        self.endpoints = list(endpoints)
        self.timeout_s = timeout_s
        self._clients = []
        for endpoint in self.endpoints:
            host, _, port = endpoint.rpartition(":")
            session = requests.Session()
            session.trust_env = False  # no http_proxy detour: etcd is reached directly
            self._clients.append(etcd3gw.client(host=host.strip("[]"), port=int(port),
                                                timeout=timeout_s, session=session))
        self._locks = [threading.Lock() for _ in self._clients]
        self._preferred = 0

    def call(self, fn: Callable[[object], T]) -> T:
        from etcd3gw import exceptions
        failures = []
        for step in range(len(self._clients)):
            i = (self._preferred + step) % len(self._clients)
            try:
                with self._locks[i]:
                    result = fn(self._clients[i])
                self._preferred = i
                return result
            except (exceptions.ConnectionFailedError, exceptions.ConnectionTimeoutError,
                    exceptions.InternalServerError) as exc:
                failures.append(f"{self.endpoints[i]}: {_etcd_reason(exc)}")
            except exceptions.Etcd3Exception as exc:  # an answer, but not one we can use
                raise EtcdError(f"etcd {self.endpoints[i]}: {_etcd_reason(exc)}") from exc
            except (OSError, ValueError, KeyError, TypeError) as exc:
                # what etcd3gw lets through: requests' other errors (OSError), an answer that
                # is not JSON or lacks a field
                raise EtcdError(f"etcd {self.endpoints[i]}: {_etcd_reason(exc)}") from exc
        raise EtcdError("etcd unreachable: " + "; ".join(failures))

    def read_key(self, key: str) -> tuple[bytes, int] | None:
        """A key's value and the id of the lease it is bound to (0: none); None when absent."""
        found = self.call(lambda c: c.get(key, metadata=True))
        if not found:
            return None
        value, meta = found[0]
        return value, int(meta.get("lease", 0) or 0)

    def read_leader(self, cluster_id: str) -> LeaderRecord | None:
        """The leader's record; None when no master leads the cluster now. UnavailableError
        when the key holds something else."""
        found = self.read_key(leader_key(cluster_id))
        return None if found is None else LeaderRecord.from_json(found[0])


def _etcd_reason(exc: Exception) -> str:
    detail = getattr(exc, "detail_text", None) or ""
    text = " ".join(str(p) for p in (type(exc).__name__, detail, *exc.args) if p)
    return " ".join(text.split())[:300]


class MasterLocator:
    """A master spec (module doc) as addresses to try. Static lists rotate past a failed
    address; an etcd spec reads the leader's address once and again after each failure."""

    def __init__(self, spec: str | Sequence[str], etcd_timeout_s: float = ETCD_TIMEOUT_S):
        self.spec = spec if isinstance(spec, str) else ",".join(spec)
        self._lock = threading.Lock()
        self._etcd: Etcd | None = None
        self._leader: LeaderRecord | None = None
        self._stale = True
        self.cluster_id = ""
        text = self.spec.strip()
        if text.startswith(ETCD_SCHEME):
            endpoints, slash, cluster_id = text[len(ETCD_SCHEME):].rpartition("/")
            try:
                if not slash:
                    raise ValueError("expected etcd://H:P[,H:P...]/CLUSTER_ID")
                self.cluster_id = check_cluster_id(cluster_id)
                self._etcd = Etcd(parse_endpoints(endpoints), etcd_timeout_s)
            except ValueError as exc:
                raise InvalidArgumentError(f"master {self.spec!r}: {exc}") from None
            self._static: list[str] = []
        else:
            self._static = [m.strip() for m in text.split(",") if m.strip()]
            if not self._static or not all(_HOST_PORT.match(m) for m in self._static):
                raise InvalidArgumentError(
                    f"master {self.spec!r}: expected H:P[,H:P...] or etcd://H:P/CLUSTER_ID")

    @property
    def is_etcd(self) -> bool:
        return self._etcd is not None

    def addresses(self) -> list[str]:
        """The master gRPC addresses to try now, best first. Under etcd, the leader's alone;
        UnavailableError (EtcdError when etcd is unreachable) when none leads now."""
        if self._etcd is None:
            with self._lock:
                return list(self._static)
        return [self.leader().grpc]

    def leader(self) -> LeaderRecord:
        """The leader's record (etcd specs only; read from etcd when stale)."""
        if self._etcd is None:
            raise InvalidArgumentError(f"master {self.spec!r} names no etcd cluster")
        with self._lock:
            if self._stale or self._leader is None:
                leader = self._etcd.read_leader(self.cluster_id)
                if leader is None:
                    raise UnavailableError(
                        f"no master leads cluster {self.cluster_id!r} in etcd "
                        f"{','.join(self._etcd.endpoints)} now (an election under way, or "
                        "no master running)")
                self._leader, self._stale = leader, False
            return self._leader

    def invalidate(self, failed: str | None = None) -> None:
        """After `failed` (an address from addresses(); None: whichever came first) did not
        answer: a static list moves it to the back (once however many callers report it),
        an etcd spec reads the leader again next time."""
        with self._lock:
            if self._etcd is not None:
                self._stale = True
            elif self._static and (failed is None or self._static[0] == failed):
                self._static.append(self._static.pop(0))

    def describe(self) -> str:
        return self.spec
