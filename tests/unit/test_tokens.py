"""Tokens and roles without sockets: the tokens file, the one check, every call's role, and the
framed port's path through the same check."""
import hmac

import pytest

from mooncake_master import auth
from mooncake_master.auth import Authenticator, Role, load_tokens
from mooncake_master.meta_server import MetaServer
from mooncake_master.servicer import MasterServicer
from mooncake_master.state import MasterConfig, MasterState
from mooncake_proto import metaframe
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto import rpc
from mooncake_proto.errors import ErrorCode, PermissionDeniedError, UnauthenticatedError

TOKENS = {Role.WORKER: ["w"], Role.CLIENT: ["c1", "c2"], Role.ADMIN: ["a"]}


def test_a_tokens_file_takes_a_token_or_a_list_per_role(tmp_path):
    path = tmp_path / "tokens.yaml"
    path.write_text("worker: w\nclient: [c1, c2]\nadmin: a\n")
    assert load_tokens(str(path)) == TOKENS
    path.write_text("client: only\n")
    assert load_tokens(str(path)) == {Role.CLIENT: ["only"]}


@pytest.mark.parametrize("token, worker, client, admin", [
    ("w", True, False, False),
    ("c1", False, True, False),
    ("c2", False, True, False),
    ("a", True, True, True),  # admin implies the others
])
def test_roles(token, worker, client, admin):
    a = Authenticator(TOKENS)
    for needed, allowed in ((Role.WORKER, worker), (Role.CLIENT, client), (Role.ADMIN, admin)):
        if allowed:
            a.check(token, needed, "Call")
        else:
            with pytest.raises(PermissionDeniedError, match=f"needs a {needed.value} token"):
                a.check(token, needed, "Call")


@pytest.mark.parametrize("token", ["", "nope", "c", "c1 ", "C1"])
def test_a_missing_or_unknown_token_is_unauthenticated(token):
    with pytest.raises(UnauthenticatedError):
        Authenticator(TOKENS).check(token, Role.CLIENT, "Exists")


def test_an_open_authenticator_lets_everything_through():
    a = Authenticator()
    assert a.open
    a.check("", Role.ADMIN, "RemoveAll")


@pytest.mark.parametrize("token", ["w", "a", "nope"])
def test_every_configured_token_is_compared_whatever_matches(monkeypatch, token):
    compared, real = [], hmac.compare_digest

    def counting(x, y):
        compared.append((x, y))
        return real(x, y)
    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    Authenticator(TOKENS).roles_of(token)
    assert len(compared) == 4 and all(len(x) == len(y) == 32 for x, y in compared)


def test_every_master_call_needs_a_role():
    service = pb.DESCRIPTOR.services_by_name["MasterService"]
    roles = {m.name: getattr(getattr(MasterServicer, m.name), "required_role", None)
             for m in service.methods}
    assert roles == {
        "Hello": Role.CLIENT, "RegisterWorker": Role.WORKER, "Heartbeat": Role.WORKER,
        "PutStart": Role.CLIENT, "PutEnd": Role.CLIENT, "PutRevoke": Role.CLIENT,
        "GetReplicas": Role.CLIENT, "Exists": Role.CLIENT, "ExistsPrefix": Role.CLIENT,
        "Remove": Role.CLIENT,
        "RemoveAll": Role.ADMIN, "ListKeys": Role.ADMIN, "DeregisterWorker": Role.WORKER,
        "DrainWorker": Role.ADMIN}


@pytest.mark.parametrize("metadata, token", [
    ((("authorization", "Bearer abc"),), "abc"),
    ((("authorization", "bearer abc"),), "abc"),
    ((("x-other", "1"), ("authorization", "Bearer abc")), "abc"),
    ((("authorization", "Basic abc"),), ""),
    ((), ""),
    (None, ""),
])
def test_the_bearer_token_of_call_metadata(metadata, token):
    assert rpc.bearer_token(metadata) == token


@pytest.mark.parametrize("token", ["", "two words", "tab\there", "é", "x" * 4097])
def test_tokens_that_cannot_travel_in_metadata(token):
    with pytest.raises(ValueError):
        rpc.check_token(token)


def test_framed_calls_pass_the_servicers_check():
    servicer = MasterServicer(MasterState(MasterConfig()), auth=Authenticator(TOKENS))
    meta = MetaServer(servicer)
    body = pb.KeysRequest(keys=["k"]).SerializeToString()
    exists = metaframe.METHOD_IDS["Exists"]
    status, message = meta.answer(exists, body)
    assert status == ErrorCode.UNAUTHENTICATED and message == b"Exists: no bearer token"
    assert meta.answer(exists, body, "w")[0] == ErrorCode.PERMISSION_DENIED
    status, payload = meta.answer(exists, body, "c2")
    assert status == 0 and pb.ExistsResponse.FromString(payload).statuses[0].key == "k"
