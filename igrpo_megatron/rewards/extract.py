"""Answer extraction and the format check: pure string functions, shared by rewards and data.

The gold answer of a MATH solution and the predicted answer of a completion are both "the last
``\\boxed{...}``", so one brace-balanced scanner serves both (a regex cannot match nested braces).
"""
from __future__ import annotations

import re
from typing import Optional

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)

# The paper's format reward: one <think>...</think> block followed by one <answer>...</answer>
# block and nothing else. Whitespace is allowed around and between the blocks; neither block may
# contain its own tags again (a second <think> or a nested <answer> fails), and the answer must be
# non-blank (checked on the group, not in the pattern, which keeps the match linear in the text's
# length: a tempered ``(?:(?!</?answer>).)*`` on each side of a ``\S`` would backtrack
# quadratically on a long unclosed answer). Matched with fullmatch on the whole completion.
FORMAT_PATTERN = (
    r"\s*<think>(?:(?!</?think>).)*</think>"
    r"\s*<answer>((?:(?!</?answer>).)*)</answer>\s*"
)
_FORMAT_RE = re.compile(FORMAT_PATTERN, re.DOTALL)


def last_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` with balanced braces, else None.

    An unclosed box (a completion cut off by max_tokens) does not count; an earlier closed one
    then does. Empty boxes return None.
    """
    for match in reversed(list(_BOX_RE.finditer(text))):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            ch = text[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    content = text[start:i].strip()
                    if content:
                        return content
                    break
    return None


def extract_answer(text: str) -> Optional[str]:
    """The predicted answer of a completion, or None when it gives none.

    Order: the last balanced ``\\boxed{}``/``\\fbox{}`` anywhere in the text (this covers a box
    inside the answer tag); else the content of the last closed ``<answer>...</answer>``.
    """
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    tags = _ANSWER_RE.findall(text)
    if tags and tags[-1].strip():
        return tags[-1].strip()
    return None


def format_reward(text: str, think_prefilled: bool = False) -> float:
    """1.0 when ``text`` has exactly the ``<think>..</think><answer>..</answer>`` shape, else 0.0.

    ``think_prefilled``: the prompt ended with ``<think>``, so the completion starts after it.
    """
    match = _FORMAT_RE.fullmatch("<think>" + text if think_prefilled else text)
    return 1.0 if match is not None and match.group(1).strip() else 0.0
