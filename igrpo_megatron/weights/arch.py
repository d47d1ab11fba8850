"""Architectures: one :class:`ArchSpec` per model family, registered by HF ``model_type``.

**A new family = one file in ``weights/`` (an ``ArchSpec`` subclass decorated with**
**:func:`register`) + its parity test against transformers.** Nothing else lists the families:
the registry imports every module of this package once, so the new file's ``@register`` runs.
``qwen2.py`` and ``llama.py`` are two such files over the GPT-style base in ``gpt.py``; a family
that is not a GPTModel (e.g. Megatron's ``MambaModel``) subclasses :class:`ArchSpec` directly.

The protocol, in the order the provider (``models/provider.py``) calls it:

- ``read_config(raw, where)``: HF ``config.json`` (a dict) -> :class:`HFModelConfig`, or a subclass
  of it (``@dataclass(frozen=True, kw_only=True)``) when the family needs more fields; refuse what
  the family cannot represent, naming ``where``;
- ``tp_divisors(hf_cfg)``: the ``(count, what)`` pairs tensor parallelism must divide (pipeline
  parallelism always divides ``hf_cfg.num_layers``);
- ``transformer_config(hf_cfg, **run)``: the megatron ``TransformerConfig``; ``run`` carries the
  settings of the run, not of the architecture (dtype, TP/PP, FP8, recompute, no dropout);
- ``build(hf_cfg, config, vocab_size=, pre_process=, post_process=, use_te=)``: the bare Megatron
  model of this pipeline stage (the provider adds Float16Module / DDP around it);
- ``weight_table(hf_cfg)``: Megatron TP=1 parameter name (``{}`` = global layer index) -> the
  :class:`~igrpo_megatron.weights.mapping.Rule` relating it to HF tensors, used by export (refit,
  ``to-hf``) and import (``from-hf``) alike; ``ignored_hf_suffixes`` names HF tensors without weights.
"""
from __future__ import annotations

import abc
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Optional

from igrpo_megatron.config import ConfigError
from igrpo_megatron.registry import Registry
from igrpo_megatron.weights.mapping import Rule, WeightMappingError


@dataclass(frozen=True)
class HFModelConfig:
    """The architecture fields of a HF ``config.json`` that the Megatron model and the weight
    mapping need, normalised across transformers versions (e.g. ``rope_parameters`` vs ``rope_theta``)."""

    model_type: str
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

    def decoder_fields(self) -> dict[str, Any]:
        """The ``TransformerConfig`` fields these config fields fix for every family: sizes, heads,
        RMSNorm and its epsilon, bias-free linears, the init scale (a spec adds the rest)."""
        return dict(num_layers=self.num_layers, hidden_size=self.hidden_size,
                    num_attention_heads=self.num_attention_heads, num_query_groups=self.num_kv_heads,
                    kv_channels=self.head_dim, ffn_hidden_size=self.ffn_hidden_size, normalization="RMSNorm",
                    layernorm_epsilon=self.rms_norm_eps, add_bias_linear=False, add_qkv_bias=self.qkv_bias,
                    init_method_std=self.init_std)


class ArchSpec(abc.ABC):
    """Everything the project knows about one model family; see the module docstring."""

    model_type: ClassVar[str]
    ignored_hf_suffixes: ClassVar[tuple[str, ...]] = ()
    #: layers that carry state from token to token (Mamba): vLLM's CPU prefix cache breaks on them
    recurrent_state: ClassVar[bool] = False

    @abc.abstractmethod
    def read_config(self, raw: dict, where: str) -> HFModelConfig: ...

    @abc.abstractmethod
    def tp_divisors(self, hf_cfg: HFModelConfig) -> list[tuple[int, str]]: ...

    @abc.abstractmethod
    def transformer_config(self, hf_cfg: HFModelConfig, **run: Any): ...

    @abc.abstractmethod
    def build(self, hf_cfg: HFModelConfig, config, *, vocab_size: int, pre_process: bool, post_process: bool,
              use_te: bool): ...

    @abc.abstractmethod
    def weight_table(self, hf_cfg: HFModelConfig) -> Mapping[str, Rule]: ...


class UnsupportedArchitecture(ConfigError, WeightMappingError):
    """A model_type no spec is registered for: a config error where the model is chosen, a mapping
    error where a weight map is asked for, with one message either way."""


_SPECS: Registry[ArchSpec] = Registry("model_type")
_discovered = False


def register(cls: type[ArchSpec]) -> type[ArchSpec]:
    """Class decorator: make (an instance of) ``cls`` the spec of ``cls.model_type``."""
    _SPECS.register(cls.model_type)(cls())
    return cls


def _registry() -> Registry[ArchSpec]:
    global _discovered
    if not _discovered:
        import igrpo_megatron.weights as package

        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{module.name}")
        _discovered = True
    return _SPECS


def registered_model_types() -> list[str]:
    return sorted(_registry())


def arch_spec(model_type: Optional[str], where: str = "") -> ArchSpec:
    """The spec of ``model_type``; otherwise a one-line error listing the registered ones."""
    specs = _registry()
    if model_type not in specs:
        prefix = f"{where}: " if where else ""
        raise UnsupportedArchitecture(f"{prefix}model_type {model_type!r} is not supported; registered: "
                                      f"{', '.join(registered_model_types())}")
    return specs[model_type]
