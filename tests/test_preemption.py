"""The stop interface (igrpo_megatron/preemption.py) and the torchrun wrapper that carries its exit
code (igrpo_megatron/cli/torchrun.py), under real torchrun with gloo and real signals.

The worker is tests/slurm/probe_preempt.py, the loop the Slurm requeue tests run as well.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

from igrpo_megatron.preemption import REQUEUE_EXIT_CODE
from torchrun_util import REPO

PROBE = os.path.join(REPO, "tests", "slurm", "probe_preempt.py")


def _launch(tmp_path, nproc: int, steps: int, module: str = "igrpo_megatron.cli.torchrun", **env):
    cmd = [sys.executable, "-m", module, "--standalone", f"--nproc_per_node={nproc}", PROBE, "--steps", str(steps)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO, "PROBE_OUT": str(tmp_path), **env}
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=full_env, cwd=REPO)
    return proc.returncode, proc.stdout + proc.stderr, time.time() - t0


def _steps(tmp_path) -> list[int]:
    path = tmp_path / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def test_one_signalled_rank_stops_every_rank_at_the_same_step_and_the_run_resumes(tmp_path):
    # Only rank 1 gets SIGUSR1, during step 2: both ranks stop after step 2 and one checkpoint is saved.
    rc, out, _ = _launch(tmp_path, 2, 6, PROBE_SELF_SIGNAL="1:2:SIGUSR1")
    assert rc == REQUEUE_EXIT_CODE, out
    assert "PROBE rank 1 stops after step 2 (own signal: SIGUSR1, agreed: SIGUSR1)" in out
    assert "PROBE rank 0 stops after step 2 (own signal: None, agreed: a signal on another rank)" in out
    assert json.loads((tmp_path / "ckpt.json").read_text()) == {"step": 2}
    assert _steps(tmp_path) == [1, 2]
    # The next run resumes there: every step exactly once.
    rc, out, _ = _launch(tmp_path, 2, 6)
    assert rc == 0, out
    assert "PROBE rank 0 restart 0 resumes at step 2" in out
    assert _steps(tmp_path) == [1, 2, 3, 4, 5, 6]


def test_plain_torchrun_loses_the_requeue_exit_code(tmp_path):
    """Negative control for the wrapper: torchrun itself exits 1 when its ranks exit 75."""
    rc, out, _ = _launch(tmp_path, 2, 6, module="torch.distributed.run", PROBE_SELF_SIGNAL="0:1:SIGUSR1")
    assert rc == 1, out
    assert "exitcode  : 75" in out


def test_sigterm_saves_when_the_step_in_flight_ends_within_the_grace(tmp_path):
    rc, out, _ = _launch(tmp_path, 1, 6, PROBE_SELF_SIGNAL="0:3:SIGTERM", PROBE_TERM_GRACE_S="10")
    assert rc == REQUEUE_EXIT_CODE, out
    assert "PROBE rank 0 stops after step 3 (own signal: SIGTERM, agreed: SIGTERM)" in out
    assert json.loads((tmp_path / "ckpt.json").read_text()) == {"step": 3}


def test_sigterm_exits_after_the_grace_when_the_step_in_flight_does_not_end(tmp_path):
    # A 120 s step, SIGTERM in it, 2 s grace: out long before the step ends, with SIGTERM's
    # status, nothing saved (the launch alone takes 5-30 s on these shared cores).
    rc, out, elapsed = _launch(tmp_path, 1, 6, PROBE_SELF_SIGNAL="0:1:SIGTERM", PROBE_TERM_GRACE_S="2",
                               PROBE_STEP_S="120")
    assert rc == 1 and "(exitcode: 143)" in out, out
    assert elapsed < 90, elapsed
    assert not (tmp_path / "ckpt.json").exists() and _steps(tmp_path) == []


def test_forked_children_keep_the_default_meaning_of_the_signals(tmp_path):
    """The reward workers are forked from rank 0 and inherit its handlers: there SIGUSR1 is
    ignored (it is the trainer's) and SIGTERM still ends the process."""
    script = textwrap.dedent("""
        import os, signal, time
        from igrpo_megatron import preemption
        preemption.install_handlers()
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            pid = os.fork()
            if pid == 0:
                time.sleep(3)
                os._exit(7)
            time.sleep(0.3)
            os.kill(pid, sig)
            _, status = os.waitpid(pid, 0)
            print(signal.Signals(sig).name, "exit", os.waitstatus_to_exitcode(status))
        os.kill(os.getpid(), signal.SIGUSR1)
        print("parent stop_requested", preemption.stop_requested())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": REPO}, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:3] == ["SIGUSR1 exit 7", "SIGTERM exit -15", "parent stop_requested SIGUSR1"]
