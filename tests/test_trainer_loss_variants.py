"""Every loss variant through ``igrpo-train``, two steps each, against ONE vLLM server (module-scoped).

Mixed rewards from the tiny random model as in test_trainer_dapo.py: the overlong punishment with
L_max = L_cache = rollout.max_tokens scores a response -|y| / L_max and the rare stop string "x"
ends some responses early, so about a third of the groups have a reward spread. Two mini-batches
per step, so the second trains a policy the first one moved and the ratio leaves 1.
"""
import os

import pytest
import yaml

from igrpo_megatron.metrics import read_metrics
from igrpo_megatron.models.parallel import free_port
from rollout_fixtures import rollout_server  # noqa: F401  (module-scoped fixture)
from torchrun_util import REPO, run_torchrun
from trainer_fixtures import hf_weight_norm, tiny_run_config

TRAIN_CLI = os.path.join(REPO, "igrpo_megatron", "cli", "train.py")
MAX_TOKENS = 12
# The trainer's and vLLM's fp32 logprobs differ by float noise (measured: |diff| ~2e-7, the largest
# weight 1.000001), so a cap of 1 is the one that float noise crosses.
TIS_CAP = 1.0
GSPO_CLIP_HIGH = 4e-4  # GSPO's narrow range: 1 - 3e-4 .. 1 + 4e-4


def _train(tmp_path, model_dir, server, name: str, loss: dict) -> list[dict]:
    cfg = tiny_run_config(
        model_dir, str(tmp_path / name), port=free_port(),
        parallel={"tp": 1},
        igrpo={"num_drafts": 0, "num_refinements": 4, "group_budget": 4},
        # DAPO's refill keeps only groups with a reward spread: without it a step whose first
        # mini-batch drew only zero-variance groups left the policy unmoved (clip_frac 0, seen once)
        loss={"dynamic_sampling": True, **loss},
        reward={"overlong_max_tokens": MAX_TOKENS, "overlong_cache_tokens": MAX_TOKENS},
        data={"synthetic_size": 64},
        rollout={"server_urls": [server.url], "api_key": server.api_key, "refit_transport": "http",
                 "max_tokens": MAX_TOKENS, "stop": ["x"]},
        train={"prompts_per_step": 4, "max_steps": 2, "save_every": 0, "mini_batches": 2})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_torchrun(TRAIN_CLI, 1, ["--config", str(path)], timeout=900)
    records = read_metrics(str(tmp_path / name))
    assert [r["step"] for r in records] == [1, 2]
    assert max(r["reward_std"] for r in records) > 0 and min(r["zero_var_frac"] for r in records) < 1  # mixed
    return records


def test_dapo_rloo_kl_k3_and_tis(tmp_path, tiny_qwen2, rollout_server):
    """One run with DAPO's clip-higher and token mean, RLOO advantages, k3 KL to the reference
    (beta > 0) and TIS: each shows its figure."""
    records = _train(tmp_path, tiny_qwen2, rollout_server, "dapo_rloo_kl_tis",
                     {"advantage": "rloo", "clip_low": 0.2, "clip_high": 0.28, "aggregation": "token_mean",
                      "kl_beta": 0.1, "kl_estimator": "k3", "tis_cap": TIS_CAP})
    for r in records:
        assert r["kl_ref"] > 0  # the policy left the reference (the first mini-batch: exactly 0)
        # some weights exceeded the cap (the uncapped maximum) and were capped (the mean of the used ones)
        assert r["mismatch_ratio_max"] > TIS_CAP and r["tis_weight_mean"] <= TIS_CAP + 1e-6
        assert 0 < r["tis_clip_frac"] < 1 and r["kl"] > 0
    assert records[1]["kl_ref"] > records[0]["kl_ref"]  # the policy keeps moving away from the reference
    # The reference is frozen: its norm is the same to the last bit every step and is the norm of the
    # weights it was loaded from (measured: 2e-8 apart); the policy's, the control, moved every step
    # (measured: 6e-4 and 8e-4 relative).
    start = hf_weight_norm(tiny_qwen2)
    assert records[0]["ref_weight_norm"] == records[1]["ref_weight_norm"] == pytest.approx(start, rel=1e-6)
    assert abs(records[0]["weight_norm"] - start) > 1e-4 * start
    assert abs(records[1]["weight_norm"] - records[0]["weight_norm"]) > 1e-4 * start
    assert max(r["clip_frac_high"] for r in records) > 0  # clip-higher's bound (1.28) was reached


def test_gspo_and_drgrpo(tmp_path, tiny_qwen2, rollout_server):
    """GSPO (sequence-level ratio, its narrow 3e-4 / 4e-4 clip) with Dr.GRPO's advantages and
    constant-normalised token sums: the second mini-batch's sequence ratios leave the narrow range."""
    records = _train(tmp_path, tiny_qwen2, rollout_server, "gspo_drgrpo",
                     {"ratio_level": "sequence", "clip_low": 3e-4, "clip_high": GSPO_CLIP_HIGH, "advantage": "drgrpo",
                      "aggregation": "seq_mean_token_sum_norm", "seq_sum_norm_constant": MAX_TOKENS})
    for r in records:
        assert r["clip_frac"] > 0 and r["kl"] > 0
        # GSPO's sequence ratio: the first mini-batch's is 1 to float noise (~1e-7), so a largest
        # ratio past the upper clip bound is the second's (measured: 1.10 and 1.30; clip_frac_high
        # 0.125 and 0.10, clip_frac_low 0.225 and 0.24; seq_ratio_mean 0.997 and 1.035)
        assert r["seq_ratio_max"] > 1 + GSPO_CLIP_HIGH
        assert 0 < r["seq_ratio_mean"] < r["seq_ratio_max"]
    assert all("ref_weight_norm" not in r for r in records)  # no reference without kl_beta
