"""ListKeys' pure core: a page of the objects whose keys start with a prefix, for operators.

A read of the state that changes nothing (no lease, no access time), so listing never changes
what is evicted next. The servicer calls it under its lock.
"""
from __future__ import annotations

import dataclasses
import heapq

from mooncake_master.model import ObjectMeta

DEFAULT_LIST_LIMIT = 1000  # ListKeys with limit 0
MAX_LIST_LIMIT = 10_000  # 10,000 keys of 4 KiB stay under gRPC's 64 MiB message cap


@dataclasses.dataclass(frozen=True, slots=True)
class KeyListing:
    """One object as ListKeys shows it (a copy: nothing outside may touch the state)."""
    key: str
    size: int
    state: int
    tiers: tuple[int, ...]  # one per replica
    soft_pin: bool
    hard_pin: bool
    last_access_age_s: float


def list_keys(objects: dict[str, ObjectMeta], prefix: str, limit: int, start_after: str,
              now: float) -> tuple[list[KeyListing], bool]:
    """A page of ListKeys: the objects whose keys start with `prefix`, after `start_after`, in
    key order, at most `limit` (0: DEFAULT_LIST_LIMIT; capped at MAX_LIST_LIMIT); and whether
    more match. The state keeps no sorted index (an admin call is not
    worth one on the hot path), so a page is one pass over every key, under the lock."""
    limit = min(limit or DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)
    page = heapq.nsmallest(limit + 1, (k for k in objects
                                       if k > start_after and k.startswith(prefix)))
    listings = []
    for key in page[:limit]:
        obj = objects[key]
        listings.append(KeyListing(key, obj.size, obj.state, tuple(r.tier for r in obj.replicas),
                                   obj.soft_pin, obj.hard_pin, max(0.0, now - obj.last_access)))
    return listings, len(page) > limit
