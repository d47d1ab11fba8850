"""``igrpo-train`` as a user calls it: resolved config printing and config errors naming the field."""
import subprocess
import sys

import yaml

from torchrun_util import REPO


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "igrpo_megatron.cli.train", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=120)


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
