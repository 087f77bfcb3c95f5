"""What the fuzz tests share: how many examples to run, the tally the summary reports, the
canary that proves a daemon still serves, and protobuf messages as hypothesis strategies.

A bounded run by default (a few hundred inputs per target, well under a minute); set
MOONCAKE_FUZZ_EXAMPLES=N for N inputs per target (a long run on demand).
"""
from __future__ import annotations

import collections
import dataclasses
import os
import socket

from google.protobuf import descriptor as pb_descriptor
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES_ENV = "MOONCAKE_FUZZ_EXAMPLES"


def fuzz_settings(default_examples: int):
    """`default_examples` (or $MOONCAKE_FUZZ_EXAMPLES) inputs; no deadline: the host is
    shared and slow, and a hang is caught by the socket and RPC timeouts instead."""
    examples = int(os.environ.get(EXAMPLES_ENV) or default_examples)
    return settings(max_examples=examples, deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


@dataclasses.dataclass
class Tally:
    """Per fuzz target: inputs sent and how they were answered."""
    inputs: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    answers: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(
        collections.Counter))
    daemon_counters: dict = dataclasses.field(default_factory=dict)

    def count(self, target: str, outcome: str) -> None:
        self.inputs[target] += 1
        self.answers[target][outcome] += 1

    def as_json(self) -> dict:
        return {"inputs": dict(self.inputs),
                "answers": {t: dict(c) for t, c in self.answers.items()},
                "daemon_counters": self.daemon_counters}

    def lines(self) -> list[str]:
        out = []
        for target in sorted(self.answers):
            answers = " ".join(f"{k}={v}" for k, v in sorted(self.answers[target].items()))
            inputs = f" inputs={self.inputs[target]}" if target in self.inputs else ""
            out.append(f"fuzz target={target}{inputs} {answers}")
        for name, value in sorted(self.daemon_counters.items()):
            out.append(f"fuzz daemon_counter {name}={value}")
        return out


def exchange(addr: str, data: bytes, timeout_s: float = 30.0) -> bytes:
    """Sends data on a new connection, ends our side, and returns all the peer answers until
    it closes. A peer that neither answers nor closes within timeout_s raises: a hang."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout_s) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:  # EPIPE, ECONNRESET, ENOTCONN: it refused and closed before
            pass         # reading everything; its answer may still be there
        chunks = []
        while True:
            try:
                chunk = s.recv(1 << 16)
            except ConnectionResetError:
                break  # closed with our unread bytes in its buffer
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


class Canary:
    """One object that must stay readable through every input (re-put when a fuzzed Remove
    or RemoveAll took it), and the daemons that must stay alive."""

    def __init__(self, cluster, client, config):
        self.cluster, self.client, self.config = cluster, client, config
        self.key, self.value = "fuzz/canary", os.urandom(64 << 10)
        self.reputs = 0
        client.put(self.key, self.value, config)

    def check(self) -> None:
        daemons = [self.cluster.master, *self.cluster.workers.values()]
        for daemon in daemons:
            assert daemon.proc.poll() is None, f"{daemon.name} died:\n{daemon.log_tail()}"
        got = self.client.get(self.key)
        if got is None:  # a fuzzed remove found it: a miss, not a fault
            self.reputs += 1
            self.client.put(self.key, self.value, self.config)
            got = self.client.get(self.key)
        assert got == self.value


# ---- protobuf messages from their descriptors ----

_F = pb_descriptor.FieldDescriptor
_INTS = {
    _F.TYPE_INT64: (-(1 << 63), (1 << 63) - 1), _F.TYPE_SINT64: (-(1 << 63), (1 << 63) - 1),
    _F.TYPE_SFIXED64: (-(1 << 63), (1 << 63) - 1), _F.TYPE_UINT64: (0, (1 << 64) - 1),
    _F.TYPE_FIXED64: (0, (1 << 64) - 1), _F.TYPE_INT32: (-(1 << 31), (1 << 31) - 1),
    _F.TYPE_SINT32: (-(1 << 31), (1 << 31) - 1), _F.TYPE_SFIXED32: (-(1 << 31), (1 << 31) - 1),
    _F.TYPE_UINT32: (0, (1 << 32) - 1), _F.TYPE_FIXED32: (0, (1 << 32) - 1),
    _F.TYPE_ENUM: (-(1 << 31), (1 << 31) - 1),  # proto3 enums are open: unknown values too
}


def field_values(field, strings) -> st.SearchStrategy:
    if field.type in _INTS:
        low, high = _INTS[field.type]
        small = st.integers(-2, 70) if low < 0 else st.integers(0, 70)
        return st.one_of(small, st.integers(low, high))
    if field.type == _F.TYPE_BOOL:
        return st.booleans()
    if field.type == _F.TYPE_STRING:
        return strings
    if field.type == _F.TYPE_BYTES:
        return st.binary(max_size=128)
    if field.type == _F.TYPE_MESSAGE:
        return messages(field.message_type, strings)
    return st.floats()


def messages(descriptor, strings: st.SearchStrategy) -> st.SearchStrategy:
    """Messages of this type with any subset of fields set to any legal wire value (repeated
    ones to short lists): `strings` decides what every string field holds."""
    from google.protobuf import message_factory
    cls = message_factory.GetMessageClass(descriptor)
    fields = {}
    for field in descriptor.fields:
        values = field_values(field, strings)
        repeated = field.is_repeated
        fields[field.name] = st.lists(values, max_size=6) if repeated else values

    @st.composite
    def build(draw):
        message = cls()
        for name, values in fields.items():
            if not draw(st.booleans()):
                continue
            value = draw(values)
            target = getattr(message, name)
            if isinstance(value, list):
                if value and hasattr(value[0], "SerializeToString"):
                    for item in value:
                        target.add().CopyFrom(item)
                else:
                    target.extend(value)
            elif hasattr(value, "SerializeToString"):
                target.CopyFrom(value)
            else:
                setattr(message, name, value)
        return message
    return build()


def keys(known: list[str]) -> st.SearchStrategy:
    """Key-like strings: short text of any code point (but lone surrogates, which no
    protobuf string can carry), keys that exist, and lengths around the 4096-byte limit."""
    text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=24)
    near_limit = st.sampled_from([4095, 4096, 4097]).map(lambda n: "k" * n)
    return st.one_of(text, st.sampled_from(known), near_limit, st.just("é" * 2049))


def mutated(data: bytes) -> st.SearchStrategy:
    """data with a few bytes flipped, inserted or cut, or truncated, or extended."""
    @st.composite
    def mutate(draw):
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "append"]))
            at = draw(st.integers(0, max(len(out) - 1, 0)))
            if kind == "flip" and out:
                out[at] ^= draw(st.integers(1, 255))
            elif kind == "insert":
                out[at:at] = draw(st.binary(min_size=1, max_size=8))
            elif kind == "delete" and out:
                del out[at:at + draw(st.integers(1, 8))]
            elif kind == "truncate":
                del out[at:]
            else:
                out += draw(st.binary(min_size=1, max_size=64))
        return bytes(out)
    return mutate()
