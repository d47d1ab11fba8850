"""Build the megatron-core model shaped like a Hugging Face checkpoint, for any registered family.

The HF ``config.json`` is read once, by its family's :class:`~igrpo_megatron.weights.arch.ArchSpec`
(looked up by ``model_type``), into :class:`HFModelConfig`; the spec turns it into a
``TransformerConfig`` and builds the bare model for this rank's pipeline stage. This module adds
what is the run's, not the family's: dtype and wrappers, TP/PP and the layout check, FP8,
recompute, the padded vocabulary. Weights are loaded elsewhere (``igrpo_megatron.weights``).

Transformer Engine is decided here and nowhere else (:func:`use_transformer_engine`): TE's layer
spec (and FP8 when asked for) when ``transformer_engine`` imports, Megatron's local spec otherwise.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

import torch

from igrpo_megatron.config import ConfigError, ModelConfig, ParallelConfig
from igrpo_megatron.weights.arch import HFModelConfig, arch_spec

#: ``model.dtype`` names -> torch dtypes (HF's ``torch_dtype`` spelling is the torch name).
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    where = f"model.hf_path={path}"
    return arch_spec(raw.get("model_type"), where).read_config(raw, where)


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


def layout_rules(hf_cfg: HFModelConfig, tp: int, pp: int, tp_field: str = "parallel.tp") -> list[tuple[str, int, int, str]]:
    """``(field, n, count, what)``: every count the layout must divide. TP (Megatron's, or vLLM's
    under ``tp_field``) what the family says it must (heads and key/value heads for a GPT, also
    the Mamba heads and groups for Nemotron-H); PP the layers (``pp=1`` to leave it out)."""
    rules = [(tp_field, tp, count, what) for count, what in arch_spec(hf_cfg.model_type).tp_divisors(hf_cfg)]
    return rules + [("parallel.pp", pp, hf_cfg.num_layers, "layers")]


def check_divides(rules: list[tuple[str, int, int, str]]) -> list[str]:
    """Raise a ConfigError naming the first rule broken; else each rule, said in words."""
    for name, n, count, what in rules:
        if count % n:
            raise ConfigError(f"{name}={n} does not divide the model's {count} {what}; choose a divisor of {count}")
    return [f"{name}={n} divides {count} {what}" for name, n, count, what in rules]


def check_layout(hf_cfg: HFModelConfig, tp: int, pp: int) -> None:
    """Raise a ConfigError unless the training layout divides the model (:func:`layout_rules`)."""
    check_divides(layout_rules(hf_cfg, tp, pp))


def transformer_config_from_hf(hf_cfg: HFModelConfig, model_cfg: ModelConfig, parallel_cfg: ParallelConfig):
    """A megatron ``TransformerConfig`` equal in architecture to ``hf_cfg``, laid out per ``parallel_cfg``."""
    tp, pp = parallel_cfg.tp, parallel_cfg.pp
    check_layout(hf_cfg, tp, pp)
    if parallel_cfg.sequence_parallel and tp == 1:
        raise ConfigError("parallel.sequence_parallel=true needs parallel.tp > 1")
    if parallel_cfg.sequence_parallel and not use_transformer_engine(model_cfg):
        raise ConfigError("parallel.sequence_parallel=true needs Transformer Engine's layer spec (Megatron's "
                          "local torch norms do not support it): `pip install .[gpu]` on GPU nodes, or set "
                          "parallel.sequence_parallel=false")
    dtype = DTYPES[model_cfg.dtype]
    fp8: dict[str, Any] = {}
    if model_cfg.fp8 is not None:
        fp8 = dict(fp8=model_cfg.fp8, fp8_recipe=model_cfg.fp8_recipe,
                   fp8_amax_history_len=model_cfg.fp8_amax_history_len,
                   fp8_amax_compute_algo=model_cfg.fp8_amax_compute_algo)
    recompute: dict[str, Any] = {}
    if model_cfg.recompute_activations:  # full-layer gradient checkpointing, one layer per unit
        recompute = dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    return arch_spec(hf_cfg.model_type).transformer_config(
        hf_cfg,
        # RL fine-tuning: no dropout, so the trainer's logprobs are those the sampler's weights give
        attention_dropout=0.0,
        hidden_dropout=0.0,
        attention_softmax_in_fp32=True,
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
        **fp8,
        **recompute,
    )


def build_model(hf_cfg: HFModelConfig, model_cfg: ModelConfig, parallel_cfg: ParallelConfig, *,
                pre_process: Optional[bool] = None, post_process: Optional[bool] = None,
                wrap_ddp: bool = False):
    """The model for this rank's pipeline stage (model-parallel state must be initialised).

    With ``dtype`` bf16/fp16 the model is wrapped in Megatron's ``Float16Module`` (fp32 logits out
    of the last stage); with ``wrap_ddp`` it is further wrapped in Megatron's DDP for training.
    The returned object carries ``hf_vocab_size`` / ``padded_vocab_size`` (also on the bare model
    inside, see :func:`~igrpo_megatron.weights.mapping.unwrap`) so logprobs mask, and export strips, the padded rows.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.transformer.module import Float16Module

    config = transformer_config_from_hf(hf_cfg, model_cfg, parallel_cfg)
    if pre_process is None:
        pre_process = ps.is_pipeline_first_stage()
    if post_process is None:
        post_process = ps.is_pipeline_last_stage()
    vocab = padded_vocab_size(hf_cfg.vocab_size, parallel_cfg.tp, model_cfg.vocab_pad_multiple)
    model = arch_spec(hf_cfg.model_type).build(hf_cfg, config, vocab_size=vocab, pre_process=pre_process,
                                               post_process=post_process, use_te=use_transformer_engine(model_cfg))
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

