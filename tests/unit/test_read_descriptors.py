"""What a GetReplicas answer carries per replica, through the servicer's per-segment cache of
shared descriptor fields and grant keys (master/servicer.py `_segment_descriptor`)."""
import time

from mooncake_master.meta_server import MetaServer
from mooncake_master.model import SegmentSpec
from mooncake_master.servicer import MasterServicer
from mooncake_master.state import TIER_DRAM, MasterConfig, MasterState, PlacementConfig
from mooncake_proto import grants, metaframe
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto.errors import ErrorCode

NOW = 1000.0


def _register(state: MasterState, key: bytes, data_addr: str, path: str) -> None:
    state.register_worker("w", "node", data_addr, "h:2", "", [SegmentSpec(0, TIER_DRAM, 1 << 20, path)],
                          key, NOW)
    state.heartbeat("w", NOW)  # holds the new key: its replicas are handed out


def _get(meta: MetaServer, *keys: str) -> pb.GetReplicasResponse:
    status, payload = meta.answer(metaframe.METHOD_IDS["GetReplicas"],
                                  pb.KeysRequest(keys=list(keys)).SerializeToString())
    assert status == 0
    return pb.GetReplicasResponse.FromString(payload)


def test_descriptors_follow_a_worker_that_registers_again():
    state = MasterState(MasterConfig())
    servicer = MasterServicer(state, clock=lambda: NOW)
    meta = MetaServer(servicer)
    _register(state, b"a" * 32, "h:1", "/dev/shm/mooncake-w-dram")
    state.put_start(["k", "j"], [100, 200], PlacementConfig(), "node", NOW)
    state.put_end(["k", "j"], NOW)

    first = _get(meta, "k", "j", "missing")
    assert [i.status.code for i in first.items] == [0, 0, ErrorCode.OBJECT_NOT_FOUND]
    for item, size in zip(first.items, (100, 200)):
        (r,) = item.replicas
        assert (r.worker_id, r.data_addr, r.path, r.segment_size, r.length) == \
            ("w", "h:1", "/dev/shm/mooncake-w-dram", 1 << 20, size)
        grant = grants.verify(b"a" * 32, r.grant, "w", int(time.time() * 1000))
        assert (grant.op, grant.offset, grant.length) == (grants.Op.READ, r.offset, size)
    assert first.items[0].replicas[0].offset != first.items[1].replicas[0].offset

    # a restart with the same segment keeps the objects; the new key and address must show
    _register(state, b"b" * 32, "h:9", "/dev/shm/mooncake-w-dram")
    (r,) = _get(meta, "k").items[0].replicas
    assert r.data_addr == "h:9"
    grants.verify(b"b" * 32, r.grant, "w", int(time.time() * 1000))
    try:
        grants.verify(b"a" * 32, r.grant, "w", int(time.time() * 1000))
    except grants.GrantError:
        pass
    else:
        raise AssertionError("a grant signed with the old key after the worker registered again")


def test_a_signer_signs_as_sign_does():
    for grant in (grants.Grant(grants.Op.READ, "w", 0, 0, 1, 5),
                  grants.Grant(grants.Op.WRITE, "wörker", 7, 1 << 40, 4096, 2**62)):
        signer = grants.Signer(b"k" * 32, grant.worker_id)
        token = signer.sign(grant.op, grant.segment_id, grant.offset, grant.length,
                            grant.expiry_ms)
        assert token == grants.sign(b"k" * 32, grant)
        assert grants.verify(b"k" * 32, token, grant.worker_id, 0) == grant
        assert signer.sign(grant.op, grant.segment_id, grant.offset, grant.length,
                           grant.expiry_ms) == token  # the copied key schedule is not used up
