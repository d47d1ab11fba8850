"""The pure pieces of Table 1's two other baselines: Critique-GRPO and Self-Verification.

Facts and open choices: ../shared/notes/baselines_table1.md ([CG] arXiv 2506.03106 and its code
zhangxy-2019/critique-GRPO; [SV] arXiv 2506.01369 and its verl fork). The wording of their prompts
lives here, beside iGRPO's in ``igrpo.py``; the rollout units that use it are
``rollout/critique.py`` and ``rollout/self_verification.py``.
"""
from __future__ import annotations

import re
from typing import Optional

from torch import Tensor

# ------------------------------------------------------------------------------ Critique-GRPO

# [CG]'s official refinement template; the previous solution goes where the placeholder is (its
# own token ids are spliced in, as iGRPO's draft is).
CRITIQUE_SYSTEM = "You are a helpful assistant."
CRITIQUE_REFINE_TEMPLATE = (
    "Given the following inputs:\n**Question**: {question}\n**Previous Solution**: {solution}\n"
    "**Critique**: {critique}\nPlease re-answer by:\n"
    "- Correcting potential errors identified in the critique, if they exist.\n"
    "- Providing clear, step-by-step reasoning.\n"
    "- Formatting the final answer as \\boxed{{answer}}.\n"
    "Ensure the revised solution addresses all issues raised in the critique."
)
# The critic's prompt (critique_source=policy: the policy itself; endpoint: an LLM critic): the
# project's wording; [CG]'s critic also sees the reference answer.
CRITIC_TEMPLATE = (
    "Question: {question}\n\nA student's solution:\n{solution}\n\nThe reference answer is {gold}. "
    "Critique the solution step by step: say whether its final answer is correct and point out each error."
)


def rule_critique(correct: bool, gold: str) -> str:
    """[CG]'s c_GT critique, built from the rule reward alone (its official default ``simple_gt``)."""
    verdict = "correct" if correct else "incorrect"
    return f"The generated solution is {verdict}, the ground truth is {gold}."


def refinement_messages(question: str, solution: str, critique: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": CRITIQUE_SYSTEM},
            {"role": "user", "content": CRITIQUE_REFINE_TEMPLATE.format(
                question=question, solution=solution, critique=critique)}]


def pick_to_refine(accuracy: list[float], k: int) -> list[int]:
    """The ``k`` initial responses the refinements revise: wrong ones first, each kind in sampling order.

    [CG]'s code refines all n and keeps the first correct refinement, which costs n extra samples;
    at iGRPO's budget of 8 there is room for k = 1, and a wrong response is the one a critique can
    fix (ours)."""
    order = sorted(range(len(accuracy)), key=lambda i: (accuracy[i] >= 1, i))
    return order[:k]


def shaped_objective(logprobs: Tensor, gamma: float) -> Tensor:
    """[CG]'s shaping of refinement tokens, rho = pi / (pi + gamma), pi = exp(logprobs) under the
    ORIGINAL question. No ratio to the sampler and no clip: clipping rho at 1 +/- eps would zero
    the gradient of every token with pi <= 0.4 and A < 0 (the notes). d rho / d log pi =
    pi gamma / (pi + gamma)^2: low-probability tokens of a good refinement get the most weight."""
    pi = logprobs.exp()
    return pi / (pi + gamma)


# ------------------------------------------------------------------------------ Self-Verification

VERIFY_INSTRUCTION = (
    "Please verify the solution step by step. At the end of the solution verification, when you give "
    "your final grade, write it in the form \"Is the answer correct (Yes/No)? X\", where X is either Yes or No."
)
_VERDICT_RE = re.compile(r"Is the answer correct \(Yes/No\)\?\s*\**\s*(Yes|No)\b", re.IGNORECASE)


def strip_think(solution: str) -> str:
    """A solution as the verifier sees it: everything up to the last ``</think>`` removed ([SV])."""
    return solution.rsplit("</think>", 1)[-1].strip()


def verification_messages(question: str, solution: str, system_prompt: Optional[str] = None) -> list[dict]:
    """[SV]'s three turns: the problem, the policy's solution (monologue removed), the instruction."""
    head = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    return head + [{"role": "user", "content": question}, {"role": "assistant", "content": solution},
                   {"role": "user", "content": VERIFY_INSTRUCTION}]


def parse_verdict(reply: str) -> Optional[bool]:
    """The last "Is the answer correct (Yes/No)? X" of a reply: True for Yes, False for No, None if absent."""
    found = _VERDICT_RE.findall(reply)
    return None if not found else found[-1].lower() == "yes"


def verification_reward(verdict: Optional[bool], label: bool, correct_ratio: float) -> float:
    """[SV]'s balanced reward (the fork's ``fix_imbalance``): r_v = 1[verdict == label], scaled by
    2 (1 - p) for a Yes verdict and 2 p for a No, p the solution's group correct ratio, so a verifier
    that always says the majority answer earns no more than one that reads; unparseable: 0."""
    if verdict is None or verdict != label:
        return 0.0
    return 2.0 * (1.0 - correct_ratio) if verdict else 2.0 * correct_ratio
