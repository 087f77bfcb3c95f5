"""mooncake_client: the SDK inference servers embed (`Client`, `ReplicaConfig`), its transports and tools."""
from mooncake_client.client import BatchError, Client, ReplicaConfig, ReplicaInfo

__all__ = ["Client", "ReplicaConfig", "ReplicaInfo", "BatchError"]
