"""Distributed checkpoints under real torchrun/gloo: bit-exact resume after SIGKILL, a crash in
the middle of a save, keep-last pruning, and reloading a TP=2 x PP=2 checkpoint at TP=1 x PP=1."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys

from igrpo_megatron.checkpoint import find_latest
from igrpo_megatron.checkpoint.dist_checkpoint import FAULT_ENV
from torchrun_util import REPO, checks, run_torchrun

TRAIN = os.path.join(REPO, "tests", "dist", "ckpt_train.py")
RESHARD = os.path.join(REPO, "tests", "dist", "ckpt_reshard.py")
STEPS, SAVE_EVERY, KEEP_LAST, NPROC = 8, 2, 2, 2  # world 2: DP=2 with the distributed optimizer


def _losses(output: str) -> dict[int, str]:
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^LOSS (\d+) (\S+)", output, re.M)}


def _train_args(ckpt: str, hf: str, *extra: str) -> list[str]:
    return ["--hf", hf, "--ckpt", ckpt, "--steps", str(STEPS), "--save-every", str(SAVE_EVERY),
            "--keep-last", str(KEEP_LAST), *extra]


def _train_cmd(ckpt: str, hf: str, *extra: str) -> list[str]:
    """The torchrun command line, for runs that are killed (``run_torchrun`` would raise)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={NPROC}", TRAIN,
            *_train_args(ckpt, hf, *extra)]


def _env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO, **extra}


def _sigkill_after_save(ckpt: str, hf: str, step: int) -> str:
    """Run training; SIGKILL torchrun and every worker once checkpoint ``step`` is reported saved."""
    proc = subprocess.Popen(_train_cmd(ckpt, hf, "--pause-after-save", str(step)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env(), cwd=REPO)
    lines, pids = [], []
    try:
        for line in proc.stdout:
            lines.append(line)
            pids += [int(pid) for pid in re.findall(r"PID (\d+)", line)]
            if line.strip() == f"SAVED {step}":
                break
        else:
            raise AssertionError("training ended before the checkpoint:\n" + "".join(lines)[-4000:])
    finally:
        # torchrun starts each worker as a session leader; its group also holds the helper process
        # dist_checkpointing's writer forks. Kill every group, then torchrun: the node is gone.
        for pgid in pids:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.kill()
        proc.wait(timeout=60)
    return "".join(lines)


def test_sigkill_resume_is_bit_exact_and_crashed_save_keeps_previous_latest(tiny_qwen2, tmp_path):
    # 1. The uninterrupted run (checkpoints on, so pruning and the pointer are checked too).
    ref_dir = str(tmp_path / "ref")
    ref = _losses(run_torchrun(TRAIN, NPROC, _train_args(ref_dir, tiny_qwen2), timeout=600))
    assert sorted(ref) == list(range(1, STEPS + 1))
    assert sorted(os.listdir(ref_dir)) == ["iter_0000006", "iter_0000008", "latest"]
    assert open(os.path.join(ref_dir, "latest")).read().strip() == "iter_0000008"

    # 2. SIGKILL the whole job right after the checkpoint of step 4.
    ckpt = str(tmp_path / "run")
    killed = _losses(_sigkill_after_save(ckpt, tiny_qwen2, step=4))
    assert killed == {s: ref[s] for s in range(1, 5)}
    assert find_latest(ckpt) == os.path.join(ckpt, "iter_0000004")

    # 3. Resume; rank 0 is SIGKILLed inside the save of step 6, after the shards are written.
    crashed = subprocess.run(_train_cmd(ckpt, tiny_qwen2), capture_output=True, text=True, timeout=600,
                             env=_env(**{FAULT_ENV: "after_shards"}), cwd=REPO)
    out = crashed.stdout + crashed.stderr
    assert crashed.returncode != 0, out[-4000:]
    assert "RESUMED 4 rng=True optim=True" in out
    assert _losses(out) == {5: ref[5], 6: ref[6]}
    tmp6 = os.path.join(ckpt, "iter_0000006.tmp")
    assert any(f.endswith(".distcp") for f in os.listdir(tmp6)), os.listdir(tmp6)
    assert not os.path.exists(os.path.join(ckpt, "iter_0000006"))
    assert open(os.path.join(ckpt, "latest")).read().strip() == "iter_0000004"
    assert find_latest(ckpt) == os.path.join(ckpt, "iter_0000004")

    # Negative control: resuming a copy without the RNG states already changes the next loss.
    no_rng = str(tmp_path / "no_rng")
    shutil.copytree(ckpt, no_rng)
    out = run_torchrun(TRAIN, NPROC, [*_train_args(no_rng, tiny_qwen2), "--no-load-rng", "--steps", "5"], timeout=600)
    assert "RESUMED 4 rng=False optim=True" in out
    assert _losses(out)[5] != ref[5]

    # 4. Resume again from step 4: every later loss equals the uninterrupted run's, bit for bit.
    out = run_torchrun(TRAIN, NPROC, _train_args(ckpt, tiny_qwen2), timeout=600)
    assert "RESUMED 4 rng=True optim=True" in out
    assert _losses(out) == {s: ref[s] for s in range(5, STEPS + 1)}
    assert sorted(os.listdir(ckpt)) == ["iter_0000006", "iter_0000008", "latest"]  # .tmp and 4 pruned


def test_tp2_pp2_checkpoint_reloads_at_tp1(tiny_qwen2, tmp_path):
    c = checks(run_torchrun(RESHARD, 4, [tiny_qwen2, str(tmp_path)], timeout=600))
    assert c["logits_diff"] <= 1e-6, c
    assert c["loss3_diff"] <= 1e-6, c  # the step after loading sees the same weights and data position
    assert c["step_diff_optim"] <= 1e-5, c  # resharded Adam moments give the same update
    assert c["step_diff_fresh_optim"] > 1e-2, c  # negative control: fresh moments do not
    assert c["rng_restored_other_layout"] == 0, c
    assert c["plain_optim_error"] == 1 and c["no_optim_error"] == 1, c
