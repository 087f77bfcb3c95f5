"""Every field of every MasterService request, validated through a real master over gRPC and
the framed metadata port alike: bad input gets a typed error (the whole call's, or its key's)
and changes nothing in the store (DESIGN.md section 5)."""
import json
import socket
import urllib.request

import grpc
import pytest
from polling import wait_until

from mooncake_client import Client
from mooncake_proto import metaframe, rpc
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto import mooncake_pb2_grpc as pb_grpc
from mooncake_proto.errors import ErrorCode

pytestmark = pytest.mark.timeout(90)

INVALID = ErrorCode.INVALID_PARAMS
SEGMENT_BYTES = 64 << 20  # conftest's cluster: two workers of 64 MiB
BAD_KEYS = ["", "k" * 4097, "é" * 2049]  # empty; 4097 bytes; 2049 characters, 4098 bytes
KEY_METHODS = {  # every call that takes keys, with a request of those keys
    "PutStart": lambda keys: pb.PutStartRequest(keys=keys, sizes=[8] * len(keys)),
    "PutEnd": lambda keys: pb.PutFinishRequest(keys=keys),
    "PutRevoke": lambda keys: pb.PutFinishRequest(keys=keys),
    "GetReplicas": lambda keys: pb.KeysRequest(keys=keys),
    "Exists": lambda keys: pb.KeysRequest(keys=keys),
    "Remove": lambda keys: pb.RemoveRequest(keys=keys, force=True),
}


class Grpc:
    """MasterService over gRPC: (0, response) or (the call's Mooncake code, its message)."""

    name = "grpc"

    def __init__(self, cluster):
        self.channel = rpc.client_channel(cluster.master_addr)
        self.stub = pb_grpc.MasterServiceStub(self.channel)

    def call(self, method: str, request) -> tuple[int, object]:
        try:
            return 0, getattr(self.stub, method)(request, timeout=30)
        except grpc.RpcError as exc:
            return _code_of(exc), exc.details()

    def raw(self, method: str, body: bytes) -> int:
        """The code a request of these exact bytes gets (a refusal keeps nothing open here)."""
        send = self.channel.unary_unary(f"/mooncake.v1.MasterService/{method}")
        try:
            send(body, timeout=30)
            return 0
        except grpc.RpcError as exc:
            return _code_of(exc)

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Framed:
    """The same calls over the framed metadata port, one connection for all (a refused frame
    costs its connection: raw() uses one of its own)."""

    name = "framed"

    def __init__(self, cluster):
        self.addr = cluster.master.info["meta"]
        self.sock = _connect(self.addr)

    def call(self, method: str, request) -> tuple[int, object]:
        method_id = metaframe.METHOD_IDS[method]
        body = request.SerializeToString()
        self.sock.sendall(metaframe.REQUEST.pack(metaframe.MAGIC, method_id, len(body)) + body)
        status, answer = _read_answer(self.sock)
        if status != 0:
            return status, answer.decode()
        return 0, metaframe.METHODS[method_id][2].FromString(answer)

    def raw(self, method: str, body: bytes) -> int:
        with _connect(self.addr) as s:
            s.sendall(metaframe.REQUEST.pack(metaframe.MAGIC, metaframe.METHOD_IDS[method],
                                             len(body)) + body)
            status, _ = _read_answer(s)
            assert s.recv(1) == b""  # garbage costs its connection
            return status

    def close(self):
        self.sock.close()


def _code_of(exc: grpc.RpcError):
    """The Mooncake code a servicer attached, else the bare gRPC status."""
    for key, value in exc.trailing_metadata() or ():
        if key == rpc.CODE_METADATA_KEY:
            return int(value)
    return exc.code()


def _connect(addr: str) -> socket.socket:
    host, port = addr.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=30)


def _read_answer(sock: socket.socket) -> tuple[int, bytes]:
    status, length = metaframe.RESPONSE.unpack(metaframe.recv_exact(sock, metaframe.RESPONSE.size))
    return status, metaframe.recv_exact(sock, length)


@pytest.fixture(params=[Grpc, Framed], ids=["grpc", "framed"])
def master(request, cluster):
    port = request.param(cluster)
    yield port
    port.close()


def store_state(cluster) -> dict:
    """What bad input must leave as it was: objects, workers and bytes used per tier."""
    addr = cluster.master.info["http"]
    with urllib.request.urlopen(f"http://{addr}/stats", timeout=10) as r:
        stats = json.load(r)
    return {"objects": stats["objects"], "pending": stats["pending"],
            "workers": sorted(w["worker_id"] for w in stats["workers"]),
            "used": {tier: t["used_bytes"] for tier, t in stats["tiers"].items()}}


@pytest.fixture
def unchanged(cluster):
    """Asserts at the end of the test that the store is as the test found it (tests that
    allocate on purpose give the ranges back with `release`)."""
    before = store_state(cluster)
    yield
    # a range `release` gave back comes free once its worker has acknowledged the removal
    # from its inventory (its next heartbeat): give that a moment, then insist
    try:
        wait_until(lambda: store_state(cluster) == before, 5, "the store as it was")
    except AssertionError:
        pass
    assert store_state(cluster) == before


@pytest.fixture
def client(cluster):
    with Client(cluster.master_addr, transports=("tcp",)) as c:
        yield c


def release(master, key: str, put_id: int) -> None:
    """Frees a range a test allocated at once: committed, unleased, then removed (a revoked
    put's range would stay held until its write grant could no longer be used)."""
    ended = master.call("PutEnd", pb.PutFinishRequest(keys=[key], put_ids=[put_id]))[1]
    assert key_codes(ended) == [0]
    assert key_codes(master.call("Remove", pb.RemoveRequest(keys=[key]))[1]) == [0]


def key_codes(response) -> list[int]:
    if isinstance(response, (pb.PutStartResponse, pb.GetReplicasResponse)):
        return [item.status.code for item in response.items]
    return [status.code for status in response.statuses]


# ---- keys ----

@pytest.mark.parametrize("method", KEY_METHODS)
def test_bad_keys_are_refused_per_key(master, method, unchanged):
    code, response = master.call(method, KEY_METHODS[method](BAD_KEYS))
    assert code == 0, response
    assert key_codes(response) == [INVALID] * len(BAD_KEYS)


@pytest.mark.parametrize("method", KEY_METHODS)
def test_a_key_of_4096_bytes_is_a_key(master, method, unchanged):
    code, response = master.call(method, KEY_METHODS[method](["é" * 2048]))
    assert code == 0
    if method != "PutStart":  # nothing under it: a miss, not a refusal
        assert key_codes(response) != [INVALID]
        return
    assert key_codes(response) == [0]
    release(master, "é" * 2048, response.items[0].put_id)


UNDECODABLE = {
    "key not UTF-8": b"\x0a\x02\xff\xfe",
    "truncated field": b"\x0a\x05ab",
    "varint past 10 bytes": b"\x10" + b"\xff" * 11,
    "field number 0": b"\x00\x01",
}


@pytest.mark.parametrize("body", UNDECODABLE.values(), ids=UNDECODABLE.keys())
@pytest.mark.parametrize("method", ["PutStart", "GetReplicas", "Exists"])
def test_undecodable_requests_are_invalid_and_the_master_goes_on(master, cluster, method, body,
                                                                 unchanged):
    assert master.raw(method, body) == INVALID  # over gRPC: INVALID_ARGUMENT with the code
    assert master.call("Exists", pb.KeysRequest(keys=["after-garbage"]))[0] == 0


def test_undecodable_grpc_requests_are_invalid_argument_not_unknown(cluster):
    with rpc.client_channel(cluster.master_addr) as channel:
        send = channel.unary_unary("/mooncake.v1.MasterService/Exists")
        with pytest.raises(grpc.RpcError) as info:
            send(UNDECODABLE["key not UTF-8"], timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "undecodable request" in info.value.details()
    assert "Traceback" not in cluster.master.log_tail(400)


# ---- sizes and replica_num ----

@pytest.mark.parametrize("size", [0, -1, -(1 << 63)])
def test_sizes_below_one_are_refused_per_key(master, size, unchanged):
    code, response = master.call("PutStart", pb.PutStartRequest(keys=["s", "s2"],
                                                                sizes=[size, size]))
    assert code == 0 and key_codes(response) == [INVALID, INVALID]


@pytest.mark.parametrize("size", [SEGMENT_BYTES + 1, (1 << 63) - 1])
def test_sizes_no_segment_holds_are_no_space_and_evict_nothing(master, cluster, client, size):
    key = f"kept-{master.name}-{size}"
    client.put(key, b"kept")
    before = store_state(cluster)
    code, response = master.call("PutStart", pb.PutStartRequest(keys=["huge"], sizes=[size]))
    assert code == 0
    assert key_codes(response)[0] == ErrorCode.NO_AVAILABLE_HANDLE  # nothing evicted for it
    assert store_state(cluster) == before
    assert client.get(key) == b"kept"


def test_a_size_no_segment_holds_is_no_space_at_once_even_under_leases(master, client):
    # a lease running out is room coming only where the object could fit
    client.put(f"leased-{master.name}", b"x")
    assert client.get(f"leased-{master.name}") == b"x"  # a lease now runs
    code, response = master.call("PutStart",
                                 pb.PutStartRequest(keys=["huge"], sizes=[SEGMENT_BYTES + 1]))
    assert key_codes(response) == [ErrorCode.NO_AVAILABLE_HANDLE]


def test_keys_and_sizes_of_different_lengths_are_a_whole_call_error(master, unchanged):
    for request in [pb.PutStartRequest(keys=["a", "b"], sizes=[1]),
                    pb.PutStartRequest(keys=["a"], sizes=[1, 2]),
                    pb.PutStartRequest(keys=[], sizes=[1])]:
        code, message = master.call("PutStart", request)
        assert code == INVALID and "sizes" in message


@pytest.mark.parametrize("replica_num", [65, 1000, (1 << 32) - 1])
def test_replica_num_over_the_limit_is_a_whole_call_error(master, replica_num, unchanged):
    request = pb.PutStartRequest(keys=["r"], sizes=[8],
                                 config=pb.ReplicaConfig(replica_num=replica_num))
    code, message = master.call("PutStart", request)
    assert code == INVALID and "replica_num" in message


@pytest.mark.parametrize("replica_num, replicas", [(0, 1), (1, 1), (64, 2)])
def test_replica_num_within_bounds_places_at_most_one_per_worker(master, replica_num, replicas,
                                                                 unchanged):
    key = f"rn-{master.name}-{replica_num}"
    request = pb.PutStartRequest(keys=[key], sizes=[8],
                                 config=pb.ReplicaConfig(replica_num=replica_num))
    code, response = master.call("PutStart", request)
    assert code == 0 and len(response.items[0].replicas) == replicas
    release(master, key, response.items[0].put_id)


def test_an_unknown_preferred_worker_is_only_a_preference(master, unchanged):
    key = f"pref-{master.name}"
    request = pb.PutStartRequest(keys=[key], sizes=[8],
                                 config=pb.ReplicaConfig(preferred_worker="no-such-worker\0"))
    code, response = master.call("PutStart", request)
    assert code == 0 and key_codes(response) == [0]
    release(master, key, response.items[0].put_id)


# ---- batches, put ids, message sizes ----

@pytest.mark.parametrize("method", KEY_METHODS)
def test_a_batch_over_4096_keys_is_a_whole_call_error(master, method, unchanged):
    code, message = master.call(method, KEY_METHODS[method]([f"b{i}" for i in range(4097)]))
    assert code == INVALID and "4097 keys" in message


def test_a_batch_of_4096_keys_is_served(master, unchanged):
    code, response = master.call("Exists", pb.KeysRequest(keys=[f"b{i}" for i in range(4096)]))
    assert code == 0 and key_codes(response) == [ErrorCode.OBJECT_NOT_FOUND] * 4096


@pytest.mark.parametrize("method", ["PutEnd", "PutRevoke"])
@pytest.mark.parametrize("keys, put_ids", [(["a", "b"], [1]), (["a"], [1, 2]), ([], [7])])
def test_put_ids_of_the_wrong_length_are_a_whole_call_error(master, method, keys, put_ids,
                                                            unchanged):
    code, message = master.call(method, pb.PutFinishRequest(keys=keys, put_ids=put_ids))
    assert code == INVALID and "put ids" in message


def test_a_put_id_of_another_put_commits_nothing(master, client, unchanged):
    key = f"put-id-{master.name}"
    code, started = master.call("PutStart", pb.PutStartRequest(keys=[key], sizes=[8]))
    put_id = started.items[0].put_id
    for wrong in (put_id + 1, 0, (1 << 64) - 1):
        for method in ("PutEnd", "PutRevoke"):
            code, response = master.call(method, pb.PutFinishRequest(keys=[key], put_ids=[wrong]))
            assert code == 0 and key_codes(response) == [ErrorCode.OBJECT_NOT_FOUND]
        assert client.exists(key) is False
    release(master, key, put_id)


def test_a_grpc_request_over_the_message_cap_is_refused_by_the_master(cluster):
    # a channel that sends more than ours may: the master's own cap must refuse it
    options = [("grpc.max_send_message_length", 2 * rpc.MAX_MESSAGE_BYTES)]
    with grpc.insecure_channel(cluster.master_addr, options=options) as channel:
        stub = pb_grpc.MasterServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Exists(pb.KeysRequest(keys=["k" * 4096] * 17000), timeout=60)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.Exists(pb.KeysRequest(keys=["after"]), timeout=30).statuses


def test_an_answer_over_the_message_cap_is_an_error_not_a_broken_frame(cluster):
    """4096 keys of 4096 NULs: each echoed twice (key, and escaped in its message) makes an
    answer larger than 64 MiB, which no client may accept; the master says so instead."""
    with Grpc(cluster) as port:
        code, _ = port.call("Exists", pb.KeysRequest(keys=["\0" * 4096] * 4096))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED  # gRPC's own cap, no Mooncake code
    framed = Framed(cluster)
    try:
        code, message = framed.call("Exists", pb.KeysRequest(keys=["\0" * 4096] * 4096))
        assert code == INVALID and "frame limit" in message
        assert framed.call("Exists", pb.KeysRequest(keys=["next"]))[0] == 0  # same connection
    finally:
        framed.close()


# ---- worker registration (gRPC only: the framed port carries object calls) ----

def _segment(segment_id=0, tier=pb.TIER_DRAM, size_bytes=1 << 20):
    return pb.SegmentInfo(segment_id=segment_id, tier=tier, size_bytes=size_bytes, path="/x")


BAD_REGISTRATIONS = {
    "empty worker_id": dict(worker_id="", segments=[_segment()]),
    "worker_id over 1024 bytes": dict(worker_id="w" * 1025, segments=[_segment()]),
    "worker_id of 70000 bytes": dict(worker_id="w" * 70000, segments=[_segment()]),
    "no segment": dict(worker_id="bad-reg", segments=[]),
    "tier unspecified": dict(worker_id="bad-reg", segments=[_segment(tier=0)]),
    "unknown tier": dict(worker_id="bad-reg", segments=[_segment(tier=7)]),
    "segment of 0 bytes": dict(worker_id="bad-reg", segments=[_segment(size_bytes=0)]),
    "segment id twice": dict(worker_id="bad-reg", segments=[_segment(), _segment()]),
}


@pytest.mark.parametrize("fields", BAD_REGISTRATIONS.values(), ids=BAD_REGISTRATIONS.keys())
def test_bad_registrations_are_refused_and_register_nothing(cluster, fields, unchanged):
    with Grpc(cluster) as port:
        code, message = port.call("RegisterWorker", pb.RegisterWorkerRequest(**fields))
    assert code == INVALID, message


def test_a_worker_id_of_1024_bytes_registers_and_its_grants_sign(fresh_cluster):
    """The limit is the grant format's: a longer id could never be granted (it broke every
    PutStart placed on it with an internal error before it was refused)."""
    worker_id = "w" * 1024
    with Grpc(fresh_cluster(workers=0)) as port:  # a master of its own: this worker never serves
        code, _ = port.call("RegisterWorker", pb.RegisterWorkerRequest(
            worker_id=worker_id, data_addr="127.0.0.1:9", segments=[_segment()]))
        assert code == 0
        code, _ = port.call("Heartbeat", pb.HeartbeatRequest(worker_id=worker_id))
        assert code == 0  # its first: the master places nothing on a worker before that
        code, response = port.call("PutStart", pb.PutStartRequest(
            keys=["on-long-id"], sizes=[8], config=pb.ReplicaConfig(preferred_worker=worker_id)))
    assert code == 0 and response.items[0].replicas[0].worker_id == worker_id
    assert len(response.items[0].replicas[0].grant) == 32 + 1024 + 32


def test_a_heartbeat_of_an_unknown_worker_only_says_so(cluster, unchanged):
    with Grpc(cluster) as port:
        code, response = port.call("Heartbeat", pb.HeartbeatRequest(worker_id="ghost\0"))
    assert code == 0 and response.registered is False
