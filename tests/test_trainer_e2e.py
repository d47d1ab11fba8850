"""The whole loop for real: ``igrpo-train`` under torchrun (Megatron TP=2 on gloo) with the vLLM
server it launches, the reward pool, the refit after every step, checkpoints and a resume.

One model, two launches: 2 steps at TP=2 with a checkpoint after each, then a resume to step 3 at
TP=1 x DP=2 with the HTTP refit transport.
"""
import json
import os

import pytest
import yaml

from igrpo_megatron.metrics import STEP_FIELDS, read_metrics
from igrpo_megatron.models.parallel import free_port
from torchrun_util import REPO, run_torchrun
from trainer_fixtures import tiny_run_config

TRAIN_CLI = os.path.join(REPO, "igrpo_megatron", "cli", "train.py")
PROMPTS_PER_STEP = 4


def _config(tmp_path, model_dir) -> str:
    cfg = tiny_run_config(
        model_dir, str(tmp_path / "run"), port=free_port(),
        data={"synthetic_size": 64}, rollout={"max_tokens": 12, "startup_timeout_s": 400, "temperature": 0.7},
        train={"prompts_per_step": PROMPTS_PER_STEP, "max_steps": 3, "save_every": 1, "keep_last": 2,
               "mini_batches": 2},
        # A random model earns no reward, so every advantage is 0; the entropy bonus still moves
        # the weights, so each refit must deliver weights that really changed.
        loss={"entropy_coef": 0.01})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def assert_training_figures(r: dict) -> None:
    """The loss's figures are real: vLLM sampled from exactly the policy whose old logprobs the step
    computed (same weights after every refit, same temperature 0.7), so the two agree to float noise;
    the second of two mini-batches trains a policy the first one moved, so its KL to the old is > 0."""
    assert r["entropy"] > 0 and 0 <= r["clip_frac"] <= 1
    assert r["logprob_mismatch"] < 1e-3, r["logprob_mismatch"]
    assert r["kl"] > 0


def test_train_refit_checkpoint_resume(tmp_path, tiny_qwen2):
    config = _config(tmp_path, tiny_qwen2)
    run_dir = tmp_path / "run"
    run_torchrun(TRAIN_CLI, 2, ["--config", config, "train.max_steps=2"], timeout=900)
    first = read_metrics(str(run_dir))
    assert [r["step"] for r in first] == [1, 2]
    for r in first:
        missing = [k for k in STEP_FIELDS if k not in r]
        assert not missing, f"step {r['step']} lacks {missing}"
        # The server serves the new weights after each step; the samples came from the previous ones.
        assert r["weight_version"] == r["server_weight_version"] == r["step"]
        assert r["rollout_weight_version"] == r["step"] - 1
        assert r["prompts_consumed"] == r["step"] * PROMPTS_PER_STEP
        assert r["num_samples"] == PROMPTS_PER_STEP * 2
        # 1 - (1 - p)^N over this step's drafts (N = 2, p = their accuracy), and the phases are disjoint
        # intervals of the step, each measured.
        assert r["best_draft_acc_bound"] == pytest.approx(1 - (1 - r["draft_acc"]) ** 2)
        phases = [r[f"time_{phase}_s"] for phase in ("rollout", "logprobs", "train", "refit")]
        assert min(phases) > 0 and r["time_step_s"] >= sum(phases) - 1e-6, (phases, r["time_step_s"])
        assert r["tokens_per_s"] > 0
        assert_training_figures(r)
        # the Refitter's own figures reach the record: the weights went over, inside the refit's time
        assert r["refit_tensors"] > 0 and r["refit_mb"] > 0
        assert r["refit_pause_s"] + r["refit_load_s"] <= r["time_refit_s"]
        # every sample of the step (drafts and refinements) went through the reward pool
        assert r["reward_items"] == r["step"] * PROMPTS_PER_STEP * 4 and r["reward_timeouts"] == 0
    ckpts = sorted(os.listdir(run_dir / "checkpoints"))
    assert "iter_0000002" in ckpts and "iter_0000001" in ckpts, ckpts

    # max_steps=3: resumes at 2, in another layout (TP=1 x DP=2: the checkpoint reshards and the
    # batch is split across data-parallel ranks) and with the weights sent over HTTP this time.
    out = run_torchrun(TRAIN_CLI, 2, ["--config", config, "parallel.tp=1", "rollout.refit_transport=http"],
                       timeout=900)
    assert "at step 2" in out
    records = read_metrics(str(run_dir))
    assert [r["step"] for r in records] == [1, 2, 3]
    last = records[-1]
    assert last["prompts_consumed"] == 3 * PROMPTS_PER_STEP  # the data position came back
    assert last["weight_version"] == last["server_weight_version"] == 3 and last["rollout_weight_version"] == 2
    assert_training_figures(last)
    ckpts = sorted(n for n in os.listdir(run_dir / "checkpoints") if n.startswith("iter_"))
    assert ckpts == ["iter_0000002", "iter_0000003"]  # keep_last=2
    with open(run_dir / "metrics.jsonl") as f:
        assert len([json.loads(line) for line in f]) == 3
