"""igrpo-convert end to end, as a user runs it (separate processes, no torchrun, no GPU).

from-hf then to-hf gives back every tensor bit for bit and transformers' logits equal the
original's; the from-hf checkpoint (TP1/PP1) reloads at TP2 x PP2; a training checkpoint
(model + distributed optimizer, written at TP2 x PP2) converts without --base-hf; bad inputs
fail with a message that names the problem.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from igrpo_megatron.cli.convert import main
from igrpo_megatron.demo.tiny import make_model
from torchrun_util import REPO, checks, run_torchrun

CKPT_WORKER = os.path.join(os.path.dirname(__file__), "dist", "weights_ckpt.py")


def convert(*args, expect_ok=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    proc = subprocess.run([sys.executable, "-m", "igrpo_megatron.cli.convert", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)
    if expect_ok:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def assert_same_model(original, converted):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    def tensors(folder):
        out = {}
        for f in sorted(os.listdir(folder)):
            if f.endswith(".safetensors"):
                out.update(load_file(os.path.join(folder, f)))
        return out

    a, b = tensors(original), tensors(converted)
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    ids = torch.randint(0, 200, (2, 16), generator=torch.Generator().manual_seed(0))
    logits = [AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager").eval()(input_ids=ids).logits
              for d in (original, converted)]
    assert logits[0].abs().max() > 0 and torch.equal(logits[0], logits[1])


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return make_model(str(tmp_path_factory.mktemp("convert_hf")), arch="qwen2", hidden_size=64, num_heads=4,
                      num_kv_heads=2, intermediate_size=96, num_layers=4, init_std=0.1)


def test_from_hf_then_to_hf_round_trip_and_training_checkpoint(hf_dir, tmp_path):
    ckpt, out, train, out2 = (str(tmp_path / n) for n in ("ckpt", "out", "train", "out2"))
    convert("from-hf", "--hf", hf_dir, "--out", ckpt, "--tp", "2", "--pp", "2")  # the layout CKPT_WORKER loads at
    assert os.path.isfile(os.path.join(ckpt, "iter_0000000", "hf", "tokenizer.json"))
    convert("to-hf", "--ckpt", ckpt, "--out", out, "--max-shard-size", "64KB")
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        assert len(set(json.load(f)["weight_map"].values())) > 1  # several shards
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert_same_model(hf_dir, out)

    found = checks(run_torchrun(CKPT_WORKER, 4, [hf_dir, ckpt, train], timeout=600))
    assert found["resharded_export_exact"] == 1
    convert("to-hf", "--ckpt", train, "--out", out2)  # HF config found via the run's model.hf_path
    assert_same_model(hf_dir, out2)


# The failures below all happen before any process group or model exists, so they run in-process.


def test_refuses_non_empty_output_unless_forced(hf_dir, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("precious")
    assert main(["from-hf", "--hf", hf_dir, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--force" in err
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_clear_errors(hf_dir, tmp_path, capsys):
    assert main(["from-hf", "--hf", str(tmp_path / "nope"), "--out", str(tmp_path / "o1")]) == 2
    assert "nope" in capsys.readouterr().err

    odd = tmp_path / "mixtral"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "mixtral", "num_attention_heads": 4}))
    assert main(["from-hf", "--hf", str(odd), "--out", str(tmp_path / "o2"), "--dtype", "fp32"]) == 2
    assert "'mixtral'" in capsys.readouterr().err
    # an unsupported architecture that has weights is refused by name, not by a missing tensor
    gpt2 = tmp_path / "gpt2"
    shutil.copytree(hf_dir, gpt2)
    (gpt2 / "config.json").write_text(json.dumps({**json.load(open(gpt2 / "config.json")), "model_type": "gpt2"}))
    assert main(["from-hf", "--hf", str(gpt2), "--out", str(tmp_path / "o2b")]) == 2
    assert "model_type 'gpt2' is not supported" in capsys.readouterr().err

    # a training layout that does not fit the model fails before any work
    assert main(["from-hf", "--hf", hf_dir, "--out", str(tmp_path / "o2c"), "--tp", "3"]) == 2
    assert "parallel.tp=3 does not divide the model's" in capsys.readouterr().err
    assert not (tmp_path / "o2c").exists()

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(open(os.path.join(hf_dir, "config.json")).read())
    assert main(["from-hf", "--hf", str(no_weights), "--out", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err
    assert "safetensors" in err and str(no_weights) in err
    assert not (tmp_path / "o3").exists()  # a failed conversion leaves no half-written output

    assert main(["to-hf", "--ckpt", str(tmp_path / "missing_ckpt"), "--out", str(tmp_path / "o4")]) == 2
    assert "missing_ckpt" in capsys.readouterr().err
