"""MasterLink: how a Client reaches the master. Object calls go over the master's framed
metadata port when it offers one (asked with Hello), everything else over gRPC; through
restarts and fail-overs a call tries the next address (under etcd: the leader, read again)
and waits with backoff for up to master_retry_s, and a call that may have reached a master
is sent again only when that is harmless (SAFE_TO_REPEAT)."""
from __future__ import annotations

import os
import random
import threading
import time

import grpc

from mooncake_client.meta_channel import MaybeSent, MetaChannel, NotSent
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto import mooncake_pb2_grpc as pb_grpc
from mooncake_proto import metaframe, rpc
from mooncake_proto.discovery import MasterLocator
from mooncake_proto.errors import InvalidArgumentError, UnavailableError

META_RETRY_S = 5.0  # a client without a framed metadata channel asks Hello again after this,
META_RETRY_MAX_S = 60.0  # doubling after each failure up to this
META_CONNECT_TIMEOUT_S = 0.5  # a port that drops SYNs must not stall a call for rpc_timeout_s
MASTER_RETRY_FIRST_S = 0.05  # pause after a round of master addresses failed, doubling
MASTER_RETRY_MAX_S = 1.0  # up to this, until master_retry_s is spent
# Master calls that may be sent again whatever became of the first attempt: reads (leases
# aside), commits and revokes keyed by put_id (a second PutEnd of a committed put is OK, a
# second PutRevoke finds nothing), admin reads and drains (asking again is how progress is
# followed). PutStart, Remove and RemoveAll are not: a PutStart sent twice meets its own
# PENDING key and reports success for bytes never written. They are retried only when
# they cannot have reached a master (see _may_retry).
SAFE_TO_REPEAT = metaframe.IDEMPOTENT | {"Hello", "PutEnd", "PutRevoke", "ListKeys",
                                         "DrainWorker"}


class MasterLink:
    def __init__(self, locator: MasterLocator, rpc_timeout_s: float, master_retry_s: float,
                 framed_metadata: bool, token: str, tls: rpc.Tls):
        self._locator = locator
        self.rpc_timeout_s = rpc_timeout_s
        self.master_retry_s = master_retry_s
        self._token, self._tls = token, tls
        # the framed port has no TLS: a client asked for TLS never sends its calls there
        self.framed_metadata = framed_metadata and not tls.calling
        self.meta: MetaChannel | None = None
        self.meta_checked_at = -float("inf")
        self._meta_failures = 0
        self._meta_lock = threading.Lock()
        self._switch_lock = threading.Lock()
        # the master now: its address, a channel and stub to it (made at the first call, so
        # an etcd spec is read then), and a count of fail-overs so far
        self.target: str | None = None
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.MasterServiceStub | None = None
        self._switches = 0
        # what the client learnt of the serving master's calls (e.g. "ExistsPrefix": whether
        # it knows it), forgotten whenever the master may have changed
        self.knows: dict[str, bool] = {}

    def close(self) -> None:
        meta, self.meta = self.meta, None
        self.framed_metadata = False  # calls after close() must not reopen a channel
        if meta is not None:
            meta.close()
        if self._channel is not None:
            self._channel.close()

    def call(self, method: str, request, raw: bool = False):
        """One master call: over the framed metadata port when there is one, else gRPC.
        raw: the framed port's answer as bytes, unparsed (gRPC's is still a message)."""
        meta = self._meta_channel() if method in metaframe.METHOD_IDS else None
        if meta is not None:
            try:
                response = meta.call(method, request, self.rpc_timeout_s, raw)
                self._meta_failures = 0
                return response
            except NotSent:
                self._forget_meta(meta)  # unreachable, busy or a standby: gRPC, Hello later
            except MaybeSent as exc:
                self._forget_meta(meta)
                if method not in SAFE_TO_REPEAT:
                    raise UnavailableError(f"master {meta.addr} {method}: connection lost after "
                                           f"the call was sent ({exc}); its outcome is unknown")
        return self.grpc_call(method, request)

    def grpc_call(self, method: str, request):
        """One master RPC, through restarts and fail-overs: when the master is unreachable
        or refuses as a standby, the next address (under etcd: the leader, read again) is
        tried at once, then every address again after a growing pause, for up to
        master_retry_s; then UnavailableError. A call that may have reached a master is
        not sent again unless that is harmless (_may_retry)."""
        give_up_at, pause_s, tried = None, MASTER_RETRY_FIRST_S, 0
        while True:
            switches, target = self._switches, self._locator.describe()
            try:
                switches, target, stub = self._master()
                return getattr(stub, method)(request, timeout=self.rpc_timeout_s)
            except grpc.RpcError as exc:
                error = rpc.error_from_rpc(exc, f"master {target} {method}")
                if not _may_retry(method, exc):
                    raise error from None
            except UnavailableError as exc:  # no leader in etcd now, or etcd unreachable
                error = exc
            self._fail_over(switches, target)
            now = time.monotonic()
            give_up_at = now + self.master_retry_s if give_up_at is None else give_up_at
            tried += 1
            if tried < self._candidates():
                continue  # the next address of a static list, at once
            if now >= give_up_at:
                if self.master_retry_s == 0:
                    raise error from None
                raise UnavailableError(f"master {self._locator.describe()} {method}: no master "
                                       f"served the call within {self.master_retry_s:g}s; "
                                       f"last: {error}")
            time.sleep(min(pause_s * (0.5 + random.random()), give_up_at - now))
            pause_s, tried = min(pause_s * 2, MASTER_RETRY_MAX_S), 0

    def _candidates(self) -> int:
        """How many addresses one round of tries has: a static list's length; 1 under etcd."""
        return 1 if self._locator.is_etcd else len(self._locator.addresses())

    def _master(self) -> tuple[int, str, pb_grpc.MasterServiceStub]:
        """(fail-overs so far, address, stub) of the master to call now; connects (reading
        etcd for an etcd spec) after a fail-over. UnavailableError when none is known."""
        with self._switch_lock:
            if self._stub is None:
                target = self._locator.addresses()[0]
                if target != self.target or self._channel is None:
                    # the old channel is not closed here: other threads may still be in a
                    # call on it (they fail over the same way); it closes with its last user
                    self._channel = rpc.client_channel(target, self._tls, self._token)
                    self.target = target
                # the same address (a restart): the channel reconnects by itself, and a new
                # one would share its connection's backoff anyway
                self._stub = pb_grpc.MasterServiceStub(self._channel)
            return self._switches, self.target, self._stub

    def _fail_over(self, seen_switches: int, target: str) -> None:
        """After `target` failed: the next call re-resolves the master (the next address of a
        static list; the leader read again from etcd) and asks it Hello for its framed port.
        Once per failure however many threads saw it."""
        with self._switch_lock:
            if self._switches != seen_switches:
                return  # another thread already moved on
            self._switches += 1
            self._locator.invalidate(target)
            self._stub = None
            self.knows.clear()  # another master, maybe another version
        with self._meta_lock:  # the framed port is the old master's: ask the new one
            meta, self.meta = self.meta, None
            self.meta_checked_at, self._meta_failures = -float("inf"), 0
        if meta is not None:
            meta.close()

    def _meta_channel(self) -> MetaChannel | None:
        """The framed metadata channel of the current master; asks Hello again after a
        back-off when there is none (an older master, the port turned off, or it failed)."""
        if self.meta is not None or not self.framed_metadata:
            return self.meta
        now = time.monotonic()
        wait_s = min(META_RETRY_MAX_S, META_RETRY_S * 2 ** max(0, self._meta_failures - 1))
        with self._meta_lock:
            if self.meta is None and now - self.meta_checked_at >= wait_s:
                self.meta_checked_at = now
                try:
                    _, master, stub = self._master()
                    hello = stub.Hello(pb.HelloRequest(), timeout=self.rpc_timeout_s)
                except (grpc.RpcError, UnavailableError):
                    return None  # an older master without Hello, or unreachable: gRPC it is
                if hello.meta_addr and self.framed_metadata:
                    self.meta = MetaChannel(_reachable(hello.meta_addr, master),
                                             min(META_CONNECT_TIMEOUT_S, self.rpc_timeout_s),
                                             self._token)
            return self.meta

    def _forget_meta(self, meta: MetaChannel) -> None:
        self.knows.clear()  # the master may have restarted as another version
        with self._meta_lock:
            if self.meta is meta:
                self.meta = None
                self.meta_checked_at = time.monotonic()
                self._meta_failures += 1
        meta.close()


def _may_retry(method: str, exc: grpc.RpcError) -> bool:
    """Whether a failed master call may be sent again (to the next master, or later).

    UNAVAILABLE that the master answered itself (its Mooncake code in the trailers) is a
    standby's refusal, made before the call touched anything: any call may go again. A call
    gRPC failed with "failed to connect to all addresses" never left this process (gRPC
    fails a call that way only when no connection could be made to send it on): any call
    may go again. Any other UNAVAILABLE (a connection lost mid-call), or a deadline, leaves
    the outcome unknown: only SAFE_TO_REPEAT calls go again. gRPC's wording is matched
    because its Python API tells nothing more; if the wording changes, non-repeatable
    calls just stop being retried (the safe side)."""
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        answered = any(key == rpc.CODE_METADATA_KEY for key, _ in exc.trailing_metadata() or ())
        details = exc.details() or ""
        if answered or "failed to connect to all addresses" in details:
            return not _tls_refused(details)
        return method in SAFE_TO_REPEAT
    return code == grpc.StatusCode.DEADLINE_EXCEEDED and method in SAFE_TO_REPEAT


def _tls_refused(details: str) -> bool:
    """A TLS handshake that failed (a wrong CA, TLS on one side only) is a configuration
    error, not an outage: waiting would not fix it."""
    lowered = details.lower()
    return "ssl" in lowered or "handshake" in lowered or "certificate" in lowered


def security(token: str | None, tls_ca: str | None) -> tuple[str, rpc.Tls]:
    """The token and TLS settings a Client was given, or those of its environment."""
    token = (os.environ.get("MOONCAKE_TOKEN", "") if token is None else token).strip()
    tls_ca = os.environ.get("MOONCAKE_TLS_CA", "") if tls_ca is None else tls_ca
    try:
        if token:
            rpc.check_token(token)
        return token, rpc.Tls.load(ca_path=tls_ca)
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(f"Client: {exc}") from exc


def _reachable(meta_addr: str, master: str) -> str:
    """The framed port's address as this client can reach it: a master listening on every
    interface advertises 0.0.0.0 (or ::), which means the host we reached it by."""
    host, _, port = meta_addr.rpartition(":")
    if host.strip("[]") in ("0.0.0.0", "::", ""):
        host = master.rpartition(":")[0]
    return f"{host}:{port}"
