"""`mooncake.store` for those who opt in (mooncake_client/compat/alias.py): mooncake-pool's
MooncakeDistributedStore and ReplicateConfig under Mooncake's import path."""
from mooncake_client.compat.store import (BufferHandle, MooncakeDistributedStore,
                                          ReplicaDescriptor, ReplicateConfig)

__all__ = ["MooncakeDistributedStore", "ReplicateConfig", "ReplicaDescriptor", "BufferHandle"]
