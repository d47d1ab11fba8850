"""Hub names resolve to cache snapshots through huggingface_hub itself (no mock): a hub cache is laid
out locally exactly as ``snapshot_download`` writes one, and every CLI runs with ``HF_HUB_OFFLINE=1``."""
import os
import shutil
import subprocess
import sys

import pytest

from torchrun_util import REPO, run_torchrun

REPO_ID = "igrpo-test/tiny-qwen2"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub_cache(tiny_qwen2, tmp_path_factory):
    """``<cache>/models--igrpo-test--tiny-qwen2/{refs/main, snapshots/<commit>/...}`` holding the tiny model."""
    cache = tmp_path_factory.mktemp("hub")
    repo = cache / ("models--" + REPO_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(tiny_qwen2, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return str(cache), str(snapshot)


def _env(cache: str) -> dict:
    return {**os.environ, "HF_HUB_CACHE": cache, "HF_HUB_OFFLINE": "1", "PYTHONPATH": REPO}


def _cli(module: str, args: list, cache: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env=_env(cache), cwd=REPO, timeout=300)


def test_serve_resolves_a_hub_name_to_its_snapshot(hub_cache):
    cache, snapshot = hub_cache
    out = _cli("igrpo_megatron.cli.serve", ["--dry-run", "--model", REPO_ID], cache)
    assert out.returncode == 0, out.stderr
    assert f"--model {snapshot}" in out.stdout  # vLLM is given the local snapshot, never the hub name


def test_convert_from_hf_reads_weights_from_the_snapshot(hub_cache, tmp_path):
    cache, _ = hub_cache
    out = _cli("igrpo_megatron.cli.convert", ["from-hf", "--hf", REPO_ID, "--out", str(tmp_path / "ckpt")], cache)
    assert out.returncode == 0, out.stderr
    assert os.path.isdir(tmp_path / "ckpt")


def test_a_name_missing_from_the_cache_is_one_line_naming_name_and_cache(hub_cache, tmp_path):
    cache, _ = hub_cache
    out = _cli("igrpo_megatron.cli.convert", ["from-hf", "--hf", "igrpo-test/not-there", "--out",
                                              str(tmp_path / "ckpt")], cache)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "igrpo-test/not-there" in lines[0] and cache in lines[0], out.stderr
    assert not os.path.exists(tmp_path / "ckpt")


def test_a_missing_local_folder_is_not_reported_as_a_hub_error(hub_cache, tmp_path):
    cache, _ = hub_cache
    missing = str(tmp_path / "no_such_model")
    out = _cli("igrpo_megatron.cli.serve", ["--dry-run", "--model", missing], cache)
    assert out.returncode == 2
    assert "no such file or folder" in out.stderr and "Repo id" not in out.stderr


def test_every_rank_of_a_node_gets_the_snapshot_and_a_miss_stops_all(hub_cache, tmp_path):
    """torchrun, 2 ranks: local rank 0 resolves first, rank 1 reads the cache after it; an unknown
    name makes both ranks raise (rank 1 with a pointer to rank 0's message), nobody hangs."""
    cache, snapshot = hub_cache
    worker = os.path.join(REPO, "tests", "dist", "hub_resolve.py")
    out = run_torchrun(worker, nproc=2, args=[REPO_ID, "igrpo-test/not-there"], env=_env(cache), timeout=240)
    assert out.count(f"RESOLVED {snapshot}") == 2, out
    assert out.count("MISS ConfigError") == 2, out
