"""The tensor layout every training-side component agrees on, and the functions that build it.

One row is prompt + response tokens, right-padded. Position ``t`` of every per-token tensor
refers to the prediction of ``tokens[:, t]`` from ``tokens[:, :t]``; position 0 is never a
response token. ``response_mask`` is 1 exactly on generated (stage-2) tokens, so drafts, which
live inside the prompt, never receive gradient.

:func:`build_train_batch` turns a step's rollouts into rows (:func:`pack_rows` lays out any
prompt/response pairs, the demo's supervised warm-up too) and :func:`shard_for_data_parallel`
gives each data-parallel rank its equal share.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Optional, Sequence

import torch

from igrpo_megatron.algorithms.advantages import compute_advantages

if TYPE_CHECKING:
    from igrpo_megatron.config import Config
    from igrpo_megatron.rollout.two_stage import PromptRollout


@dataclass
class TrainBatch:
    tokens: torch.Tensor  # [B, T] int64
    response_mask: torch.Tensor  # [B, T] float, 1 on response tokens
    advantages: torch.Tensor  # [B] float, one per sequence (broadcast to tokens by the loss)
    old_logprobs: Optional[torch.Tensor] = None  # [B, T] from the policy before this update
    ref_logprobs: Optional[torch.Tensor] = None  # [B, T] from the frozen reference (kl_beta > 0)
    rollout_logprobs: Optional[torch.Tensor] = None  # [B, T] as reported by vLLM (for TIS / mismatch)
    shaping_gamma: Optional[torch.Tensor] = None  # [B] Critique-GRPO: gamma > 0 on refinement rows, else 0

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def select(self, index: torch.Tensor | slice) -> "TrainBatch":
        """Rows ``index`` of every tensor (micro-batching, mini-batching, DP sharding)."""
        return TrainBatch(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[index])
                             for f in fields(self)})

    def narrow(self, width: int) -> "TrainBatch":
        """The first ``width`` positions of every per-token tensor (a micro-batch cut to its longest row)."""
        return TrainBatch(**{f.name: (v if v is None or v.dim() == 1 else v[:, :width])
                             for f in fields(self) for v in [getattr(self, f.name)]})

    def row_lengths(self) -> torch.Tensor:
        """``[B]`` positions each row needs: up to and including its last response token (0 for an
        all-padding row). Positions after it are padding, and attention is causal, so cutting them
        off changes no response token's logprob."""
        positions = torch.arange(1, self.tokens.shape[1] + 1, device=self.response_mask.device)
        return torch.where(self.response_mask.bool(), positions, 0).amax(1)


def pack_rows(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], advantages: torch.Tensor,
              pad_id: int, response_logprobs: Optional[Sequence[Sequence[float]]] = None) -> TrainBatch:
    """One row per ``(prompt, response)``: their tokens right-padded with ``pad_id`` to the longest
    row, ``response_mask`` 1 on the response, and the sampler's logprobs (if given) at the same places."""
    width = max((len(p) + len(r) for p, r in zip(prompts, responses)), default=0)
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width)
    rollout_lp = None if response_logprobs is None else torch.zeros(len(prompts), width)
    for i, (prompt, resp) in enumerate(zip(prompts, responses)):
        start, end = len(prompt), len(prompt) + len(resp)
        tokens[i, :end] = torch.tensor(list(prompt) + list(resp), dtype=torch.long)
        mask[i, start:end] = 1.0
        if rollout_lp is not None:
            rollout_lp[i, start:end] = torch.tensor(response_logprobs[i], dtype=torch.float32)
    return TrainBatch(tokens=tokens, response_mask=mask, advantages=advantages, rollout_logprobs=rollout_lp)


def build_train_batch(groups: Sequence["PromptRollout"], cfg: "Config", pad_id: int) -> tuple[TrainBatch, dict]:
    """Rows = stage-2 completions (prompt + response, right-padded); advantages per group.

    ``groups`` are the groups to train on: with DAPO's dynamic sampling the zero-variance ones
    were already dropped and refilled (rollout/dynamic_sampling.py), and a step may keep none.
    """
    if not groups:
        return pack_rows([], [], torch.zeros(0), pad_id), {"advantage_abs_mean": 0.0}
    rewards = torch.tensor([g.rewards for g in groups], dtype=torch.float32)
    advantages = compute_advantages(rewards, cfg.loss.advantage)
    rows = [(g.prompt_ids, resp, lps, float(a), cfg.igrpo.critique_gamma if i in g.shaped else 0.0)
            for g, adv in zip(groups, advantages)
            for i, (resp, lps, a) in enumerate(zip(g.response_ids, g.response_logprobs, adv))]
    info = {"advantage_abs_mean": float(advantages.abs().mean())}
    prompts, responses, logprobs, adv, gamma = (list(col) for col in zip(*rows)) if rows else ([],) * 5
    batch = pack_rows(prompts, responses, torch.tensor(adv, dtype=torch.float32), pad_id, logprobs)
    if any(g.shaped for g in groups):
        batch.shaping_gamma = torch.tensor(gamma, dtype=torch.float32)
    return batch, info


def shard_for_data_parallel(batch: TrainBatch, dp_rank: int, dp_size: int, micro_batch_size: int,
                            pad_id: int) -> TrainBatch:
    """This DP rank's rows, after padding the batch with all-masked rows to a multiple of
    ``dp_size * micro_batch_size`` so every rank runs the same number of micro-batches (the
    gradient all-reduce and the pipeline schedule need that). Padding rows have mask 0, so they
    add nothing to the loss, whose denominators are the global counts of real tokens."""
    rows = len(batch)
    multiple = dp_size * micro_batch_size
    padded = -(-rows // multiple) * multiple
    if padded > rows:
        extra = padded - rows
        width = batch.tokens.shape[1]
        filler = TrainBatch(
            tokens=torch.full((extra, width), pad_id, dtype=batch.tokens.dtype),
            response_mask=torch.zeros(extra, width),
            advantages=torch.zeros(extra),
            rollout_logprobs=None if batch.rollout_logprobs is None else torch.zeros(extra, width),
            shaping_gamma=None if batch.shaping_gamma is None else torch.zeros(extra))
        batch = TrainBatch(**{k: None if getattr(batch, k) is None else torch.cat([getattr(batch, k), getattr(filler, k)])
                              for k in ("tokens", "response_mask", "advantages", "rollout_logprobs", "shaping_gamma")})
    per_rank = padded // dp_size
    return batch.select(slice(dp_rank * per_rank, (dp_rank + 1) * per_rank))
