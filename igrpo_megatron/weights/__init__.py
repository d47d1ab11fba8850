"""The single place that knows Megatron and Hugging Face tensor names and layouts.

- :mod:`~igrpo_megatron.weights.mapping`: the per-architecture table and the pure layout / TP-split functions;
- :mod:`~igrpo_megatron.weights.export`: streaming, bucketed export of full HF tensors from any TP x PP
  layout to global rank 0 (the refit and ``igrpo-convert to-hf`` both use it);
- :mod:`~igrpo_megatron.weights.load`: HF safetensors folder -> Megatron parameters at any layout;
- :mod:`~igrpo_megatron.weights.hf_io`: lazy safetensors reader and sharded writer.
"""
from igrpo_megatron.weights.export import bucketize, drain, export_hf_weights, iter_hf_weights
from igrpo_megatron.weights.hf_io import HFSafetensors, copy_non_weight_files, save_safetensors_shards
from igrpo_megatron.weights.load import load_hf_weights, unused_hf_tensors
from igrpo_megatron.weights.mapping import ARCHITECTURES, WeightMap, WeightMappingError

__all__ = [
    "ARCHITECTURES",
    "HFSafetensors",
    "WeightMap",
    "WeightMappingError",
    "bucketize",
    "copy_non_weight_files",
    "drain",
    "export_hf_weights",
    "iter_hf_weights",
    "load_hf_weights",
    "save_safetensors_shards",
    "unused_hf_tensors",
]
