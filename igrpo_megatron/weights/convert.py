"""Checkpoint conversion between an HF folder and a Megatron distributed checkpoint.

Both directions run in one process at TP=1/PP=1 (a world of one, gloo on CPU): Megatron's
``torch_dist`` checkpoints store global tensors, so a checkpoint written here loads at any TP x PP
(``igrpo_megatron.checkpoint.load_checkpoint`` reshards), and any training checkpoint loads here.

Layout written by :func:`hf_to_checkpoint` (the checkpoint module's own layout, step 0)::

    <out>/latest
    <out>/iter_0000000/        model weights (sharded state dict under "model"), meta.json, ...
    <out>/iter_0000000/hf/     config.json, generation_config.json, tokenizer files of the source

so ``model.init_checkpoint=<out>`` starts training from it and :func:`checkpoint_to_hf` needs
nothing else. For a training checkpoint (model + optimizer; only the model is read) the HF config
and tokenizer come from ``base_hf``, else from the run's saved ``model.hf_path``.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import torch

from igrpo_megatron.config import ConfigError, ModelConfig, ParallelConfig
from igrpo_megatron.weights.hf_io import HFSafetensors, copy_non_weight_files, save_safetensors_shards
from igrpo_megatron.weights.load import load_hf_weights, unused_hf_tensors
from igrpo_megatron.weights.mapping import WeightMap, WeightMappingError

HF_SUBDIR = "hf"


def _single_process_model(hf_cfg, hf_dir: str, dtype: str):
    """The Megatron model at TP=1/PP=1 in a world of one (no launcher needed)."""
    from igrpo_megatron.models.parallel import initialize_parallel
    from igrpo_megatron.models.provider import build_model

    par = ParallelConfig(tp=1, pp=1)
    initialize_parallel(par, seed=0)
    return build_model(hf_cfg, ModelConfig(hf_path=hf_dir, dtype=dtype, transformer_impl="local"), par)


def _dtype_name(dtype: torch.dtype, what: str) -> str:
    """The ``model.dtype`` name of a torch dtype (the provider's table, read backwards)."""
    from igrpo_megatron.models.provider import DTYPES

    names = {v: k for k, v in DTYPES.items()}
    if dtype not in names:
        raise ConfigError(f"{what} of dtype {dtype} are not supported; give --dtype {'|'.join(DTYPES)}")
    return names[dtype]


def _hf_weights_dtype(hf_dir: str, hf_cfg) -> str:
    with HFSafetensors(hf_dir) as src:
        dtype = src.dtype(WeightMap(hf_cfg).embedding_hf)
    return _dtype_name(dtype, f"{hf_dir}: weights")


def hf_to_checkpoint(hf_dir: str, out_dir: str, dtype: Optional[str] = None, progress=None,
                     tp: int = 1, pp: int = 1) -> str:
    """Convert an HF folder to a Megatron dist checkpoint under ``out_dir``; returns the iter folder.

    ``dtype`` (fp32 | bf16 | fp16) defaults to the dtype of the HF weights. The checkpoint loads at
    any layout the model's shape allows; ``tp`` / ``pp`` name the one training will use, so a
    layout that does not fit the model fails now rather than on the cluster.
    """
    from igrpo_megatron.checkpoint import save_checkpoint
    from igrpo_megatron.models.parallel import destroy_parallel
    from igrpo_megatron.models.provider import check_layout, load_hf_config

    hf_cfg = load_hf_config(hf_dir)  # an unregistered model_type fails here, before any work
    check_layout(hf_cfg, tp, pp)
    dtype = dtype or _hf_weights_dtype(hf_dir, hf_cfg)
    model = _single_process_model(hf_cfg, hf_dir, dtype)
    try:
        used = load_hf_weights([model], hf_dir, hf_cfg, progress=progress)
        unused = unused_hf_tensors(hf_dir, used, WeightMap(hf_cfg))
        if unused:
            raise WeightMappingError(f"{hf_dir}: tensors {unused[:5]} have no place in the Megatron model built from "
                                     f"its config.json (config and weights disagree)")
        path = save_checkpoint(out_dir, 0, [model])
    finally:
        destroy_parallel()
    copy_non_weight_files(hf_dir, os.path.join(path, HF_SUBDIR))
    return path


def _base_hf_dir(ckpt_dir: str, base_hf: Optional[str]) -> str:
    if base_hf:
        if not os.path.isfile(os.path.join(base_hf, "config.json")):
            raise FileNotFoundError(f"--base-hf {base_hf}: no config.json there; give the HF folder the run started from")
        return base_hf
    recorded = os.path.join(ckpt_dir, HF_SUBDIR)
    if os.path.isfile(os.path.join(recorded, "config.json")):
        return recorded
    run_config = os.path.join(ckpt_dir, "config.yaml")
    if os.path.isfile(run_config):
        import yaml

        with open(run_config, encoding="utf-8") as f:
            hf_path = ((yaml.safe_load(f) or {}).get("model") or {}).get("hf_path")
        if hf_path and os.path.isfile(os.path.join(hf_path, "config.json")):
            return hf_path
    raise FileNotFoundError(f"{ckpt_dir} records no HF config ({HF_SUBDIR}/config.json, or model.hf_path in "
                            f"config.yaml); pass --base-hf with the HF folder the model came from")


def _checkpoint_dtype(ckpt_dir: str) -> str:
    """The dtype the model weights were saved in (read from the checkpoint's metadata, no data)."""
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(ckpt_dir).read_metadata().state_dict_metadata
    key = "embedding.word_embeddings.weight"  # the model's own key (optimizer state keys extend it)
    if key not in meta:
        raise WeightMappingError(f"{ckpt_dir}: no embedding.word_embeddings.weight in the checkpoint; "
                                 f"it is not a GPT model checkpoint")
    return _dtype_name(meta[key].properties.dtype, f"{ckpt_dir}: model weights")


def checkpoint_to_hf(ckpt: str, out_dir: str, base_hf: Optional[str] = None, dtype: Optional[str] = None,
                     max_shard_bytes: int = 2 << 30, progress=None) -> dict:
    """Write an HF folder (sharded safetensors + index, config, generation config, tokenizer) from a
    checkpoint root or ``iter_*`` folder; returns the safetensors index. ``dtype`` defaults to the
    checkpoint's."""
    from igrpo_megatron.checkpoint import load_checkpoint, resolve_checkpoint
    from igrpo_megatron.models.parallel import destroy_parallel
    from igrpo_megatron.models.provider import DTYPES, load_hf_config
    from igrpo_megatron.weights.export import iter_hf_weights

    ckpt_dir = resolve_checkpoint(ckpt)
    hf_dir = _base_hf_dir(ckpt_dir, base_hf)
    saved_dtype = _checkpoint_dtype(ckpt_dir)
    out_dtype = dtype or saved_dtype
    hf_cfg = load_hf_config(hf_dir)
    model = _single_process_model(hf_cfg, hf_dir, saved_dtype)
    try:
        load_checkpoint(ckpt_dir, [model], load_optimizer=False, load_rng=False)
        index = save_safetensors_shards(iter_hf_weights([model], hf_cfg, dtype=DTYPES[out_dtype]), out_dir,
                                        max_shard_bytes=max_shard_bytes, progress=progress)
    finally:
        destroy_parallel()
    copy_non_weight_files(hf_dir, out_dir)
    _write_configs(hf_cfg.raw, out_dir, str(DTYPES[out_dtype]).removeprefix("torch."))
    return index


def _write_configs(raw: dict, out_dir: str, hf_dtype: str) -> None:
    """config.json with the dtype actually written; a generation_config.json when the base had none."""
    config = dict(raw)
    dtype_keys = [k for k in ("torch_dtype", "dtype") if k in config] or ["torch_dtype"]
    config.update({k: hf_dtype for k in dtype_keys})
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    gen = os.path.join(out_dir, "generation_config.json")
    if not os.path.exists(gen):
        with open(gen, "w", encoding="utf-8") as f:
            json.dump({k: raw[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in raw}, f, indent=2)
