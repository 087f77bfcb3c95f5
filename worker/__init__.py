"""mooncake_worker: the per-node daemon that contributes segments to the pool and moves bytes."""
