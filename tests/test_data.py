"""Prompt loading from local files written here, presets, malformed rows, synthetic data,
chat formatting with a real tokenizer, and exact resume of the prompt iterator."""
import json
import logging

import pytest

from igrpo_megatron.config import DataConfig
from igrpo_megatron.data import (DataError, PromptIterator, format_prompt, load_prompts, load_prompts_counted,
                                 synthetic_examples)

ROWS = [
    {"q": "What is 1 + 1?", "a": "2", "extra": 1},
    {"q": "Simplify 2/4.", "a": "\\frac{1}{2}"},
    {"q": "What is 6 * 7?", "a": 42},  # integer answers are accepted as their decimal text
]


def _write(path, rows, fmt):
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), str(path))
    return str(path)


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_local_files_with_custom_fields(tmp_path, fmt):
    rows = ROWS if fmt != "parquet" else [dict(r, a=str(r["a"])) for r in ROWS]  # one type per column
    src = _write(tmp_path / f"train.{fmt}", rows, fmt)
    examples = load_prompts(DataConfig(source=src, prompt_field="q", answer_field="a"))
    assert [(e.question, e.answer, e.row) for e in examples] == [
        ("What is 1 + 1?", "2", 1), ("Simplify 2/4.", "\\frac{1}{2}", 2), ("What is 6 * 7?", "42", 3)]
    assert examples[1].id == f"train.{fmt}:2" and examples[1].source == src


def test_math_preset_takes_the_last_boxed_answer_of_the_solution(tmp_path):
    src = _write(tmp_path / "math.jsonl", [
        {"problem": "Half of 1?", "solution": "First $\\boxed{2}$ is wrong; it is $\\boxed{\\frac{1}{2}}$."},
        {"problem": "Set?", "solution": "So $\\boxed{\\{1, \\{2\\}\\}}$."},
    ], "jsonl")
    examples = load_prompts(DataConfig(preset="math", source=src))
    assert [e.answer for e in examples] == ["\\frac{1}{2}", "\\{1, \\{2\\}\\}"]


def test_acereason_preset_fields(tmp_path):
    src = _write(tmp_path / "ace.parquet", [{"problem": "p", "answer": "3"}], "parquet")
    (example,) = load_prompts(DataConfig(preset="acereason", source=src))
    assert (example.question, example.answer) == ("p", "3")


BAD_ROWS = [
    ({"problem": "p"}, "'solution' is missing"),
    ({"problem": "", "solution": "\\boxed{1}"}, "'problem' is empty"),
    ({"problem": ["p"], "solution": "\\boxed{1}"}, "'problem' is list"),
    ({"problem": "p", "solution": None}, "'solution' is NoneType"),
    ({"problem": "p", "solution": "the answer is 1"}, "'solution' has no \\boxed{...}"),
    ("just a string", "'<row>' is a str"),
]


@pytest.mark.parametrize("bad, why", BAD_ROWS)
def test_malformed_row_error_names_file_row_and_field(tmp_path, bad, why):
    rows = [{"problem": "ok", "solution": "\\boxed{1}"}] * 2 + [bad]
    src = _write(tmp_path / "math.json", rows, "json")
    with pytest.raises(DataError) as err:
        load_prompts(DataConfig(preset="math", source=src))
    assert f"{src}: row 3: field {why}" in str(err.value)
    assert "data.skip_malformed=true" in str(err.value)


def test_bad_jsonl_line_is_reported_by_line_number(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"problem": "a", "answer": "1"}\n\n{"problem": "b", "answer": \n')
    with pytest.raises(DataError, match=r"d.jsonl: row 3: field '<line>' is not valid JSON"):
        load_prompts(DataConfig(source=str(path)))


def test_skip_malformed_skips_and_counts(tmp_path, caplog):
    rows = [{"problem": "ok", "solution": "\\boxed{1}"}] + [bad for bad, _ in BAD_ROWS] + [
        {"problem": "ok2", "solution": "\\boxed{2}"}]
    src = _write(tmp_path / "math.json", rows, "json")
    with caplog.at_level(logging.WARNING):
        examples, skipped = load_prompts_counted(DataConfig(preset="math", source=src, skip_malformed=True))
    assert skipped == len(BAD_ROWS)
    assert [(e.question, e.answer, e.row) for e in examples] == [("ok", "1", 1), ("ok2", "2", len(rows))]
    assert f"skipped {len(BAD_ROWS)} malformed rows of {len(rows)}" in caplog.text


def test_source_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="file not found"):
        load_prompts(DataConfig(source=str(tmp_path / "missing.jsonl")))
    (tmp_path / "d.csv").write_text("problem,answer\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load_prompts(DataConfig(source=str(tmp_path / "d.csv")))
    (tmp_path / "d.json").write_text('{"problem": "p"}')
    with pytest.raises(DataError, match="must hold a list of objects"):
        load_prompts(DataConfig(source=str(tmp_path / "d.json")))
    # A hub name that cannot be fetched (offline here) says to pass a local file.
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"nvidia/AceReason-Math.*data.source=/path/to/file.jsonl"):
        load_prompts(DataConfig(preset="acereason"))


def test_max_examples_keeps_a_seeded_sample_in_file_order(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"problem": f"q{i}", "answer": str(i)}) + "\n" for i in range(100)))

    def rows(**kw):
        return [int(e.answer) for e in load_prompts(DataConfig(source=str(path), **kw))]

    sample = rows(max_examples=10, seed=1)
    assert len(sample) == 10 == len(set(sample)) and sample == sorted(sample)
    assert rows(max_examples=10, seed=1) == sample and rows(max_examples=10, seed=2) != sample
    assert rows(max_examples=500, seed=1) == rows() == list(range(100))


def test_synthetic_is_deterministic_and_correct():
    a = synthetic_examples(200, seed=3, max_operand=9, ops="+-*", num_operands=3)
    assert a == synthetic_examples(200, seed=3, max_operand=9, ops="+-*", num_operands=3)
    assert a != synthetic_examples(200, seed=4, max_operand=9, ops="+-*", num_operands=3)
    for e in a:
        expr = e.question.removeprefix("What is ").removesuffix("?")
        assert int(e.answer) == eval(expr)  # noqa: S307 - our own digits and + - *
    assert {op for e in a for op in "+-*" if f" {op} " in e.question} == {"+", "-", "*"}
    cfg = DataConfig(preset="synthetic", synthetic_size=5, seed=3, synthetic_max_operand=9)
    assert [e.question for e in load_prompts(cfg)] == [e.question for e in synthetic_examples(5, 3, 9)]
    assert synthetic_examples(1, seed=0)[0].question == "What is 12 + 13?"  # pinned: stable across machines
    with pytest.raises(DataError, match="data.synthetic_ops"):
        synthetic_examples(5, seed=0, ops="/")


def test_format_prompt_uses_the_chat_template(tmp_path):
    from igrpo_megatron.demo.tiny import make_tokenizer

    tok = make_tokenizer(str(tmp_path / "tok"))
    messages = [{"role": "system", "content": "Think, then answer."}, {"role": "user", "content": "What is 1 + 2?"}]
    ids = format_prompt(tok, messages)
    assert tok.decode(ids) == ("<|im_start|>system\nThink, then answer.<|im_end|>\n"
                               "<|im_start|>user\nWhat is 1 + 2?<|im_end|>\n<|im_start|>assistant\n")
    without = format_prompt(tok, messages, add_generation_prompt=False)
    assert tok.decode(ids[len(without):]) == "<|im_start|>assistant\n" and ids[:len(without)] == without
    with pytest.raises(ValueError, match="message 0"):
        format_prompt(tok, [{"role": "user"}])
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        format_prompt(tok, messages)


def test_iterator_epochs_and_exact_resume():
    examples = synthetic_examples(10, seed=0)
    run = PromptIterator(examples, seed=7)
    batches = [run.next_batch(4) for _ in range(6)]  # 24 draws: crosses two epoch boundaries
    flat = [e.id for b in batches for e in b]
    assert sorted(flat[:10]) == sorted(e.id for e in examples)  # an epoch is a permutation
    assert sorted(flat[10:20]) == sorted(e.id for e in examples)
    assert flat[:10] != flat[10:20]  # reshuffled each epoch
    assert flat[:10] != [e.id for e in examples]

    replay = PromptIterator(examples, seed=7)
    for _ in range(3):
        replay.next_batch(4)
    state = json.loads(json.dumps(replay.state_dict()))  # checkpoints store it as plain data
    assert (state["epoch"], state["index"]) == (1, 2)
    resumed = PromptIterator(examples, seed=7)
    resumed.load_state_dict(state)
    assert [[e.id for e in resumed.next_batch(4)] for _ in range(3)] == [[e.id for e in b] for b in batches[3:]]
    assert resumed.consumed == 24

    assert [e.id for e in PromptIterator(examples, seed=7, shuffle=False).next_batch(10)] == [e.id for e in examples]
    with pytest.raises(DataError, match="fingerprint"):
        PromptIterator(synthetic_examples(10, seed=1)[::-1], seed=7).load_state_dict(state)
    with pytest.raises(DataError, match="seed"):
        PromptIterator(examples, seed=8).load_state_dict(state)
