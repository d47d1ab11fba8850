"""``igrpo-train`` end to end on a tiny Nemotron-H (iGRPO, TP=2 on gloo, the vLLM server it
launches), then ``igrpo-convert to-hf`` of the checkpoint it wrote, loaded by transformers."""
import os
import subprocess
import sys

import torch
import yaml

from igrpo_megatron.metrics import STEP_FIELDS, read_metrics
from igrpo_megatron.models.parallel import free_port
from nemotron_h_fixtures import make_tiny_nemotron_h
from torchrun_util import REPO, run_torchrun
from trainer_fixtures import tiny_run_config

TRAIN_CLI = os.path.join(REPO, "igrpo_megatron", "cli", "train.py")
PROMPTS_PER_STEP = 4


def test_igrpo_train_then_convert_to_hf(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model_dir = make_tiny_nemotron_h(str(tmp_path / "tiny_nemotron_h"))
    run_dir = tmp_path / "run"
    cfg = tiny_run_config(
        model_dir, str(run_dir), port=free_port(),
        data={"synthetic_size": 32}, rollout={"max_tokens": 12, "startup_timeout_s": 400, "temperature": 0.7},
        train={"prompts_per_step": PROMPTS_PER_STEP, "max_steps": 2, "save_every": 2},
        loss={"entropy_coef": 0.01})  # no reward on a random model; the entropy bonus still moves the weights
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run_torchrun(TRAIN_CLI, 2, ["--config", str(config)], timeout=1200)

    records = read_metrics(str(run_dir))
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        missing = [k for k in STEP_FIELDS if k not in r]
        assert not missing, f"step {r['step']} lacks {missing}"
        assert r["weight_version"] == r["server_weight_version"] == r["step"]
        assert r["rollout_weight_version"] == r["step"] - 1
        assert r["num_samples"] == PROMPTS_PER_STEP * 2  # the refinements of 2 drafts + 2 refinements
        assert r["entropy"] > 0 and r["logprob_mismatch"] < 1e-3, r
    assert "iter_0000002" in os.listdir(run_dir / "checkpoints")

    out = tmp_path / "hf_out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    proc = subprocess.run([sys.executable, "-m", "igrpo_megatron.cli.convert", "to-hf", "--ckpt",
                           str(run_dir / "checkpoints"), "--out", str(out)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trained = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(trained).__name__ == "NemotronHForCausalLM"
    original = load_file(os.path.join(model_dir, "model.safetensors"))
    converted = {}
    for f in sorted(out.glob("*.safetensors")):
        converted.update(load_file(str(f)))
    assert converted.keys() == original.keys()
    assert max((converted[k] - original[k]).abs().max().item() for k in original) > 1e-4  # it trained
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14]])
    with torch.no_grad():
        assert torch.isfinite(trained(ids).logits).all()
