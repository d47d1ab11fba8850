"""Issue 17 items 1 and 2 on a real Megatron policy at PP=2 (torchrun/gloo): skipping the separate
old-logprob pass, and micro-batches cut to their own length under a token budget, give the loss and
gradients of the separate pass with fixed micro-batches."""
import os

import pytest

from torchrun_util import REPO, checks, run_torchrun


@pytest.fixture(scope="module")
def c(tiny_qwen2):
    return checks(run_torchrun(os.path.join(REPO, "tests/dist/train_batching.py"), 2, [tiny_qwen2], timeout=600))


def test_shortcut_and_token_budget_match_the_separate_pass_at_pp2(c):
    assert c["grad_abs_max"] > 1e-3  # a real gradient, so the differences below mean something
    for tag in ("shortcut", "budget"):
        assert c[f"{tag}_loss"] == pytest.approx(c["separate_loss"], abs=1e-6), tag
        assert c[f"{tag}_grad_diff"] <= 1e-6, tag
        assert c[f"{tag}_approx_kl"] == 0.0, tag  # on-policy: the ratio is exactly 1
    assert abs(c["separate_approx_kl"]) <= 1e-7
