"""recipes/ and configs/: the paper's runs load, validate, match the paper and each other."""
from __future__ import annotations

import glob
import json
import os
import re
import sys

import pytest

from igrpo_megatron.config import ConfigError, load_config
from torchrun_util import REPO

sys.path.insert(0, REPO)

import recipes  # noqa: E402  (recipes/ lives at the repository root, beside the package)

RUN_CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "*.yaml"))
                     if not os.path.basename(p).startswith("demo"))


def _name(path: str) -> str:
    return os.path.basename(path)[: -len(".yaml")]


def test_every_config_file_loads_validates_and_is_its_recipe():
    assert {_name(p) for p in RUN_CONFIGS} == set(recipes.runnable())
    for path in RUN_CONFIGS:
        cfg = load_config(path)
        assert cfg == recipes.build(_name(path)), path
        with open(path, encoding="utf-8") as f:
            assert f.read() == recipes.render_yaml(_name(path)), f"{path} is stale: run `python -m recipes`"


@pytest.mark.parametrize("name", recipes.runnable())
def test_recipes_use_the_papers_hyper_parameters(name):
    cfg = recipes.build(name)
    o, r, ig, loss = cfg.optim, cfg.rollout, cfg.igrpo, cfg.loss
    assert (o.lr, o.min_lr_ratio, o.warmup_ratio) == (1e-6, 0.1, 0.1)
    assert (r.temperature, r.max_prompt_tokens, r.max_tokens) == (0.7, 1024, 4096)
    assert r.max_prompt_tokens + r.max_tokens <= r.max_model_len
    assert ig.num_drafts + ig.num_refinements == ig.group_budget == 8
    assert (ig.num_drafts, ig.num_refinements) == ((4, 4) if "_igrpo" in name else (0, 8))
    assert loss.kl_beta == 0.0 and loss.entropy_coef == 0.0 and loss.advantage == "grpo"
    assert (cfg.reward.kind, cfg.reward.accuracy_weight, cfg.reward.format_weight) == ("math_verify", 1.0, 1.0)
    assert (cfg.model.dtype, cfg.model.recompute_activations, cfg.train.epochs) == ("bf16", True, 1)
    assert cfg.train.prompts_per_step * ig.group_budget == 1024  # completions per step
    assert cfg.data.preset == ("acereason" if "acereason" in name else "math")
    assert cfg.train.output_dir == f"runs/{name}"
    assert ig.draft_selection == (name.split("_draft_")[1] if "_draft_" in name else "best")
    if name.endswith("_dapo"):
        assert (loss.clip_low, loss.clip_high, loss.aggregation, loss.dynamic_sampling) == (
            0.2, 0.28, "token_mean", True)
        assert cfg.reward.overlong_cache_tokens == 819 and cfg.reward.overlong_cap(r.max_tokens) == 4096
    elif name.endswith("_gspo"):
        assert (loss.ratio_level, loss.clip_low, loss.clip_high) == ("sequence", 3e-4, 4e-4)
    else:
        assert (loss.ratio_level, loss.clip_low, loss.clip_high, loss.dynamic_sampling) == (
            "token", 0.2, 0.2, False)


def test_paper_runs_are_all_there():
    assert {"r1d7b_math_igrpo", "r1d7b_math_grpo", "r1d14b_math_igrpo", "r1d14b_math_grpo",
            "orn7b_acereason_igrpo", "r1d7b_math_igrpo_dapo", "r1d7b_math_grpo_dapo",
            "r1d7b_math_igrpo_gspo", "r1d7b_math_grpo_gspo", "r1d7b_math_igrpo_draft_random",
            "r1d7b_math_igrpo_draft_worst_formatted"} <= set(recipes.runnable())
    assert recipes.build("r1d14b_math_igrpo").model.hf_path == "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B"
    assert recipes.build("orn7b_acereason_igrpo").model.hf_path == "nvidia/OpenReasoning-Nemotron-7B"


def test_batch_sizes_and_subsets_as_the_project_reads_the_paper():
    """recipes/paper.py: 1,024 completions sampled per step for both methods, one optimizer step
    on them; iGRPO trains on its 512 refinements, GRPO on all 1,024. AceReason-Math: 9,400 problems."""
    for name in recipes.runnable():
        cfg = recipes.build(name)
        t, ig = cfg.train, cfg.igrpo
        assert (t.ppo_epochs, t.mini_batches) == (1, 1), name
        assert t.prompts_per_step * ig.num_refinements == (512 if "_igrpo" in name else 1024), name
        problems = 9400 if cfg.data.preset == "acereason" else 7500
        assert cfg.data.max_examples == (9400 if cfg.data.preset == "acereason" else None), name
        assert problems // t.prompts_per_step == (73 if problems == 9400 else 58)  # optimizer steps per epoch
    omn14 = recipes.build("omn14b_math_igrpo")
    assert (omn14.model.hf_path, omn14.parallel.tp) == ("nvidia/OpenMath-Nemotron-14B", 4)
    assert "omn14b_math_grpo" in recipes.runnable()


def test_nemotron_h_recipes_build_with_a_layout_the_model_allows():
    for name in ("nemoh8b_math_igrpo", "nemoh8b_math_grpo"):
        cfg = recipes.build(name)
        assert name in recipes.runnable()
        assert os.path.exists(os.path.join(REPO, "configs", f"{name}.yaml"))
        assert cfg.model.hf_path == "nvidia/Nemotron-H-8B-Base-8K"
        # Nemotron-H-8B-Base-8K: 128 Mamba heads in 8 groups, 32 attention / 8 key-value heads
        assert all(n % cfg.parallel.tp == 0 for n in (128, 8, 32, 8)) and cfg.parallel.pp == 1


def test_table1_baselines_on_both_models_at_the_budget_of_8():
    """Critique-GRPO 7 + 1 with c_GT and gamma 0.1; Self-Verification's buffer as [SV] keeps it per
    model family (40,000 for the R1 distill, 5,000 for a base), refreshed 4 times in the 58-step epoch."""
    for prefix, buffer in (("r1d7b_math", 40000), ("nemoh8b_math", 5000)):
        cg, sv = recipes.build(f"{prefix}_critique_grpo"), recipes.build(f"{prefix}_self_verification")
        assert (cg.igrpo.method, cg.igrpo.num_refinements - cg.igrpo.critique_refinements,
                cg.igrpo.critique_refinements, cg.igrpo.critique_source, cg.igrpo.critique_gamma) == (
            "critique_grpo", 7, 1, "rule", 0.1)
        assert (sv.igrpo.method, sv.igrpo.num_refinements, sv.igrpo.verify_buffer_size) == (
            "self_verification", 8, buffer)
        assert sv.igrpo.verify_refresh_every is None and sv.igrpo.verify_prompts_per_step is None
        for cfg in (cg, sv):  # everything else is the GRPO baseline's protocol
            grpo = recipes.build(f"{prefix}_grpo")
            assert (cfg.loss, cfg.reward, cfg.rollout.max_tokens) == (grpo.loss, grpo.reward, grpo.rollout.max_tokens)


def test_local_paths_replace_hub_names(tmp_path):
    model = tmp_path / "DeepSeek-R1-Distill-Qwen-7B"
    model.mkdir()
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"problem": "1+1?", "solution": "\\boxed{2}"}) + "\n")
    overrides = [f"model.hf_path={model}", f"data.source={data}"]
    from_recipe = recipes.build("r1d7b_math_igrpo", overrides)
    from_file = load_config(os.path.join(REPO, "configs", "r1d7b_math_igrpo.yaml"), overrides)
    assert from_recipe == from_file
    assert (from_file.model.hf_path, from_file.data.source) == (str(model), str(data))
    assert from_file.data.preset == "math"  # MATH's fields and boxed answers still apply
    with pytest.raises(ConfigError, match="no recipe 'r1d7b'"):
        recipes.build("r1d7b")


@pytest.mark.parametrize("script,name", [("igrpo_7b.sh", "r1d7b_math_igrpo"), ("grpo_7b.sh", "r1d7b_math_grpo"),
                                         ("igrpo_14b.sh", "r1d14b_math_igrpo"),
                                         ("igrpo_nemotron_h_8b.sh", "nemoh8b_math_igrpo")])
def test_launch_scripts_match_their_recipe_layout(script, name):
    text = open(os.path.join(REPO, "launch", script), encoding="utf-8").read()
    nodes = int(re.search(r"^#SBATCH --nodes=(\d+)$", text, re.M).group(1))
    gpus = int(re.search(r"^#SBATCH --gpus-per-node=(\d+)$", text, re.M).group(1))
    assert re.search(rf"^CONFIG=\$\{{CONFIG:-configs/{name}\.yaml\}}$", text, re.M)
    recipe = recipes.RECIPES[name]
    cfg = recipes.build(name)
    assert nodes == recipe.model.train_nodes + 1  # one node serves vLLM
    assert gpus % cfg.parallel.tp == 0 and gpus % cfg.rollout.tensor_parallel_size == 0
