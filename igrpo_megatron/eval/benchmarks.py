"""The evaluation benchmarks of the paper: where each lives on the hub, its fields, its k.

``samples`` is the paper's protocol: pass@1 averaged over 64 samples for AIME24/AIME25 and over
8 for the rest. Any benchmark can be read from a local jsonl/json/parquet file instead of the hub
(``eval.benchmarks=["math500=/data/math500.jsonl"]`` or a folder ``eval.data_dir`` holding
``<name>.jsonl``): the same field names apply, so a hub export works as is.

GPQA-Diamond and MMLU-Pro (the paper's Fig. 2) are multiple choice: the model sees the question
and lettered choices and is scored on the letter it gives (eval/choice.py). GPQA stores the
correct answer and three distractors in fixed fields, so its convention is to shuffle them; the
order here is a permutation seeded by the question's text, the same in every run and for every
model. MMLU-Pro's options are already in order and keep it. The paper states no k for these two;
8 is this project's choice, as for the other non-AIME benchmarks.
"""
from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from igrpo_megatron.config import ConfigError
from igrpo_megatron.data.examples import DataError
from igrpo_megatron.data.loading import read_local_rows
from igrpo_megatron.eval.choice import LETTERS
from igrpo_megatron.registry import Registry


@dataclass(frozen=True)
class Benchmark:
    name: str
    hub: str
    split: str
    problem_field: str
    answer_field: str
    samples: int  # k of avg@k in the paper
    subset: Optional[str] = None  # the hub dataset's config name
    answer_after: Optional[str] = None  # GSM8K: the gold number follows "####" in its solution
    # Multiple choice. MMLU-Pro: a list field of options in order, answer_field the gold letter.
    choices_field: Optional[str] = None
    # GPQA: answer_field is the correct text, these fields the wrong ones; shuffled per question.
    distractor_fields: tuple[str, ...] = ()

    @property
    def multiple_choice(self) -> bool:
        return bool(self.choices_field or self.distractor_fields)

    @property
    def fields(self) -> tuple[str, ...]:
        return (self.problem_field, self.answer_field, *filter(None, [self.choices_field]), *self.distractor_fields)


BENCHMARKS: Registry[Benchmark] = Registry("eval.benchmarks")
for _b in [
    Benchmark("aime24", "HuggingFaceH4/aime_2024", "train", "problem", "answer", 64),
    Benchmark("aime25", "math-ai/aime25", "test", "problem", "answer", 64),
    Benchmark("math500", "HuggingFaceH4/MATH-500", "test", "problem", "answer", 8),
    Benchmark("amc23", "math-ai/amc23", "test", "question", "answer", 8),
    Benchmark("gsm8k", "openai/gsm8k", "test", "question", "answer", 8, subset="main", answer_after="####"),
    Benchmark("minerva_math", "math-ai/minervamath", "test", "question", "answer", 8),
    Benchmark("gpqa_diamond", "Idavidrein/gpqa", "train", "Question", "Correct Answer", 8, subset="gpqa_diamond",
              distractor_fields=("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")),
    Benchmark("mmlu_pro", "TIGER-Lab/MMLU-Pro", "test", "question", "answer", 8, choices_field="options"),
]:
    BENCHMARKS.register(_b.name)(_b)


@dataclass(frozen=True)
class Problem:
    """One benchmark row to evaluate: eval's counterpart of ``data.Example`` (``problem`` is the question)."""

    id: str  # "<benchmark>:<row>", row 1-based in the source
    problem: str
    answer: str  # multiple choice: the gold letter
    choices: tuple[str, ...] = ()  # multiple choice: the options in the order shown, A first

    @property
    def text(self) -> str:
        """What the model is asked: the problem, and for multiple choice the lettered options."""
        if not self.choices:
            return self.problem
        options = "\n".join(f"{letter}) {c}" for letter, c in zip(LETTERS, self.choices))
        return f"{self.problem}\n\n{options}\n\nGive the letter of the correct choice as the final answer."


def resolve(spec: str, data_dir: Optional[str] = None) -> tuple[Benchmark, Optional[str]]:
    """``"name"`` or ``"name=path"`` -> (benchmark, local file or None for the hub)."""
    name, _, path = spec.partition("=")
    name = name.strip()
    if name not in BENCHMARKS:
        raise ConfigError(f"eval.benchmarks: unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)} "
                          f"(a local file is given as name=path)")
    if not path and data_dir:
        path = os.path.join(data_dir, f"{name}.jsonl")
        if not os.path.isfile(path):
            raise ConfigError(f"eval.data_dir={data_dir} has no {name}.jsonl; add it or drop data_dir to use "
                              f"the hub ({BENCHMARKS[name].hub})")
    return BENCHMARKS[name], path or None


def _gold(value: Any, bench: Benchmark, where: str) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # AMC23 stores 27.0
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field {bench.answer_field!r} is {value!r}, expected a non-empty answer")
    if bench.answer_after:
        if bench.answer_after not in value:
            raise DataError(f"{where}: field {bench.answer_field!r} has no {bench.answer_after!r} "
                            f"before its final answer")
        value = value.rsplit(bench.answer_after, 1)[1].replace(",", "")
    return value.strip()


def _text(row: dict, name: str, where: str) -> str:
    value = row[name]
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: field {name!r} is empty or not text")
    return value.strip()


def shuffled(question: str, correct: str, wrong: Iterable[str]) -> tuple[tuple[str, ...], str]:
    """GPQA's choices in a fixed order drawn from the question's text; returns (choices, gold letter)."""
    choices = [correct, *wrong]
    random.Random(hashlib.sha256(question.encode()).digest()).shuffle(choices)
    return tuple(choices), LETTERS[choices.index(correct)]


def _choice_problem(row: dict, bench: Benchmark, pid: str, where: str) -> Problem:
    question = _text(row, bench.problem_field, where)
    if bench.distractor_fields:
        wrong = [_text(row, f, where) for f in bench.distractor_fields]
        choices, gold = shuffled(question, _text(row, bench.answer_field, where), wrong)
        return Problem(pid, question, gold, choices)
    options = row[bench.choices_field]
    if not isinstance(options, list) or not 2 <= len(options) <= len(LETTERS):
        raise ConfigError(f"{where}: field {bench.choices_field!r} must be a list of 2 to {len(LETTERS)} options")
    gold = str(row[bench.answer_field]).strip().upper()
    if gold not in LETTERS[:len(options)]:
        raise ConfigError(f"{where}: field {bench.answer_field!r} is {row[bench.answer_field]!r}, expected one "
                          f"of the letters {LETTERS[:len(options)]}")
    return Problem(pid, question, gold, tuple(str(o) for o in options))


def to_problems(rows: Iterable[dict], bench: Benchmark, source: str) -> list[Problem]:
    """Rows of a benchmark -> problems; a bad row is an error naming the source, row and field."""
    out = []
    for i, row in enumerate(rows, start=1):
        where = f"{bench.name} ({source}) row {i}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: not a JSON object of fields")
        for f in bench.fields:
            if row.get(f) is None:  # a jsonl row lacking a field others have reads as None
                raise ConfigError(f"{where}: no field {f!r}; {bench.name} reads "
                                  + ", ".join(repr(f) for f in bench.fields))
        pid = f"{bench.name}:{i}"
        if bench.multiple_choice:
            out.append(_choice_problem(row, bench, pid, where))
        else:
            out.append(Problem(pid, _text(row, bench.problem_field, where),
                               _gold(row[bench.answer_field], bench, where)))
    return out


def load_benchmark(spec: str, data_dir: Optional[str] = None, limit: Optional[int] = None
                   ) -> tuple[Benchmark, list[Problem]]:
    """The problems of one ``eval.benchmarks`` entry, from its local file or the hub."""
    bench, path = resolve(spec, data_dir)
    if path:
        rows, source = [record for _, record in read_local_rows(path, f"eval.benchmarks {bench.name}")], path
    else:
        import datasets

        try:
            rows = datasets.load_dataset(bench.hub, bench.subset, split=bench.split)
        except Exception as e:  # noqa: BLE001 - offline, renamed, gated: one hint covers them
            raise DataError(f"{bench.name}: cannot load {bench.hub} from the hub ({type(e).__name__}: {e}); "
                            f"on an offline machine export it elsewhere and pass {bench.name}=/path/file.jsonl "
                            f"or eval.data_dir") from e
        source = bench.hub
    problems = to_problems(rows, bench, source)
    return bench, problems[:limit] if limit else problems
