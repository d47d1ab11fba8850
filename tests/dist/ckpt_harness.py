"""A small, fully seeded Megatron training setup for the checkpoint tests (run under torchrun).

The model comes from the project's provider (tiny HF Qwen2 folder -> GPTModel); optimizer,
scheduler and the step are megatron-core's own (DDP + get_megatron_optimizer +
OptimizerParamScheduler + the pipeline schedule), so the checkpoint round-trip is tested on the
real objects a trainer holds. Every random source a resume must restore is used on purpose:
dropout under the TP RNG tracker, torch's CPU generator (token corruption), NumPy (loss-mask
dropping), Python's ``random`` (micro-batch order) and a data position (an epoch-shuffled
sequence of examples).
"""
from __future__ import annotations

import random

import numpy as np
import torch
import torch.distributed as dist

from igrpo_megatron.config import ModelConfig, ParallelConfig
from igrpo_megatron.models.parallel import initialize_parallel
from igrpo_megatron.models.provider import build_model, load_hf_config

SEQ, MBS, GLOBAL_BATCH = 16, 2, 8  # the global batch is the same at every DP size


def setup(hf_dir: str, tp: int, pp: int, distributed_optimizer: bool = True, dropout: float = 0.1,
          seed: int = 1234, lr: float = 1e-3):
    """Initialise the layout and build ``(model, optimizer, scheduler)`` for it."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    parallel_cfg = ParallelConfig(tp=tp, pp=pp, use_distributed_optimizer=distributed_optimizer)
    initialize_parallel(parallel_cfg, seed=seed)
    random.seed(seed)
    np.random.seed(seed)
    model = build_model(load_hf_config(hf_dir), ModelConfig(hf_path=hf_dir, dtype="fp32", transformer_impl="local"),
                        parallel_cfg, wrap_ddp=True)
    for m in model.modules():  # the provider builds without dropout; RL resumes must survive it
        if isinstance(m, torch.nn.Dropout):
            m.p = dropout
        if hasattr(m, "hidden_dropout"):
            m.hidden_dropout = dropout
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=lr, min_lr=lr / 10, weight_decay=0.01, clip_grad=1.0, bf16=False,
                        params_dtype=torch.float32, use_distributed_optimizer=distributed_optimizer),
        [model],
    )
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=lr, min_lr=lr / 10, lr_warmup_steps=2, lr_decay_steps=50,
        lr_decay_style="cosine", start_wd=0.01, end_wd=0.01, wd_incr_steps=50, wd_incr_style="constant",
    )
    return model, optimizer, scheduler


class ExampleStream:
    """An epoch-shuffled stream of fixed examples with a resumable position (like a data loader)."""

    def __init__(self, num_examples: int, vocab: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.examples = torch.randint(3, vocab, (num_examples, SEQ + 1), generator=g)
        self.seed, self.epoch, self.pos = seed, 0, 0
        self._order = self._shuffle()

    def _shuffle(self):
        return torch.randperm(len(self.examples), generator=torch.Generator().manual_seed(self.seed + self.epoch))

    def take(self, n: int) -> torch.Tensor:
        rows = []
        for _ in range(n):
            if self.pos == len(self.examples):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffle()
            rows.append(self.examples[self._order[self.pos]])
            self.pos += 1
        return torch.stack(rows)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._shuffle()


def _micro_batches(stream: ExampleStream, vocab: int, noise: bool):
    """This DP rank's micro-batches of the next global batch; ``noise`` adds the RNG-dependent
    token corruption, loss-mask dropping and micro-batch order."""
    from megatron.core import parallel_state as ps

    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    per_dp = GLOBAL_BATCH // dp
    rows = stream.take(GLOBAL_BATCH)[dp_rank * per_dp:(dp_rank + 1) * per_dp]
    tokens, labels = rows[:, :-1].clone(), rows[:, 1:]
    mask = torch.ones(labels.shape)
    if noise:
        corrupt = torch.rand(tokens.shape) < 0.1  # torch CPU generator
        tokens[corrupt] = torch.randint(3, vocab, (int(corrupt.sum()),))
        mask = torch.from_numpy(np.random.rand(*labels.shape) > 0.2).float()  # NumPy generator
    batches = [dict(tokens=tokens[i:i + MBS], labels=labels[i:i + MBS], mask=mask[i:i + MBS])
               for i in range(0, per_dp, MBS)]
    if noise:
        random.shuffle(batches)  # Python generator
    return batches


def _forward_step(data_iterator, model):
    b = next(data_iterator)
    pos = torch.arange(SEQ).unsqueeze(0).expand(b["tokens"].shape[0], -1)
    per_token = model(input_ids=b["tokens"], position_ids=pos, attention_mask=None, labels=b["labels"])

    def loss_func(output):
        loss = (output.float() * b["mask"]).sum() / b["mask"].sum().clamp(min=1)
        return loss, {"loss": loss.detach().clone()}  # megatron divides `loss` in place

    return per_token, loss_func


def from_last_stage(value: torch.Tensor | None, shape, dtype=torch.float64) -> torch.Tensor:
    """Make a value that lives on the last pipeline stage (TP rank 0, DP rank 0) known to every rank."""
    from megatron.core import parallel_state as ps

    out = torch.zeros(shape, dtype=dtype)
    if ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0:
        out += value.to(dtype)
    dist.all_reduce(out)
    return out


def _report(per_micro: list[dict]) -> float:
    """The global mean loss, on every rank."""
    from megatron.core import parallel_state as ps

    local = torch.zeros(1, dtype=torch.float64)
    if ps.is_pipeline_last_stage():
        local += sum(float(d["loss"]) for d in per_micro) / len(per_micro)
    dist.all_reduce(local, group=ps.get_data_parallel_group())
    return float(from_last_stage(local / ps.get_data_parallel_world_size(), (1,)))


def train_step(model, optimizer, scheduler, stream: ExampleStream, vocab: int, noise: bool = True) -> float:
    """One optimizer step on one global batch; returns the global mean loss (same on all ranks)."""
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.utils import get_model_config

    config = get_model_config(model)
    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = model.no_sync
    model.train()
    model.zero_grad_buffer()
    optimizer.zero_grad()
    batches = _micro_batches(stream, vocab, noise)
    per_micro = get_forward_backward_func()(
        forward_step_func=_forward_step, data_iterator=iter(batches), model=[model],
        num_microbatches=len(batches), seq_length=SEQ, micro_batch_size=MBS, forward_only=False,
    )
    ok, _, _ = optimizer.step()
    assert ok, "optimizer step skipped"
    scheduler.step(increment=1)
    return _report(per_micro)


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
