"""Which of a prompt's N scored drafts conditions its stage-2 refinements (``igrpo.draft_selection``).

Every rule maps ``rewards, accuracy, fmt: [P, N]`` (total, accuracy and format reward of each
draft) and a seeded ``torch.Generator`` to ``indices [P]`` (int64). Only ``random`` draws from the
generator; the trainer seeds it per prompt and weight version, so a resumed run selects the same
drafts.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from igrpo_megatron.algorithms.igrpo import select_best_drafts
from igrpo_megatron.registry import Registry

SelectionFn = Callable[[Tensor, Tensor, Tensor, torch.Generator], Tensor]
DRAFT_SELECTIONS: Registry[SelectionFn] = Registry("igrpo.draft_selection")


@DRAFT_SELECTIONS.register("best")
def best_draft(rewards: Tensor, accuracy: Tensor, fmt: Tensor, generator: torch.Generator) -> Tensor:
    """The iGRPO paper (arXiv 2602.09000, stage 1): the highest-reward draft, ties as
    :func:`~igrpo_megatron.algorithms.igrpo.select_best_drafts` breaks them."""
    return select_best_drafts(rewards, accuracy)[0]


@DRAFT_SELECTIONS.register("random")
def random_draft(rewards: Tensor, accuracy: Tensor, fmt: Tensor, generator: torch.Generator) -> Tensor:
    """A uniformly random draft: the ablation that asks whether choosing the best matters at all
    (the project's control; the drafts still cost their N samples)."""
    return torch.randint(rewards.shape[1], (rewards.shape[0],), generator=generator)


@DRAFT_SELECTIONS.register("worst_formatted")
def worst_formatted_draft(rewards: Tensor, accuracy: Tensor, fmt: Tensor, generator: torch.Generator) -> Tensor:
    """The lowest-reward draft among those with format reward 1 (the least accurate, then the first,
    among ties); the best draft where no draft is formatted.

    Issue 16 cites a follow-up to the iGRPO paper (not identified here) that reported more
    non-zero-advantage groups when stage 2 refines the worst well-formed draft: a wrong draft
    leaves the refinements room to differ, while a formatted one still shows the answer format.
    """
    formatted = fmt >= 1
    # Ascending by reward, then accuracy: the smallest key among formatted drafts, first on ties.
    key = torch.where(formatted, rewards.float(), torch.inf)
    worst = formatted & (key == key.amin(dim=1, keepdim=True))
    acc = torch.where(worst, accuracy.float(), torch.inf)
    worst &= acc == acc.amin(dim=1, keepdim=True)
    positions = torch.arange(rewards.shape[1], device=rewards.device).expand_as(rewards)
    first_worst = torch.where(worst, positions, rewards.shape[1]).amin(dim=1)
    return torch.where(formatted.any(dim=1), first_worst, best_draft(rewards, accuracy, fmt, generator))


def select_drafts(kind: str, rewards: Tensor, accuracy: Tensor, fmt: Tensor, generator: torch.Generator) -> Tensor:
    """``indices [P]`` of the drafts the rule ``kind`` (``igrpo.draft_selection``) picks."""
    if not rewards.shape == accuracy.shape == fmt.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)}, accuracy {tuple(accuracy.shape)} and format "
                         f"{tuple(fmt.shape)} must have one shape [num_prompts, num_drafts]")
    return DRAFT_SELECTIONS[kind](rewards, accuracy, fmt, generator)
