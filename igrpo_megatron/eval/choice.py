"""The letter a reasoning model chose on a multiple-choice question (GPQA-Diamond, MMLU-Pro).

A reasoning answer mentions many letters before settling ("A is wrong because...", "the answer
is not B"), so a letter counts only where the model states its final answer, tried in order:

1. its final word, as the math benchmarks read it (the last ``\\boxed{}``, else the last
   ``<answer>`` block): a lone letter there, ``(C)``, ``C)``, ``\\text{C}``, ``C: text``, or the
   exact text of one choice; anything else in the box (two letters, a number no choice has)
   means no answer, without looking further back;
2. else the last statement "answer/choice/option is|:|= LETTER" not negated ("is not B");
3. else a last line that is a lone letter (``C``, ``(C)``, ``**C**``).

Letters beyond the question's choices are never read. Lowercase letters count in parentheses
or when nothing but punctuation follows them ("the answer is c."), so "the answer is a prime"
names no letter.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

from igrpo_megatron.rewards.extract import extract_answer

LETTERS = "ABCDEFGHIJ"  # MMLU-Pro has up to 10 options

_WRAPPER_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")
_MARKUP_RE = re.compile(r"[*$]")
# A letter token: "(c)" in any case, an uppercase letter not followed by a letter or digit, or
# a lowercase one followed only by punctuation or the end of the line.
_LETTER = r"(?:\(([A-Ja-j])\)|([A-J])(?![A-Za-z0-9])|([a-j])(?=[ \t]*(?:$|[.,;:!)])))"
_STATEMENT_RE = re.compile(r"(?i:answer|choice|option)\s*(?:is\b\s*:?|:|=)\s*(not\s+)?" + _LETTER, re.MULTILINE)
# The whole final word is a letter, or starts with one closed by ")", "." or ":" ("C) 42").
_LEADING_RE = re.compile(r"(?:\(([A-Ja-j])\)|([A-Ja-j])[.:)]|([A-Ja-j])$)")
_LONE_RE = re.compile(r"\s*(?:\(([A-Ja-j])\)|([A-J]))\.?\s*$")


def _letter(match: Optional[re.Match], valid: str) -> Optional[str]:
    """The letter a match captured (its last group), if the question has it."""
    if match is None:
        return None
    letter = match.group(match.lastindex).upper()
    return letter if letter in valid else None


def _plain(text: str) -> str:
    """``\\text{C}`` -> ``C``; markdown bold and math dollars dropped."""
    return _MARKUP_RE.sub("", _WRAPPER_RE.sub(r"\1", text))


def _last_statement(text: str, valid: str) -> Optional[str]:
    """The letter of the last "answer is X" that is not negated and names a choice there is."""
    for m in reversed(list(_STATEMENT_RE.finditer(text))):
        letter = None if m.group(1) else _letter(m, valid)
        if letter:
            return letter
    return None


def _final_word(content: str, valid: str, choices: Sequence[str]) -> Optional[str]:
    text = _plain(content).strip()
    if _LEADING_RE.match(text):
        return _letter(_LEADING_RE.match(text), valid)
    same = [LETTERS[i] for i, c in enumerate(choices) if " ".join(c.split()).lower() == " ".join(text.split()).lower()]
    if len(same) == 1:
        return same[0]
    return _last_statement(text, valid)


def extract_choice(text: str, n_choices: int, choices: Sequence[str] = ()) -> Optional[str]:
    """The chosen letter (uppercase, among the first ``n_choices``), or None when none is stated."""
    valid = LETTERS[:n_choices]
    final = extract_answer(text)
    if final is not None:
        return _final_word(final, valid, choices)
    plain = _plain(text)
    letter = _last_statement(plain, valid)
    if letter:
        return letter
    lines = [line for line in plain.splitlines() if line.strip()]
    return _letter(_LONE_RE.fullmatch(lines[-1]), valid) if lines else None
