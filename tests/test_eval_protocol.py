"""igrpo-eval against one real vLLM (CPU) server: scores equal to a hand count of the saved samples,
a killed run resumed sample by sample, refused setting changes, greedy equality with transformers
and the one-line errors.

The server serves a tiny model taught to answer "\\boxed{5}", "\\boxed{7}", "\\boxed{B}" or
"\\boxed{C}" at set rates (eval_fixtures.py), so samples are a mix of right, wrong and unanswered.
It is served from ``igrpo-convert from-hf`` then ``to-hf`` in small shards: vLLM loading a
converted, sharded folder is checked too.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from eval_fixtures import make_answering_model, transformers_greedy, write_jsonl as _jsonl
from rollout_fixtures import start_test_server
from torchrun_util import run_cli

pytest.importorskip("vllm")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
MAX_MODEL_LEN = 512


def _convert(*args):
    run_cli("igrpo_megatron.cli.convert", *args, timeout=300)


@pytest.fixture(scope="module")
def served(tiny_qwen2, tmp_path_factory):
    """(server handle, the HF folder it serves, the Megatron checkpoint that folder came from)."""
    from transformers import AutoTokenizer

    from igrpo_megatron.config import DataConfig, EvalConfig
    from igrpo_megatron.data.chat import format_prompt
    from igrpo_megatron.eval.runner import prompt_messages

    root = tmp_path_factory.mktemp("eval_protocol")
    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    e = EvalConfig(system_prompt="none")
    prompts = [format_prompt(tok, prompt_messages(f"What is {i} + {i + 3}?", e, DataConfig())) for i in range(4)]
    trained = make_answering_model(tiny_qwen2, str(root / "trained"), prompts)
    ckpt, hf = root / "ckpt", root / "hf"
    _convert("from-hf", "--hf", trained, "--out", str(ckpt))
    _convert("to-hf", "--ckpt", str(ckpt), "--out", str(hf), "--max-shard-size", "200KB")
    assert len(list(hf.glob("*.safetensors"))) > 1
    # 900 s: on 2 shared cores under load a server has taken over 300 s to come up.
    handle = start_test_server(str(hf), str(root / "server"), max_model_len=MAX_MODEL_LEN, startup_timeout_s=900.0)
    yield handle, str(hf), str(ckpt)
    handle.stop()


def _benchmarks(tmp_path, math_golds=("5", "7", "9"), gpqa=2):
    math = _jsonl(tmp_path / "math.jsonl", [{"problem": f"What is {i} + {g}?", "answer": g}
                                            for i, g in enumerate(math_golds)])
    rows = [{"Question": f"Which is right, {i}?", "Correct Answer": f"right {i}", "Incorrect Answer 1": f"no {i}",
             "Incorrect Answer 2": f"nope {i}", "Incorrect Answer 3": f"never {i}"} for i in range(gpqa)]
    return [f"math500={math}"] + ([f"gpqa_diamond={_jsonl(tmp_path / 'gpqa.jsonl', rows)}"] if gpqa else [])


def _config(tmp_path, served, benchmarks, urls=None, concurrency=64, name="eval.yaml", **eval_fields):
    handle, hf, _ = served
    cfg = {"model": {"hf_path": hf}, "reward": {"num_workers": 1},
           "rollout": {"server_urls": urls or [handle.url], "api_key": handle.api_key, "concurrency": concurrency},
           "eval": {"benchmarks": benchmarks, "samples": 6, "max_tokens": 16, "temperature": 1.0,
                    "system_prompt": "none", "seed": 3, "output_dir": str(tmp_path / "out"), **eval_fields}}
    path = tmp_path / name
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return str(path)


def _eval(cfg, *args, expect=0):
    proc = subprocess.run([sys.executable, "-m", "igrpo_megatron.cli.eval", "--config", cfg, *args],
                          capture_output=True, text=True, timeout=600, env=ENV, cwd=REPO)
    assert proc.returncode == expect, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _records(out, name):
    return [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]


def _one_line_error(proc, *fragments):
    """The CLI's answer to a user error: exit 2, one line naming the problem, no traceback."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("igrpo-eval: config error:")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for f in fragments:
        assert f in errors[0], errors[0]
    return errors[0]


def _hand_boxed(text):
    boxes = re.findall(r"\\boxed\{([^{}]*)\}", text)
    return boxes[-1].strip() if boxes and boxes[-1].strip() else None


def test_scores_equal_a_hand_count_of_the_saved_samples(served, tmp_path):
    """avg@k, pass@k (by enumerating k-subsets) and maj@k (by counting votes) from the JSONL alone;
    requests of at most 4 samples, spread over both addresses given."""
    handle = served[0]
    port = handle.url.rsplit(":", 1)[1]
    urls = [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]
    cfg = _config(tmp_path, served, _benchmarks(tmp_path), urls=urls, samples_per_request=4)
    proc = _eval(cfg)
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    for name, n_problems in (("math500", 3), ("gpqa_diamond", 2)):
        records = _records(out, name)
        assert [(r["id"], r["sample"]) for r in records] == [(f"{name}:{i}", j) for i in range(1, n_problems + 1)
                                                                for j in range(6)]
        assert [r["seed"] for r in records] == [3 + i * 65536 + j for i in range(n_problems) for j in range(6)]
        assert {r["server"] for r in records} == set(urls)
        rows = [records[i:i + 6] for i in range(0, len(records), 6)]
        answers = [[_hand_boxed(r["completion"]) for r in row] for row in rows]
        if name == "gpqa_diamond":  # a boxed letter is the answer; anything else in the box is none
            answers = [[a if a in ("A", "B", "C", "D") else None for a in row] for row in answers]
        correct = [[a == r["gold"] for a, r in zip(ans, row)] for ans, row in zip(answers, rows)]
        assert [[r["correct"] for r in row] for row in rows] == correct
        assert [[r["answer"] for r in row] for row in rows] == answers
        s = results["benchmarks"][name]
        assert s["avg@6"] == pytest.approx(sum(sum(c) / 6 for c in correct) / n_problems)
        for k in (1, 2, 4, 6):
            subsets = [sum(any(sub) for sub in itertools.combinations(c, k)) / len(list(itertools.combinations(c, k)))
                       for c in correct]
            assert s[f"pass@{k}"] == pytest.approx(sum(subsets) / n_problems), k
        maj = 0
        for ans, c in zip(answers, correct):
            votes = Counter(a for a in ans if a is not None)
            if votes:
                top = max(votes.values())
                maj += c[next(j for j, a in enumerate(ans) if votes.get(a) == top)]
        assert s["maj@6"] == pytest.approx(maj / n_problems)
        assert s["truncation_rate"] == sum(r["finish_reason"] == "length" for r in records) / len(records)
        assert s["mean_tokens"] == pytest.approx(sum(r["completion_tokens"] for r in records) / len(records))
        assert (s["reused"], s["generated"]) == (0, 6 * n_problems)
    math = results["benchmarks"]["math500"]
    assert 0 < math["avg@6"] < 1 and math["pass@6"] > math["pass@1"]  # the samples are a real mix
    md = (out / "results.md").read_text()
    assert f"| math500 | 3 | 6 | {100 * math['avg@6']:.2f} | {100 * math['maj@6']:.2f} |" in md
    assert proc.stdout.strip().splitlines()[-1] == f"average: {results['average']:.4f}"
    bar = [line for line in re.split(r"[\r\n]", proc.stderr) if line.startswith("math500: 100%")]
    assert bar and "18/18" in bar[-1] and "problems 3/3" in bar[-1] and "tok/s" in bar[-1]  # the progress bar


def test_a_killed_evaluation_resumes_with_only_the_missing_samples(served, tmp_path):
    golds = [str(5 + 2 * (i % 2)) for i in range(12)]
    benches = _benchmarks(tmp_path, math_golds=golds, gpqa=0)
    total = 12 * 8
    # One request at a time, two samples each: 48 requests, so the kill lands part-way.
    cfg = _config(tmp_path, served, benches, concurrency=1, samples=8, samples_per_request=2)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "igrpo_megatron.cli.eval", "--config", cfg], env=ENV, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    jsonl = out / "math500.jsonl"
    deadline = time.monotonic() + 300
    while not (jsonl.exists() and jsonl.read_bytes().count(b"\n") >= 6):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its scoring workers; the server is not theirs
    proc.wait()
    before = jsonl.read_bytes().decode(errors="replace")
    kept = before.split("\n")[:-1]  # the complete lines; a cut last one is dropped
    assert 6 <= len(kept) < total

    _eval(cfg)
    resumed = json.loads((out / "results.json").read_text())["benchmarks"]["math500"]
    assert (resumed["reused"], resumed["generated"]) == (len(kept), total - len(kept))
    after = jsonl.read_text().splitlines()
    assert len(after) == total and set(kept) <= set(after)  # saved samples kept as they were

    # The same settings uninterrupted, all requests at once: the same samples, the same scores.
    fresh_cfg = _config(tmp_path, served, benches, samples=8, samples_per_request=8, name="fresh.yaml",
                        output_dir=str(tmp_path / "fresh"))
    _eval(fresh_cfg)
    fresh = json.loads((tmp_path / "fresh" / "results.json").read_text())["benchmarks"]["math500"]
    assert [r["completion"] for r in _records(tmp_path / "fresh", "math500")] == \
        [r["completion"] for r in _records(out, "math500")]
    for key in ("avg@8", "maj@8", "pass@1", "pass@2", "pass@4", "pass@8", "truncated"):
        assert resumed[key] == fresh[key], key
    assert (fresh["reused"], fresh["generated"]) == (0, total)

    # A rerun with everything saved generates nothing; a changed max_tokens is refused.
    _eval(cfg)
    again = json.loads((out / "results.json").read_text())["benchmarks"]["math500"]
    assert (again["reused"], again["generated"], again["avg@8"]) == (total, 0, resumed["avg@8"])
    err = _one_line_error(_eval(cfg, "eval.max_tokens=20", expect=2), "max_tokens: 16 -> 20", str(jsonl))
    assert "eval.output_dir" in err
    assert jsonl.read_text().splitlines() == after  # nothing mixed in


def test_a_server_too_short_for_eval_max_tokens_is_refused(served, tmp_path):
    cfg = _config(tmp_path, served, _benchmarks(tmp_path, gpqa=0), max_tokens=MAX_MODEL_LEN)
    _one_line_error(_eval(cfg, expect=2), f"serves max_model_len={MAX_MODEL_LEN}", "eval.max_tokens")


def test_greedy_k1_correctness_equals_transformers_generate(served, tmp_path):
    """Greedy, one sample: igrpo-eval's per-problem verdicts are those of transformers' generate
    of the same prompts, scored by the same math-verify reward and letter reader."""
    _, hf, _ = served
    benches = _benchmarks(tmp_path, math_golds=("5", "7", "9", "5"), gpqa=3)
    cfg = _config(tmp_path, served, benches, samples=1, temperature=0.0, max_tokens=12)
    _eval(cfg)
    records = _records(tmp_path / "out", "math500") + _records(tmp_path / "out", "gpqa_diamond")
    greedy = transformers_greedy(hf, cfg, 12)
    assert len(records) == len(greedy) == 7
    for rec, g in zip(records, greedy):
        assert (rec["completion"], rec["correct"]) == (g.text, g.correct), rec["id"]
    verdicts = [g.correct for g in greedy]
    assert True in verdicts and False in verdicts


def test_user_errors_are_one_line(served, tmp_path):
    _, _, ckpt = served
    benches = _benchmarks(tmp_path, gpqa=0)
    _one_line_error(_eval(_config(tmp_path, served, ["aime26"]), expect=2), "unknown benchmark 'aime26'")
    bad = _jsonl(tmp_path / "bad.jsonl", [{"problem": "p", "answer": "1"}, {"question": "q", "answer": "2"}])
    _one_line_error(_eval(_config(tmp_path, served, [f"math500={bad}"]), expect=2), "row 2: no field 'problem'")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(_eval(_config(tmp_path, served, benches), "--model", str(empty), expect=2),
                    "not an HF folder (no config.json) nor a Megatron checkpoint")
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    for path in broken.rglob("*.distcp"):
        path.write_bytes(path.read_bytes()[:64])  # a checkpoint cut short by a full disk
    _one_line_error(_eval(_config(tmp_path, served, benches), "--model", str(broken), expect=2),
                    "cannot convert this Megatron checkpoint to HF")
    assert not list((tmp_path / "out").glob(".hf-from-megatron-*"))  # the temporary folder is gone
