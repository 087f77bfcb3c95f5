"""Leader election among masters through an etcd lease (`--etcd`, `--cluster-id`), and fencing.

Every master of a cluster starts all its listeners; one leads, the others are standbys that
refuse every MasterService call with UNAVAILABLE naming the leader (servicer.standby_reason),
so workers and clients move on to it. etcd decides, nothing here votes:

- Campaign: grant a lease of `--leader-ttl`, then one transaction creates the leader key
  (proto/discovery.py: `/mooncake/<cluster>/leader`, the leader's addresses as JSON) bound to
  that lease, only if the key does not exist. Whoever created it leads.
- Lead: refresh the lease every ttl/3 and check that the key is still bound to it.
- Standby: read the key every STANDBY_POLL_S (a poll, not an etcd watch: etcd3gw's watch
  stream has no timeout and says nothing when it breaks) and campaign as soon as it is gone.
  So a standby takes over within STANDBY_POLL_S of a leader's resignation, and within the
  ttl (plus etcd's lease-expiry sweep, 0.5 s) of a leader's death.
- Resign (SIGTERM): refuse calls, then revoke the lease: the key goes at once.
- Fencing: a leader that finds its lease expired or its key gone or taken, or that could not
  refresh the lease for STEP_DOWN_FRACTION of the ttl (so before etcd can let anyone else
  win), must not act as leader a moment longer: `LeadershipLost`. The master then refuses
  every call and exits non-zero (EXIT_LEADERSHIP_LOST): its metadata may already disagree
  with a new leader's, and a restart (systemd, Kubernetes, compose restart it) comes back as a
  standby with nothing in memory. Staying up as a standby would mean resetting every piece of
  state in place; a process exit is the simplest reset that cannot miss one.
  The timing guarantees no overlap when the lease runs out. A key deleted by hand (or its
  lease revoked by hand) is noticed at the next refresh: a standby may lead for up to ttl/3
  before the old leader stops. Do not edit the key.
- etcd unreachable while not leading: standby, retrying with backoff (ETCD_RETRY_*).

The etcd calls block (HTTP through etcd3gw) and run in threads (asyncio.to_thread).
"""
from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from typing import Callable

from mooncake_proto.daemon import kv
from mooncake_proto.discovery import Etcd, EtcdError, LeaderRecord, leader_key
from mooncake_proto.errors import UnavailableError

log = logging.getLogger("mooncake.master.ha")

STANDBY_POLL_S = 0.25
STEP_DOWN_FRACTION = 0.8  # a leader that could not refresh for this much of the ttl stops
ETCD_RETRY_MIN_S = 0.1
ETCD_RETRY_MAX_S = 2.0
REFRESH_RETRY_S = 0.2  # after a failed refresh, the next try comes this soon
RESIGN_TIMEOUT_S = 2.0
EXIT_LEADERSHIP_LOST = 3  # not 2: systemd's unit does not restart on 2 (a bad command line)


class Role(str, enum.Enum):
    LEADER = "leader"
    STANDBY = "standby"


class LeadershipLost(Exception):
    """This master led and can no longer be sure it does: it must stop acting at once."""


class Election:
    """One master's part in its cluster's election. `on_role(role, detail)` is called on the
    event loop whenever the role or, as a standby, the known leader changes: detail is the
    text a standby refuses calls with (it names the leader when one is known)."""

    def __init__(self, etcd: Etcd, cluster_id: str, ttl_s: float, record: LeaderRecord,
                 on_role: Callable[[Role, str], None]):
        self.etcd = etcd
        self.cluster_id = cluster_id
        self.key = leader_key(cluster_id)
        self.ttl_s = max(1, math.ceil(ttl_s))  # etcd leases are whole seconds
        self.record = record
        self.on_role = on_role
        self.role = Role.STANDBY
        self._detail = ""
        self._lease = None  # etcd3gw Lease while leading
        self._granted_ttl_s = self.ttl_s
        self._granted_at = 0.0  # monotonic time just before the lease was asked for

    # ---- the loop ----

    async def campaign_once(self) -> None:
        """One look at the key (and a campaign when it is free): tells on_role either way.
        main() runs this before its ready file, so a leader's file says so from the start."""
        try:
            won, holder = await asyncio.to_thread(self._campaign)
        except EtcdError:
            self._standby(f"standby of cluster {self.cluster_id}: etcd is unreachable, "
                          "no leader known")
            raise
        if won:
            self._lead()
        else:
            self._standby(self._refusal(holder))

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: standby or leader. Returns on stop (having resigned when leading);
        raises LeadershipLost when this master led and lost the lease."""
        delay_s, retry_s = STANDBY_POLL_S, ETCD_RETRY_MIN_S
        while True:
            if self.role is Role.LEADER:  # also when stop came already: _hold resigns at once
                await self._hold(stop)
                return
            if stop.is_set() or await _wait(stop, delay_s):
                return
            try:
                await self.campaign_once()
                delay_s, retry_s = STANDBY_POLL_S, ETCD_RETRY_MIN_S
            except EtcdError as exc:
                log.warning(kv("etcd_unreachable", cluster_id=self.cluster_id, error=exc,
                               retry_in_s=f"{retry_s:.2f}"))
                delay_s, retry_s = retry_s, min(ETCD_RETRY_MAX_S, retry_s * 2)

    async def _hold(self, stop: asyncio.Event) -> None:
        """Leading: refreshes the lease every ttl/3 (sooner again after a failed refresh)
        until stop, then resigns. Each refresh proves the lease lives until `sent_at + ttl`
        at the earliest; without one for STEP_DOWN_FRACTION of the ttl, this master stops."""
        interval_s = self._granted_ttl_s / 3
        confirmed_at, failing = self._granted_at, False
        while True:
            deadline = confirmed_at + self._granted_ttl_s * STEP_DOWN_FRACTION
            wait_s = min(interval_s, REFRESH_RETRY_S) if failing else interval_s
            if await _wait(stop, max(0.0, min(wait_s, deadline - time.monotonic()))):
                await self.resign()
                return
            sent_at = time.monotonic()
            if sent_at >= deadline:
                self._lost(f"the lease could not be refreshed for "
                           f"{sent_at - confirmed_at:.1f}s of its {self._granted_ttl_s}s")
            try:
                await asyncio.wait_for(asyncio.to_thread(self._refresh), deadline - sent_at)
                confirmed_at, failing = sent_at, False
            except _Lost as exc:
                self._lost(str(exc))
            except EtcdError as exc:
                log.warning(kv("lease_refresh_failed", cluster_id=self.cluster_id, error=exc))
                failing = True
            except asyncio.TimeoutError:
                self._lost("etcd did not answer a lease refresh before the lease could expire")

    async def resign(self) -> None:
        """Gives leadership away now: refuses calls (so none is served meanwhile), then
        revokes the lease, which deletes the key: a standby wins at its next look."""
        if self.role is not Role.LEADER:
            return
        self._standby("this master is stopping; a standby takes over")
        lease, self._lease = self._lease, None
        try:
            await asyncio.wait_for(asyncio.to_thread(
                self.etcd.call, lambda c: _on(lease, c).revoke()), RESIGN_TIMEOUT_S)
            log.info(kv("leader_resigned", cluster_id=self.cluster_id,
                        master_id=self.record.master_id))
        except (EtcdError, asyncio.TimeoutError) as exc:
            log.warning(kv("resign_failed", cluster_id=self.cluster_id,
                           error=str(exc) or type(exc).__name__,
                           detail=f"the key expires within {self._granted_ttl_s}s instead"))

    # ---- blocking etcd steps (threads) ----

    def _campaign(self) -> tuple[bool, LeaderRecord | None]:
        found = self.etcd.read_key(self.key)
        if found is not None:
            return False, _record(found[0])
        granted_at = time.monotonic()  # the lease cannot expire before granted_at + ttl
        lease, ttl_s = self.etcd.call(lambda c: _grant(c, self.ttl_s))
        try:
            won = self.etcd.call(lambda c: c.create(self.key, self.record.to_json(),
                                                    lease=_on(lease, c)))
        except BaseException:
            self._revoke_quietly(lease)  # the create may have landed: take the key back
            raise
        if won:
            self._lease, self._granted_ttl_s = lease, ttl_s
            self._granted_at = granted_at
            return True, self.record
        self._revoke_quietly(lease)
        found = self.etcd.read_key(self.key)  # who won (None: it is gone again already)
        return False, None if found is None else _record(found[0])

    def _refresh(self) -> None:
        lease = self._lease
        ttl = self.etcd.call(lambda c: _on(lease, c).refresh())
        if ttl <= 0:
            raise _Lost("the lease expired")
        found = self.etcd.read_key(self.key)
        if found is None:
            raise _Lost("the leader key is gone")
        if found[1] != lease.id:
            raise _Lost(f"the leader key is held by master {_record(found[0]).master_id}")

    def _revoke_quietly(self, lease) -> None:
        try:
            self.etcd.call(lambda c: _on(lease, c).revoke())
        except Exception as exc:  # noqa: BLE001 - the lease runs out by itself
            log.info(kv("lease_revoke_failed", lease=lease.id, error=exc))

    # ---- roles ----

    def _lead(self) -> None:
        self.role = Role.LEADER
        self._detail = ""
        log.info(kv("leader_elected", cluster_id=self.cluster_id,
                    master_id=self.record.master_id, grpc=self.record.grpc,
                    lease_ttl_s=self._granted_ttl_s))
        self.on_role(Role.LEADER, "")

    def _standby(self, detail: str) -> None:
        changed = self.role is not Role.STANDBY or detail != self._detail
        self.role, self._detail = Role.STANDBY, detail
        if changed:
            log.info(kv("became_standby", cluster_id=self.cluster_id,
                        master_id=self.record.master_id, reason=detail))
            self.on_role(Role.STANDBY, detail)

    def _refusal(self, holder: LeaderRecord | None) -> str:
        if holder is None:
            return f"standby of cluster {self.cluster_id}: no leader known yet"
        return (f"standby of cluster {self.cluster_id}: the leader is master "
                f"{holder.master_id} at {holder.grpc}")

    def fence(self, reason: str) -> None:
        """Stops acting as leader now (calls are refused from here on), whatever the role."""
        self._standby(f"this master lost the leadership of cluster {self.cluster_id}: {reason}")
        log.error(kv("leadership_lost", cluster_id=self.cluster_id,
                     master_id=self.record.master_id, reason=reason))

    def _lost(self, reason: str) -> None:
        self.fence(reason)
        raise LeadershipLost(reason)


class _Lost(EtcdError):
    """etcd answered: the lease or the key is no longer ours."""


def _record(value: bytes) -> LeaderRecord:
    """The leader record in the key; a value that is none (written by hand?) stands for an
    unknown holder: the key is taken all the same."""
    try:
        return LeaderRecord.from_json(value)
    except UnavailableError:
        return LeaderRecord(grpc="(unknown)", master_id="(unknown: the key holds no leader "
                                                       "record)")


def _grant(client, ttl_s: int):
    """A new lease and the ttl etcd granted (it may raise a short one to its minimum)."""
    from etcd3gw.lease import Lease
    reply = client.post(client.get_url("/lease/grant"), json={"TTL": ttl_s, "ID": 0})
    return Lease(int(reply["ID"]), client), int(reply.get("TTL", ttl_s))


def _on(lease, client):
    """The same lease, spoken to through `client` (the endpoint that answers now)."""
    from etcd3gw.lease import Lease
    return Lease(lease.id, client)


async def _wait(stop: asyncio.Event, timeout_s: float) -> bool:
    """Waits up to timeout_s; True when stop was set."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=timeout_s)
        return True
    except asyncio.TimeoutError:
        return stop.is_set()
