"""Load prompts and gold answers from a hub dataset or a local jsonl / json / parquet file.

Presets fill in what the user left unset (``data.source``, field names, ``answer_from_boxed``):

===========  =======================================  =============  ==============  ===========
preset       hub dataset                              prompt field   answer field    from boxed
===========  =======================================  =============  ==============  ===========
math         DigitalLearningGmbH/MATH-lighteval       problem        solution        yes
acereason    nvidia/AceReason-Math                    problem        answer          no
(none)       data.source must be set                  problem        answer          no
synthetic    generated here (data/synthetic.py)       -              -               -
===========  =======================================  =============  ==============  ===========

MATH's gold answer is the last ``\\boxed{}`` of the reference solution. (The original
``hendrycks/competition_math`` repo is gone from the hub; MATH-lighteval holds the same 7,500
train problems with the same fields. Any copy works through ``data.source``.)

Local files are read row by row here rather than through ``datasets``, so that a bad row is
reported with its file, row and field instead of an Arrow cast error about the whole column;
:func:`read_local_rows` is the one reader of local files, for training data and eval benchmarks.
"""
from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from igrpo_megatron.config import DataConfig
from igrpo_megatron.data.examples import DataError, Example
from igrpo_megatron.data.synthetic import synthetic_examples
from igrpo_megatron.rewards.extract import last_boxed

logger = logging.getLogger(__name__)

LOCAL_FORMATS = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class Preset:
    source: Optional[str]
    prompt_field: str
    answer_field: str
    answer_from_boxed: bool


PRESETS = {
    "math": Preset("DigitalLearningGmbH/MATH-lighteval", "problem", "solution", True),
    "acereason": Preset("nvidia/AceReason-Math", "problem", "answer", False),
    None: Preset(None, "problem", "answer", False),
}


class _Malformed(Exception):
    def __init__(self, field: str, why: str):
        super().__init__(why)
        self.field, self.why = field, why


def load_prompts(cfg: DataConfig) -> list[Example]:
    """The examples of ``cfg``; malformed rows raise :class:`DataError` or, with
    ``data.skip_malformed=true``, are skipped and counted in a warning."""
    return load_prompts_counted(cfg)[0]


def load_prompts_counted(cfg: DataConfig) -> tuple[list[Example], int]:
    """(examples, number of malformed rows skipped)."""
    if cfg.preset == "synthetic":
        if cfg.source is not None:
            raise DataError("data.preset=synthetic generates its prompts; unset data.source")
        return synthetic_examples(cfg.synthetic_size, cfg.seed, cfg.synthetic_max_operand,
                                  cfg.synthetic_ops, cfg.synthetic_num_operands), 0
    preset = PRESETS[cfg.preset]
    source = cfg.source or preset.source
    if not source:
        raise DataError("data.source is not set: give a local jsonl/json/parquet file or a hub dataset "
                        "name, or pick data.preset (math, acereason, synthetic)")
    prompt_field = cfg.prompt_field or preset.prompt_field
    answer_field = cfg.answer_field or preset.answer_field
    from_boxed = preset.answer_from_boxed if cfg.answer_from_boxed is None else cfg.answer_from_boxed
    name = os.path.basename(source) if _is_local(source) else source

    examples, skipped = [], 0
    for row, record in _read_rows(source, cfg.split):
        try:
            if isinstance(record, _BadLine):
                raise _Malformed("<line>", record.error)
            if not isinstance(record, dict):
                raise _Malformed("<row>", f"is a {type(record).__name__}, expected an object of fields")
            question = _text_field(record, prompt_field)
            answer = _text_field(record, answer_field, allow_int=True)
            if from_boxed:
                boxed = last_boxed(answer)
                if boxed is None:
                    raise _Malformed(answer_field, "has no \\boxed{...} answer (data.answer_from_boxed=true)")
                answer = boxed
        except _Malformed as e:
            if not cfg.skip_malformed:
                raise DataError(f"{source}: row {row}: field {e.field!r} {e.why}; fix the row, point "
                                f"data.prompt_field/data.answer_field at the right fields, or set "
                                f"data.skip_malformed=true to skip such rows") from None
            if skipped == 0:
                logger.warning("%s: row %d: field %r %s; skipping malformed rows", source, row, e.field, e.why)
            skipped += 1
            continue
        examples.append(Example(f"{name}:{row}", question, answer, source, row))
    if skipped:
        logger.warning("%s: skipped %d malformed rows of %d", source, skipped, skipped + len(examples))
    if not examples:
        raise DataError(f"{source}: no usable rows (fields {prompt_field!r} / {answer_field!r})")
    if cfg.max_examples is not None and cfg.max_examples < len(examples):
        # A uniform sample without replacement, the same for a seed whatever the machine; rows
        # stay in file order (the epoch shuffle is the iterator's).
        keep = sorted(random.Random(cfg.seed).sample(range(len(examples)), cfg.max_examples))
        examples = [examples[i] for i in keep]
    return examples, skipped


def _text_field(record: dict, field: str, allow_int: bool = False) -> str:
    if field not in record:
        raise _Malformed(field, f"is missing (the row has {sorted(record)})")
    value = record[field]
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # integer answers ("answer": 42) are common and exact as text; a question is not
    if not isinstance(value, str):
        raise _Malformed(field, f"is {type(value).__name__} {value!r:.60}, expected a string")
    if not value.strip():
        raise _Malformed(field, "is empty")
    return value


def _is_local(source: str) -> bool:
    return os.path.exists(source) or source.endswith(LOCAL_FORMATS) or source.startswith((".", "/", "~"))


def _read_rows(source: str, split: str) -> Iterator[tuple[int, Any]]:
    if _is_local(source):
        return read_local_rows(source, "data.source")
    return enumerate(_load_hub(source, split), start=1)


def read_local_rows(source: str, field: str) -> Iterator[tuple[int, Any]]:
    """(1-based row, record) pairs of a jsonl / json / parquet file; for jsonl the row is the line
    number, and a line that does not parse is yielded as a record that is not a dict. ``field``
    names the setting that gave ``source``, for the error messages."""
    path = os.path.expanduser(source)
    if not os.path.isfile(path):
        raise DataError(f"{field} {source}: file not found")
    if path.endswith(".jsonl"):
        with open(path, "rb") as f:  # decoded per line, so that a bad byte is one bad row
            for line_no, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield line_no, _BadLine(f"is not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
                    continue
                if not line.strip():
                    continue
                try:
                    yield line_no, json.loads(line)
                except json.JSONDecodeError as e:
                    yield line_no, _BadLine(f"is not valid JSON ({e})")
    elif path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            try:
                records = json.load(f)
            except UnicodeDecodeError as e:
                raise DataError(f"{source}: byte {e.start} (0x{e.object[e.start]:02x}) is not valid UTF-8; "
                                f"re-encode the file as UTF-8") from None
            except json.JSONDecodeError as e:
                raise DataError(f"{source}: not valid JSON ({e}); a .json file must hold a list of "
                                f"objects (one per row), a .jsonl file one object per line") from None
        if not isinstance(records, list):
            raise DataError(f"{source}: a .json file must hold a list of objects (one per row), "
                            f"got a {type(records).__name__}")
        yield from enumerate(records, start=1)
    elif path.endswith(".parquet"):
        import pyarrow.parquet as pq

        yield from enumerate(pq.read_table(path).to_pylist(), start=1)
    else:
        raise DataError(f"{field} {source}: unsupported file type; use one of {', '.join(LOCAL_FORMATS)}")


@dataclass(frozen=True)
class _BadLine:
    """A jsonl line that did not decode or parse; reported like any malformed row."""

    error: str


def _load_hub(name: str, split: str):
    import datasets

    try:
        return datasets.load_dataset(name, split=split)
    except Exception as e:  # noqa: BLE001 - offline, unknown name, wrong split: all need the same hint
        raise DataError(
            f"could not load hub dataset {name!r} (split {split!r}): {type(e).__name__}: {e}. "
            f"If this machine cannot reach the hub, download the dataset elsewhere and pass the local "
            f"file with data.source=/path/to/file.jsonl (or .json / .parquet)") from e
