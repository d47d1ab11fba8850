"""Rollout pieces that need no running server: the server command, igrpo-serve, start-up failures."""
from __future__ import annotations

import logging
import os
import shlex
import socket

import pytest

from igrpo_megatron.cli.serve import main as serve_main
from igrpo_megatron.config import ConfigError, RolloutConfig
from igrpo_megatron.models.parallel import free_port
from igrpo_megatron.rollout import RolloutServerError, ServerStartError, build_server_command, launch_server
from igrpo_megatron.rollout.admin import parse_weight_version
from igrpo_megatron.rollout.auth import API_KEY_ENV
from igrpo_megatron.rollout.retry import RETRY_STATUSES, backoff_s, transient_errors
from igrpo_megatron.rollout.server import CPU_DEFAULT_KV_CACHE_BYTES, resolve_api_key, store_api_key


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_server_command_from_config():
    cfg = RolloutConfig(tensor_parallel_size=2, dtype="bfloat16", max_model_len=4096, seed=3, port=8123,
                        served_model_name="pol", extra_args=["--max-num-seqs", "64"])
    gpu = build_server_command(cfg, "/m", 8123, on_cpu=False)
    assert gpu[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert (_flag(gpu, "--model"), _flag(gpu, "--served-model-name"), _flag(gpu, "--host"), _flag(gpu, "--port"),
            _flag(gpu, "--tensor-parallel-size"), _flag(gpu, "--dtype"), _flag(gpu, "--max-model-len"),
            _flag(gpu, "--seed")) == ("/m", "pol", "127.0.0.1", "8123", "2", "bfloat16", "4096", "3")
    assert _flag(gpu, "--worker-extension-cls") == "igrpo_megatron.rollout.extension.WeightSyncExtension"
    assert _flag(gpu, "--middleware") == "igrpo_megatron.rollout.auth.ApiKeyMiddleware"
    assert "--enable-scale-out" in gpu and _flag(gpu, "--gpu-memory-utilization") == "0.85"
    assert "--enforce-eager" not in gpu and "--kv-cache-memory-bytes" not in gpu
    assert "--api-key" not in gpu  # the key travels in the environment, not in `ps` output
    assert gpu[-2:] == ["--max-num-seqs", "64"]

    nccl = build_server_command(RolloutConfig(refit_transport="nccl"), "/m", 1, on_cpu=False)
    assert _flag(nccl, "--weight-transfer-config") == '{"backend": "nccl"}'
    with pytest.raises(ConfigError, match="refit_transport=nccl needs GPUs"):
        build_server_command(RolloutConfig(refit_transport="nccl"), "/m", 1, on_cpu=True)


def test_cpu_server_gets_a_kv_cache_size_and_eager_mode(caplog):
    with caplog.at_level(logging.WARNING):
        cpu = build_server_command(RolloutConfig(), "/m", 1, on_cpu=True)
    assert int(_flag(cpu, "--kv-cache-memory-bytes")) == CPU_DEFAULT_KV_CACHE_BYTES
    assert "rollout.kv_cache_memory_bytes" in caplog.text
    assert "--enforce-eager" in cpu and "--gpu-memory-utilization" not in cpu
    explicit = build_server_command(RolloutConfig(kv_cache_memory_bytes=12345), "/m", 1, on_cpu=True)
    assert _flag(explicit, "--kv-cache-memory-bytes") == "12345"


def test_igrpo_serve_dry_run_prints_the_command(capsys, tmp_path):
    rc = serve_main(["--dry-run", "--model", str(tmp_path), "data.preset=synthetic", "rollout.port=18077",
                     "rollout.host=0.0.0.0", "rollout.kv_cache_memory_bytes=1000000"])
    assert rc == 0
    cmd = shlex.split(capsys.readouterr().out)
    assert (_flag(cmd, "--model"), _flag(cmd, "--port"), _flag(cmd, "--host")) == (str(tmp_path), "18077", "0.0.0.0")
    assert serve_main(["--dry-run", "data.preset=synthetic"]) == 2  # no model.hf_path, no --model
    assert "set model.hf_path or pass --model" in capsys.readouterr().err


def test_api_key_from_config_env_or_the_file_igrpo_serve_stored(tmp_path, monkeypatch):
    """A trainer pointed at servers started elsewhere must use their key, never invent one."""
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    cfg, key_dir = RolloutConfig(), str(tmp_path)
    with pytest.raises(ConfigError, match=r"rollout.api_key or \$IGRPO_ROLLOUT_API_KEY.*rollout_api_key"):
        resolve_api_key(cfg, key_dir, generate=False)
    fresh = resolve_api_key(cfg, key_dir)
    assert len(fresh) >= 32 and fresh != resolve_api_key(cfg, key_dir)
    path = store_api_key(key_dir, fresh)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert resolve_api_key(cfg, key_dir, generate=False) == fresh
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert resolve_api_key(cfg, key_dir, generate=False) == "from-env"
    assert resolve_api_key(RolloutConfig(api_key="from-config"), key_dir, generate=False) == "from-config"


def test_weight_version_labels():
    assert parse_weight_version("default") == 0 and parse_weight_version("17") == 17
    with pytest.raises(RolloutServerError, match="not an integer"):
        parse_weight_version("v2")


def test_launch_failure_is_reported_with_the_server_log(tmp_path):
    """A server that dies on start-up (no such model) fails fast, with the end of its log."""
    cfg = RolloutConfig(kv_cache_memory_bytes=64 << 20, startup_timeout_s=300)
    with pytest.raises(ServerStartError, match=r"exited with code \d+ before becoming healthy") as err:
        launch_server(cfg, str(tmp_path / "no_such_model"), str(tmp_path / "server.log"), port=free_port())
    assert "no_such_model" in str(err.value).split("end of", 1)[1]  # the log tail names the culprit


def test_free_ports_come_from_the_os_and_are_consecutive_when_asked():
    first = free_port(count=3)
    for port in range(first, first + 3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # raises if the port were taken
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert free_port() != taken.getsockname()[1]


def test_one_retry_rule_for_the_rollout_client_and_the_judge():
    import aiohttp

    assert sorted(RETRY_STATUSES) == [408, 429, 500, 502, 503, 504]
    assert [backoff_s(k) for k in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff_s(3, base_s=0.1, cap_s=0.5) == 0.5
    assert issubclass(aiohttp.ServerDisconnectedError, transient_errors())
    assert not issubclass(aiohttp.InvalidURL, transient_errors())  # a bad address stays bad
