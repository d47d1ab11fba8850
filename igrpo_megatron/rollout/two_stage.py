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
from igrpo_megatron.algorithms.shaping import soft_overlong_penalty
from igrpo_megatron.config import Config
from igrpo_megatron.data.chat import render
from igrpo_megatron.rewards.base import RewardItem


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


class TwoStageRollout:
    """Stage 1 and stage 2 of one step against the rollout server, on rank 0's event loop.

    ``client.generate(prompt_ids, n, ...)`` returns samples with ``token_ids``, ``logprobs``,
    ``finish_reason`` and ``weight_version``; ``reward.score_async(items)`` scores in the reward
    pool, off the event loop, so scoring one prompt's drafts does not stall the decoding of the others.
    """

    def __init__(self, cfg: Config, client, params, reward, tokenizer):
        self.cfg, self.client, self.params, self.reward, self.tokenizer = cfg, client, params, reward, tokenizer

    def render(self, messages) -> str:
        return render(self.tokenizer, messages)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    async def sample_and_score(self, prompt_ids: list[int], n: int, question: str, answer: str):
        """``n`` samples of one prompt and their ``(samples, rewards, accuracy, format)``; with
        ``reward.overlong_cache_tokens`` the rewards include DAPO's length penalty (both stages)."""
        samples = await self.client.generate(prompt_ids, n=n, params=self.params)
        items = [RewardItem(self.tokenizer.decode(s.token_ids, skip_special_tokens=True), answer, question)
                 for s in samples]
        results = await self.reward.score_async(items)
        rewards = [r.total for r in results]
        rc = self.cfg.reward
        if rc.overlong_cache_tokens is not None:
            lengths = torch.tensor([len(s.token_ids) for s in samples])
            penalty = soft_overlong_penalty(lengths, rc.overlong_cap(self.cfg.rollout.max_tokens),
                                            rc.overlong_cache_tokens)
            rewards = [x + float(p) for x, p in zip(rewards, penalty)]
        return samples, rewards, [r.accuracy for r in results], [r.format for r in results]

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
            draft = list(samples[best].token_ids)
            if draft and draft[-1] == self.tokenizer.eos_token_id:  # the draft's end-of-turn is not quoted
                draft.pop()
            prompt_ids = refinement_prompt_ids(
                p.question + self.cfg.data.user_suffix, draft, system_prompt=self.cfg.data.system_prompt,
                render=self.render, encode=self.encode,
                max_prompt_tokens=self.cfg.rollout.max_prompt_tokens,
                max_draft_tokens=self.cfg.igrpo.max_draft_tokens)
            out = dict(draft_ids=[list(s.token_ids) for s in samples], draft_rewards=rewards,
                       draft_accuracy=accuracy, draft_format=fmt, best_draft=best)
        samples, rewards, accuracy, fmt = await self.sample_and_score(prompt_ids, self.cfg.igrpo.num_refinements,
                                                                   p.question, p.answer)
        return PromptRollout(
            id=p.id, question=p.question, answer=p.answer, prompt_ids=list(prompt_ids),
            response_ids=[list(s.token_ids) for s in samples],
            response_logprobs=[list(s.logprobs) for s in samples],
            rewards=rewards, accuracy=accuracy, truncated=[s.finish_reason == "length" for s in samples],
            format_scores=fmt, finish_reasons=[str(s.finish_reason) for s in samples],
            weight_version=min(s.weight_version for s in samples), **out)

    async def _one_prompt(self, p: TokenizedPrompt) -> PromptRollout:
        return await self.refinements(p, await self.drafts(p))

    async def run(self, prompts: Sequence[TokenizedPrompt]) -> list[PromptRollout]:
        if self.cfg.igrpo.overlap_stages:
            return list(await asyncio.gather(*(self._one_prompt(p) for p in prompts)))
        drafts = await asyncio.gather(*(self.drafts(p) for p in prompts))
        return list(await asyncio.gather(*(self.refinements(p, d) for p, d in zip(prompts, drafts))))
