"""Fuzzes the gRPC handlers of a real master (every MasterService call) and a real worker
(WorkerService): request messages with random fields built from their descriptors, and raw
bytes (random, or a real message mutated) that may not decode at all. Every call is answered
with a status a servicer chose (never UNKNOWN or INTERNAL: an exception no handler expected),
and the daemons keep serving: a normal client get works after each call."""
import os

import grpc
import pytest
from fuzzing import fuzz_settings, keys, messages, mutated
from hypothesis import given
from hypothesis import strategies as st

from mooncake_proto import grants
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto import mooncake_pb2_grpc as pb_grpc
from mooncake_proto import rpc

pytestmark = pytest.mark.timeout(3600)  # a long run on demand; the bounded one takes seconds

KNOWN = ["fuzz/canary", "fuzz/grpc-0", "fuzz/grpc-1"]
# a handler's failure to cope, a hang, or a daemon gone
UNEXPECTED = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE,
              grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


def calls(service: str) -> st.SearchStrategy:
    """(method path, request bytes, request class) for any method of the service: a message
    with random fields, or bytes that may not decode."""
    methods = list(pb.DESCRIPTOR.services_by_name[service].methods)
    structured = st.sampled_from(methods).flatmap(lambda m: messages(
        m.input_type, keys(KNOWN)).map(lambda msg: (m, msg.SerializeToString())))
    raw = st.one_of(structured.flatmap(lambda c: mutated(c[1]).map(lambda b: (c[0], b))),
                    st.tuples(st.sampled_from(methods), st.binary(max_size=200)))
    return st.one_of(structured, raw).map(
        lambda c: (f"/{c[0].containing_service.full_name}/{c[0].name}", c[1]))


def send(addr: str, path: str, body: bytes) -> str:
    """The call's outcome: "ok" or the status name; fails on an unexpected one."""
    with rpc.client_channel(addr) as channel:
        try:
            channel.unary_unary(path)(body, timeout=30)
            return "ok"
        except grpc.RpcError as exc:
            assert exc.code() not in UNEXPECTED, f"{path}: {exc.code()} {exc.details()}"
            return exc.code().name.lower()


@pytest.fixture(scope="module")
def known(canary):
    for key in KNOWN[1:]:
        canary.client.put(key, key.encode(), canary.config)


@fuzz_settings(400)
@given(call=calls("MasterService"))
def test_master_handlers_answer_anything_and_keep_serving(fuzz_cluster, canary, tally, known,
                                                          call):
    path, body = call
    outcome = send(fuzz_cluster.master_addr, path, body)
    tally.count("master_grpc", outcome)
    tally.answers["master_grpc." + path.rsplit("/", 1)[1]][outcome] += 1
    canary.check()


@fuzz_settings(150)
@given(call=calls("WorkerService"))
def test_worker_handlers_answer_anything_and_keep_serving(fuzz_cluster, canary, tally, call):
    path, body = call
    outcome = send(fuzz_cluster.workers["worker-0"].info["grpc"], path, body)
    tally.count("worker_grpc", outcome)
    canary.check()


segments = st.lists(st.builds(
    pb.SegmentInfo, tier=st.sampled_from([pb.TIER_DRAM, pb.TIER_SSD]),
    size_bytes=st.one_of(st.integers(1, 1 << 30), st.integers(1, (1 << 64) - 1)),
    path=st.text(max_size=40)), min_size=1, max_size=3)
worker_ids = st.one_of(  # "fuzz-junk/...": never a real worker's id
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40),
    st.integers(1000, 70000).map(lambda n: "é" * (n // 2))).map(lambda t: "fuzz-junk/" + t)


@fuzz_settings(100)
@given(worker_id=worker_ids, segments=segments, rdma=st.booleans(),
       addr=st.text(max_size=30), size=st.integers(1, 1 << 20))
def test_accepted_registrations_get_placements_and_signed_grants(
        fuzz_cluster, canary, tally, worker_id, segments, rdma, addr, size):
    """Workers the master accepts, whatever their ids, addresses and segments, get replicas
    with grants it can sign (a worker it cannot grant for must be refused at registration:
    a 70000-byte id once broke every PutStart placed on it). Each heartbeats once (the master
    places nothing on a worker before that) and never again: the master buries them after
    --worker-ttl."""
    for i, segment in enumerate(segments):
        segment.segment_id = i
    request = pb.RegisterWorkerRequest(worker_id=worker_id, data_addr=addr, grpc_addr=addr,
                                       segments=segments, rdma=rdma)
    with rpc.client_channel(fuzz_cluster.master_addr) as channel:
        stub = pb_grpc.MasterServiceStub(channel)
        if len(worker_id.encode()) > grants.MAX_WORKER_ID_BYTES:
            with pytest.raises(grpc.RpcError) as refused:
                stub.RegisterWorker(request, timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            tally.count("registrations", "refused")
            return
        stub.RegisterWorker(request, timeout=30)
        stub.Heartbeat(pb.HeartbeatRequest(worker_id=worker_id), timeout=30)
        key = f"fuzz/junk-put/{os.urandom(8).hex()}"
        item = stub.PutStart(pb.PutStartRequest(keys=[key], sizes=[size], config=pb.ReplicaConfig(
            preferred_worker=worker_id)), timeout=30).items[0]
        if item.status.code == 0:
            stub.PutRevoke(pb.PutFinishRequest(keys=[key]), timeout=30)
    for replica in item.replicas:  # each grant signed for its worker's id, whatever it is
        assert len(replica.grant) == 64 + len(replica.worker_id.encode())
    placed = any(r.worker_id == worker_id for r in item.replicas)
    tally.count("registrations", "placed_on_it" if placed else "registered")
    canary.check()
