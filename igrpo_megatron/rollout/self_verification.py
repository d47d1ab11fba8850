"""Self-Verification (arXiv 2506.01369), Table 1's baseline: the policy also learns to grade its own solutions.

Each step samples G = ``num_refinements`` solutions of every problem, as GRPO does, plus G
verifications of each of ``verify_prompts_per_step`` solutions drawn from a buffer of the policy's
own earlier solutions (three turns: the problem, the solution with its monologue removed, [SV]'s
instruction; ``algorithms.baselines``). A verification is scored by the balanced reward
(``verification_reward``), a problem by the run's reward; advantages per group, as GRPO.

The buffer. Every solution of a group whose accuracies are 0/1 and mixed (0 < p < 1: the groups
dynamic sampling keeps in [SV]; a verification of a p = 0 or 1 group earns 0 whatever it says)
enters a pending list with its label and p; every ``verify_refresh_every`` steps the buffer becomes
a seeded sample of ``verify_buffer_size`` of the pending solutions, and pending starts over. As
published (T_b = 60) it would never refresh within one epoch of MATH at 128 prompts per step (58
steps), so the default is a quarter of the run (ours). It is training state: it is filled in
:meth:`observe` on every rank from the broadcast groups and every draw is seeded by the step, so all
ranks hold the same buffer, and it is saved with the checkpoint and restored bit-exactly.
Verification prompts come on top of the step's problems (ours; [SV] mixes them into the batch), so a
run's length in problems is GRPO's.
"""
from __future__ import annotations

import asyncio
import random
from typing import Optional, Sequence

from igrpo_megatron.algorithms.baselines import parse_verdict, strip_think, verification_messages, verification_reward
from igrpo_megatron.algorithms.igrpo import PLACEHOLDER, spliced_prompt_ids
from igrpo_megatron.rollout.methods import METHODS
from igrpo_megatron.rollout.two_stage import PromptRollout, TokenizedPrompt, TwoStageRollout

VERIFY_ID = "verify/"  # the id prefix of a verification group (the solution's own id follows)
DEFAULT_VERIFY_SHARE = 0.4  # verification prompts per problem prompt (uniform over 5,000 buffered + 7,500 problems)


@METHODS.register("self_verification")
class SelfVerificationRollout(TwoStageRollout):
    """GRPO on the problems plus GRPO on verifications of buffered solutions."""

    def __init__(self, cfg, client, params, reward, tokenizer, total_steps: Optional[int] = None):
        super().__init__(cfg, client, params, reward, tokenizer, total_steps=total_steps)
        ig = cfg.igrpo
        self.refresh_every = ig.verify_refresh_every or max(1, (total_steps or 1) // 4)
        self.per_step = (ig.verify_prompts_per_step if ig.verify_prompts_per_step is not None
                         else round(DEFAULT_VERIFY_SHARE * cfg.train.prompts_per_step))
        self.steps_seen = 0
        self.buffer: list[dict] = []  # what verification tasks are drawn from
        self.pending: list[dict] = []  # solutions since the last refresh

    def _rng(self, what: str) -> random.Random:
        return random.Random(f"{self.cfg.train.seed}/{what}/{self.steps_seen}")

    async def verify(self, entry: dict) -> PromptRollout:
        messages = verification_messages(entry["question"] + self.cfg.data.user_suffix, PLACEHOLDER)
        prompt = spliced_prompt_ids(messages, self.encode(entry["solution"]), render=self.render, encode=self.encode,
                                    max_prompt_tokens=self.cfg.rollout.max_prompt_tokens)
        samples = await self.client.generate(prompt, n=self.cfg.igrpo.num_refinements, params=self.params)
        verdicts = [parse_verdict(self.decode(s.token_ids)) for s in samples]
        scored = (samples, [verification_reward(v, entry["label"], entry["p"]) for v in verdicts],
                  [float(v == entry["label"]) for v in verdicts], [float(v is not None) for v in verdicts])
        task = TokenizedPrompt(VERIFY_ID + entry["id"], entry["question"], "Yes" if entry["label"] else "No", prompt)
        return PromptRollout.from_samples(task, prompt, scored)

    async def run(self, prompts: Sequence[TokenizedPrompt]) -> list[PromptRollout]:
        tasks = self._rng("draw").sample(self.buffer, min(self.per_step, len(self.buffer)))
        solved, verified = await asyncio.gather(super().run(prompts), asyncio.gather(*map(self.verify, tasks)))
        return solved + list(verified)

    def observe(self, groups: Sequence[PromptRollout]) -> None:
        """Buffer the step's solutions; refresh the buffer every ``refresh_every`` steps."""
        for g in groups:
            p = sum(g.accuracy) / len(g.accuracy)
            if g.id.startswith(VERIFY_ID) or not 0 < p < 1 or any(a not in (0.0, 1.0) for a in g.accuracy):
                continue
            self.pending += [{"id": g.id, "question": g.question, "solution": strip_think(self.decode(ids)),
                              "label": a == 1.0, "p": p} for ids, a in zip(g.response_ids, g.accuracy)]
        self.steps_seen += 1
        if self.steps_seen % self.refresh_every == 0:
            keep = min(self.cfg.igrpo.verify_buffer_size, len(self.pending))
            self.buffer, self.pending = self._rng("refresh").sample(self.pending, keep), []

    def record(self, groups: Sequence[PromptRollout]) -> dict[str, float]:
        """``verify_acc``: the share of the step's verifications whose Yes/No verdict was right (an
        unparseable reply is wrong), apart from the balanced reward, which weights a verdict by its
        solution's p; NaN in a step without verifications (an empty buffer), not a made-up 0."""
        right = [a for g in groups if g.id.startswith(VERIFY_ID) for a in g.accuracy]
        return {"verify_acc": sum(right) / len(right) if right else float("nan")}

    def state_dict(self) -> dict:
        return {"steps_seen": self.steps_seen, "buffer": self.buffer, "pending": self.pending}

    def load_state_dict(self, state: dict) -> None:
        self.steps_seen, self.buffer, self.pending = state["steps_seen"], state["buffer"], state["pending"]
