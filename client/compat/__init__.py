"""mooncake_client.compat: Mooncake's Python store API (`MooncakeDistributedStore`,
`ReplicateConfig`) over this store, for integrations written against Mooncake; and the opt-in
alias that lets `from mooncake.store import ...` find it (alias.py)."""
from mooncake_client.compat.config import MooncakeConfig
from mooncake_client.compat.store import (BufferHandle, MooncakeDistributedStore,
                                          ReplicaDescriptor, ReplicateConfig)

__all__ = ["MooncakeDistributedStore", "ReplicateConfig", "ReplicaDescriptor", "BufferHandle",
           "MooncakeConfig"]
