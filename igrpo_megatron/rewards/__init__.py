"""Rewards: ``make_reward(cfg.reward)`` gives a context manager with ``score`` / ``score_async``.

- ``math_verify``: accuracy by math-verify (extracted answer vs gold) + format, in worker processes
  with per-item timeouts (math_verify_reward.RewardPool).
- ``judge``: accuracy is a [0, 1] grade from an OpenAI-compatible LLM endpoint, + format
  (judge.JudgeReward).
"""
from __future__ import annotations

from typing import Callable

from igrpo_megatron.config import RewardConfig
from igrpo_megatron.registry import Registry
from igrpo_megatron.rewards.base import Reward, RewardItem, RewardResult
from igrpo_megatron.rewards.extract import FORMAT_PATTERN, extract_answer, format_reward, last_boxed

# Factories, so that a run imports only the reward it uses (the judge needs aiohttp, math-verify forks).
REWARDS: Registry[Callable[[RewardConfig], Reward]] = Registry("reward.kind")


@REWARDS.register("math_verify")
def _math_verify(cfg: RewardConfig) -> Reward:
    from igrpo_megatron.rewards.math_verify_reward import RewardPool

    return RewardPool(cfg)


@REWARDS.register("judge")
def _judge(cfg: RewardConfig) -> Reward:
    from igrpo_megatron.rewards.judge import JudgeReward

    return JudgeReward(cfg)


def make_reward(cfg: RewardConfig) -> Reward:
    """The reward named by ``cfg.kind``; use it as a context manager (it owns processes)."""
    return REWARDS[cfg.kind](cfg)


__all__ = ["FORMAT_PATTERN", "REWARDS", "Reward", "RewardItem", "RewardResult", "extract_answer",
           "format_reward", "last_boxed", "make_reward"]
