"""mooncake_client: the SDK inference servers embed (`Client`, `ReplicaConfig`), its transports and tools."""
from mooncake_client.call_gate import ClientClosedError
from mooncake_client.client import BatchError, Client, KeyInfo, ReplicaConfig, ReplicaInfo

__all__ = ["Client", "ReplicaConfig", "ReplicaInfo", "KeyInfo", "BatchError", "ClientClosedError"]
