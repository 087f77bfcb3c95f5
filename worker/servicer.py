"""WorkerService: what the master and clients may ask a worker over gRPC (an adapter, no logic)."""
from __future__ import annotations

import asyncio

from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto import mooncake_pb2_grpc as pb_grpc
from mooncake_proto.errors import InternalError, MooncakeError
from mooncake_proto.rpc import abort_with


class WorkerServicer(pb_grpc.WorkerServiceServicer):
    def __init__(self, node):
        self.node = node  # mooncake_worker.node.WorkerNode

    async def Describe(self, request, context):
        node = self.node
        return pb.DescribeResponse(worker_id=node.worker_id, node_id=node.node_id,
                                   data_addr=node.data_addr, segments=node.segment_infos(),
                                   registered=node.registered, rdma=node.rdma.serving)

    async def MoveReplicas(self, request, context):
        # copies take milliseconds to seconds of memory and disk time: off the event loop
        statuses = await asyncio.to_thread(self.node.mover.move_batch, request.items)
        response = pb.MoveResponse()
        for status in statuses:
            response.statuses.add(code=status.code, message=status.message)
        return response

    async def RdmaConnect(self, request, context):
        node = self.node
        try:
            node.rdma.authorize(node.data_server.grant_key, request.grant, node.worker_id)
            # verbs calls block (briefly) in the kernel: off the event loop
            endpoint = await asyncio.to_thread(node.rdma.connect, request.client_endpoint)
        except MooncakeError as exc:
            await abort_with(context, exc)
        except OSError as exc:  # verbs refused (out of queue pairs, port went down)
            await abort_with(context, InternalError(f"RDMA connect failed: {exc}"))
        return pb.RdmaConnectResponse(worker_endpoint=endpoint, segments=[
            pb.RdmaSegment(segment_id=s.segment_id, addr=s.addr, rkey=s.rkey,
                           size_bytes=s.size_bytes) for s in node.rdma.segments])
