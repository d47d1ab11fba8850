"""torchrun worker (2 processes) for tests/test_hub.py: every rank resolves a cached hub name through
``resolve_on_node``, then a name missing from the cache. Prints ``RESOLVED path`` and ``MISS error``.

argv: CACHED_REPO_ID MISSING_REPO_ID
"""
import sys

import torch.distributed as dist

from igrpo_megatron.config import ModelConfig
from igrpo_megatron.weights.hub import resolve_on_node

dist.init_process_group("gloo")
cached, missing = sys.argv[1:3]
print(f"RESOLVED {resolve_on_node(ModelConfig(hf_path=cached)).hf_path}", flush=True)
try:
    resolve_on_node(ModelConfig(hf_path=missing))
except Exception as e:  # noqa: BLE001 - the test asserts the type on both ranks
    print(f"MISS {type(e).__name__}: {e}", flush=True)
dist.destroy_process_group()
