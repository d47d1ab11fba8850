"""Model names to local folders: a local path stays as it is, a hub name becomes a cache snapshot.

Megatron's weight loading, vLLM's server and the converters all read a local folder, so a hub
name (``deepseek-ai/DeepSeek-R1-Distill-Qwen-7B``) is resolved once, up front, through
``huggingface_hub.snapshot_download`` — only the files a run reads (safetensors, configs,
tokenizer, chat template), honouring ``HF_HOME`` / ``HF_HUB_CACHE`` / ``HF_HUB_OFFLINE`` — and the
run then names the snapshot folder everywhere. Under torchrun the first rank of each node
downloads while the node's other ranks wait, then read the same snapshot from the cache.
"""
from __future__ import annotations

import dataclasses
import os

from igrpo_megatron.config import ConfigError, looks_local

#: What a run reads from a model repository; weights in other formats are never downloaded.
HUB_FILES = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.jinja", "*.model", "*.txt", "*.tiktoken"]


def is_local(name: str) -> bool:
    """A path the user means as local: it exists, or it cannot be a hub name (config.looks_local)."""
    return os.path.exists(name) or looks_local(name)


def resolve_model(name: str, field: str = "model.hf_path", local_files_only: bool = False) -> str:
    """The local folder for ``name``: itself if local, else its hub snapshot (downloaded if needed)."""
    if is_local(name):
        path = os.path.expanduser(name)
        if not os.path.exists(path):
            raise ConfigError(f"{field}={name}: no such file or folder; give an existing HF model folder or a hub name")
        return path
    from huggingface_hub import constants, snapshot_download

    try:
        return snapshot_download(name, allow_patterns=HUB_FILES, local_files_only=local_files_only)
    except Exception as e:  # noqa: BLE001 - every hub failure becomes one line naming the name and the cache
        how = ("it is not in the cache and HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE or local_files_only
               else f"download failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        raise ConfigError(f"{field}={name}: {how} (cache {constants.HF_HUB_CACHE}); download it there "
                          f"(`hf download {name}`) or give a local folder") from e


def resolve_model_config(model_cfg, local_files_only: bool = False):
    """``model_cfg`` with ``hf_path`` and ``tokenizer_path`` as local folders."""
    changes = {"hf_path": resolve_model(model_cfg.hf_path, "model.hf_path", local_files_only)}
    if model_cfg.tokenizer_path:
        changes["tokenizer_path"] = resolve_model(model_cfg.tokenizer_path, "model.tokenizer_path", local_files_only)
    return dataclasses.replace(model_cfg, **changes)


def resolve_on_node(model_cfg):
    """:func:`resolve_model_config` under torch.distributed: each node's local rank 0 resolves
    (downloads) first; after a barrier the node's other ranks read the same snapshot from the cache.
    A failure on any rank stops every rank with the failing rank's message."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return resolve_model_config(model_cfg)
    first = int(os.environ.get("LOCAL_RANK", "0")) == 0
    resolved, error = None, None
    for turn in (True, False):  # the first ranks of every node, then the others
        if first == turn:
            try:
                resolved = resolve_model_config(model_cfg, local_files_only=not first)
            except ConfigError as e:
                error = e
        failed = torch.tensor([error is not None], dtype=torch.int32)
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        if failed.item():
            raise error or ConfigError(f"model.hf_path={model_cfg.hf_path}: another rank could not resolve it "
                                       f"(its message is above)")
    return resolved
