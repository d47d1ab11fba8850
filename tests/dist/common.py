"""What the torchrun workers share: the ``CHECK`` line, the tiny run config at a layout, and the
full-vocabulary logits of a (TP-split, pipelined) Megatron model on every rank.

Workers run with the repository on ``PYTHONPATH`` (``tests/torchrun_util.py``) and import this as
``tests.dist.common``.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from igrpo_megatron.config import Config


def check(name: str, value) -> None:
    """Print ``CHECK name value`` on global rank 0, at full precision, for ``torchrun_util.checks``."""
    if dist.get_rank() == 0:
        print(f"CHECK {name} {float(value)!r}", flush=True)


def tiny_config(hf_dir: str, tp: int = 1, pp: int = 1, **sections: dict) -> Config:
    """The tiny model's run config at TP x PP: fp32, micro-batches of 2, temperature 1.

    ``sections`` set fields on top, e.g. ``optim={"lr": 1e-4}, train={"max_steps": 10}``.
    """
    cfg = Config()
    cfg.model.hf_path, cfg.model.dtype = hf_dir, "fp32"
    cfg.parallel.tp, cfg.parallel.pp = tp, pp
    cfg.train.micro_batch_size = 2
    cfg.rollout.temperature = 1.0
    for section, fields in sections.items():
        for key, value in fields.items():
            setattr(getattr(cfg, section), key, value)
    return cfg


def from_last_stage(value: torch.Tensor | None, shape, dtype=torch.float64) -> torch.Tensor:
    """Make a value that lives on the last pipeline stage (TP rank 0, DP rank 0) known to every rank."""
    from megatron.core import parallel_state as ps

    out = torch.zeros(shape, dtype=dtype)
    if ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0:
        out += value.to(dtype)
    dist.all_reduce(out)
    return out


def full_logits(model, tokens: torch.Tensor) -> torch.Tensor | None:
    """Eval-mode logits over the full (padded) vocabulary; the tensor on last-stage ranks, else None."""
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    model.eval()
    out = {}

    def forward_step(data_iterator, m):
        t = next(data_iterator)
        pos = torch.arange(t.shape[1]).unsqueeze(0).expand(t.shape[0], -1)
        logits = m(input_ids=t, position_ids=pos, attention_mask=None)

        def keep(o):
            out["logits"] = gather_from_tensor_model_parallel_region(o.float()).detach().clone()
            return o.sum() * 0, {}

        return logits, keep

    with torch.no_grad():
        get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter([tokens]), model=[model], num_microbatches=1,
            seq_length=tokens.shape[1], micro_batch_size=tokens.shape[0], forward_only=True,
        )
    return out.get("logits") if ps.is_pipeline_last_stage() else None


def logits_everywhere(model, tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    """:func:`full_logits` cut to the first ``vocab`` columns, in float32 on every rank."""
    from igrpo_megatron.weights.mapping import unwrap

    rows = unwrap(model).padded_vocab_size
    return from_last_stage(full_logits(model, tokens), (*tokens.shape, rows), torch.float32)[..., :vocab]
