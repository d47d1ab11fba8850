"""DAPO through ``igrpo-train``: dynamic sampling refills the batch when most groups are zero-variance.

The tiny random model's rewards are made mixed without training it: the overlong punishment with
L_max = L_cache = rollout.max_tokens scores a response -|y| / L_max, and the stop string "x" (4 of
the 320 tokens hold it, plus end-of-text: ~1.6 % per token) ends a response early now and then.
A pair of 12-token responses both runs to the cap about (1 - 0.016)^24 ~ 68 % of the time, so most
groups have equal rewards and are dropped.
"""
import os

import yaml

from igrpo_megatron.metrics import STEP_FIELDS, read_metrics
from igrpo_megatron.models.parallel import free_port
from torchrun_util import REPO, run_torchrun
from trainer_fixtures import tiny_run_config

TRAIN_CLI = os.path.join(REPO, "igrpo_megatron", "cli", "train.py")
PROMPTS_PER_STEP = 4
MAX_TOKENS = 12


def test_dynamic_sampling_trains_on_the_full_number_of_groups(tmp_path, tiny_qwen2):
    cfg = tiny_run_config(
        tiny_qwen2, str(tmp_path / "run"), port=free_port(),
        parallel={"tp": 1},
        igrpo={"num_drafts": 0, "num_refinements": 2, "group_budget": 2},
        loss={"clip_high": 0.28, "aggregation": "token_mean", "dynamic_sampling": True,
              "dynamic_sampling_max_refills": 8},
        reward={"overlong_max_tokens": MAX_TOKENS, "overlong_cache_tokens": MAX_TOKENS},
        data={"synthetic_size": 256},
        rollout={"max_tokens": MAX_TOKENS, "stop": ["x"], "startup_timeout_s": 400},
        train={"prompts_per_step": PROMPTS_PER_STEP, "max_steps": 2, "save_every": 0})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = run_torchrun(TRAIN_CLI, 1, ["--config", str(path)], timeout=900)
    records = read_metrics(str(tmp_path / "run"))
    assert [r["step"] for r in records] == [1, 2]
    consumed = 0
    for r in records:
        assert not [k for k in STEP_FIELDS if k not in r]
        sampled = r["groups_kept"] + r["groups_dropped"] + r["groups_surplus"]
        # most groups were zero-variance, and the step still trained on the full batch
        assert r["groups_kept"] == PROMPTS_PER_STEP and r["groups_dropped"] > r["groups_kept"], r
        assert r["refill_rounds"] >= 1 and r["refill_exhausted"] == 0
        assert r["zero_var_frac"] == r["groups_dropped"] / sampled
        assert r["num_samples"] == 2 * sampled  # the metrics cover every group sampled
        # every prompt a refill drew is consumed: the data position counts them all
        consumed += sampled
        assert r["prompts_consumed"] == consumed
        assert -1 <= r["reward_mean"] < 0 and r["entropy"] > 0
    assert f"groups {PROMPTS_PER_STEP} kept" in out  # the console line
