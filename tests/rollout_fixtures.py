"""A real vLLM (CPU build) rollout server for tests, plus transformers references to compare with.

Use from a test module (one server per module: startup is ~25 s)::

    from rollout_fixtures import rollout_server  # noqa: F401  (module-scoped fixture)

    def test_x(rollout_server):
        client = RolloutClient([rollout_server.url], rollout_server.api_key)

The server serves the session's ``tiny_qwen2`` folder (head_dim 32, as vLLM's CPU attention needs),
in float32, on a free port of 127.0.0.1.
"""
from __future__ import annotations

import os

import pytest
import torch

from igrpo_megatron.config import RolloutConfig
from igrpo_megatron.models.parallel import free_port
from igrpo_megatron.rollout import ServerHandle, launch_server


def rollout_test_config(refit_dir: str | None = None, **overrides) -> RolloutConfig:
    """Small CPU settings: fp32 (parity at 1e-4), 256 MiB KV cache, short context."""
    base = dict(dtype="float32", max_model_len=1024, kv_cache_memory_bytes=256 << 20,
                enforce_eager=True, startup_timeout_s=300.0, max_prompt_tokens=512, max_tokens=512,
                request_timeout_s=120.0, max_retries=3, refit_dir=refit_dir)
    return RolloutConfig(**{**base, **overrides})


def start_test_server(model_path: str, workdir: str, **overrides) -> ServerHandle:
    cfg = rollout_test_config(refit_dir=os.path.join(workdir, "refit"), **overrides)
    return launch_server(cfg, model_path, os.path.join(workdir, "server.log"), port=free_port(),
                         env={"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def rollout_server(tiny_qwen2, tmp_path_factory):
    handle = start_test_server(tiny_qwen2, str(tmp_path_factory.mktemp("rollout_server")))
    yield handle
    handle.stop()


# ----------------------------------------------------------------------- references


def hf_model(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@torch.no_grad()
def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], list[float]]:
    """Greedy continuation (EOS ignored, as with ``ignore_eos``) and each chosen token's logprob."""
    out = model(torch.tensor([prompt_ids]), use_cache=True)
    tokens, logprobs = [], []
    for _ in range(max_new_tokens):
        lp = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        tok = int(lp.argmax())
        tokens.append(tok)
        logprobs.append(float(lp[tok]))
        out = model(torch.tensor([[tok]]), past_key_values=out.past_key_values, use_cache=True)
    return tokens, logprobs


def state_dict_buckets(state_dict: dict, bucket_bytes: int) -> list[list[tuple[str, torch.Tensor]]]:
    """HF-named tensors (copies) grouped as ``export_hf_weights`` groups them."""
    from igrpo_megatron.weights import bucketize

    return list(bucketize(((n, t.detach().clone()) for n, t in state_dict.items()), bucket_bytes))


def perturbed_state_dict(model, scale: float = 0.02, seed: int = 0) -> dict:
    """The model's weights after a fake training step, large enough to change greedy outputs."""
    g = torch.Generator().manual_seed(seed)
    return {n: (p + scale * torch.randn(p.shape, generator=g)).contiguous()
            for n, p in model.state_dict().items()}
