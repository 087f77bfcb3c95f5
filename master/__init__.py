"""mooncake_master: cluster metadata (objects, replicas, leases, allocators) and its gRPC/HTTP shell."""
