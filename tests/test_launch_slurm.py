"""The sbatch launch scripts under a real Slurm (slurmctld + slurmd + munge on localhost).

tests/slurm/start.sh installs and starts the daemons (root only); the job runs the real
launch/igrpo_7b.sh with its real srun steps and real torchrun (c10d rendezvous, gloo). The
server and trainer payloads are swapped for stand-ins (tests/slurm/probe_*.py, through the
scripts' SERVE_CMD / TRAIN_ENTRY knobs) that record what the launcher handed them.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time

import pytest

from igrpo_megatron.models.parallel import free_port
from torchrun_util import REPO

SLURM = os.path.join(REPO, "tests", "slurm")
PY = os.path.join(REPO, ".venv", "bin", "python")


@pytest.fixture(scope="module")
def slurm_conf(tmp_path_factory):
    state = str(tmp_path_factory.mktemp("slurm"))
    proc = subprocess.run(["bash", f"{SLURM}/start.sh", state], capture_output=True, text=True, timeout=600)
    try:
        if proc.returncode == 77:
            pytest.skip("a local Slurm needs root (slurmd, munged)")
        assert proc.returncode == 0, f"start.sh failed:\n{proc.stdout}{proc.stderr}"
        yield proc.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", f"{SLURM}/stop.sh", state], timeout=60)


def _sbatch(slurm_conf: str, work, env: dict, args: list[str], timeout: float = 240) -> tuple[str, str, str]:
    """Submit launch/igrpo_7b.sh on one node; return (state, exit code, job output)."""
    out = work / "job.out"
    exports = ",".join(["ALL", *(f"{k}={v}" for k, v in env.items())])
    env_all = {**os.environ, "SLURM_CONF": slurm_conf}
    jid = subprocess.run(
        ["sbatch", "--parsable", "--nodes=1", "-o", str(out), f"--export={exports}",
         os.path.join(REPO, "launch", "igrpo_7b.sh"), *args],
        cwd=REPO, env=env_all, capture_output=True, text=True, check=True).stdout.strip()
    deadline = time.time() + timeout
    while subprocess.run(["squeue", "-h", "-j", jid], env=env_all, capture_output=True, text=True).stdout.strip():
        if time.time() > deadline:
            subprocess.run(["scancel", jid], env=env_all)
            raise AssertionError(f"job {jid} still running after {timeout}s:\n{out.read_text()}")
        time.sleep(0.3)
    info = subprocess.run(["scontrol", "show", "job", jid], env=env_all, capture_output=True, text=True).stdout
    fields = dict(kv.split("=", 1) for kv in info.split() if "=" in kv)
    return fields["JobState"], fields["ExitCode"], out.read_text()


def _job_env(work, **extra) -> dict:
    (work / "probe").mkdir()
    cfg = work / "tiny.yaml"
    cfg.write_text(f"data:\n  preset: synthetic\ntrain:\n  output_dir: {work}/run\n")
    return {
        "CONFIG": str(cfg), "ROLLOUT_NODES": "0", "GPUS_PER_NODE": "2", "SERVERS_PER_NODE": "2",
        "RDZV_PORT": str(free_port(host="0.0.0.0")), "LOG_ROOT": str(work / "logs"), "PROBE_OUT": str(work / "probe"),
        "OMP_NUM_THREADS": "1", "SERVE_CMD": f"{PY} tests/slurm/probe_serve.py",
        "TRAIN_ENTRY": "tests/slurm/probe_train.py", **extra,
    }


def test_sbatch_starts_servers_then_one_torchrun_per_node_and_stops_servers(slurm_conf, tmp_path):
    port, env = free_port(count=2, host="0.0.0.0"), _job_env(tmp_path)
    state, code, log = _sbatch(slurm_conf, tmp_path, env, [f"rollout.port={port}", "train.max_steps=1"])
    assert (state, code) == ("COMPLETED", "0:0"), log
    probe = tmp_path / "probe"
    servers = [json.loads((probe / f"serve_{p}.json").read_text()) for p in (port, port + 1)]
    ranks = [json.loads((probe / f"train_rank{r}.json").read_text()) for r in (0, 1)]

    # One key per job: 32 random bytes, the same for every server and every rank.
    key = servers[0]["api_key"]
    assert re.fullmatch("[0-9a-f]{64}", key), key
    assert {s["api_key"] for s in servers} | {r["api_key"] for r in ranks} == {key}
    # ... passed in the environment only: on no command line, in no log.
    assert key not in log
    assert all(key not in p["cmdline"] for p in servers + ranks)
    for f in (tmp_path / "logs").rglob("*"):
        assert f.is_dir() or key not in f.read_text(), f

    # One server per GPU of the rollout node, bound to all interfaces, on consecutive ports;
    # the job's extra overrides reach the servers too.
    assert [s["cuda_visible_devices"] for s in servers] == ["0", "1"]
    assert {s["host"] for s in servers} == {"0.0.0.0"}
    assert all("train.max_steps=1" in s["overrides"] for s in servers)

    # One torchrun per node (a 1-task srun step) with --nproc_per_node ranks that met through
    # the c10d rendezvous named after the job: all_reduce(rank + 1) over 2 ranks = 3.
    jobid = servers[0]["slurm_job_id"]
    assert f"--nnodes=1 --nproc_per_node=2 --rdzv_backend=c10d --rdzv_endpoint=localhost:{env['RDZV_PORT']}" in log
    assert [(r["rank"], r["world_size"], r["local_rank"]) for r in ranks] == [(0, 2, 0), (1, 2, 1)]
    assert [r["all_reduce"] for r in ranks] == [3.0, 3.0]
    assert {r["run_id"] for r in ranks} == {jobid}
    assert {r["slurm_step_tasks"] for r in ranks} == {"1"}

    # The trainer got every server's URL, the key opens them and its absence is refused.
    urls = [f"http://localhost:{port}", f"http://localhost:{port + 1}"]
    assert [r["server_urls"] for r in ranks] == [urls, urls]
    assert ranks[0]["models_with_key"] == [200, 200]
    assert ranks[0]["models_without_key"] == [401, 401]
    assert {r["max_steps"] for r in ranks} == {1}

    # After the trainer exits the servers got SIGTERM (graceful) and are gone.
    for s in servers:
        assert (probe / f"serve_{s['port']}.stopped").exists()
        assert not os.path.exists(f"/proc/{s['pid']}")


def test_sbatch_fails_fast_when_a_server_dies_at_start(slurm_conf, tmp_path):
    state, code, log = _sbatch(slurm_conf, tmp_path, _job_env(tmp_path, PROBE_SERVE_FAIL="1"), [])
    assert state == "FAILED" and code == "1:0", log
    assert "a server step exited before http://localhost:" in log
    assert not list((tmp_path / "probe").glob("train_rank*.json")), "the trainer must not start"


def test_sbatch_rejects_a_bad_config_before_starting_anything(slurm_conf, tmp_path):
    state, code, log = _sbatch(slurm_conf, tmp_path, _job_env(tmp_path), ["igrpo.num_drafts=5"])
    assert state == "FAILED", log
    assert "igrpo.group_budget" in log and "does not load" in log
    assert not list((tmp_path / "probe").iterdir())


def test_sbatch_runs_the_real_trainer_for_one_step_against_the_servers_it_started(slurm_conf, tmp_path, tiny_qwen2):
    """No stand-ins: igrpo-serve (vLLM, CPU build) on the rollout side, igrpo-train on 2 ranks
    (Megatron TP=2) under the job's torchrun; one step, whose refit must reach the server."""
    pytest.importorskip("vllm")
    import yaml

    from igrpo_megatron.metrics import read_metrics
    from trainer_fixtures import tiny_run_config

    run, port = tmp_path / "run", free_port(host="0.0.0.0")
    cfg = tiny_run_config(
        tiny_qwen2, str(run), port=port, data={"synthetic_size": 16},
        rollout={"max_tokens": 8, "startup_timeout_s": 600, "refit_transport": "disk",
                 "refit_dir": str(tmp_path / "refit")},
        train={"prompts_per_step": 2, "max_steps": 1, "save_every": 100})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    env = {"CONFIG": str(tmp_path / "run.yaml"), "ROLLOUT_NODES": "0", "GPUS_PER_NODE": "2",
           "SERVERS_PER_NODE": "1", "RDZV_PORT": str(free_port(host="0.0.0.0")), "LOG_ROOT": str(tmp_path / "logs"),
           "OMP_NUM_THREADS": "1"}
    state, code, log = _sbatch(slurm_conf, tmp_path, env, [], timeout=900)
    log += "".join(f"\n== {f}\n" + f.read_text()[-3000:] for f in (tmp_path / "logs").rglob("*.log"))
    assert (state, code) == ("COMPLETED", "0:0"), log
    records = read_metrics(str(run))
    assert [r["step"] for r in records] == [1], log
    # The weights of step 1 reached the server the job started (and were read back from it).
    assert records[0]["weight_version"] == records[0]["server_weight_version"] == 1
    assert records[0]["num_samples"] == 2 * 2
    serve_log = next((tmp_path / "logs").rglob("serve_localhost_0.log")).read_text()
    assert "serving" in serve_log and "http://" in serve_log
    # The job ended only after the server's step did: nothing listens on its port (TIME_WAIT aside).
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
