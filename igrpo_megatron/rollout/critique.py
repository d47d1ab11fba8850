"""Critique-GRPO (arXiv 2506.03106), Table 1's baseline, at iGRPO's budget of 8 samples per prompt.

Per prompt: n = ``num_refinements - critique_refinements`` initial responses (7) are sampled and
scored; each of the k refinements (1) revises one of them (a wrong one first,
``baselines.pick_to_refine``) given a critique, through [CG]'s refinement template; the group is
the n + k samples, advantages as ``loss.advantage`` says over the mixed group (grpo divides by the
std as the released code does; the paper does not, ``loss.advantage=drgrpo`` is that). The
refinements are trained under the ORIGINAL question (``PromptRollout.prompt_ids`` is the question,
``shaped`` names them), with the shaping pi / (pi + gamma) (``algorithms.losses``).

Critiques (``igrpo.critique_source``): ``rule``, [CG]'s c_GT from the rule reward and the gold
answer (its official default, the likely setting under iGRPO's "same rule-based reward");
``policy``, the policy critiques its own response, given the reference answer (one sample, at
most :data:`CRITIQUE_TOKENS` tokens of it quoted); ``endpoint``, an LLM critic ([CG]'s GPT-4o,
replaceable) behind ``igrpo.critic_url`` gets the same prompt with the response as text, through
the project's one chat client (``chat_endpoint.py``: greedy, at most :data:`CRITIQUE_TOKENS`
tokens, ``rollout.request_timeout_s`` and ``rollout.max_retries``; a critic that still fails stops
the step with its one-line error). Each group records its critiques (``PromptRollout.critiques``,
in ``rollouts.jsonl``). Budget: one generation per refinement, plus one per self-critique.
Choices (ours) are listed in the README's "Choices the paper leaves open".
"""
from __future__ import annotations

import asyncio
from typing import Sequence

from igrpo_megatron.algorithms.baselines import CRITIC_TEMPLATE, pick_to_refine, refinement_messages, rule_critique
from igrpo_megatron.algorithms.igrpo import PLACEHOLDER, spliced_prompt_ids
from igrpo_megatron.rollout.chat_endpoint import ChatEndpoint
from igrpo_megatron.rollout.methods import METHODS, RolloutMethod
from igrpo_megatron.rollout.two_stage import PromptRollout, TokenizedPrompt

CRITIQUE_TOKENS = 256  # a self-critique is quoted up to this many tokens (ours: it shares the prompt cap)


@METHODS.register("critique_grpo")
class CritiqueRollout(RolloutMethod):
    """n initial responses + k critique-conditioned refinements per prompt, one mixed group."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        ic, rc = self.cfg.igrpo, self.cfg.rollout
        self.critic = None if ic.critique_source != "endpoint" else ChatEndpoint(
            ic.critic_url, ic.critic_model, ic.critic_api_key_env, name="critic",
            timeout_s=rc.request_timeout_s, max_retries=rc.max_retries)

    def quoted_prompt(self, messages, sample_ids) -> list[int]:
        return spliced_prompt_ids(messages, self.strip_eos(sample_ids), render=self.render, encode=self.encode,
                                  max_prompt_tokens=self.cfg.rollout.max_prompt_tokens)

    async def critique(self, p: TokenizedPrompt, response_ids: list[int], correct: bool) -> str:
        source = self.cfg.igrpo.critique_source
        if source == "rule":
            return rule_critique(correct, p.answer)
        if source == "endpoint":
            text = CRITIC_TEMPLATE.format(question=p.question, solution=self.decode(self.strip_eos(response_ids)),
                                          gold=p.answer)
            return await self.critic.reply(None, [{"role": "user", "content": text}], max_tokens=CRITIQUE_TOKENS,
                                           temperature=0.0)
        text = CRITIC_TEMPLATE.format(question=p.question, solution=PLACEHOLDER, gold=p.answer)
        prompt = self.quoted_prompt([{"role": "user", "content": text}], response_ids)
        (sample,) = await self.client.generate(prompt, n=1, params=self.params)
        return self.decode(self.strip_eos(sample.token_ids)[:CRITIQUE_TOKENS])

    async def refine(self, p: TokenizedPrompt, response_ids: list[int], correct: bool):
        """The critique of one response and the scored refinement sampled under it."""
        critique = await self.critique(p, response_ids, correct)
        messages = refinement_messages(p.question + self.cfg.data.user_suffix, PLACEHOLDER, critique)
        return critique, await self.sample_and_score(self.quoted_prompt(messages, response_ids), 1, p.question,
                                                     p.answer)

    async def one_prompt(self, p: TokenizedPrompt) -> PromptRollout:
        k = self.cfg.igrpo.critique_refinements
        scored = await self.sample_and_score(p.prompt_ids, self.cfg.igrpo.num_refinements - k, p.question, p.answer)
        samples, _, accuracy, _ = scored
        refined = await asyncio.gather(*(self.refine(p, samples[i].token_ids, accuracy[i] >= 1)
                                         for i in pick_to_refine(accuracy, k)))
        mixed = tuple(sum((list(r[j]) for _, r in refined), list(scored[j])) for j in range(4))
        n = len(samples)
        return PromptRollout.from_samples(p, p.prompt_ids, mixed, shaped=list(range(n, n + k)),
                                          critiques=[c for c, _ in refined])

    async def run(self, prompts: Sequence[TokenizedPrompt]) -> list[PromptRollout]:
        return list(await asyncio.gather(*(self.one_prompt(p) for p in prompts)))
