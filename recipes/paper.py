"""The paper's training setup (arXiv 2602.09000, see /work/shared/PAPER.md) as config settings.

A recipe is a nested dict of ``section -> key -> value`` over the defaults of
:class:`igrpo_megatron.config.Config`. Every value the paper fixes is stated here explicitly,
even where it equals the default, so that a default changing later cannot silently change a
paper run (tests/test_recipes.py compares the recipes with the paper's numbers).

Choices the paper does not state are marked "(ours)".

The batch (PAPER.md contradicts itself): the text gives a global batch of 1,024, "16 per device x
8 GPUs x 8 accumulation", while the plotted curves run ~150 optimizer steps, and one epoch of
MATH's 7,500 problems at 1,024 completions per step is 58 steps. The project follows the text
and reads 1,024 as the completions sampled per step, the quantity budget matching keeps equal:
128 prompts x 8 for both methods, one optimizer step per rollout batch (ppo_epochs = mini_batches
= 1). GRPO then trains on 1,024 sequences per step and iGRPO on 512 (its 512 drafts are context
only), both for 58 steps per epoch on MATH and 73 on AceReason-Math's 9,400. The ~150 plotted
steps would need ~50 prompts per step; they are not reproduced (ours).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Optional

Settings = dict  # section -> {key: value}


@dataclass(frozen=True)
class Model:
    """A policy model: its hub name (a local HF folder works too: override ``model.hf_path``),
    its HF ``model_type`` (checked against the implemented Megatron providers) and its layout."""

    hf_path: str
    model_type: str
    tp: int  # Megatron tensor parallel size on a training node of 8 GPUs
    train_nodes: int  # nodes running torchrun; one more node serves vLLM (launch/*.sh)
    rollout_tp: int = 1  # vLLM tensor parallel size: one server per rollout_tp GPUs
    note: Optional[str] = None  # shown when the model cannot be trained yet


# AceReason-Math has ~49.6K problems; the paper trains on 9,400 without saying which. The project
# takes a uniform random sample of 9,400, seeded by data.seed (ours).
ACEREASON_PROBLEMS = 9400


def paper_settings(name: str, model: Model, data: str) -> Settings:
    """The setup shared by every run of the paper: iGRPO N = 4 drafts + G = 4 refinements."""
    return {
        "model": {"hf_path": model.hf_path, "dtype": "bf16", "recompute_activations": True},
        "parallel": {"tp": model.tp, "pp": 1, "use_distributed_optimizer": True},
        "optim": {
            "lr": 1.0e-6, "min_lr_ratio": 0.1, "warmup_ratio": 0.1,
            "weight_decay": 0.0, "clip_grad": 1.0,  # (ours)
        },
        "loss": {
            "advantage": "grpo", "aggregation": "seq_mean_token_mean", "ratio_level": "token",
            "clip_low": 0.2, "clip_high": 0.2,  # eps not stated; the common default (ours)
            "kl_beta": 0.0, "kl_estimator": "k3", "entropy_coef": 0.0,
        },
        "igrpo": {"num_drafts": 4, "num_refinements": 4, "group_budget": 8},
        "reward": {"kind": "math_verify", "accuracy_weight": 1.0, "format_weight": 1.0},
        "data": {"preset": data, **({"max_examples": ACEREASON_PROBLEMS} if data == "acereason" else {})},
        "rollout": {
            "tensor_parallel_size": model.rollout_tp, "dtype": "bfloat16",
            "temperature": 0.7, "top_p": 1.0,  # top-p not stated (ours: none)
            "max_prompt_tokens": 1024, "max_tokens": 4096, "max_model_len": 5120,
            # Weights go to the servers through a shared filesystem folder (ours; the nccl
            # transport is faster but untested here: rollout.refit_transport=nccl).
            "refit_transport": "disk", "refit_dir": f"runs/{name}/refit",
        },
        "train": {
            "output_dir": f"runs/{name}",
            "epochs": 1,
            # 128 prompts x 8 samples = the paper's 1,024 completions per step (module docstring).
            "prompts_per_step": 128,
            "ppo_epochs": 1, "mini_batches": 1,  # one optimizer step per rollout batch
            "micro_batch_size": 2,  # (ours) 5k-token sequences with activation recompute
            "save_every": 25,
        },
    }


def igrpo(name: str, model: Model, data: str) -> Settings:
    """iGRPO: 4 drafts, the best one conditions 4 refinements; 8 samples per prompt in all."""
    return paper_settings(name, model, data)


def grpo(name: str, model: Model, data: str) -> Settings:
    """The GRPO baseline at the same budget: no drafts, a group of 8."""
    s = paper_settings(name, model, data)
    s["igrpo"] = {"num_drafts": 0, "num_refinements": 8, "group_budget": 8}
    return s


def critique_grpo(name: str, model: Model, data: str) -> Settings:
    """Critique-GRPO (Table 1 baseline) at the budget of 8: 7 initial responses + 1 refinement
    given the rule reward's c_GT critique, refinement tokens shaped with gamma = 0.1 ([CG]). The
    rest is iGRPO's protocol: the same reward, no entropy term, no KL ([CG] uses 0.001 entropy; ours)."""
    s = grpo(name, model, data)
    s["igrpo"].update(method="critique_grpo", critique_refinements=1, critique_source="rule", critique_gamma=0.1)
    return s


def self_verification(name: str, model: Model, data: str, buffer_size: int) -> Settings:
    """Self-Verification (Table 1 baseline): GRPO's groups of 8 on the problems plus verifications of
    buffered solutions, also 8 each. [SV] keeps 5,000 solutions for Qwen bases and 40,000 for R1
    distills, refreshed every 60 steps; one epoch here is 58 steps, so the refresh is a quarter of
    the run (14 steps) and ~51 verification prompts join each step's 128 problems (ours)."""
    s = grpo(name, model, data)
    s["igrpo"].update(method="self_verification", verify_buffer_size=buffer_size, verify_refresh_every=None,
                      verify_prompts_per_step=None)
    return s


def baselines(prefix: str, model: Model, data: str, verify_buffer_size: int) -> list[Recipe]:
    """``<prefix>_critique_grpo`` and ``<prefix>_self_verification``: Table 1's other two methods."""
    cg, sv = f"{prefix}_critique_grpo", f"{prefix}_self_verification"
    return [Recipe(cg, model, lambda: critique_grpo(cg, model, data)),
            Recipe(sv, model, lambda: self_verification(sv, model, data, verify_buffer_size))]


# DAPO's soft overlong cache is 4,096 of its 20,480 generated tokens, a fifth; ours keeps the
# proportion of the paper's 4,096-token budget.
DAPO_OVERLONG_CACHE = 4096 // 5


def dapo(settings: Settings) -> Settings:
    """DAPO's loss under either method: clip-higher (0.2 / 0.28), token-level aggregation,
    dynamic sampling (groups whose rewards are all equal are dropped and the batch refilled) and
    the soft overlong punishment over the last fifth of the generation budget."""
    s = copy.deepcopy(settings)
    s["loss"].update(clip_low=0.2, clip_high=0.28, aggregation="token_mean", dynamic_sampling=True)
    s["reward"]["overlong_cache_tokens"] = DAPO_OVERLONG_CACHE
    return s


def draft_selection(kind: str) -> Callable[[Settings], Settings]:
    """iGRPO with stage 2 conditioned on another draft than the best (``igrpo.draft_selection``):
    the draft-selection ablation, same budget and loss."""
    def wrap(settings: Settings) -> Settings:
        s = copy.deepcopy(settings)
        s["igrpo"]["draft_selection"] = kind
        return s

    wrap.__name__ = f"draft_{kind}"
    return wrap


def gspo(settings: Settings) -> Settings:
    """GSPO's loss under either method: a sequence-level (length-normalised) ratio with GSPO's
    narrow clip range 3e-4 / 4e-4."""
    s = copy.deepcopy(settings)
    s["loss"].update(ratio_level="sequence", clip_low=3.0e-4, clip_high=4.0e-4)
    return s


@dataclass(frozen=True)
class Recipe:
    """One paper run: ``settings()`` builds its config settings; ``model`` says what it trains."""

    name: str
    model: Model
    settings: Callable[[], Settings]


DRAFT_SELECTION_ABLATION = tuple(draft_selection(kind) for kind in ("random", "worst_formatted"))


def runs(prefix: str, model: Model, data: str, variants: bool = False) -> list[Recipe]:
    """``<prefix>_igrpo`` and ``<prefix>_grpo``; with ``variants`` also both under DAPO and GSPO
    (``<prefix>_igrpo_dapo`` vs ``<prefix>_grpo_dapo``: the paper's wrapper ablation) and iGRPO
    with a random and with the worst formatted draft (``<prefix>_igrpo_draft_random``, ...)."""
    out = []
    for method in (igrpo, grpo):
        name = f"{prefix}_{method.__name__}"
        out.append(Recipe(name, model, lambda n=name, m=method: m(n, model, data)))
    if variants:
        for wrap in (dapo, gspo):
            for method in (igrpo, grpo):
                name = f"{prefix}_{method.__name__}_{wrap.__name__}"
                out.append(Recipe(name, model, lambda n=name, m=method, w=wrap: w(m(n, model, data))))
        for wrap in DRAFT_SELECTION_ABLATION:
            name = f"{prefix}_igrpo_{wrap.__name__}"
            out.append(Recipe(name, model, lambda n=name, w=wrap: w(igrpo(n, model, data))))
    return out
