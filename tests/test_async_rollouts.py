"""One step off-policy rollouts (``rollout.async_steps: 1``, ``rollout.pipeline``).

The unit tests drive :class:`RolloutPipeline` with a generator that records which weight version
it ran on; the end-to-end test trains 3 real steps (vLLM server, Megatron TP=1) one step off and
reads the versions off the records, the samples log and the checkpoint.
"""
import json
import os
import threading

import pytest
import yaml

from igrpo_megatron.config import ConfigError
from igrpo_megatron.metrics import read_metrics
from igrpo_megatron.models.parallel import free_port
from igrpo_megatron.rollout import StaleRolloutError
from igrpo_megatron.rollout.dynamic_sampling import SampledStep
from igrpo_megatron.rollout.pipeline import RolloutPipeline, check_lag
from igrpo_megatron.rollout.two_stage import PromptRollout
from torchrun_util import REPO, run_torchrun
from trainer_fixtures import tiny_run_config

TRAIN_CLI = os.path.join(REPO, "igrpo_megatron", "cli", "train.py")


def _group(pid: str, version: int) -> PromptRollout:
    return PromptRollout(id=pid, question="q", answer="a", prompt_ids=[1, 2], response_ids=[[3, 4], [5]],
                         response_logprobs=[[-0.25, -1.5], [-0.125]], rewards=[1.0, 0.0], accuracy=[1.0, 0.0],
                         truncated=[False, True], weight_version=version)


class _Client:
    def __init__(self, stale_policy: str):
        self.stale_policy, self.stale_samples = stale_policy, 0


def test_check_lag_accepts_the_configured_lag_and_refuses_more():
    groups = [_group("a", 3), _group("b", 2)]
    check_lag(groups, policy_version=3, async_steps=1, client=_Client("refuse"))  # lags 0 and 1
    with pytest.raises(StaleRolloutError, match="2 behind the policy"):
        check_lag(groups, policy_version=4, async_steps=1, client=_Client("refuse"))
    with pytest.raises(StaleRolloutError, match="1 behind"):  # on-policy refuses a lag of 1
        check_lag(groups, policy_version=3, async_steps=0, client=_Client("refuse"))
    counting = _Client("count")
    check_lag(groups, policy_version=4, async_steps=1, client=counting)
    assert counting.stale_samples == 2  # the two samples of group b, lag 2


def test_async_steps_above_one_is_a_config_error():
    from igrpo_megatron.config import load_config

    with pytest.raises(ConfigError, match="rollout.async_steps=2"):
        load_config(None, ["rollout.async_steps=2", "model.hf_path=org/model"])
    with pytest.raises(ConfigError, match="cannot be combined"):
        load_config(None, ["rollout.async_steps=1", "loss.dynamic_sampling=true", "model.hf_path=org/model",
                           "data.preset=synthetic"])
    load_config(None, ["rollout.async_steps=1", "model.hf_path=org/model", "data.preset=synthetic"])  # control


def _pipeline(async_steps: int, server: dict, drawn: list):
    """A pipeline whose generator labels each prompt with the version the 'server' holds when it
    starts and finishes it; the test changes ``server['version']`` as a refit would."""
    def next_prompts():
        drawn.append(len(drawn))
        return [f"p{drawn[-1]}"]

    def run(prompts):
        start = server["version"]
        if prompts[0] == server.get("hold"):
            assert server["release"].wait(30)
        assert server["version"] == start  # nobody refit under the rollout
        groups = [_group(p, start) for p in prompts]
        return SampledStep(groups, groups)

    return RolloutPipeline(async_steps, next_prompts, run)


def test_pipeline_runs_one_step_ahead_on_the_weights_of_its_start():
    server = {"version": 0, "release": threading.Event()}
    drawn = []
    pipe = _pipeline(1, server, drawn)
    versions = []
    for step in range(1, 5):
        groups = pipe.take(more_steps=step < 4).groups
        versions.append(groups[0].weight_version)
        pipe.wait()
        server["version"] = step  # the refit after the step
    pipe.close(None)
    assert versions == [0, 0, 1, 2]  # step s trains on version s - 2 (the first step on-policy)
    assert drawn == [0, 1, 2, 3]  # one draw per step, never past the last step

    on_policy = _pipeline(0, {**server, "version": 0}, drawn := [])
    assert [on_policy.take(more_steps=True).groups[0].id for _ in range(3)] == ["p0", "p1", "p2"]


def test_pipeline_state_round_trips_the_rollout_ahead():
    """A checkpoint at a step boundary holds the finished rollout ahead, and a resumed pipeline
    trains on exactly it (then goes on generating ahead)."""
    server = {"version": 5, "release": threading.Event(), "hold": "p1"}
    pipe = _pipeline(1, server, drawn := [])
    pipe.take(more_steps=True)  # step 1 on-policy; step 2's rollout (p1) holds in the background
    threading.Timer(0.5, server["release"].set).start()
    state = json.loads(json.dumps(pipe.state_dict()))  # waits for it; through the checkpoint's JSON metadata
    pipe.close(None)
    assert [g["id"] for g in state["groups"]] == ["p1"] and state["groups"][0]["weight_version"] == 5
    assert state["kept"] == [0]

    resumed = _pipeline(1, server, drawn2 := [])
    resumed.load_state_dict(state)
    assert resumed.take(more_steps=False).kept == [_group("p1", 5)]  # bit-exact: logprobs and all
    assert drawn2 == []  # its prompts were drawn before the checkpoint
    resumed.close(None)


def test_async_run_trains_step_k_on_version_k_minus_1(tmp_path, tiny_qwen2):
    """3 steps one step off: step s trains the policy at version s - 1 on samples from s - 2 (step 1
    on-policy), the samples log says the same, TIS sees the lag, and the checkpoint after step 2
    holds step 3's finished rollout (its resume point)."""
    pps = 4
    cfg = tiny_run_config(
        tiny_qwen2, str(tmp_path / "run"), port=free_port(), parallel={"tp": 1},
        data={"synthetic_size": 64},
        rollout={"max_tokens": 12, "startup_timeout_s": 400, "temperature": 0.7, "async_steps": 1},
        train={"prompts_per_step": pps, "max_steps": 3, "save_every": 2, "samples_token_ids": True},
        loss={"entropy_coef": 0.01})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_torchrun(TRAIN_CLI, 1, ["--config", str(path)], timeout=900)
    run_dir = tmp_path / "run"
    records = read_metrics(str(run_dir))
    assert [r["step"] for r in records] == [1, 2, 3]
    assert [r["weight_version"] for r in records] == [1, 2, 3]
    assert [r["server_weight_version"] for r in records] == [1, 2, 3]
    assert [r["rollout_weight_version"] for r in records] == [0, 0, 1]
    assert [r["prompts_consumed"] for r in records] == [2 * pps, 3 * pps, 3 * pps]  # one batch drawn ahead
    assert all(r["rollout_stale_samples"] == 0 for r in records)
    # step 1 sampled from the policy it trained (float noise); step 2's samples came from v0 while
    # the policy is at v1, which the entropy bonus moved
    assert records[0]["logprob_mismatch"] < 1e-3 < records[1]["logprob_mismatch"], records
    with open(run_dir / "rollouts.jsonl") as f:
        samples = [json.loads(line) for line in f]
    assert {(s["step"], s["weight_version"]) for s in samples} == {(1, 0), (2, 0), (3, 1)}

    with open(run_dir / "checkpoints" / "iter_0000002" / "meta.json") as f:
        ahead = json.load(f)["extra_state"]["rollout_ahead"]["groups"]
    step3 = [s for s in samples if s["step"] == 3]
    assert [g["id"] for g in ahead] == [s["id"] for s in step3]
    assert [g["response_ids"] for g in ahead] == [[r["token_ids"] for r in s["refinements"]] for s in step3]
    assert {g["weight_version"] for g in ahead} == {1}
    with open(run_dir / "checkpoints" / "iter_0000003" / "meta.json") as f:
        assert json.load(f)["extra_state"]["rollout_ahead"] is None  # nothing is generated past the last step
