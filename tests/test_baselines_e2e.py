"""Table 1's baselines through ``igrpo-train`` for real: one vLLM server (module-scoped) shared by a
Critique-GRPO run and a Self-Verification run, each 2 steps of Megatron (TP=1) with refits over HTTP,
and one step of verifications sampled from a restored buffer."""
import json
import math
import os

import pytest
import yaml

from igrpo_megatron.checkpoint.directory import find_latest
from igrpo_megatron.checkpoint.dist_checkpoint import read_meta
from igrpo_megatron.metrics import read_metrics
from rollout_fixtures import rollout_server  # noqa: F401  (module-scoped fixture)
from torchrun_util import REPO, run_torchrun
from trainer_fixtures import tiny_run_config

TRAIN_CLI = os.path.join(REPO, "igrpo_megatron", "cli", "train.py")
PROMPTS = 2


def train(tmp_path, model_dir, server, name: str, **igrpo) -> str:
    run_dir = str(tmp_path / name)
    cfg = tiny_run_config(
        model_dir, run_dir, port=0, parallel={"tp": 1},
        igrpo={"num_drafts": 0, "num_refinements": 4, "group_budget": 4, **igrpo},
        data={"synthetic_size": 16},
        rollout={"server_urls": [server.url], "api_key": server.api_key, "refit_transport": "http",
                 "max_tokens": 8, "max_model_len": 1024, "max_prompt_tokens": 512},
        train={"prompts_per_step": PROMPTS, "max_steps": 2, "save_every": 2},
        loss={"entropy_coef": 0.01})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_torchrun(TRAIN_CLI, 1, ["--config", str(path)], timeout=900)
    return run_dir


def test_critique_grpo_and_self_verification_train_against_a_real_server(tmp_path, tiny_qwen2, rollout_server):
    run = train(tmp_path, tiny_qwen2, rollout_server, "critique", method="critique_grpo", critique_refinements=1)
    records = read_metrics(run)
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        # 3 initial + 1 refinement per prompt, all scored by the reward pool, one group of 4
        assert r["num_samples"] == PROMPTS * 4 and r["reward_items"] == r["step"] * PROMPTS * 4
        assert 0 < r["shaped_frac"] < 1  # the refinement rows' tokens, shaped under the question
        # the initial rows were sampled from the trained policy; the refinement rows (another
        # context) are left out of the mismatch, which otherwise would be far from 0
        assert r["logprob_mismatch"] < 1e-3, r["logprob_mismatch"]
        assert r["weight_version"] == r["server_weight_version"] == r["step"]
    rows = [json.loads(line) for line in open(os.path.join(run, "rollouts.jsonl"))]
    assert all(len(row["refinements"]) == 4 for row in rows)

    run = train(tmp_path, tiny_qwen2, rollout_server, "selfverify", method="self_verification",
                verify_refresh_every=1, verify_prompts_per_step=2)
    records = read_metrics(run)
    assert [r["step"] for r in records] == [1, 2]
    state = read_meta(find_latest(os.path.join(run, "checkpoints")))["extra_state"]["method"]
    assert state["steps_seen"] == 2 and state["pending"] == []  # refreshed after each step
    # step 1 starts with an empty buffer (problems only); step 2 draws up to 2 buffered solutions,
    # 4 verifications each; the buffer holds solutions of mixed 0/1 groups only
    assert records[0]["num_samples"] == PROMPTS * 4
    assert records[1]["num_samples"] in {PROMPTS * 4 + 4 * k for k in range(3)}
    assert all(0 < e["p"] < 1 and isinstance(e["label"], bool) for e in state["buffer"])
    for r in records:  # verify_acc in every record: NaN in a step without verifications, else a share
        assert math.isnan(r["verify_acc"]) if r["num_samples"] == PROMPTS * 4 else 0 <= r["verify_acc"] <= 1


def test_verification_prompts_from_the_buffer_against_the_real_server(tiny_qwen2, rollout_server):
    """The random tiny model never solves a problem, so the run above never buffers a solution; here
    the buffer is set as a checkpoint would restore it and one step's verifications are sampled."""
    import asyncio

    from transformers import AutoTokenizer

    from igrpo_megatron.algorithms.baselines import VERIFY_INSTRUCTION, parse_verdict
    from igrpo_megatron.config import Config, IGRPOConfig
    from igrpo_megatron.rollout import RolloutClient, SamplingParams
    from igrpo_megatron.rollout.self_verification import VERIFY_ID, SelfVerificationRollout

    cfg = Config(igrpo=IGRPOConfig(method="self_verification", num_drafts=0, num_refinements=4,
                                   verify_prompts_per_step=2))
    client = RolloutClient([rollout_server.url], rollout_server.api_key)
    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    sv = SelfVerificationRollout(cfg, client, SamplingParams(max_tokens=8), None, tok, total_steps=4)
    buffer = [{"id": f"s{i}", "question": f"What is {i} + 1?", "solution": f"<answer>{i + 1}</answer>",
               "label": i % 2 == 0, "p": 0.25} for i in range(3)]
    sv.load_state_dict({"steps_seen": 1, "buffer": buffer, "pending": []})

    async def step():
        try:
            return await sv.run([])
        finally:
            await client.aclose()

    groups = asyncio.run(step())
    assert len(groups) == 2 and all(g.id.startswith(VERIFY_ID) and len(g.response_ids) == 4 for g in groups)
    for g in groups:
        assert VERIFY_INSTRUCTION in tok.decode(g.prompt_ids)  # the three turns, the instruction last
        assert set(g.rewards) <= {0.0, 1.5, 0.5}  # a random model rarely writes a verdict: mostly 0
    # verify_acc: the right verdicts, here exactly the verifications with a reward (p = 0.25 > 0)
    rewards = [x for g in groups for x in g.rewards]
    assert sv.record(groups)["verify_acc"] == sum(x > 0 for x in rewards) / len(rewards) == sum(
        parse_verdict(tok.decode(ids, skip_special_tokens=True)) == (g.answer == "Yes")
        for g in groups for ids in g.response_ids) / len(rewards)
