"""Rollouts on vLLM servers: launch (``server``), weight updates (``refit``, ``extension``),
generation (``client``), the trainer's one entry point to them (``connection``) and the two
stages of an iGRPO step (``two_stage``) and the other methods a step can sample with
(``methods``: ``critique``, ``self_verification``). The trainer talks to the servers over HTTP only and
never imports vLLM (except the GPU-only NCCL refit transport)."""
from igrpo_megatron.rollout.admin import RolloutServerError, ServerAdmin
from igrpo_megatron.rollout.client import (RolloutClient, RolloutError, Sample, SamplingParams,
                                           StaleRolloutError)
from igrpo_megatron.rollout.connection import RolloutConnection, connect
from igrpo_megatron.rollout.methods import METHODS, RolloutMethod, make_method
from igrpo_megatron.rollout import critique, self_verification, two_stage  # noqa: F401,E402  (they register)
from igrpo_megatron.rollout.refit import RefitError, Refitter, RefitStats, Transport
from igrpo_megatron.rollout.server import (ServerHandle, ServerStartError, build_server_command,
                                           launch_server, resolve_api_key)

__all__ = [
    "METHODS", "RefitError", "RefitStats", "Refitter", "RolloutClient", "RolloutConnection",
    "RolloutError", "RolloutMethod", "RolloutServerError", "Sample", "SamplingParams", "ServerAdmin",
    "ServerHandle", "ServerStartError", "StaleRolloutError", "Transport", "build_server_command",
    "connect", "launch_server", "make_method", "resolve_api_key",
]
