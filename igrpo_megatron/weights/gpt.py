"""The GPT-style base spec: a Megatron ``GPTModel`` with RMSNorm, SwiGLU, rotary and grouped-query attention.

HF's Llama-family configs and checkpoints (Qwen2, Llama) spell their fields and tensors alike, so
the reading, the translation and the name table live here once; a family file (``qwen2.py``,
``llama.py``) states only how it differs (see :class:`GPTSpec`'s class attributes).
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch

from igrpo_megatron.config import ConfigError
from igrpo_megatron.weights.arch import ArchSpec, HFModelConfig
from igrpo_megatron.weights.mapping import COLUMN, COLUMN_PER_HALF, REPLICATED, ROW, Layout, Rule

_LAYER = "model.layers.{}."
_ATTN_NORM = Rule((_LAYER + "input_layernorm.weight",), Layout.COPY, REPLICATED)
_MLP_NORM = Rule((_LAYER + "post_attention_layernorm.weight",), Layout.COPY, REPLICATED)

#: Names for both Megatron's local layer spec (separate ``input_layernorm`` / ``pre_mlp_layernorm``)
#: and Transformer Engine's (norms fused into ``linear_qkv`` / ``linear_fc1`` as ``layer_norm_weight``).
#: Biases appear once; a rule applies only to the parameters a model actually has, so a family
#: with q/k/v biases (Qwen2) and one without (Llama) share the table.
DECODER_TABLE: Mapping[str, Rule] = {
    "embedding.word_embeddings.weight": Rule(("model.embed_tokens.weight",), Layout.VOCAB, COLUMN),
    "decoder.final_layernorm.weight": Rule(("model.norm.weight",), Layout.COPY, REPLICATED),
    "output_layer.weight": Rule(("lm_head.weight",), Layout.VOCAB, COLUMN),
    "decoder.layers.{}.input_layernorm.weight": _ATTN_NORM,
    "decoder.layers.{}.self_attention.linear_qkv.layer_norm_weight": _ATTN_NORM,  # TE spec
    "decoder.layers.{}.self_attention.linear_qkv.weight": Rule(
        tuple(_LAYER + f"self_attn.{p}_proj.weight" for p in "qkv"), Layout.QKV, COLUMN),
    "decoder.layers.{}.self_attention.linear_qkv.bias": Rule(
        tuple(_LAYER + f"self_attn.{p}_proj.bias" for p in "qkv"), Layout.QKV, COLUMN),
    "decoder.layers.{}.self_attention.linear_proj.weight": Rule(
        (_LAYER + "self_attn.o_proj.weight",), Layout.COPY, ROW),
    "decoder.layers.{}.pre_mlp_layernorm.weight": _MLP_NORM,
    "decoder.layers.{}.mlp.linear_fc1.layer_norm_weight": _MLP_NORM,  # TE spec
    "decoder.layers.{}.mlp.linear_fc1.weight": Rule(
        (_LAYER + "mlp.gate_proj.weight", _LAYER + "mlp.up_proj.weight"), Layout.STACK, COLUMN_PER_HALF),
    "decoder.layers.{}.mlp.linear_fc2.weight": Rule((_LAYER + "mlp.down_proj.weight",), Layout.COPY, ROW),
}


def _rope(raw: dict, where: str) -> tuple[float, float | None]:
    """(rope theta, Llama-3.1 scaling factor or None) from either transformers spelling."""
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    factor = None
    if rope_type == "llama3":
        factor = float(rope["factor"])
        expected = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        if any(float(rope.get(k, v)) != v for k, v in expected.items()):
            raise ConfigError(f"{where}: llama3 rope scaling with non-default {expected} is not supported")
    elif rope_type not in ("default", None):
        raise ConfigError(f"{where}: rope type {rope_type!r} is not supported (default and llama3 are)")
    return float(rope.get("rope_theta", raw.get("rope_theta", 10000.0))), factor


class GPTSpec(ArchSpec):
    """A Llama-family decoder as a Megatron GPTModel. Subclasses set ``model_type`` and
    ``qkv_bias_default`` (the bias setting when ``config.json`` has no ``attention_bias``)."""

    qkv_bias_default: ClassVar[bool]
    #: recomputed rotary buffers some old checkpoints store
    ignored_hf_suffixes = ("rotary_emb.inv_freq",)

    def read_config(self, raw: dict, where: str) -> HFModelConfig:
        if raw.get("use_sliding_window"):
            raise ConfigError(f"{where}: sliding-window attention is not supported; use a full-attention model")
        rope_theta, rope_factor = _rope(raw, where)
        heads = raw["num_attention_heads"]
        return HFModelConfig(
            model_type=raw["model_type"],
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            num_layers=raw["num_hidden_layers"],
            num_attention_heads=heads,
            num_kv_heads=raw.get("num_key_value_heads") or heads,
            head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
            ffn_hidden_size=raw["intermediate_size"],
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=rope_theta,
            max_position_embeddings=raw.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=bool(raw.get("attention_bias", self.qkv_bias_default)),
            init_std=raw.get("initializer_range", 0.02),
            rope_scaling_factor=rope_factor,
            raw=raw,
        )

    def tp_divisors(self, hf_cfg: HFModelConfig) -> list[tuple[int, str]]:
        # each TP rank must own whole query groups (the QKV layout's contiguous dim-0 split relies on it)
        return [(hf_cfg.num_attention_heads, "attention heads"), (hf_cfg.num_kv_heads, "key/value heads")]

    def transformer_config(self, hf_cfg: HFModelConfig, **run: Any):
        from megatron.core.transformer.transformer_config import TransformerConfig

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
            init_method_std=hf_cfg.init_std,
            apply_rope_fusion=False,
            **run,
        )

    def build(self, hf_cfg: HFModelConfig, config, *, vocab_size: int, pre_process: bool, post_process: bool,
              use_te: bool):
        from megatron.core.models.gpt import gpt_layer_specs
        from megatron.core.models.gpt.gpt_model import GPTModel

        if use_te:
            layer_spec = gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
        else:
            layer_spec = gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")
        return GPTModel(
            config=config,
            transformer_layer_spec=layer_spec,
            vocab_size=vocab_size,
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

    def weight_table(self, hf_cfg: HFModelConfig) -> Mapping[str, Rule]:
        return DECODER_TABLE
