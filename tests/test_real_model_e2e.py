"""The real model through the workflow a user walks, one run of each command.

SmolLM2-135M-Instruct (the ``real_model`` fixture) goes ``igrpo-convert from-hf`` at PP=2 ->
``igrpo-train`` from that checkpoint at TP=1 x PP=2 on two ranks (two steps, the vLLM server it
launches) -> ``igrpo-convert to-hf`` of the trained checkpoint -> ``igrpo-eval`` (greedy, k=1, the
server it launches, the run's own config) on a local problem file, whose texts and per-problem
verdicts equal transformers' ``generate`` on the same folder scored by the same reward.

PP=2 is the layout two ranks allow this model besides plain data parallelism: TP must divide its
9 / 3 heads (TP=2 is refused), PP its 30 layers. Training starts from the converted checkpoint
(``model.init_checkpoint``), as a user who ran from-hf does; ``model.hf_path`` still names the HF
folder, whose config and tokenizer the trainer reads and whose weights its server starts from
before the first refit replaces them with the checkpoint's.

The prompt has the model fill in a box it is shown ("Write $\\boxed{9 + 4 = ?}$ ..."). Asked to
"put the final answer in \\boxed{}" it almost never boxes within 24 tokens. Sampled at
temperature 0.7 or 1.0 on this prompt it scored nothing either (measured: iGRPO, 2 drafts + 4
refinements, 4 and 6 groups in two steps, every reward 0: no advantage, no gradient), and a
refinement mostly repeats its draft's verdict. So the steps are GRPO's (``igrpo.num_drafts: 0``,
6 samples) at temperature 0.5, where it boxes part of the sums right; the tiny-model e2e tests
cover the two-stage rollout.
"""
import json
import os

import pytest
import torch
import yaml

from eval_fixtures import transformers_greedy, write_jsonl
from igrpo_megatron.metrics import read_metrics
from igrpo_megatron.models.parallel import free_port
from torchrun_util import REPO, run_cli, run_torchrun
from trainer_fixtures import tiny_run_config

pytest.importorskip("vllm")

TRAIN_CLI = os.path.join(REPO, "igrpo_megatron", "cli", "train.py")
MAX_TOKENS = 24
TEMPLATE = "Write $\\boxed{{{} = ?}}$ with the ? replaced by the number."
TRAIN_SUMS = [(a, b) for a in range(2, 10) for b in range(3, 9, 2)]  # 24 sums, none evaluated
EVAL_PROBLEMS = [("9 + 4", 13), ("6 * 7", 42), ("15 - 8", 7), ("12 + 9", 21), ("7 + 8", 15), ("100 - 37", 63)]


def _tensors(folder: str) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(folder, f)))
    return out


def test_convert_train_convert_back_and_eval_equal_transformers(real_model, tmp_path):
    ckpt, run_dir, trained = tmp_path / "ckpt", tmp_path / "run", tmp_path / "trained_hf"
    run_cli("igrpo_megatron.cli.convert", "from-hf", "--hf", real_model, "--out", str(ckpt), "--pp", "2")

    data = write_jsonl(tmp_path / "sums.jsonl", [{"problem": TEMPLATE.format(f"{a} + {b}"), "answer": str(a + b)}
                                                 for a, b in TRAIN_SUMS])
    cfg = tiny_run_config(
        real_model, str(run_dir), port=free_port(),
        model={"init_checkpoint": str(ckpt)},
        parallel={"tp": 1, "pp": 2},
        optim={"lr": 3e-5},
        igrpo={"num_drafts": 0, "num_refinements": 6, "group_budget": None},
        data={"preset": None, "source": data, "system_prompt": "You are a helpful assistant."},
        rollout={"max_tokens": MAX_TOKENS, "max_prompt_tokens": 400, "max_model_len": 512, "startup_timeout_s": 900,
                 "temperature": 0.5, "seed": 3},
        train={"prompts_per_step": 3, "max_steps": 2, "save_every": 2, "keep_last": 1})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run_torchrun(TRAIN_CLI, 2, ["--config", str(tmp_path / "run.yaml")], timeout=1500)
    records = read_metrics(str(run_dir))
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        # refit after each step: the server serves the step's weights, the samples came from the previous ones
        assert r["weight_version"] == r["server_weight_version"] == r["step"]
        assert r["rollout_weight_version"] == r["step"] - 1 and r["refit_tensors"] > 0
        # Megatron at PP=2 and vLLM score the sampled tokens alike on the real weights (measured: ~4e-6)
        assert r["logprob_mismatch"] < 1e-3, r["logprob_mismatch"]
    assert min(r["zero_var_frac"] for r in records) < 1, "no step had a reward spread: nothing trained"

    run_cli("igrpo_megatron.cli.convert", "to-hf", "--ckpt", str(run_dir / "checkpoints"), "--out", str(trained))
    before, after = _tensors(real_model), _tensors(str(trained))
    assert set(before) == set(after)
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(moved) > len(before) // 2, f"training moved only {len(moved)} of {len(before)} tensors"

    # Each problem twice: with its answer, then with a wrong one (answer + 1). A completion can match
    # at most one of the two, so False is among the verdicts whatever the two steps taught the model
    # (a CI run's trained model got all 6 right); True still needs it to get one right.
    problems = write_jsonl(tmp_path / "eval.jsonl", [{"problem": TEMPLATE.format(q), "answer": str(a + wrong)}
                                                     for wrong in (0, 1) for q, a in EVAL_PROBLEMS])
    out = tmp_path / "eval"
    # the run's own config plus an eval section, as a user evaluates: the training prompt, a server of its own
    eval_cfg = tmp_path / "eval.yaml"
    eval_cfg.write_text(yaml.safe_dump({**cfg, "rollout": {**cfg["rollout"], "port": free_port()}, "eval": {
        "benchmarks": [f"math500={problems}"], "samples": 1, "temperature": 0.0, "max_tokens": MAX_TOKENS,
        "output_dir": str(out)}}))
    run_cli("igrpo_megatron.cli.eval", "--config", str(eval_cfg), "--model", str(trained), timeout=1200)
    served = [json.loads(line) for line in (out / "math500.jsonl").read_text().splitlines()]

    # transformers on the same folder, the same prompt tokens, scored as igrpo-eval scores
    mine = transformers_greedy(str(trained), str(eval_cfg), MAX_TOKENS)
    assert [r["prompt_tokens"] for r in served] == [len(g.prompt_ids) for g in mine]
    assert [(r["completion"], r["correct"]) for r in served] == [(g.text, g.correct) for g in mine]
    verdicts = [g.correct for g in mine]
    assert True in verdicts and False in verdicts, verdicts  # a mix, so unequal verdicts would show

    # Negative control: the untrained weights answer differently on at least one problem, so the
    # equality above holds for the trained weights, not for any copy of the model vLLM might serve.
    original = transformers_greedy(real_model, str(eval_cfg), MAX_TOKENS)
    assert [g.text for g in original] != [g.text for g in mine]
