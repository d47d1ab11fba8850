"""Launch a multi-process check under real ``torchrun`` (gloo on CPU) and fail with its output.

Each launch costs ~6 s on these machines, so a worker script should run several checks in one
launch and print one ``CHECK name value`` line per measured figure for the test to assert on.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_torchrun(script: str, nproc: int, args: list[str] | None = None, timeout: float = 300,
                 env: dict | None = None) -> str:
    """Run ``script`` on ``nproc`` local ranks; return combined output, raise with it on failure."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           script, *(args or [])]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO, **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"torchrun {os.path.basename(script)} x{nproc} failed ({proc.returncode}):\n{out[-6000:]}")
    return out


def checks(output: str) -> dict[str, float]:
    """Collect ``CHECK name value`` lines printed by worker scripts (last one wins)."""
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^CHECK (\S+) (\S+)$", output, re.M)}


def run_cli(module: str, *args: str, timeout: float = 600) -> str:
    """Run one of the project's CLIs (``python -m module args``) as a user does; output, or raise with it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"{module} {' '.join(args[:2])} failed ({proc.returncode}):\n{out[-6000:]}")
    return out
