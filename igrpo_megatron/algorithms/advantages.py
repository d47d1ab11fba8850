"""Group-relative advantage estimators.

Every estimator maps rewards of shape ``[num_groups, group_size]`` (one row per prompt, one column
per sampled completion of that prompt) to advantages of the same shape. In iGRPO a group is the G
stage-2 refinements of one prompt; the drafts are never in it (they receive no gradient).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from igrpo_megatron.registry import Registry

AdvantageFn = Callable[[Tensor], Tensor]
ADVANTAGE_ESTIMATORS: Registry[AdvantageFn] = Registry("loss.advantage")


def _zero_variance(rewards: Tensor) -> Tensor:
    """``[G, 1]`` bool: every reward of the group is identical.

    Tested as max == min rather than std == 0: the float mean of identical fractional rewards (a
    judge's 0.1s) need not equal them exactly, which would leave a tiny std and blow the rounding
    residue up into advantages of +-1.
    """
    return (rewards.amax(dim=1, keepdim=True) == rewards.amin(dim=1, keepdim=True))


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo_advantages(rewards: Tensor) -> Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath; iGRPO paper eq. for A): ``(r - mean) / std`` per group.

    std is the SAMPLE standard deviation (Bessel-corrected, as the iGRPO paper states). A group whose
    rewards are all equal carries no learning signal and gets exactly 0 -- not ``x / (0 + eps)``,
    which leaks an arbitrary scale into the loss.
    """
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    flat = _zero_variance(rewards)
    std = torch.where(flat, torch.ones_like(centered[:, :1]), rewards.std(dim=1, keepdim=True, correction=1))
    return torch.where(flat, torch.zeros_like(centered), centered / std)


@ADVANTAGE_ESTIMATORS.register("drgrpo")
def drgrpo_advantages(rewards: Tensor) -> Tensor:
    """Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): ``r - mean``, no std.

    Dividing by the std up-weights groups that are nearly all right or all wrong (a question-level
    difficulty bias); Dr.GRPO drops it.
    """
    return rewards - rewards.mean(dim=1, keepdim=True)


@ADVANTAGE_ESTIMATORS.register("rloo")
def rloo_advantages(rewards: Tensor) -> Tensor:
    """RLOO (Kool et al. 2019; Ahmadian et al. 2024): ``r_i - mean_{j != i} r_j``.

    The leave-one-out baseline is independent of the sample it is subtracted from, so the
    estimator is unbiased. Equals ``G / (G - 1) * (r_i - mean)``.
    """
    group_size = rewards.shape[1]
    others_mean = (rewards.sum(dim=1, keepdim=True) - rewards) / (group_size - 1)
    return rewards - others_mean


def compute_advantages(rewards: Tensor, kind: str) -> Tensor:
    """Advantages ``[num_groups, group_size]`` from rewards of the same shape (``kind``: loss.advantage)."""
    estimator = ADVANTAGE_ESTIMATORS[kind]
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(
            f"rewards must be [num_groups, group_size] with group_size >= 2 (a group-relative baseline "
            f"needs company), got shape {tuple(rewards.shape)}"
        )
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf; the reward function must score every sample")
    return estimator(rewards.float())


def token_advantages(advantages: Tensor, mask: Tensor) -> Tensor:
    """Broadcast per-sequence advantages ``[B]`` to tokens ``[B, T]``: every response token of a
    completion shares its advantage (outcome reward); 0 outside ``mask``."""
    return advantages[:, None].to(torch.float32) * mask.to(torch.float32)
