"""igrpo_megatron.eval: pass@k against enumeration, avg@k by hand, local benchmark files,
math-verify scoring of real completions, and ``igrpo-eval`` end to end on a real vLLM server."""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import subprocess
import sys

import pytest

from eval_fixtures import write_jsonl as _jsonl
from igrpo_megatron.algorithms.igrpo import DEFAULT_TEMPLATE
from igrpo_megatron.config import ConfigError, DataConfig, EvalConfig, RewardConfig, load_config
from igrpo_megatron.data import DataError
from igrpo_megatron.eval import BENCHMARKS, load_benchmark, pass_at_k, summarize
from igrpo_megatron.eval.runner import prompt_messages, score_completions, summarize_records
from igrpo_megatron.models.parallel import free_port
from torchrun_util import REPO





def test_pass_at_k_equals_the_fraction_of_k_subsets_with_a_correct_sample():
    rng = random.Random(0)
    for _ in range(40):
        n = rng.randint(1, 9)
        c, k = rng.randint(0, n), rng.randint(1, n)
        samples = [1] * c + [0] * (n - c)
        subsets = list(itertools.combinations(samples, k))
        expected = sum(any(s) for s in subsets) / len(subsets)
        assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)
    assert pass_at_k(64, 16, 1) == pytest.approx(0.25)
    assert pass_at_k(1000, 1, 500) == pytest.approx(0.5)  # the product form stays exact for large n
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_summarize_by_hand():
    table = [[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]
    s = summarize(table, pass_ks=[1, 2, 8])
    assert s["avg@4"] == pytest.approx((0.25 + 1 + 0) / 3)
    assert s["pass@1"] == pytest.approx(s["avg@4"])
    assert s["pass@2"] == pytest.approx(((1 - 3 / 6) + 1 + 0) / 3)
    assert "pass@8" not in s  # k above the sample count is not estimable
    assert s["per_sample_accuracy"] == pytest.approx([2 / 3, 1 / 3, 1 / 3, 1 / 3])
    with pytest.raises(ValueError, match="same"):
        summarize([[1, 0], [1]])


def test_registry_follows_the_paper_protocol():
    table1 = ["aime24", "aime25", "math500", "amc23", "gsm8k", "minerva_math"]
    assert list(BENCHMARKS) == table1 + ["gpqa_diamond", "mmlu_pro"]  # Fig. 2 adds the multiple-choice two
    assert {n: b.samples for n, b in BENCHMARKS.items()} == {
        "aime24": 64, "aime25": 64, "math500": 8, "amc23": 8, "gsm8k": 8, "minerva_math": 8,
        "gpqa_diamond": 8, "mmlu_pro": 8}
    assert [n for n, b in BENCHMARKS.items() if b.multiple_choice] == ["gpqa_diamond", "mmlu_pro"]
    e = EvalConfig()
    assert (e.temperature, e.top_p, e.samples, e.benchmarks) == (0.6, 0.95, None, table1)
    assert e.max_tokens == 65000  # the paper's generation budget, independent of rollout.max_tokens


def test_the_training_prompt_is_the_one_the_policy_trained_on():
    """eval.system_prompt: training takes the run's data.system_prompt and data.user_suffix (a model
    trained on a configured prompt was evaluated on the paper's before), the paper's when unset."""
    data = DataConfig(system_prompt="Be brief.", user_suffix=" Box it.")
    assert prompt_messages("2 + 3?", EvalConfig(prompt_template="Q: {problem}"), data) == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q: 2 + 3? Box it."}]
    assert prompt_messages("2 + 3?", EvalConfig(system_prompt="none"), data) == [{"role": "user", "content": "2 + 3?"}]
    assert prompt_messages("2 + 3?", EvalConfig(), DataConfig()) == [
        {"role": "system", "content": DEFAULT_TEMPLATE.system_prompt}, {"role": "user", "content": "2 + 3?"}]


def test_local_files_replace_the_hub(tmp_path):
    gsm = _jsonl(tmp_path / "gsm.jsonl", [{"question": "q1", "answer": "work...\n#### 1,234"},
                                          {"question": "q2", "answer": "#### -5"}])
    bench, problems = load_benchmark(f"gsm8k={gsm}")
    assert bench.name == "gsm8k" and [(p.id, p.problem, p.answer) for p in problems] == [
        ("gsm8k:1", "q1", "1234"), ("gsm8k:2", "q2", "-5")]
    (tmp_path / "amc.json").write_text(json.dumps([{"question": "a", "answer": 27.0}, {"question": "b", "answer": 2.5}]))
    assert [p.answer for p in load_benchmark(f"amc23={tmp_path / 'amc.json'}")[1]] == ["27", "2.5"]
    data_dir = tmp_path / "bench"
    data_dir.mkdir()
    _jsonl(data_dir / "aime24.jsonl", [{"problem": f"p{i}", "answer": str(i)} for i in range(5)])
    assert [p.answer for p in load_benchmark("aime24", str(data_dir), limit=2)[1]] == ["0", "1"]

    with pytest.raises(ConfigError, match="unknown benchmark 'aime26'"):
        load_benchmark("aime26=x.jsonl")
    with pytest.raises(ConfigError, match="has no math500.jsonl"):
        load_benchmark("math500", str(data_dir))
    bad = _jsonl(tmp_path / "bad.jsonl", [{"problem": "p", "answer": "1"}, {"problem": "p"}])
    with pytest.raises(ConfigError, match=r"row 2: no field 'answer'"):
        load_benchmark(f"math500={bad}")
    # The training data's reader: its errors (a DataError, a ConfigError to the CLIs) name the entry.
    (tmp_path / "m.csv").write_text("problem,answer\np,1\n")
    with pytest.raises(DataError, match=r"eval.benchmarks math500 .*m.csv: unsupported file type"):
        load_benchmark(f"math500={tmp_path / 'm.csv'}")
    (tmp_path / "torn.jsonl").write_text('{"problem": "p", "answer": "1"}\n{"problem": "p", "ans\n')
    with pytest.raises(DataError, match=r"row 2: not a JSON object"):
        load_benchmark(f"math500={tmp_path / 'torn.jsonl'}")


def test_math_verify_scoring_and_aggregation_of_real_completions(tmp_path):
    from igrpo_megatron.rewards import make_reward

    path = _jsonl(tmp_path / "m.jsonl", [{"problem": "half?", "answer": "\\frac{1}{2}"},
                                         {"problem": "sqrt 12?", "answer": "2\\sqrt{3}"},
                                         {"problem": "3 - 10?", "answer": "-7"}])
    _, problems = load_benchmark(f"math500={path}")
    completions = [
        ["so it is \\boxed{0.5}", "<think>x</think><answer>1/2</answer>", "\\boxed{2}", "no idea"],  # 2 / 4
        ["\\boxed{\\sqrt{12}}", "\\boxed{12}", "\\boxed{2}", "\\boxed{\\sqrt{3}}"],  # 1 / 4
        ["the answer is \\boxed{-7}", "\\boxed{-7.0}", "\\boxed{ -7 }", "<answer>-7</answer>"],  # 4 / 4
    ]

    async def score_all(reward):
        return [r for p, texts in zip(problems, completions) for r in await score_completions(reward, p, texts)]

    with make_reward(RewardConfig(kind="math_verify", num_workers=1)) as reward:
        records = asyncio.run(score_all(reward))
    assert [r["correct"] for r in records] == [True, True, False, False, True, False, False, False,
                                               True, True, True, True]
    assert [r["id"] for r in records[::4]] == ["math500:1", "math500:2", "math500:3"]
    s = summarize_records(records, k=4, pass_ks=[1, 2, 4])
    assert s["avg@4"] == pytest.approx((2 / 4 + 1 / 4 + 1) / 3)
    assert s["pass@2"] == pytest.approx(((1 - 1 / 6) + (1 - 3 / 6) + 1) / 3)
    assert s["pass@4"] == 1.0
    assert s["per_sample_accuracy"] == pytest.approx([1, 2 / 3, 1 / 3, 1 / 3])
    assert (s["problems"], s["samples"], s["timeouts"]) == (3, 4, 0)




def test_igrpo_eval_end_to_end_on_a_real_vllm_server(tiny_qwen2, tmp_path):
    """The CLI starts a vLLM (CPU) server for the tiny model, samples k completions per problem
    with the eval protocol's seed, scores them and writes per-sample records and the summary.

    The model is what training leaves behind: a Megatron checkpoint (the tiny model through
    ``igrpo-convert from-hf``), which igrpo-eval converts to a temporary HF folder with to-hf's
    code and removes afterwards. (tests/test_eval_protocol.py serves a to-hf sharded folder.)"""
    pytest.importorskip("vllm")
    from transformers import AutoTokenizer

    from igrpo_megatron.data.chat import format_prompt
    from igrpo_megatron.eval.runner import prompt_messages
    from igrpo_megatron.rewards.math_verify_reward import accuracy

    rows = [{"problem": "What is 2 + 3?", "answer": "5"}, {"problem": "What is 7 - 4?", "answer": "3"}]
    math500 = _jsonl(tmp_path / "math500.jsonl", rows)
    amc = _jsonl(tmp_path / "amc.jsonl", [{"question": r["problem"], "answer": r["answer"]} for r in rows[:1]])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    model = tmp_path / "ckpt"
    proc = subprocess.run([sys.executable, "-m", "igrpo_megatron.cli.convert", "from-hf", "--hf", tiny_qwen2,
                           "--out", str(model)], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = tmp_path / "eval"
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"""
model: {{hf_path: {model}}}
data: {{preset: synthetic}}
reward: {{num_workers: 1}}
rollout: {{port: {free_port()}, dtype: float32, max_model_len: 1024, kv_cache_memory_bytes: 268435456,
          max_prompt_tokens: 512, max_tokens: 512, enforce_eager: true, startup_timeout_s: 300,
          request_timeout_s: 120}}
eval: {{benchmarks: ["math500={math500}", "amc23={amc}"], samples: 4, pass_k: [1, 2], max_tokens: 12,
       seed: 7, output_dir: {out}}}
""")
    proc = subprocess.run([sys.executable, "-m", "igrpo_megatron.cli.eval", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=480, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    results = json.loads((out / "results.json").read_text())
    records = [json.loads(line) for line in (out / "math500.jsonl").read_text().splitlines()]
    amc_records = [json.loads(line) for line in (out / "amc23.jsonl").read_text().splitlines()]
    assert [(r["id"], r["sample"]) for r in records] == [(f"math500:{i}", j) for i in (1, 2) for j in range(4)]
    assert not list(out.glob(".hf-from-megatron-*"))  # the converted folder is removed
    assert json.loads((out / "math500.settings.json").read_text())["model"].startswith(
        f"megatron:{os.path.realpath(model)}/iter_")
    assert results["model"] == str(model)
    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    c = load_config(str(cfg))
    for r, row in zip(records[::4], rows):  # the prompt is the training system prompt + the problem
        assert r["prompt_tokens"] == len(format_prompt(tok, prompt_messages(row["problem"], c.eval, c.data)))
    for r in records + amc_records:
        assert 1 <= r["completion_tokens"] <= 12
        assert r["correct"] == (accuracy(r["completion"], r["gold"]) == 1.0)  # same verdict as math-verify
    # The seed of a problem is eval.seed + its index: the same prompt at index 0 of two benchmarks
    # gets the same k completions, and the k samples of a problem differ from each other.
    assert [r["completion"] for r in amc_records] == [r["completion"] for r in records[:4]]
    assert len({r["completion"] for r in records[:4]}) > 1
    m = results["benchmarks"]["math500"]
    assert (m["problems"], m["samples"]) == (2, 4)
    assert m["avg@4"] == pytest.approx(sum(r["correct"] for r in records) / 8)
    assert m["truncated"] == sum(r["finish_reason"] == "length" for r in records)
    assert results["average"] == pytest.approx((m["avg@4"] + results["benchmarks"]["amc23"]["avg@4"]) / 2)
    assert proc.stdout.strip().splitlines()[-1] == f"average: {results['average']:.4f}"
    assert results["protocol"]["temperature"] == 0.6 and results["protocol"]["top_p"] == 0.95


# ------------------------------------------------------------------ the paper's protocol, offline parts

GPQA_CHOICES = ("12", "42", "7", "none of these")
# (completion, letter read from it) on a question whose choices are GPQA_CHOICES.
LETTER_CASES = [
    ("Between A and B I first lean to A, but the answer is C.", "C"),  # several letters mentioned
    ("The answer is not B. Checking again, the answer is D.", "D"),
    ("The answer is not B.", None),  # ruling a letter out names no answer
    ("Option A fails, option B fails. So \\boxed{C}", "C"),
    ("so \\boxed{(b)}", "B"),  # boxed, lowercase, in parentheses
    ("Thus the answer is (c).", "C"),
    ("A) is wrong since 3 > 2; B) too.\n\n(C)", "C"),  # a lone last line
    ("Choice A looks right at first, but after checking the units:\nAnswer: D", "D"),
    ("\\boxed{\\text{B}}", "B"),
    ("I first thought the answer is A, but actually the answer is B.", "B"),  # the last statement wins
    ("The answer is a tricky one, so the final answer is **D**", "D"),  # "is a tricky" is no letter
    ("<think>A or C?</think><answer>B</answer>", "B"),
    ("<answer>(A) 12</answer>", "A"),
    ("the value is \\boxed{42}", "B"),  # the text of one choice
    ("I don't know.", None),
    ("The answer is E.", None),  # not a choice of this question
    ("\\boxed{B} wait, no: \\boxed{C}", "C"),
    ("after all that, answer: a", "A"),
    ("**Answer:** C", "C"),
    ("\\boxed{A, C}", None),  # two letters in the final word: no answer, no fallback
    ("\\boxed{E}", None),
    ("the answer is a prime number", None),
    ("$\\boxed{\\textbf{(D)}}$", "D"),
]


def test_letter_extraction_on_adversarial_answers():
    from igrpo_megatron.eval import extract_choice

    assert len(LETTER_CASES) >= 15
    got = [extract_choice(text, 4, GPQA_CHOICES) for text, _ in LETTER_CASES]
    assert got == [want for _, want in LETTER_CASES]
    # MMLU-Pro has up to ten options: E is a letter there, and J is the last.
    assert extract_choice("The answer is E.", 10) == "E" and extract_choice("Answer: (j)", 10) == "J"
    assert extract_choice("Answer: (j)", 4) is None


def test_majority_vote_and_its_tie_rule():
    from igrpo_megatron.eval import majority_vote

    assert majority_vote(["7", "5", "7", None], [False, True, False, False]) is False  # 7 wins 2-1
    assert majority_vote([None, "5", "7", "7", "5"], [False, True, False, False, True]) is True  # tie: 5 came first
    assert majority_vote([None, "7", "5", "5", "7"], [False, False, True, True, False]) is False  # tie: 7 came first
    assert majority_vote([None, None], [False, False]) is False  # nobody answered
    s = summarize([[1, 0, 0], [0, 0, 0]], answers=[["5", "7", "7"], [None, "3", None]])
    assert s["maj@3"] == 0.0 and s["avg@3"] == pytest.approx(1 / 6)
    assert summarize([[1, 1, 0]], answers=[["5", "5", "7"]])["maj@3"] == 1.0


def test_default_pass_k_and_request_chunks():
    from igrpo_megatron.eval.runner import request_chunks
    from igrpo_megatron.eval.scores import default_pass_ks

    assert default_pass_ks(64) == [1, 2, 4, 8, 16, 32, 64]
    assert default_pass_ks(6) == [1, 2, 4, 6] and default_pass_ks(1) == [1]
    assert set(summarize([[1, 0, 0, 0, 1, 1]])) >= {"pass@1", "pass@2", "pass@4", "pass@6"}
    # k=8 with samples 2, 3 and 6 saved, at most 3 per request: consecutive runs, none longer than 3.
    assert request_chunks([0, 1, 4, 5, 7], 3) == [(0, 2), (4, 2), (7, 1)]
    assert request_chunks(list(range(8)), 3) == [(0, 3), (3, 3), (6, 2)]
    assert request_chunks([], 3) == []


def test_multiple_choice_benchmarks_from_local_files(tmp_path):
    gpqa_rows = [{"Question": f"Which is right {i}?", "Correct Answer": f"right {i}",
                  "Incorrect Answer 1": f"wrong a{i}", "Incorrect Answer 2": f"wrong b{i}",
                  "Incorrect Answer 3": f"wrong c{i}"} for i in range(12)]
    gpqa = _jsonl(tmp_path / "gpqa.jsonl", gpqa_rows)
    bench, problems = load_benchmark(f"gpqa_diamond={gpqa}")
    assert bench.multiple_choice and len(problems) == 12
    for p, row in zip(problems, gpqa_rows):
        assert sorted(p.choices) == sorted(row[f] for f in ("Correct Answer", "Incorrect Answer 1",
                                                             "Incorrect Answer 2", "Incorrect Answer 3"))
        assert p.choices["ABCD".index(p.answer)] == row["Correct Answer"]
        assert "A) " in p.text and "D) " in p.text and p.text.startswith(row["Question"])
    assert len({p.answer for p in problems}) > 1  # shuffled: the correct answer is not always A
    # Fixed: the order depends on the question only, not on the file's order or on the run.
    again = load_benchmark(f"gpqa_diamond={_jsonl(tmp_path / 'rev.jsonl', gpqa_rows[::-1])}")[1][::-1]
    assert [(p.choices, p.answer) for p in again] == [(p.choices, p.answer) for p in problems]

    mmlu = _jsonl(tmp_path / "mmlu.jsonl", [{"question": "2+2?", "options": ["3", "4", "5", "6", "7"], "answer": "B"}])
    (p,) = load_benchmark(f"mmlu_pro={mmlu}")[1]
    assert (p.choices, p.answer) == (("3", "4", "5", "6", "7"), "B")  # MMLU-Pro keeps its order
    assert "E) 7" in p.text

    bad = _jsonl(tmp_path / "bad.jsonl", [{"question": "q", "options": ["1", "2"], "answer": "C"}])
    with pytest.raises(ConfigError, match=r"mmlu_pro .* row 1: field 'answer' is 'C', expected one of the letters AB"):
        load_benchmark(f"mmlu_pro={bad}")
    missing = _jsonl(tmp_path / "missing.jsonl", [{k: v for k, v in gpqa_rows[0].items() if k != "Incorrect Answer 2"}])
    with pytest.raises(ConfigError, match=r"row 1: no field 'Incorrect Answer 2'"):
        load_benchmark(f"gpqa_diamond={missing}")


def test_sample_store_resumes_repairs_a_cut_line_and_refuses_other_settings(tmp_path):
    from igrpo_megatron.eval.samples import SampleStore

    settings = {"model": "m", "max_tokens": 12, "samples": 2}
    store = SampleStore(str(tmp_path), "math500", settings)
    assert store.open() == {}
    store.append([{"id": "math500:1", "sample": 0, "correct": True}, {"id": "math500:1", "sample": 1, "correct": False}])
    with open(store.path, "a") as f:
        f.write('{"id": "math500:2", "sa')  # a kill in the middle of a write
    saved = SampleStore(str(tmp_path), "math500", dict(settings)).open()
    assert sorted(saved) == [("math500:1", 0), ("math500:1", 1)]
    assert open(store.path).read().endswith("}\n")  # the cut line is gone, appends stay aligned
    with pytest.raises(ConfigError, match=r"other settings \(max_tokens: 12 -> 16\); set another eval.output_dir"):
        SampleStore(str(tmp_path), "math500", {**settings, "max_tokens": 16}).open()
    os.remove(store.settings_path)
    with pytest.raises(ConfigError, match="no math500.settings.json beside it"):
        SampleStore(str(tmp_path), "math500", settings).open()


def test_results_markdown_sets_ours_beside_the_paper():
    from igrpo_megatron.eval.report import PAPER_COLUMNS, paper_row, results_markdown

    assert paper_row("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", None) == "DeepSeek-R1-Distill-Qwen-7B/base"
    assert paper_row("/ckpts/DeepSeek-R1-Distill-Qwen-14B/", None) is None  # Table 1 has no 14B base row
    assert paper_row("runs/x/hf", "Nemotron-H-8B-Base-8K/iGRPO") == "Nemotron-H-8B-Base-8K/iGRPO"
    summary = {"problems": 2, "samples": 4, "avg@4": 0.5, "maj@4": 0.5, "pass@1": 0.5, "pass@2": 0.75,
               "pass@4": 1.0, "truncation_rate": 0.25, "mean_tokens": 100.0}
    results = {"model": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "average": 0.5,
               "protocol": {"temperature": 0.6, "top_p": 0.95, "max_tokens": 65000, "seed": 0},
               "benchmarks": {"math500": summary, "aime24": {**summary, "avg@4": 0.25}},
               "paper_row": "DeepSeek-R1-Distill-Qwen-7B/base"}
    md = results_markdown(results)
    assert "| math500 | 2 | 4 | 50.00 | 50.00 | 50.00 | 75.00 | 100.00 | 25.0 % | 100 |" in md
    paper = md.split("## Against the paper")[1].splitlines()
    assert paper[2] == "| | " + " | ".join(PAPER_COLUMNS) + " | Avg |"
    assert paper[4] == "| paper base | 38.60 | 54.40 | 92.80 | 90.00 | 92.00 | 39.10 | 61.93 |"
    assert paper[5] == "| ours | – | 25.00 | 50.00 | – | – | – | – |"
    assert paper[6] == "| ours - paper | – | -29.40 | -42.80 | – | – | – | – |"
    assert "Against the paper" not in results_markdown({**results, "paper_row": None})
    with pytest.raises(ConfigError, match="eval.paper_row='Qwen/base' is not a Table 1 row"):
        EvalConfig(paper_row="Qwen/base").validate()
