"""The typed config tree: YAML + overrides, user-facing errors that name the field, and round trips."""
import dataclasses
import re
import typing
from typing import Optional

import pytest

from igrpo_megatron.config import (Config, ConfigError, EvalConfig, Section, dump_yaml, load_config, opt,
                                   parse_overrides, validate)
from igrpo_megatron.config_help import format_help

BASE = ["data.preset=synthetic"]  # the one field without a usable default


def _load(*overrides, path=None):
    return load_config(path, [*BASE, *overrides])


def test_defaults_follow_the_paper():
    cfg = _load()
    assert (cfg.igrpo.num_drafts, cfg.igrpo.num_refinements, cfg.igrpo.group_budget) == (4, 4, 8)
    assert (cfg.loss.advantage, cfg.loss.kl_beta, cfg.loss.kl_estimator) == ("grpo", 0.0, "k3")
    assert cfg.loss.aggregation == "seq_mean_token_mean" and cfg.loss.entropy_coef == 0.0
    assert (cfg.optim.lr, cfg.optim.min_lr_ratio, cfg.optim.warmup_ratio) == (1e-6, 0.1, 0.1)
    assert (cfg.rollout.temperature, cfg.rollout.max_prompt_tokens, cfg.rollout.max_tokens) == (0.7, 1024, 4096)


def test_unknown_key_names_it_and_lists_valid_ones():
    with pytest.raises(ConfigError) as e:
        _load("loss.clip_lo=0.1")
    msg = str(e.value)
    assert "unknown key loss.clip_lo" in msg and "clip_low" in msg and "clip_high" in msg and "kl_beta" in msg
    with pytest.raises(ConfigError, match="unknown key losss; valid keys under the top level: .*loss"):
        _load("losss.clip_low=0.1")


@pytest.mark.parametrize("override, needle", [
    ("train.micro_batch_size=abc", "train.micro_batch_size: expected an integer, got 'abc'"),
    ("train.micro_batch_size=2.5", "train.micro_batch_size: expected an integer, got 2.5"),
    ("train.resume=maybe", "train.resume: expected true/false"),
    ("loss.clip_low=[1]", "loss.clip_low: expected a number"),
    ("loss.tis_cap=high", "loss.tis_cap: expected a number"),
    ("loss=0", "loss: expected a mapping, got int"),  # a section given a scalar is not silently empty
])
def test_wrong_types(override, needle):
    with pytest.raises(ConfigError) as e:
        _load(override)
    assert needle in str(e.value)


@pytest.mark.parametrize("override, needle", [
    ("loss.advantage=ppo", "loss.advantage: 'ppo' is not one of ['grpo', 'drgrpo', 'rloo']"),
    ("loss.kl_estimator=k4", "loss.kl_estimator: 'k4' is not one of ['k1', 'k2', 'k3']"),
    ("loss.ratio_level=group", "loss.ratio_level"),
    ("model.fp8=e5m2", "model.fp8: 'e5m2' is not one of ['e4m3', 'hybrid']"),
])
def test_literal_out_of_range(override, needle):
    with pytest.raises(ConfigError) as e:
        _load(override)
    assert needle in str(e.value)


@pytest.mark.parametrize("overrides, needle", [
    (["igrpo.num_drafts=3"], "igrpo.num_drafts + igrpo.num_refinements = 7 but igrpo.group_budget = 8"),
    (["igrpo.num_refinements=1", "igrpo.num_drafts=7"], "igrpo.num_refinements must be >= 2"),
    (["loss.clip_low=1.0"], "loss.clip_low must be in [0, 1)"),
    (["loss.dual_clip_c=0.5"], "loss.dual_clip_c must be > 1"),
    (["loss.tis_cap=0.5"], "loss.tis_cap must be >= 1"),
    (["loss.aggregation=seq_mean_token_sum_norm"], "set it to the generation budget, rollout.max_tokens=4096"),
    (["igrpo.max_draft_tokens=0"], "igrpo.max_draft_tokens must be >= 1"),
    (["rollout.max_tokens=8000"], "rollout.max_prompt_tokens (1024) + rollout.max_tokens (8000)"),
])
def test_cross_field_errors(overrides, needle):
    with pytest.raises(ConfigError) as e:
        _load(*overrides)
    assert needle in str(e.value)


def test_budget_matching_can_be_switched_off_and_grpo_is_n_zero():
    cfg = _load("igrpo.num_drafts=3", "igrpo.group_budget=null")
    assert (cfg.igrpo.num_drafts, cfg.igrpo.group_budget) == (3, None)
    grpo = _load("igrpo.num_drafts=0", "igrpo.num_refinements=8")
    assert grpo.igrpo.num_drafts == 0
    drgrpo = _load("loss.aggregation=seq_mean_token_sum_norm", "loss.seq_sum_norm_constant=4096")
    assert drgrpo.loss.seq_sum_norm_constant == 4096.0


def test_world_size_check():
    cfg = _load("parallel.tp=4")
    with pytest.raises(ConfigError, match="world size 6 is not divisible by parallel.tp \\* parallel.pp = 4"):
        validate(cfg, world_size=6)
    validate(cfg, world_size=8)


def test_world_size_comes_from_the_launcher_before_any_process_group(monkeypatch):
    """torchrun's WORLD_SIZE is checked while loading, so a bad layout fails before initialize_parallel."""
    monkeypatch.setenv("WORLD_SIZE", "6")
    with pytest.raises(ConfigError, match="world size 6 is not divisible by parallel.tp \\* parallel.pp = 4; "
                                          "launch a multiple of 4 ranks"):
        _load("parallel.tp=4")
    assert _load("parallel.tp=2", "parallel.pp=3").parallel.pp == 3
    load_config(None, ["parallel.tp=4"], training=False)  # igrpo-serve / igrpo-eval: no training world
    monkeypatch.delenv("WORLD_SIZE")
    assert _load("parallel.tp=4").parallel.tp == 4  # no launcher (a login node's --print-config): not checked


def test_eval_config_errors_name_the_field():
    for kwargs, msg in [({"samples": 4, "pass_k": [8]}, "eval.pass_k"), ({"benchmarks": []}, "eval.benchmarks"),
                        ({"prompt_template": "Solve it"}, "{problem}"), ({"samples": 0}, "eval.samples")]:
        with pytest.raises(ConfigError, match=msg):
            EvalConfig(**kwargs).validate()
    with pytest.raises(ConfigError, match="eval.prompt_template must contain {problem}"):
        load_config(None, ["eval.prompt_template=Solve it"], training=False)  # load_config runs it


def undocumented(cls: type, prefix: str = "") -> list[str]:
    """Dotted names of the fields under ``cls`` without a help text (sections are walked into)."""
    hints = typing.get_type_hints(cls)
    missing = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            missing += undocumented(hints[f.name], f"{prefix}{f.name}.")
        elif not f.metadata.get("help", "").strip():
            missing.append(prefix + f.name)
    return missing


def test_every_field_has_help():
    assert undocumented(Config) == []
    fields = [f for s in Config().sections() for f in dataclasses.fields(s)]
    assert len(fields) >= 120 and all(len(f.metadata["help"]) <= 110 for f in fields)  # one line each

    @dataclasses.dataclass
    class Half(Section):
        documented: int = opt(1, "a field with help")
        bare: Optional[str] = None
        blank: float = opt(0.0, " ")

    @dataclasses.dataclass
    class Tree:
        half: Half = dataclasses.field(default_factory=Half)

    assert undocumented(Tree) == ["half.bare", "half.blank"]  # the same check catches them


def test_help_lists_type_default_and_help_of_a_section():
    text = format_help("igrpo")
    assert "  igrpo.group_budget: int|null = 8\n      GRPO's group size that N + G must equal (paper: 8)" in text
    assert "\n  loss." not in text
    everything = format_help()
    assert "  eval.benchmarks: list[str] = [aime24, aime25, math500, amc23, gsm8k, minerva_math]\n" in everything
    assert "  model.fp8: e4m3|hybrid|null = null\n" in everything
    assert len(re.findall(r"^  \w+\.\w+: ", everything, re.M)) == sum(len(dataclasses.fields(s)) for s in Config().sections())
    with pytest.raises(ConfigError, match="unknown section 'los'; sections: model parallel optim loss igrpo"):
        format_help("los")


def test_yaml_plus_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "data:\n  preset: math\n"
        "loss:\n  clip_high: 0.28\n  aggregation: token_mean\n  dynamic_sampling: true\n"
        "igrpo:\n  num_drafts: 2\n  num_refinements: 6\n"
        "optim:\n  lr: 1e-6\n"  # YAML 1.1 reads this as a string; the loader parses it
        "train:\n"  # an empty section keeps its defaults
    )
    cfg = load_config(str(path), ["loss.clip_high=0.3", "rollout.stop=[</answer>, <eos>]", "train.max_steps=1e3"])
    assert cfg.loss.clip_high == 0.3  # the override wins
    assert cfg.loss.aggregation == "token_mean" and cfg.loss.dynamic_sampling is True  # the file's
    assert (cfg.igrpo.num_drafts, cfg.igrpo.num_refinements) == (2, 6)
    assert cfg.optim.lr == 1e-6 and isinstance(cfg.optim.lr, float)
    assert cfg.rollout.stop == ["</answer>", "<eos>"]
    assert cfg.train.max_steps == 1000 and cfg.train.micro_batch_size == 4
    assert cfg.data.preset == "math"


def test_yaml_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss:\n  clip_low: [0.2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        parse_overrides(["loss.clip_low"])


def test_round_trip_through_dump_yaml(tmp_path):
    cfg = _load("loss.advantage=rloo", "loss.tis_cap=2", "loss.dual_clip_c=3", "optim.lr=3e-7",
                "rollout.server_urls=[http://10.0.0.1:8000, http://10.0.0.2:8000]", "model.fp8=e4m3",
                "igrpo.group_budget=null", "igrpo.num_drafts=5", "train.max_steps=150")
    path = tmp_path / "dumped.yaml"
    path.write_text(dump_yaml(cfg))
    again = load_config(str(path))
    assert again == cfg
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)
    assert again.rollout.server_urls == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    assert again != Config()  # the comparison is not vacuous


def test_override_with_invalid_yaml_value():
    with pytest.raises(ConfigError, match="override 'rollout.stop=\\[a': the value is not valid YAML"):
        parse_overrides(["rollout.stop=[a"])


def test_data_is_required_for_training_only():
    with pytest.raises(ConfigError, match="data.preset"):
        load_config(None, [])
    cfg = load_config(None, [], training=False)  # igrpo-serve / igrpo-eval need no training data
    assert cfg.data.preset is None and cfg.data.source is None
