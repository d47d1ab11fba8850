"""Build a megatron-core GPTModel shaped like a Hugging Face Qwen2 / Llama checkpoint.

The HF ``config.json`` is read once into :class:`HFModelConfig` (the fields Megatron and the
weight mapping need, in one spelling), turned into a ``TransformerConfig`` and a layer spec, and
the GPTModel is built for this rank's pipeline stage. Weights are loaded elsewhere
(``igrpo_megatron.weights``); this module only builds the shapes.

Transformer Engine is decided here and nowhere else (:func:`layer_spec`): TE's layer spec (and
FP8 when asked for) when ``transformer_engine`` imports, Megatron's local spec otherwise.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from igrpo_megatron.config import ConfigError, ModelConfig, ParallelConfig

SUPPORTED_MODEL_TYPES = ("qwen2", "llama")


@dataclass(frozen=True)
class HFModelConfig:
    """The architecture fields of a HF ``config.json`` that the Megatron model and the weight
    mapping need, normalised across transformers versions (e.g. ``rope_parameters`` vs ``rope_theta``)."""

    model_type: str  # "qwen2" | "llama"
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_hidden_size: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    init_std: float = 0.02
    rope_scaling_factor: Optional[float] = None  # Llama-3.1 style frequency scaling
    raw: dict = field(default_factory=dict, compare=False, repr=False)


def _read_config_json(path: str) -> dict:
    if os.path.isdir(path):
        file = os.path.join(path, "config.json")
        if not os.path.exists(file):
            raise ConfigError(f"model.hf_path={path}: the folder has no config.json; point it at a HF model folder")
    elif os.path.isfile(path):
        file = path
    else:
        try:
            from huggingface_hub import hf_hub_download

            file = hf_hub_download(path, "config.json")
        except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear message
            raise ConfigError(
                f"model.hf_path={path}: not a local folder and not downloadable from the hub ({e}); "
                f"give a local HF model folder or a valid hub name"
            ) from e
    with open(file, encoding="utf-8") as f:
        return json.load(f)


def load_hf_config(path: str) -> HFModelConfig:
    """Read ``config.json`` from a local folder (or file, or hub name) into :class:`HFModelConfig`."""
    raw = _read_config_json(path)
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"model.hf_path={path}: model_type {model_type!r} is not supported; supported: {SUPPORTED_MODEL_TYPES}"
        )
    if raw.get("use_sliding_window"):
        raise ConfigError(f"model.hf_path={path}: sliding-window attention is not supported; use a full-attention model")
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    rope_factor = None
    if rope_type == "llama3":
        rope_factor = float(rope["factor"])
        expected = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        if any(float(rope.get(k, v)) != v for k, v in expected.items()):
            raise ConfigError(f"model.hf_path={path}: llama3 rope scaling with non-default {expected} is not supported")
    elif rope_type not in ("default", None):
        raise ConfigError(f"model.hf_path={path}: rope type {rope_type!r} is not supported (default and llama3 are)")
    heads = raw["num_attention_heads"]
    bias_default = model_type == "qwen2"  # Qwen2 always has q/k/v biases; Llama has none by default
    return HFModelConfig(
        model_type=model_type,
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        num_layers=raw["num_hidden_layers"],
        num_attention_heads=heads,
        num_kv_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
        ffn_hidden_size=raw["intermediate_size"],
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope.get("rope_theta", raw.get("rope_theta", 10000.0))),
        max_position_embeddings=raw.get("max_position_embeddings", 4096),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=bool(raw.get("attention_bias", bias_default)),
        init_std=raw.get("initializer_range", 0.02),
        rope_scaling_factor=rope_factor,
        raw=raw,
    )


def padded_vocab_size(vocab_size: int, tp: int, multiple: int = 128) -> int:
    """Round the vocabulary up so every TP rank holds the same number of rows."""
    step = math.lcm(max(multiple, 1), tp)
    return -(-vocab_size // step) * step


def transformer_engine_available() -> bool:
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken TE install is as good as none
        return False
    return True


def use_transformer_engine(model_cfg: ModelConfig) -> bool:
    """The one decision between TE and the local implementation, with the error that explains it."""
    available = transformer_engine_available()
    if model_cfg.transformer_impl == "local":
        if model_cfg.fp8 is not None:
            raise ConfigError(
                f"model.fp8={model_cfg.fp8} needs Transformer Engine but model.transformer_impl=local; "
                f"set model.transformer_impl=auto or model.fp8=null"
            )
        return False
    if not available:
        if model_cfg.fp8 is not None:
            raise ConfigError(
                f"model.fp8={model_cfg.fp8} needs Transformer Engine, which is not importable here; "
                f"install it with `pip install .[gpu]` (GPU nodes) or set model.fp8=null"
            )
        if model_cfg.transformer_impl == "transformer_engine":
            raise ConfigError(
                "model.transformer_impl=transformer_engine but Transformer Engine is not importable here; "
                "install it with `pip install .[gpu]` (GPU nodes) or set model.transformer_impl=auto"
            )
    return available


def layer_spec(model_cfg: ModelConfig):
    """Megatron layer spec: TE modules when available (required for FP8), local modules otherwise."""
    from megatron.core.models.gpt import gpt_layer_specs

    if use_transformer_engine(model_cfg):
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    return gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_layout(hf_cfg: HFModelConfig, tp: int, pp: int) -> None:
    """Raise a ConfigError unless TP divides the heads and key/value heads and PP the layers."""
    for name, n, count, what in (("parallel.tp", tp, hf_cfg.num_attention_heads, "attention heads"),
                                 ("parallel.tp", tp, hf_cfg.num_kv_heads, "key/value heads"),
                                 ("parallel.pp", pp, hf_cfg.num_layers, "layers")):
        if count % n:
            raise ConfigError(f"{name}={n} does not divide the model's {count} {what}; choose a divisor of {count}")


def transformer_config_from_hf(hf_cfg: HFModelConfig, model_cfg: ModelConfig, parallel_cfg: ParallelConfig):
    """A megatron ``TransformerConfig`` equal in architecture to ``hf_cfg``, laid out per ``parallel_cfg``."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    tp, pp = parallel_cfg.tp, parallel_cfg.pp
    check_layout(hf_cfg, tp, pp)
    if parallel_cfg.sequence_parallel and tp == 1:
        raise ConfigError("parallel.sequence_parallel=true needs parallel.tp > 1")
    if parallel_cfg.sequence_parallel and not use_transformer_engine(model_cfg):
        raise ConfigError("parallel.sequence_parallel=true needs Transformer Engine's layer spec (Megatron's "
                          "local torch norms do not support it): `pip install .[gpu]` on GPU nodes, or set "
                          "parallel.sequence_parallel=false")
    dtype = _DTYPES[model_cfg.dtype]
    fp8: dict[str, Any] = {}
    if model_cfg.fp8 is not None:
        fp8 = dict(fp8=model_cfg.fp8, fp8_recipe=model_cfg.fp8_recipe,
                   fp8_amax_history_len=model_cfg.fp8_amax_history_len,
                   fp8_amax_compute_algo=model_cfg.fp8_amax_compute_algo)
    recompute: dict[str, Any] = {}
    if model_cfg.recompute_activations:  # full-layer gradient checkpointing, one layer per unit
        recompute = dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    return TransformerConfig(
        num_layers=hf_cfg.num_layers,
        hidden_size=hf_cfg.hidden_size,
        num_attention_heads=hf_cfg.num_attention_heads,
        num_query_groups=hf_cfg.num_kv_heads,
        kv_channels=hf_cfg.head_dim,
        ffn_hidden_size=hf_cfg.ffn_hidden_size,
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        normalization="RMSNorm",
        layernorm_epsilon=hf_cfg.rms_norm_eps,
        add_bias_linear=False,
        add_qkv_bias=hf_cfg.qkv_bias,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        attention_softmax_in_fp32=True,
        init_method_std=hf_cfg.init_std,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype is torch.bfloat16,
        fp16=dtype is torch.float16,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        sequence_parallel=parallel_cfg.sequence_parallel,
        use_cpu_initialization=not torch.cuda.is_available(),
        # Megatron-LM's setting: frees pipeline outputs after sending them, and runs backward through
        # the autograd engine directly (which also keeps the CPU device mode active in recompute).
        deallocate_pipeline_outputs=True,
        apply_rope_fusion=False,
        **fp8,
        **recompute,
    )


def build_model(hf_cfg: HFModelConfig, model_cfg: ModelConfig, parallel_cfg: ParallelConfig, *,
                pre_process: Optional[bool] = None, post_process: Optional[bool] = None,
                wrap_ddp: bool = False):
    """The GPTModel for this rank's pipeline stage (model-parallel state must be initialised).

    With ``dtype`` bf16/fp16 the model is wrapped in Megatron's ``Float16Module`` (fp32 logits out
    of the last stage); with ``wrap_ddp`` it is further wrapped in Megatron's DDP for training.
    The returned object carries ``hf_vocab_size`` / ``padded_vocab_size`` (also on the GPTModel
    inside, see :func:`unwrap`) so logprobs mask, and export strips, the padded rows.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt.gpt_model import GPTModel
    from megatron.core.transformer.module import Float16Module

    config = transformer_config_from_hf(hf_cfg, model_cfg, parallel_cfg)
    if pre_process is None:
        pre_process = ps.is_pipeline_first_stage()
    if post_process is None:
        post_process = ps.is_pipeline_last_stage()
    vocab = padded_vocab_size(hf_cfg.vocab_size, parallel_cfg.tp, model_cfg.vocab_pad_multiple)
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(model_cfg),
        vocab_size=vocab,
        max_sequence_length=hf_cfg.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,  # logits stay vocab-parallel; logprobs reduce across TP themselves
        share_embeddings_and_output_weights=hf_cfg.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=int(hf_cfg.rope_theta),
        rope_scaling=hf_cfg.rope_scaling_factor is not None,
        rope_scaling_factor=hf_cfg.rope_scaling_factor or 8.0,
    )
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    wrapped = model
    if config.bf16 or config.fp16:
        wrapped = Float16Module(config, wrapped)
    if wrap_ddp:
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=False,
            use_distributed_optimizer=parallel_cfg.use_distributed_optimizer,
        )
        wrapped = DistributedDataParallel(config, ddp_config, wrapped)
    for m in {model, wrapped}:
        m.hf_vocab_size = hf_cfg.vocab_size
        m.padded_vocab_size = vocab
    return wrapped


def unwrap(model):
    """The GPTModel inside DDP / Float16Module wrappers (state-dict names without ``module.``)."""
    while hasattr(model, "module"):
        model = model.module
    return model
