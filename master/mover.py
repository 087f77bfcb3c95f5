"""Carries out the moves MasterState plans (demotions, promotions, copies to other workers):
asks each source worker to copy over WorkerService.MoveReplicas, then reports every outcome
back to the state.

The state decides (master/tiering.py); this is the I/O shell around it. A move's grants let
the worker read the source range and write the reserved target, nothing else, and expire
with the move's timeout. Reads keep using the old replica until finish_move swaps it.
"""
from __future__ import annotations

import asyncio
import logging
import time

import grpc

from mooncake_master.state import MOVE_DONE, MOVE_FAILED, MOVE_UNKNOWN, MasterState, Move
from mooncake_proto import grants
from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto import mooncake_pb2_grpc as pb_grpc
from mooncake_proto import rpc
from mooncake_proto.daemon import kv

log = logging.getLogger("mooncake.master")

POLL_INTERVAL_S = 0.1
BATCH_BYTES = 64 << 20  # one RPC's worth: its space comes free as soon as it is answered


class Mover:
    def __init__(self, state: MasterState, lock, clock=time.monotonic, wall_clock=time.time,
                 tls: rpc.Tls = rpc.NO_TLS):
        self.state = state
        self.tls = tls  # with tls.ca, channels to workers use TLS and verify them with it
        self.lock = lock
        self.clock = clock
        self.wall_clock = wall_clock
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._calls: set[asyncio.Task] = set()

    def wake(self) -> None:
        """Called from any thread (the framed port's too) when the state planned moves."""
        self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=POLL_INTERVAL_S)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            with self.lock:
                batches = self._batches(self.state.take_moves(self.clock()))
            for grpc_addr, request, moves in batches:
                task = asyncio.create_task(self._send(grpc_addr, request, moves))
                self._calls.add(task)
                task.add_done_callback(self._calls.discard)
        await asyncio.gather(*self._calls, return_exceptions=True)
        for channel in self._channels.values():
            await channel.close()

    def _batches(self, moves: list[Move]) -> list[tuple[str, pb.MoveRequest, list[Move]]]:
        """Signed MoveRequests, one worker each, at most BATCH_BYTES apiece (under the lock)."""
        expiry_ms = int((self.wall_clock() + self.state.config.move_timeout_s
                         + self.state.config.grant_margin_s) * 1000)
        out: list[tuple[str, pb.MoveRequest, list[Move]]] = []
        open_batch: dict[str, tuple[str, pb.MoveRequest, list[Move]]] = {}
        batch_bytes: dict[str, int] = {}  # of each worker's open batch
        for move in moves:
            worker = self.state.workers.get(move.worker_id)
            if worker is None:
                continue  # dropped meanwhile: the state already forgot its moves
            batch = open_batch.get(move.worker_id)
            if batch is None or batch_bytes[move.worker_id] >= BATCH_BYTES:
                batch = open_batch[move.worker_id] = (worker.grpc_addr, pb.MoveRequest(), [])
                batch_bytes[move.worker_id] = 0
                out.append(batch)
            # a copy to another worker (REPLICATE) writes there under a grant of that worker's
            target = self.state.workers.get(move.dst.worker_id)
            if target is None:
                continue  # dropped meanwhile, like above
            batch_bytes[move.worker_id] += move.src.length
            src, dst = move.src, move.dst
            read = grants.Grant(grants.Op.COPY, worker.worker_id, src.segment_id, src.offset,
                                src.length, expiry_ms)
            write = grants.Grant(grants.Op.WRITE, target.worker_id, dst.segment_id, dst.offset,
                                 dst.length, expiry_ms)
            batch[1].items.add(src_segment_id=src.segment_id, src_offset=src.offset,
                               dst_segment_id=dst.segment_id, dst_offset=dst.offset,
                               length=src.length,
                               read_grant=grants.sign(worker.grant_key, read),
                               write_grant=grants.sign(target.grant_key, write),
                               dst_data_addr="" if target is worker else target.data_addr)
            batch[2].append(move)
        return out

    async def _send(self, grpc_addr: str, request: pb.MoveRequest, moves: list[Move]) -> None:
        started = time.monotonic()
        channel = self._channels.get(grpc_addr)
        if channel is None:
            channel = self._channels[grpc_addr] = rpc.aio_channel(grpc_addr, self.tls)
        try:
            reply = await pb_grpc.WorkerServiceStub(channel).MoveReplicas(
                request, timeout=self.state.config.move_timeout_s)
            outcomes = [MOVE_DONE if st.code == 0 else MOVE_FAILED for st in reply.statuses]
            outcomes += [MOVE_UNKNOWN] * (len(moves) - len(outcomes))
            failures = [st.message for st in reply.statuses if st.code != 0]
        except grpc.aio.AioRpcError as exc:
            outcomes = [MOVE_UNKNOWN] * len(moves)
            failures = [f"{exc.code().name}: {exc.details()}"]
        with self.lock:
            now = self.clock()
            swapped = sum(self.state.finish_move(m.move_id, o, now)
                          for m, o in zip(moves, outcomes))
        kinds = sorted({m.kind for m in moves})
        log.info(kv("moves_finished", worker_id=moves[0].worker_id, kinds=",".join(kinds),
                    moves=len(moves), swapped=swapped,
                    bytes=sum(m.src.length for m in moves),
                    ms=f"{(time.monotonic() - started) * 1000:.1f}"))
        if failures:
            log.warning(kv("moves_failed", worker_id=moves[0].worker_id, failed=len(failures),
                           first=failures[0]))
        self._wake.set()  # planning may have waited for this space
