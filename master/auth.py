"""Who may call what on the master: the bearer tokens of `--tokens FILE`, their roles, and the
one check every MasterService call passes, over gRPC and the framed port alike.

The tokens file is YAML with the keys `worker`, `client` and `admin`, each a token or a list
of tokens. A worker token may register and heartbeat; a client token may make object calls;
an admin token may do both and RemoveAll. A master without a tokens file is open.
"""
from __future__ import annotations

import enum
import hashlib
import hmac

import yaml

from mooncake_proto.errors import PermissionDeniedError, UnauthenticatedError
from mooncake_proto.rpc import check_token


class Role(enum.Enum):
    WORKER = "worker"
    CLIENT = "client"
    ADMIN = "admin"


# what a token of each kind may do: an admin may do everything
GRANTED = {
    Role.WORKER: frozenset({Role.WORKER}),
    Role.CLIENT: frozenset({Role.CLIENT}),
    Role.ADMIN: frozenset(Role),
}


def load_tokens(path: str) -> dict[Role, list[str]]:
    """The tokens of each role in a tokens file; ValueError (or OSError) says what is wrong."""
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not YAML: {exc}") from exc
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a mapping with keys worker, client and/or admin")
    tokens: dict[Role, list[str]] = {}
    seen: dict[str, Role] = {}
    for key, value in data.items():
        try:
            role = Role(key)
        except ValueError:
            raise ValueError(f"{path}: unknown key {key!r} (worker, client or admin)") from None
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ValueError(f"{path}: {key}: an empty list")
        for token in values:
            if not isinstance(token, str):
                raise ValueError(f"{path}: {key}: a token must be a string, not {token!r}")
            try:
                check_token(token)
            except ValueError as exc:
                raise ValueError(f"{path}: {key}: {exc}") from None
            if seen.setdefault(token, role) is not role:
                raise ValueError(f"{path}: one token under both {seen[token].value} and {key}")
        tokens[role] = list(values)
    return tokens


def _digest(token: str) -> bytes:
    # equal-length digests: compare_digest then takes the same time whatever the token's length
    return hashlib.sha256(token.encode()).digest()


class Authenticator:
    """Checks a call's token against the configured ones; `None` tokens: an open master."""

    def __init__(self, tokens: dict[Role, list[str]] | None = None):
        self.open = not tokens
        self._entries = [(_digest(t), GRANTED[role]) for role, ts in (tokens or {}).items()
                         for t in ts]
        self.counts = {role.value: len(ts) for role, ts in (tokens or {}).items()}

    def roles_of(self, token: str) -> frozenset[Role]:
        """What `token` may do (nothing for an unknown or empty one). Compares against every
        configured token, in constant time each, whatever matched before."""
        digest = _digest(token)
        roles: frozenset[Role] = frozenset()
        for known, granted in self._entries:
            if hmac.compare_digest(known, digest):
                roles = granted
        return roles if token else frozenset()

    def check(self, token: str, needed: Role, what: str) -> None:
        """Returns when `token` may make a call that needs `needed`; raises
        UnauthenticatedError for a missing or unknown token, PermissionDeniedError for a token
        of another role."""
        if self.open:
            return
        roles = self.roles_of(token)
        if not roles:
            raise UnauthenticatedError(
                f"{what}: {'unknown' if token else 'no'} bearer token")
        if needed not in roles:
            raise PermissionDeniedError(f"{what}: needs a {needed.value} token")
