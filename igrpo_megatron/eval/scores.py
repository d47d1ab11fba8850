"""avg@k, the unbiased pass@k estimator and majority vote over a (problems x samples) table.

avg@k (the paper's "pass@1 averaged over k samples") is the mean over problems of the fraction
of a problem's k samples that are correct: an estimate of pass@1 with k times less variance
than one sample per problem. pass@k is the chance that at least one of k samples is correct,
estimated without bias from n >= k samples with c correct as 1 - C(n-c, k) / C(n, k)
(Chen et al. 2021); with k = 1 it equals avg@n.

maj@n asks whether the answer most samples agree on is correct. Answers vote by their extracted
text with whitespace removed (math) or their letter (multiple choice), so "0.5" and "\\frac12"
are two different votes; a sample with no answer does not vote, and a problem where none has
one counts as wrong. A tie goes to the tied answer that appears first in sample order, which
makes maj@n a function of the saved samples alone.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Optional, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``c`` correct among ``n`` samples."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i): stable for large n.
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def default_pass_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks = [2 ** i for i in range(n.bit_length()) if 2 ** i <= n]
    return ks + ([n] if ks[-1] != n else [])


def majority_vote(answers: Sequence[Optional[str]], correct: Sequence[bool]) -> bool:
    """Whether the most frequent answer of one problem's samples is correct (tie rule: module doc)."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return False
    top = max(votes.values())
    winner = next(i for i, a in enumerate(answers) if a is not None and votes[a] == top)
    return bool(correct[winner])


def summarize(scores: Sequence[Sequence[bool]], pass_ks: Optional[Sequence[int]] = None,
              answers: Optional[Sequence[Sequence[Optional[str]]]] = None) -> dict:
    """``scores[p][s]``: whether sample s of problem p is correct; the same number of samples per problem.

    Returns avg@n, pass@k for each requested k (default 1, 2, 4, ..., n; those above n are
    skipped), maj@n when ``answers`` (the same layout) are given, the accuracy of each sample
    index across problems (its spread is the noise of a one-sample evaluation) and counts.
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
    for k in default_pass_ks(n) if pass_ks is None else pass_ks:
        if k <= n:
            out[f"pass@{k}"] = sum(pass_at_k(n, c, k) for c in correct) / len(scores)
    if answers is not None:
        out[f"maj@{n}"] = sum(majority_vote(a, s) for a, s in zip(answers, scores)) / len(scores)
    return out


def summarize_records(records: Sequence[dict], k: int, pass_ks: Optional[Sequence[int]] = None) -> dict:
    """The scores of per-sample records laid out problem by problem, k samples each, plus the
    timeouts of the scorer, the fraction of samples cut at max_tokens and their mean length."""
    if len(records) % k:
        raise ValueError(f"{len(records)} records is not a multiple of k={k}")
    rows = [records[i:i + k] for i in range(0, len(records), k)]
    summary = summarize([[r["correct"] for r in row] for row in rows], pass_ks,
                        [[r.get("answer") for r in row] for row in rows])
    summary["timeouts"] = sum(bool(r.get("timed_out")) for r in records)
    summary["truncated"] = sum(r.get("finish_reason") == "length" for r in records)
    summary["truncation_rate"] = summary["truncated"] / len(records)
    lengths = [r["completion_tokens"] for r in records if "completion_tokens" in r]
    summary["mean_tokens"] = sum(lengths) / len(lengths) if lengths else None
    return summary
