"""What every reward returns, and the interface the trainer calls.

The trainer needs the components, not only the sum: it logs accuracy separately, and draft /
refinement accuracy (the paper's E[R(best draft)] = 1 - (1 - p)^N check) is computed from the
accuracy component alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Protocol, Sequence


class RewardItem(NamedTuple):
    """One sampled completion to score against its question's gold answer (a prompt has N + G of them).

    A plain ``(completion, gold)`` tuple is accepted everywhere.
    """

    completion: str
    gold: str
    question: str = ""  # only the generative judge reads it


@dataclass(frozen=True)
class RewardResult:
    total: float  # accuracy_weight * accuracy + format_weight * format
    accuracy: float  # math-verify: 0 or 1; judge: a score in [0, 1]
    format: float  # 0 or 1 (see extract.FORMAT_PATTERN)
    timed_out: bool = False
    error: Optional[str] = None  # why accuracy fell back to its default (worker died, judge reply...)


def make_result(accuracy: float, fmt: float, accuracy_weight: float, format_weight: float,
                timed_out: bool = False, error: Optional[str] = None) -> RewardResult:
    return RewardResult(accuracy_weight * accuracy + format_weight * fmt, accuracy, fmt, timed_out, error)


def as_items(items: Sequence) -> list[RewardItem]:
    return [it if isinstance(it, RewardItem) else RewardItem(*it) for it in items]


class Reward(Protocol):
    """Scores completions. Implementations are context managers that own workers or sessions."""

    def score(self, items: Sequence[RewardItem]) -> list[RewardResult]:
        """Blocking; results in the order of ``items``."""

    async def score_async(self, items: Sequence[RewardItem]) -> list[RewardResult]:
        """Awaitable; lets the trainer score one prompt's drafts as soon as they arrive."""

    def counters(self) -> dict[str, int]:
        """Cumulative counts since construction (items, timeouts, errors, ...); diff them per step."""

    def close(self) -> None: ...

    def __enter__(self): ...

    def __exit__(self, *exc) -> None: ...
