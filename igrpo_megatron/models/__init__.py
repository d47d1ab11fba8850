"""Megatron-Core models: CPU support, parallel layout, the model provider, logprobs and the policy.

Importing this package does not import megatron-core; the functions do, when called.
"""
from igrpo_megatron.models.cpu import enable_cpu_support
from igrpo_megatron.models.logprobs import compute_logprobs, token_logprobs, vocab_parallel_logprobs
from igrpo_megatron.models.parallel import (ParallelInfo, current_device, destroy_parallel, initialize_parallel,
                                            parallel_info)
from igrpo_megatron.models.policy import Policy, global_denominators
from igrpo_megatron.models.provider import (HFModelConfig, build_model, load_hf_config, padded_vocab_size,
                                            transformer_config_from_hf, use_transformer_engine)
from igrpo_megatron.weights.mapping import unwrap

__all__ = [
    "HFModelConfig", "ParallelInfo", "Policy", "build_model", "compute_logprobs", "current_device", "destroy_parallel",
    "enable_cpu_support", "global_denominators", "initialize_parallel", "load_hf_config", "padded_vocab_size",
    "parallel_info", "token_logprobs", "transformer_config_from_hf", "unwrap", "use_transformer_engine",
    "vocab_parallel_logprobs",
]
