"""vLLM's KV connector on this store: vLLM's own MooncakeStoreConnector, unchanged, whose
`mooncake.store` is our MooncakeDistributedStore (mooncake_client.compat). Importing this
module opts its process into the alias (compat/alias.py), so neither PYTHONPATH nor a Mooncake
wheel is needed; vLLM imports it in the scheduler and in every worker process.

    export MOONCAKE_CONFIG_PATH=/etc/mooncake/vllm.json
    vllm serve MODEL --kv-transfer-config '{"kv_connector": "MooncakePoolConnector",
        "kv_connector_module_path": "mooncake_client.integrations.vllm", "kv_role": "kv_both"}'

with vllm.json as vLLM's MooncakeStoreConnector reads it:

    {"metadata_server": "P2PHANDSHAKE", "master_server_address": "10.0.0.1:50051",
     "protocol": "tcp", "global_segment_size": "4GB", "local_buffer_size": "4GB"}

The sizes are checked but give no memory: the node's mooncake-worker holds the pool. vLLM
hands the store the addresses of its KV-cache blocks: CPU memory here (vLLM's CPU backend, or
CPU offloading); GPU memory needs a device copy this store does not have yet (README).
"""
from __future__ import annotations

import importlib

from mooncake_client.compat import alias

alias.install()

# where vLLM keeps its connector, newest layout first (it has moved twice)
_VLLM_MODULES = (
    "vllm.distributed.kv_transfer.kv_connector.v1.mooncake.store.connector",
    "vllm.distributed.kv_transfer.kv_connector.v1.mooncake.store.mooncake_store_connector",
    "vllm.distributed.kv_transfer.kv_connector.v1.mooncake.mooncake_store_connector",
)


def _vllm_connector_class() -> type:
    importlib.import_module("vllm")  # ModuleNotFoundError "No module named 'vllm'": install it
    missing = []
    for name in _VLLM_MODULES:
        try:
            return importlib.import_module(name).MooncakeStoreConnector
        except ModuleNotFoundError as exc:
            if not (exc.name and name.startswith(exc.name)):
                raise  # the module is there, something it imports is not: say so
            missing.append(name)
    raise ImportError(f"this vLLM has no MooncakeStoreConnector (looked for {', '.join(missing)})")


class MooncakePoolConnector(_vllm_connector_class()):
    """vLLM's MooncakeStoreConnector over mooncake-pool: the same scheduler and worker logic
    (prefix lookups with batch_is_exist, saves with batch_put_from_multi_buffers backing off
    on -200, loads with batch_get_into_multi_buffers), answered by our store."""
