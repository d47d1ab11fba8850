"""Seeded synthetic arithmetic ("What is 7 + 12?" -> "19") for the CPU demo and tests.

The demo teaches a tiny randomly initialised model this task, so answers stay short integers and
difficulty is a few knobs: operand range, operators, number of operands.
"""
from __future__ import annotations

import random

from igrpo_megatron.data.examples import DataError, Example

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _evaluate(nums: list[int], ops: list[str]) -> int:
    """Usual precedence: fold the products first, then add/subtract left to right."""
    terms, signs = [nums[0]], []
    for op, n in zip(ops, nums[1:]):
        if op == "*":
            terms[-1] *= n
        else:
            terms.append(n)
            signs.append(op)
    total = terms[0]
    for op, t in zip(signs, terms[1:]):
        total = _OPS[op](total, t)
    return total


def synthetic_examples(size: int, seed: int, max_operand: int = 20, ops: str = "+-",
                       num_operands: int = 2) -> list[Example]:
    """``size`` questions, identical for the same arguments on every machine (random.Random(seed))."""
    if size < 1:
        raise DataError(f"data.synthetic_size={size}: must be >= 1")
    if max_operand < 1:
        raise DataError(f"data.synthetic_max_operand={max_operand}: must be >= 1")
    if not ops or set(ops) - set(_OPS):
        raise DataError(f"data.synthetic_ops={ops!r}: use a non-empty subset of '+-*'")
    if num_operands < 2:
        raise DataError(f"data.synthetic_num_operands={num_operands}: must be >= 2")
    rng = random.Random(seed)
    examples = []
    for i in range(size):
        nums = [rng.randint(0, max_operand) for _ in range(num_operands)]
        chosen = [rng.choice(ops) for _ in range(num_operands - 1)]
        expr = " ".join([str(nums[0])] + [f"{op} {n}" for op, n in zip(chosen, nums[1:])])
        examples.append(Example(f"synthetic:{i + 1}", f"What is {expr}?", str(_evaluate(nums, chosen)),
                                "synthetic", i + 1))
    return examples


_NAMES = ("Ava", "Ben", "Chloe", "Dev", "Ema", "Finn", "Grace", "Hugo", "Ines", "Jack")
_ITEMS = ("apple", "marble", "book", "pencil", "sticker", "cookie", "shell", "coin")
_STORIES = (
    ("{n} has {a} {i}s and finds {b} more. How many {i}s does {n} have now?", lambda a, b: a + b),
    ("{n} has {a} {i}s and gives {b} of them away. How many {i}s does {n} have left?", lambda a, b: a - b),
    ("{n} buys {a} bags with {b} {i}s in each bag. How many {i}s does {n} buy?", lambda a, b: a * b),
    ("{n} had {a} {i}s. After getting some more, {n} has {c} {i}s. How many {i}s did {n} get?",
     lambda a, b: b),
)


def word_problems(size: int, seed: int, max_operand: int = 20) -> list[dict]:
    """``size`` one-step arithmetic word problems ``{"problem", "answer"}`` (random.Random(seed)).

    Short stories a small instruction model can read, with integer answers: the real-model
    benchmark and tests train and evaluate on them (disjoint seeds give disjoint splits)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(size):
        story, solve = rng.choice(_STORIES)
        a, b = rng.randint(2, max_operand), rng.randint(2, max_operand)
        if solve(a, b) < 0 or solve is _STORIES[1][1] and b > a:
            a, b = b, a
        if story is _STORIES[2][0]:
            a, b = a % 9 + 2, b % 9 + 2
        text = story.format(n=rng.choice(_NAMES), i=rng.choice(_ITEMS), a=a, b=b, c=a + b)
        rows.append({"problem": text, "answer": str(solve(a, b))})
    return rows
