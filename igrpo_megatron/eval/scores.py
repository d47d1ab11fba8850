"""avg@k and the unbiased pass@k estimator over a (problems x samples) table of 0/1 scores.

avg@k (the paper's "pass@1 averaged over k samples") is the mean over problems of the fraction
of a problem's k samples that are correct: an estimate of pass@1 with k times less variance
than one sample per problem. pass@k is the chance that at least one of k samples is correct,
estimated without bias from n >= k samples with c correct as 1 - C(n-c, k) / C(n, k)
(Chen et al. 2021); with k = 1 it equals avg@n.
"""
from __future__ import annotations

import math
from typing import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``c`` correct among ``n`` samples."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i): stable for large n.
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def summarize(scores: Sequence[Sequence[bool]], pass_ks: Sequence[int] = (1,)) -> dict:
    """``scores[p][s]``: whether sample s of problem p is correct; the same number of samples per problem.

    Returns avg@n, pass@k for each requested k (those above n are skipped), the accuracy of each
    sample index across problems (its spread is the noise of a one-sample evaluation) and counts.
    """
    if not scores:
        raise ValueError("no problems to summarize")
    n = len(scores[0])
    if n == 0 or any(len(row) != n for row in scores):
        raise ValueError("every problem needs the same, non-zero number of samples")
    correct = [sum(map(bool, row)) for row in scores]
    out = {
        "problems": len(scores),
        "samples": n,
        f"avg@{n}": sum(c / n for c in correct) / len(scores),
        "per_sample_accuracy": [sum(bool(row[i]) for row in scores) / len(scores) for i in range(n)],
    }
    for k in pass_ks:
        if k <= n:
            out[f"pass@{k}"] = sum(pass_at_k(n, c, k) for c in correct) / len(scores)
    return out
