"""The trainable policy (and the frozen reference): model chunks, optimizer, LR schedule, and the
two things the RL loop asks of them -- logprobs of a batch, and one optimizer step on a batch.

Loss scaling contract. A loss function receives the GLOBAL denominators of the optimizer step
(real sequences and response tokens summed over every micro-batch and data-parallel rank), so the
micro-batch losses SUM to the step's loss. Megatron's schedule divides each micro-batch loss by
the number of micro-batches and its DDP averages gradients over data-parallel ranks; the step
multiplies the loss by ``num_microbatches * dp_size`` first, so the gradient is exactly that of
the global loss whatever the micro-batch size and DP layout.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.distributed as dist

from igrpo_megatron.batch import TrainBatch
from igrpo_megatron.config import Config, ConfigError, TrainConfig
from igrpo_megatron.models.logprobs import compute_logprobs, micro_batches_by_length, model_forward_step
from igrpo_megatron.models.parallel import current_device
from igrpo_megatron.models.provider import HFModelConfig, build_model

# loss_fn(logprobs [b,T], entropy [b,T], micro_batch, denominators) -> (loss, metrics)
LossFn = Callable[[torch.Tensor, torch.Tensor, TrainBatch, dict], tuple[torch.Tensor, dict]]


def global_denominators(batch: TrainBatch) -> dict[str, torch.Tensor]:
    """Sequences with at least one response token, and response tokens, over all DP ranks."""
    from megatron.core import parallel_state as ps

    mask = batch.response_mask.float()
    counts = torch.stack([(mask.sum(1) > 0).sum().float(), mask.sum()]).to(current_device())
    if ps.get_data_parallel_world_size() > 1:
        dist.all_reduce(counts, group=ps.get_data_parallel_group())
    return {"num_sequences": counts[0].clamp_min(1), "num_tokens": counts[1].clamp_min(1)}


def _to_device(batch: TrainBatch) -> TrainBatch:
    device = current_device()
    return TrainBatch(**{k: None if v is None else v.to(device) for k, v in vars(batch).items()})


def optimizer_steps(train: TrainConfig, iterations: int) -> int:
    """The LR schedule's length: every iteration takes ``ppo_epochs x mini_batches`` optimizer steps."""
    return iterations * train.ppo_epochs * train.mini_batches


def needs_old_logprobs(train: TrainConfig) -> bool:
    """Whether the old policy's logprobs need their own forward pass: only when a rollout batch
    feeds several optimizer steps. With one, the old policy IS the policy being trained, so the
    loss takes the training forward's logprobs, detached (``policy_loss(old_logprobs=None)``)."""
    return optimizer_steps(train, 1) > 1


class Policy:
    """Megatron model chunks for this rank's pipeline stage, plus optimizer and LR schedule.

    ``frozen=True`` builds the reference model: same layout, no gradients, no optimizer.
    Weights come from ``model.init_checkpoint`` when set (a Megatron checkpoint, any layout), else
    from ``model.hf_path`` when ``model.load_hf_weights``, so the reference is the starting model
    either way. Training checkpoints are restored afterwards by ``igrpo_megatron.checkpoint``
    through :attr:`model_chunks`, :attr:`optimizer` and :attr:`scheduler`. The LR schedule spans ``total_steps`` optimizer steps; by default
    ``train.max_steps * train.ppo_epochs * train.mini_batches``.

    Logprobs use ``rollout.temperature`` (logits / T), like the distribution vLLM sampled from, so
    old, new and rollout logprobs are comparable; pass ``temperature=1.0`` for plain likelihoods.
    """

    def __init__(self, cfg: Config, hf_cfg: HFModelConfig, *, frozen: bool = False,
                 total_steps: Optional[int] = None):
        self.cfg = cfg
        self.hf_cfg = hf_cfg
        self.frozen = frozen
        self.temperature = cfg.rollout.temperature
        model = build_model(hf_cfg, cfg.model, cfg.parallel, wrap_ddp=not frozen)
        # Micro-batches are cut to their own longest row, so their shapes differ: the pipeline
        # stages exchange each activation's shape before it (a few ints per micro-batch).
        model.config.variable_seq_lengths = True
        self.model_chunks = [model]
        if cfg.model.init_checkpoint:  # e.g. written by `igrpo-convert from-hf`, at any layout
            from igrpo_megatron.checkpoint import load_checkpoint

            load_checkpoint(cfg.model.init_checkpoint, self.model_chunks, load_optimizer=False, load_rng=False)
        elif cfg.model.load_hf_weights:
            from igrpo_megatron.weights import load_hf_weights

            load_hf_weights(self.model_chunks, cfg.model.hf_path, hf_cfg)
        self.optimizer = None
        self.scheduler = None
        if frozen:
            for p in model.parameters():
                p.requires_grad_(False)
            model.eval()
            return
        self._build_optimizer(total_steps)

    # -- construction

    def _build_optimizer(self, total_steps: Optional[int]) -> None:
        from megatron.core.distributed import finalize_model_grads
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

        o, t = self.cfg.optim, self.cfg.train
        if total_steps is None:
            if t.max_steps is None:
                raise ConfigError("the LR schedule needs its length: set train.max_steps, or pass total_steps "
                                  "(optimizer steps = iterations x train.ppo_epochs x train.mini_batches) to Policy")
            total_steps = optimizer_steps(t, t.max_steps)
        config = self.model_chunks[0].config
        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(
                optimizer="adam",
                lr=o.lr,
                min_lr=o.lr * o.min_lr_ratio,
                weight_decay=o.weight_decay,
                adam_beta1=o.adam_beta1,
                adam_beta2=o.adam_beta2,
                adam_eps=o.adam_eps,
                clip_grad=o.clip_grad,
                bf16=config.bf16,
                fp16=config.fp16,
                params_dtype=config.params_dtype,
                use_distributed_optimizer=self.cfg.parallel.use_distributed_optimizer,
            ),
            self.model_chunks,
        )
        self.total_steps = max(int(total_steps), 1)
        self.scheduler = OptimizerParamScheduler(
            self.optimizer,
            init_lr=0.0,
            max_lr=o.lr,
            min_lr=o.lr * o.min_lr_ratio,
            lr_warmup_steps=int(round(o.warmup_ratio * self.total_steps)),
            lr_decay_steps=self.total_steps,
            lr_decay_style="cosine",
            start_wd=o.weight_decay,
            end_wd=o.weight_decay,
            wd_incr_steps=self.total_steps,
            wd_incr_style="constant",
        )
        # What Megatron's schedule needs from the model config to reduce gradients at the end.
        config.finalize_model_grads_func = finalize_model_grads
        config.no_sync_func = self.model_chunks[0].no_sync
        config.grad_scale_func = self.optimizer.scale_loss

    # -- the two operations of the RL loop

    def compute_logprobs_and_entropy(self, batch: TrainBatch, *, micro_batch_size: Optional[int] = None,
                                     temperature: Optional[float] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, T]`` logprobs and entropy of every position of ``batch.tokens`` (no gradient), on
        every rank, on CPU."""
        lp, ent = compute_logprobs(
            self.model_chunks, batch.tokens.to(current_device()),
            micro_batch_size=micro_batch_size or self.cfg.train.micro_batch_size,
            temperature=self.temperature if temperature is None else temperature)
        return lp.cpu(), ent.cpu()

    def compute_logprobs(self, batch: TrainBatch, *, micro_batch_size: Optional[int] = None,
                         temperature: Optional[float] = None) -> torch.Tensor:
        """Old-policy or reference logprobs ``[B, T]`` (no gradient) up to each row's last response
        token, 0 after it: micro-batches grouped by length, as :meth:`train_step` groups them."""
        lp, _ = compute_logprobs(
            self.model_chunks, batch.tokens.to(current_device()),
            micro_batch_size=micro_batch_size or self.cfg.train.micro_batch_size,
            temperature=self.temperature if temperature is None else temperature,
            lengths=batch.row_lengths(), max_tokens=self.cfg.train.max_tokens_per_micro_batch)
        return lp.cpu()

    def weight_norm(self) -> float:
        """L2 norm of all the model's parameters (Megatron-LM's ``params-norm``), each counted once:
        a tensor-parallel replica on TP rank 0 only, a tied embedding on its first pipeline stage
        only; on every rank (collective over the model-parallel group)."""
        from megatron.core import parallel_state as ps
        from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate
        from megatron.core.transformer.module import param_is_not_shared

        norms = [torch.linalg.vector_norm(p.detach(), dtype=torch.float32) for chunk in self.model_chunks
                 for p in chunk.parameters() if param_is_not_shared(p) and param_is_not_tensor_parallel_duplicate(p)]
        total = torch.stack(norms).double().square().sum()
        group = ps.get_model_parallel_group()
        if dist.get_world_size(group) > 1:
            dist.all_reduce(total, group=group)
        return float(total.sqrt())

    def train_step(self, batch: TrainBatch, loss_fn: LossFn, *, micro_batch_size: Optional[int] = None,
                   temperature: Optional[float] = None) -> dict[str, float]:
        """One optimizer step on this data-parallel rank's share ``batch`` (all ranks call it).

        ``loss_fn(logprobs, entropy, micro_batch, denominators)`` is called once per micro-batch on
        the last pipeline stage; ``denominators`` holds the step's global ``num_sequences`` and
        ``num_tokens``. Its metrics must be partial sums that add up over micro-batches and DP
        ranks (names ending in ``_max`` reduce with max), as ``algorithms.losses`` produces them.
        Returns those metrics plus ``grad_norm``, ``lr`` and ``update_ok``, on every rank.
        """
        from megatron.core import parallel_state as ps
        from megatron.core.pipeline_parallel import get_forward_backward_func

        if self.frozen:
            raise RuntimeError("train_step on a frozen (reference) model")
        mbs = micro_batch_size or self.cfg.train.micro_batch_size
        batch = _to_device(batch)
        groups = micro_batches_by_length(batch.row_lengths(), mbs, self.cfg.train.max_tokens_per_micro_batch)
        micro = [batch.select(rows).narrow(width) for rows, width in groups]
        denominators = global_denominators(batch)
        scale = len(micro) * ps.get_data_parallel_world_size()

        def loss_for(logprobs, entropy, mb):
            loss, metrics = loss_fn(logprobs, entropy, mb, denominators)
            metrics = {"loss": loss, **metrics}
            return loss * scale, {k: torch.as_tensor(v).detach().float() for k, v in metrics.items()}

        for chunk in self.model_chunks:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        self.scheduler.step(1)  # the k-th update uses the schedule's LR at step k
        step = model_forward_step(micro, loss_for, vocab_size=self.hf_cfg.vocab_size,
                                  temperature=self.temperature if temperature is None else temperature)
        outputs = get_forward_backward_func()(
            forward_step_func=step, data_iterator=iter(micro), model=self.model_chunks,
            num_microbatches=len(micro), seq_length=max(width for _, width in groups), micro_batch_size=mbs,
            forward_only=False)
        update_ok, grad_norm, _ = self.optimizer.step()
        metrics = _reduce_metrics(outputs)
        metrics.update(grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
                       lr=self.scheduler.get_lr(self.optimizer.param_groups[0]), update_ok=float(bool(update_ok)))
        return metrics


def _reduce_metrics(outputs: list[dict]) -> dict[str, float]:
    """Sum (max for ``*_max``) the last stage's per-micro-batch metrics over micro-batches and DP
    ranks, then hand the result to every pipeline stage."""
    from megatron.core import parallel_state as ps

    result = None
    if ps.is_pipeline_last_stage():
        names = sorted(outputs[0]) if outputs else []
        sums = [n for n in names if not n.endswith("_max")]
        maxes = [n for n in names if n.endswith("_max")]
        s = torch.stack([sum(o[n] for o in outputs) for n in sums]) if sums else torch.zeros(0)
        m = torch.stack([torch.stack([o[n] for o in outputs]).max() for n in maxes]) if maxes else torch.zeros(0)
        s, m = s.to(current_device()), m.to(current_device())
        if ps.get_data_parallel_world_size() > 1:
            dist.all_reduce(s, group=ps.get_data_parallel_group())
            dist.all_reduce(m, op=dist.ReduceOp.MAX, group=ps.get_data_parallel_group())
        result = {**dict(zip(sums, s.tolist())), **dict(zip(maxes, m.tolist()))}
    if ps.get_pipeline_model_parallel_world_size() > 1:
        box = [result]
        dist.broadcast_object_list(box, src=ps.get_pipeline_model_parallel_last_rank(),
                                   group=ps.get_pipeline_model_parallel_group())
        result = box[0]
    return result
