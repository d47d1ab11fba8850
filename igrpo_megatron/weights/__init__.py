"""The single place that knows Megatron and Hugging Face tensor names and layouts.

- :mod:`~igrpo_megatron.weights.arch`: one ``ArchSpec`` per model family (config translation, name table,
  layout rule, model builder), registered by HF ``model_type``; the families: ``gpt`` (the GPT-style base),
  ``qwen2``, ``llama`` -- a new family is one more file here;
- :mod:`~igrpo_megatron.weights.mapping`: the pure layout / TP-split functions and ``WeightMap``;
- :mod:`~igrpo_megatron.weights.export`: streaming, bucketed export of full HF tensors from any TP x PP
  layout to global rank 0 (the refit and ``igrpo-convert to-hf`` both use it);
- :mod:`~igrpo_megatron.weights.load`: HF safetensors folder -> Megatron parameters at any layout;
- :mod:`~igrpo_megatron.weights.hf_io`: lazy safetensors reader and sharded writer.
"""
from igrpo_megatron.weights.arch import ArchSpec, arch_spec, register, registered_model_types
from igrpo_megatron.weights.export import bucketize, export_hf_weights, iter_hf_weights
from igrpo_megatron.weights.hf_io import HFSafetensors, copy_non_weight_files, save_safetensors_shards
from igrpo_megatron.weights.load import load_hf_weights, unused_hf_tensors
from igrpo_megatron.weights.mapping import WeightMap, WeightMappingError

__all__ = [
    "ArchSpec",
    "HFSafetensors",
    "WeightMap",
    "WeightMappingError",
    "arch_spec",
    "bucketize",
    "copy_non_weight_files",
    "export_hf_weights",
    "iter_hf_weights",
    "load_hf_weights",
    "register",
    "registered_model_types",
    "save_safetensors_shards",
    "unused_hf_tensors",
]
