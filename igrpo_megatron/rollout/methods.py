"""The step's sampling methods behind ``igrpo.method``, and the small protocol the trainer calls.

A method turns a step's prompts into groups (``PromptRollout``) on rank 0's event loop; the trainer
does the same with whatever comes back (advantages per group, ``batch.build_train_batch``), so a
method is one registered unit and the loop has no per-method branch. Registered:
``two_stage`` (iGRPO; GRPO with ``num_drafts = 0``, ``two_stage.py``), ``critique_grpo``
(``critique.py``) and ``self_verification`` (``self_verification.py``).

The protocol: ``run(prompts)`` (rank 0 only), ``observe(groups)`` after the step's groups reached
every rank (a method with training state, Self-Verification's buffer, updates it there, the same
on every rank, so it can go into the checkpoint), ``record(groups)`` (the method's own figures of
the step's metrics record), ``state_dict()`` / ``load_state_dict()`` (JSON, saved with the
checkpoint's data position).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from igrpo_megatron.algorithms.shaping import soft_overlong_penalty
from igrpo_megatron.config import Config
from igrpo_megatron.data.chat import render
from igrpo_megatron.registry import Registry
from igrpo_megatron.rewards.base import RewardItem

METHODS: Registry[type] = Registry("igrpo.method")


class RolloutMethod:
    """The base of every method: sampling and scoring against the server, no training state.

    ``client.generate(prompt_ids, n, ...)`` returns samples with ``token_ids``, ``logprobs``,
    ``finish_reason`` and ``weight_version``; ``reward.score_async(items)`` scores in the reward
    pool, off the event loop, so scoring one prompt's samples does not stall the decoding of the
    others. Built on every rank; ``client`` and ``reward`` are ``None`` off rank 0.
    """

    def __init__(self, cfg: Config, client, params, reward, tokenizer, total_steps: Optional[int] = None):
        self.cfg, self.client, self.params, self.reward, self.tokenizer = cfg, client, params, reward, tokenizer
        self.total_steps = total_steps

    def render(self, messages) -> str:
        return render(self.tokenizer, messages)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def strip_eos(self, ids: Sequence[int]) -> list[int]:
        """A sample's ids without its end-of-turn, for quoting it inside another prompt."""
        ids = list(ids)
        return ids[:-1] if ids and ids[-1] == self.tokenizer.eos_token_id else ids

    async def sample_and_score(self, prompt_ids: list[int], n: int, question: str, answer: str):
        """``n`` samples of one prompt and their ``(samples, rewards, accuracy, format)``; with
        ``reward.overlong_cache_tokens`` the rewards include DAPO's length penalty (every sample)."""
        samples = await self.client.generate(prompt_ids, n=n, params=self.params)
        items = [RewardItem(self.decode(s.token_ids), answer, question) for s in samples]
        results = await self.reward.score_async(items)
        rewards = [r.total for r in results]
        rc = self.cfg.reward
        if rc.overlong_cache_tokens is not None:
            lengths = torch.tensor([len(s.token_ids) for s in samples])
            penalty = soft_overlong_penalty(lengths, rc.overlong_cap(self.cfg.rollout.max_tokens),
                                            rc.overlong_cache_tokens)
            rewards = [x + float(p) for x, p in zip(rewards, penalty)]
        return samples, rewards, [r.accuracy for r in results], [r.format for r in results]

    async def run(self, prompts: Sequence) -> list:
        raise NotImplementedError

    def observe(self, groups: Sequence) -> None:
        """Every rank, after the step's groups were broadcast; nothing to keep by default."""

    def record(self, groups: Sequence) -> dict[str, float]:
        """The method's own figures of a step, for rank 0's metrics record; none by default."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def make_method(cfg: Config, client, params, reward, tokenizer, total_steps: Optional[int] = None) -> RolloutMethod:
    """The method ``igrpo.method`` names (the rollout package registers all of them on import)."""
    return METHODS[cfg.igrpo.method](cfg, client, params, reward, tokenizer, total_steps=total_steps)
