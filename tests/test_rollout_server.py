"""Rollouts and weight updates against ONE real vLLM (CPU) server shared by this module.

The references are transformers' greedy decoding of the same weights. Weight versions increase
through the module (a server's version only goes up), so tests take theirs from ``next_version``.
"""
from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch
from rollout_fixtures import (hf_greedy, hf_model, perturbed_state_dict, rollout_server,  # noqa: F401
                              rollout_test_config, start_test_server, state_dict_buckets)

from igrpo_megatron.rollout import (RefitError, RolloutClient, RolloutError, SamplingParams,
                                    StaleRolloutError, Refitter)

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
_versions = itertools.count(1)


def next_version() -> int:
    return next(_versions)


def prompts(vocab: int = 300) -> list[list[int]]:
    """A short prompt and one longer than a KV block (128 tokens on CPU), which the prefix cache keeps."""
    g = torch.Generator().manual_seed(7)
    return [torch.randint(5, vocab, (12,), generator=g).tolist(),
            torch.randint(5, vocab, (150,), generator=g).tolist()]


@pytest.fixture(scope="module")
def hf(tiny_qwen2):
    return hf_model(tiny_qwen2)


def refit(server, state_dict, version, transport="disk", client=None, bucket_bytes=200_000):
    cfg = rollout_test_config(refit_dir=os.path.join(os.path.dirname(server.log_path), "refit"),
                              refit_transport=transport)
    refitter = Refitter(cfg, [server.url], server.api_key, client=client)
    return refitter.update(iter(state_dict_buckets(state_dict, bucket_bytes)), version)


def references(hf, state_dict, prompt_list, max_new_tokens=GREEDY.max_tokens):
    hf.load_state_dict(state_dict)
    return [hf_greedy(hf, p, max_new_tokens) for p in prompt_list]


def max_logprob_diff(samples, refs) -> float:
    return max(max(abs(a - b) for a, b in zip(s.logprobs, ref_lp)) for s, (_, ref_lp) in zip(samples, refs))


@pytest.mark.parametrize("transport", ["disk", "http"])
def test_refit_then_greedy_equals_transformers(rollout_server, hf, transport):
    """After a refit, the server's greedy tokens equal transformers' on the same weights and its
    logprobs agree within 1e-4, on a short prompt and on one longer than a KV block."""
    ps = prompts()
    client = RolloutClient([rollout_server.url], rollout_server.api_key)
    before = [s[0].token_ids for s in client.generate_batch(ps, 1, GREEDY)]
    new_sd = perturbed_state_dict(hf, seed=len(transport))
    refs = references(hf, new_sd, ps)
    assert any(b != r[0] for b, r in zip(before, refs)), "the update must change greedy outputs"

    version = next_version()
    stats = refit(rollout_server, new_sd, version, transport=transport, client=client)
    assert stats.num_tensors == len(new_sd) and stats.version == version

    samples = [s[0] for s in client.generate_batch(ps, 1, GREEDY)]
    assert [s.token_ids for s in samples] == [r[0] for r in refs]
    assert max_logprob_diff(samples, refs) < 1e-4
    assert all(s.weight_version == version and not s.mixed_versions for s in samples)
    assert rollout_server.admin.weight_version() == version


def test_without_prefix_cache_reset_long_prompt_is_wrong(rollout_server, hf, tmp_path):
    """Negative control: loading weights without POST /reset_prefix_cache serves KV blocks that
    the old weights computed, so a prompt longer than one block (128 tokens) decodes wrongly."""
    from safetensors.torch import save_file

    long_prompt = prompts()[1]
    client = RolloutClient([rollout_server.url], rollout_server.api_key)
    sd_a = perturbed_state_dict(hf, seed=11)
    refit(rollout_server, sd_a, next_version())
    client.generate_batch([long_prompt], 1, GREEDY)  # fills the prefix cache with A's KV

    sd_b = perturbed_state_dict(hf, seed=12)
    [ref_b] = references(hf, sd_b, [long_prompt])
    save_file(sd_b, str(tmp_path / "b.safetensors"))
    admin = rollout_server.admin
    admin.pause("wait")
    loaded = admin.collective_rpc("igrpo_load_safetensors", [str(tmp_path / "b.safetensors")])
    assert [int(n) for n in loaded] == [len(sd_b)]
    admin.set_weight_version(next_version())
    admin.resume()

    [[stale]] = client.generate_batch([long_prompt], 1, GREEDY)
    stale_ok = stale.token_ids == ref_b[0] and max_logprob_diff([stale], [ref_b]) < 1e-4
    assert not stale_ok, "without a prefix-cache reset the cached KV of the old weights must show"

    admin.reset_prefix_cache()
    [[fresh]] = client.generate_batch([long_prompt], 1, GREEDY)
    assert fresh.token_ids == ref_b[0] and max_logprob_diff([fresh], [ref_b]) < 1e-4


@torch.no_grad()
def tempered_logprobs(model, prompt_ids: list[int], token_ids: list[int], temperature: float) -> list[float]:
    """log softmax(logits / T) of each sampled token, in one forward over prompt + sample."""
    logits = model(torch.tensor([prompt_ids + token_ids])).logits[0, len(prompt_ids) - 1:-1].float()
    lp = torch.log_softmax(logits / temperature, dim=-1)
    return lp.gather(1, torch.tensor(token_ids)[:, None])[:, 0].tolist()


def test_sampled_logprobs_are_those_of_the_tempered_distribution(rollout_server, hf):
    """At temperature 0.7 (the paper's) the server reports log softmax(logits / 0.7) of each sampled
    token, the quantity the trainer's logprobs and truncated importance sampling use; vLLM's
    default (logits before temperature) is 1e-2 or more away, so the check can tell them apart."""
    sd = perturbed_state_dict(hf, seed=41)
    refit(rollout_server, sd, next_version())
    hf.load_state_dict(sd)
    client = RolloutClient([rollout_server.url], rollout_server.api_key)
    params = SamplingParams(temperature=0.7, max_tokens=24, ignore_eos=True, seed=3)
    groups = client.generate_batch(prompts(), 2, params)
    diffs, raw_diffs = [], []
    for prompt, group in zip(prompts(), groups):
        assert len(group) == 2 and group[0].token_ids != group[1].token_ids
        for s in group:
            assert len(s.token_ids) == 24 and s.finish_reason == "length"
            ref = tempered_logprobs(hf, prompt, s.token_ids, 0.7)
            raw = tempered_logprobs(hf, prompt, s.token_ids, 1.0)
            diffs += [abs(a - b) for a, b in zip(s.logprobs, ref)]
            raw_diffs += [abs(a - b) for a, b in zip(s.logprobs, raw)]
    assert max(diffs) < 1e-4
    assert max(raw_diffs) > 1e-2


def test_abandoned_stream_is_ended_by_the_next_refit(rollout_server, hf, tmp_path):
    """A trainer that died mid-update left a stream open with half the tensors loaded and the
    server paused; the next update ends it and replaces every layer: greedy output equals
    transformers' again."""
    from safetensors.torch import save_file

    admin = rollout_server.admin
    admin.pause("wait")
    assert int(admin.collective_rpc("igrpo_stream_begin")[0]) == 0
    half = dict(list(perturbed_state_dict(hf, seed=32).items())[: len(hf.state_dict()) // 2])
    save_file(half, str(tmp_path / "half.safetensors"))
    admin.collective_rpc("igrpo_stream_file", [str(tmp_path / "half.safetensors")])

    sd = perturbed_state_dict(hf, seed=31)
    client = RolloutClient([rollout_server.url], rollout_server.api_key)
    version = next_version()
    stats = refit(rollout_server, sd, version, client=client)
    assert stats.num_tensors == len(sd) and admin.weight_version() == version
    assert not admin.request("GET", "/is_paused")["is_paused"]
    refs = references(hf, sd, prompts())
    samples = [s[0] for s in client.generate_batch(prompts(), 1, GREEDY)]
    assert [s.token_ids for s in samples] == [r[0] for r in refs]
    assert max_logprob_diff(samples, refs) < 1e-4


def test_failed_load_names_the_server_and_leaves_it_paused(tiny_qwen2, hf, tmp_path):
    """A tensor of the wrong shape fails the update with a RefitError naming the server, which
    stays paused with its old version rather than generating from half-loaded weights."""
    server = start_test_server(tiny_qwen2, str(tmp_path))
    try:
        sd = perturbed_state_dict(hf, seed=33)
        name = "model.layers.0.mlp.down_proj.weight"
        with pytest.raises(RefitError, match=f"failed on {server.url}.*exceeds dimension size"):
            refit(server, {**sd, name: sd[name].t().contiguous()}, version=1)
        assert server.admin.request("GET", "/is_paused")["is_paused"]
        assert server.admin.weight_version() == 0
    finally:
        server.stop()


def _status(url: str, method: str, key: str | None, body: dict | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, method=method, headers=headers,
                                 data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_every_route_requires_the_api_key(rollout_server):
    version = rollout_server.admin.weight_version()
    routes = [
        ("GET", "/health", None), ("GET", "/v1/models", None), ("GET", "/metrics", None),
        ("POST", "/v1/completions", {"model": "policy", "prompt": [5, 6], "max_tokens": 2}),
        ("POST", "/inference/v1/generate", {"token_ids": [5, 6], "sampling_params": {"max_tokens": 2}}),
        ("POST", "/collective_rpc", {"method": "igrpo_load_safetensors", "args": ["/nonexistent"]}),
        ("POST", "/pause", None), ("POST", "/resume", None), ("POST", "/reset_prefix_cache", None),
        ("POST", "/update_weight_version", {"new_version": "999"}),
        ("POST", "/init_weight_transfer_engine", {"init_info": {}}),
        ("POST", "/update_weights", {"update_info": {}}),
        ("GET", "/weight_info", None),
    ]
    for method, path, body in routes:
        for key in (None, "wrong-key"):
            assert _status(rollout_server.url + path, method, key, body) == 401, (method, path, key)
    assert _status(rollout_server.url + "/weight_info", "GET", rollout_server.api_key) == 200
    assert rollout_server.admin.weight_version() == version  # the refused update did nothing
    assert not rollout_server.admin.request("GET", "/is_paused")["is_paused"]

    no_key = RolloutClient([rollout_server.url], "wrong-key")
    with pytest.raises(RolloutError, match="401"):
        no_key.generate_batch([[5, 6, 7]], 1, GREEDY)


def test_stale_rollouts_are_refused_or_counted(rollout_server):
    current = rollout_server.admin.weight_version()
    SAMPLE = SamplingParams(temperature=1.0, max_tokens=8, seed=0)
    refuse = RolloutClient([rollout_server.url], rollout_server.api_key, expected_version=current + 1)
    with pytest.raises(StaleRolloutError, match=f"version {current}"):
        refuse.generate_batch([[5, 6, 7]], 2, SAMPLE)
    count = RolloutClient([rollout_server.url], rollout_server.api_key, stale_policy="count",
                          expected_version=current + 1)
    [samples] = count.generate_batch([[5, 6, 7]], 2, SAMPLE)
    assert len(samples) == 2 and count.stale_samples == 2
    fresh = RolloutClient([rollout_server.url], rollout_server.api_key, expected_version=current)
    assert len(fresh.generate_batch([[5, 6, 7]], 2, SAMPLE)[0]) == 2


def _requests_running(server) -> float:
    req = urllib.request.Request(server.url + "/metrics", headers={"Authorization": f"Bearer {server.api_key}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        lines = r.read().decode().splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith("vllm:num_requests_running"))


def test_requests_straddling_a_refit_carry_the_version_that_generated_them(rollout_server, hf):
    """Long greedy generations run while a refit happens. The one surely in flight when the refit
    pauses the server finishes on the old weights and says so; every sample, whenever it was sent,
    is exactly transformers' output for the weights of the version it is labelled with."""
    prompt = prompts()[0]
    long = SamplingParams(temperature=0.0, max_tokens=900, ignore_eos=True)  # seconds, even on an idle machine
    old_sd, new_sd = perturbed_state_dict(hf, seed=21), perturbed_state_dict(hf, seed=22)
    old_v = next_version()
    refit(rollout_server, old_sd, old_v)
    new_v = next_version()
    refs = {old_v: references(hf, old_sd, [prompt], long.max_tokens)[0][0],
            new_v: references(hf, new_sd, [prompt], long.max_tokens)[0][0]}
    assert refs[old_v] != refs[new_v]

    client = RolloutClient([rollout_server.url], rollout_server.api_key, stale_policy="count")
    results: dict = {}

    def generate(name, delay=0.0):
        time.sleep(delay)
        results[name] = client.generate_batch([prompt], 1, long)[0][0]

    in_flight = threading.Thread(target=generate, args=("in_flight",))
    in_flight.start()
    deadline = time.monotonic() + 60
    while _requests_running(rollout_server) < 1:
        assert in_flight.is_alive(), "the first request finished before the refit: make it longer"
        assert time.monotonic() < deadline, "the first request never started"
        time.sleep(0.02)
    others = [threading.Thread(target=generate, args=(f"after_{d}", d)) for d in (0.0, 0.2, 0.5)]
    for t in others:
        t.start()
    refit(rollout_server, new_sd, new_v)
    generate("after_refit")
    for t in [in_flight, *others]:
        t.join()

    assert results["in_flight"].weight_version == old_v
    assert results["after_refit"].weight_version == new_v
    for name, s in results.items():
        assert not s.mixed_versions
        assert s.token_ids == refs[s.weight_version], f"{name}: labelled v{s.weight_version}, other tokens"


def test_killed_server_is_retried_elsewhere_or_fails_clearly(rollout_server, tiny_qwen2, tmp_path):
    """A server killed mid-request: its requests are retried on the live server and the batch is
    complete; with no live server left the call raises instead of returning a short batch."""
    doomed = start_test_server(tiny_qwen2, str(tmp_path), api_key=rollout_server.api_key)
    try:
        client = RolloutClient([doomed.url, rollout_server.url], rollout_server.api_key, backoff_s=0.2)
        long = SamplingParams(temperature=1.0, max_tokens=800, ignore_eos=True, seed=0)
        killer = threading.Timer(1.0, os.killpg, (doomed.process.pid, signal.SIGKILL))
        killer.start()
        results = client.generate_batch([[5 + i, 6, 7] for i in range(4)], 2, long)
        killer.join()
        assert doomed.process.wait(timeout=30) == -signal.SIGKILL
        assert client.retries >= 1, "some requests must have been in flight on the killed server"
        assert [len(r) for r in results] == [2, 2, 2, 2]
        assert all(len(s.token_ids) == 800 for r in results for s in r)

        lone = RolloutClient([doomed.url], rollout_server.api_key, max_retries=2, backoff_s=0.1)
        with pytest.raises(RolloutError, match="after 3 attempts"):
            lone.generate_batch([[5, 6, 7]], 2, long)
    finally:
        doomed.stop()


def test_megatron_tp2_step_refit_matches_transformers_and_megatron(rollout_server, hf, tiny_qwen2, tmp_path):
    """The production path: a TP=2 Megatron policy takes one optimizer step, is refit through
    export_hf_weights -> Refitter(disk); the server's greedy tokens equal transformers' on the
    exported weights and its logprobs match both transformers' and Megatron's within 1e-4."""
    from safetensors.torch import load_file
    from torchrun_util import REPO, checks, run_torchrun

    version = next_version()
    refit_dir, out_json = tmp_path / "refit", tmp_path / "samples.json"
    output = run_torchrun(os.path.join(REPO, "tests/dist/rollout_megatron_refit.py"), 2,
                          [tiny_qwen2, rollout_server.url, rollout_server.api_key, str(refit_dir),
                           str(version), str(out_json)], timeout=600)
    assert checks(output)["megatron_vs_server_logprob_max_diff"] < 1e-4

    exported = {}
    for f in sorted((refit_dir / f"v{version:08d}").glob("*.safetensors")):
        exported.update(load_file(str(f)))
    original = load_file(os.path.join(tiny_qwen2, "model.safetensors"))
    assert exported.keys() == original.keys()
    assert max((exported[k] - original[k]).abs().max().item() for k in original) > 1e-3  # it trained
    hf.load_state_dict(exported)
    result = json.loads(out_json.read_text())
    for prompt, s in zip(result["prompts"], result["samples"]):
        ref_tokens, ref_lp = hf_greedy(hf, prompt, len(s["token_ids"]))
        assert s["token_ids"] == ref_tokens
        assert max(abs(a - b) for a, b in zip(s["logprobs"], ref_lp)) < 1e-4
        assert s["weight_version"] == version
