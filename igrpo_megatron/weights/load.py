"""Import: an HF safetensors folder into a Megatron model at any TP x PP layout.

Each rank walks its own parameters (its pipeline stage's layers only), reads the HF tensors each
one needs lazily from the folder, builds the Megatron full tensor with the mapping and copies in
its TP shard. No collectives: every rank can call it independently. Call it before the optimizer
is built (a distributed optimizer copies the parameters into its fp32 master weights then).
"""
from __future__ import annotations

from typing import Optional

import torch

from igrpo_megatron.weights.hf_io import HFSafetensors
from igrpo_megatron.weights.mapping import WeightMap, WeightMappingError, global_parameters, shard


@torch.no_grad()
def load_hf_weights(model_chunks, hf_dir: str, hf_cfg, *, weight_map: Optional[WeightMap] = None,
                    progress=None) -> set[str]:
    """Copy the weights of the HF folder ``hf_dir`` into this rank's parameters.

    ``progress`` (e.g. a tqdm bar) is advanced by one per parameter.
    Returns the HF tensor names this rank read. Raises :class:`WeightMappingError` naming the
    parameter when a tensor is missing or its shape does not fit the model.
    """
    from megatron.core import parallel_state as ps

    wmap = weight_map or WeightMap(hf_cfg)
    tp_size, tp_rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    used: set[str] = set()
    with HFSafetensors(hf_dir) as src:
        def read(hf_name: str) -> torch.Tensor:
            used.add(hf_name)
            return src.get(hf_name)

        for name, param in global_parameters(model_chunks):
            split = wmap.split(name)
            rows = param.shape[0] * (tp_size if split.dim == 0 else 1)
            try:
                full = wmap.to_megatron(name, read, rows)
                piece = shard(full, split, tp_size, tp_rank)
            except (KeyError, RuntimeError) as e:
                raise WeightMappingError(f"cannot build Megatron {name} from {hf_dir}: {e}") from e
            if piece.shape != param.shape:
                raise WeightMappingError(
                    f"{hf_dir}: HF tensors {list(wmap.hf_sources(name))} give shape {tuple(piece.shape)} for "
                    f"Megatron {name}, whose TP shard is {tuple(param.shape)}; config.json does not match the weights")
            param.copy_(piece)
            if progress is not None:
                progress.update(1)
    return used


def unused_hf_tensors(hf_dir: str, used: set[str], weight_map: WeightMap) -> list[str]:
    """HF tensors in ``hf_dir`` that no parameter read (at TP=1/PP=1 this must be empty, else the
    model lacks something the checkpoint has, e.g. biases)."""
    with HFSafetensors(hf_dir) as src:
        return sorted(n for n in src.names() - used if not weight_map.optional_hf(n))
