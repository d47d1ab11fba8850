"""Reward shaping by response length: DAPO's soft overlong punishment.

DAPO (Yu et al. 2025, arXiv 2503.14476, §3.4, eq. 13): truncated answers are a noisy reward (a
sound chain of thought cut off scores like a wrong one), so instead of only the truncation's 0 a
response is penalised smoothly as it runs into the last ``L_cache`` tokens before the cap ``L_max``.
"""
from __future__ import annotations

import torch
from torch import Tensor


def soft_overlong_penalty(lengths: Tensor, max_len: int, cache_len: int) -> Tensor:
    """The length reward R_length(y) added to the task reward, per response of ``lengths`` tokens:

    - 0 when |y| <= L_max - L_cache,
    - (L_max - L_cache - |y|) / L_cache when L_max - L_cache < |y| <= L_max (falls linearly to -1),
    - -1 when |y| > L_max.

    DAPO's run: L_max = 20,480 generated tokens, L_cache = 4,096 (so 16,384 tokens are free).
    """
    if not 0 < cache_len <= max_len:
        raise ValueError(f"need 0 < cache_len <= max_len, got cache_len={cache_len}, max_len={max_len}")
    expected = max_len - cache_len
    lengths = lengths.to(torch.float32)
    ramp = (expected - lengths) / cache_len
    return torch.where(lengths <= expected, torch.zeros_like(lengths),
                       torch.where(lengths <= max_len, ramp, torch.full_like(lengths, -1.0)))
