"""The update moves the policy the way its advantages say, through the real ``igrpo-train``.

One GRPO step (8 samples for each of 4 prompts) runs for real: torchrun, Megatron, a vLLM server,
the reward pool, the refit, a checkpoint. Afterwards the advantage-weighted change of the step's
sequences' logprobs,

    S = sum_i A_i (logp_new_i - logp_old_i),   logp_i = the mean of sequence i's token logprobs

(the per-sequence token mean the loss aggregates with, so that to first order -S / N is the loss's
change), must be positive: Adam's first step, m / sqrt(v) = g / |g| per parameter, has a positive
inner product with the gradient it follows. The negative control is the same run with the
advantages negated through the advantage registry (tests/dist/pg_sign.py); S measured with the true
advantages must then be negative. A wrong-sign advantage or loss, an update that descends the
wrong way, or rewards attached to the wrong rows all fail it. Logprobs are the project's own
Megatron forward on the sampled token ids (``train.samples_token_ids``) under the weights that
sampled them (``model.hf_path``) and the run's step-1 checkpoint.

The model is the tiny random Qwen2, not the real one: SmolLM2-135M-Instruct rambles past any
affordable token budget without closing ``\\boxed{}``, so its groups had no reward spread at all
(an earlier attempt), while the tiny model's rewards are mixed by construction and cost seconds.
DAPO's overlong punishment with L_max = L_cache = max_tokens scores a response -|y| / L_max, and
the stop string "t" (14 of the 320 tokens hold it, plus end-of-text: ~5 % per token) ends
responses at random lengths, so a group of 8 responses of up to 16 tokens has equal rewards only
if all 8 run to the cap, (0.95^16)^8 ~ 0.2 %.

The learning rate is the paper's, 1e-6: measured S = 1.9e-2 there and 1.8 at 1e-4, linear in the
step, so the first-order argument holds with room to spare.

Both runs share one vLLM server (its start is most of the test's time; each run refits it to the
starting weights first), so they draw different sequences: each run's S is taken over its own.
Drawing the same ones would need a fresh server per run (twice the time) and no stop string: vLLM
ends a request at a stop string asynchronously, so the batch, and with it the server-wide random
stream, depends on timing (measured with two fresh servers of the same seed: 1 of 4 groups
differed); with end-of-text alone ending responses (1 token in 320) a third as many groups are mixed.
"""
import json
import os
from pathlib import Path

import torch
import yaml

from igrpo_megatron.algorithms.advantages import compute_advantages
from igrpo_megatron.metrics import read_metrics
from igrpo_megatron.rollout.auth import API_KEY_ENV
from igrpo_megatron.rollout.samples import read_samples
from rollout_fixtures import rollout_server  # noqa: F401  (module-scoped fixture)
from torchrun_util import REPO, run_torchrun
from trainer_fixtures import tiny_run_config

WORKER = os.path.join(REPO, "tests", "dist", "pg_sign.py")
PROMPTS, GROUP, MAX_TOKENS = 4, 8, 16


def _config(tmp_path, model_dir, server_url: str, name: str) -> str:
    cfg = tiny_run_config(
        model_dir, str(tmp_path / name), port=0,
        parallel={"tp": 1},
        optim={"lr": 1e-6},  # the paper's
        igrpo={"num_drafts": 0, "num_refinements": GROUP, "group_budget": None},
        reward={"overlong_max_tokens": MAX_TOKENS, "overlong_cache_tokens": MAX_TOKENS},
        data={"synthetic_size": 64},
        rollout={"server_urls": [server_url], "refit_dir": str(tmp_path / "refit"), "max_tokens": MAX_TOKENS,
                 "stop": ["t"]},
        train={"prompts_per_step": PROMPTS, "max_steps": 1, "save_every": 1, "micro_batch_size": 8,
               "samples_token_ids": True})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _signal(run_dir: Path, scores: dict, estimator: str, sign: int) -> tuple[float, int]:
    """S of the run with the TRUE (GRPO) advantages, and how many of its groups had a reward spread;
    checks that the run trained with ``estimator``, that its samples came from the starting weights,
    and that those advantages, times the run's ``sign``, are the ones its trainer used."""
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["loss"]["advantage"] == estimator
    records = read_samples(str(run_dir), step=1)
    assert {rec["weight_version"] for rec in records} == {0}  # sampled by the starting weights
    rewards = torch.tensor([[s["reward"] for s in rec["refinements"]] for rec in records])
    advantages = compute_advantages(rewards, "grpo")
    mixed = int((rewards.amax(1) > rewards.amin(1)).sum())
    record = read_metrics(str(run_dir))[0]
    assert record["num_samples"] == PROMPTS * GROUP and record["zero_var_frac"] == 1 - mixed / PROMPTS
    assert abs(record["advantage_abs_mean"] - float((sign * advantages).abs().mean())) < 1e-6
    delta = torch.tensor(scores["after"]) - torch.tensor(scores["before"])
    return float((advantages.flatten() * delta).sum()), mixed


def test_the_update_follows_the_advantages_and_a_flipped_sign_reverses_it(tmp_path, tiny_qwen2, rollout_server):
    out = tmp_path / "logprobs.json"
    configs = [_config(tmp_path, tiny_qwen2, rollout_server.url, name) for name in ("ascent", "flipped")]
    run_torchrun(WORKER, 1, [*configs, str(out)], timeout=900, env={API_KEY_ENV: rollout_server.api_key})
    scores = json.loads(out.read_text())
    s_ascent, mixed = _signal(tmp_path / "ascent", scores["ascent"], "grpo", 1)
    s_flipped, mixed_flipped = _signal(tmp_path / "flipped", scores["flipped"], "negated_grpo", -1)
    print(f"PG sign: S = {s_ascent:.4e} ({mixed} of {PROMPTS} groups mixed), "
          f"flipped S = {s_flipped:.4e} ({mixed_flipped} of {PROMPTS})")
    assert min(mixed, mixed_flipped) >= PROMPTS // 2, "too few groups with a reward spread: nothing to measure"
    assert s_ascent > 0, s_ascent
    assert s_flipped < 0, s_flipped
