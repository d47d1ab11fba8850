"""The unit of training data: one question with its gold answer and where it came from."""
from __future__ import annotations

from dataclasses import dataclass

from igrpo_megatron.config import ConfigError


@dataclass(frozen=True)
class Example:
    """One training dataset row: a question, its gold answer and where it came from, before any tokenizer."""

    id: str  # "<file name or hub name>:<row>", unique within a dataset
    question: str
    answer: str  # gold answer, as math-verify / the judge receive it
    source: str  # the file path, hub name or "synthetic"
    row: int  # 1-based row in the source (the line number for jsonl)


class DataError(ConfigError):
    """A user-facing data problem; the message names the file, row and field, and the fix.

    A config that points at data that does not load is a config error: the CLIs report both in
    one line, training and evaluation alike."""
