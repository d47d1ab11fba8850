"""The two stages of one iGRPO step against the rollout server, and the records they pass on.

Per prompt: stage 1 samples N drafts and scores them, the best draft is spliced into the
refinement prompt, stage 2 samples G refinements of it and scores them (GRPO: stage 2 alone, on
the question). Each prompt is one asyncio task, so one prompt's refinements decode while other
prompts' drafts still do, and iGRPO costs about what GRPO costs; ``igrpo.overlap_stages=false``
runs the stages back to back.

The records of one question on its way through a step: a dataset row (``data.Example``) becomes
a :class:`TokenizedPrompt` (ready for the server), each sampled completion is scored as a
``rewards.RewardItem``, and the prompt's results come back as one :class:`PromptRollout`.
"""
from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass, field
from typing import Sequence

import torch

from igrpo_megatron.algorithms.draft_selection import select_drafts
from igrpo_megatron.algorithms.igrpo import refinement_prompt_ids
from igrpo_megatron.rollout.methods import METHODS, RolloutMethod


@dataclass
class TokenizedPrompt:
    """A dataset row made ready for the server: the question rendered by the chat template as stage-1 token ids."""

    id: str
    question: str
    answer: str
    prompt_ids: list[int]


@dataclass
class PromptRollout:
    """One prompt's finished rollout: what both stages produced and scored (rank 0 builds it, all ranks receive it).

    ``draft_*`` lists are empty for GRPO (``num_drafts = 0``). ``prompt_ids`` is the prompt the
    trained completions were sampled from: the refinement prompt in iGRPO, the question in GRPO.
    """

    id: str
    question: str
    answer: str
    prompt_ids: list[int]
    response_ids: list[list[int]]
    response_logprobs: list[list[float]]
    rewards: list[float]
    accuracy: list[float]
    truncated: list[bool]
    format_scores: list[float] = field(default_factory=list)  # the format reward of each refinement
    finish_reasons: list[str] = field(default_factory=list)  # vLLM's: stop, length, ...
    draft_ids: list[list[int]] = field(default_factory=list)
    draft_rewards: list[float] = field(default_factory=list)
    draft_accuracy: list[float] = field(default_factory=list)
    draft_format: list[float] = field(default_factory=list)
    best_draft: int = -1  # the draft stage 2 refined (igrpo.draft_selection; the best by default)
    weight_version: int = -1
    # Critique-GRPO: indices of the responses sampled under a critique prompt but trained under
    # ``prompt_ids`` (the question) with the shaping pi / (pi + gamma) (algorithms/baselines.py).
    shaped: list[int] = field(default_factory=list)
    critiques: list[str] = field(default_factory=list)  # Critique-GRPO: the critique each shaped one was sampled under

    @classmethod
    def from_samples(cls, p: TokenizedPrompt, prompt_ids: Sequence[int], scored, **extra) -> "PromptRollout":
        """The record of ``scored = (samples, rewards, accuracy, format)`` of ``p``, trained under ``prompt_ids``."""
        samples, rewards, accuracy, fmt = scored
        return cls(id=p.id, question=p.question, answer=p.answer, prompt_ids=list(prompt_ids),
                   response_ids=[list(s.token_ids) for s in samples],
                   response_logprobs=[list(s.logprobs) for s in samples],
                   rewards=rewards, accuracy=accuracy, truncated=[s.finish_reason == "length" for s in samples],
                   format_scores=fmt, finish_reasons=[str(s.finish_reason) for s in samples],
                   weight_version=min(s.weight_version for s in samples), **extra)


@METHODS.register("two_stage")
class TwoStageRollout(RolloutMethod):
    """Stage 1 and stage 2 of one step against the rollout server, on rank 0's event loop."""

    def choose_draft(self, p: TokenizedPrompt, rewards, accuracy, fmt, weight_version: int) -> int:
        """The draft ``igrpo.draft_selection`` picks; ``random`` is seeded by the run's seed, the
        prompt and the weight version, so a resumed run picks the same."""
        seed = zlib.crc32(f"{self.cfg.train.seed}:{p.id}:{weight_version}".encode())
        return int(select_drafts(self.cfg.igrpo.draft_selection, torch.tensor([rewards]), torch.tensor([accuracy]),
                                 torch.tensor([fmt]), torch.Generator().manual_seed(seed))[0])

    async def drafts(self, p: TokenizedPrompt):
        """Stage 1: N drafts of ``p``, scored; ``None`` for GRPO."""
        if self.cfg.igrpo.num_drafts == 0:
            return None
        return await self.sample_and_score(p.prompt_ids, self.cfg.igrpo.num_drafts, p.question, p.answer)

    async def refinements(self, p: TokenizedPrompt, drafts) -> PromptRollout:
        """Stage 2: G samples conditioned on the best draft (GRPO: on the question itself)."""
        out = {}
        prompt_ids = p.prompt_ids
        if drafts is not None:
            samples, rewards, accuracy, fmt = drafts
            best = self.choose_draft(p, rewards, accuracy, fmt, min(s.weight_version for s in samples))
            draft = self.strip_eos(samples[best].token_ids)  # the draft's end-of-turn is not quoted
            prompt_ids = refinement_prompt_ids(
                p.question + self.cfg.data.user_suffix, draft, system_prompt=self.cfg.data.system_prompt,
                render=self.render, encode=self.encode,
                max_prompt_tokens=self.cfg.rollout.max_prompt_tokens,
                max_draft_tokens=self.cfg.igrpo.max_draft_tokens)
            out = dict(draft_ids=[list(s.token_ids) for s in samples], draft_rewards=rewards,
                       draft_accuracy=accuracy, draft_format=fmt, best_draft=best)
        scored = await self.sample_and_score(prompt_ids, self.cfg.igrpo.num_refinements, p.question, p.answer)
        return PromptRollout.from_samples(p, prompt_ids, scored, **out)

    async def _one_prompt(self, p: TokenizedPrompt) -> PromptRollout:
        return await self.refinements(p, await self.drafts(p))

    async def run(self, prompts: Sequence[TokenizedPrompt]) -> list[PromptRollout]:
        if self.cfg.igrpo.overlap_stages:
            return list(await asyncio.gather(*(self._one_prompt(p) for p in prompts)))
        drafts = await asyncio.gather(*(self.drafts(p) for p in prompts))
        return list(await asyncio.gather(*(self.refinements(p, d) for p, d in zip(prompts, drafts))))
