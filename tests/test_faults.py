"""Faults and bad input, each run for real and its outcome asserted (issue 12).

Checkpoints: a code-running payload in ``.metadata`` is refused (file and class named) and does
not run, by to-hf, verify and ``load_checkpoint`` (resume and ``model.init_checkpoint``); 4 KiB
flipped in a shard is detected with the file named; a real checkpoint still converts and loads.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest

from igrpo_megatron.checkpoint.integrity import file_checksum
from torchrun_util import REPO

ITER = "iter_0000000"


def _env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO, **extra}


def _run(args: list[str], timeout: float = 300, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=_env(**env), cwd=REPO,
                          timeout=timeout)


def convert(*args, **env) -> subprocess.CompletedProcess:
    return _run(["-m", "igrpo_megatron.cli.convert", *args], **env)


def _error_lines(proc) -> list[str]:
    """The non-progress-bar lines of stderr (tqdm draws its bar there)."""
    return [line for line in proc.stderr.splitlines() if line.strip() and "it/s]" not in line and "B/s]" not in line
            and "Warning" not in line and "warnings.warn" not in line]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from igrpo_megatron.demo.tiny import make_model

    return make_model(str(tmp_path_factory.mktemp("faults_hf")), arch="qwen2", hidden_size=64, num_heads=4,
                      num_kv_heads=2, intermediate_size=96, num_layers=2, init_std=0.1)


@pytest.fixture(scope="module")
def ckpt(hf_dir, tmp_path_factory):
    """A real from-hf checkpoint (torch_dist shards, .metadata, common.pt, checksums)."""
    out = str(tmp_path_factory.mktemp("faults_ckpt") / "ckpt")
    proc = convert("from-hf", "--hf", hf_dir, "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out


def _copy(ckpt: str, tmp_path) -> tuple[str, str]:
    dst = str(tmp_path / "ckpt")
    shutil.copytree(ckpt, dst)
    return dst, os.path.join(dst, ITER)


def _rerecord(iter_dir: str, name: str) -> None:
    """Update the checksum of ``name`` as an attacker who can write the folder would."""
    path = os.path.join(iter_dir, "meta.json")
    with open(path) as f:
        meta = json.load(f)
    meta["checksums"]["files"][name] = file_checksum(os.path.join(iter_dir, name))
    with open(path, "w") as f:
        json.dump(meta, f)


class _RunsCode:
    """Unpickling this creates the folder named by IGRPO_TEST_PWNED: proof that code ran."""

    def __reduce__(self):
        return (os.makedirs, (os.environ["IGRPO_TEST_PWNED"],))


LOAD_SCRIPT = """
import sys
from igrpo_megatron.checkpoint import CheckpointError, load_checkpoint
from igrpo_megatron.models.parallel import destroy_parallel
from igrpo_megatron.models.provider import load_hf_config
from igrpo_megatron.weights.convert import _single_process_model
model = _single_process_model(load_hf_config(sys.argv[1]), sys.argv[1], "fp32")
try:
    loaded = load_checkpoint(sys.argv[2], [model], load_optimizer=False, load_rng=False)
    print("LOADED", loaded.step)
except CheckpointError as e:
    print("REFUSED", e)
finally:
    destroy_parallel(destroy_process_group=True)
"""


def load_in_process(hf_dir: str, ckpt: str, **env) -> str:
    """``load_checkpoint`` into a freshly built model, as resume and ``model.init_checkpoint`` call it."""
    proc = _run(["-c", LOAD_SCRIPT, hf_dir, ckpt], **env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_metadata_payload_is_refused_and_not_executed(hf_dir, ckpt, tmp_path, monkeypatch):
    root, iter_dir = _copy(ckpt, tmp_path)
    marker = tmp_path / "pwned"
    monkeypatch.setenv("IGRPO_TEST_PWNED", str(marker))
    path = os.path.join(iter_dir, ".metadata")
    with open(path, "rb") as f:
        metadata = pickle.load(f)
    metadata.planner_data = _RunsCode()  # hidden inside an otherwise valid index
    with open(path, "wb") as f:
        pickle.dump(metadata, f)
    _rerecord(iter_dir, ".metadata")  # so that the checksums do not catch it first

    for proc in (convert("to-hf", "--ckpt", root, "--out", str(tmp_path / "out")),
                 convert("verify", "--ckpt", root)):
        assert proc.returncode == 2, proc.stderr[-3000:]
        lines = _error_lines(proc)
        assert len(lines) == 1 and path in lines[0] and "os.makedirs" in lines[0], proc.stderr[-3000:]
    outcome = load_in_process(hf_dir, root)
    assert outcome.startswith("REFUSED") and "os.makedirs" in outcome, outcome
    assert not marker.exists()
    assert not (tmp_path / "out").exists()  # to-hf leaves no half-written output

    # Negative control: the payload is live; torch's plain pickle.load would have run it.
    with open(path, "rb") as f:
        pickle.load(f)
    assert marker.exists()


def test_flipped_bytes_are_detected_and_the_file_named(hf_dir, ckpt, tmp_path):
    root, iter_dir = _copy(ckpt, tmp_path)
    shard = os.path.join(iter_dir, "__0_1.distcp")
    assert os.path.getsize(shard) > 3 * 4096
    with open(shard, "r+b") as f:
        f.seek(8192)
        block = f.read(4096)
        f.seek(8192)
        f.write(bytes(b ^ 0xFF for b in block))

    for proc in (convert("verify", "--ckpt", root), convert("to-hf", "--ckpt", root, "--out", str(tmp_path / "out"))):
        assert proc.returncode == 2, proc.stderr[-3000:]
        lines = _error_lines(proc)
        assert len(lines) == 1 and f"{shard} is damaged" in lines[0], proc.stderr[-3000:]
    outcome = load_in_process(hf_dir, root)
    assert outcome.startswith("REFUSED") and f"{shard} is damaged" in outcome, outcome

    # The undamaged original verifies, converts and loads.
    proc = convert("verify", "--ckpt", ckpt)
    assert proc.returncode == 0 and "6 files" in proc.stdout, proc.stdout + proc.stderr
    assert load_in_process(hf_dir, ckpt) == "LOADED 0"
    proc = convert("to-hf", "--ckpt", ckpt, "--out", str(tmp_path / "good"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.isfile(tmp_path / "good" / "model.safetensors.index.json")


# ------------------------------------------------------------------ process trees

OWNER_SCRIPT = """
import os, sys
sys.path.insert(0, os.path.join(sys.argv[3], "tests"))
from rollout_fixtures import rollout_test_config
from igrpo_megatron.rollout import launch_server
cfg = rollout_test_config(refit_dir=os.path.join(sys.argv[2], "refit"))
for line in sys.stdin:  # one launch per line (the port)
    handle = launch_server(cfg, sys.argv[1], os.path.join(sys.argv[2], "vllm.log"), port=int(line),
                           env={"OMP_NUM_THREADS": "1"})
    print("READY", handle.process.pid, flush=True)
"""


def _port_is_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds (TIME_WAIT is no owner)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _wait_gone(pgid: int, port: int, timeout_s: float = 60.0) -> float:
    """Seconds until group ``pgid`` has no live member and ``port`` can be bound; fails after timeout."""
    import time

    from igrpo_megatron.lifetime import group_members

    t0 = time.monotonic()
    while group_members(pgid) or not _port_is_free(port):
        assert time.monotonic() - t0 < timeout_s, f"left behind: group {pgid} {group_members(pgid)}, port {port}"
        time.sleep(0.2)
    return time.monotonic() - t0


def _launch(owner, port: int) -> int:
    owner.stdin.write(f"{port}\n")
    owner.stdin.flush()
    line = owner.stdout.readline()
    assert line.startswith("READY"), f"the owner did not start a server: {line!r}"
    return int(line.split()[1])


def test_kill_9_of_the_api_server_or_of_its_owner_leaves_nothing(tiny_qwen2, tmp_path):
    """The server's whole process group (guard, API server, EngineCore) ends when the API server is
    SIGKILLed and when the process that started it is; the port is free and binds again."""
    import psutil

    from igrpo_megatron.lifetime import group_members
    from igrpo_megatron.models.parallel import free_port

    port = free_port()
    owner = subprocess.Popen([sys.executable, "-c", OWNER_SCRIPT, tiny_qwen2, str(tmp_path), REPO],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env(), cwd=REPO)
    try:
        pgid = _launch(owner, port)
        members = group_members(pgid)
        assert len(members) >= 3, members  # guard + API server + EngineCore at least
        api_server = psutil.Process(pgid).children()[0].pid
        os.kill(api_server, 9)
        print(f"api server killed: {len(members)} processes gone in {_wait_gone(pgid, port):.1f} s")

        pgid = _launch(owner, port)  # the same port binds again
        members = group_members(pgid)
        assert len(members) >= 3, members
        owner.kill()
        owner.wait(timeout=30)
        print(f"owner killed: {len(members)} processes gone in {_wait_gone(pgid, port):.1f} s")
    finally:
        owner.kill()
        owner.wait(timeout=30)
    with open(tmp_path / "vllm.log") as f:
        assert f.read().count("===== launch ") == 2  # the first launch's log is kept


# ------------------------------------------------------------------ full disk

SAVE_SCRIPT = """
import os, sys
from igrpo_megatron.checkpoint import save_checkpoint
from igrpo_megatron.cli.runner import run_cli
from igrpo_megatron.models.parallel import destroy_parallel
from igrpo_megatron.models.provider import load_hf_config
from igrpo_megatron.weights.convert import _single_process_model

def body(argv):
    model = _single_process_model(load_hf_config(sys.argv[1]), sys.argv[1], "fp32")
    try:
        print("SAVED", save_checkpoint(sys.argv[2], 0, [model]), flush=True)
        save_checkpoint(sys.argv[2], 1, [model])  # the tmpfs holds one checkpoint, not two
    finally:
        destroy_parallel(destroy_process_group=True)

sys.exit(run_cli("igrpo-train", body))
"""


def test_full_disk_on_save_is_one_line_and_keeps_the_previous_checkpoint(hf_dir, ckpt, tmp_path):
    from igrpo_megatron.checkpoint import find_latest

    one = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(os.path.join(ckpt, ITER)) for f in fs)
    mnt = tmp_path / "small"
    mnt.mkdir()
    size_kib = (one * 3 // 2) // 1024
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        root = str(mnt / "ckpt")
        proc = _run(["-c", SAVE_SCRIPT, hf_dir, root])
        assert proc.returncode == 2, proc.stdout + proc.stderr[-3000:]
        assert "SAVED" in proc.stdout
        lines = [line for line in _error_lines(proc) if "igrpo-train" in line or "Traceback" in line]
        assert len(lines) == 1 and "no space left on device" in lines[0] and "is intact" in lines[0], proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        assert sorted(os.listdir(root)) == ["iter_0000000", "latest"]  # no iter_0000001.tmp
        assert find_latest(root) == os.path.join(root, ITER)
        verify = convert("verify", "--ckpt", root)
        assert verify.returncode == 0, verify.stderr  # the previous checkpoint is intact
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


# ------------------------------------------------------------------ one-line user errors


def _train_cli(*args, **env) -> subprocess.CompletedProcess:
    return _run(["-m", "igrpo_megatron.cli.train", *args], timeout=120, **env)


def test_config_mistakes_are_one_line_before_anything_starts(tmp_path):
    proc = _train_cli("--print-config", "data.preset=synthetic", "reward.kind=judge", "reward.judge_url=http://x:1")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "igrpo-train: config error: reward.kind=judge needs reward.judge_model (the model name the judge server serves)"]
    missing = str(tmp_path / "models" / "qwen")
    proc = _train_cli("--print-config", "data.preset=synthetic", f"model.hf_path={missing}")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"igrpo-train: config error: model.hf_path={missing}: no such folder; give an existing local folder or a hub "
        f"name (org/name)"]
    # IGRPO_DEBUG=1 shows the traceback of the same mistake.
    proc = _train_cli("--print-config", "data.preset=synthetic", f"model.hf_path={missing}", IGRPO_DEBUG="1")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_damaged_meta_json_is_one_line(ckpt, tmp_path):
    root, iter_dir = _copy(ckpt, tmp_path)
    meta = os.path.join(iter_dir, "meta.json")
    for damage, expected in (('{"format_version": 1, "step": 0', "is damaged"),
                             ('{"format_version": 1, "step": 0}', "lacks layout")):
        with open(meta, "w") as f:
            f.write(damage)
        proc = convert("verify", "--ckpt", root)
        lines = _error_lines(proc)
        assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0] and meta in lines[0], proc.stderr


# ------------------------------------------------------------------ logs after a resume


def test_resume_leaves_one_record_per_step_and_keeps_the_superseded(tmp_path):
    import io

    from igrpo_megatron.metrics import MetricsLogger, read_metrics

    crashed = MetricsLogger(str(tmp_path), tensorboard=False, stream=io.StringIO())
    for step in range(1, 6):  # the run logged 5 steps; its last checkpoint was step 2
        crashed.log({"step": step, "loss": float(step)})
    crashed.close()
    resumed = MetricsLogger(str(tmp_path), tensorboard=False, stream=io.StringIO(), start_step=2)
    for step in (3, 4):
        resumed.log({"step": step, "loss": 10.0 * step})
    resumed.close()

    with open(tmp_path / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [(r["step"], r["loss"]) for r in records] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2, 3, 4]
    with open(tmp_path / "metrics.jsonl.superseded") as f:
        old = [json.loads(line) for line in f]
    assert [(r["step"], r["loss"], r["superseded_by_resume_at"]) for r in old] == [(3, 3.0, 2), (4, 4.0, 2), (5, 5.0, 2)]


# ------------------------------------------------------------------ bad data, caught at load time

LIMIT = 480  # rollout.max_prompt_tokens of the data tests (the tiny chat template alone is ~350)


def _question_that_fits_stage1_only(tokenizer) -> str:
    """A question whose stage-1 prompt fits LIMIT but whose stage-2 frame leaves no room for a draft."""
    from igrpo_megatron.algorithms.igrpo import build_prompt_messages, refinement_frame
    from igrpo_megatron.data import format_prompt

    def lengths(q):
        prefix, suffix = refinement_frame(
            q, render=lambda m: tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
            encode=lambda t: tokenizer.encode(t, add_special_tokens=False))
        return len(format_prompt(tokenizer, build_prompt_messages(q))), len(prefix) + len(suffix)

    for words in range(1, LIMIT):
        q = "What is " + " plus ".join(["1"] * words) + "?"
        stage1, frame = lengths(q)
        if stage1 <= LIMIT and frame > LIMIT - 8:
            return q
    raise AssertionError("no question length fits stage 1 but not stage 2")


def _bad_data(tmp_path, tokenizer) -> tuple[str, dict]:
    """A jsonl file with one of each bad row between good ones; {kind: line number}."""
    good = json.dumps({"problem": "What is 1 + 1?", "answer": "2"}).encode() + b"\n"
    lines = {"long": json.dumps({"problem": "x " * 25000, "answer": "1"}).encode(),
             "no_room": json.dumps({"problem": _question_that_fits_stage1_only(tokenizer), "answer": "1"}).encode(),
             "utf8": b'{"problem": "caf\xe9 au lait?", "answer": "1"}',
             "integer": json.dumps({"problem": 12345, "answer": "1"}).encode()}
    path = tmp_path / "bad.jsonl"
    body, where = [good], {}
    for kind, line in lines.items():
        body.append(line + b"\n")
        where[kind] = len(body)
        body.append(good)
    path.write_bytes(b"".join(body))
    return str(path), where


def test_bad_rows_are_errors_naming_file_row_and_lengths_before_any_server(tiny_qwen2, tmp_path):
    from transformers import AutoTokenizer

    src, where = _bad_data(tmp_path, AutoTokenizer.from_pretrained(tiny_qwen2))
    expected = {"long": "its stage-1 prompt is ", "no_room": "its stage-2 prompt without the draft is ",
                "utf8": "field '<line>' is not valid UTF-8 (byte 0xe9", "integer": "field 'problem' is int 12345, "
                "expected a string"}
    with open(src, "rb") as f:
        lines = f.readlines()
    for kind, why in expected.items():
        one = tmp_path / f"{kind}.jsonl"  # the good rows plus this one bad row (at line 2)
        one.write_bytes(lines[0] + lines[where[kind] - 1] + b"".join(lines[i] for i in range(2, len(lines), 2)))
        message = f"row 2: {why}"
        out = tmp_path / f"run_{kind}"
        proc = _train_cli(f"model.hf_path={tiny_qwen2}", f"data.source={one}", f"train.output_dir={out}",
                          f"rollout.max_prompt_tokens={LIMIT}", "parallel.use_distributed_optimizer=false",
                          "model.dtype=fp32", "train.prompts_per_step=2")
        err = [line for line in proc.stderr.splitlines() if line.startswith("igrpo-train")]
        assert proc.returncode == 2 and len(err) == 1 and f"{one}: {message}" in err[0], proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        assert not (out / "vllm.log").exists()  # no server was started


def test_skip_malformed_skips_every_bad_row_and_counts_them_in_one_line(tiny_qwen2, tmp_path, caplog):
    import logging

    from transformers import AutoTokenizer

    from igrpo_megatron.config import Config, DataConfig, RolloutConfig
    from igrpo_megatron.data import load_prompts_counted
    from igrpo_megatron.data.prompt_budget import tokenize_prompts

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2)
    src, where = _bad_data(tmp_path, tokenizer)
    cfg = Config(data=DataConfig(source=src, skip_malformed=True),
                 rollout=RolloutConfig(max_prompt_tokens=LIMIT, max_tokens=256, max_model_len=1024))
    with caplog.at_level(logging.WARNING):
        examples, skipped = load_prompts_counted(cfg.data)
        kept, ids = tokenize_prompts(examples, tokenizer, cfg)
    assert skipped == 2  # non-UTF-8 and integer rows, at parse time
    assert len(kept) == 5 and all(e.question == "What is 1 + 1?" for e in kept)  # the two long ones went too
    assert all(0 < len(ids[e.id]) <= LIMIT for e in kept)
    assert "skipped 2 malformed rows of 9" in caplog.text
    assert "skipped 2 of 7 prompts over the prompt budget (rollout.max_prompt_tokens=480)" in caplog.text


# ------------------------------------------------------------------ kill -9 of a training rank

TRAIN_PROMPTS = 2


def _run_tree(root: int) -> dict[int, int]:
    """``{pid: pgid}`` of ``root`` and every process below it."""
    import psutil

    tree = {}
    for proc in [psutil.Process(root), *psutil.Process(root).children(recursive=True)]:
        try:
            tree[proc.pid] = os.getpgid(proc.pid)
        except ProcessLookupError:
            pass
    return tree


def _rank_pid(torchrun: subprocess.Popen, rank: int) -> int:
    import psutil

    for proc in psutil.Process(torchrun.pid).children():
        if proc.environ().get("RANK") == str(rank):
            return proc.pid
    raise AssertionError(f"torchrun has no rank {rank}")


def _kill_rank_after_checkpoint(cmd: list[str], run_dir: str, rank: int, step: int, port: int, log) -> str:
    """Start the run, SIGKILL ``rank`` once checkpoint ``step`` is complete, and wait until every
    process group of the run (torchrun, ranks, reward workers, checkpoint writers, the vLLM server's
    guard, API server and engine) is empty and the server's port binds again. Returns the run's output."""
    import time

    from igrpo_megatron.lifetime import group_members

    done = os.path.join(run_dir, "checkpoints", f"iter_{step:07d}", "meta.json")
    torchrun = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=REPO,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not os.path.exists(done):
            assert torchrun.poll() is None, f"the run ended (rc {torchrun.returncode}) before checkpoint {step}"
            assert time.monotonic() < deadline, f"no checkpoint {step} after 600 s"
            time.sleep(0.2)
        groups = set(_run_tree(torchrun.pid).values())
        assert len(groups) >= 2, groups  # torchrun's own and the vLLM server's
        os.kill(_rank_pid(torchrun, rank), 9)
        t0 = time.monotonic()
        torchrun.wait(timeout=120)
        for pgid in groups:
            _wait_gone(pgid, port, timeout_s=max(1.0, 120 - (time.monotonic() - t0)))
        print(f"rank {rank} killed: torchrun rc {torchrun.returncode}, groups {sorted(groups)} empty and port "
              f"{port} free in {time.monotonic() - t0:.1f} s")
        assert torchrun.returncode != 0
    finally:
        if torchrun.poll() is None:
            os.killpg(torchrun.pid, 9)
            torchrun.wait()
    log.flush()
    with open(log.name) as f:
        return f.read()


def test_kill_9_of_rank_0_or_rank_1_leaves_nothing_and_the_same_command_resumes(tiny_qwen2, tmp_path):
    """One 3-step run at TP=2 with its own vLLM server, the same command three times: rank 0 is
    SIGKILLed after checkpoint 1, rank 1 after checkpoint 2 of the rerun, the third run finishes.
    After each kill no process group of the run has a member and the port is free; each rerun
    resumes at the last checkpoint's step and data position."""
    import yaml

    from igrpo_megatron.metrics import read_metrics
    from igrpo_megatron.models.parallel import free_port
    from trainer_fixtures import tiny_run_config

    port, run_dir = free_port(), str(tmp_path / "run")
    cfg = tiny_run_config(tiny_qwen2, run_dir, port=port, data={"synthetic_size": 16},
                          rollout={"max_tokens": 8, "startup_timeout_s": 400},
                          train={"prompts_per_step": TRAIN_PROMPTS, "max_steps": 3, "save_every": 1})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "igrpo_megatron.cli.torchrun", "--standalone", "--nproc_per_node=2",
           os.path.join(REPO, "igrpo_megatron", "cli", "train.py"), "--config", str(tmp_path / "run.yaml")]

    with open(tmp_path / "launch1.log", "w") as log:
        _kill_rank_after_checkpoint(cmd, run_dir, rank=0, step=1, port=port, log=log)
    with open(tmp_path / "launch2.log", "w") as log:
        out = _kill_rank_after_checkpoint(cmd, run_dir, rank=1, step=2, port=port, log=log)
    assert "at step 1" in out, out[-3000:]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert "at step 2" in proc.stdout + proc.stderr
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert [r["prompts_consumed"] for r in records] == [TRAIN_PROMPTS * s for s in (1, 2, 3)]  # the data position
