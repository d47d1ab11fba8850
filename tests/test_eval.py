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

from igrpo_megatron.config import ConfigError, EvalConfig, RewardConfig, load_config
from igrpo_megatron.data import DataError
from igrpo_megatron.eval import BENCHMARKS, load_benchmark, pass_at_k, summarize
from igrpo_megatron.eval.runner import score_completions, summarize_records
from igrpo_megatron.models.parallel import free_port
from torchrun_util import REPO



def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


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
    assert set(BENCHMARKS) == {"aime24", "aime25", "math500", "amc23", "gsm8k", "minerva_math"}
    assert {n: b.samples for n, b in BENCHMARKS.items()} == {
        "aime24": 64, "aime25": 64, "math500": 8, "amc23": 8, "gsm8k": 8, "minerva_math": 8}
    e = EvalConfig()
    assert (e.temperature, e.top_p, e.samples, e.benchmarks) == (0.6, 0.95, None, list(BENCHMARKS))


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

    The model served is what a user takes away: the tiny model through ``igrpo-convert from-hf``
    and ``to-hf`` (sharded safetensors + index), so vLLM loading that folder is checked too."""
    pytest.importorskip("vllm")
    from transformers import AutoTokenizer

    from igrpo_megatron.data.chat import format_prompt
    from igrpo_megatron.eval.runner import prompt_messages
    from igrpo_megatron.rewards.math_verify_reward import accuracy

    rows = [{"problem": "What is 2 + 3?", "answer": "5"}, {"problem": "What is 7 - 4?", "answer": "3"}]
    math500 = _jsonl(tmp_path / "math500.jsonl", rows)
    amc = _jsonl(tmp_path / "amc.jsonl", [{"question": r["problem"], "answer": r["answer"]} for r in rows[:1]])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    model = tmp_path / "hf_out"
    for args in (["from-hf", "--hf", tiny_qwen2, "--out", str(tmp_path / "ckpt")],
                 ["to-hf", "--ckpt", str(tmp_path / "ckpt"), "--out", str(model), "--max-shard-size", "200KB"]):
        proc = subprocess.run([sys.executable, "-m", "igrpo_megatron.cli.convert", *args], capture_output=True,
                              text=True, timeout=300, env=env, cwd=REPO)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(list(model.glob("*.safetensors"))) > 1
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
    tok = AutoTokenizer.from_pretrained(str(model))
    e = load_config(str(cfg)).eval
    for r, row in zip(records[::4], rows):  # the prompt is the training system prompt + the problem
        assert r["prompt_tokens"] == len(format_prompt(tok, prompt_messages(row["problem"], e)))
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
