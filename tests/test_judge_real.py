"""A real model behind the project's chat client: SmolLM2-135M-Instruct on one vLLM server is the
judge of a two-step iGRPO run of the tiny policy (its own server), and Critique-GRPO's critic.

The injection figures are ``benchmarks/judge_injection.py``'s (this judge grades every defended
draft 1, so they are a measurement, not a test; see the README).
"""
import asyncio
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


def test_critiques_from_a_critic_endpoint_reach_the_refinement_prompt(judge_server, real_model, monkeypatch):
    """Critique-GRPO with ``critique_source: endpoint``: the real model samples (token ids, as the
    policy) and critiques (chat API, as the critic) on the judge's server; the reply the critic
    gives for the refined response is the critique in the refinement prompt and in the record."""
    from transformers import AutoTokenizer

    from igrpo_megatron.algorithms.baselines import CRITIC_TEMPLATE, pick_to_refine
    from igrpo_megatron.config import load_config
    from igrpo_megatron.data.chat import render
    from igrpo_megatron.rewards import make_reward
    from igrpo_megatron.rollout import RolloutClient, SamplingParams
    from igrpo_megatron.rollout.chat_endpoint import ChatEndpoint
    from igrpo_megatron.rollout.critique import CRITIQUE_TOKENS, CritiqueRollout
    from igrpo_megatron.rollout.two_stage import TokenizedPrompt

    cfg = load_config(overrides=[
        "data.preset=synthetic", "igrpo.method=critique_grpo", "igrpo.num_drafts=0", "igrpo.num_refinements=3",
        "igrpo.group_budget=null", "igrpo.critique_source=endpoint", f"igrpo.critic_url={judge_server.url}",
        "igrpo.critic_model=policy"])
    monkeypatch.setenv(cfg.igrpo.critic_api_key_env, judge_server.api_key)
    tok = AutoTokenizer.from_pretrained(real_model)
    question = "What is 12 + 30?"
    p = TokenizedPrompt(id="q", question=question, answer="42", prompt_ids=tok.encode(
        render(tok, [{"role": "user", "content": question}]), add_special_tokens=False))
    client = RolloutClient([judge_server.url], judge_server.api_key)
    sent = []  # every prompt the policy sampled from
    generate = client.generate

    async def recorded(prompt_ids, n=1, params=None):
        sent.append(list(prompt_ids))
        return await generate(prompt_ids, n=n, params=params)

    client.generate = recorded

    async def step():
        try:
            (g,) = await method.run([p])
            response = g.response_ids[pick_to_refine(g.accuracy[:2], 1)[0]]
            text = CRITIC_TEMPLATE.format(question=question, solution=method.decode(method.strip_eos(response)),
                                          gold="42")
            again = await ChatEndpoint(judge_server.url, "policy", cfg.igrpo.critic_api_key_env, name="critic",
                                       timeout_s=120, max_retries=0).reply(
                None, [{"role": "user", "content": text}], max_tokens=CRITIQUE_TOKENS, temperature=0.0)
            return g, again
        finally:
            await client.aclose()

    with make_reward(cfg.reward, tok) as reward:
        method = CritiqueRollout(cfg, client, SamplingParams(max_tokens=16, seed=0), reward, tok)
        g, again = asyncio.run(step())
    (critique,) = g.critiques
    assert len(critique) > 20 and "The generated solution is" not in critique  # the critic's words, not c_GT
    assert critique == again  # greedy: the critic's reply to the refined response, asked once more
    # two samplings: the initial responses (the question), then the refinement (the critique's prompt)
    assert len(sent) == 2 and sent[0] == p.prompt_ids and f"**Critique**: {critique}\n" in tok.decode(sent[1])
    assert len(g.response_ids) == 3 and g.shaped == [2] and g.prompt_ids == p.prompt_ids
