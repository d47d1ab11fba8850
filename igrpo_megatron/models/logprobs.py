"""Per-token logprobs and entropy from tensor-parallel (vocab-sharded) logits, and the pipeline
forward that produces them.

Layout (see ``igrpo_megatron.batch``): position ``t`` holds ``log p(tokens[t] | tokens[:t])`` and
the entropy of that same next-token distribution; position 0 is 0.

The full vocabulary is never gathered: each TP rank holds ``[b, s, V/tp]`` logits, and the max,
the sum of exponentials, the target logit (on the rank that owns it) and ``sum p * logit`` are
all-reduced over the TP group instead -- four ``[b, s]`` reductions in place of a ``[b, s, V]``
all-gather. Rows that only exist because the vocabulary was padded for TP are masked out.
"""
from __future__ import annotations

from functools import partial
from types import SimpleNamespace
from typing import Callable, Iterable, Optional

import torch
import torch.distributed as dist


class _VocabParallelLogprobsEntropy(torch.autograd.Function):
    """Forward and backward by hand so that only one vocabulary-sized buffer (the softmax) is kept
    for backward and at most two exist at once; autograd through the plain formula would keep
    several (scaled, masked, shifted logits, their exponentials, their product).

    Gradients w.r.t. this rank's logits ``z`` (before the 1/T scaling), with p = softmax(z):
    d logprob / dz_j = onehot_j - p_j and d entropy / dz_j = -p_j (log p_j + H). The upstream
    gradients are the same on every TP rank (the loss is replicated), as in Megatron's own
    vocab-parallel cross-entropy.
    """

    @staticmethod
    def forward(ctx, logits, targets, vocab_size, temperature):
        from megatron.core import parallel_state as ps

        group = ps.get_tensor_model_parallel_group()
        tp = ps.get_tensor_model_parallel_world_size()

        def tp_reduce(t, op=dist.ReduceOp.SUM):
            if tp > 1:
                dist.all_reduce(t, op=op, group=group)
            return t

        z = logits.to(torch.float32, copy=True)
        if temperature != 1.0:
            z.div_(temperature)
        v_local = z.shape[-1]
        start = ps.get_tensor_model_parallel_rank() * v_local
        padded = None
        if vocab_size is not None and start + v_local > vocab_size:
            padded = torch.arange(start, start + v_local, device=z.device) >= vocab_size
            z.masked_fill_(padded, float("-inf"))
        z.sub_(tp_reduce(z.max(dim=-1, keepdim=True).values, dist.ReduceOp.MAX))  # shift: exp() cannot overflow

        local = targets - start
        owned = (local >= 0) & (local < v_local)
        index = local.clamp(0, v_local - 1).unsqueeze(-1)
        picked = tp_reduce(torch.where(owned, z.gather(-1, index).squeeze(-1), 0.0))

        p = z.exp()
        if padded is not None:
            z.masked_fill_(padded, 0.0)  # p is 0 there; 0 * -inf would be nan in sum(p * z)
        sum_exp = tp_reduce(p.sum(dim=-1))
        p_dot_z = tp_reduce((p.unsqueeze(-2) @ z.unsqueeze(-1)).reshape(sum_exp.shape))
        del z
        log_z = sum_exp.log()
        logprobs = picked - log_z
        entropy = log_z - p_dot_z / sum_exp
        p.div_(sum_exp.unsqueeze(-1))  # now the softmax itself
        ctx.save_for_backward(p, index, owned, entropy)
        ctx.temperature = temperature
        ctx.set_materialize_grads(False)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        p, index, owned, entropy = ctx.saved_tensors
        grad = torch.zeros_like(p)
        if grad_logprobs is not None:
            grad.addcmul_(p, grad_logprobs.unsqueeze(-1), value=-1.0)
            grad.scatter_add_(-1, index, torch.where(owned, grad_logprobs, 0.0).unsqueeze(-1))
        if grad_entropy is not None:
            term = torch.special.xlogy(p, p)  # p log p, 0 where p underflowed to 0
            term.addcmul_(p, entropy.unsqueeze(-1))
            grad.addcmul_(term, grad_entropy.unsqueeze(-1), value=-1.0)
        if ctx.temperature != 1.0:
            grad.div_(ctx.temperature)
        return grad, None, None, None


def vocab_parallel_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    vocab_size: Optional[int] = None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log softmax(logits / T)[targets]`` and the entropy of ``softmax(logits / T)``, for logits
    sharded over the TP group; both fp32 and differentiable w.r.t. the logits.

    ``logits``: ``[..., V_local]`` this rank's vocabulary slice (rank r holds rows
    ``[r * V_local, (r + 1) * V_local)``); ``targets``: ``[...]`` global token ids. Rows at or beyond
    ``vocab_size`` (TP padding) get zero probability.
    """
    return _VocabParallelLogprobsEntropy.apply(logits, targets, vocab_size, temperature)


def token_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    *,
    vocab_size: Optional[int] = None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logprobs and entropy in the TrainBatch layout from logits ``[b, s, V_local]`` of ``tokens [b, s]``.

    The logit at position ``t`` predicts ``tokens[t + 1]``; results are shifted right by one so
    position ``t`` scores ``tokens[t]``, and position 0 is 0.
    """
    next_tokens = torch.roll(tokens, shifts=-1, dims=1)  # the last column is computed and dropped
    lp, ent = vocab_parallel_logprobs(logits, next_tokens, vocab_size=vocab_size, temperature=temperature)
    return torch.nn.functional.pad(lp[:, :-1], (1, 0)), torch.nn.functional.pad(ent[:, :-1], (1, 0))


def model_forward_step(
    micro_batches: Iterable,
    loss_for: Callable,
    *,
    vocab_size: Optional[int],
    temperature: float,
):
    """A Megatron ``forward_step_func`` over ``micro_batches`` (objects with a ``tokens [b, s]`` field).

    The last stage turns its logits into (logprobs, entropy) and hands them with the micro-batch to
    ``loss_for(logprobs, entropy, micro_batch) -> (loss, reduced_dict)``, which Megatron's schedule
    calls and collects. Every stage walks the same micro-batch list, so PP stages stay in step.
    """

    def loss_func(mb, output):
        lp, ent = token_logprobs(output, mb.tokens, vocab_size=vocab_size, temperature=temperature)
        return loss_for(lp, ent, mb)

    def forward_step(data_iterator, model):
        mb = next(data_iterator)
        b, s = mb.tokens.shape
        position_ids = torch.arange(s, device=mb.tokens.device).unsqueeze(0).expand(b, -1)
        output = model(input_ids=mb.tokens, position_ids=position_ids, attention_mask=None)
        return output, partial(loss_func, mb)

    return forward_step


def _split(tokens: torch.Tensor, micro_batch_size: int) -> list[SimpleNamespace]:
    n = tokens.shape[0]
    if n == 0 or n % micro_batch_size:
        raise ValueError(f"batch of {n} rows is not a positive multiple of micro_batch_size={micro_batch_size}")
    return [SimpleNamespace(tokens=tokens[i:i + micro_batch_size]) for i in range(0, n, micro_batch_size)]


@torch.no_grad()
def compute_logprobs(
    model_chunks: list,
    tokens: torch.Tensor,
    *,
    micro_batch_size: int,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logprobs and entropy ``[B, T]`` of ``tokens`` under the model, on every model-parallel rank.

    Runs Megatron's pipeline schedule forward-only over ``B / micro_batch_size`` micro-batches; the
    last stage's result is broadcast over the pipeline group (TP ranks already agree). ``tokens``
    must be the same on all ranks of the model-parallel group.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from igrpo_megatron.weights.mapping import unwrap

    vocab_size = getattr(unwrap(model_chunks[0]), "hf_vocab_size", None)
    micro = _split(tokens, micro_batch_size)

    def collect(lp, ent, mb):
        return lp.new_zeros(()), {"logprobs": lp, "entropy": ent}

    step = model_forward_step(micro, collect, vocab_size=vocab_size, temperature=temperature)
    outputs = get_forward_backward_func()(
        forward_step_func=step, data_iterator=iter(micro), model=model_chunks, num_microbatches=len(micro),
        seq_length=tokens.shape[1], micro_batch_size=micro_batch_size, forward_only=True)
    if ps.is_pipeline_last_stage():
        result = torch.stack([torch.cat([o["logprobs"] for o in outputs]), torch.cat([o["entropy"] for o in outputs])])
    else:
        result = torch.empty((2, *tokens.shape), dtype=torch.float32, device=tokens.device)
    if ps.get_pipeline_model_parallel_world_size() > 1:
        dist.broadcast(result, src=ps.get_pipeline_model_parallel_last_rank(),
                       group=ps.get_pipeline_model_parallel_group())
    return result[0], result[1]
