"""WorkerService: what the master and clients may ask a worker over gRPC (an adapter, no logic)."""
from __future__ import annotations

from mooncake_proto import mooncake_pb2 as pb
from mooncake_proto import mooncake_pb2_grpc as pb_grpc


class WorkerServicer(pb_grpc.WorkerServiceServicer):
    def __init__(self, node):
        self.node = node  # mooncake_worker.node.WorkerNode

    async def Describe(self, request, context):
        node = self.node
        return pb.DescribeResponse(worker_id=node.worker_id, node_id=node.node_id,
                                   data_addr=node.data_addr, segments=node.segment_infos(),
                                   registered=node.registered)
