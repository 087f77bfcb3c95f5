"""mooncake_client.integrations: this store as a backend of inference servers' KV caches:
SGLang's HiCache storage (sglang.py), vLLM's KV connector (vllm.py), LMCache's remote
connector (lmcache.py). Each imports its host project only when used."""
