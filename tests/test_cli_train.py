"""``igrpo-train`` as a user calls it: resolved config printing, field help, and config errors naming the field."""
import dataclasses
import os
import subprocess
import sys

import yaml

from igrpo_megatron.config import LossConfig
from torchrun_util import REPO


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "igrpo_megatron.cli.train", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=120, env={**os.environ, **(env or {})})


def test_print_config_resolves_file_and_overrides(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("data:\n  preset: synthetic\ntrain:\n  prompts_per_step: 16\n")
    proc = _cli("--config", str(cfg_file), "--print-config", "igrpo.num_drafts=2", "igrpo.num_refinements=6",
                "train.max_steps=7")
    assert proc.returncode == 0, proc.stderr
    tree = yaml.safe_load(proc.stdout)
    assert tree["train"]["prompts_per_step"] == 16 and tree["train"]["max_steps"] == 7
    assert (tree["igrpo"]["num_drafts"], tree["igrpo"]["num_refinements"]) == (2, 6)
    assert tree["igrpo"]["overlap_stages"] is True  # a default, filled in
    assert tree["loss"]["clip_low"] == 0.2


def test_config_errors_name_the_field():
    proc = _cli("--print-config", "data.preset=synthetic", "igrpo.num_drafts=3")
    assert proc.returncode == 2
    assert "igrpo.group_budget" in proc.stderr and "igrpo.num_drafts" in proc.stderr
    proc = _cli("--print-config", "data.preset=synthetic", "train.no_such_key=1")
    assert proc.returncode == 2 and "unknown key train.no_such_key" in proc.stderr
    proc = _cli("--config", "/nonexistent.yaml")
    assert proc.returncode == 2 and "/nonexistent.yaml does not exist" in proc.stderr


def test_help_config_loss_prints_every_loss_field():
    proc = _cli("--help-config", "loss")
    assert proc.returncode == 0, proc.stderr
    for f in dataclasses.fields(LossConfig):
        assert f"\n  loss.{f.name}: " in proc.stdout and f.metadata["help"] in proc.stdout, f.name
    assert "  loss.kl_estimator: k1|k2|k3 = k3\n      per-token KL estimator (paper: k3)\n" in proc.stdout
    assert "\n  rollout." not in proc.stdout  # only the section asked for
    proc = _cli("--help-config", "optimizer")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("igrpo-train: config error: --help-config: unknown section 'optimizer'; sections: "
                           "model parallel optim loss igrpo reward data rollout train eval\n")


def test_world_size_not_divisible_fails_before_any_process_group():
    """Under torchrun (WORLD_SIZE set) the layout is checked while the config loads: one line, exit 2."""
    proc = _cli("--print-config", "data.preset=synthetic", "parallel.tp=4", env={"WORLD_SIZE": "6"})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("igrpo-train: config error: world size 6 is not divisible by parallel.tp * parallel.pp "
                           "= 4; launch a multiple of 4 ranks or change parallel.tp / parallel.pp\n")
    assert _cli("--print-config", "data.preset=synthetic", "parallel.tp=4", env={"WORLD_SIZE": "8"}).returncode == 0
