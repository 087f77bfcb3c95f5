"""Answers the servicer encodes after releasing its lock (master/servicer.py `_Unlocked`): a
registration's inventory and a heartbeat's updates, which would otherwise hold up every read
for about a microsecond per entry."""
import asyncio
import threading

from mooncake_master import servicer as servicer_module
from mooncake_master.meta_server import FrameContext
from mooncake_master.servicer import MasterServicer
from mooncake_master.state import TIER_DRAM, MasterConfig, MasterState, PlacementConfig
from mooncake_proto import mooncake_pb2 as pb

NOW = 1000.0


def _lock_is_free(lock) -> bool:
    """Whether another thread could take `lock` now (an RLock is re-entrant for its owner)."""
    result = []

    def probe():
        got = lock.acquire(blocking=False)
        result.append(got)
        if got:
            lock.release()
    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return result[0]


def _register(servicer, inventory=()) -> pb.RegisterWorkerResponse:
    request = pb.RegisterWorkerRequest(
        worker_id="w", node_id="node", data_addr="h:1", grpc_addr="h:2",
        segments=[pb.SegmentInfo(segment_id=0, tier=TIER_DRAM, size_bytes=1 << 20,
                                 path="/dev/shm/mooncake-w-dram")],
        inventory=list(inventory))
    reply = asyncio.run(servicer.RegisterWorker(request, FrameContext()))
    servicer.state.heartbeat("w", NOW)  # its first, right after: it holds the new key
    return reply


def test_heartbeat_updates_and_registration_inventory_are_encoded_outside_the_lock(monkeypatch):
    state = MasterState(MasterConfig())
    servicer = MasterServicer(state, clock=lambda: NOW)
    _register(servicer)
    state.put_start(["k", "j"], [100, 200], PlacementConfig(), "node", NOW)
    state.put_end(["k", "j"], NOW)

    seen = []
    encode_entry, encode_updates = servicer_module._fill_entry, servicer_module.encode_updates

    def checked_entry(out, entry):
        seen.append(_lock_is_free(servicer.lock))
        encode_entry(out, entry)

    def checked_updates(updates):
        seen.append(_lock_is_free(servicer.lock))
        return encode_updates(updates)
    monkeypatch.setattr(servicer_module, "_fill_entry", checked_entry)
    monkeypatch.setattr(servicer_module, "encode_updates", checked_updates)

    answer = asyncio.run(servicer.Heartbeat(pb.HeartbeatRequest(worker_id="w"), FrameContext()))
    reply = pb.HeartbeatResponse.FromString(answer.SerializeToString())  # encoded bytes
    assert reply.registered
    assert sorted(u.entry.key for u in reply.updates) == ["j", "k"]
    assert [u.seq for u in reply.updates] == [1, 2]

    # the same worker again, bringing its inventory: the answer lists what it holds
    again = _register(servicer, [u.entry for u in reply.updates])
    assert sorted(e.key for e in again.inventory) == ["j", "k"]
    assert len(seen) == 3 and all(seen), \
        "updates or an entry were encoded while the servicer's lock was held"
    assert servicer.rpc_stats.methods["Heartbeat"].count == 1
    assert servicer.rpc_stats.methods["RegisterWorker"].count == 2
