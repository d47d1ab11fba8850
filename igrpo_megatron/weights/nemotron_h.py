"""Nemotron-H (hybrid Mamba-2 / attention / MLP, HF ``model_type`` ``nemotron_h``) as a Megatron MambaModel.

Everything the project knows about this family is its :class:`NemotronHSpec`: the HF config read
into :class:`NemotronHConfig`, the Megatron ``TransformerConfig`` and MambaModel it implies (TE's
stack spec or the local one, as the provider decides; the pure-torch Mamba kernels of
``models/cpu_mamba.py`` where ``mamba_ssm`` is missing), the TP divisors, and the name/layout table
that refit and ``igrpo-convert`` share.

The model, as transformers' NemotronH and Megatron's MambaModel both define it: every block is
``x + mixer(RMSNorm(x))`` with the mixer chosen by the hybrid pattern (``M`` Mamba-2, ``*``
attention without rotary embedding, ``-`` squared-ReLU MLP without a gate; ``E`` MoE is not
supported), then ``norm_f`` and an untied ``lm_head``. Every norm uses ``layer_norm_epsilon``
(Megatron fixes the Mamba gated norm's at 1e-5, as the HF checkpoints have it).

On disk HF names start with ``backbone.`` (transformers renames them ``model.`` in memory only);
the per-block ``norm.weight`` goes to a different Megatron name per layer type. The Mamba input
projection stacks ``[z, x, B, C, dt]`` = ``[d_inner, d_inner, g*N, g*N, heads]`` rows and the
depthwise conv ``[x, B, C]`` channels: each block is split over TP separately (rank r holds
``[z_r; x_r; B_r; C_r; dt_r]``), so TP must divide the Mamba heads and groups (and kv heads).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

from igrpo_megatron.config import ConfigError
from igrpo_megatron.weights.arch import ArchSpec, HFModelConfig, register
from igrpo_megatron.weights.mapping import COLUMN, REPLICATED, ROW, Layout, Rule, TPSplit

#: hybrid pattern symbols (Megatron's and the hub configs' ``hybrid_override_pattern``) by the
#: names transformers >= 5.19 writes in ``layers_block_type`` (and their older spellings).
_BLOCK_SYMBOLS = {"linear_attention": "M", "mamba": "M", "full_attention": "*", "attention": "*",
                  "mlp": "-", "moe": "E"}


@dataclass(frozen=True, kw_only=True)
class NemotronHConfig(HFModelConfig):
    """The common decoder fields plus the hybrid pattern and the Mamba-2 mixer's shape."""

    pattern: str  # one of M * - per layer
    mamba_num_heads: int
    mamba_head_dim: int
    mamba_num_groups: int
    ssm_state_size: int
    conv_kernel: int
    chunk_size: int
    conv_bias: bool

    @property
    def d_inner(self) -> int:
        return self.mamba_num_heads * self.mamba_head_dim


def hybrid_pattern(raw: dict, where: str) -> str:
    """The layer pattern from ``hybrid_override_pattern`` (hub checkpoints) or ``layers_block_type``
    (what transformers 5.19 saves); MoE layers are refused."""
    pattern = raw.get("hybrid_override_pattern")
    if not pattern:
        types = raw.get("layers_block_type") or []
        unknown = sorted({t for t in types if t not in _BLOCK_SYMBOLS})
        if not types or unknown:
            raise ConfigError(f"{where}: config.json needs hybrid_override_pattern or layers_block_type of "
                              f"{sorted(_BLOCK_SYMBOLS)} (got {unknown or 'neither'})")
        pattern = "".join(_BLOCK_SYMBOLS[t] for t in types)
    if "E" in pattern:
        raise ConfigError(f"{where}: Nemotron-H MoE layers ('E' in the hybrid pattern) are not supported; "
                          f"use a dense Nemotron-H (layers M, * and - only)")
    if set(pattern) - set("M*-"):
        raise ConfigError(f"{where}: hybrid pattern {pattern!r} has symbols other than M, *, -, E")
    return pattern


@register
class NemotronHSpec(ArchSpec):
    """Nemotron-H as Megatron's MambaModel."""

    model_type = "nemotron_h"
    recurrent_state = True

    def read_config(self, raw: dict, where: str) -> NemotronHConfig:
        for key, what in (("use_bias", "Mamba projection biases"), ("mamba_proj_bias", "Mamba projection biases"),
                          ("mlp_bias", "MLP biases")):
            if raw.get(key):
                raise ConfigError(f"{where}: {key}=true ({what}) is not supported by Megatron's MambaModel; "
                                  f"use a checkpoint without them")
        if raw.get("mlp_hidden_act", "relu2") != "relu2":
            raise ConfigError(f"{where}: mlp_hidden_act={raw['mlp_hidden_act']!r} is not supported; "
                              f"Nemotron-H's MLP is relu2")
        pattern = hybrid_pattern(raw, where)
        heads = raw["num_attention_heads"]
        return NemotronHConfig(
            model_type=self.model_type,
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            num_layers=len(pattern),
            num_attention_heads=heads,
            num_kv_heads=raw.get("num_key_value_heads") or heads,
            head_dim=raw.get("head_dim") or raw.get("attention_head_dim") or raw["hidden_size"] // heads,
            ffn_hidden_size=raw["intermediate_size"],
            rms_norm_eps=raw.get("layer_norm_epsilon", 1e-5),
            rope_theta=0.0,  # no rotary embedding
            max_position_embeddings=raw.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=False,  # transformers' NemotronH attention has no biases whatever attention_bias says
            init_std=raw.get("initializer_range", 0.02),
            raw=raw,
            pattern=pattern,
            mamba_num_heads=raw["mamba_num_heads"],
            mamba_head_dim=raw["mamba_head_dim"],
            mamba_num_groups=raw.get("n_groups", 1),
            ssm_state_size=raw["ssm_state_size"],
            conv_kernel=raw.get("conv_kernel", 4),
            chunk_size=raw.get("chunk_size", 128),
            conv_bias=bool(raw.get("use_conv_bias", True)),
        )

    def tp_divisors(self, hf_cfg: NemotronHConfig) -> list[tuple[int, str]]:
        # each rank owns whole groups of the scan (B/C are per group) and whole query groups
        return [(hf_cfg.mamba_num_heads, "Mamba heads"), (hf_cfg.mamba_num_groups, "Mamba groups"),
                (hf_cfg.num_attention_heads, "attention heads"), (hf_cfg.num_kv_heads, "key/value heads")]

    def transformer_config(self, hf_cfg: NemotronHConfig, **run: Any):
        from megatron.core.activations import squared_relu
        from megatron.core.transformer.transformer_config import TransformerConfig

        from igrpo_megatron.models.cpu import fused_mamba_path_available

        return TransformerConfig(
            **hf_cfg.decoder_fields(),
            gated_linear_unit=False,
            activation_func=squared_relu,
            is_hybrid_model=True,
            mamba_num_heads=hf_cfg.mamba_num_heads,
            mamba_head_dim=hf_cfg.mamba_head_dim,
            mamba_num_groups=hf_cfg.mamba_num_groups,
            mamba_state_dim=hf_cfg.ssm_state_size,
            # the fused in_proj -> conv -> scan path exists only as mamba_ssm + causal_conv1d kernels
            use_mamba_mem_eff_path=fused_mamba_path_available(),
            **run,
        )

    def build(self, hf_cfg: NemotronHConfig, config, *, vocab_size: int, pre_process: bool, post_process: bool,
              use_te: bool):
        from megatron.core.models.mamba import MambaModel

        from igrpo_megatron.models.cpu import enable_mamba_fallbacks, local_mamba_stack_spec

        enable_mamba_fallbacks(transformer_engine=use_te)
        if use_te:
            from megatron.core.models.mamba.mamba_layer_specs import mamba_stack_spec

            spec = copy.deepcopy(mamba_stack_spec)
            spec.submodules.mamba_layer.submodules.mixer.params = {"d_conv": hf_cfg.conv_kernel,
                                                                   "chunk_size": hf_cfg.chunk_size}
        else:
            spec = local_mamba_stack_spec(d_conv=hf_cfg.conv_kernel, chunk_size=hf_cfg.chunk_size)
        model = MambaModel(
            config=config,
            mamba_stack_spec=spec,
            vocab_size=vocab_size,
            max_sequence_length=hf_cfg.max_position_embeddings,
            hybrid_override_pattern=hf_cfg.pattern,
            position_embedding_type="none",
            share_embeddings_and_output_weights=hf_cfg.tie_word_embeddings,
            parallel_output=True,  # logits stay vocab-parallel; logprobs reduce across TP themselves
            pre_process=pre_process,
            post_process=post_process,
        )
        if config.recompute_granularity == "full":
            _recompute_each_layer(model.decoder)
        return model

    def weight_table(self, hf_cfg: NemotronHConfig) -> Mapping[str, Rule]:
        """Megatron name (``{}`` = global layer index; local and TE spec names) -> HF tensors, layout, TP split."""
        groups_state = hf_cfg.mamba_num_groups * hf_cfg.ssm_state_size
        in_proj = TPSplit(0, sizes=(hf_cfg.d_inner, hf_cfg.d_inner, groups_state, groups_state,
                                    hf_cfg.mamba_num_heads))  # z, x, B, C, dt
        conv = TPSplit(0, sizes=(hf_cfg.d_inner, groups_state, groups_state))  # x, B, C
        hf = "backbone.layers.{}."
        norm = Rule((hf + "norm.weight",), Layout.COPY, REPLICATED)
        mixer = {f"mixer.{p}": Rule((hf + f"mixer.{p}",), Layout.COPY, split) for p, split in (
            ("in_proj.weight", in_proj), ("conv1d.weight", conv), ("conv1d.bias", conv), ("dt_bias", COLUMN),
            ("A_log", COLUMN), ("D", COLUMN), ("norm.weight", COLUMN), ("out_proj.weight", ROW))}
        per_layer = {
            # Mamba layer (local spec: its own norm; TE: fused into in_proj)
            "norm.weight": norm, "mixer.in_proj.layer_norm_weight": norm, **mixer,
            # attention layer
            "input_layernorm.weight": norm, "self_attention.linear_qkv.layer_norm_weight": norm,
            "self_attention.linear_qkv.weight": Rule(tuple(hf + f"mixer.{p}_proj.weight" for p in "qkv"),
                                                     Layout.QKV, COLUMN),
            "self_attention.linear_proj.weight": Rule((hf + "mixer.o_proj.weight",), Layout.COPY, ROW),
            # MLP layer: fc1 is up_proj alone (no gate to stack)
            "pre_mlp_layernorm.weight": norm, "mlp.linear_fc1.layer_norm_weight": norm,
            "mlp.linear_fc1.weight": Rule((hf + "mixer.up_proj.weight",), Layout.COPY, COLUMN),
            "mlp.linear_fc2.weight": Rule((hf + "mixer.down_proj.weight",), Layout.COPY, ROW),
        }
        return {
            "embedding.word_embeddings.weight": Rule(("backbone.embeddings.weight",), Layout.VOCAB, COLUMN),
            "decoder.final_norm.weight": Rule(("backbone.norm_f.weight",), Layout.COPY, REPLICATED),
            "output_layer.weight": Rule(("lm_head.weight",), Layout.VOCAB, COLUMN),
            **{"decoder.layers.{}." + k: v for k, v in per_layer.items()},
        }


def _recompute_each_layer(stack) -> None:
    """Full activation recompute, one layer per unit, as TransformerBlock does for a GPT:
    megatron-core 0.16.1's MambaStack ignores ``recompute_granularity``, so each layer's forward is
    wrapped in Megatron's ``tensor_parallel.checkpoint`` (which restores the TP RNG state)."""
    import torch
    from megatron.core import tensor_parallel
    from megatron.core.transformer.transformer_layer import TransformerLayer

    for layer in stack.layers:
        def forward(hidden_states, _run=layer.forward, _pair=isinstance(layer, TransformerLayer), **kwargs):
            def run(h):  # attention / MLP layers return (hidden_states, context); keep the first
                out = _run(hidden_states=h, **kwargs)
                return out[0] if _pair else out

            if not torch.is_grad_enabled():
                return _run(hidden_states=hidden_states, **kwargs)
            out = tensor_parallel.checkpoint(run, False, hidden_states)
            return (out, None) if _pair else out

        layer.forward = forward
