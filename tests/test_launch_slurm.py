"""The sbatch launch scripts under a real Slurm (slurmctld + slurmd + munge on localhost).

tests/slurm/start.sh installs and starts the daemons (root only); the job runs the real
launch/igrpo_7b.sh with its real srun steps and real torchrun (c10d rendezvous, gloo). The
server and trainer payloads are swapped for stand-ins (tests/slurm/probe_*.py, through the
scripts' SERVE_CMD / TRAIN_ENTRY knobs) that record what the launcher handed them, or the real
igrpo-serve and igrpo-train. ``start.sh STATE 2`` starts a two-node cluster, one network namespace
per node (n1, n2), for the tests of the multi-node layout.
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


def _cluster(tmp_path_factory, *nodes: str):
    """Start tests/slurm/start.sh (``nodes``: its node count, for the namespaced multi-node cluster);
    yield (SLURM_CONF, client prefix); stop it afterwards."""
    state = str(tmp_path_factory.mktemp("slurm"))
    proc = subprocess.run(["bash", f"{SLURM}/start.sh", state, *nodes], capture_output=True, text=True, timeout=600)
    try:
        if proc.returncode == 77:
            pytest.skip("a local Slurm needs root (slurmd, munged, network namespaces)")
        assert proc.returncode == 0, f"start.sh failed:\n{proc.stdout}{proc.stderr}"
        client = open(os.path.join(state, "client")).read().split()
        yield proc.stdout.strip().splitlines()[-1], tuple(client)
    finally:
        subprocess.run(["bash", f"{SLURM}/stop.sh", state], timeout=60)


@pytest.fixture(scope="module")
def slurm_conf(tmp_path_factory):
    yield from (conf for conf, _ in _cluster(tmp_path_factory))


@pytest.fixture(scope="module")
def two_node_slurm(tmp_path_factory):
    """Nodes n1 and n2 in network namespaces of their own: 127.0.0.1 on n2 does not reach n1."""
    yield from _cluster(tmp_path_factory, "2")


def _submit(slurm_conf: str, work, env: dict, args: list[str], options: tuple[str, ...] = (), nodes: int = 1,
            client: tuple[str, ...] = ()) -> str:
    """Submit launch/igrpo_7b.sh on ``nodes`` nodes (``options`` are sbatch's, before the script;
    ``client`` prefixes the Slurm commands: the hub namespace of a multi-node cluster); its job id."""
    # The job's variables travel in sbatch's own environment (--export=ALL): a value with a comma
    # (CONTAINER_MOUNTS) would be split by --export=NAME=value.
    return subprocess.run(
        [*client, "sbatch", "--parsable", f"--nodes={nodes}", "-o", str(work / "job.out"), "--export=ALL", *options,
         os.path.join(REPO, "launch", "igrpo_7b.sh"), *args],
        cwd=REPO, env={**os.environ, "SLURM_CONF": slurm_conf, **env}, capture_output=True, text=True,
        check=True).stdout.strip()


def _wait(slurm_conf: str, work, jid: str, timeout: float, client: tuple[str, ...] = ()) -> tuple[dict, str]:
    """Wait until job ``jid`` has left the queue (a requeued job stays in it); its fields and output."""
    env_all = {**os.environ, "SLURM_CONF": slurm_conf}
    out = work / "job.out"
    deadline = time.time() + timeout
    while subprocess.run([*client, "squeue", "-h", "-j", jid], env=env_all, capture_output=True,
                         text=True).stdout.strip():
        if time.time() > deadline:
            subprocess.run([*client, "scancel", jid], env=env_all)
            raise AssertionError(f"job {jid} still running after {timeout}s:\n{out.read_text()}")
        time.sleep(0.3)
    info = subprocess.run([*client, "scontrol", "show", "job", jid], env=env_all, capture_output=True,
                          text=True).stdout
    return dict(kv.split("=", 1) for kv in info.split() if "=" in kv), out.read_text()


def _sbatch(slurm_conf: str, work, env: dict, args: list[str], timeout: float = 240) -> tuple[str, str, str]:
    """Submit launch/igrpo_7b.sh on one node; return (state, exit code, job output)."""
    fields, log = _wait(slurm_conf, work, _submit(slurm_conf, work, env, args), timeout)
    return fields["JobState"], fields["ExitCode"], log


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


def _real_trainer_job(tmp_path, model_dir: str, steps: int, prompts: int, port: int = 0, rdzv_port: int = 0):
    """(run folder, job environment, server port) of the real trainer on the tiny model: 2 prompts per step,
    one vLLM server beside 2 Megatron ranks (TP=2), checkpoints only at the end (save_every=100)."""
    pytest.importorskip("vllm")
    import yaml

    from trainer_fixtures import tiny_run_config

    run, port = tmp_path / "run", port or free_port(host="0.0.0.0")
    cfg = tiny_run_config(
        model_dir, str(run), port=port, data={"synthetic_size": prompts},
        rollout={"max_tokens": 8, "startup_timeout_s": 600, "refit_transport": "disk",
                 "refit_dir": str(tmp_path / "refit")},
        train={"prompts_per_step": 2, "max_steps": steps, "save_every": 100})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    return run, {"CONFIG": str(tmp_path / "run.yaml"), "ROLLOUT_NODES": "0", "GPUS_PER_NODE": "2",
                 "SERVERS_PER_NODE": "1", "RDZV_PORT": str(rdzv_port or free_port(host="0.0.0.0")),
                 "LOG_ROOT": str(tmp_path / "logs"), "OMP_NUM_THREADS": "1"}, port


def test_sbatch_runs_the_real_trainer_for_one_step_against_the_servers_it_started(slurm_conf, tmp_path, tiny_qwen2):
    """No stand-ins: igrpo-serve (vLLM, CPU build) on the rollout side, igrpo-train on 2 ranks
    (Megatron TP=2) under the job's torchrun; one step, whose refit must reach the server."""
    from igrpo_megatron.metrics import read_metrics

    run, env, port = _real_trainer_job(tmp_path, tiny_qwen2, steps=1, prompts=16)
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


def _in_order(log: str, events: list[str]) -> list[int]:
    """Positions of ``events`` in ``log``, each searched after the previous one; fails naming the
    first event missing from where it should be."""
    pos, out = 0, []
    for e in events:
        i = log.find(e, pos)
        assert i >= 0, f"{e!r} not found after position {pos} of the job output:\n{log}"
        out.append(i)
        pos = i + len(e)
    return out


def test_a_real_time_limit_warns_checkpoints_requeues_and_stops_at_the_requeue_limit(slurm_conf, tmp_path):
    """``--time=1 --signal=B:USR1@30``: Slurm's own warning, not one sent by hand. The ranks
    (stand-ins around the real stop interface, under the real torchrun wrapper) never finish on
    their own; MAX_REQUEUES=2 lets the job run three times and then stop asking. Slurm checks
    limits every ~30 s (a warning asked for less than that can come after the limit: seen with
    @10), so with @30 it comes 30-60 s before the end, possibly before the trainer has started:
    that run requeues without a checkpoint, and the next one resumes from the last one there is."""
    env = _job_env(tmp_path, SERVERS_PER_NODE="1", MAX_REQUEUES="2", PROBE_STEP_S="0.5", WARN_RESEND_S="5",
                   TRAIN_ENTRY="tests/slurm/probe_preempt.py --steps 100000")
    jid = _submit(slurm_conf, tmp_path, env, ["rollout.port=18300"], ("--time=1", "--signal=B:USR1@30"))
    fields, log = _wait(slurm_conf, tmp_path, jid, timeout=400)
    # Exit 75 (stopped at a checkpoint) once the limit is reached; not TIMEOUT: no run hit its limit.
    assert (fields["JobState"], fields["ExitCode"], fields["Restarts"]) == ("FAILED", "75:0", "2"), log
    runs = log.split(f"] job {jid} (restart ")[1:]
    assert [r[0] for r in runs] == ["0", "1", "2"], log
    resumed, checkpoints = 0, []
    for i, run in enumerate(runs):
        # A requeue stops the servers first; the last run stops them on its way out.
        end = (["servers stopped", f"requeueing job {jid} (restart {i + 1} of at most 2)"] if i < 2 else
               ["not requeueing: the job already restarted 2 times (MAX_REQUEUES=2)", "servers stopped"])
        if "before the trainer started" in run:
            _in_order(run, ["SIGUSR1 (time-limit warning) before the trainer started", *end])
            continue
        k = int(run.split("PROBE checkpoint step ")[1].split()[0])
        # The warning may come while the ranks start (it is resent until they stop).
        assert f"PROBE rank 0 restart {i} resumes at step {resumed}" in run, run
        _in_order(run, ["SIGUSR1 (time-limit warning): the trainer checkpoints after its current step and stops",
                        f"PROBE rank 0 stops after step {k} (own signal: SIGUSR1",
                        f"PROBE checkpoint step {k}", "trainer exited with status 75", *end])
        assert k > resumed, run
        resumed = k
        checkpoints.append((i, k))
    assert checkpoints, f"every run was warned before its trainer started:\n{log}"
    # Every step exactly once, each written by the run that trained it.
    records = [json.loads(line) for line in (tmp_path / "probe" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, resumed + 1))
    bounds = [0] + [k for _, k in checkpoints]
    assert [r["restart"] for r in records] == [i for (i, k), lo in zip(checkpoints, bounds) for _ in range(k - lo)]


def test_usr1_to_the_batch_script_requeues_the_real_trainer_which_resumes_without_losing_a_step(
        slurm_conf, tmp_path, tiny_qwen2):
    """No stand-ins: igrpo-serve (vLLM) and igrpo-train (Megatron TP=2 on 2 ranks). The batch
    script gets SIGUSR1 by hand (``scancel --signal=USR1 --batch``) after step 1 is logged; the
    trainer checkpoints, the job requeues itself, restarts with SLURM_RESTART_COUNT=1 and resumes.
    Steps take ~0.8 s on a quiet CI machine and the warning's way to the ranks (batch script,
    squeue, scancel, slurmd) ~2 s: with 4 steps the run once finished before it arrived. 12 steps
    and a resend every 3 s leave it ten steps."""
    from igrpo_megatron.metrics import read_metrics

    steps = 12
    run, env, _ = _real_trainer_job(tmp_path, tiny_qwen2, port=18305, rdzv_port=18306, steps=steps, prompts=32)
    env["WARN_RESEND_S"] = "3"
    jid = _submit(slurm_conf, tmp_path, env, [])
    slurm_env = {**os.environ, "SLURM_CONF": slurm_conf}
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 900
    while not (metrics.exists() and metrics.read_text().strip()):
        assert time.time() < deadline and subprocess.run(["squeue", "-h", "-j", jid], env=slurm_env,
                                                         capture_output=True, text=True).stdout.strip(), \
            (tmp_path / "job.out").read_text()
        time.sleep(1)
    subprocess.run(["scancel", "--signal=USR1", "--batch", jid], env=slurm_env, check=True)
    fields, log = _wait(slurm_conf, tmp_path, jid, timeout=1200)
    log += "".join(f"\n== {f}\n" + f.read_text()[-3000:] for f in (tmp_path / "logs").rglob("*.log"))
    assert (fields["JobState"], fields["ExitCode"], fields["Restarts"]) == ("COMPLETED", "0:0", "1"), log
    k = int(log.split("igrpo-train: stopped on SIGUSR1 after step ")[1].split(";")[0])
    assert 1 <= k < steps, log
    _in_order(log, [f"job {jid} (restart 0)", "SIGUSR1 (time-limit warning)", "trainer exited with status 75",
                    f"requeueing job {jid} (restart 1 of at most 10)", f"job {jid} (restart 1)",
                    f"iter_{k:07d} at step {k}", "trainer exited with status 0"])
    # Every step exactly once in the one metrics file, and the weights of each reached the server.
    lines = metrics.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, steps + 1)), log
    assert all(r["weight_version"] == r["server_weight_version"] == r["step"] for r in read_metrics(str(run)))
    # The checkpoint written on the signal and the final one; save_every=100 wrote no other.
    assert sorted(p.name for p in (run / "checkpoints").glob("iter_*")) == [f"iter_{k:07d}", f"iter_{steps:07d}"]


def test_container_image_puts_every_srun_step_in_it_through_pyxis(slurm_conf, tmp_path):
    """pyxis cannot be installed here, so IGRPO_SRUN is a stand-in that records each step's srun
    command line and runs it without the --container-* options (tests/slurm/srun_pyxis_standin.sh).
    Bare metal (no CONTAINER_IMAGE) is the negative control: no container option at all."""
    image, mounts = "nvcr.io#nvidia/pytorch:25.09-py3", "/lustre/models:/models,/lustre/hf:/root/.cache/huggingface"
    standin = os.path.join(SLURM, "srun_pyxis_standin.sh")
    for case, extra in (("container", {"CONTAINER_IMAGE": image, "CONTAINER_MOUNTS": mounts}), ("bare", {})):
        work = tmp_path / case
        work.mkdir()
        env = _job_env(work, IGRPO_SRUN=standin, SRUN_LOG=str(work / "srun.log"), **extra)
        state, code, log = _sbatch(slurm_conf, work, env, ["rollout.port=18310", "train.max_steps=1"])
        assert (state, code) == ("COMPLETED", "0:0"), log
        assert len(list((work / "probe").glob("train_rank*.json"))) == 2, log
        lines = (work / "srun.log").read_text().splitlines()
        names = [next(a.split("=", 1)[1] for a in line.split() if a.startswith("--job-name=")) for line in lines]
        flags = [f"--container-image={image}", f"--container-mounts={REPO}:{REPO},{mounts}",
                 f"--container-workdir={REPO}"]
        if case == "container":
            # The config check runs in the image too; then the server step and the trainer step.
            assert names == ["igrpo-config", "igrpo-serve", "igrpo-train"], lines
            assert all(line.split()[:3] == flags for line in lines), lines
        else:
            assert names == ["igrpo-serve", "igrpo-train"], lines
            assert not any("--container" in line for line in lines), lines
        # Slurm's own --container (host fallback without oci.conf) is never used.
        assert not any(a.startswith("--container=") or a == "--container" for line in lines for a in line.split())


def test_the_two_node_cluster_refuses_127_0_0_1_across_nodes(two_node_slurm, tmp_path):
    """The negative control that gives the next test its teeth: on this cluster a server on n1 is
    reached from n2 by name, and a client that dials 127.0.0.1 instead is refused."""
    conf, client = two_node_slurm
    script = tmp_path / "probe.sh"
    script.write_text(f"""#!/bin/bash
srun -N1 -n1 -w n1 {PY} -m http.server 18330 --bind 0.0.0.0 --directory {tmp_path} &
sleep 3
srun -N1 -n1 -w n2 {PY} - <<'EOF'
import urllib.request
for url in ("http://n1:18330/probe.sh", "http://127.0.0.1:18330/probe.sh"):
    try:
        print(url, urllib.request.urlopen(url, timeout=5).status)
    except OSError as e:
        print(url, type(e).__name__)
EOF
kill %1
""")
    env = {**os.environ, "SLURM_CONF": conf}
    jid = subprocess.run([*client, "sbatch", "--parsable", "-N2", "-o", str(tmp_path / "job.out"), str(script)],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    _, log = _wait(conf, tmp_path, jid, timeout=120, client=client)
    assert "http://n1:18330/probe.sh 200" in log, log
    assert "http://127.0.0.1:18330/probe.sh URLError" in log, log


def test_sbatch_7b_on_two_nodes_serves_on_n1_and_trains_on_n2(two_node_slurm, tmp_path, tiny_qwen2):
    """launch/igrpo_7b.sh as written (2 nodes, ROLLOUT_NODES=1) with the tiny CPU model: vLLM on
    n1 bound where n2 can reach it, the trainer on n2 dialing it by node name; one step."""
    from igrpo_megatron.metrics import read_metrics

    conf, client = two_node_slurm
    run, env, _ = _real_trainer_job(tmp_path, tiny_qwen2, port=18320, rdzv_port=18321, steps=1, prompts=16)
    env["ROLLOUT_NODES"] = "1"
    jid = _submit(conf, tmp_path, env, [], nodes=2, client=client)
    fields, log = _wait(conf, tmp_path, jid, timeout=1200, client=client)
    log += "".join(f"\n== {f}\n" + f.read_text()[-3000:] for f in (tmp_path / "logs").rglob("*.log"))
    assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), log
    assert "rollout on n1 (1 server(s) each, TP 1), training on n2 (2 ranks each)" in log
    assert "servers: http://n1:18320" in log and "--rdzv_endpoint=n2:18321" in log
    assert list((tmp_path / "logs").rglob("serve_n1_0.log")), log
    records = read_metrics(str(run))
    assert [r["step"] for r in records] == [1], log
    assert records[0]["weight_version"] == records[0]["server_weight_version"] == 1
    assert (run / "checkpoints" / "iter_0000001").is_dir()
