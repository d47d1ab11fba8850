"""Import: an HF safetensors folder into a Megatron model at any TP x PP layout.

Each rank walks its own parameters (its pipeline stage's layers only) and reads from the folder
only the slices of the HF tensors that make up its TP shard (safetensors ``get_slice``), so a
rank of a TP=8 job reads an eighth of each split tensor and never builds a full one. No collectives: every rank can call it independently. Call it before the optimizer
is built (a distributed optimizer copies the parameters into its fp32 master weights then).
"""
from __future__ import annotations

from typing import Optional

import torch

from igrpo_megatron.weights.hf_io import HFSafetensors
from igrpo_megatron.weights.mapping import WeightMap, WeightMappingError, global_parameters


@torch.no_grad()
def load_hf_weights(model_chunks, hf_dir: str, hf_cfg, *, weight_map: Optional[WeightMap] = None,
                    progress=None) -> set[str]:
    """Copy the weights of the HF folder ``hf_dir`` into this rank's parameters.

    Returns the HF tensor names this rank read. Raises :class:`WeightMappingError` naming the
    parameter when a tensor is missing or its shape does not fit the model. ``progress`` (e.g. a
    tqdm bar) is advanced by one per parameter.
    """
    from megatron.core import parallel_state as ps

    wmap = weight_map or WeightMap(hf_cfg)
    tp_size, tp_rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    with HFSafetensors(hf_dir) as src:
        for name, param in global_parameters(model_chunks):
            try:
                piece = wmap.to_megatron_shard(name, src, param.shape[0], tp_size, tp_rank)
            except (KeyError, RuntimeError) as e:
                raise WeightMappingError(f"cannot build Megatron {name} from {hf_dir}: {e}") from e
            if piece.shape != param.shape:
                raise WeightMappingError(
                    f"{hf_dir}: HF tensors {list(wmap.hf_sources(name))} give shape {tuple(piece.shape)} for "
                    f"Megatron {name}, whose TP shard is {tuple(param.shape)}; config.json does not match the weights")
            param.copy_(piece)
            if progress is not None:
                progress.update(1)
    return src.used


def unused_hf_tensors(hf_dir: str, used: set[str], weight_map: WeightMap) -> list[str]:
    """HF tensors in ``hf_dir`` that no parameter read (at TP=1/PP=1 this must be empty, else the
    model lacks something the checkpoint has, e.g. biases)."""
    with HFSafetensors(hf_dir) as src:
        return sorted(n for n in src.names() - used if not weight_map.optional_hf(n))
