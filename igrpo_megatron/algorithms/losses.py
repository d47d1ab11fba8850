"""The clipped policy-gradient loss (GRPO / DAPO / Dr.GRPO / GSPO variants) and the SFT loss.

Both are called by the Megatron training step once PER MICRO-BATCH. All tensors are ``[B, T]`` in
the :class:`~igrpo_megatron.batch.TrainBatch` layout (position t scores token t); ``mask`` is 1 on
stage-2 response tokens only, and ``advantages`` is ``[B]``.

Global denominators: ``num_sequences`` / ``num_tokens`` are the counts over ALL micro-batches and
data-parallel ranks of one optimizer step, so the micro-batch losses SUM to the loss of the whole
step (the gradient of a token does not depend on how the batch was cut). The caller must therefore
sum, not average: Megatron's default of dividing by the number of micro-batches and averaging
gradients over data-parallel ranks has to be undone (scale by ``num_microbatches * dp_size``) or
turned off. Left at None they default to the local counts (one micro-batch = the whole step).

Metrics follow the same rule: every metric is a partial sum normalised by the global token count
(or the loss's own aggregation), so summing a metric over micro-batches and data-parallel ranks
gives the step's value -- except metrics whose name ends in ``_max``, which reduce with max.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import Tensor

from igrpo_megatron.algorithms.baselines import shaped_objective
from igrpo_megatron.config import LossConfig
from igrpo_megatron.registry import Registry

Count = Union[int, float, Tensor]

# exp() of a log-ratio above this overflows float32 soon after; clamping keeps a rogue token's loss
# finite (its gradient is zero beyond the clamp, which the clip would impose anyway).
MAX_LOG_RATIO = 20.0

# ------------------------------------------------------------------------------ KL estimators

KLFn = Callable[[Tensor, Tensor], Tensor]
KL_ESTIMATORS: Registry[KLFn] = Registry("loss.kl_estimator")


# Schulman, "Approximating KL divergence" (2020): samples come from the policy q = pi_theta, the
# target is KL(q || p) with p = pi_ref, and r = p(x) / q(x), i.e. log r = ref - logprobs.
@KL_ESTIMATORS.register("k1")
def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = -log r: unbiased, high variance, can be negative per token."""
    return logprobs - ref_logprobs


@KL_ESTIMATORS.register("k2")
def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 = (log r)^2 / 2: biased, low variance, non-negative."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


@KL_ESTIMATORS.register("k3")
def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = (r - 1) - log r: unbiased, low variance, non-negative (the GRPO / iGRPO paper's choice)."""
    log_r = (ref_logprobs - logprobs).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return torch.exp(log_r) - log_r - 1


# ------------------------------------------------------------------------------ aggregation

AggregationFn = Callable[[Tensor, Tensor, Count, Count, Optional[float]], Tensor]
AGGREGATIONS: Registry[AggregationFn] = Registry("loss.aggregation")


@AGGREGATIONS.register("seq_mean_token_mean")
def _seq_mean_token_mean(values: Tensor, mask: Tensor, num_sequences: Count, num_tokens: Count,
                         norm_constant: Optional[float]) -> Tensor:
    """GRPO / iGRPO paper: mean over a sequence's tokens, then mean over sequences."""
    return (values.sum(1) / mask.sum(1).clamp_min(1)).sum() / num_sequences


@AGGREGATIONS.register("token_mean")
def _token_mean(values: Tensor, mask: Tensor, num_sequences: Count, num_tokens: Count,
                norm_constant: Optional[float]) -> Tensor:
    """DAPO (Yu et al. 2025): mean over all tokens of the step, so long answers are not down-weighted."""
    return values.sum() / num_tokens


@AGGREGATIONS.register("seq_mean_token_sum_norm")
def _seq_mean_token_sum_norm(values: Tensor, mask: Tensor, num_sequences: Count, num_tokens: Count,
                             norm_constant: Optional[float]) -> Tensor:
    """Dr.GRPO (Liu et al. 2025): token sums divided by a CONSTANT (not the sequence's length, which
    biases towards long wrong answers), then mean over sequences."""
    if norm_constant is None:
        raise ValueError("loss.aggregation=seq_mean_token_sum_norm needs loss.seq_sum_norm_constant "
                         "(Dr.GRPO uses the generation budget, rollout.max_tokens)")
    return (values.sum(1) / norm_constant).sum() / num_sequences


# ------------------------------------------------------------------------------ losses


def _check_shapes(reference: Tensor, **tensors: Optional[Tensor]) -> None:
    for name, t in tensors.items():
        if t is not None and t.shape != reference.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(reference.shape)} like logprobs")


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Optional[Tensor],
    advantages: Tensor,
    mask: Tensor,
    cfg: LossConfig,
    *,
    ref_logprobs: Optional[Tensor] = None,
    rollout_logprobs: Optional[Tensor] = None,
    entropy: Optional[Tensor] = None,
    shaping_gamma: Optional[Tensor] = None,
    num_sequences: Optional[Count] = None,
    num_tokens: Optional[Count] = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate loss of one micro-batch (a quantity to MINIMISE) and its metrics.

    Per response token t of sequence i, with A_i the sequence's advantage:

    - ratio r = exp(logprobs - old_logprobs) (PPO, Schulman et al. 2017). ``old_logprobs=None``
      means the old policy is the one being trained (one optimizer step per rollout batch): old is
      ``logprobs.detach()``, r is 1 with the gradient of ``logprobs``, exactly what a separate
      forward of the same weights gives, without that forward. With
      ``cfg.ratio_level="sequence"`` every token uses the sequence's length-normalised geometric-mean
      ratio exp(mean_t(logprobs - old_logprobs)) (GSPO, Zheng et al. 2025).
    - pg = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)); separate bounds are DAPO's
      clip-higher (Yu et al. 2025). With ``dual_clip_c`` = c, tokens with A < 0 are further capped
      at -A c so a huge ratio cannot blow the loss up (dual-clip PPO, Ye et al. 2020).
    - With ``tis_cap`` and ``rollout_logprobs``: pg is weighted by min(exp(old - rollout), tis_cap),
      the truncated importance weight that corrects for vLLM's sampler differing numerically from
      the trainer (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL").
    - With ``shaping_gamma [B]`` (Critique-GRPO's refinements, gamma > 0 on their rows): those
      rows' pg is -A pi / (pi + gamma) instead (``baselines.shaped_objective``): no ratio, no clip,
      no TIS, and they are left out of the mismatch figures (they were sampled under the critique
      prompt, they are scored under the question).
    - + kl_beta * KL(pi_theta || pi_ref) with estimator k1/k2/k3, - entropy_coef * entropy.

    The per-token terms are then aggregated (``cfg.aggregation``) with the GLOBAL denominators
    (see the module docstring). Gradient flows only through ``logprobs`` (and ``entropy`` when
    ``entropy_coef != 0``) at positions where ``mask`` is 1.

    Metrics (detached scalars): ``loss``, ``pg_loss``; ``clip_frac_low`` / ``clip_frac_high``
    (tokens whose gradient a clip bound removes), ``ratio_mean``, ``approx_kl`` (k3 of
    KL(pi_old || pi_theta)); with ``ratio_level="sequence"`` ``seq_ratio_mean`` / ``seq_ratio_max``
    (GSPO's sequence ratio, over sequences); ``dual_clip_frac`` with dual-clip; ``kl_ref`` with ref_logprobs;
    ``entropy`` with entropy; with rollout_logprobs ``mismatch_abs_diff`` (mean |old - rollout|),
    ``mismatch_kl`` (k3 of KL(pi_rollout || pi_train)), ``mismatch_ratio_max`` (max
    exp(old - rollout)), and with tis_cap ``tis_weight_mean``, ``tis_clip_frac``; with
    shaping_gamma ``shaped_frac`` (the share of tokens shaped).
    """
    _check_shapes(logprobs, old_logprobs=old_logprobs, mask=mask, ref_logprobs=ref_logprobs,
                  rollout_logprobs=rollout_logprobs, entropy=entropy)
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must be [B] = [{logprobs.shape[0]}], got {tuple(advantages.shape)}")
    if cfg.kl_beta > 0 and ref_logprobs is None:
        raise ValueError("loss.kl_beta > 0 needs ref_logprobs from the reference model")
    if cfg.entropy_coef != 0 and entropy is None:
        raise ValueError("loss.entropy_coef != 0 needs the per-token entropy (entropy_from_logits)")
    if cfg.tis_cap is not None and rollout_logprobs is None:
        raise ValueError("loss.tis_cap is set but no rollout_logprobs were given; the rollout must "
                         "return per-token logprobs for truncated importance sampling")

    keep = mask.bool()
    m = keep.to(torch.float32)
    zero = torch.zeros((), dtype=torch.float32, device=logprobs.device)
    if num_sequences is None:
        num_sequences = logprobs.shape[0]
    if num_tokens is None:
        num_tokens = m.sum().clamp_min(1)

    def masked(x: Tensor) -> Tensor:  # where(), not x * m: padding may hold inf/NaN logprobs
        return torch.where(keep, x, zero)

    def agg(x: Tensor) -> Tensor:
        return AGGREGATIONS[cfg.aggregation](masked(x), m, num_sequences, num_tokens,
                                             cfg.seq_sum_norm_constant)

    def token_mean(x: Tensor) -> Tensor:
        return masked(x.detach().float()).sum() / num_tokens

    # Zero every input outside the mask first: padding may hold -inf / NaN logprobs, and a 0 * inf in
    # any backward (k2's square, say) would poison the gradient of the whole micro-batch.
    lp = masked(logprobs.float())
    old = lp.detach() if old_logprobs is None else masked(old_logprobs.detach().float())
    adv = advantages.detach().float()[:, None]

    metrics: dict[str, Tensor] = {}
    token_log_ratio = lp - old
    if cfg.ratio_level == "sequence":
        seq_log_ratio = token_log_ratio.sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)
        log_ratio = seq_log_ratio.expand_as(token_log_ratio)
        # GSPO clips whole sequences: their ratios, per sequence (rows without response tokens left out)
        seq_ratio = torch.where(keep.any(1), seq_log_ratio[:, 0].detach().clamp(max=MAX_LOG_RATIO).exp(), zero)
        metrics["seq_ratio_mean"] = seq_ratio.sum() / num_sequences
        metrics["seq_ratio_max"] = seq_ratio.amax()
    else:
        log_ratio = token_log_ratio
    ratio = torch.exp(log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))
    low, high = 1 - cfg.clip_low, 1 + cfg.clip_high
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(low, high))

    # Fractions of tokens whose gradient the clip removes, at each bound.
    metrics["clip_frac_low"] = token_mean(((adv < 0) & (ratio < low)).float())
    metrics["clip_frac_high"] = token_mean(((adv > 0) & (ratio > high)).float())
    metrics["ratio_mean"] = token_mean(ratio)
    # k3 estimate of KL(pi_old || pi_theta) per token: how far this update moved the policy.
    metrics["approx_kl"] = token_mean(kl_k3(old, lp))
    if cfg.dual_clip_c is not None:
        dual_cap = -adv * cfg.dual_clip_c
        metrics["dual_clip_frac"] = token_mean(((adv < 0) & (pg > dual_cap)).float())
        pg = torch.where(adv < 0, torch.minimum(pg, dual_cap), pg)

    shaped = torch.zeros_like(keep) if shaping_gamma is None else (shaping_gamma > 0)[:, None] & keep
    if rollout_logprobs is not None:
        same_context = keep & ~shaped
        rollout = torch.where(same_context, rollout_logprobs.detach().float(), zero)
        train = torch.where(same_context, old, zero)
        train_vs_rollout = train - rollout  # same weights, two engines: ideally 0
        metrics["mismatch_abs_diff"] = token_mean(train_vs_rollout.abs())
        # k3 estimate of KL(pi_rollout || pi_train): the samples come from the rollout engine.
        metrics["mismatch_kl"] = token_mean(kl_k3(rollout, train))
        metrics["mismatch_ratio_max"] = torch.where(same_context, train_vs_rollout, -torch.inf).amax().exp()
        if cfg.tis_cap is not None:
            is_weight = torch.exp(train_vs_rollout.clamp(max=MAX_LOG_RATIO))
            metrics["tis_clip_frac"] = token_mean((is_weight > cfg.tis_cap).float())
            is_weight = is_weight.clamp(max=cfg.tis_cap)
            metrics["tis_weight_mean"] = token_mean(is_weight)
            pg = pg * is_weight
    if shaping_gamma is not None:
        gamma = shaping_gamma.detach().float().clamp_min(torch.finfo(torch.float32).tiny)[:, None]
        pg = torch.where(shaped, -adv * shaped_objective(lp, gamma), pg)
        metrics["shaped_frac"] = token_mean(shaped.float())

    per_token = pg
    metrics["pg_loss"] = agg(pg).detach()
    if ref_logprobs is not None:
        kl = kl_estimate(lp, masked(ref_logprobs.detach().float()), cfg.kl_estimator)
        metrics["kl_ref"] = token_mean(kl)
        if cfg.kl_beta > 0:
            per_token = per_token + cfg.kl_beta * kl
    if entropy is not None:
        metrics["entropy"] = token_mean(entropy)
        if cfg.entropy_coef != 0:
            per_token = per_token - cfg.entropy_coef * masked(entropy.float())

    loss = agg(per_token)
    metrics["loss"] = loss.detach()
    return loss, metrics


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, kind: str) -> Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) from samples of pi_theta (``kind``: k1, k2, k3)."""
    return KL_ESTIMATORS[kind](logprobs, ref_logprobs)


def sft_loss(logprobs: Tensor, mask: Tensor, num_tokens: Optional[Count] = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Token-mean negative log-likelihood of the masked tokens (the demo's supervised warm-up).

    ``num_tokens`` is the global token count of the optimizer step (same contract as
    :func:`policy_loss`); the micro-batch losses sum to the step's mean NLL.
    """
    _check_shapes(logprobs, mask=mask)
    keep = mask.bool()
    if num_tokens is None:
        num_tokens = keep.sum().clamp_min(1)
    nll = -torch.where(keep, logprobs.float(), torch.zeros((), device=logprobs.device)).sum() / num_tokens
    return nll, {"sft_nll": nll.detach()}


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy (nats) of the softmax over the last dim: ``[B, T, V] -> [B, T]``.

    Needs the full vocabulary on this rank (gather vocab-parallel logits first). Differentiable, so
    it can serve the entropy bonus as well as the paper's entropy curves.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)
