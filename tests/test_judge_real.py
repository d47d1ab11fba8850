"""The generative judge with a real model: SmolLM2-135M-Instruct on a vLLM server is the reward of
a two-step iGRPO run of the tiny policy (its own server).

The injection figures are ``benchmarks/judge_injection.py``'s (measured: this judge is too small
to grade, so they are not yet a test; see the README).
"""
import os

import pytest
import yaml

from igrpo_megatron.config import RewardConfig
from igrpo_megatron.metrics import JUDGE_FIELDS, read_metrics
from igrpo_megatron.models.parallel import free_port
from rollout_fixtures import start_test_server
from torchrun_util import REPO, run_torchrun
from trainer_fixtures import tiny_run_config

KEY_ENV = RewardConfig().judge_api_key_env


@pytest.fixture(scope="module")
def judge_server(real_model, tmp_path_factory):
    handle = start_test_server(real_model, str(tmp_path_factory.mktemp("judge_server")), startup_timeout_s=600.0)
    yield handle
    handle.stop()


def test_two_steps_with_the_judge_as_reward(judge_server, tiny_qwen2, tmp_path):
    prompts = 2
    cfg = tiny_run_config(
        tiny_qwen2, str(tmp_path / "run"), port=free_port(),
        reward={"kind": "judge", "judge_url": judge_server.url, "judge_model": "policy", "judge_max_tokens": 8},
        data={"synthetic_size": 16}, rollout={"max_tokens": 12, "startup_timeout_s": 400},
        train={"prompts_per_step": prompts, "max_steps": 2, "save_every": 0})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = run_torchrun(os.path.join(REPO, "igrpo_megatron", "cli", "train.py"), 2, ["--config", str(path)],
                       timeout=900, env={KEY_ENV: judge_server.api_key})
    records = read_metrics(str(tmp_path / "run"))
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        # every draft and refinement (2 + 2 per prompt) went to the judge, and its figures are the step's own
        assert r["reward_items"] == r["step"] * prompts * 4 and r["reward_request_failures"] == 0
        assert all(k in r for k in JUDGE_FIELDS)
        # the reply constrained to the grade line (reward.judge_reply_regex, the default) always parses;
        # without it 50 of 50 of this judge's replies held no grade
        assert r["judge_grades_per_s"] > 0 and r["judge_unparseable_frac"] == 0 and r["reward_errors"] == 0
        # the judge's grades ranked the drafts: the chosen one is graded at least as well as the mean draft
        assert r["best_draft_acc"] >= r["draft_acc"]
    assert out.count("grades/s unparseable") == 2
