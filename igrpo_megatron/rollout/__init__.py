"""Rollouts on vLLM servers: launch (``server``), weight updates (``refit``, ``extension``),
generation (``client``). The trainer talks to the servers over HTTP only and never imports vLLM
(except the GPU-only NCCL refit transport)."""
from igrpo_megatron.rollout.admin import RolloutServerError, ServerAdmin
from igrpo_megatron.rollout.client import (RolloutClient, RolloutError, Sample, SamplingParams,
                                           StaleRolloutError)
from igrpo_megatron.rollout.refit import RefitError, Refitter, RefitStats
from igrpo_megatron.rollout.server import (ServerHandle, ServerStartError, build_server_command,
                                           launch_server, resolve_api_key)

__all__ = [
    "RefitError", "RefitStats", "Refitter", "RolloutClient", "RolloutError", "RolloutServerError",
    "Sample", "SamplingParams", "ServerAdmin", "ServerHandle", "ServerStartError",
    "StaleRolloutError", "build_server_command", "launch_server", "resolve_api_key",
]
