"""DAPO dynamic sampling with refill (Yu et al. 2025, arXiv 2503.14476, §3.2).

A group whose G rewards are all equal has zero advantages: it teaches nothing and only dilutes the
batch. DAPO over-samples: such groups are dropped and more prompts are drawn and rolled out until
the batch holds ``train.prompts_per_step`` groups that do carry a signal. Here a step takes at most
``loss.dynamic_sampling_max_refills`` extra rounds; when they are spent it trains on what it kept
(the trainer warns and the record counts it). Every prompt drawn is consumed, kept or not, so the
data position a checkpoint saves is exact.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

import torch

from igrpo_megatron.algorithms.igrpo import dynamic_sampling_mask
from igrpo_megatron.rollout.two_stage import PromptRollout, TokenizedPrompt


@dataclass
class SampledStep:
    """A step's rollouts: every group sampled (for the metrics), the groups trained on, and the count."""

    groups: list[PromptRollout]
    kept: list[PromptRollout]
    dropped: int = 0  # zero-variance groups
    surplus: int = 0  # kept groups beyond prompts_per_step, left out (the last round over-sampled)
    refill_rounds: int = 0
    refill_prompts: int = 0  # prompts drawn by the refill rounds (the other ranks skip as many)
    exhausted: bool = False  # the refill bound ran out before the batch was full

    def state_dict(self) -> dict:
        """JSON-ready (a checkpoint's rollout ahead, rollout/pipeline.py); ``kept`` as indices into ``groups``."""
        kept = {id(g) for g in self.kept}
        return {**dataclasses.asdict(self), "groups": [dataclasses.asdict(g) for g in self.groups],
                "kept": [i for i, g in enumerate(self.groups) if id(g) in kept]}

    @classmethod
    def from_state(cls, state: dict) -> "SampledStep":
        groups = [PromptRollout(**g) for g in state["groups"]]
        return cls(**{**state, "groups": groups, "kept": [groups[i] for i in state["kept"]]})

    def record(self) -> dict[str, float]:
        """The counts under their STEP_FIELDS names."""
        return {"groups_kept": float(len(self.kept)), "groups_dropped": float(self.dropped),
                "groups_surplus": float(self.surplus), "refill_rounds": float(self.refill_rounds),
                "refill_exhausted": float(self.exhausted)}


def refill_size(missing: int, drawn: int, kept: int) -> int:
    """Prompts to draw for ``missing`` groups, at the keep rate seen so far (``kept`` of ``drawn``);
    as many as drawn so far when none was kept."""
    return drawn if kept == 0 else math.ceil(missing * drawn / kept)


def zero_variance_filter(groups: Sequence[PromptRollout]) -> list[PromptRollout]:
    """The groups whose rewards differ (``algorithms.igrpo.dynamic_sampling_mask``)."""
    if not groups:
        return []
    keep = dynamic_sampling_mask(torch.tensor([g.rewards for g in groups], dtype=torch.float32))
    return [g for g, k in zip(groups, keep) if k]


async def sample_with_refill(prompts: Sequence[TokenizedPrompt], target: int, max_refills: int,
                             draw: Callable[[int], list[TokenizedPrompt]],
                             rollout: Callable[[Sequence[TokenizedPrompt]], Awaitable[list[PromptRollout]]]
                             ) -> SampledStep:
    """Roll ``prompts`` out, drop the zero-variance groups, and refill from ``draw(n)`` until
    ``target`` groups are kept or ``max_refills`` extra rounds are spent; the first ``target`` kept
    groups (in draw order) are trained on."""
    groups = await rollout(prompts)
    kept = zero_variance_filter(groups)
    rounds = refill_prompts = 0
    while len(kept) < target and rounds < max_refills:
        more = draw(refill_size(target - len(kept), len(groups), len(kept)))
        rounds, refill_prompts = rounds + 1, refill_prompts + len(more)
        new = await rollout(more)
        groups += new
        kept += zero_variance_filter(new)
    return SampledStep(groups, kept[:target], dropped=len(groups) - len(kept), surplus=max(len(kept) - target, 0),
                       refill_rounds=rounds, refill_prompts=refill_prompts, exhausted=len(kept) < target)
