"""The tensor layout every training-side component agrees on.

One row is prompt + response tokens, right-padded. Position ``t`` of every per-token tensor
refers to the prediction of ``tokens[:, t]`` from ``tokens[:, :t]``; position 0 is never a
response token. ``response_mask`` is 1 exactly on generated (stage-2) tokens, so drafts, which
live inside the prompt, never receive gradient.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import torch


@dataclass
class TrainBatch:
    tokens: torch.Tensor  # [B, T] int64
    response_mask: torch.Tensor  # [B, T] float, 1 on response tokens
    advantages: torch.Tensor  # [B] float, one per sequence (broadcast to tokens by the loss)
    old_logprobs: Optional[torch.Tensor] = None  # [B, T] from the policy before this update
    ref_logprobs: Optional[torch.Tensor] = None  # [B, T] from the frozen reference (kl_beta > 0)
    rollout_logprobs: Optional[torch.Tensor] = None  # [B, T] as reported by vLLM (for TIS / mismatch)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def select(self, index: torch.Tensor | slice) -> "TrainBatch":
        """Rows ``index`` of every tensor (micro-batching, mini-batching, DP sharding)."""
        return TrainBatch(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[index])
                             for f in fields(self)})
